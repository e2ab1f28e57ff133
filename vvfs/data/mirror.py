"""Mirrors in the data path: degraded mode, the dirty log, read policies, resync.

One :class:`PoolMirror` per pool serves the reads, writes and flushes of its
*mirrored* volumes (``VolumeIO`` hands them over; linear and striped
volumes keep their own path) and owns the pool's dirty logs
(:class:`DirtyLog`, one per open device, format in
:mod:`metadata.dirtylog`), the region gate and the resync engine.

Device states in memory
-----------------------
* **ok**: in ``devices`` (the node's live table), read and written.
* **resyncing**: in ``devices`` and in ``resyncing``: written (so that what
  resync copied stays in sync) but never read, until its resync is done.
* **failed**: removed from ``devices`` at once (in :meth:`PoolMirror.fail`,
  between two awaits, so no new call reaches it) and kept in ``failed``;
  its descriptors are closed once its calls in flight have ended.

A device fails when a call of a mirrored volume returns an error in
:data:`FAILURE_ERRNOS` (EIO, or a vanished device: ENXIO, ENODEV, ENOENT,
EBADF, ENOTCONN ... -- after every path of it failed, see
:mod:`vvfs.io.devio`), or when a mirrored write must skip a device that is
not open.  Errors of linear or striped volumes are passed to the host as
EIO and fail nothing: there is no other copy to go on with.

A mirrored write
----------------
1. The regions it touches on every live leg enter the :class:`RegionGate`
   (waiting while a resync holds one of them).
2. Their bits are set in each leg's dirty log and the log is on stable
   storage (:meth:`DirtyLog.mark`) -- at once when they are set already;
   otherwise the bitmap blocks are written with ``RWF_DSYNC`` and every
   write that set bits meanwhile waits for the same write (group commit).
   A write that starts a region right after a set one (a sequential
   stream) sets :data:`MARK_AHEAD` more bits in the same log write, so a
   stream pays one log write per 9 regions, not per region.
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

Bits are cleared lazily by :meth:`PoolMirror.clean` (the node calls it
every second): a region idle for :data:`CLEAN_IDLE` seconds, none of whose
copies lies on a failed, missing or resyncing device, has its devices
flushed and -- if no write entered it meanwhile -- its bit cleared.  So a
steady stream of writes to the same regions pays no log write at all.  The
regions of a write that ended part-way (cancelled, or an error that fails
no device: some legs may hold it and others not) are *suspect*
(:attr:`PoolMirror.suspect`): never cleaned, only cleared by a resync that
copied them, and a ``repair`` resync is started for them at once.

Reads
-----
``balanced`` takes the legs round-robin per piece, ``primary`` the first
readable leg, ``first`` issues the request to every readable leg whose
device has fewer than :data:`FIRST_MAX_IN_FLIGHT` calls in flight and
answers with the first to complete (the others finish in the background;
their bytes are dropped).  Resyncing and failed devices are never read.  A
leg that fails a read is failed and the piece is read again from another
leg.  While a resync after a crash runs (:attr:`PoolMirror.source_only`)
every read uses the resync's source leg, so that a region whose legs may
still differ reads the same bytes each time.

Resync
------
:meth:`PoolMirror.resync` walks the set bits of every live log; for each
region it locks the region and its copies on the other legs in the gate
(new writes wait, writes in flight are waited for), reads it from every
leg on a device that is ok (not resyncing, not a target) -- where those
differ, each block is judged by its stored checksums
(:func:`vvfs.data.checksums.judge`; without checksums the first leg wins) --
writes the result to the live legs that do not hold it (and to a running
move's destination, see :meth:`PoolMirror._forward`), refreshes the block
checksums of every leg, and -- after the targets were flushed and if no
write entered the region since -- clears the bits on every leg.
Throttled by a token bucket (:class:`Throttle`).  A job holds
:attr:`PoolMirror.copy_lock` from start to end; a move holds it around
each extent it copies, so a move never copies bytes a resync is changing
(and waits while a resync runs).

While a crash resync runs, reads use its first source leg; a block that the
resync then judges by its checksums may read differently afterwards (it
was torn or damaged on that leg, and never acknowledged in that state).

Concurrency: everything runs on the trio thread; statements between two
awaits are atomic.  Cancellation: device calls are never abandoned; a
cancelled write may have reached some legs (its bits stay set); a cancelled
resync leaves bits set and is simply run again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from mapper.layout import Loc, Piece
from mapper.mirrors import MirrorIndex, Span
from metadata import dirtylog
from metadata.blockdev import DeviceIOError
from metadata.dirtylog import LogGeometry, LogImage
from metadata.model import DeviceUUID, Pool
from vvfs.data.checksums import BLOCK, ENTRY, block_crcs, judge, pack
from vvfs.io.devio import IOV_MAX, PATH_ERRNOS, DataDevice

log = logging.getLogger(__name__)

#: Errors that fail a device (after every path of it failed).
FAILURE_ERRNOS = PATH_ERRNOS | {errno.ENOSPC, errno.EROFS}
#: Failures that say the device went away (rather than broke): the node's
#: probe brings such a device back on its own when it answers again.
VANISHED_ERRNOS = frozenset({errno.ENXIO, errno.ENODEV, errno.ENOENT, errno.ENOTCONN,
                             errno.EBADF, errno.ESTALE, errno.ENOMEDIUM, errno.ESHUTDOWN,
                             errno.ENOLINK})
#: Seconds a region must be idle before its bit is cleared.
CLEAN_IDLE = 5.0
#: A bit waits for a flush that happens anyway (the host's fsync); after this
#: many idle seconds the cleaner flushes the devices itself.
FORCE_FLUSH_AFTER = 30.0
#: A sequential stream reaching a new region sets this many more bits in the
#: same log write (not while degraded, where bits must name exactly what
#: was written); unused ones are cleared like any other.
MARK_AHEAD = 8
#: ``first`` read policy: legs whose device has this many calls in flight are skipped.
FIRST_MAX_IN_FLIGHT = 8
#: Resync: flush targets and clear bits after this many bytes copied.
RESYNC_BATCH = 16 << 20
#: Seconds between resync-progress events.
PROGRESS_EVERY = 5.0
#: Seconds between looks at the pool while a move or a scrub waits (:meth:`PoolMirror.quiet`).
QUIET_POLL = 0.5

Key = tuple[str, int]
Emit = Callable[[str, str, str, str], None]


def is_failure(exc: BaseException) -> bool:
    """Does *exc* fail the device it names (see :data:`FAILURE_ERRNOS`)?"""
    return isinstance(exc, DeviceIOError) and exc.errno in FAILURE_ERRNOS


# ---------------------------------------------------------------------------
# the dirty log of one device


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


# ---------------------------------------------------------------------------
# the region gate


class RegionGate:
    """Writes in flight per (device, region), and regions a resync holds alone.

    ``seq[key]`` numbers the last write that entered a region and
    ``last[key]`` is when one last left it: a bit is cleared only if the
    region's ``seq`` did not move while its devices were flushed.
    """

    def __init__(self) -> None:
        self.inflight: dict[Key, int] = {}
        self.seq: dict[Key, int] = {}
        self.last: dict[Key, float] = {}
        #: the region's device's completed-write count after the last write
        #: there: once the device's durable count reaches it, the data is flushed
        self.wseq: dict[Key, int] = {}
        self.locked: dict[Key, trio.Event] = {}
        self._counter = 0
        self._left = trio.Event()

    async def enter(self, keys: set[Key]) -> None:
        """Register a write in *keys*, after any resync holding one of them is done."""
        while self.locked:
            blocker = next((self.locked[k] for k in keys if k in self.locked), None)
            if blocker is None:
                break
            await blocker.wait()
        self._counter += 1
        n = self._counter
        inflight, seq = self.inflight, self.seq
        for k in keys:
            inflight[k] = inflight.get(k, 0) + 1
            seq[k] = n

    def leave(self, keys: set[Key]) -> None:
        now = trio.current_time()
        for k in keys:
            n = self.inflight[k] - 1
            if n:
                self.inflight[k] = n
            else:
                del self.inflight[k]
            self.last[k] = now
        if self.locked:
            self._left.set()
            self._left = trio.Event()

    @contextlib.asynccontextmanager
    async def holding(self, keys: set[Key]) -> AsyncIterator[None]:
        """Hold *keys* alone: new writes wait, writes in flight are waited for."""
        while True:
            other = next((self.locked[k] for k in keys if k in self.locked), None)
            if other is None:
                break
            await other.wait()
        mine = trio.Event()
        for k in keys:
            self.locked[k] = mine
        try:
            while any(k in self.inflight for k in keys):
                await self._left.wait()
            yield
        finally:
            for k in keys:
                if self.locked.get(k) is mine:
                    del self.locked[k]
            mine.set()

    def forget(self, keys: Iterable[Key]) -> None:
        for k in keys:
            if k not in self.inflight:
                self.seq.pop(k, None)
                self.last.pop(k, None)
                self.wseq.pop(k, None)


class Throttle:
    """A byte rate limit (None or 0: none); the rate may change while in use."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self._t0: float | None = None
        self._bytes = 0

    async def consume(self, n: int) -> None:
        if not self.rate:
            return
        now = trio.current_time()
        if self._t0 is None or now - self._t0 > 10 and self._t0 + self._bytes / self.rate < now:
            self._t0, self._bytes = now, 0
        self._bytes += n
        ahead = self._t0 + self._bytes / self.rate - now
        if ahead > 0:
            await trio.sleep(ahead)


# ---------------------------------------------------------------------------
# failures and jobs


@dataclass
class FailedDevice:
    uuid: DeviceUUID
    name: str
    error: str
    errno: int | None
    when: float
    recorded: trio.Event = field(default_factory=trio.Event)
    recording: bool = False

    @property
    def vanished(self) -> bool:
        return self.errno in VANISHED_ERRNOS


@dataclass
class ResyncJob:
    """One resync of a pool: after a crash, of returning devices, or of a replacement."""

    id: int
    kind: str
    targets: set[DeviceUUID] = field(default_factory=set)
    rate: int | None = None
    state: str = "queued"
    total: int = 0
    done: int = 0
    regions: int = 0
    regions_done: int = 0
    #: regions not copied to every leg (one missing or failed): their bits stay set
    regions_left: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None
    throttle: Throttle = field(default_factory=lambda: Throttle(None))

    def progress(self, names: dict[str, str]) -> dict[str, Any]:
        elapsed = (self.finished or time.time()) - self.started
        return {"id": self.id, "kind": self.kind, "state": self.state,
                "devices": sorted(names.get(t, t) for t in self.targets),
                "bytes_total": self.total, "bytes_done": self.done,
                "regions_total": self.regions, "regions_done": self.regions_done,
                "regions_left": self.regions_left,
                "rate_limit": self.rate, "started": self.started, "finished": self.finished,
                "elapsed": elapsed, "error": self.error}


@dataclass
class MirrorStats:
    degraded_writes: int = 0
    read_retries: int = 0
    first_wins: dict[int, int] = field(default_factory=dict)
    resync_bytes: int = 0
    #: blocks a resync found different on the legs it read (and judged)
    resync_judged: int = 0
    #: ... of which a leg other than the first was right (by its checksum)
    resync_judged_other: int = 0
    cleaned: int = 0


class _Call:
    """A device call and the pieces (indices) it carries."""

    __slots__ = ("bufs", "device", "length", "offset", "pieces")

    def __init__(self, device: DeviceUUID, offset: int) -> None:
        self.device = device
        self.offset = offset
        self.bufs: list[memoryview] = []
        self.length = 0
        self.pieces: list[int] = []


def _plan(chosen: Iterable[tuple[int, Piece, Loc]], base: int, view: memoryview) -> list[_Call]:
    """Device calls for (piece index, piece, leg), merging runs contiguous on a device."""
    calls: list[_Call] = []
    open_calls: dict[DeviceUUID, _Call] = {}
    for i, p, loc in chosen:
        buf = view[p.offset - base:p.offset - base + p.length]
        call = open_calls.get(loc.device)
        if call is None or call.offset + call.length != loc.offset or len(call.bufs) >= IOV_MAX:
            call = _Call(loc.device, loc.offset)
            calls.append(call)
            open_calls[loc.device] = call
        call.bufs.append(buf)
        call.length += p.length
        call.pieces.append(i)
    return calls


# ---------------------------------------------------------------------------
# one pool


class PoolMirror:
    """Mirrored I/O, failures, dirty logs and resync of one pool (see the module docstring).

    *devices* is the node's live device table of the pool (this object
    removes failed devices from it and adds returning ones).  *emit*
    records an event (kind, severity, object, message); *spawn* starts a
    background task (``spawn(fn, *args)``) or is None (then nothing runs in
    the background: ``first`` reads wait for every leg).  *on_failed* is
    called with a device uuid once its failure is recorded on the
    survivors; *on_retire* with a failed device's DataDevice.
    """

    def __init__(self, pool: Pool, devices: dict[DeviceUUID, DataDevice], *,
                 emit: Emit | None = None,
                 spawn: Callable[..., None] | None = None,
                 on_failed: Callable[[DeviceUUID], None] | None = None,
                 on_retire: Callable[[DataDevice], None] | None = None) -> None:
        self.pool = pool
        self.devices = devices
        self.emit: Emit = emit or (lambda *_a: None)
        self.spawn = spawn
        self.on_failed = on_failed
        self.on_retire = on_retire
        self.index = MirrorIndex(pool)
        self.geos = self._geometries(pool)
        self.logs: dict[str, DirtyLog] = {}
        self.failed: dict[DeviceUUID, FailedDevice] = {}
        self.resyncing: set[DeviceUUID] = set()
        self.gate = RegionGate()
        #: resyncs after a crash running: reads use the source leg only
        self.source_only = 0
        #: set while bits found at start wait for their resync (the cleaner waits too)
        self.needs_resync = False
        self.jobs: list[ResyncJob] = []
        self._job_ids = 0
        #: held by a resync job from start to end, and by a move around each
        #: extent it copies: the two never write the same bytes at once
        self.copy_lock = trio.Lock()
        #: the pool's write guard (vvfs.data.guard.PoolGuard): a move's shadow
        self.guard: Any = None
        #: regions of writes that ended part-way (cancelled, or an error that
        #: fails no device): never cleaned, only resynced
        self.suspect: set[Key] = set()
        #: the pool's block-checksum store (vvfs.data.checksums), refreshed by resync
        self.checksums: Any = None
        self.stats = MirrorStats()

    @staticmethod
    def _geometries(pool: Pool) -> dict[str, LogGeometry]:
        out: dict[str, LogGeometry] = {}
        for d in pool.devices:
            geo = dirtylog.geometry(d, pool.extent_size)
            if geo is not None:
                out[d.uuid] = geo
        return out

    def name_of(self, uuid: str) -> str:
        for d in self.pool.devices:
            if d.uuid == uuid:
                return d.name
        return uuid

    @property
    def names(self) -> dict[str, str]:
        return {d.uuid: d.name for d in self.pool.devices}

    # -- configuration and devices --------------------------------------------

    def swap(self, pool: Pool) -> None:
        """Use configuration *pool* (maps, devices) from now on."""
        self.pool = pool
        self.index = MirrorIndex(pool)
        self.geos = self._geometries(pool)
        known = {d.uuid for d in pool.devices}
        for uuid in [u for u in self.logs if u not in known]:
            del self.logs[uuid]
        for uuid in [u for u in self.failed if u not in known]:
            del self.failed[uuid]
        self.resyncing &= known  # type: ignore[assignment]

    async def attach_devices(self) -> None:
        """Read the logs of open devices that have none loaded (at start, after a change)."""
        for uuid, dev in list(self.devices.items()):
            if dev.on_path_failed is None:
                dev.on_path_failed = self._path_failed
            geo = self.geos.get(uuid)
            if uuid in self.logs or geo is None:
                continue
            try:
                self.logs[uuid] = await load_log(dev, geo, self.pool.uuid)
            except DeviceIOError as exc:
                if is_failure(exc) and uuid in self.index.devices():
                    self.fail(uuid, exc)
                else:
                    log.error("pool %s: dirty log of %s unreadable: %s", self.pool.name,
                              self.name_of(uuid), exc)

    def dirty_at_start(self) -> tuple[int, set[str]]:
        """(dirty regions, devices some header calls stale) over the loaded logs."""
        regions = sum(len(lg.set_regions) for lg in self.logs.values())
        stale = set().union(*(lg.stale for lg in self.logs.values())) if self.logs else set()
        return regions, stale

    def _path_failed(self, dev: DataDevice, path: str, new: str | None,
                     exc: DeviceIOError) -> None:
        if len(dev.paths) < 2:
            return  # the device's only path: a device failure, reported as such
        name = self.name_of(dev.uuid)
        if new is not None:
            self.emit("path-failed", "warning", name,
                      f"device {name}: path {path} failed ({exc}); now using {new}")
        else:
            self.emit("path-failed", "error", name,
                      f"device {name}: path {path} failed ({exc}); no working path is left")

    def readable(self, uuid: str) -> bool:
        return uuid in self.devices and uuid not in self.resyncing

    def device_state(self, uuid: str, config_state: str) -> str:
        if uuid in self.failed:
            return "failed"
        if uuid in self.resyncing:
            return "resyncing"
        if uuid in self.devices:
            return "ok"
        return config_state if config_state != "ok" else "missing"

    def volume_state(self, volume: Any) -> str:
        """ok, degraded, resyncing or failed (a piece with no working leg)."""
        state = "ok"
        for s in volume.segments:
            for c in range(s.stripes):
                legs = [leg[c].device for leg in s.areas]
                if not any(u in self.devices for u in legs):
                    return "failed"
                if any(u not in self.devices for u in legs):
                    state = "degraded"
                elif state == "ok" and any(u in self.resyncing for u in legs):
                    state = "resyncing"
        return state

    # -- failures ---------------------------------------------------------------

    def fail(self, uuid: str, exc: BaseException) -> FailedDevice:
        """Take device *uuid* out of service now (no await); events follow."""
        fd = self.failed.get(DeviceUUID(uuid))
        if fd is not None:
            return fd
        name = self.name_of(uuid)
        err = getattr(exc, "errno", None)
        fd = FailedDevice(DeviceUUID(uuid), name, str(exc), err, time.time())
        self.failed[DeviceUUID(uuid)] = fd
        dev = self.devices.pop(DeviceUUID(uuid), None)
        self.resyncing.discard(DeviceUUID(uuid))
        self.logs.pop(uuid, None)
        log.error("pool %s: device %s failed: %s", self.pool.name, name, exc)
        lost = [v.name for v in self.pool.volumes if v.mirrors < 2
                and any(a.device == uuid for s in v.segments for leg in s.areas for a in leg)]
        self.emit("device-failed", "error", name,
                  f"device {name} failed: {exc}"
                  + (f"; volumes without another copy fail with EIO: {', '.join(lost)}"
                     if lost else ""))
        for v in self.pool.volumes:
            if v.mirrors >= 2 and any(a.device == uuid for s in v.segments for leg in s.areas
                                      for a in leg):
                self.emit("volume-degraded", "warning", f"{self.pool.name}/{v.name}",
                          f"volume {self.pool.name}/{v.name} is degraded: device {name}"
                          " failed; I/O goes on with the other legs")
        if dev is not None and self.on_retire is not None:
            self.on_retire(dev)
        if self.spawn is not None:
            self.spawn(self.record_failure, DeviceUUID(uuid))
        return fd

    def note_failed(self, uuid: str, why: str, err: int | None = None) -> None:
        """A device the configuration already says failed: out of service, quietly.

        *err* is the errno it failed with, if known (a vanished one is probed).
        """
        if uuid in self.failed or uuid in self.devices:
            return
        fd = FailedDevice(DeviceUUID(uuid), self.name_of(uuid), why, err, time.time())
        self.failed[DeviceUUID(uuid)] = fd
        if self.spawn is not None:
            self.spawn(self.record_failure, DeviceUUID(uuid))

    async def record_failure(self, uuid: DeviceUUID) -> None:
        """Return once *uuid* is in the stale list of every surviving log (once per failure)."""
        fd = self.failed.get(uuid)
        if fd is None or fd.recorded.is_set():
            return
        if fd.recording:
            await fd.recorded.wait()
            return
        fd.recording = True
        try:
            logs = [lg for u, lg in self.logs.items() if u in self.devices]
            errors: list[tuple[DeviceUUID, DeviceIOError]] = []

            async def one(lg: DirtyLog) -> None:
                try:
                    await lg.set_stale(add=[uuid])
                except DeviceIOError as exc:
                    errors.append((DeviceUUID(lg.device_uuid), exc))

            async with trio.open_nursery() as nursery:
                for lg in logs:
                    nursery.start_soon(one, lg)
            for u, exc in errors:
                self.fail(u, exc)
        finally:
            fd.recorded.set()
        committed = any(d.uuid == uuid and d.state == "failed" for d in self.pool.devices)
        if self.on_failed is not None and uuid in self.failed and not committed:
            self.on_failed(uuid)

    async def _record_all(self, uuids: Iterable[DeviceUUID]) -> None:
        for u in uuids:
            if u in self.failed:
                await self.record_failure(u)

    # -- writes -----------------------------------------------------------------

    async def write(self, vio: Any, offset: int, view: memoryview) -> None:
        """Write *view* at volume byte *offset* of mirrored volume *vio* (module docstring)."""
        pieces = vio.vmap.resolve(offset, len(view))
        marks: dict[DeviceUUID, set[int]] = {}
        keys: set[Key] = set()
        skipped: set[DeviceUUID] = set()
        devices, geos = self.devices, self.geos
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
        for u in skipped:
            if u not in self.failed:  # not open since the start: it misses this write
                self.fail(u, DeviceIOError(self.name_of(u), 0, "device is missing",
                                           errno.ENOENT))
        await self.gate.enter(keys)
        done = False
        try:
            lost = await self._mark(marks, ahead=0 if skipped else MARK_AHEAD)
            failed = await self._write_legs(pieces, offset, view)
            done = True
        finally:
            wseq, devices = self.gate.wseq, self.devices
            for k in keys:
                dev = devices.get(k[0])  # type: ignore[call-overload]
                if dev is not None:
                    wseq[k] = dev.completed_writes
            if not done:
                # cancelled or failed part-way: some legs may hold it and others not;
                # the bits stay until a resync makes the legs agree again
                self.suspect |= keys
                if self.spawn is not None:
                    self.spawn(self._repair_suspect)
            self.gate.leave(keys)
        # every leg that did not get the data (skipped, or failed in _mark or the write)
        degraded = skipped | failed | lost
        if degraded:
            self.stats.degraded_writes += 1
            await self._record_all(degraded)

    async def _mark(self, marks: dict[DeviceUUID, set[int]], ahead: int = 0
                    ) -> set[DeviceUUID]:
        """Set bits on every leg's log; wait (concurrently) only for logs that must write.

        Returns the devices that failed while their log was written.
        """
        errors: list[tuple[DeviceUUID, DeviceIOError]] = []
        waits: list[tuple[DeviceUUID, DirtyLog, int]] = []
        for u, regions in marks.items():
            lg = self.logs.get(u)
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
            self.fail(u, exc)
        return {u for u, _ in errors}

    async def _repair_suspect(self) -> None:
        """Resync the regions of writes that ended part-way (unless a resync runs already)."""
        if self.suspect and self.running_job() is None:
            await self.resync(self.new_job("repair"))

    async def _write_legs(self, pieces: list[Piece], base: int, view: memoryview
                          ) -> set[DeviceUUID]:
        """Write every piece to every live leg; return the legs it did not reach.

        Those are the devices that failed during the write and those that
        failed (left the live table) since the write computed its regions.
        """
        absent = {loc.device for p in pieces if len(p.legs) > 1 for loc in p.legs
                  if loc.device not in self.devices}
        calls: list[_Call] = []
        for m in range(max((len(p.legs) for p in pieces), default=0)):
            calls += _plan(((i, p, p.legs[m]) for i, p in enumerate(pieces)
                            if len(p.legs) > m and p.legs[m].device in self.devices), base, view)
        ok = [0] * len(pieces)
        errors = await self._run(calls, read=False, ok=ok)
        failed: set[DeviceUUID] = set()
        other: DeviceIOError | None = None
        for call, exc in errors:
            if is_failure(exc):
                self.fail(call.device, exc)
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

    async def _run(self, calls: list[_Call], *, read: bool, ok: list[int]
                   ) -> list[tuple[_Call, DeviceIOError]]:
        """Run *calls* concurrently; count successes per piece in *ok*; return the failures."""
        errors: list[tuple[_Call, DeviceIOError]] = []

        async def one(call: _Call) -> None:
            dev = self.devices.get(call.device)
            try:
                if dev is None:
                    raise DeviceIOError(call.device, call.offset, "device is not open",
                                        errno.ENODEV)
                if read:
                    await dev.preadv(call.bufs, call.offset)
                else:
                    await dev.pwritev(call.bufs, call.offset)
            except DeviceIOError as exc:
                errors.append((call, exc))
                return
            for i in call.pieces:
                ok[i] += 1

        if len(calls) == 1:
            await one(calls[0])
        else:
            async with trio.open_nursery() as nursery:
                for call in calls:
                    nursery.start_soon(one, call)
        return errors

    # -- reads ------------------------------------------------------------------

    async def read(self, vio: Any, offset: int, view: memoryview) -> None:
        """Fill *view* from volume byte *offset* of mirrored volume *vio* (module docstring)."""
        pieces = vio.vmap.resolve(offset, len(view))
        policy = "primary" if self.source_only else vio.volume.read_policy
        if policy == "first" and self.spawn is not None and await self._read_first(
                pieces, offset, view):
            return
        tried: list[set[str]] = [set() for _ in pieces]
        pending = list(range(len(pieces)))
        while pending:
            chosen = []
            for i in pending:
                loc = self._choose(vio, pieces[i], tried[i], policy)
                tried[i].add(loc.device)
                chosen.append((i, pieces[i], loc))
            calls = _plan(chosen, offset, view)
            ok = [0] * len(pieces)
            errors = await self._run(calls, read=True, ok=ok)
            pending = []
            for call, exc in errors:
                if not is_failure(exc):
                    raise exc
                self.fail(call.device, exc)
                pending += call.pieces
            if pending:
                self.stats.read_retries += 1

    def _choose(self, vio: Any, p: Piece, tried: set[str], policy: str) -> Loc:
        legs = [loc for loc in p.legs if self.readable(loc.device) and loc.device not in tried]
        if not legs:
            raise DeviceIOError(p.legs[0].device, p.legs[0].offset,
                                f"no working leg holds volume bytes {p.offset}+{p.length}",
                                errno.EIO)
        if policy != "balanced" or len(legs) == 1:
            return legs[0]
        vio._rr += 1
        return legs[vio._rr % len(legs)]

    async def _read_first(self, pieces: list[Piece], base: int, view: memoryview) -> bool:
        """``first``: race the readable legs; True once *view* holds the winner's bytes."""
        n = min((len(p.legs) for p in pieces), default=0)
        candidates = [m for m in range(n) if all(self.readable(p.legs[m].device) for p in pieces)]
        if len(candidates) < 2:
            return False
        load = {m: max(self.devices[p.legs[m].device].stats.in_flight for p in pieces)
                for m in candidates}
        chosen = [m for m in candidates if load[m] < FIRST_MAX_IN_FLIGHT]
        if not chosen:
            chosen = [min(candidates, key=lambda m: load[m])]
        done = trio.Event()
        state: dict[str, Any] = {"winner": None, "left": len(chosen)}
        for m in chosen:
            buf = bytearray(len(view))
            calls = _plan(((i, p, p.legs[m]) for i, p in enumerate(pieces)), base,
                          memoryview(buf))
            assert self.spawn is not None
            self.spawn(self._race, m, calls, buf, state, done)
        await done.wait()
        winner = state["winner"]
        if winner is None:
            return False
        m, buf = winner
        view[:] = buf
        self.stats.first_wins[m] = self.stats.first_wins.get(m, 0) + 1
        return True

    async def _race(self, m: int, calls: list[_Call], buf: bytearray, state: dict[str, Any],
                    done: trio.Event) -> None:
        try:
            errors = await self._run(calls, read=True, ok=[0] * (1 + max(
                (i for c in calls for i in c.pieces), default=0)))
            for call, exc in errors:
                if is_failure(exc):
                    self.fail(call.device, exc)
            if not errors and state["winner"] is None:
                state["winner"] = (m, buf)
                done.set()
        finally:
            state["left"] -= 1
            if not state["left"]:
                done.set()

    # -- flushes ----------------------------------------------------------------

    async def flush(self, vio: Any) -> None:
        """Flush every live device of mirrored volume *vio*; a failing one is failed."""
        if self.volume_state(vio.volume) == "failed":
            raise DeviceIOError(vio.name, 0, "no working leg left for some of the volume",
                                errno.EIO)
        await self.flush_devices(set(vio.vmap.devices()))

    async def flush_devices(self, uuids: set[str]) -> None:
        errors: list[tuple[DeviceUUID, DeviceIOError]] = []

        async def one(u: DeviceUUID, dev: DataDevice) -> None:
            try:
                await dev.flush()
            except DeviceIOError as exc:
                errors.append((u, exc))

        async with trio.open_nursery() as nursery:
            for u in uuids:
                dev = self.devices.get(DeviceUUID(u))
                if dev is not None:
                    nursery.start_soon(one, DeviceUUID(u), dev)
        for u, exc in errors:
            if not is_failure(exc):
                raise exc
            self.fail(u, exc)
        await self._record_all(u for u, _ in errors)

    # -- clearing bits ------------------------------------------------------------

    def _clearable(self, uuid: str, r: int) -> set[DeviceUUID] | None:
        """Devices to flush before clearing bit *r* of *uuid*, or None if it must stay."""
        geo = self.geos[uuid]
        partners = self.index.partners(uuid, geo.region_start(r), geo.region)
        for p in partners:
            if p not in self.devices or p in self.resyncing:
                return None
        return partners

    def _unflushed(self, uuid: str, r: int) -> set[str]:
        """Devices holding a copy of region *r* of *uuid* whose last write there is not flushed."""
        geo = self.geos[uuid]
        out: set[str] = set()
        for s in self.index.spans(uuid, geo.region_start(r), geo.region):
            for loc in s.legs:
                pgeo, dev = self.geos.get(loc.device), self.devices.get(loc.device)
                if pgeo is None or dev is None:
                    continue
                if self.gate.wseq.get((loc.device, pgeo.region_of(loc.offset)), 0) \
                        > dev.durable_writes:
                    out.add(loc.device)
        return out

    async def clean(self, idle: float = CLEAN_IDLE, force: float = FORCE_FLUSH_AFTER) -> int:
        """Clear the bits of idle regions whose every copy is flushed; return how many.

        A copy not yet flushed keeps its bit until a flush that happens
        anyway covers it (the host's fsync), or until the region has been
        idle *force* seconds: then the cleaner flushes its devices.
        """
        if self.needs_resync or any(j.state == "running" for j in self.jobs):
            return 0
        now = trio.current_time()
        gate = self.gate
        candidates: list[tuple[str, int, int]] = []
        flush: set[str] = set()
        for uuid, lg in self.logs.items():
            if uuid not in self.devices or uuid in self.resyncing:
                continue
            for r in lg.set_regions:
                k = (uuid, r)
                if k in gate.inflight or k in gate.locked or k in self.suspect:
                    continue
                quiet = now - gate.last.get(k, -math.inf)
                if quiet < idle:
                    continue
                partners = self._clearable(uuid, r)
                if partners is None:
                    continue
                pending = self._unflushed(uuid, r)
                if pending and quiet < force:
                    continue
                candidates.append((uuid, r, gate.seq.get(k, 0)))
                flush |= pending
        if not candidates:
            await self.sync_logs()
            return 0
        if flush:
            await self.flush_devices(flush)
        cleared = 0
        by_dev: dict[str, list[int]] = {}
        for uuid, r, seq in candidates:
            k = (uuid, r)
            if gate.seq.get(k, 0) == seq and k not in gate.inflight and k not in gate.locked:
                by_dev.setdefault(uuid, []).append(r)
        for uuid, regions in by_dev.items():
            target = self.logs.get(uuid)
            if target is not None and uuid in self.devices and all(
                    p in self.devices and p not in self.resyncing for p in flush):
                cleared += target.clear(regions)
                gate.forget((uuid, r) for r in regions)
        self.stats.cleaned += cleared
        await self.sync_logs()
        return cleared

    async def sync_logs(self) -> None:
        """Write pending changes (cleared bits) of every live log."""
        for uuid, lg in list(self.logs.items()):
            if lg.pending and uuid in self.devices:
                try:
                    await lg.sync()
                except DeviceIOError as exc:
                    if is_failure(exc):
                        self.fail(uuid, exc)
                    else:
                        raise

    async def mark_ranges(self, ranges: Iterable[tuple[str, int, int]]) -> int:
        """Set (durably) the bits of device byte ranges ``(device, offset, length)``."""
        marks: dict[DeviceUUID, set[int]] = {}
        for dev, off, length in ranges:
            geo = self.geos.get(DeviceUUID(dev))
            if geo is not None and dev in self.logs:
                marks.setdefault(DeviceUUID(dev), set()).update(geo.regions_of(off, length))
        await self._mark(marks)
        return sum(len(v) for v in marks.values())

    # -- resync -------------------------------------------------------------------

    def new_job(self, kind: str, targets: Iterable[DeviceUUID] = (), rate: int | None = None
                ) -> ResyncJob:
        self._job_ids += 1
        job = ResyncJob(self._job_ids, kind, set(targets), rate, throttle=Throttle(rate))
        live = [j for j in self.jobs if j.state in ("queued", "running")]
        ended = [j for j in self.jobs if j not in live]
        self.jobs = sorted(live + ended[-8:], key=lambda j: j.id) + [job]
        return job

    def running_job(self) -> ResyncJob | None:
        return next((j for j in self.jobs if j.state in ("queued", "running")), None)

    def resyncing_now(self) -> str | None:
        """Why a move or a scrub must wait now (the pool resyncs), or None."""
        if self.needs_resync:
            return "the pool resyncs the regions a crash left dirty"
        job = self.running_job()
        return f"resync {job.id} ({job.kind}) runs" if job is not None else None

    @contextlib.asynccontextmanager
    async def quiet(self, blocked: Callable[[], str | None], waiting: Callable[[str], None]
                    ) -> AsyncIterator[None]:
        """Hold :attr:`copy_lock` once no resync runs and *blocked()* says None.

        For a move's extent copy or a scrub's chunk: both are checked again
        under the lock (a queued resync goes first); while they say why not,
        *waiting(why)* is called and the pool looked at every
        :data:`QUIET_POLL` seconds.
        """
        while True:
            why = self.resyncing_now() or blocked()
            if why is None:
                async with self.copy_lock:
                    if (self.resyncing_now() or blocked()) is None:
                        yield
                        return
                continue
            waiting(why)
            await trio.sleep(QUIET_POLL)

    def _work(self) -> list[Key]:
        """Every (device, region) whose bit is set on a live log, in device order."""
        out: list[Key] = []
        for uuid, lg in self.logs.items():
            if uuid in self.devices:
                out += [(uuid, r) for r in sorted(lg.set_regions)]
        return out

    async def resync(self, job: ResyncJob) -> None:
        """Run *job* (see the module docstring); its state says how it ended."""
        async with self.copy_lock:
            job.state = "running"
            job.started = time.time()
            if job.kind == "crash":
                self.source_only += 1
            try:
                await self._resync(job)
                job.state = "done" if job.error is None else "failed"
            except DeviceIOError as exc:
                job.state, job.error = "failed", str(exc)
            except trio.Cancelled:
                job.state, job.error = "cancelled", "cancelled"
                raise
            finally:
                job.finished = time.time()
                if job.kind == "crash":
                    self.source_only -= 1
                if job.state == "done":  # else the bits found at start stay uncleared
                    self.needs_resync = False

    async def _resync(self, job: ResyncJob) -> None:
        work = self._work()
        job.regions = job.total = 0
        seen: set[Key] = set()
        for u, r in work:  # each region once, with its copies on the other legs
            if (u, r) in seen:
                continue
            job.regions += 1
            spans = self.index.spans(u, self.geos[u].region_start(r), self.geos[u].region)
            seen |= {(loc.device, self.geos[loc.device].region_of(loc.offset))
                     for s in spans for loc in s.legs if loc.device in self.geos}
            job.total += sum(s.length for s in spans)
        names = self.names
        self.emit("resync-progress", "info", self._job_object(job),
                  f"resync {job.id} ({job.kind}) started: {job.regions} dirty regions,"
                  f" {job.total} bytes to copy" + (f" to {', '.join(sorted(names.get(t, t) for t in job.targets))}" if job.targets else ""))
        pending: list[tuple[set[Key], dict[Key, int]]] = []
        copied: set[Key] = set()  # regions done in this job (a copy's other legs included)
        #: per target, regions of this job that could not be copied to every leg
        left: dict[str, int] = {}
        batch = 0
        last_event = time.monotonic()
        for uuid, r in work:
            for t in job.targets:
                if t not in self.devices:
                    job.error = f"device {self.name_of(t)} failed during its resync"
                    return
            lg = self.logs.get(uuid)
            if lg is None or not lg.is_set(r) or uuid not in self.devices \
                    or (uuid, r) in copied:
                continue
            geo = self.geos[uuid]
            spans = self.index.spans(uuid, geo.region_start(r), geo.region)
            if not spans:
                lg.clear([r])
                job.regions_done += 1
                continue
            keys: set[Key] = {(loc.device, self.geos[loc.device].region_of(loc.offset))
                              for s in spans for loc in s.legs if loc.device in self.geos}
            stale_map = False
            async with self.gate.holding(keys):
                # the configuration may have changed while this waited: use the
                # current map, and leave the region to a later pass if it grew
                spans = self.index.spans(uuid, geo.region_start(r), geo.region)
                stale_map = not {(loc.device, self.geos[loc.device].region_of(loc.offset))
                                 for s in spans for loc in s.legs
                                 if loc.device in self.geos} <= keys
                whole = not stale_map
                n = 0
                for s in [] if stale_map else spans:
                    done, copied_bytes = await self._copy_span(s, job)
                    whole &= done
                    n += copied_bytes
                seqs: dict[Key, int] = {k: self.gate.seq.get(k, 0) for k in keys}
                if whole:  # the legs agree again (no write is in flight here)
                    self.suspect -= keys
            if whole:
                pending.append((keys, seqs))
                copied |= keys
            else:
                job.regions_left += 1
                for t in job.targets & {loc.device for s in spans for loc in s.legs}:
                    left[t] = left.get(t, 0) + 1
            job.done += n
            job.regions_done += 1
            batch += n
            self.stats.resync_bytes += n
            await job.throttle.consume(n)
            if batch >= RESYNC_BATCH:
                await self._settle(pending)
                pending, batch = [], 0
            if time.monotonic() - last_event > PROGRESS_EVERY:
                last_event = time.monotonic()
                pct = 100 * job.done // job.total if job.total else 100
                self.emit("resync-progress", "info", self._job_object(job),
                          f"resync {job.id}: {job.done} of {job.total} bytes ({pct}%)")
        await self._settle(pending)
        for t in job.targets:
            if t not in self.devices:
                job.error = f"device {self.name_of(t)} failed during its resync"
                return
            # only what this job could not copy: bits that host writes set after
            # a region was copied name bytes the target got too (it is written)
            if left.get(t):
                job.error = (f"{left[t]} regions of device {self.name_of(t)} could not be"
                             " resynced (no working copy)")

    def _job_object(self, job: ResyncJob) -> str:
        names = self.names
        return ",".join(sorted(names.get(t, t) for t in job.targets)) or self.pool.name

    async def _copy_span(self, s: Span, job: ResyncJob) -> tuple[bool, int]:
        """Make every live leg of span *s* hold the same, right bytes.

        Reads every readable leg that is not a target; where they agree,
        that is the data, where they differ each block is judged by its
        stored checksums (:func:`vvfs.data.checksums.judge`).  Writes the data
        to every live leg that does not hold it yet, and to a move's
        destination where such a leg is being moved (:meth:`_forward`).
        Returns (every leg holds it now, bytes copied: 0 when there was
        no other live leg to copy to).
        """
        while True:
            sources = [loc for loc in s.legs if self.readable(loc.device)
                       and loc.device not in job.targets]
            if not sources or sum(loc.device in self.devices for loc in s.legs) < 2:
                return False, 0  # nothing to copy from, or to
            datas = await self._read_legs(sources, s.length)
            if datas is not None:
                break
        data = datas[0] if all(d == datas[0] for d in datas[1:]) \
            else await self._judge(sources, datas)
        holding = {loc for loc, d in zip(sources, datas) if d == data}
        targets = [loc for loc in s.legs if loc.device in self.devices and loc not in holding]
        if not targets:
            written: list[Loc] = []
            errors: list[tuple[_Call, DeviceIOError]] = []
        else:
            calls = []
            for loc in targets:
                call = _Call(loc.device, loc.offset)
                call.bufs = [memoryview(data)]
                call.length = len(data)
                call.pieces = [0]
                calls.append(call)
            errors = await self._run(calls, read=False, ok=[0])
            for call, err in errors:
                if not is_failure(err):
                    raise err
                self.fail(call.device, err)
            failed = {call.device for call, _ in errors}
            written = [loc for loc in targets if loc.device not in failed]
        forwarded = await self._forward(written, data)
        if self.checksums is not None and not len(data) % BLOCK:
            values = pack(block_crcs(memoryview(data)))
            entries = [(loc.device, loc.offset, values) for loc in s.legs
                       if loc.device in self.devices]
            entries += [(dest, at, values[skip // BLOCK * ENTRY:(skip + n) // BLOCK * ENTRY])
                        for dest, at, skip, n in forwarded]
            try:
                await self.checksums.update(entries)
            except DeviceIOError as exc:
                log.warning("resync: checksum entries not refreshed: %s", exc)
        copied = len(data) if len(targets) + len(holding) >= 2 else 0
        return not errors and all(loc.device in self.devices for loc in s.legs), copied

    async def _read_legs(self, sources: list[Loc], length: int
                         ) -> list[bytes | bytearray] | None:
        """The bytes of every source leg, or None after failing a leg that could not be read."""
        datas: list[bytes | bytearray] = [b""] * len(sources)
        failed: list[tuple[DeviceUUID, DeviceIOError]] = []

        async def one(i: int, loc: Loc) -> None:
            try:
                dev = self.devices.get(loc.device)
                if dev is None:
                    raise DeviceIOError(self.name_of(loc.device), loc.offset,
                                        "device is not open", errno.ENODEV)
                datas[i] = await dev.pread(length, loc.offset)
            except DeviceIOError as exc:
                if not is_failure(exc):
                    raise
                failed.append((loc.device, exc))

        if len(sources) == 1:
            await one(0, sources[0])
        else:
            async with trio.open_nursery() as nursery:
                for i, loc in enumerate(sources):
                    nursery.start_soon(one, i, loc)
        for device, exc in failed:
            self.fail(device, exc)
        return None if failed else datas

    async def _judge(self, sources: list[Loc], datas: list[bytes | bytearray]
                     ) -> bytes | bytearray:
        """The right bytes of legs that differ: block by block, by the stored checksums.

        Without checksums (or for a length that is not whole blocks) the
        first source in leg order is right, as it always was.
        """
        n = len(datas[0])
        if self.checksums is None or n % BLOCK:
            return datas[0]
        stored: list[list[int] | None] = []
        for loc in sources:
            try:
                stored.append(await self.checksums.read(loc.device, loc.offset, n // BLOCK))
            except DeviceIOError as exc:
                log.warning("resync: checksum entries not read: %s", exc)
                stored.append(None)
        out = bytearray(datas[0])
        for b in range(0, n, BLOCK):
            blocks = [bytes(d[b:b + BLOCK]) for d in datas]
            if all(x == blocks[0] for x in blocks[1:]):
                continue
            self.stats.resync_judged += 1
            entries = [vals[b // BLOCK] if vals is not None else None for vals in stored]
            verdict = judge(list(blocks), entries)
            if verdict.right:
                self.stats.resync_judged_other += 1
                out[b:b + BLOCK] = datas[verdict.right][b:b + BLOCK]
                log.info("resync: device %s byte %d: %s", self.name_of(sources[verdict.right].device),
                         sources[verdict.right].offset + b, verdict.reason)
        return bytes(out)

    async def _forward(self, written: list[Loc], data: bytes | bytearray
                       ) -> list[tuple[DeviceUUID, int, int, int]]:
        """Write *data*, just written to legs *written*, to a move's destination of those legs.

        While a move is recorded, bytes that land on a moving run must reach
        its destination too, like a host write's (:mod:`vvfs.data.guard`); the
        move copies no extent meanwhile (it holds :attr:`copy_lock`, as
        resync does).  A destination that fails fails the move, not the
        resync.  Returns (device, byte, offset in *data*, length) of each
        write made, for the checksums.
        """
        shadow = self.guard.move if self.guard is not None else None
        if shadow is None or not written:
            return []
        view = memoryview(data)
        out: list[tuple[DeviceUUID, int, int, int]] = []
        try:
            for loc in written:
                for skip, dest, at, n in shadow.map(loc.device, loc.offset, len(view)):
                    dev = self.devices.get(dest)
                    if dev is None:
                        raise DeviceIOError(dest, at, "move destination is not open")
                    await dev.pwrite(view[skip:skip + n], at)
                    out.append((dest, at, skip, n))
                    self.guard.stats.shadow_writes += 1
        except DeviceIOError as exc:
            self.guard.stats.shadow_errors += 1
            if shadow.failed is None:
                shadow.failed = exc
            log.error("move %s: a resync write could not reach the destination: %s",
                      shadow.record.id, exc)
        return out

    async def _settle(self, pending: list[tuple[set[Key], dict[Key, int]]]) -> None:
        """Flush what was copied, then clear the bits of regions no write entered since."""
        if not pending:
            return
        devs = {k[0] for keys, _ in pending for k in keys}
        await self.flush_devices(devs)
        by_dev: dict[DeviceUUID, list[int]] = {}
        for keys, seqs in pending:
            if any(k[0] not in self.devices for k in keys):
                continue
            for k in keys:
                if self.gate.seq.get(k, 0) == seqs[k] and k not in self.gate.inflight:
                    by_dev.setdefault(DeviceUUID(k[0]), []).append(k[1])
        for uuid, regions in by_dev.items():
            lg = self.logs.get(uuid)
            if lg is not None:
                lg.clear(regions)
        await self.sync_logs()

    # -- status -------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        s = self.stats
        names = self.names
        return {"degraded_writes": s.degraded_writes, "read_retries": s.read_retries,
                "first_wins": {str(k): v for k, v in s.first_wins.items()},
                "resync_bytes": s.resync_bytes, "resync_judged": s.resync_judged,
                "resync_judged_other": s.resync_judged_other, "cleaned": s.cleaned,
                "failed": {names.get(u, u): {"error": f.error, "since": f.when}
                           for u, f in self.failed.items()},
                "resyncing": sorted(names.get(u, u) for u in self.resyncing),
                "logs": {names.get(u, u): lg.statistics() for u, lg in self.logs.items()},
                "jobs": [j.progress(names) for j in self.jobs]}

