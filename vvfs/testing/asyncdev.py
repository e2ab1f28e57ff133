"""A block-device fake as the data path sees a device: async, counted, in worker threads.

The data path (:mod:`vvfs.data`) calls :class:`vvfs.io.devio.DataDevice`:
async ``pread``/``preadv``/``pwrite``/``pwritev``/``pwritev_dsync``/``zero``/``flush``,
the completed and durable write counts a flush is judged by, and the
in-flight count the ``first`` read policy looks at.  :class:`AsyncDevice`
gives that interface to any :class:`metadata.blockdev.BlockDevice` -- a
:class:`~vvfs.testing.faultdev.MemoryDevice`, a
:class:`~vvfs.testing.faultdev.FaultyDevice` around one, a
:class:`~vvfs.testing.faultdev.RecordingDevice` -- so that mirrored writes,
reads and resync run unchanged on fakes with injected faults.

Like ``DataDevice``, every call runs in a worker thread
(``trio.to_thread.run_sync`` under the limiter given), so an injected delay
does not block the event loop and calls on several devices overlap; an
error of the wrapped device (:class:`~metadata.blockdev.DeviceIOError`)
reaches the caller as it is.  There are no paths to fail over to.
``pwritev_dsync`` writes and then flushes the wrapped device (what
``RWF_DSYNC`` promises) and, as in ``DataDevice``, does not count as a write
for :meth:`AsyncDevice.flush`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import trio

from metadata.blockdev import BlockDevice, DeviceIOError
from vvfs.io.devio import DeviceStats, PathFailed
from vvfs.io.filedev import zero_range

T = TypeVar("T")


class AsyncDevice:
    """*inner* as a data device of uuid *uuid* (see the module docstring)."""

    def __init__(self, inner: BlockDevice, uuid: str, limiter: trio.CapacityLimiter) -> None:
        self.inner = inner
        self.uuid = uuid
        self.name = self.path = inner.name
        self.paths = [inner.name]
        self.on_path_failed: PathFailed | None = None
        self.stats = DeviceStats()
        self._limiter = limiter
        self._completed_writes = 0
        self._durable_writes = 0

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        self.stats.in_flight += 1
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except DeviceIOError:
            self.stats.errors += 1
            raise
        finally:
            self.stats.in_flight -= 1

    async def pread(self, length: int, offset: int) -> bytearray:
        data = await self._run(self.inner.pread, length, offset)
        self.stats.reads += 1
        self.stats.bytes_read += length
        return bytearray(data)

    async def preadv(self, bufs: Sequence[memoryview], offset: int) -> None:
        data = await self.pread(sum(len(b) for b in bufs), offset)
        pos = 0
        for b in bufs:
            b[:] = data[pos:pos + len(b)]
            pos += len(b)

    async def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        await self.pwritev([memoryview(data)], offset)

    async def pwritev(self, bufs: Sequence[memoryview], offset: int) -> None:
        data = b"".join(bufs)  # a copy: the caller's buffers may change once this returns
        await self._run(self.inner.pwrite, data, offset)
        self.stats.writes += 1
        self.stats.bytes_written += len(data)
        self._completed_writes += 1

    async def pwritev_dsync(self, bufs: Sequence[memoryview], offset: int) -> None:
        data = b"".join(bufs)
        await self._run(self._write_durably, data, offset)
        self.stats.writes += 1
        self.stats.bytes_written += len(data)

    async def zero(self, offset: int, length: int, *, keep_allocation: bool = False) -> str:
        """Zero a range of the wrapped device (:func:`~vvfs.io.filedev.zero_range`); a write."""
        how = await self._run(zero_range, self.inner, offset, length)
        self.stats.zeroes += 1
        self.stats.bytes_zeroed += max(length, 0)
        self._completed_writes += 1
        return how

    def _write_durably(self, data: bytes, offset: int) -> None:
        self.inner.pwrite(data, offset)
        self.inner.flush()

    async def flush(self) -> None:
        target = self._completed_writes
        if self._durable_writes >= target:
            self.stats.flushes_skipped += 1
            return
        await self._run(self.inner.flush)
        self.stats.flushes += 1
        self._durable_writes = max(self._durable_writes, target)

    @property
    def completed_writes(self) -> int:
        return self._completed_writes

    @property
    def durable_writes(self) -> int:
        return self._durable_writes

    def close(self) -> None:
        self.inner.close()
