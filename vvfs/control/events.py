"""Events of management: what a commit changed, and the events the catalog keeps.

Events of the data path (a device failed, a resync's progress ...) are queued
by the node's mirror service; these are the ones management writes itself
(``config-changed``, one per commit) and the query behind ``vv events``.
"""

from __future__ import annotations

import logging
from typing import Any

from metadata.catalog import Catalog
from metadata.errors import VVError
from metadata.model import Pool

log = logging.getLogger(__name__)


def describe_change(old: Pool | None, new: Pool) -> str:
    """One line saying what generation *new* changed against *old*."""
    if old is None:
        return f"generation {new.generation}"
    parts = []
    ov, nv = {v.uuid: v for v in old.volumes}, {v.uuid: v for v in new.volumes}
    for u in nv.keys() - ov.keys():
        parts.append(f"volume {nv[u].name} created")
    for u in ov.keys() - nv.keys():
        parts.append(f"volume {ov[u].name} removed")
    for u in nv.keys() & ov.keys():
        a, b = ov[u], nv[u]
        if a.name != b.name:
            parts.append(f"volume {a.name} renamed {b.name}")
        if a.size != b.size:
            parts.append(f"volume {b.name} resized to {b.size}")
        if a.read_policy != b.read_policy:
            parts.append(f"volume {b.name} reads {b.read_policy}")
        if a.segments != b.segments and a.size == b.size:
            parts.append(f"volume {b.name} remapped")
    od, nd = {d.uuid: d for d in old.devices}, {d.uuid: d for d in new.devices}
    for du in nd.keys() - od.keys():
        parts.append(f"device {nd[du].name} added")
    for du in od.keys() - nd.keys():
        parts.append(f"device {od[du].name} removed")
    for du in nd.keys() & od.keys():
        if od[du].state != nd[du].state:
            parts.append(f"device {nd[du].name} {nd[du].state}")
        if od[du].paths != nd[du].paths:
            parts.append(f"device {nd[du].name} paths {','.join(nd[du].paths)}")
    if old.operations != new.operations:
        parts.append("operations " + (", ".join(str(o.get("kind", "?")) for o in new.operations
                                                if isinstance(o, dict)) or "none"))
    if old.active_host != new.active_host:
        parts.append(f"host {new.active_host or 'none'}")
    return f"generation {new.generation}: " + ("; ".join(parts) or "committed")


def record_commit(catalog: Catalog, old: Pool | None, new: Pool) -> None:
    """Add a config-changed event for a commit (errors are logged, never raised)."""
    try:
        catalog.add_event(new.uuid, "config-changed", "info", new.name, describe_change(old, new))
    except VVError as exc:
        log.warning("config-changed event not recorded: %s", exc)


def list_events(catalog: Catalog, pool: str | None, since: int, limit: int
                ) -> list[dict[str, Any]]:
    """Events (of *pool*, a name or uuid, or all) with id > *since*, oldest first."""
    uuid = None
    if pool is not None:
        row = catalog.find_pool(pool)
        uuid = row.uuid if row is not None else pool
    names: dict[str, str] = {row.uuid: row.name for row in catalog.pools()}
    return [event_doc(e, names) for e in catalog.events(uuid, since, limit)]


def event_doc(e: Any, names: dict[str, str]) -> dict[str, Any]:
    return {"id": e.id, "time": e.time, "pool": names.get(e.pool_uuid, e.pool_uuid),
            "pool_uuid": e.pool_uuid, "kind": e.kind, "severity": e.severity,
            "object": e.object, "message": e.message}
