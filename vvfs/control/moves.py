"""Online moves, management side: record, abort, checkpoint, switch, status.

The protocol (record, mirror writes, copy, checkpoint, switch; resume and
abort) is described in :mod:`vvfs.node.jobs`, where the copy runs.  These
are the management calls: each is one commit, serialized with every other
management call by the node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mapper import move as moves
from metadata.model import Pool
from vvfs.control.ports import JobsPort, MirrorsPort
from vvfs.control.session import PoolSession, split_volume_path
from vvfs.errors import ApiError, JobError, NotFoundError, RefusedError


def need_jobs(s: PoolSession, what: str) -> JobsPort:
    """The node's background work; JobError offline (*what* says what needs it)."""
    if s.ports.jobs is None:
        raise JobError(f"{what} runs in the node: mount the pool (vv mount) and run it again")
    return s.ports.jobs


def _summary(pool: Pool, record: moves.MoveRecord | None) -> dict[str, Any]:
    if record is None:
        return {}
    return {"id": record.id, "what": record.what, "state": "recorded",
            "copied": record.copied, "total": record.total, "checkpoint": record.copied,
            "extent_size": pool.extent_size, "pool": pool.name}


def _refuse_degraded(svc: MirrorsPort | None, pool: Pool, record: moves.MoveRecord) -> None:
    """RefusedError if a device the move involves is failed or being resynced."""
    devices = moves.involved(pool, record)
    for d in pool.devices:
        if d.uuid not in devices:
            continue
        if d.state == "failed" or (svc is not None and svc.is_failed(pool.uuid, d.uuid)):
            raise RefusedError(f"device {d.name} is failed: bring it back (vv device online)"
                               " or replace it (vv device replace) before moving data")
        if svc is not None and svc.is_busy(pool.uuid, d.uuid):
            raise RefusedError(f"device {d.name} is being resynced; move once it is done"
                               " (vv status shows it)")


def _start(s: PoolSession, pool_name: str, plan: Callable[[Pool], Pool]) -> dict[str, Any]:
    jobs = need_jobs(s, "moving data")
    if not jobs.guards_enabled:
        raise JobError("this node runs without write guards (VVFS_BENCH_NO_GUARD): no moves")
    with s.changing(pool_name) as op:
        try:
            new = plan(op.pool)
        except moves.MoveError as exc:
            raise RefusedError(str(exc)) from None
        record = moves.find(new)
        if record is None:
            raise JobError(f"pool {pool_name}: the move was planned but not recorded")
        _refuse_degraded(s.ports.mirrors, new, record)
        jobs.note_started(record.id)
        s.commit(op, new)
        return _summary(new, record)


def move_volume(s: PoolSession, path: str, to: str | None, source: str | None,
                abort: bool, rate: int = 0) -> dict[str, Any]:
    pool_name, name = split_volume_path(path)
    if abort:
        return abort_move(s, pool_name, name)
    if not to:
        raise ApiError("name the device to move to (--to DEV)")
    return _start(s, pool_name, lambda pool: moves.plan_move(pool, name, to, source, rate=rate))


def evacuate_device(s: PoolSession, pool_name: str, key: str, rate: int = 0) -> dict[str, Any]:
    return _start(s, pool_name, lambda pool: moves.plan_evacuate(pool, key, rate=rate))


def abort_move(s: PoolSession, pool_name: str, volume: str | None = None) -> dict[str, Any]:
    """Stop the pool's move (of *volume*, if named) and drop its record."""
    jobs = s.ports.jobs
    with s.changing(pool_name) as op:
        record = moves.find(op.pool)
        if record is not None and volume is not None:
            vol = op.pool.volume(volume)
            if vol.uuid not in record.volumes():
                record = None
        if record is None:
            raise NotFoundError(f"no move of {pool_name}/{volume or '*'} in progress")
        if jobs is not None:
            jobs.stop_move(op.pool.uuid)
        try:
            new = s.commit(op, moves.abort(op.pool, record.id))
        except BaseException:
            if jobs is not None:
                jobs.restart_move(op.pool.uuid)
            raise
        if jobs is not None:
            jobs.emit(op.pool.uuid, "move-aborted", "info", op.pool.name,
                      f"move {record.id} ({record.what}) aborted at extent"
                      f" {record.copied} of {record.total}; the map is unchanged")
        out = _summary(op.pool, record)
        out["state"] = "aborted"
        out["generation"] = new.generation
        return out


def move_status(s: PoolSession, pool_name: str) -> dict[str, Any]:
    """The move in progress in the pool: live progress from the node, else the record."""
    jobs = s.ports.jobs
    with s.reading(pool_name) as op:
        record = moves.find(op.pool)
        live = jobs.move_progress(op.pool.uuid) if jobs is not None else None
        if live is not None:
            live["pool"] = op.pool.name
            live["extent_size"] = op.pool.extent_size
            if record is None and live["state"] not in ("failed",):
                live["state"] = "done"
            return live
        return _summary(op.pool, record)


def checkpoint(s: PoolSession, pool_name: str, op_id: str, copied: int) -> None:
    """(The node's move task) commit that *copied* extents are copied and flushed."""
    with s.changing(pool_name) as op:
        s.commit(op, moves.checkpoint(op.pool, op_id, copied))


def finish(s: PoolSession, pool_name: str, op_id: str) -> None:
    """(The node's move task) switch the map to the destination and drop the record."""
    with s.changing(pool_name) as op:
        s.commit(op, moves.switch(op.pool, op_id))
