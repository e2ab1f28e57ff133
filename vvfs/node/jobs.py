"""Online moves (``vv volume move``, ``vv device evacuate``) and the node's background jobs.

The protocol (like pvmove, but resumable and abortable)
-------------------------------------------------------
1. **Record** (``Manager.move_volume`` / ``evacuate_device``, a management
   call): :func:`mapper.move.plan_move` allocates the destination runs and
   adds a move record to ``Pool.operations`` (its ``reserved`` runs keep the
   allocator off them); one commit.  Every map still names the old place.
2. **Mirror writes**: as soon as the node applies that configuration, every
   write to a moving run also goes to its destination (``vvfs/data/guard.py``,
   data and checksums), copied yet or not.
3. **Copy** (:class:`MoveTask`, a task in the node's nursery): extent by
   extent, in the record's order, from ``copied`` on: the extent's volume
   range is locked exclusively (writes to it wait, writes in flight there are
   waited for), read from the source, written to the destination with its
   checksum entries, unlocked.
4. **Checkpoint**: every :data:`CHECKPOINT_EXTENTS` extents or
   :data:`CHECKPOINT_SECONDS` seconds the destination devices are flushed
   and ``copied`` is committed (``Manager.move_checkpoint``, through
   ``Node.call`` so that it is serialized with other management calls).
5. **Switch**: once all extents are copied, every moved volume is locked
   whole (writes to it wait; those in flight are waited for), the pool is
   checked whole again (no device of the move failed meanwhile), the
   destinations are flushed and one commit (``Manager.move_finish``,
   :func:`mapper.move.switch`) maps the moved runs at their destination and
   drops the record; the old extents are free from that generation on.  The
   writes that waited go on with the new map once it is applied.  So no
   write completes between the last flush of the destinations and the
   switch, and no dirty bit of a failed leg's partner is left on a source
   the switch drops.

**Failures and resyncs**: a move copies nothing while a device holding the
moved volumes (or a destination) is failed, is being brought back, or while
the pool resyncs (after a crash, a return, a replacement): it *pauses* (an
event says why, ``state`` is ``paused``) and goes on by itself when the
pool is whole again.  Each extent is copied holding the pool's
``PoolMirror.copy_lock``, which a resync job holds from start to end, so a
resync never changes bytes a move is copying; what a resync writes to a
moving run also reaches the destination (``ResyncEngine._forward`` in :mod:`vvfs.data.mirror.resync`).  So the
switch never maps a destination that missed a resync, and the dirty bits
that survivors keep for a failed leg never sit on a source the switch
leaves behind.  ``vv volume move`` / ``vv device evacuate`` refuse to start
while one of those devices is failed or being resynced.

**Resume**: a node that opens a pool whose configuration holds a move record
(after a crash, a SIGKILL or an unmount) starts a :class:`MoveTask` for it.
The extents before ``copied`` were copied and flushed, but a write in flight
at a crash may have reached the source and not the destination: so they are
first *verified* -- compared under the lock and copied again where they
differ -- then copying goes on from ``copied``.

**Abort** (``vv volume move --abort``): the task is cancelled and waited for,
the write shadow removed and the writes that still carry it waited for, then
one commit drops the record.  The maps never stopped naming the old place:
everything is as it was; the destination extents are free.

A failure (a device error, a commit that fails) stops the task with the
record left in place: ``vv volume move ... --abort`` drops it, a remount
resumes it.  Offline (no node) a move cannot run; an abort works offline.

Jobs
----
:class:`Jobs` is the node's owner of this background work (moves here,
scrubs in :mod:`vvfs.node.scrub`) and of the write guards (:mod:`vvfs.data.guard`):
the node calls :meth:`Jobs.pool_changed` after it opened a pool or applied
a new configuration, and :meth:`Jobs.pool_dropped` before it closes a
pool's devices.  Manager calls reach it from their worker thread through
:meth:`Jobs.from_thread`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from mapper import move as moves
from metadata.blockdev import DeviceIOError
from metadata.errors import VVError
from metadata.model import DeviceUUID, PoolUUID, VolumeUUID
from vvfs.control.ports import Blocks, Range
from vvfs.data.checksums import BLOCK, ChecksumStore
from vvfs.data.guard import MoveShadow, PoolGuard
from vvfs.data.mirror import PoolMirror, is_failure
from vvfs.errors import JobError, NotFoundError, RefusedError
from vvfs.node.scrub import ScrubTask

if TYPE_CHECKING:
    from vvfs.data.volio import PoolIO
    from vvfs.node.node import Node

log = logging.getLogger(__name__)

T = TypeVar("T")

CHECKPOINT_EXTENTS = 16
CHECKPOINT_SECONDS = 2.0
#: VVFS_BENCH_NO_GUARD=1 serves volumes without write guards -- no checksums,
#: no moves -- only to measure what the guard costs (bench/, the README)
BENCH_NO_GUARD = os.environ.get("VVFS_BENCH_NO_GUARD") == "1"


def emit(node: Node, pool_uuid: str, kind: str, severity: str, obj: str, message: str) -> None:
    """Record an event (``vv events``) through the node's event queue."""
    node.mirrors.emit(pool_uuid, kind, severity, obj, message)


# ---------------------------------------------------------------------------
# node side


class MoveTask:
    """Copies the extents of one move record, then switches the map (see the module docstring)."""

    def __init__(self, jobs: Jobs, pio: PoolIO, record: moves.MoveRecord, resumed: bool) -> None:
        self.jobs = jobs
        self.pio = pio
        self.record = record
        self.resumed = resumed
        self.state = "starting"
        self.done = record.copied
        self.verified = 0
        self.error: str | None = None
        self.started = time.monotonic()
        self.bytes_copied = 0
        self.scope = trio.CancelScope()
        self.finished = trio.Event()
        #: why the copy waits (a failed device, a resync), or None
        self.paused: str | None = None
        self._involved: tuple[int, set[str]] = (-1, set())

    @property
    def esize(self) -> int:
        return self.pio.pool.extent_size

    def progress(self) -> dict[str, Any]:
        rec = self.record
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.bytes_copied / elapsed
        left = (rec.total - self.done) * self.esize
        return {"id": rec.id, "what": rec.what, "state": self.state, "copied": self.done,
                "total": rec.total, "checkpoint": rec.copied, "verified": self.verified,
                "extent_size": self.esize, "rate": rate,
                "eta": left / rate if rate > 0 else None, "error": self.error,
                "resumed": self.resumed, "paused": self.paused}

    async def run(self) -> None:
        try:
            with self.scope:
                await self._run()
        except (DeviceIOError, VVError) as exc:
            self.state, self.error = "failed", str(exc)
            emit(self.jobs.node, self.pio.uuid, "move-failed", "error", self.pio.name,
                 f"move {self.record.id} ({self.record.what}) failed at extent {self.done} of"
                 f" {self.record.total}: {exc}; abort it, or remount to resume it")
            self.jobs.drop_shadow(self.pio.uuid)
        finally:
            if self.state not in ("done", "failed"):
                self.state = "stopped"
            self.finished.set()

    async def _run(self) -> None:
        rec = self.record
        # the guard has the move's shadow now; writes the native driver serves do not
        # pass the guard, so its tables of this pool go before the first copy
        await self.jobs.node.quiesce_native(self.pio.uuid)
        emit(self.jobs.node, self.pio.uuid, "move-resumed" if self.resumed else "move-started",
             "info", self.pio.name, f"move {rec.id} ({rec.what}): "
             + (f"resuming at extent {rec.copied}" if self.resumed else "starting")
             + f" of {rec.total}")
        if self.resumed and rec.copied:
            self.state = "verifying"
            for k in range(rec.copied):
                await self._copy(k, verify=True)
                self.verified = k + 1
        self.state = "copying"
        last, last_time = self.done, time.monotonic()
        for k in range(self.done, rec.total):
            await self._copy(k, verify=False)
            self.done = k + 1
            await self._throttle()
            if (self.done - last >= CHECKPOINT_EXTENTS
                    or time.monotonic() - last_time >= CHECKPOINT_SECONDS):
                await self._checkpoint(self.done)
                last, last_time = self.done, time.monotonic()
        while True:
            # the switch: no write to the moved volumes is in flight or starts, and
            # every device they use is in service (else the survivors' dirty bits
            # for a failed leg would stay on a source the switch leaves behind)
            async with self._quiet(), self._volumes_held():
                if self._blocked() is None:
                    self.state = "finishing"
                    await self._flush()
                    await self.jobs.node.call("move_finish", {"pool_name": self.pio.name,
                                                              "op_id": rec.id})
                    break
        self.state = "done"
        emit(self.jobs.node, self.pio.uuid, "move-done", "info", self.pio.name,
             f"move {rec.id} ({rec.what}) done: {rec.total} extents, map switched")

    async def _throttle(self) -> None:
        """Sleep so that the copy keeps to the record's rate limit, if any."""
        if self.record.rate > 0:
            due = self.started + self.bytes_copied / self.record.rate
            await trio.sleep(max(0.0, due - time.monotonic()))

    def _mirror(self) -> PoolMirror | None:
        return self.jobs.node.mirrors.pools.get(self.pio.uuid)

    def _blocked(self) -> str | None:
        """Why the move must not copy now (see the module docstring), or None."""
        pm = self._mirror()
        if pm is None:
            return None
        why = pm.resyncing_now()
        if why is not None:
            return why
        pool = self.pio.pool
        if self._involved[0] != pool.generation:
            self._involved = (pool.generation, moves.involved(pool, self.record))
        devices = self._involved[1]
        busy = self.jobs.node.mirrors.is_busy  # resyncing, or about to be brought back
        for what, hit in (("failed", [u for u in devices if u in pm.failed]),
                          ("being resynced", [u for u in devices if busy(self.pio.uuid, u)])):
            if hit:
                names = sorted(pm.name_of(u) for u in hit)
                return f"device {', '.join(names)} {'is' if len(names) == 1 else 'are'} {what}"
        return None

    @contextlib.asynccontextmanager
    async def _quiet(self) -> AsyncIterator[None]:
        """Wait until the move may copy (pausing meanwhile), then hold the pool's copy lock."""
        pm = self._mirror()
        if pm is None:
            yield
            return
        async with pm.quiet(self._blocked, self._pause):
            if self.paused is not None:
                self._unpause()
            yield

    def _pause(self, why: str) -> None:
        if self.paused != why:
            self.paused = why
            emit(self.jobs.node, self.pio.uuid, "move-paused", "warning", self.pio.name,
                 f"move {self.record.id} ({self.record.what}) paused at extent"
                 f" {self.done} of {self.record.total}: {why}; it goes on when the pool"
                 " is whole again (or abort it)")

    @contextlib.asynccontextmanager
    async def _volumes_held(self) -> AsyncIterator[None]:
        """Hold every moved volume whole, exclusively: writes to them wait (the switch)."""
        guard = self.jobs.guards[self.pio.uuid]
        async with contextlib.AsyncExitStack() as stack:
            for uuid in sorted(self.record.volumes()):
                vio = self.pio.volumes.get(uuid)  # type: ignore[call-overload]
                if vio is not None:
                    await stack.enter_async_context(guard.lock(vio.uuid).exclusive(0, vio.size))
            yield

    def _unpause(self) -> None:
        emit(self.jobs.node, self.pio.uuid, "move-continued", "info", self.pio.name,
             f"move {self.record.id} ({self.record.what}) goes on at extent {self.done}"
             f" (was paused: {self.paused})")
        self.paused = None

    def _check_shadow(self) -> None:
        guard = self.jobs.guards.get(self.pio.uuid)
        shadow = guard.move if guard else None
        if shadow is None or shadow.record.id != self.record.id:
            raise JobError(f"move {self.record.id}: writes are no longer mirrored to the"
                           " destination")
        if shadow.failed is not None:
            raise JobError(f"a write could not reach the destination: {shadow.failed}")

    async def _copy(self, k: int, *, verify: bool) -> None:
        """Copy (or verify and copy) extent *k* of the move under its volume range lock.

        A source that fails as a mirror leg is failed like any leg (the
        volume goes on degraded) and the copy pauses until it is back;
        any other device error fails the move.
        """
        p, j = self.record.locate(k)
        geo = {d.uuid: d for d in self.pio.pool.devices}
        src = geo[DeviceUUID(p.source)].data_start + (p.src + j) * self.esize
        dst = geo[DeviceUUID(p.dest)].data_start + (p.dst + j) * self.esize
        first, count = p.logical(j)
        guard = self.jobs.guards[self.pio.uuid]
        while True:
            self._check_shadow()
            vio = self.pio.volumes.get(p.volume)  # type: ignore[call-overload]
            if vio is None:
                raise JobError(f"move {self.record.id}: volume {p.volume} is gone")
            async with self._quiet(), guard.lock(vio.uuid).exclusive(
                    first * self.esize, (first + count) * self.esize):
                devs = self.pio.devices
                source, dest = devs.get(DeviceUUID(p.source)), devs.get(DeviceUUID(p.dest))
                if source is None or dest is None:
                    raise JobError(f"move {self.record.id}: device"
                                   f" {p.source if source is None else p.dest} is not open")
                try:
                    data = await source.pread(self.esize, src)
                except DeviceIOError as exc:
                    if not self._leg_failed(vio, DeviceUUID(p.source), exc):
                        raise
                    continue
                if verify and await dest.pread(self.esize, dst) == data:
                    return
                await dest.pwrite(data, dst)
                self.bytes_copied += len(data)
                if guard.checksummed(vio):
                    await guard.store.copy(DeviceUUID(p.source), src, DeviceUUID(p.dest), dst,
                                           self.esize // BLOCK)
                return

    def _leg_failed(self, vio: Any, device: DeviceUUID, exc: DeviceIOError) -> bool:
        """Fail *device* as a leg of mirrored volume *vio* if *exc* fails a device; say if so."""
        pm = self._mirror()
        if pm is None or vio.volume.mirrors < 2 or not is_failure(exc):
            return False
        if device not in pm.failed:
            pm.fail(device, exc)
        return True

    async def _flush(self) -> None:
        for uuid in {p.dest for p in self.record.pieces}:
            dev = self.pio.devices.get(DeviceUUID(uuid))
            if dev is not None:
                await dev.flush()

    async def _checkpoint(self, copied: int) -> None:
        await self._flush()
        await self.jobs.node.call("move_checkpoint", {"pool_name": self.pio.name,
                                                      "op_id": self.record.id,
                                                      "copied": copied})
        log.debug("move %s: checkpoint at %d of %d", self.record.id, copied, self.record.total)


class Jobs:
    """The node's background work and write guards (see the module docstring)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.guards: dict[PoolUUID, PoolGuard] = {}
        self.moves: dict[PoolUUID, MoveTask] = {}
        self.scrubs: dict[tuple[str, str], ScrubTask] = {}
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        #: ids of the moves recorded through this node (copied from the start)
        self._started: set[str] = set()

    async def attach(self, nursery: trio.Nursery) -> None:
        """Start running background work in *nursery*; resume moves of the open pools."""
        self._nursery = nursery
        self._token = trio.lowlevel.current_trio_token()
        for pio in list(self.node.pools.values()):
            self.pool_changed(pio)

    def from_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run async *fn* on the node's trio thread from a Manager call's worker thread."""
        if self._token is None:
            raise JobError("the node is not running background work yet")
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    # -- configuration changes (trio thread) ------------------------------------

    def pool_changed(self, pio: PoolIO) -> None:
        """Attach guards to *pio*'s volumes; start, resume or forget its move."""
        guard = self.guards.get(pio.uuid)
        if guard is None:
            guard = self.guards[pio.uuid] = PoolGuard(ChecksumStore(pio.pool, pio.devices))
        else:
            guard.store.swap(pio.pool)
        for vio in pio.volumes.values():
            vio.guard = None if BENCH_NO_GUARD else guard
        for uuid in [u for u in guard.locks if u not in pio.volumes]:
            del guard.locks[uuid]
        try:
            record = moves.find(pio.pool)
        except moves.MoveError as exc:
            log.error("pool %s: move record not understood, not resumed: %s", pio.name, exc)
            record = None
        task = self.moves.get(pio.uuid)
        if record is None:
            guard.move = None
            if task is not None and task.state not in ("finishing", "done"):
                task.scope.cancel()
            self.moves.pop(pio.uuid, None)
            return
        if task is not None and task.record.id == record.id:
            task.record = record if task.state != "finishing" else task.record
            return
        if task is not None:
            task.scope.cancel()
        if guard.move is None or guard.move.record.id != record.id:
            guard.move = MoveShadow.build(pio.pool, record)
        if self._nursery is None:
            return  # attach() starts it
        resumed = record.id not in self._started
        task = self.moves[pio.uuid] = MoveTask(self, pio, record, resumed)
        self._nursery.start_soon(task.run)

    def drop_shadow(self, pool_uuid: str) -> None:
        guard = self.guards.get(PoolUUID(pool_uuid))
        if guard is not None:
            guard.move = None

    async def pool_dropped(self, pool_uuid: str) -> None:
        """Stop the pool's background work (before its devices are closed)."""
        task = self.moves.pop(PoolUUID(pool_uuid), None)
        if task is not None:
            task.scope.cancel()
            await task.finished.wait()
        for key in [k for k in self.scrubs if k[0] == pool_uuid]:
            scrub = self.scrubs.pop(key)
            scrub.scope.cancel()
            await scrub.finished.wait()
        self.guards.pop(PoolUUID(pool_uuid), None)

    # -- called from Manager calls (through from_thread) ----------------------

    def note_started(self, op_id: str) -> None:
        """A move recorded by this node: copy from the start, nothing to verify."""
        self._started.add(op_id)

    async def stop_move(self, pool_uuid: str) -> None:
        """Stop the pool's move task and the write shadow; wait for writes carrying it."""
        task = self.moves.pop(PoolUUID(pool_uuid), None)
        if task is not None:
            task.scope.cancel()
            await task.finished.wait()
        guard = self.guards.get(PoolUUID(pool_uuid))
        shadow = guard.move if guard else None
        if guard is not None:
            guard.move = None
        if shadow is not None:
            # writes from now on miss the destination: if the move is started
            # again (the abort's commit failed), it must verify what it copied
            self._started.discard(shadow.record.id)
            await shadow.wait_idle()

    def move_progress(self, pool_uuid: str) -> dict[str, Any] | None:
        task = self.moves.get(PoolUUID(pool_uuid))
        return task.progress() if task is not None else None

    def restart(self, pool_uuid: str) -> None:
        pio = self.node.pools.get(PoolUUID(pool_uuid))
        if pio is not None:
            self.pool_changed(pio)

    # -- scrubs and checksum fills (trio thread) ------------------------------------

    async def start_scrub(self, pool_uuid: str, volume_uuid: str, repair: bool
                          ) -> dict[str, Any]:
        """Start a :class:`~vvfs.node.scrub.ScrubTask` of one volume; its status at once."""
        pio = self.node.pools.get(PoolUUID(pool_uuid))
        vio = pio.volumes.get(VolumeUUID(volume_uuid)) if pio is not None else None
        if pio is None or vio is None:
            raise NotFoundError("the node does not serve that volume")
        key = (pool_uuid, volume_uuid)
        running = self.scrubs.get(key)
        if running is not None and not running.finished.is_set():
            raise RefusedError(f"a scrub of {pio.name}/{vio.name} is already running")
        if self._nursery is None:
            raise RefusedError("the node is not ready for background work yet")
        task = self.scrubs[key] = ScrubTask(self, pio, vio, repair)
        self._nursery.start_soon(task.run)
        return task.status()

    def scrub_status(self, pool_uuid: str, volume_uuid: str) -> dict[str, Any] | None:
        task = self.scrubs.get((pool_uuid, volume_uuid))
        return task.status() if task is not None else None

    async def fill_checksums(self, pool_uuid: str, todo: list[Blocks], value: int
                             ) -> list[Blocks]:
        """Set the entries of *todo* to *value* in the pool's store; return what it does not cover."""
        guard = self.guards.get(PoolUUID(pool_uuid))
        if guard is None:
            return todo
        return [(dev, off, blocks) for dev, off, blocks in todo
                if not await guard.store.fill(dev, off, blocks, value)]

    async def zero_ranges(self, pool_uuid: str, ranges: list[Range]) -> list[Range]:
        """Zero device *ranges* through the pool's open devices (:meth:`PoolIO.zero_ranges`).

        Returns the ranges of devices the node does not have open (all of
        them for a pool it does not serve), for the caller to zero.
        """
        pio = self.node.pools.get(PoolUUID(pool_uuid))
        return list(ranges) if pio is None else await pio.zero_ranges(ranges)

    def statistics(self) -> dict[str, Any]:
        return {"guards": {u: g.statistics() for u, g in self.guards.items()},
                "moves": {u: t.progress() for u, t in self.moves.items()}}
