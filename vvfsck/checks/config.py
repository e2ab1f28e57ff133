"""Stage 2: the configuration of the generation the pool opens at.

Extents (on a device, inside it, used once, legs apart), leaked extents,
operation records left behind, and the rest of what :meth:`Pool.check`
demands.  The repairs here are edits of the pool (:attr:`Finding.edit`),
committed together as one new generation.  What a leak is, and why resync
records are kept, is in the :mod:`vvfsck` package docstring.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import mapper.move
from mapper.mirrors import RESYNC_KIND
from metadata import format as fmt
from metadata.errors import ConfigError
from metadata.model import Area, Device, Pool, Segment, Volume
from vvfsck.context import Ctx, decode
from vvfsck.findings import STAGE_CONFIG, Finding, format_time

# ---------------------------------------------------------------------------
# Extents


def check_extent_ranges(ctx: Ctx) -> None:
    """Every area on a known device and inside it (configuration and label agree)."""
    if ctx.choice is None:
        return
    pool = ctx.pool
    devs: dict[str, Device] = {d.uuid: d for d in pool.devices}
    for d in pool.devices:
        _check_device_geometry(ctx, d)
    for v, s, a in _areas(pool):
        dev = devs.get(a.device)
        if dev is None:
            _config_finding(ctx, f"pool {ctx.name}", None,
                            f"volume {v.name}: segment at extent {s.start} names unknown"
                            f" device {a.device}")
        elif a.start < 0 or a.start + s.area_length > dev.extent_count:
            _config_finding(ctx, ctx.where(dev.uuid), _device_offset(pool, dev, max(a.start, 0)),
                            f"volume {v.name}: extents {a.start}-{a.start + s.area_length - 1}"
                            f" lie outside device {dev.name} ({dev.extent_count} extents)")


def _areas(pool: Pool) -> Iterator[tuple[Volume, Segment, Area]]:
    """Every area of every segment of every volume."""
    for v in pool.volumes:
        for s in v.segments:
            for leg in s.areas:
                for a in leg:
                    yield v, s, a


def _device_offset(pool: Pool, dev: Device, extent: int) -> int:
    return dev.data_start + extent * pool.extent_size


def _check_device_geometry(ctx: Ctx, d: Device) -> None:
    m = ctx.member(d.uuid)
    if m is None or m.provisional:
        return
    g = m.label.geometry
    labelled = d.extent_count + d.csum_extents + d.log_extents
    if d.data_start != g.data_start or labelled > g.extent_count:
        _config_finding(ctx, m.name, fmt.LABEL_A_OFFSET,
                        f"generation {ctx.pool.generation} gives device {d.name}"
                        f" {d.extent_count} extents from byte {d.data_start}; its label"
                        f" {g.extent_count} from byte {g.data_start}")


def _config_finding(ctx: Ctx, where: str, offset: int | None, message: str) -> None:
    ctx.config_reported = True
    ctx.report(Finding("extents", where, offset, message, advice=_rollback_advice(ctx),
                       stage=STAGE_CONFIG))


def _rollback_advice(ctx: Ctx) -> str:
    gen = _consistent_generation(ctx)
    if gen is not None:
        return (f"generation {gen} is consistent: vvfsck --rollback {gen}, or fix the volumes"
                " concerned with vv")
    return "fix or remove the volumes concerned with vv"


def _consistent_generation(ctx: Ctx) -> int | None:
    """The newest older generation whose configuration passes Pool.check."""
    if ctx.choice is None:
        return None
    seen: set[tuple[int, bytes]] = set()
    for m in ctx.members:
        for st in m.slots.values():
            if st.ok and st.header is not None and st.header.generation < ctx.choice.generation:
                seen.add((st.header.generation, st.header.digest))
    for gen, digest in sorted(seen, reverse=True):
        pool = decode(ctx.source(gen, digest))
        if pool is None:
            continue
        try:
            pool.check()
        except ConfigError:
            continue
        return gen
    return None


def check_extent_overlaps(ctx: Ctx) -> None:
    """No physical extent used twice."""
    if ctx.choice is None:
        return
    pool = ctx.pool
    devs: dict[str, Device] = {d.uuid: d for d in pool.devices}
    runs: dict[str, list[tuple[int, int, str]]] = {}
    for v, s, a in _areas(pool):
        runs.setdefault(a.device, []).append((a.start, s.area_length, v.name))
    for uuid, dev_runs in runs.items():
        d = devs.get(uuid)
        if d is None:
            continue
        dev_runs.sort()
        reported: set[tuple[str, str]] = set()
        end, owner = -1, ""
        for start, n, name in dev_runs:
            if start < end and (owner, name) not in reported:
                reported.add((owner, name))
                _config_finding(ctx, ctx.where(uuid), _device_offset(pool, d, start),
                                f"extents {start}-{min(end, start + n) - 1} of device {d.name}"
                                f" are used by volume {owner} and volume {name}")
            if start + n > end:
                end, owner = start + n, name


def check_leg_devices(ctx: Ctx) -> None:
    """Mirror legs (and stripe columns) of a segment on distinct devices."""
    if ctx.choice is None:
        return
    pool = ctx.pool
    for v in pool.volumes:
        for s in v.segments:
            devs = [a.device for leg in s.areas for a in leg]
            for uuid in sorted({u for u in devs if devs.count(u) > 1}):
                d = ctx.entry(uuid)
                first = next(a for leg in s.areas for a in leg if a.device == uuid)
                off = _device_offset(pool, d, first.start) if d else None
                _config_finding(ctx, ctx.where(uuid), off,
                                f"volume {v.name}: the segment at extent {s.start} puts"
                                f" {devs.count(uuid)} of its legs or stripes on one device")


# ---------------------------------------------------------------------------
# Leaks


def check_leaked_extents(ctx: Ctx) -> None:
    """Extents mapped past what a volume's size needs (see "leak" in :mod:`vvfsck`)."""
    if ctx.choice is None:
        return
    pool = ctx.pool
    for v in pool.volumes:
        if not v.segments or any(s.stripes < 1 for s in v.segments):
            continue
        need = _logical_extents(v.size, pool.extent_size, v.stripes)
        kept = _trim(v.segments, need)
        excess = v.extents() - sum(s.length for s in kept)
        if excess <= 0:
            continue
        where, off = _first_excess(ctx, v.segments, kept)
        ctx.report(Finding(
            "leak", where, off,
            f"volume {v.name} maps {v.extents()} extents, its size needs {need}: {excess}"
            " extents are held but unreachable",
            fix=f"trim its map to {need} extents, freeing {excess} (a new generation)",
            stage=STAGE_CONFIG, edit=functools.partial(_trim_volume, v.uuid, need)))


def _logical_extents(size: int, extent_size: int, stripes: int) -> int:
    extents = -(-size // extent_size)
    return -(-extents // stripes) * stripes


def _trim(segments: list[Segment], need: int) -> list[Segment]:
    """The segments holding the first *need* logical extents, in whole stripe rows."""
    kept = []
    for s in segments:
        if s.start >= need:
            break
        length = min(s.length, -(-(need - s.start) // s.stripes) * s.stripes)
        kept.append(Segment(s.start, length, s.stripes, s.stripe_size,
                            [list(leg) for leg in s.areas]))
    return kept


def _first_excess(ctx: Ctx, segments: list[Segment], kept: list[Segment]) -> tuple[str, int | None]:
    for i, s in enumerate(segments):
        rows = kept[i].length // s.stripes if i < len(kept) else 0
        if i < len(kept) and kept[i].length == s.length:
            continue
        a = s.areas[0][0]
        d = ctx.entry(a.device)
        return ctx.where(a.device), (_device_offset(ctx.pool, d, a.start + rows) if d else None)
    return f"pool {ctx.name}", None


def _trim_volume(volume_uuid: str, need: int, pool: Pool) -> None:
    for v in pool.volumes:
        if v.uuid == volume_uuid:
            v.segments = _trim(v.segments, need)


# ---------------------------------------------------------------------------
# Operation records


def check_interrupted_operations(ctx: Ctx) -> None:
    """An operation record left in the configuration while no node runs: roll it back.

    Resync records are the exception (:func:`_check_resync`): a well-formed
    one is reported as pending and kept.
    """
    if ctx.choice is None:
        return
    for op in ctx.pool.operations:
        if isinstance(op, dict) and op.get("kind") == RESYNC_KIND:
            _check_resync(ctx, op)
            continue
        kind = str(op.get("kind", "an")) if isinstance(op, dict) else "an"
        resumable = _resumable_move(ctx.pool, op)
        if resumable is not None:
            ctx.report(Finding(
                "operations", f"pool {ctx.name}", None, resumable,
                fix="abort it: commit a generation without it (the volume map still names the"
                    " data's old place; the extents reserved for its destination become free)",
                stage=STAGE_CONFIG, edit=functools.partial(_drop_operation, op)))
            continue
        ctx.report(Finding(
            "operations", f"pool {ctx.name}", None,
            f"{kind} operation was interrupted ({describe_op(op)}); generation"
            f" {ctx.pool.generation} still records it and no node runs to finish it",
            fix="roll it back: commit a generation without it (the volume map still names"
                " the data's old place; extents it reserved become free)",
            stage=STAGE_CONFIG, edit=functools.partial(_drop_operation, op)))


def _resumable_move(pool: Pool, op: Any) -> str | None:
    """The finding for a well-formed move record (mapper/move.py) that matches the maps."""
    if not mapper.move.is_move(op):
        return None
    try:
        rec = mapper.move.parse(op)
        mapper.move.validate(pool)
    except ConfigError:
        return None  # reported as an interrupted operation, rolled back
    return (f"move in progress, resumable: {rec.what} (move {rec.id}), {rec.copied} of"
            f" {rec.total} extents copied at the last checkpoint; mounting the pool resumes it")


def _check_resync(ctx: Ctx, op: dict[str, Any]) -> None:
    """A resync record (vvfs/node/mirrors.py): pending and kept, or malformed and dropped.

    A well-formed record names a device of the pool that the configuration
    still has ``failed``: a ``vv device online`` or ``replace`` (or the
    node's probe) committed it and the node stopped before its resync ended.
    Unlike a move, nothing was left half done: the device stays out of
    service until a node resyncs it, commits it ``ok`` and drops the record,
    which the next mount does by itself.  So the record is reported as
    pending, not as damage: ``--repair`` keeps it and it does not count in
    the exit status.  Dropping it would lose nothing either, but would leave
    the device failed (its mirrors degraded) until someone thinks of running
    ``vv device online``; keeping it is what the administrator who asked
    for the resync expects.

    A record no node can act on (it names no device, or a device the pool
    does not list) or that is stale (its device is ``ok`` already, so the
    resync ended or was never needed) is reported with the reason, and the
    repair drops it.
    """
    entry, problem = resync_device(ctx.pool, op)
    if entry is None or problem is not None:
        ctx.report(Finding(
            "operations", f"pool {ctx.name}", None,
            f"resync record ({describe_op(op)}) {problem}",
            fix="drop the record: commit a generation without it", stage=STAGE_CONFIG,
            edit=functools.partial(_drop_operation, op)))
        return
    ctx.report(Finding(
        "operations", f"pool {ctx.name}", None, _pending_resync(ctx, op, entry),
        advice=f"mounting the pool resumes it, or vv device resync {ctx.name} {entry.name}",
        stage=STAGE_CONFIG, pending=True))


def resync_device(pool: Pool, op: dict[str, Any]) -> tuple[Device | None, str | None]:
    """The device of resync record *op*, and why the record is of no use (None: pending)."""
    device = op.get("device")
    if not isinstance(device, str) or not device:
        return None, "names no device: no node can finish it"
    entry = next((d for d in pool.devices if d.uuid == device), None)
    if entry is None:
        return None, (f"names device {device}, which generation {pool.generation} does not"
                      " list (removed or replaced since?)")
    if entry.state != "failed":
        return entry, (f"is stale: generation {pool.generation} has device {entry.name}"
                       f" {entry.state} already (its resync ended, or was never needed)")
    return entry, None


def _pending_resync(ctx: Ctx, op: dict[str, Any], entry: Device) -> str:
    why = [str(op.get("reason") or "returning")]
    started = resync_started(op)
    if started is not None:
        why.append(f"recorded {started}")
    found = "" if ctx.member(entry.uuid) is not None else (
        "; the device is not among those found: connect it first")
    return (f"resync of device {entry.name} pending ({', '.join(why)}): it stays failed"
            f" until the resync ends{found}")


def resync_started(op: dict[str, Any]) -> str | None:
    """When a resync record says it was made (None: it does not say, or not readably)."""
    started = op.get("started")
    if not isinstance(started, (int, float)) or isinstance(started, bool):
        return None
    try:
        return format_time(started)
    except (OverflowError, ValueError, OSError):
        return None


def describe_op(op: Any) -> str:
    """An operation record in one line, for findings and --dump."""
    if not isinstance(op, dict):
        return repr(op)[:80]
    return ", ".join(f"{k}={v!r}" for k, v in sorted(op.items()) if k != "kind")[:120] or "-"


def _drop_operation(op: Any, pool: Pool) -> None:
    pool.operations = [o for o in pool.operations if o != op]


# ---------------------------------------------------------------------------
# The rest


def check_configuration(ctx: Ctx) -> None:
    """Everything else Pool.check demands (names, segment order, coverage)."""
    if ctx.choice is None or ctx.config_reported:
        return
    try:
        ctx.pool.check()
    except ConfigError as exc:
        _config_finding(ctx, f"pool {ctx.name}", None, f"generation {ctx.pool.generation}:"
                        f" {exc}")
