"""Mirrored writes: mark the dirty log, write every leg, degrade a failing leg.

A mirrored write
----------------
1. The regions it touches on every live leg enter the region gate
   (:class:`~vvfs.data.mirror.gate.RegionGate`), waiting while a resync
   holds one of them.
2. Their bits are set in each leg's dirty log and the log is on stable
   storage (:meth:`~vvfs.data.mirror.log.DirtyLog.mark`) -- at once when
   they are set already; otherwise the bitmap blocks are written with
   ``RWF_DSYNC`` and every write that set bits meanwhile waits for the same
   write (group commit).  A write that starts a region right after a set
   one (a sequential stream) sets :data:`MARK_AHEAD` more bits in the same
   log write, so a stream pays one log write per 9 regions, not per region.
3. The data goes to every live leg concurrently.  A leg whose call fails
   is failed; the write succeeds when every piece reached at least one leg.
4. Before the reply, if a leg was skipped or failed, the failure is
   *recorded*: the device is added to the stale list of every surviving
   log header (durably, once per failure; writes wait for it).  The bits
   of those regions stay set on the survivors until the device is back
   and resynced, so the ranges written while degraded are on media before
   the host hears of success -- even if the node dies before the failure
   reaches the configuration (which happens in the background, through
   the node's serialized management path).

Bits are cleared lazily by the cleaner (:mod:`.clean`).  The regions of a
write that ended part-way (cancelled, or an error that fails no device:
some legs may hold it and others not) are *suspect*
(:attr:`~vvfs.data.mirror.core.MirrorCore.suspect`): never cleaned, only
cleared by a resync that copied them, and a ``repair`` resync is started
for them at once.

Concurrency: everything runs on the trio thread; statements between two
awaits are atomic.  Cancellation: device calls are never abandoned; a
cancelled write may have reached some legs (its bits stay set, its regions
are suspect).
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from mapper.layout import Piece
from metadata.blockdev import DeviceIOError
from metadata.model import DeviceUUID
from vvfs.data.mirror.calls import Call, plan_calls, run_calls
from vvfs.data.mirror.core import MirrorCore, is_failure
from vvfs.data.mirror.gate import Key
from vvfs.data.mirror.log import DirtyLog
from vvfs.data.mirror.resync import ResyncEngine

#: A sequential stream reaching a new region sets this many more bits in the
#: same log write (not while degraded, where bits must name exactly what
#: was written); unused ones are cleared like any other.
MARK_AHEAD = 8


class MirroredWrites:
    """The write path of one pool's mirrored volumes (see the module docstring).

    Works on *core*'s devices, logs and gate; starts a ``repair`` resync on
    *resync* for the regions of a write that ended part-way.
    """

    def __init__(self, core: MirrorCore, resync: ResyncEngine) -> None:
        self.core = core
        self.resync = resync

    async def write(self, vio: Any, offset: int, view: memoryview,
                    alongside: Callable[[], Awaitable[None]] | None = None) -> None:
        """Write *view* at volume byte *offset* of mirrored volume *vio* (module docstring).

        *alongside* (the write guard's checksum entries) runs concurrently
        with the legs' writes, inside the region gate, once the regions'
        bits are durable: a resync holding a region never copies between a
        write's entries and its data, and a crash never leaves entries of
        bytes that are not on a leg in a region whose bit is clear.
        """
        core = self.core
        pieces = vio.vmap.resolve(offset, len(view))
        marks, keys, skipped = self._regions(pieces)
        for u in skipped:
            if u not in core.failed:  # not open since the start: it misses this write
                core.fail(u, DeviceIOError(core.name_of(u), 0, "device is missing",
                                           errno.ENOENT))
        await core.gate.enter(keys)
        done = False
        try:
            lost = await self._mark(marks, ahead=0 if skipped else MARK_AHEAD)
            if alongside is None:
                failed = await self._write_legs(pieces, offset, view)
            else:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(alongside)
                    failed = await self._write_legs(pieces, offset, view)
            done = True
        finally:
            wseq, devices = core.gate.wseq, core.devices
            for k in keys:
                dev = devices.get(k[0])  # type: ignore[call-overload]
                if dev is not None:
                    wseq[k] = dev.completed_writes
            if not done:
                # cancelled or failed part-way: some legs may hold it and others not;
                # the bits stay until a resync makes the legs agree again
                core.suspect |= keys
                if core.spawn is not None:
                    core.spawn(self.resync.repair_suspect)
            core.gate.leave(keys)
        # every leg that did not get the data (skipped, or failed in _mark or the write)
        degraded = skipped | failed | lost
        if degraded:
            core.stats.degraded_writes += 1
            await core.record_all(degraded)

    def _regions(self, pieces: list[Piece]
                 ) -> tuple[dict[DeviceUUID, set[int]], set[Key], set[DeviceUUID]]:
        """(regions to mark per live leg, their gate keys, legs not open) of mirrored *pieces*."""
        marks: dict[DeviceUUID, set[int]] = {}
        keys: set[Key] = set()
        skipped: set[DeviceUUID] = set()
        devices, geos = self.core.devices, self.core.geos
        for p in pieces:
            if len(p.legs) < 2:
                continue
            for dev, off in p.legs:
                if dev not in devices:
                    skipped.add(dev)
                    continue
                geo = geos.get(dev)
                if geo is None:
                    continue
                first = (off - geo.data_start) // geo.region
                last = (off + p.length - 1 - geo.data_start) // geo.region
                mine = marks.get(dev)
                if mine is None:
                    mine = marks[dev] = set()
                for r in range(first, last + 1):
                    mine.add(r)
                    keys.add((dev, r))
        return marks, keys, skipped

    async def mark_ranges(self, ranges: Iterable[tuple[str, int, int]]) -> int:
        """Set (durably) the bits of device byte ranges ``(device, offset, length)``."""
        core = self.core
        marks: dict[DeviceUUID, set[int]] = {}
        for dev, off, length in ranges:
            geo = core.geos.get(DeviceUUID(dev))
            if geo is not None and dev in core.logs:
                marks.setdefault(DeviceUUID(dev), set()).update(geo.regions_of(off, length))
        await self._mark(marks)
        return sum(len(v) for v in marks.values())

    async def _mark(self, marks: dict[DeviceUUID, set[int]], ahead: int = 0
                    ) -> set[DeviceUUID]:
        """Set bits on every leg's log; wait (concurrently) only for logs that must write.

        Returns the devices that failed while their log was written.
        """
        errors: list[tuple[DeviceUUID, DeviceIOError]] = []
        waits: list[tuple[DeviceUUID, DirtyLog, int]] = []
        for u, regions in marks.items():
            lg = self.core.logs.get(u)
            if lg is not None:
                want = lg.mark_nowait(regions, ahead)
                if want is not None:
                    waits.append((u, lg, want))
        if not waits:
            return set()

        async def one(u: DeviceUUID, lg: DirtyLog, want: int) -> None:
            try:
                await lg.sync(want)
            except DeviceIOError as exc:
                errors.append((u, exc))

        if len(waits) == 1:
            await one(*waits[0])
        else:
            async with trio.open_nursery() as nursery:
                for w in waits:
                    nursery.start_soon(one, *w)
        for u, exc in errors:
            if not is_failure(exc):
                raise exc
            self.core.fail(u, exc)
        return {u for u, _ in errors}

    async def _write_legs(self, pieces: list[Piece], base: int, view: memoryview
                          ) -> set[DeviceUUID]:
        """Write every piece to every live leg; return the legs it did not reach.

        Those are the devices that failed during the write and those that
        failed (left the live table) since the write computed its regions.
        """
        core = self.core
        absent = {loc.device for p in pieces if len(p.legs) > 1 for loc in p.legs
                  if loc.device not in core.devices}
        calls: list[Call] = []
        for m in range(max((len(p.legs) for p in pieces), default=0)):
            calls += plan_calls(((i, p, p.legs[m]) for i, p in enumerate(pieces)
                                 if len(p.legs) > m and p.legs[m].device in core.devices),
                                base, view)
        ok = [0] * len(pieces)
        errors = await run_calls(core.devices, calls, read=False, ok=ok)
        failed: set[DeviceUUID] = set()
        other: DeviceIOError | None = None
        for call, exc in errors:
            if is_failure(exc):
                core.fail(call.device, exc)
                failed.add(call.device)
            elif other is None:
                other = exc
        if other is not None:
            raise other
        for i, n in enumerate(ok):
            if not n:
                p = pieces[i]
                raise DeviceIOError(p.legs[0].device, p.legs[0].offset,
                                    f"no leg could store volume bytes {p.offset}+{p.length}",
                                    errno.EIO)
        return failed | absent
