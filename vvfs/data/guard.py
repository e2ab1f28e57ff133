"""The write guard: range locks, block checksums and a move's second copy.

:meth:`~vvfs.data.volio.VolumeIO.write`, the one write entry of the data
path, hands every write of a volume that has a guard to
:meth:`PoolGuard.write`, which wraps the volume's plain path
:meth:`~vvfs.data.volio.VolumeIO.write_unguarded` (mirroring, degraded legs:
untouched):

* **range lock**: the write registers the 4 KiB-aligned range it covers in
  the volume's :class:`RangeLock` for as long as it is in flight, and first
  waits while an *exclusive* lock (a move copying an extent, a scrub
  comparing a chunk) overlaps it; a write of a mirrored or moving volume also
  waits for overlapping writes in flight (each leg, entry and destination
  then ends with the same one);
* **checksums** (mirrored volumes, see :mod:`vvfs.data.checksums`): the crc32c of
  every whole block is computed before the write and stored on every leg's
  device concurrently with the data, inside the mirror's region gate once
  the dirty bits are durable (so a resync never copies between them); a write covering a block only in part
  takes an exclusive lock on the aligned range instead, reads the blocks it
  covers in part (verified, so that a rotted copy is healed before its other
  bytes are kept, see :mod:`vvfs.data.mirror.verify`), writes, reads the
  blocks back and stores their crc32c;
* **move shadow**: while a move is recorded (see :mod:`vvfs.node.jobs`), every
  device range of a write that lies in a moving run is also written to the
  run's destination (data and checksums), whether that extent is already
  copied or not -- a temporary mirror.  A failing shadow write fails the
  move, not the host's write.

* **zeroing** (:meth:`PoolGuard.zero`, fallocate of a volume with one
  copy): holds its range like a write and zeroes with the devices'
  primitive, unless a move is recorded for the volume -- then the caller
  writes zeros through the write entry, so the destination gets them too.

Concurrency (trio thread; statements between two awaits are atomic):

* a write enters the guard once, from ``VolumeIO.write``; the guard's own
  data write is ``VolumeIO.write_unguarded``, called once per request with
  the range held, never ``VolumeIO.write`` (that would enter the guard
  again: endless recursion, or a wait on its own exclusive range).
* writes share a range (``RangeLock.writing``); an exclusive holder
  (``RangeLock.exclusive``) first blocks new writes to its range, then waits
  for the writes in flight there to end -- so while it holds the range no
  write to it is in flight, and writes to it wait.
* every write holds its range (``writing``), with or without checksums or a
  move, so that an exclusive holder can always wait for it; the shadow of a
  write is decided once its range is held: a write that started before a
  move's record was dropped still writes its shadow, and
  :meth:`MoveShadow.wait_idle` lets an abort wait for those.
* cancellation: locks are released in ``finally``; a cancelled write may
  have reached some legs, entries or shadows and not others (like a crash).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from mapper.layout import Piece
from mapper.move import MoveRecord
from metadata import checksums
from metadata.blockdev import DeviceIOError
from metadata.model import DeviceUUID, Pool, VolumeUUID
from vvfs.data.checksums import BLOCK, ChecksumStore, Entry

log = logging.getLogger(__name__)


class RangeLock:
    """Shared (write) and exclusive holders of byte ranges of one volume.

    Writes share a range with each other, except *ordered* ones (see
    :meth:`enter_writing`), which also wait for every overlapping write in
    flight: a write that lands on several places (mirror legs, its checksum
    entries, a move's destination) must not overlap another one in flight,
    or each place could keep the bytes of a different one of them.
    """

    def __init__(self) -> None:
        self._writers: dict[int, tuple[int, int]] = {}
        self._locks: dict[int, tuple[int, int]] = {}
        self._next = 0
        self._changed = trio.Event()
        #: ordered writes waiting for an overlapping write to end
        self._ordered_waiting = 0

    @staticmethod
    def _overlaps(held: dict[int, tuple[int, int]], start: int, end: int) -> bool:
        return any(s < end and start < e for s, e in held.values())

    async def _wait_change(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _token(self) -> int:
        self._next += 1
        return self._next

    @contextlib.asynccontextmanager
    async def writing(self, start: int, end: int) -> AsyncIterator[None]:
        """Hold ``[start, end)`` shared, after any exclusive holder of it lets go."""
        tok = await self.enter_writing(start, end)
        try:
            yield
        finally:
            self.leave_writing(tok)

    async def enter_writing(self, start: int, end: int, *, ordered: bool = False) -> int:
        """:meth:`writing` without a context manager (the write path): returns a token.

        *ordered*: also after every overlapping write in flight has ended,
        so that overlapping writes land everywhere in the order they entered.
        No await at all when nothing overlaps (the usual case).
        """
        while (self._locks and self._overlaps(self._locks, start, end)) or (
                ordered and self._overlaps(self._writers, start, end)):
            self._ordered_waiting += ordered
            try:
                await self._wait_change()
            finally:
                self._ordered_waiting -= ordered
        tok = self._token()
        self._writers[tok] = (start, end)
        return tok

    def leave_writing(self, tok: int) -> None:
        del self._writers[tok]
        if self._locks or self._ordered_waiting:  # they wait for writers to end
            self._notify()

    @contextlib.asynccontextmanager
    async def exclusive(self, start: int, end: int) -> AsyncIterator[None]:
        """Hold ``[start, end)`` alone: new writes wait, writes in flight are waited for."""
        while self._overlaps(self._locks, start, end):
            await self._wait_change()
        tok = self._token()
        self._locks[tok] = (start, end)
        try:
            while self._overlaps(self._writers, start, end):
                await self._wait_change()
            yield
        finally:
            del self._locks[tok]
            self._notify()

    def statistics(self) -> dict[str, int]:
        return {"writes_in_flight": len(self._writers), "locked_ranges": len(self._locks)}


@dataclass
class _Run:
    source: DeviceUUID
    start: int  # device byte on source
    end: int
    dest: DeviceUUID
    dst: int  # device byte on dest matching *start*


@dataclass
class MoveShadow:
    """The moving runs of a move, in device bytes, for the write path."""

    record: MoveRecord
    runs: list[_Run]
    volumes: set[str]
    in_flight: int = 0
    failed: BaseException | None = None
    _idle: trio.Event = field(default_factory=trio.Event)

    @classmethod
    def build(cls, pool: Pool, record: MoveRecord) -> MoveShadow:
        devs = {d.uuid: d for d in pool.devices}
        esize = pool.extent_size
        runs = []
        for p in record.pieces:
            s, d = devs[DeviceUUID(p.source)], devs[DeviceUUID(p.dest)]
            start = s.data_start + p.src * esize
            runs.append(_Run(s.uuid, start, start + p.count * esize, d.uuid,
                             d.data_start + p.dst * esize))
        return cls(record, runs, {p.volume for p in record.pieces})

    def map(self, device: str, offset: int, length: int) -> list[tuple[int, DeviceUUID, int, int]]:
        """Parts of device range ``[offset, offset+length)`` that move: (skip, dest, dest byte, n)."""
        out = []
        end = offset + length
        for r in self.runs:
            if r.source != device or r.end <= offset or end <= r.start:
                continue
            lo, hi = max(offset, r.start), min(end, r.end)
            out.append((lo - offset, r.dest, r.dst + lo - r.start, hi - lo))
        return out

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()
            self._idle = trio.Event()

    async def wait_idle(self) -> None:
        """Return once no write that started with this shadow is in flight."""
        while self.in_flight:
            await self._idle.wait()


@dataclass
class GuardStats:
    guarded_writes: int = 0
    partial_writes: int = 0
    shadow_writes: int = 0
    shadow_errors: int = 0
    checksum_errors: int = 0


class PoolGuard:
    """The write guard of one pool's volumes (see the module docstring)."""

    def __init__(self, store: ChecksumStore) -> None:
        self.store = store
        self.move: MoveShadow | None = None
        self.locks: dict[VolumeUUID, RangeLock] = {}
        self.stats = GuardStats()
        self._warned: set[str] = set()

    def lock(self, volume: VolumeUUID) -> RangeLock:
        lk = self.locks.get(volume)
        if lk is None:
            lk = self.locks[volume] = RangeLock()
        return lk

    def checksummed(self, vio: object) -> bool:
        """Does this volume keep block checksums? (mirrored, on devices with regions)"""
        v = vio.volume  # type: ignore[attr-defined]
        return v.mirrors >= 2 and any(self.store.covers(d) for d in vio.vmap.devices())  # type: ignore[attr-defined]

    def statistics(self) -> dict[str, object]:
        s = self.stats
        return {"guarded_writes": s.guarded_writes, "partial_writes": s.partial_writes,
                "shadow_writes": s.shadow_writes, "shadow_errors": s.shadow_errors,
                "checksum_errors": s.checksum_errors, "store": self.store.statistics(),
                "move": self.move.record.id if self.move else None}

    async def write(self, vio: object, offset: int, data: bytes | memoryview) -> int:
        """Write *data* at *offset* of volume *vio* through its guard; return bytes written.

        Called by ``vio.write`` (the write entry); the data goes through
        ``vio.write_unguarded``.
        """
        write: Callable[[int, bytes | memoryview], Awaitable[int]] = vio.write_unguarded  # type: ignore[attr-defined]
        size: int = vio.size  # type: ignore[attr-defined]
        if offset >= size or not len(data):
            return await write(offset, data)
        csum = self.checksummed(vio)
        length = min(len(data), size - offset)
        view = memoryview(data)[:length]
        start, end = offset - offset % BLOCK, -(-(offset + length) // BLOCK) * BLOCK
        partial = csum and (start != offset or end != offset + length)
        lock = self.lock(vio.uuid)  # type: ignore[attr-defined]
        self.stats.guarded_writes += 1
        # every write holds its range, checksums or not: an exclusive holder (a
        # move's copy, a scrub) must be able to wait for it.  The shadow is
        # decided once the range is held, so a write that waited behind a
        # move's first copy still reaches the destination.
        if not partial:
            # a write that lands on several places waits for overlapping ones (RangeLock)
            ordered = csum or self.move is not None or vio.volume.mirrors >= 2  # type: ignore[attr-defined]
            tok = await lock.enter_writing(start, end, ordered=ordered)
            try:
                moving = self.move
                if not csum and (moving is None or vio.uuid not in moving.volumes):  # type: ignore[attr-defined]
                    return await write(offset, data)  # the plain path: no context manager
                return await self._guarded(vio, offset, view, csum, False, start, end, size)
            finally:
                lock.leave_writing(tok)
        async with lock.exclusive(start, end):
            await self._verify_edges(vio, offset, length, start, end, size)
            return await self._guarded(vio, offset, view, csum, True, start, end, size)

    async def zero(self, vio: object, offset: int, length: int, keep_allocation: bool) -> bool:
        """Zero volume bytes of a volume with one copy with the devices' primitive.

        Called by ``vio.zero``; holds the range like a write (ordered after
        overlapping writes in flight, so an exclusive holder waits for it)
        and calls ``vio.zero_unguarded``.  Returns False, having done
        nothing, when a move is recorded for the volume: its second copy
        needs the zeros as data, so the caller writes them through the
        write entry instead.
        """
        start, end = offset - offset % BLOCK, -(-(offset + length) // BLOCK) * BLOCK
        lock = self.lock(vio.uuid)  # type: ignore[attr-defined]
        tok = await lock.enter_writing(start, end, ordered=True)
        try:
            moving = self.move
            if moving is not None and vio.uuid in moving.volumes:  # type: ignore[attr-defined]
                return False
            await vio.zero_unguarded(offset, length,  # type: ignore[attr-defined]
                                     keep_allocation=keep_allocation)
            return True
        finally:
            lock.leave_writing(tok)

    async def _verify_edges(self, vio: object, offset: int, length: int, start: int, end: int,
                            size: int) -> None:
        """Before a partial write: check (and heal) the blocks it covers only in part.

        Their other bytes are kept and the block's entry is then recomputed
        from what a leg holds (:meth:`_refresh`), so a copy rotted there, on
        any leg, must be healed first, or its rot would be blessed by the new
        entry.  The range is held exclusively (``all_legs``).  Raises
        BlockChecksumError (EIO) when no copy of such a block is right: the
        write is refused.
        """
        whole = size - size % BLOCK
        edges = {b for b, partial in ((start, start != offset),
                                      (end - BLOCK, end != offset + length)) if partial}
        for b in sorted(edges):
            if b + BLOCK <= whole:
                await vio.read(b, BLOCK, all_legs=True)  # type: ignore[attr-defined]

    async def _guarded(self, vio: object, offset: int, view: memoryview, csum: bool,
                       partial: bool, start: int, end: int, size: int) -> int:
        """The write with checksums and/or a move's shadow; its range is held."""
        write: Callable[..., Awaitable[int]] = vio.write_unguarded  # type: ignore[attr-defined]
        length = len(view)
        moving = self.move
        shadow = moving if moving is not None and vio.uuid in moving.volumes else None  # type: ignore[attr-defined]
        if shadow is not None:
            shadow.enter()
        try:
            pieces = vio.vmap.resolve(offset, length)  # type: ignore[attr-defined]
            entries = [] if partial or not csum else _entries(pieces, offset, view, shadow)
            result = 0

            # the entries go with the data, inside the mirror's region gate
            store = functools.partial(self._store, entries) if entries else None

            async def data_write() -> None:
                nonlocal result
                result = await write(offset, view, store)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(data_write)
                if shadow is not None:
                    nursery.start_soon(self._shadow_write, vio, pieces, offset, view, shadow)
            if partial:
                self.stats.partial_writes += 1
                await self._refresh(vio, start, min(end, size - size % BLOCK), shadow)
            return result
        finally:
            if shadow is not None:
                shadow.leave()

    async def write_leg(self, devices: Mapping[DeviceUUID, Any], device: DeviceUUID,
                        offset: int, data: bytes | memoryview) -> None:
        """Write *data* at *offset* of one leg's device, and to a move's destination too.

        For writers that bypass :meth:`write` and put bytes straight on a
        leg (scrub repairs; resync has its own, ``vvfs.data.mirror.resync.ResyncEngine._forward``):
        while a move is recorded, what lands on a moving run must reach its
        destination as well.  The caller holds the volume range
        (``exclusive``) or otherwise keeps host writes out.  A destination
        that cannot be written fails the move (``shadow.failed``), not this
        write, as for a host write's shadow.
        """
        dev = devices.get(device)
        if dev is None:
            raise DeviceIOError(device, offset, "device is not open")
        await dev.pwrite(data, offset)
        shadow = self.move
        if shadow is None:
            return
        view = memoryview(data)
        try:
            for skip, dest, at, n in shadow.map(device, offset, len(view)):
                target = devices.get(dest)
                if target is None:
                    raise DeviceIOError(dest, at, "move destination is not open")
                await target.pwrite(view[skip:skip + n], at)
        except DeviceIOError as exc:
            self.stats.shadow_errors += 1
            if shadow.failed is None:
                shadow.failed = exc
            log.error("move %s: a repair could not reach the destination: %s",
                      shadow.record.id, exc)

    async def _store(self, entries: list[Entry]) -> None:
        try:
            await self.store.update(entries)
        except DeviceIOError as exc:
            # The data write decides the request's fate; a leg whose entry
            # could not be written is repaired by resync or scrub (rule 1).
            self.stats.checksum_errors += 1
            level = logging.DEBUG if exc.device in self._warned else logging.WARNING
            self._warned.add(exc.device)
            log.log(level, "checksum entries not written (resync or scrub repairs them): %s",
                    exc)

    async def _refresh(self, vio: object, start: int, end: int, shadow: MoveShadow | None) -> None:
        """Recompute the entries of whole blocks ``[start, end)`` after a partial write."""
        if end <= start:
            return
        # not verified: these blocks' entries are the ones being recomputed
        data = await vio.read(start, end - start, verify=False)  # type: ignore[attr-defined]
        view = memoryview(data)
        pieces = vio.vmap.resolve(start, end - start)  # type: ignore[attr-defined]
        await self._store(_entries(pieces, start, view, shadow))

    async def _shadow_write(self, vio: object, pieces: list[Piece], base: int, view: memoryview,
                            shadow: MoveShadow) -> None:
        devices = vio.devices  # type: ignore[attr-defined]
        try:
            for p in pieces:
                buf = view[p.offset - base:p.offset - base + p.length]
                for loc in p.legs:
                    for skip, dest, at, n in shadow.map(loc.device, loc.offset, p.length):
                        dev = devices.get(dest)
                        if dev is None:
                            raise DeviceIOError(dest, at, "move destination is not open")
                        await dev.pwrite(buf[skip:skip + n], at)
                        self.stats.shadow_writes += 1
        except DeviceIOError as exc:
            self.stats.shadow_errors += 1
            if shadow.failed is None:
                shadow.failed = exc
            log.error("move %s: a write could not reach the destination: %s", shadow.record.id,
                      exc)


def _entries(pieces: list[Piece], base: int, view: memoryview,
             shadow: MoveShadow | None) -> list[Entry]:
    """Checksum entries of the whole blocks of *view* (volume bytes from *base*) on every leg."""
    out: list[Entry] = []
    for p in pieces:
        first = -(-p.offset // BLOCK) * BLOCK
        last = (p.offset + p.length) - (p.offset + p.length) % BLOCK
        if last <= first:
            continue
        values = checksums.pack(checksums.block_crcs(view[first - base:last - base]))
        for loc in p.legs:
            out += shadowed(shadow, loc.device, loc.offset + first - p.offset, values)
    return out


def shadowed(shadow: MoveShadow | None, device: DeviceUUID, offset: int, values: bytes
             ) -> list[Entry]:
    """The packed entries *values* of the blocks from *device* byte *offset*, and their copies.

    A moving leg's entries move with it: where a running move (*shadow*)
    copies those blocks, their entries are stored at the destination too --
    by the write path and by every repair (verified reads, scrub).
    """
    out: list[Entry] = [(device, offset, values)]
    if shadow is not None:
        length = len(values) // checksums.ENTRY * BLOCK
        for skip, dest, at, n in shadow.map(device, offset, length):
            lo = skip // BLOCK * checksums.ENTRY
            out.append((dest, at, values[lo:lo + n // BLOCK * checksums.ENTRY]))
    return out
