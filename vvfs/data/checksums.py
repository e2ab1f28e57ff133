"""Block checksums in the node: the store of entries, and judging legs by them.

The region's format on media (where the entries live, one crc32c per 4 KiB
block) is :mod:`metadata.checksums`; its names are re-exported here for the
data path's use.

What is checksummed
-------------------
Every full 4 KiB block of every *mirrored* volume (``mirrors >= 2``), on
every leg: a write computes the crc32c of each block it carries (on the
event loop: 0.3 us per block) and stores it in the entry of that block on
*each* leg's device, so that all legs' entries hold the same value; a write
that covers a block only in part re-reads the whole block after writing it.
The data and the entries are written concurrently, and the write completes
only when both are on every leg -- so a flush covers the checksums too.
The trailing part of a volume whose size is not a multiple of 4 KiB has no
checksum; linear and striped volumes have none (there is no second copy to
repair from, and no cost to pay).
Extents newly given to a mirrored volume (created or grown) are zeroed on
every leg and their entries set to :data:`ZERO_CRC` before the
configuration is committed (:mod:`vvfs.control.zeroing`), through the store when a
node serves the pool (:meth:`ChecksumStore.fill`).

Across a crash
--------------
A crash may leave, for a block that was being written, any mix of old and
new data (per sector) and old and new entries on each leg.  The rule that
keeps checksums right is:

1. a block whose legs all hold the same bytes is right, whatever its entries
   say: an entry that disagrees is rewritten from the data (scrub reports it
   as a checksum fix, never as a data error);
2. where legs differ, a leg whose data matches a stored entry (its own or
   another leg's) is right; if several legs match different entries (an
   interrupted write, or a block never written since it was allocated) or
   no leg matches, leg 0 is taken -- the same rule as resync -- and the
   entries of every leg are recomputed from it;
3. ranges that the dirty log names as in flight at a crash are resynced by
   the same judgement (:func:`judge`): blocks whose legs agree are left
   alone; where they differ, the leg that matches a stored entry wins, and
   leg 0 only when none or several do; then the entries of every leg are
   recomputed from the data kept (resync calls :meth:`ChecksumStore.refresh`).
   So a torn or damaged block on leg 0 is not copied over a good leg 1, and
   after a crash rule 2 never has to guess about an acknowledged write: a
   write is acknowledged only after its data and entries reached every leg.

A bit flip in one leg's data is thus found (the leg no longer matches the
entry that the other legs match) and repaired from the leg that matches:
by every read of the block (:mod:`vvfs.data.mirror.verify`, which judges
by these rules too, with nothing in flight), and by scrub.

What it costs
-------------
One more 4 KiB write per leg for each host write (several host writes to
one page in flight share a page write), made concurrently with the data:
measured with fio through the mount on a 2-way mirror of sparse files
(2 CPUs, buffered backing files, dirty log on), block checksums cost
about 35% of the IOPS of 4 KiB random writes at queue depth 1, 30% at
depth 16, and 25% of the bandwidth of 1 MiB sequential writes.  Reads are
verified (:mod:`vvfs.data.mirror.verify`): a crc32c per block read and one
look-up of cached entries per request; bench/README.md has the ratio.  The
price of writes is the extra worker-thread call per leg (the node is
bound by thread hand-offs, not by the crc32c: 0.3 us per block).  Writing
pages back in batches -- one call per device every few milliseconds, made
durable by a flush and before the dirty log clears a region's bit -- would
remove most of it; it needs a many-offsets write in ``vvfs.io.devio``.

The store
---------
:class:`ChecksumStore` (one per pool, in the node) keeps recently used
pages in memory (LRU, :data:`CACHE_PAGES`).  Concurrency: a page is changed
only on the trio thread, between two awaits; each change bumps the page's
version, and the page is written by at most one device call at a time,
each writing the newest content (later writers wait for it and write again
if their version is not yet on the device) -- so an entry is on media when
``update`` returns, and a slower, older page write never overwrites a newer
one.  Cancellation: a cancelled ``update`` may or may not have written its
entries (like a crash); the page stays consistent.
"""

from __future__ import annotations

import errno
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from metadata.blockdev import DeviceIOError
from metadata.checksums import (  # noqa: F401 (re-exported for the data path)
    BLOCK,
    BLOCKS_PER_PAGE,
    ENTRY,
    FEATURE,
    PAGE,
    ZERO_CRC,
    block_crcs,
    crc,
    entry_offset,
    pack,
    region,
    region_extents,
    unpack,
)
from metadata.model import Device, DeviceUUID, Pool
from vvfs.io.devio import DataDevice

log = logging.getLogger(__name__)

#: Pages kept in memory per pool (16 MiB, the checksums of 16 GiB of data).
CACHE_PAGES = 4096
#: Pages pinned at a time by :meth:`ChecksumStore.fill` (the entries of 256 MiB).
FILL_PAGES = 64


# ---------------------------------------------------------------------------
# the store


@dataclass
class _Page:
    offset: int
    buf: bytearray
    version: int = 0
    written: int = 0
    busy: bool = False
    users: int = 0
    idle: trio.Event = field(default_factory=trio.Event)

    def notify(self) -> None:
        self.idle.set()
        self.idle = trio.Event()


@dataclass
class StoreStats:
    updates: int = 0
    page_writes: int = 0
    page_reads: int = 0
    errors: int = 0


#: A run of entries: (device, device byte of its first data block, packed values
#: of consecutive blocks -- see :func:`pack`)
Entry = tuple[DeviceUUID, int, bytes]


class ChecksumStore:
    """The checksum entries of one pool's devices (see the module docstring).

    *devices* is the node's live table of the pool's open devices.
    """

    def __init__(self, pool: Pool, devices: Mapping[DeviceUUID, DataDevice],
                 cache_pages: int = CACHE_PAGES) -> None:
        self.devices = devices
        self.cache_pages = cache_pages
        self.stats = StoreStats()
        self._geo: dict[DeviceUUID, Device] = {}
        self._esize = pool.extent_size
        self._pages: OrderedDict[tuple[DeviceUUID, int], _Page] = OrderedDict()
        self._loading: dict[tuple[DeviceUUID, int], trio.Event] = {}
        self.swap(pool)

    def swap(self, pool: Pool) -> None:
        """Use the device geometry of configuration *pool*."""
        self._geo = {d.uuid: d for d in pool.devices if d.csum_extents > 0}

    def covers(self, device: str) -> bool:
        """Does *device* have a checksum region (and is it open)?"""
        return device in self._geo and device in self.devices

    def statistics(self) -> dict[str, object]:
        s = self.stats
        return {"pages_cached": len(self._pages), "updates": s.updates,
                "page_writes": s.page_writes, "page_reads": s.page_reads, "errors": s.errors}

    # -- addressing ----------------------------------------------------------

    def _where(self, device: DeviceUUID, data_offset: int) -> tuple[int, int]:
        """(page number, entry index in the page) of the block at *data_offset*."""
        d = self._geo[device]
        block = (data_offset - d.data_start) // BLOCK
        return block // BLOCKS_PER_PAGE, block % BLOCKS_PER_PAGE

    def _page_offset(self, device: DeviceUUID, page: int) -> int:
        d = self._geo[device]
        return d.data_start + d.extent_count * self._esize + page * PAGE

    def _device(self, device: DeviceUUID, offset: int) -> DataDevice:
        """The open device *device*; DeviceIOError if it failed (left the live table)."""
        dev = self.devices.get(device)
        if dev is None:
            raise DeviceIOError(device, offset, "device is not open (failed)", errno.ENODEV)
        return dev

    # -- pages ---------------------------------------------------------------

    async def _page(self, device: DeviceUUID, n: int) -> _Page:
        """The cached page *n* of *device*, read in if needed; pinned (users += 1)."""
        key = (device, n)
        while True:
            page = self._pages.get(key)
            if page is not None:
                self._pages.move_to_end(key)
                page.users += 1
                return page
            loading = self._loading.get(key)
            if loading is None:
                break
            await loading.wait()
        done = self._loading[key] = trio.Event()
        try:
            off = self._page_offset(device, n)
            raw = await self._device(device, off).pread(PAGE, off)
            self.stats.page_reads += 1
            page = _Page(off, raw)
            page.users = 1
            self._pages[key] = page
            self._evict()
            return page
        finally:
            del self._loading[key]
            done.set()

    def _evict(self) -> None:
        while len(self._pages) > self.cache_pages:
            for key, page in self._pages.items():
                if not page.users and not page.busy and page.written == page.version:
                    del self._pages[key]
                    break
            else:
                return  # everything is in use: grow for now

    async def _write(self, device: DeviceUUID, page: _Page, want: int) -> None:
        """Return once version *want* (or newer) of *page* is on the device."""
        while page.written < want:
            if page.busy:
                await page.idle.wait()
                continue
            page.busy = True
            version, snap = page.version, bytes(page.buf)
            try:
                await self._device(device, page.offset).pwrite(snap, page.offset)
                self.stats.page_writes += 1
                page.written = max(page.written, version)
            finally:
                page.busy = False
                page.notify()

    # -- public API ----------------------------------------------------------

    async def update(self, entries: Iterable[Entry]) -> None:
        """Store each run ``(device, data byte, packed values)``; return once on the devices.

        Runs on devices without a region (or not open) are skipped.  Raises
        the first DeviceIOError after every page write has ended.
        """
        by_page: dict[tuple[DeviceUUID, int], list[tuple[int, bytes]]] = {}
        for device, data_offset, values in entries:
            if not self.covers(device):
                continue
            n, i = self._where(device, data_offset)
            pos = 0
            while pos < len(values):  # split the run at page boundaries
                take = min(len(values) - pos, (BLOCKS_PER_PAGE - i) * ENTRY)
                by_page.setdefault((device, n), []).append((i, values[pos:pos + take]))
                pos += take
                n, i = n + 1, 0
        if not by_page:
            return
        self.stats.updates += 1
        pinned: list[tuple[DeviceUUID, _Page, list[tuple[int, bytes]]]] = []
        try:
            for (device, n), vals in by_page.items():
                pinned.append((device, await self._page(device, n), vals))
            wants = []
            for device, page, vals in pinned:  # no await: all entries change at once
                for i, chunk in vals:
                    page.buf[i * ENTRY:i * ENTRY + len(chunk)] = chunk
                page.version += 1
                wants.append((device, page, page.version))
            await _gather_errors([(self._write, (d, p, v)) for d, p, v in wants])
        except DeviceIOError:
            self.stats.errors += 1
            raise
        finally:
            for _device, page, _vals in pinned:
                page.users -= 1

    async def fill(self, device: DeviceUUID, data_offset: int, blocks: int, value: int) -> bool:
        """Set the entries of *blocks* blocks from *data_offset* to *value*, on the device.

        Goes through the cache like :meth:`update`, :data:`FILL_PAGES` pages
        at a time, so that no cached page later writes an older entry back
        over them.  Returns False, doing nothing, for a device the store does
        not cover.  Cancellation: like :meth:`update`, per group of pages.
        """
        if not self.covers(device):
            return False
        step = FILL_PAGES * BLOCKS_PER_PAGE
        for first in range(0, blocks, step):
            n = min(step, blocks - first)
            await self.update([(device, data_offset + first * BLOCK, pack([value] * n))])
        return True

    async def read_media(self, device: DeviceUUID, data_offset: int, blocks: int) -> list[int] | None:
        """The entries of *blocks* blocks from *data_offset*, as on the device (None: no region).

        Reads the device, not the cache, so that damage to the region is
        seen; call it only while no write to those blocks is in flight.
        """
        if not self.covers(device):
            return None
        d = self._geo[device]
        off = entry_offset(d, self._esize, data_offset)
        return unpack(await self._device(device, off).pread(blocks * ENTRY, off))

    async def read(self, device: DeviceUUID, data_offset: int, blocks: int) -> list[int] | None:
        """The current entries (the cache's where cached), or None without a region."""
        if not self.covers(device):
            return None
        out: list[int] = []
        pos = data_offset
        while len(out) < blocks:
            n, i = self._where(device, pos)
            take = min(blocks - len(out), BLOCKS_PER_PAGE - i)
            page = await self._page(device, n)
            try:
                out += unpack(page.buf[i * ENTRY:(i + take) * ENTRY])
            finally:
                page.users -= 1
            pos += take * BLOCK
        return out

    async def copy(self, source: DeviceUUID, src: int, dest: DeviceUUID, dst: int,
                   blocks: int) -> None:
        """Give the *blocks* blocks at *dst* on *dest* the entries of those at *src* on *source*."""
        values = await self.read(source, src, blocks)
        if values is None:
            return
        await self.update([(dest, dst, pack(values))])

    async def refresh(self, legs: Sequence[tuple[DeviceUUID, int]], data: memoryview) -> None:
        """Recompute the entries of *data* (whole blocks) and store them on every leg.

        *legs* are ``(device, device byte)`` of the same volume bytes on each
        leg.  Resync calls this for the ranges it copies (rule 3 of the
        module docstring).
        """
        values = pack(block_crcs(data))
        await self.update([(dev, off, values) for dev, off in legs])


@dataclass(frozen=True)
class Verdict:
    """What :func:`judge` says of one block."""

    right: int | None  #: the leg holding the right data (None: no leg readable)
    bad_data: tuple[int, ...]  #: legs whose data differs from the right leg's
    bad_entry: tuple[int, ...]  #: legs whose stored entry differs from the right crc32c
    value: int  #: crc32c of the right data
    reason: str


def judge(datas: list[bytes | None], stored: list[int | None]) -> Verdict:
    """Judge one block: *datas* per leg (None: unreadable), *stored* entries (None/0: none).

    The rules are those of "Across a crash" in the module docstring (scrub and
    resync both judge by them).
    """
    readable = [i for i, d in enumerate(datas) if d is not None]
    if not readable:
        return Verdict(None, (), (), 0, "no leg can be read")
    crcs = {i: crc(datas[i]) for i in readable}  # type: ignore[arg-type]
    known = {v for v in stored if v}
    first = datas[readable[0]]
    if all(datas[i] == first for i in readable):
        right, reason = readable[0], "legs agree"
    else:
        matching = [i for i in readable if crcs[i] in known]
        versions = {datas[i] for i in matching}
        if len(versions) == 1:
            right, reason = matching[0], f"leg {matching[0]} matches the stored checksum"
        elif matching:
            right = 0 if 0 in matching else matching[0]
            reason = (f"legs match different stored checksums (an interrupted write, or never"
                      f" written): took leg {right}")
        else:
            right = 0 if 0 in readable else readable[0]
            reason = f"no leg matches a stored checksum: took leg {right}"
    good = datas[right]
    value = crcs[right]
    bad_data = tuple(i for i, d in enumerate(datas) if d != good)
    bad_entry = tuple(i for i, v in enumerate(stored) if v is not None and v != value
                      and datas[i] is not None)
    return Verdict(right, bad_data, bad_entry, value, reason)



async def _gather_errors(jobs: list[tuple[object, tuple[object, ...]]]) -> None:
    """Run ``fn(*args)`` for each job concurrently; raise the first DeviceIOError after all end."""
    if len(jobs) == 1:
        fn, args = jobs[0]
        await fn(*args)  # type: ignore[operator]
        return
    errors: list[DeviceIOError] = []

    async def one(fn: object, args: tuple[object, ...]) -> None:
        try:
            await fn(*args)  # type: ignore[operator]
        except DeviceIOError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for fn, args in jobs:
            nursery.start_soon(one, fn, args)
    if errors:
        raise errors[0]
