"""The dirty log of one device, in the node (its format on media: :mod:`metadata.dirtylog`).

One :class:`DirtyLog` per open device of a pool (loaded by :func:`load_log`),
owned by the pool's :class:`~vvfs.data.mirror.PoolMirror`.  A set bit says
that the copies of a region may differ.

Step 2 of a mirrored write (:mod:`.writes`): the bits of the regions it
touches are set in each leg's dirty log and the log is on stable storage
(:meth:`DirtyLog.mark`) before the data goes out -- at once when they are
set already; otherwise the bitmap blocks are written with ``RWF_DSYNC`` and
every write that set bits meanwhile waits for the same write (group
commit).  A write that starts a region right after a set one (a sequential
stream) sets :data:`~vvfs.data.mirror.writes.MARK_AHEAD` more bits in the
same log write (``mark_nowait(ahead=...)``), so a stream pays one log write
per 9 regions, not per region.  Bits are cleared in memory by the cleaner
(:mod:`.clean`) and by resync (:mod:`.resync`) and written by the next sync.

Concurrency: everything runs on the trio thread; statements between two
awaits are atomic.  At most one log write is in flight per device and it
writes the newest content, so an older write never overwrites a newer one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import trio

from metadata import dirtylog
from metadata.dirtylog import LogGeometry, LogImage
from vvfs.io.devio import DataDevice

log = logging.getLogger(__name__)


@dataclass
class LogStats:
    marks_fast: int = 0
    marks_waited: int = 0
    block_writes: int = 0
    syncs: int = 0
    clears: int = 0


class DirtyLog:
    """The dirty log of one open device (see :mod:`metadata.dirtylog` and the module docstring).

    ``bits`` is the bitmap as it should be; ``_media`` what the last
    completed write put on the device.  At most one write is in flight and
    it writes the newest content, so an older write never overwrites a
    newer one.  :meth:`mark` returns once the bits it set are on media.
    """

    def __init__(self, dev: DataDevice, geo: LogGeometry, pool_uuid: str,
                 image: LogImage) -> None:
        self.dev = dev
        self.geo = geo
        self.pool_uuid = pool_uuid
        self.device_uuid = dev.uuid
        self.bits = bytearray(image.bits)
        self._media = bytearray(image.bits)
        self.set_regions: set[int] = set(dirtylog.set_bits(image.bits))
        self.stale: set[str] = set(image.stale)
        self.problems = list(image.problems)
        self._block_seq = dict(image.block_sequences)
        self._header_seq = image.sequence
        self._changed: set[int] = set()
        self._header_changed = False
        self._epoch = 0
        self._written = 0
        self._busy = False
        self._idle = trio.Event()
        self.stats = LogStats()
        if image.problems:  # rewrite what was damaged (as all-dirty) at the first sync
            self._changed = set(range(1, geo.blocks + 1))
            self._header_changed = True
            self._epoch = 1

    def is_set(self, r: int) -> bool:
        return r in self.set_regions

    async def mark(self, regions: Iterable[int]) -> None:
        """Set the bits of *regions*; return once they are on stable storage."""
        want = self.mark_nowait(regions)
        if want is not None:
            await self.sync(want)

    def mark_nowait(self, regions: Iterable[int], ahead: int = 0) -> int | None:
        """Set the bits of *regions* in memory; the epoch to :meth:`sync` to, or None.

        None means every bit was set and on media already (the usual case
        for a stream of writes): nothing to wait for.  With *ahead*, a new
        bit that continues a set one (a sequential stream) also sets the
        *ahead* bits after it, in the same log write.
        """
        changed = wait = False
        for r in regions:
            if r not in self.set_regions:
                stop = r + 1
                if ahead and r - 1 in self.set_regions:
                    stop = min(r + 1 + ahead, self.geo.regions)
                for q in range(r, stop):
                    if q not in self.set_regions:
                        dirtylog.set_bit(self.bits, q)
                        self.set_regions.add(q)
                        self._changed.add(dirtylog.block_of(q))
                changed = True
            elif not dirtylog.get_bit(self._media, r):
                wait = True
        if changed:
            self._epoch += 1
        if changed or wait:
            self.stats.marks_waited += 1
            return self._epoch
        self.stats.marks_fast += 1
        return None

    def clear(self, regions: Iterable[int]) -> int:
        """Clear bits in memory (written by the next sync); return how many were set."""
        n = 0
        for r in regions:
            if r in self.set_regions:
                dirtylog.clear_bit(self.bits, r)
                self.set_regions.discard(r)
                self._changed.add(dirtylog.block_of(r))
                n += 1
        if n:
            self._epoch += 1
            self.stats.clears += n
        return n

    async def set_stale(self, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        """Change the header's stale device list; return once it is on stable storage."""
        new = (self.stale | set(add)) - set(remove)
        if new == self.stale:
            await self.sync()
            return
        self.stale = new
        self._header_changed = True
        self._epoch += 1
        await self.sync(self._epoch)

    @property
    def pending(self) -> bool:
        return self._written < self._epoch

    async def sync(self, want: int | None = None) -> None:
        """Return once every change up to epoch *want* (default: all) is on the device."""
        want = self._epoch if want is None else want
        while self._written < want:
            if self._busy:
                await self._idle.wait()
                continue
            self._busy = True
            try:
                await self._write_once()
            finally:
                self._busy = False
                self._idle.set()
                self._idle = trio.Event()

    async def _write_once(self) -> None:
        epoch = self._epoch
        blocks = sorted(self._changed)
        header = self._header_changed
        self._changed = set()
        self._header_changed = False
        writes: list[tuple[int, bytes]] = []
        snaps: list[tuple[int, bytes]] = []
        if header:
            self._header_seq += 1
            writes.append((self.geo.offset, dirtylog.pack_header(
                self.pool_uuid, self.device_uuid, self.geo, self._header_seq, self.stale)))
        for b in blocks:
            self._block_seq[b] = self._block_seq.get(b, 0) + 1
            chunk = dirtylog.block_bytes(self.bits, self.geo, b)
            snaps.append((b, chunk))
            writes.append((self.geo.block_offset(b),
                           dirtylog.pack_block(self.device_uuid, b, self._block_seq[b], chunk)))
        try:
            for off, bufs in _runs(writes):
                await self.dev.pwritev_dsync(bufs, off)
                self.stats.block_writes += len(bufs)
        except BaseException:
            self._changed |= set(blocks)
            self._header_changed |= header
            raise
        for b, chunk in snaps:
            start = (b - 1) * dirtylog.BITMAP_BYTES
            self._media[start:start + len(chunk)] = chunk
        self._written = max(self._written, epoch)
        self.stats.syncs += 1

    def statistics(self) -> dict[str, object]:
        s = self.stats
        return {"dirty_regions": len(self.set_regions), "region": self.geo.region,
                "regions": self.geo.regions, "stale": sorted(self.stale),
                "marks_fast": s.marks_fast, "marks_waited": s.marks_waited,
                "block_writes": s.block_writes, "syncs": s.syncs, "clears": s.clears,
                "problems": [str(p) for p in self.problems]}


def _runs(writes: list[tuple[int, bytes]]) -> list[tuple[int, list[memoryview]]]:
    """Merge writes of consecutive blocks into vectored calls."""
    out: list[tuple[int, list[memoryview]]] = []
    end = -1
    for off, data in sorted(writes):
        if out and off == end:
            out[-1][1].append(memoryview(data))
        else:
            out.append((off, [memoryview(data)]))
        end = off + len(data)
    return out


async def load_log(dev: DataDevice, geo: LogGeometry, pool_uuid: str) -> DirtyLog:
    """Read a device's log (a damaged block counts as all-dirty); DeviceIOError if unreadable."""
    raw = await dev.pread((geo.blocks + 1) * dirtylog.BLOCK, geo.offset)
    image = dirtylog.decode(raw, geo, pool_uuid, dev.uuid, dev.name)
    for p in image.problems:
        log.warning("dirty log of %s: %s (its regions count as dirty)", dev.name, p)
    return DirtyLog(dev, geo, pool_uuid, image)
