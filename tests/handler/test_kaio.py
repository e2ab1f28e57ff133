"""The kernel AIO engine (vvfs.io.kaio) under DataDevice, without a mount."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from vvfs.io import kaio
from vvfs.io.devio import DataDevice, io_limiter

MiB = 1 << 20


@pytest.fixture
def image(tmp_path: Path) -> str:
    """An 8 MiB file with every block allocated and none cached (AIO serves it).

    (An O_DIRECT call with RWF_NOWAIT over cached pages is refused: the
    kernel would have to write them back or drop them first.)
    """
    path = tmp_path / "dev.img"
    with open(path, "wb") as f:
        f.write(os.urandom(8 * MiB))
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return str(path)


def _device(path: str) -> DataDevice:
    return DataDevice(path, "dev", io_limiter(4), direct=True)


def test_aligned_calls_go_through_kernel_aio(image: str) -> None:
    async def body() -> None:
        dev = _device(image)
        try:
            data = os.urandom(MiB)
            await dev.pwrite(data, 4096)
            assert await dev.pread(MiB, 4096) == data
            assert dev.stats.kaio == 2
        finally:
            dev.close()

    if not kaio.enabled:
        pytest.fail("kernel AIO is disabled (VVFS_KAIO=0 in the environment): this test"
                    " needs it on")
    trio.run(body)


def test_concurrent_calls_beyond_the_depth_all_land(image: str) -> None:
    async def one(dev: DataDevice, i: int) -> None:
        block = bytes([i % 251]) * 4096
        await dev.pwrite(block, i * 4096)
        assert await dev.pread(4096, i * 4096) == block

    async def body() -> None:
        dev = _device(image)
        try:
            async with trio.open_nursery() as nursery:
                for i in range(4 * kaio.DEPTH):
                    nursery.start_soon(one, dev, i)
        finally:
            dev.close()

    trio.run(body)


def test_vectored_buffers_are_scattered_and_gathered(image: str) -> None:
    async def body() -> None:
        dev = _device(image)
        try:
            parts = [memoryview(bytearray(os.urandom(n))) for n in (1000, 3000, 4192)]
            await dev.pwritev(parts, 8192)
            back = [memoryview(bytearray(len(p))) for p in parts]
            await dev.preadv(back, 8192)
            assert [bytes(b) for b in back] == [bytes(p) for p in parts]
        finally:
            dev.close()

    trio.run(body)


def test_unaligned_calls_use_the_buffered_descriptor(image: str) -> None:
    async def body() -> None:
        dev = _device(image)
        try:
            await dev.pwrite(b"x" * 100, 10)
            assert await dev.pread(100, 10) == b"x" * 100
            assert dev.stats.kaio == 0
        finally:
            dev.close()

    trio.run(body)


def test_a_read_past_the_end_falls_back_and_fails_with_the_device_error(image: str) -> None:
    from metadata.blockdev import DeviceIOError

    async def body() -> None:
        dev = _device(image)
        try:
            with pytest.raises(DeviceIOError, match="past the end"):
                await dev.pread(8192, 8 * MiB - 4096)
        finally:
            dev.close()

    trio.run(body)
