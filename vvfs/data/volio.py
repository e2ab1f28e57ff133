"""Volume I/O: reads, writes and flushes of volumes over their maps.

A :class:`VolumeIO` turns a request on volume bytes into device calls:
``VolumeMap.resolve`` gives the pieces, pieces that continue each other on
one device are merged into one vectored call (a stripe row, a run of linear
segments), and the calls run concurrently on the node's
:class:`~vvfs.io.devio.DataDevice` objects.  A :class:`PoolIO` holds one
pool's devices and volumes and swaps in new configurations.

Concurrency (every statement holds between two ``await`` points of the one
trio thread; this module takes no locks -- the range locks of a write are
the guard's):

* **the write entry**: :meth:`VolumeIO.write` is the one entry of writes
  of volume bytes (the FUSE handler's).  Writers of device bytes do not
  come here: a move's copy, scrub repairs (``PoolGuard.write_leg``) and
  resync (:mod:`vvfs.data.mirror`) keep host writes out by their own locks
  (an exclusive range, a resync's regions).  When the node has attached a
  guard (``guard``, :class:`vvfs.data.guard.PoolGuard`: range locks,
  checksums, a move's shadow) it hands the write to ``PoolGuard.write``,
  which holds the range and calls :meth:`VolumeIO.write_unguarded` for the
  device I/O; without a guard it calls ``write_unguarded`` itself.  The guard never calls ``write`` (that
  would enter the guard again), so a write takes its range once.
* **mirrored volumes** (``mirror`` set by the node and more than one leg):
  reads, writes and flushes go to :class:`vvfs.data.mirror.PoolMirror` --
  read policies, reads verified by the block checksums and healed, degraded
  mode, the dirty log; see :mod:`vvfs.data.mirror`.
  What follows is the path of the other volumes (and of mirrored ones
  when no mirror is attached, as in handler tests).
* **read**: each piece is read from one leg -- round-robin over the legs per
  piece for the ``balanced`` policy (and ``first``), leg 0 for
  ``primary`` -- skipping legs whose device is not open.  The reply waits
  for every device call.
* **write** (``write_unguarded``): every piece goes to *every* leg; the
  request completes only when every device call of every leg has
  completed.  A failure of any call fails the whole request
  (``DeviceIOError``, EIO at the FUSE boundary); the other calls are still
  waited for, so no call is left running behind a reply.
* **zero** (fallocate PUNCH_HOLE / ZERO_RANGE, :meth:`VolumeIO.zero`): a
  volume with one copy is zeroed piece by piece with each device's fast
  primitive, inside the guard's range lock; a mirrored or moving volume
  gets zeros written through the write entry (dirty log, checksums, the
  move's second copy).
* **flush**: every device the volume maps is flushed concurrently; a device
  with no write completed since its last flush returns at once (see
  ``vvfs.io.devio``).  So a flush covers every write that completed before it.
* **cancellation**: device calls run in worker threads that are never
  abandoned; a cancelled request returns only after its in-flight calls
  have finished.  Like a crash, a cancelled write may have reached some
  legs and not others; the range holds old or new bytes per leg.
* **map swaps**: :meth:`VolumeIO.swap` replaces the map between requests; a
  request in flight keeps the map it resolved with.  Only growing and
  renaming are applied to volumes that are open (the node refuses to remove
  or shrink an open volume), so the old map stays valid for it.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from mapper.alloc import usage
from mapper.layout import Loc, Piece, VolumeMap
from metadata.blockdev import DeviceIOError
from metadata.model import DeviceUUID, Pool, PoolUUID, Volume, VolumeUUID
from vvfs.errors import NoSpaceError
from vvfs.io.devio import IOV_MAX, DataDevice

if TYPE_CHECKING:
    from vvfs.data.guard import PoolGuard

log = logging.getLogger(__name__)


Job = Callable[[], Awaitable[None]]
#: Bytes of zeros per write when a volume's zeroing goes through the write path.
ZERO_WRITE = 1 << 20
_ZEROS = memoryview(bytes(ZERO_WRITE))  # one buffer for every such write, never written to


@dataclass
class _Call:
    """One device call: consecutive device bytes from *offset* into/from *bufs*."""

    device: DeviceUUID
    offset: int
    bufs: list[memoryview] = field(default_factory=list)
    length: int = 0


@dataclass
class VolumeStats:
    reads: int = 0
    writes: int = 0
    flushes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    #: fallocate calls (:meth:`VolumeIO.zero`) and the bytes they zeroed
    zeroes: int = 0
    bytes_zeroed: int = 0
    errors: int = 0


class VolumeIO:
    """Reads and writes of one volume (see the module docstring).

    *devices* is the pool's live device table (shared with :class:`PoolIO`,
    so devices opened later are seen).  ``handles`` maps the FUSE file
    handles open on this volume to the pid that opened them.
    """

    def __init__(self, pool_uuid: PoolUUID, volume: Volume, vmap: VolumeMap,
                 devices: Mapping[DeviceUUID, DataDevice]) -> None:
        self.pool_uuid = pool_uuid
        self.volume = volume
        self.vmap = vmap
        self.devices = devices
        self.handles: dict[int, int] = {}
        self.stats = VolumeStats()
        self._rr = 0
        #: the pool's write guard (vvfs/data/guard.py: range locks, block
        #: checksums, a move's second copy), set by the node; :meth:`write`
        #: goes through it when set
        self.guard: PoolGuard | None = None
        #: the pool's vvfs.data.mirror.PoolMirror (set by the node): mirrored I/O
        self.mirror: Any = None

    @property
    def uuid(self) -> VolumeUUID:
        return self.volume.uuid

    @property
    def name(self) -> str:
        return self.volume.name

    @property
    def size(self) -> int:
        return self.vmap.size

    def swap(self, volume: Volume, vmap: VolumeMap) -> None:
        """Use a new configuration of this volume from the next request on."""
        log.debug("volume %s: new map (%d bytes)", volume.name, vmap.size)
        self.volume = volume
        self.vmap = vmap

    # -- requests -------------------------------------------------------------

    async def read(self, offset: int, length: int, *, all_legs: bool = False,
                   verify: bool = True) -> bytearray:
        """Read up to *length* bytes at *offset*; short or empty past the end.

        A mirrored volume's reads are verified by the block checksums and
        healed (:mod:`vvfs.data.mirror.verify`); *verify* False reads without
        (the guard's read-back of blocks whose entries it recomputes);
        *all_legs* judges every leg's copy, not only the one read -- for a
        caller that holds the range exclusively in the guard's range lock
        (the guard, before a partial write).
        """
        length = max(0, min(length, self.size - offset))
        out = bytearray(length)
        if length and self._mirrored:
            try:
                await self.mirror.read(self, offset, memoryview(out), all_legs=all_legs,
                                       verify=verify)
            except DeviceIOError:
                self.stats.errors += 1
                raise
        elif length:
            view = memoryview(out)
            pieces = self.vmap.resolve(offset, length)
            if len(pieces) == 1:  # the common case: one call, nothing to plan
                loc = self._pick_leg(pieces[0])
                await self._call(loc.device, [view], loc.offset, read=True)
            else:
                await self._run(_plan(pieces, offset, view, self._pick_leg), read=True)
        self.stats.reads += 1
        self.stats.bytes_read += length
        return out

    async def write(self, offset: int, data: bytes | memoryview) -> int:
        """Write *data* at *offset* on every leg; return the bytes written.

        The one write entry of the data path: through the guard when the
        node attached one, else straight to :meth:`write_unguarded` (see
        the module docstring).  A write that starts at or past the end
        raises :class:`NoSpaceError`; one that crosses the end is cut short
        there (as on a block device).  On cancellation: as
        :meth:`write_unguarded`; the guard releases its locks in ``finally``.
        """
        if self.guard is not None:  # range locks, checksums, moves: vvfs/data/guard.py
            return await self.guard.write(self, offset, data)
        return await self.write_unguarded(offset, data)

    async def write_unguarded(self, offset: int, data: bytes | memoryview,
                              alongside: Callable[[], Awaitable[None]] | None = None) -> int:
        """:meth:`write` without the guard: only the device I/O, on every leg.

        Called by :meth:`write` when there is no guard and by
        ``PoolGuard.write`` once it holds the range; any other writer must
        call :meth:`write`, or it would bypass range locks, checksums and a
        move's shadow.  Returns when every device call has ended; cancelled,
        it still waits for the calls in flight (the module docstring).
        *alongside* (the guard's checksum entries) runs concurrently with the
        device calls -- for a mirrored volume inside its region gate (see
        :meth:`vvfs.data.mirror.writes.MirrorWriter.write`).
        """
        if alongside is not None and not self._mirrored:  # no gate: alongside, as it comes
            async with trio.open_nursery() as nursery:
                nursery.start_soon(alongside)
                return await self.write_unguarded(offset, data)
        if offset >= self.size:
            raise NoSpaceError(f"volume {self.name}: write at byte {offset} is past its end"
                               f" ({self.size} bytes)")
        length = min(len(data), self.size - offset)
        view = memoryview(data)[:length]
        if self._mirrored:
            try:
                await self.mirror.write(self, offset, view, alongside)
            except DeviceIOError:
                self.stats.errors += 1
                raise
            self.stats.writes += 1
            self.stats.bytes_written += length
            return length
        pieces = self.vmap.resolve(offset, length)
        if len(pieces) == 1 and len(pieces[0].legs) == 1:  # one call, nothing to plan
            loc = pieces[0].legs[0]
            await self._call(loc.device, [view], loc.offset, read=False)
            self.stats.writes += 1
            self.stats.bytes_written += length
            return length
        calls: list[_Call] = []
        for leg in range(max((len(p.legs) for p in pieces), default=0)):
            mine = [p for p in pieces if len(p.legs) > leg]
            calls += _plan(mine, offset, view, functools.partial(_leg, leg))
        await self._run(calls, read=False)
        self.stats.writes += 1
        self.stats.bytes_written += length
        return length

    async def zero(self, offset: int, length: int, *, keep_allocation: bool = False) -> int:
        """Make volume bytes ``[offset, offset+length)`` read as zeros; return how many.

        The FUSE fallocate entry (PUNCH_HOLE, ZERO_RANGE): cut at the end of
        the volume.  A volume with one copy and no move in progress is
        zeroed with each device's fast primitive
        (:meth:`~vvfs.io.devio.DataDevice.zero`; *keep_allocation* as
        there) by :meth:`zero_unguarded`, inside the guard's range lock when
        there is a guard (``PoolGuard.zero``).  A mirrored or moving volume
        gets zeros written through :meth:`write`, the one write entry, so
        that its dirty log, block checksums and a move's second copy stay
        right (``ZERO_WRITE`` bytes at a time).  Durable after :meth:`flush`.
        """
        length = max(0, min(length, self.size - offset))
        if not length:
            return 0
        fast = self.vmap.mirrors < 2  # one copy: nothing to keep in step
        if fast and self.guard is not None:
            fast = await self.guard.zero(self, offset, length, keep_allocation)
        elif fast:
            await self.zero_unguarded(offset, length, keep_allocation=keep_allocation)
        if not fast:
            zeros = _ZEROS
            for pos in range(offset, offset + length, len(zeros)):
                await self.write(pos, zeros[:min(len(zeros), offset + length - pos)])
        self.stats.zeroes += 1
        self.stats.bytes_zeroed += length
        return length

    async def zero_unguarded(self, offset: int, length: int, *,
                             keep_allocation: bool = False) -> None:
        """:meth:`zero` of a volume with one copy, without the guard: the device calls.

        Called by :meth:`zero` without a guard and by ``PoolGuard.zero``
        once it holds the range.  Pieces that continue each other on one
        device (a stripe column, linear segments) are one call; the calls
        run concurrently.
        """
        calls: list[list[Any]] = []  # [device, offset, length]
        last: dict[DeviceUUID, list[Any]] = {}
        for p in self.vmap.resolve(offset, length):
            for loc in p.legs:
                call = last.get(loc.device)
                if call is not None and call[1] + call[2] == loc.offset:
                    call[2] += p.length
                else:
                    last[loc.device] = call = [loc.device, loc.offset, p.length]
                    calls.append(call)
        jobs: list[Job] = []
        for dev_uuid, off, n in calls:
            dev = self.devices.get(dev_uuid)
            if dev is None:
                self.stats.errors += 1
                raise DeviceIOError(dev_uuid, off, "device is missing")
            jobs.append(functools.partial(_zero_call, dev, off, n, keep_allocation))
        try:
            await _gather(jobs)
        except DeviceIOError:
            self.stats.errors += 1
            raise

    async def flush(self) -> None:
        """Flush every device of the volume concurrently (see module docstring)."""
        if self._mirrored:
            try:
                await self.mirror.flush(self)
            except DeviceIOError:
                self.stats.errors += 1
                raise
            self.stats.flushes += 1
            return
        devices = []
        for uuid in self.vmap.devices():
            dev = self.devices.get(uuid)
            if dev is None:
                raise DeviceIOError(uuid, 0, "device is missing; cannot flush")
            devices.append(dev)
        try:
            await _gather([dev.flush for dev in devices])
        except DeviceIOError:
            self.stats.errors += 1
            raise
        self.stats.flushes += 1

    def statistics(self) -> dict[str, object]:
        s = self.stats
        return {"name": self.name, "uuid": self.uuid, "size": self.size,
                "reads": s.reads, "writes": s.writes, "bytes_read": s.bytes_read,
                "bytes_written": s.bytes_written, "zeroes": s.zeroes,
                "bytes_zeroed": s.bytes_zeroed, "flushes": s.flushes, "errors": s.errors,
                "open": len(self.handles), "pids": sorted(set(self.handles.values()))}

    # -- internals --------------------------------------------------------------

    @property
    def _mirrored(self) -> bool:
        return self.mirror is not None and self.vmap.mirrors > 1

    def _pick_leg(self, piece: Piece) -> Loc:
        if len(piece.legs) == 1:
            return piece.legs[0]
        legs = [loc for loc in piece.legs if loc.device in self.devices]
        if not legs:
            return piece.legs[0]  # _run reports the missing device
        if self.volume.read_policy == "primary":
            return legs[0]
        self._rr += 1
        return legs[self._rr % len(legs)]

    async def _call(self, device: DeviceUUID, bufs: list[memoryview], offset: int, *,
                    read: bool) -> None:
        """One device call (what :meth:`_run` does for a single call, minus the planning)."""
        dev = self.devices.get(device)
        if dev is None:
            self.stats.errors += 1
            raise DeviceIOError(device, offset, "device is missing")
        try:
            if read:
                await dev.preadv(bufs, offset)
            else:
                await dev.pwritev(bufs, offset)
        except DeviceIOError:
            self.stats.errors += 1
            raise

    async def _run(self, calls: list[_Call], *, read: bool) -> None:
        jobs = []
        for call in calls:
            dev = self.devices.get(call.device)
            if dev is None:
                self.stats.errors += 1
                raise DeviceIOError(call.device, call.offset, "device is missing")
            fn = dev.preadv if read else dev.pwritev
            jobs.append(_bind(fn, call))
        try:
            await _gather(jobs)
        except DeviceIOError:
            self.stats.errors += 1
            raise


async def _zero_call(dev: DataDevice, offset: int, length: int, keep_allocation: bool) -> None:
    await dev.zero(offset, length, keep_allocation=keep_allocation)


def _leg(leg: int, piece: Piece) -> Loc:
    return piece.legs[leg]


def _bind(fn: Callable[[list[memoryview], int], Awaitable[None]], call: _Call) -> Job:
    async def job() -> None:
        await fn(call.bufs, call.offset)

    return job


def _plan(pieces: list[Piece], base: int, view: memoryview,
          pick: Callable[[Piece], Loc]) -> list[_Call]:
    """Device calls for *pieces*, merging pieces contiguous on one device."""
    calls: list[_Call] = []
    open_calls: dict[DeviceUUID, _Call] = {}
    for p in pieces:
        loc = pick(p)
        buf = view[p.offset - base:p.offset - base + p.length]
        call = open_calls.get(loc.device)
        if call is None or call.offset + call.length != loc.offset or len(call.bufs) >= IOV_MAX:
            call = _Call(loc.device, loc.offset)
            calls.append(call)
            open_calls[loc.device] = call
        call.bufs.append(buf)
        call.length += p.length
    return calls


async def _gather(jobs: list[Job]) -> None:
    """Run *jobs* concurrently; wait for all; raise the first DeviceIOError.

    Anything else a job raises propagates (as an exception group when
    several jobs ran).
    """
    if len(jobs) == 1:
        await jobs[0]()
        return
    errors: list[DeviceIOError] = []

    async def guarded(job: Job) -> None:
        try:
            await job()
        except DeviceIOError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(guarded, job)
    for exc in errors[1:]:
        log.warning("also failed: %s", exc)
    if errors:
        raise errors[0]


@dataclass
class PoolChange:
    """What a new configuration changed in a pool's volumes."""

    added: list[VolumeIO] = field(default_factory=list)
    removed: list[VolumeIO] = field(default_factory=list)
    #: (configuration before, the volume now) for resized, renamed or re-owned volumes
    changed: list[tuple[Volume, VolumeIO]] = field(default_factory=list)
    renamed_from: str | None = None


class PoolIO:
    """One pool's live devices and volumes.

    *devices* (device uuid -> open DataDevice) is owned by the node, which
    opens and closes devices; this object only reads it.
    """

    def __init__(self, pool: Pool, devices: dict[DeviceUUID, DataDevice]) -> None:
        self.pool = pool
        self.devices = devices
        self.volumes: dict[VolumeUUID, VolumeIO] = {}
        self.by_name: dict[str, VolumeIO] = {}
        for v in pool.volumes:
            self._add(VolumeIO(pool.uuid, v, VolumeMap(pool, v), devices))

    @property
    def uuid(self) -> PoolUUID:
        return self.pool.uuid

    @property
    def name(self) -> str:
        return self.pool.name

    def _add(self, vio: VolumeIO) -> None:
        self.volumes[vio.uuid] = vio
        self.by_name[vio.name] = vio

    def apply(self, pool: Pool) -> PoolChange:
        """Swap in configuration *pool*; return what changed.

        Maps are built first, so a configuration that does not resolve
        raises ConfigError and changes nothing.
        """
        maps = {v.uuid: (v, VolumeMap(pool, v)) for v in pool.volumes}
        change = PoolChange(renamed_from=self.pool.name if pool.name != self.pool.name else None)
        for uuid, vio in list(self.volumes.items()):
            if uuid not in maps:
                change.removed.append(vio)
                del self.volumes[uuid]
        for uuid, (v, vmap) in maps.items():
            known = self.volumes.get(uuid)
            if known is None:
                added = VolumeIO(pool.uuid, v, vmap, self.devices)
                self.volumes[uuid] = added
                change.added.append(added)
            else:
                old = known.volume
                known.swap(v, vmap)
                if _visible_change(old, v):
                    change.changed.append((old, known))
        self.by_name = {vio.name: vio for vio in self.volumes.values()}
        self.pool = pool
        return change

    def capacity(self) -> tuple[int, int]:
        """(data bytes, free bytes) of the pool, for statfs."""
        p = self.pool
        total = sum(d.extent_count for d in p.devices) * p.extent_size
        free = sum(u.free for u in usage(p).values()) * p.extent_size
        return total, free

    def open_names(self) -> set[str]:
        """Names of this pool's volumes that have open file handles."""
        return {vio.name for vio in self.volumes.values() if vio.handles}

    async def flush(self) -> None:
        """Flush every open device of the pool concurrently."""
        await _gather([dev.flush for dev in self.devices.values()])

    async def zero_ranges(self, ranges: Sequence[tuple[str, int, int]]
                          ) -> list[tuple[str, int, int]]:
        """Zero device byte ranges ``(device, offset, length)`` and flush those devices.

        For management (new extents, :mod:`vvfs.control.zeroing`): ranges
        that no volume of the live configuration maps, so no request of the
        data path touches them meanwhile.  Each goes to its open
        :class:`~vvfs.io.devio.DataDevice` (:meth:`~vvfs.io.devio.DataDevice.zero`,
        the path the node reads it by), all concurrently; the ranges of
        devices not open are returned untouched.  Raises the first
        DeviceIOError once every call has ended.
        """
        mine = [r for r in ranges if r[0] in self.devices]
        ways: Counter[str] = Counter()

        async def one(dev: DataDevice, offset: int, length: int) -> None:
            ways[await dev.zero(offset, length)] += length

        await _gather([functools.partial(one, self.devices[DeviceUUID(d)], off, n)
                       for d, off, n in mine])
        await _gather([self.devices[DeviceUUID(d)].flush for d in {d for d, _o, _n in mine}])
        if mine:
            log.info("pool %s: zeroed %s of new extents", self.name,
                     ", ".join(f"{how} {n}" for how, n in sorted(ways.items())))
        return [r for r in ranges if r[0] not in self.devices]


def _visible_change(old: Volume, new: Volume) -> bool:
    return (old.name, old.size, old.owner, old.group, old.mode, tuple(old.hosts)) != (
        new.name, new.size, new.owner, new.group, new.mode, tuple(new.hosts))
