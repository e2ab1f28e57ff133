"""Pools: create, list, show, export, import, destroy, scan, and the catalog rebuilt from media."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import mapper
from metadata import checksums, dirtylog, media
from metadata.errors import NoValidGenerationError, UnsupportedFeatureError
from metadata.model import Pool, PoolUUID, check_name, new_uuid
from vvfs.control import claim
from vvfs.control.mirrors import degraded_summary
from vvfs.control.session import OpenPool, PoolSession
from vvfs.errors import ApiError, NotFoundError, RefusedError
from vvfs.io.discovery import Found, discover

log = logging.getLogger(__name__)

MIN_EXTENT = 1 << 20
MAX_EXTENT = 1 << 30


@dataclass
class PoolReport:
    """What `vv scan` says of one pool."""

    uuid: str
    name: str
    generation: int | None
    status: str
    active_host: str | None
    imported_here: bool
    devices: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class PoolShow:
    """What `vv pool show` says of one pool: its configuration and its media."""

    pool: Pool
    #: device uuid -> path where the device was found
    paths: dict[str, str]
    #: uuids of devices the configuration lists that were not found
    missing: list[str] = field(default_factory=list)
    #: paths of devices whose newest generation is older than the pool's
    stale: list[str] = field(default_factory=list)


def _check_create(name: str, paths: list[str], extent_size: int) -> None:
    check_name("pool", name)
    if not paths:
        raise ApiError("a pool needs at least one device")
    if extent_size & (extent_size - 1) or not MIN_EXTENT <= extent_size <= MAX_EXTENT:
        raise ApiError("extent size must be a power of two from 1 MiB to 1 GiB")
    seen: dict[str, str] = {}
    for p in paths:
        real = os.path.realpath(p)
        if real in seen:
            same = f"{p}" if seen[real] == p else f"{seen[real]} and {p}"
            raise ApiError(f"a device is named twice: {same}"
                           + (f" (both {real})" if seen[real] != p else ""))
        seen[real] = p


def create_pool(s: PoolSession, name: str, paths: list[str], *, extent_size: int,
                metadata_size: int, force: bool, tier: int, protection: int,
                cost: float) -> Pool:
    """Claim *paths* and write a new pool on them (generation 1)."""
    _check_create(name, paths, extent_size)
    with s.locked("vv pool create"):
        if s.catalog.find_pool(name) is not None:
            raise RefusedError(f"a pool named {name!r} is already imported")
        sizes = [claim.check_claimable(s.catalog, p, force) for p in paths]
        pool = Pool(uuid=PoolUUID(new_uuid()), name=name, extent_size=extent_size,
                    generation=1, active_host=s.host_id)
        where = claim.Placement(pool.uuid, extent_size, metadata_size, tier, protection, cost)
        with contextlib.ExitStack() as stack:
            claims = [stack.enter_context(claim.claiming(p, f"d{i}", size, where, force=force))
                      for i, (p, size) in enumerate(zip(paths, sizes))]
            pool.devices.extend(c.device for c in claims)
            checksums.enable(pool)
            dirtylog.enable(pool)
            pool.check()
            media.commit_generation([c.target for c in claims], pool)
        s.catalog.sync_pool(pool, {d.uuid: d.paths[0] for d in pool.devices})
        for p in paths:
            s.remember_dir(p)
        s.changed(pool.uuid, pool)
        return pool


def list_pools(s: PoolSession) -> list[dict]:
    out = []
    for row in s.catalog.pools():
        pool = s.catalog.load_pool(row.uuid)
        cap = sum(d.extent_count for d in pool.devices) * pool.extent_size
        free = sum(u.free for u in mapper.usage(pool).values()) * pool.extent_size
        failed, degraded = degraded_summary(pool)
        out.append({"name": pool.name, "uuid": pool.uuid, "generation": pool.generation,
                    "devices": len(pool.devices), "volumes": len(pool.volumes),
                    "size": cap, "free": free, "failed_devices": failed,
                    "degraded_volumes": degraded})
    return out


def show_pool(s: PoolSession, name: str) -> PoolShow:
    with s.reading(name) as op:
        return PoolShow(op.pool, dict(op.paths), list(op.choice.missing),
                        [sc.name for sc in op.choice.stale])


def export_pool(s: PoolSession, name: str) -> Pool:
    """Clear the pool's host stamp on media and forget it here."""
    with s.changing(name) as op:
        s.refuse_if_any_open(op.pool)
        new = op.pool.copy()
        new.active_host = None
        s.commit(op, new)
        s.catalog.drop_pool(new.uuid)
        s.changed(new.uuid, None)
        return new


def import_pool(s: PoolSession, key: str, *, search: Sequence[str] = (),
                force: bool = False) -> Pool:
    """Find pool *key* (name or uuid) on the media and make it this host's."""
    with s.locked("vv pool import"):
        found = discover(list(search) + s.state.config.search_paths, readonly=False)
        try:
            uuid = _match_pool(found, key)
            scans = found.pools[uuid]
            try:
                choice = media.choose_generation(scans)
            except NoValidGenerationError as exc:
                raise RefusedError(f"pool {key}: {exc}") from None
            _check_importable(s, uuid, choice, force)
            op = OpenPool(choice, {sc.device_uuid: sc.name for sc in scans if sc.device_uuid})
            new = choice.pool.copy()
            new.active_host = s.host_id
            for d in new.devices:
                if d.uuid in op.paths:
                    d.paths = [op.paths[d.uuid]]
            s.commit(op, new)
            for p in op.paths.values():
                s.remember_dir(p)
            return new
        finally:
            found.close()


def _check_importable(s: PoolSession, uuid: str, choice: media.Choice, force: bool) -> None:
    """Refuse an import that would take a pool in use, or that this host has already.

    A pool this host imported that another host then took (``--force``
    there: its newest configuration names the other host) is imported
    again only with ``--force``: this host may not change it before.
    """
    pool = choice.pool
    elsewhere = pool.active_host not in (None, s.host_id)
    if s.catalog.find_pool(uuid) is not None:
        if not elsewhere:
            raise RefusedError(f"pool {pool.name} is already imported on this host")
        if not force:
            raise RefusedError(
                f"pool {pool.name} is imported here, but its media say that host"
                f" {pool.active_host} took it; import it with --force to take it back, only if"
                " that host is down")
    else:
        named = s.catalog.find_pool(pool.name)
        if named is not None and named.uuid != uuid:
            raise RefusedError(f"a pool named {pool.name!r} is already imported here")
    if elsewhere and not force:
        raise RefusedError(
            f"pool {pool.name} is active on host {pool.active_host};"
            " import it with --force only if that host is down"
        )
    if choice.missing and not force:
        names = [pool.device(u).name for u in choice.missing]
        raise RefusedError(f"pool {pool.name} is incomplete: devices"
                           f" {', '.join(names)} not found (--force to import anyway)")


def _match_pool(found: Found, key: str) -> str:
    if key in found.pools:
        return key
    matches = []
    for uuid, scans in found.pools.items():
        try:
            name = media.choose_generation(scans).pool.name
        except NoValidGenerationError:
            continue
        if name == key:
            matches.append(uuid)
    if not matches:
        raise NotFoundError(f"no pool {key!r} found on the search paths")
    if len(matches) > 1:
        raise RefusedError(f"several pools are named {key!r}: {', '.join(matches)};"
                           " import one by uuid")
    return matches[0]


def destroy_pool(s: PoolSession, name: str, *, yes: bool = False) -> None:
    """Erase the pool's labels and metadata from every device.

    Refused while a node serves the pool (mounted, open volumes or not):
    its volumes would vanish from a live mount, and the node would go on
    writing to devices that no longer carry a label.
    """
    if not yes:
        raise RefusedError(f"destroying pool {name} erases all its volumes; add --yes")
    with s.changing(name, allow_missing=True) as op:
        s.refuse_if_mounted(op.pool, "destroyed")
        for sc in op.choice.scans:
            if sc.label is not None:
                claim.unclaim(sc.dev, sc.label)  # type: ignore[arg-type]
        s.catalog.drop_pool(op.pool.uuid)
        s.changed(op.pool.uuid, None)


def scan(s: PoolSession, paths: list[str] | None = None
         ) -> tuple[list[PoolReport], dict[str, list[str]]]:
    """Report every pool whose devices lie on *paths* (default: search paths)."""
    found = discover(paths or s.state.config.search_paths)
    try:
        reports = [_report(s, uuid, scans) for uuid, scans in found.pools.items()]
        labelled = {sc.name for scans in found.pools.values() for sc in scans}
        for path, why in found.unsupported.items():
            if path not in labelled:
                reports.append(PoolReport("?", "?", None, "newer format", None, False,
                                          {"?": path}, problems=[why]))
        return reports, found.duplicates
    finally:
        found.close()


def _report(s: PoolSession, uuid: str, scans: list[media.DeviceScan]) -> PoolReport:
    try:
        choice = media.choose_generation(scans)
    except (NoValidGenerationError, UnsupportedFeatureError) as exc:
        status = ("newer format" if isinstance(exc, UnsupportedFeatureError)
                  else "unreadable")
        return PoolReport(uuid, "?", None, status, None, False,
                          {sc.device_uuid or "?": sc.name for sc in scans}, problems=[str(exc)])
    pool = choice.pool
    listed = {d.uuid for d in pool.devices}
    rep = PoolReport(
        uuid=uuid, name=pool.name, generation=choice.generation,
        status="incomplete" if choice.missing else "complete",
        active_host=pool.active_host,
        imported_here=s.catalog.find_pool(uuid) is not None,
        devices={pool.device(sc.device_uuid).name if sc.device_uuid in listed
                 else sc.device_uuid or "?": sc.name for sc in scans},
        missing=[pool.device(u).name for u in choice.missing],
        stale=[sc.name for sc in choice.stale],
        problems=[str(f) for sc in scans for f in sc.findings],
    )
    orphans = [sc.name for sc in scans if sc.device_uuid not in listed]
    if orphans:
        rep.problems.append("devices no longer in the pool: " + ", ".join(orphans))
    return rep


def rebuild_catalog(s: PoolSession, search: Sequence[str] = ()) -> list[str]:
    """Recreate the catalog from media: every pool stamped with this host id."""
    with s.locked("vv catalog rebuild"):
        found = discover(list(search) + s.state.config.search_paths)
        try:
            names = []
            for known in [row.uuid for row in s.catalog.pools()]:
                s.catalog.drop_pool(known)
            for scans in found.pools.values():
                try:
                    choice = media.choose_generation(scans)
                except NoValidGenerationError:
                    continue
                if choice.pool.active_host != s.host_id:
                    continue
                s.catalog.sync_pool(choice.pool, {sc.device_uuid: sc.name for sc in scans
                                                  if sc.device_uuid})
                names.append(choice.pool.name)
            return names
        finally:
            found.close()

