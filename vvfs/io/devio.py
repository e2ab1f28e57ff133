"""The device I/O engine: one :class:`DataDevice` per backing device.

Every ``pread``/``pwrite``/``fdatasync`` on a backing device runs in a worker
thread (``trio.to_thread.run_sync``) under one named
:class:`trio.CapacityLimiter` shared by the whole node, so that many requests
are in flight at once while the event loop never blocks on storage.

Cache modes (a constructor option, see ``bench/fio_basic.sh``):

* ``direct=False`` (buffered): the device is opened ``O_RDWR``; writes land
  in the host page cache and :meth:`DataDevice.flush` is ``fdatasync``.
* ``direct=True``: a second descriptor is opened with ``O_DIRECT``; requests
  whose offset and length are multiples of :data:`DIRECT_ALIGN` go through it,
  first as kernel AIO submitted from the event loop (:mod:`vvfs.io.kaio`: no
  thread, ``RWF_NOWAIT``, reusable page-aligned slot buffers), else in a
  worker thread via a page-aligned bounce buffer (one per worker thread);
  the others go through
  the buffered descriptor (the kernel keeps the two coherent: direct I/O
  writes back and invalidates cached pages of its range first).
  ``flush`` is still ``fdatasync``: O_DIRECT does not empty a disk's write
  cache nor persist the allocation of a sparse file's blocks.

In buffered mode a read of up to :data:`NOWAIT_MAX` bytes is first tried on
the event loop thread with ``RWF_NOWAIT``, which the kernel answers only
from the page cache and never by waiting for the device (EAGAIN instead);
that saves the thread round trip (about 100 us) on cache hits and never
blocks the loop.  Writes always go to a thread (a buffered write may wait
for dirty-page throttling).

Either way a flush that returns means that every write that *completed*
before the flush was called is on stable storage.  Each device counts its
completed writes; a flush that finds no write completed since the start of
the last successful ``fdatasync`` returns at once without a system call.

Paths and failover
------------------
A device may be reachable by several paths (two loop devices over one
file, a file and a bind mount of it, two multipath legs): ``paths[0]`` is
the primary, the others alternates.  Only the active path is open.  When a
call fails on it with an error that says the *path* is gone or broken
(:data:`PATH_ERRNOS`: EIO, ENXIO, ENODEV, ...), the device opens the next
path that has not failed, retries the call there and keeps using it; the
failed path is reported through ``on_path_failed``.  Concurrent calls that
failed on the same path retry once the switch is done (one switch per path,
under ``_failover_lock``).  Descriptors of a failed path are closed by
:meth:`DataDevice.close` or by the next switch back (below), never under a
call still using them.  Only when every path has failed does the call
raise.  (A buffered write that reached a path's page cache and was lost by
a failing ``fdatasync`` cannot be replayed: use ``backing=direct`` for
several paths to one block device.)

A failed path is not given up for good: :meth:`DataDevice.restore_path`
(the node's probe calls it once the path carries the device's label
again) makes it ``standby``, or ``active`` when it comes before the path
in use -- the device always uses the first working path in order.  Going
back to an earlier path *pauses* the device: new calls wait, the calls in
flight are waited for, the path being left is flushed (``fdatasync``,
so that what went through its page cache is on the device before reads
go through another one), then the descriptors are swapped and the calls
let through.  A path switched to (by failover or failback) first has its
clean cached pages dropped (``POSIX_FADV_DONTNEED``): they may predate
writes made through another path.

While open, a device holds the path it first opened (:mod:`vvfs.io.hold`: an OFD lock
on a file, ``O_EXCL`` on a block device), so that no claim takes it and no
other node serves it; a path held by another process is not opened.

Errors are :class:`metadata.blockdev.DeviceIOError` naming the device and the
byte offset.  Cancellation: the worker threads are never abandoned, so a
cancelled call returns (raising ``trio.Cancelled``) only once its system call
has finished; the I/O itself is not undone.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import trio

from metadata.blockdev import DeviceIOError
from vvfs.io import hold, kaio
from vvfs.io.filedev import zero_fd

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Offset and length granularity for the O_DIRECT descriptor (covers devices
#: and file systems with logical blocks of up to one page).
DIRECT_ALIGN = 4096
#: Most buffers in one preadv/pwritev call (Linux IOV_MAX).
IOV_MAX = 1024
#: Largest read tried from the page cache on the loop thread (see preadv).
NOWAIT_MAX = 256 << 10
#: Default number of device calls in flight across the whole node.
DEFAULT_IO_THREADS = 32
#: Errors after which a path is given up (and, once every path is, the device).
PATH_ERRNOS = frozenset({errno.EIO, errno.ENXIO, errno.ENODEV, errno.EBADF, errno.ENOENT,
                         errno.ENOTCONN, errno.ESTALE, errno.ENOMEDIUM, errno.EREMOTEIO,
                         errno.ESHUTDOWN, errno.ENOLINK})

PathFailed = Callable[["DataDevice", str, "str | None", DeviceIOError], None]
#: ``verify(fd, path, generation)``: return once the path open as *fd* leads to
#: the device expected, holding *generation* or newer; raise
#: :class:`~metadata.blockdev.DeviceIOError` (ENXIO: another device or none;
#: see :func:`vvfs.io.discovery.verify_identity`) otherwise.  Called on every
#: open of a path -- the first, a failover, a failback -- before any I/O.
Verify = Callable[[int, str, int], object]

Buffers = Sequence[memoryview]


def io_limiter(threads: int = DEFAULT_IO_THREADS) -> trio.CapacityLimiter:
    """The node-wide limiter for device calls (one per node)."""
    return trio.CapacityLimiter(threads)


@dataclass
class DeviceStats:
    """Counters of one device since it was opened."""

    reads: int = 0
    reads_nowait: int = 0
    #: calls done through kernel AIO (O_DIRECT only)
    kaio: int = 0
    writes: int = 0
    flushes: int = 0
    flushes_skipped: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    #: zeroing calls (:meth:`DataDevice.zero`) and the bytes they covered
    zeroes: int = 0
    bytes_zeroed: int = 0
    errors: int = 0
    in_flight: int = 0


class _Bounce(threading.local):
    """A page-aligned buffer per worker thread, grown on demand."""

    buf: mmap.mmap | None = None

    def get(self, size: int) -> memoryview:
        if self.buf is None or len(self.buf) < size:
            if self.buf is not None:
                self.buf.close()
            self.buf = mmap.mmap(-1, max(size, 1 << 20))
        return memoryview(self.buf)[:size]


_bounce = _Bounce()


class DataDevice:
    """One backing device (block device or image file) opened for data I/O.

    *name* is what errors and logs call it (the device's path); *uuid* its
    device uuid in the pool.  See the module docstring for *direct*.
    """

    def __init__(self, path: str, uuid: str, limiter: trio.CapacityLimiter, *,
                 direct: bool = False, alternates: Sequence[str] = (),
                 verify: Verify | None = None, generation: int = 0) -> None:
        self.path = path
        self.name = path
        self.uuid = uuid
        self.direct = direct
        self._limiter = limiter
        #: every path, primary first, and each one's state: active, standby, failed
        self.paths = [path] + [p for p in alternates if p != path]
        self.path_state = {p: "standby" for p in self.paths}
        #: checks that a path leads to this device (see :data:`Verify`), or None
        self.verify = verify
        #: the generation every path must hold (or newer) to be used (see :data:`Verify`)
        self.generation = generation
        #: called on the trio thread when a path fails (device, path, new path or None, error)
        self.on_path_failed: PathFailed | None = None
        self._path_gen = 0
        self._failover_lock = trio.Lock()
        self._retired: list[int] = []
        #: set while a failback waits for the calls in flight: new calls wait for it
        self._paused: trio.Event | None = None
        self._drained = trio.Event()
        self._fd, self._dfd = self._open_first()
        st = os.fstat(self._fd)
        self.is_block = stat.S_ISBLK(st.st_mode)
        self.stats = DeviceStats()
        self._completed_writes = 0
        self._durable_writes = 0
        #: page-cache reads on the loop thread (buffered mode only)
        self._nowait = not direct and hasattr(os, "RWF_NOWAIT")
        log.debug("opened %s (%s, direct=%s)", self.path, uuid, direct)

    def _open(self, flags: int, path: str | None = None) -> int:
        path = path or self.path
        try:
            return os.open(path, flags)
        except OSError as exc:
            raise DeviceIOError(path, 0, f"cannot open: {exc.strerror}", exc.errno) from None

    def _open_first(self) -> tuple[int, int]:
        """Open the first path, in order, that opens and proves to be this device.

        The paths that do not are ``failed``; raises the first one's error if none does.
        """
        first: DeviceIOError | None = None
        for p in self.paths:
            try:
                held = hold.take(p)
            except DeviceIOError as exc:
                log.warning("device %s: path %s not used: %s", self.uuid, p, exc)
                self.path_state[p] = "failed"
                first = first or exc
                continue
            try:
                fds = self._open_fds(p)
            except BaseException as exc:
                held.release()
                if not isinstance(exc, DeviceIOError):
                    raise
                log.warning("device %s: path %s not used: %s", self.uuid, p, exc)
                self.path_state[p] = "failed"
                first = first or exc
                continue
            #: this process's lock on the device while it is open (vvfs/io/hold.py)
            self._hold = held
            self.path = self.name = p
            self.path_state[p] = "active"
            return fds
        raise first or DeviceIOError(self.name, 0, "no path to open", errno.ENODEV)

    def _open_fds(self, path: str, drop_cache: bool = False) -> tuple[int, int]:
        """(buffered fd, O_DIRECT fd or -1) of *path*, once it proved to be this device.

        *drop_cache*: first drop its clean cached pages (a path switched to:
        they may predate writes made through another path).
        """
        fd = self._open(os.O_RDWR | os.O_CLOEXEC, path)
        dfd = -1
        try:
            if drop_cache:
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                except OSError as exc:
                    log.debug("%s: cached pages not dropped: %s", path, exc.strerror)
            if self.verify is not None:
                self.verify(fd, path, self.generation)
            if self.direct:
                dfd = self._open(os.O_RDWR | os.O_CLOEXEC | os.O_DIRECT, path)
        except BaseException:
            os.close(fd)
            raise
        return fd, dfd

    def _open_switch(self, path: str) -> tuple[int, int]:
        """:meth:`_open_fds` of a path to switch to, its stale cached pages dropped."""
        return self._open_fds(path, drop_cache=True)

    # -- public async API ---------------------------------------------------

    async def pread(self, length: int, offset: int) -> bytearray:
        """Read exactly *length* bytes at *offset*."""
        out = bytearray(length)
        await self.preadv([memoryview(out)], offset)
        return out

    async def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write all of *data* at *offset*."""
        await self.pwritev([memoryview(data)], offset)

    async def preadv(self, bufs: Buffers, offset: int) -> None:
        """Fill *bufs*, in order, from the bytes starting at *offset*."""
        total = len(bufs[0]) if len(bufs) == 1 else sum(len(b) for b in bufs)
        if self._aligned(offset, total):
            if not await self._kaio(False, bufs, offset, total):
                await self._run(self._preadv_sync, bufs, offset, total)
        elif not (total <= NOWAIT_MAX and self._read_nowait(bufs, offset, total)):
            await self._run(self._preadv_sync, bufs, offset, total)
        self.stats.reads += 1
        self.stats.bytes_read += total

    def _read_nowait(self, bufs: Buffers, offset: int, total: int) -> bool:
        """Read from the page cache on the loop thread if that cannot block.

        ``RWF_NOWAIT`` makes the kernel fail with EAGAIN (or read short)
        rather than wait for the device; then the caller uses a thread.
        """
        if not self._nowait or len(bufs) > IOV_MAX:
            return False
        try:
            n = os.preadv(self._fd, bufs, offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                log.debug("%s: no RWF_NOWAIT reads (%s)", self.name, exc.strerror)
                self._nowait = False
            return False
        if n == total:
            self.stats.reads_nowait += 1
            return True
        return False

    async def pwritev(self, bufs: Buffers, offset: int) -> None:
        """Write *bufs*, in order, to the bytes starting at *offset*."""
        total = len(bufs[0]) if len(bufs) == 1 else sum(len(b) for b in bufs)
        if not (self._aligned(offset, total) and await self._kaio(True, bufs, offset, total)):
            await self._run(self._pwritev_sync, bufs, offset, total)
        self.stats.writes += 1
        self.stats.bytes_written += total
        self._completed_writes += 1

    async def pwritev_dsync(self, bufs: Buffers, offset: int) -> None:
        """Write *bufs* at *offset* and return once they are on stable storage.

        ``RWF_DSYNC``: only this range is written back and the device's cache
        flushed -- not every dirty page of the device, as ``fdatasync``
        would.  (The dirty log's bitmap blocks are written this way.)  Not
        counted as a write for :meth:`flush`: it is durable already.
        """
        total = sum(len(b) for b in bufs)
        await self._run(self._pwritev_sync, bufs, offset, total, os.RWF_DSYNC)
        self.stats.writes += 1
        self.stats.bytes_written += total

    async def zero(self, offset: int, length: int, *, keep_allocation: bool = False) -> str:
        """Make *length* bytes at *offset* read as zeros with the device's fast primitive.

        :func:`vvfs.io.filedev.zero_fd` on the active path's buffered
        descriptor (a hole punched in a file, WRITE_ZEROES on a block
        device; *keep_allocation* as there), in a worker thread with path
        failover like any call.  The kernel drops the cached pages of the
        range, and O_DIRECT calls see the zeros too.  Counted as a write, so
        a later :meth:`flush` makes it durable.  Returns how it was done.
        """
        how = await self._run(self._zero_sync, offset, length, keep_allocation)
        self.stats.zeroes += 1
        self.stats.bytes_zeroed += max(length, 0)
        self._completed_writes += 1
        return how

    def fds(self) -> tuple[int, int] | None:
        """(buffered, O_DIRECT or -1) descriptors of the active path; None if closed or paused.

        For the native driver, which duplicates them (:class:`vvfs.driver._native.Table`):
        a path switch closes these, never the duplicates.
        """
        if self._fd < 0 or self._paused is not None:
            return None
        return self._fd, self._dfd

    async def flush(self) -> None:
        """Return once every write completed before this call is on stable storage."""
        target = self._completed_writes
        if self._durable_writes >= target:
            self.stats.flushes_skipped += 1
            return
        await self._run(self._flush_sync)
        self.stats.flushes += 1
        self._durable_writes = max(self._durable_writes, target)

    @property
    def completed_writes(self) -> int:
        """Writes completed so far (a number that only grows)."""
        return self._completed_writes

    @property
    def durable_writes(self) -> int:
        """The first this-many completed writes are on stable storage (see :meth:`flush`)."""
        return self._durable_writes

    def statistics(self) -> dict[str, object]:
        """Counters and state of this device (plain data)."""
        s = self.stats
        return {"path": self.path, "uuid": self.uuid, "direct": self.direct,
                "paths": [{"path": p, "state": self.path_state[p]} for p in self.paths],
                "reads": s.reads, "reads_nowait": s.reads_nowait, "kaio": s.kaio,
                "writes": s.writes, "bytes_read": s.bytes_read,
                "bytes_written": s.bytes_written, "zeroes": s.zeroes,
                "bytes_zeroed": s.bytes_zeroed, "flushes": s.flushes,
                "flushes_skipped": s.flushes_skipped, "errors": s.errors,
                "in_flight": s.in_flight, "dirty": self._completed_writes > self._durable_writes}

    def set_paths(self, paths: Sequence[str]) -> bool:
        """Reach the device by *paths* (primary first) from now on; only those are opened.

        A path already known keeps its state, a new one is standby.  Returns
        True when the path in use is no longer listed: it stays in use (and
        out of the table) until :meth:`leave_unlisted` switches to a listed one.
        """
        new = list(dict.fromkeys(paths)) or [self.path]
        self.path_state = {p: self.path_state.get(p, "standby") for p in new}
        if self.path in new:
            self.path_state[self.path] = "active"
        self.paths = new
        return self.path not in new

    async def leave_unlisted(self) -> str | None:
        """If the path in use is no longer listed, switch to the first listed one that works.

        Pauses the device as a failback does (see the module docstring).
        Returns the path switched to, or None if nothing had to change.
        Raises :class:`DeviceIOError` when no listed path opens and proves to
        be this device (they are ``failed`` then; the caller fails the device).
        Cancellation: the device stays on the path it had.
        """
        first: DeviceIOError | None = None
        for p in list(self.paths):
            if self.path in self.paths or self._fd < 0:
                return None
            try:
                fds = await trio.to_thread.run_sync(self._open_switch, p)
            except DeviceIOError as exc:
                self.path_state[p] = "failed"
                first = first or exc
                continue
            left = None
            try:
                left = await self._swap_paused(p, fds, lambda: self.path not in self.paths)
            finally:
                if left is None:
                    _close_fds(fds)
            if left is None:
                return None  # another switch is under way, or it no longer applies
            await trio.to_thread.run_sync(_close_fds, left)
            return p
        if self.path in self.paths or self._fd < 0:
            return None
        raise first or DeviceIOError(self.name, 0, "no listed path left", errno.ENODEV)

    async def restore_path(self, path: str) -> str | None:
        """Use failed *path* again; return its state now (``active``, ``standby``).

        The caller checked that *path* leads to this device (its label); it is
        checked again through the new descriptor (:attr:`verify`).
        The path becomes ``active`` when it comes before the one in use
        (see the module docstring: the device pauses while it switches),
        else ``standby``.  None when *path* is no longer a failed path of
        this device, or the device was closed or is switching already.
        Raises :class:`DeviceIOError` if *path* cannot be opened (it stays
        failed).  Cancellation: the calls paused meanwhile go on, on the
        path they had; *path* stays failed.
        """
        if self.path_state.get(path) != "failed" or path not in self.paths:
            return None
        fds = await trio.to_thread.run_sync(self._open_switch, path)
        left: list[int] | None = None
        try:
            if self._fd >= 0 and self.path_state.get(path) == "failed":
                if not self._comes_first(path):
                    self.path_state[path] = "standby"
                    return "standby"
                left = await self._swap_paused(
                    path, fds, lambda: self.path_state.get(path) == "failed"
                    and self._comes_first(path))
        finally:
            if left is None:
                _close_fds(fds)
        if left is None:
            return None
        await trio.to_thread.run_sync(_close_fds, left)
        return "active"

    def _comes_first(self, path: str) -> bool:
        """Does *path* come before the path in use, in the configured order?"""
        return self.path not in self.paths or self.paths.index(path) < self.paths.index(
            self.path)

    async def _swap_paused(self, path: str, fds: tuple[int, int],
                           still: Callable[[], bool]) -> list[int] | None:
        """Make *path* (open as *fds*) active, paused; the descriptors left behind.

        Waits for the calls in flight, then -- if *still()* says the switch
        still applies -- flushes the path being left and swaps.  None (and
        nothing changed) if it no longer applies.
        """
        if self._paused is not None:
            return None
        paused = self._paused = trio.Event()
        flushed: DeviceIOError | None = None
        try:
            while self.stats.in_flight:
                self._drained = trio.Event()
                await self._drained.wait()
            if self._fd < 0 or not still():
                return None
            old = self.path
            self.stats.in_flight += 1  # so that close() waits for this fdatasync
            try:
                await trio.to_thread.run_sync(self._flush_sync, limiter=self._limiter)
            except DeviceIOError as exc:
                flushed = exc
            finally:
                self.stats.in_flight -= 1
            if self._fd < 0:
                return None
            left = [*self._retired, *(fd for fd in (self._fd, self._dfd) if fd >= 0)]
            self._fd, self._dfd = fds
            self._retired = []
            if old in self.path_state:
                self.path_state[old] = "failed" if flushed is not None else "standby"
            self.path = self.name = path
            self.path_state[path] = "active"
            self._path_gen += 1
        finally:
            self._paused = None
            paused.set()
        log.info("device %s: switched to path %s from %s", self.uuid, path, old)
        if flushed is not None:
            log.warning("device %s: path %s failed its last flush (%s)", self.uuid, old,
                        flushed)
            if self.on_path_failed is not None:
                self.on_path_failed(self, old, path, flushed)
        return left

    def close(self) -> None:
        """Close the descriptors (no flush; call :meth:`flush` first)."""
        for fd in (self._fd, self._dfd, *self._retired):
            if fd >= 0:
                os.close(fd)
        self._fd = self._dfd = -1
        self._retired = []
        self._hold.release()
        log.debug("closed %s", self.path)

    # -- worker-thread side -------------------------------------------------

    async def _resumed(self) -> None:
        """Return once no failback pauses the device (see :meth:`restore_path`).

        Raises :class:`DeviceIOError` (ENODEV) if the device was closed meanwhile
        (taken out of service: a call waiting here was not in flight).
        """
        while self._paused is not None:
            await self._paused.wait()
        if self._fd < 0:
            raise DeviceIOError(self.name, 0, "device closed while switching paths",
                                errno.ENODEV)

    def _call_ended(self) -> None:
        self.stats.in_flight -= 1
        if self._paused is not None and not self.stats.in_flight:
            self._drained.set()

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._paused is not None:
            await self._resumed()
        self.stats.in_flight += 1
        try:
            while True:
                gen = self._path_gen
                try:
                    return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
                except DeviceIOError as exc:
                    if exc.errno not in PATH_ERRNOS or not await self._failover(gen, exc):
                        raise
        except DeviceIOError:
            self.stats.errors += 1
            raise
        finally:
            self._call_ended()

    async def _failover(self, gen: int, exc: DeviceIOError) -> bool:
        """Switch from the path that failed under *gen* to a working one; False if none.

        True when the call should be retried (on the path now active).
        """
        async with self._failover_lock:
            if gen != self._path_gen:
                return True  # another call switched already
            old = self.path
            if old in self.path_state:
                self.path_state[old] = "failed"
            new = None
            refused: list[tuple[str, DeviceIOError]] = []
            for p in self.paths:
                if self.path_state[p] == "failed":
                    continue
                try:
                    fds = await trio.to_thread.run_sync(self._open_switch, p)
                except DeviceIOError as err:
                    log.warning("%s: alternate path %s cannot be used: %s", self.uuid, p, err)
                    self.path_state[p] = "failed"
                    refused.append((p, err))
                    continue
                self._retired += [fd for fd in (self._fd, self._dfd) if fd >= 0]
                self._fd, self._dfd = fds
                self.path = self.name = new = p
                self.path_state[p] = "active"
                self._path_gen += 1
                break
            if new is not None:
                log.warning("device %s: path %s failed (%s); switched to %s", self.uuid, old,
                            exc, new)
            if self.on_path_failed is not None:
                self.on_path_failed(self, old, new, exc)
                for p, why in refused:
                    self.on_path_failed(self, p, new, why)
            return new is not None

    async def _kaio(self, write: bool, bufs: Buffers, offset: int, total: int) -> bool:
        """Try the call through kernel AIO on the O_DIRECT descriptor (see vvfs.io.kaio)."""
        eng = kaio.engine()
        if eng is None:
            return False
        if self._paused is not None:
            await self._resumed()
        self.stats.in_flight += 1
        try:
            done = await eng.run(self._dfd, write, bufs, offset, total)
        finally:
            self._call_ended()
        if done:
            self.stats.kaio += 1
        return done

    def _aligned(self, offset: int, total: int) -> bool:
        return self._dfd >= 0 and not (offset | total) % DIRECT_ALIGN

    def _preadv_sync(self, bufs: Buffers, offset: int, total: int) -> None:
        if self._aligned(offset, total):
            bounce = _bounce.get(total)
            self._readv_all(self._dfd, [bounce], offset)
            pos = 0
            for b in bufs:
                b[:] = bounce[pos:pos + len(b)]
                pos += len(b)
        else:
            for i in range(0, len(bufs), IOV_MAX):
                chunk = bufs[i:i + IOV_MAX]
                self._readv_all(self._fd, chunk, offset)
                offset += sum(len(b) for b in chunk)

    def _pwritev_sync(self, bufs: Buffers, offset: int, total: int, flags: int = 0) -> None:
        """Write *bufs* at *offset* (aligned calls through O_DIRECT); *flags* as pwritev2."""
        if self._aligned(offset, total):
            bounce = _bounce.get(total)
            pos = 0
            for b in bufs:
                bounce[pos:pos + len(b)] = b
                pos += len(b)
            self._writev_all(self._dfd, [bounce], offset, flags)
        else:
            for i in range(0, len(bufs), IOV_MAX):
                chunk = bufs[i:i + IOV_MAX]
                self._writev_all(self._fd, chunk, offset, flags)
                offset += sum(len(b) for b in chunk)

    def _readv_all(self, fd: int, bufs: Buffers, offset: int) -> None:
        bufs = list(bufs)
        while bufs:
            try:
                n = os.preadv(fd, bufs, offset)
            except OSError as exc:
                raise DeviceIOError(self.name, offset, f"read failed: {exc.strerror}",
                                    exc.errno) from None
            if n == 0:
                raise DeviceIOError(self.name, offset, "read past the end of the device",
                                    errno.EIO)
            offset += n
            bufs = _advance(bufs, n)

    def _writev_all(self, fd: int, bufs: Buffers, offset: int, flags: int = 0) -> None:
        bufs = list(bufs)
        while bufs:
            try:
                n = os.pwritev(fd, bufs, offset, flags)
            except OSError as exc:
                raise DeviceIOError(self.name, offset, f"write failed: {exc.strerror}",
                                    exc.errno) from None
            if n == 0:
                raise DeviceIOError(self.name, offset, "write made no progress", errno.EIO)
            offset += n
            bufs = _advance(bufs, n)

    def _zero_sync(self, offset: int, length: int, keep_allocation: bool) -> str:
        return zero_fd(self._fd, self.name, self.is_block, offset, length,
                       keep_allocation=keep_allocation)

    def _flush_sync(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise DeviceIOError(self.name, 0, f"flush failed: {exc.strerror}",
                                exc.errno) from None


def _close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def _advance(bufs: list[memoryview], n: int) -> list[memoryview]:
    """Drop the first *n* bytes of *bufs* (after a partial transfer)."""
    while bufs and n >= len(bufs[0]):
        n -= len(bufs[0])
        bufs.pop(0)
    if bufs and n:
        bufs[0] = bufs[0][n:]
    return bufs
