"""What ``vvfsck --dump`` prints: every generation on every device, each pool's operations."""

from __future__ import annotations

from typing import Any

from mapper.mirrors import RESYNC_KIND
from metadata.model import Pool
from vvfsck.checks.config import describe_op, resync_device, resync_started
from vvfsck.context import Ctx
from vvfsck.findings import format_time
from vvfsck.inspect import Member, copy_name


def dump_pool(ctx: Ctx) -> dict[str, Any]:
    """One pool for --dump: where it opens, its operations, every device's generations."""
    out: dict[str, Any] = {"uuid": ctx.group.uuid, "name": ctx.name,
                           "opens at": ctx.choice.generation if ctx.choice else None}
    if ctx.choice is None:
        out["problem"] = ctx.group.choice_error
    else:
        out["operations"] = [_dump_operation(ctx.pool, op) for op in ctx.pool.operations]
    out["devices"] = [_dump_member(m) for m in ctx.members]
    if ctx.group.clones:
        out["duplicates"] = [{"uuid": c.uuid, "paths": [u.name, c.name]}
                             for u, c in ctx.group.clones]
    return out


def _dump_operation(pool: Pool, op: Any) -> dict[str, Any]:
    """An operation record of the generation the pool opens at; a resync one with its state."""
    if not isinstance(op, dict):
        return {"record": describe_op(op)}
    if op.get("kind") != RESYNC_KIND:
        return {"kind": op.get("kind"), "record": describe_op(op)}
    entry, problem = resync_device(pool, op)
    out: dict[str, Any] = {"kind": RESYNC_KIND, "device": entry.name if entry else None,
                           "device uuid": op.get("device"), "reason": op.get("reason")}
    started = resync_started(op)
    if started is not None:
        out["started"] = started
    if op.get("rate"):
        out["rate"] = op["rate"]
    out["state"] = "pending" if problem is None else f"of no use: {problem}"
    return out


def _dump_member(m: Member) -> dict[str, Any]:
    labels = {}
    for copy, err in enumerate(m.scan.label_errors):
        labels[copy_name(copy)] = "ok" if err is None else err.what
    gens: dict[tuple[int, bytes], dict[str, Any]] = {}
    for st in sorted(m.slots.values(), key=lambda s: (s.copy, s.index)):
        if st.header is None:
            continue
        h = st.header
        g = gens.setdefault((h.generation, h.digest), {
            "generation": h.generation, "time": format_time(h.time), "digest": h.digest.hex(),
            "copies": [], "damaged copies": [], "committed": False})
        g["copies" if st.problem is None else "damaged copies"].append(copy_name(st.copy))
    for rs in m.records.values():
        if rs.record is not None and (rs.record.generation, rs.record.digest) in gens:
            gens[(rs.record.generation, rs.record.digest)]["committed"] = True
    return {"path": m.name, "device uuid": m.uuid, "labels": labels,
            "generations": [gens[k] for k in sorted(gens, reverse=True)]}
