"""fallocate of a volume file zeroes a range, so loop devices discard and write zeroes.

Through a real mount: PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE on every layout
(the bytes read back as zeros through the mount and on every leg of the
backing files, the bytes around them are kept, a mirror still scrubs
clean), the modes a volume cannot have, and a real loop device over a
volume file: it advertises discard and write-zeroes, ``blkdiscard`` and
``blkdiscard -z`` zero what they cover, and ``fstrim`` on ext4 gives space
back to the backing files.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import random
from pathlib import Path

import pytest

from vvfs.node.fs import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE

from ..support.mountutil import (
    MiB,
    TestPool,
    fs_mounted,
    loop_device,
    mounted,
    require,
    run,
)
from .test_zeroing import _leg_bytes

pytestmark = pytest.mark.slow

FALLOC_FL_COLLAPSE_RANGE = 0x08
SPECS = {"linear": [], "striped": ["--stripes", "2", "--stripe-size", "64K"],
         "mirrored": ["--mirrors", "2"]}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(path: str, mode: int, offset: int, length: int) -> int:
    """fallocate(2) on *path*; the errno, 0 on success."""
    fd = os.open(path, os.O_RDWR)
    try:
        return 0 if _libc.fallocate(fd, mode, offset, length) == 0 else ctypes.get_errno()
    finally:
        os.close(fd)


def _fill(path: str, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    with open(path, "r+b") as f:
        f.write(data)
        os.fsync(f.fileno())
    return data


def _read(path: str) -> bytes:
    """The whole volume file with O_DIRECT: what the devices hold, no page cache."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        size = os.fstat(fd).st_size
        out = bytearray()
        with mmap.mmap(-1, 4 * MiB) as buf:  # page-aligned, as O_DIRECT wants
            while len(out) < size:
                n = os.preadv(fd, [buf], len(out))
                out += buf[:n]
        return bytes(out)
    finally:
        os.close(fd)


def _allocated(pool: TestPool) -> int:
    return sum(os.stat(p).st_blocks * 512 for p in pool.paths)


@pytest.mark.parametrize("layout", list(SPECS))
@pytest.mark.parametrize("mode", ["punch-hole", "zero-range"])
def test_fallocate_zeroes_a_range_of_every_layout(tmp_path: Path, layout: str,
                                                  mode: str) -> None:
    require()
    pool = TestPool(tmp_path, device_size=128 * MiB)
    flags = FALLOC_FL_KEEP_SIZE | (FALLOC_FL_PUNCH_HOLE if mode == "punch-hole"
                                   else FALLOC_FL_ZERO_RANGE)
    start, length = 3 * MiB + 512, 5 * MiB + 1024  # not block aligned: edges kept exactly
    with mounted(pool):
        pool.vv("volume", "create", "tank/v", "--size", "16M", *SPECS[layout])
        path = pool.volume_path("v")
        data = _fill(path, 16 * MiB, seed=7)
        assert fallocate(path, flags, start, length) == 0
        want = data[:start] + bytes(length) + data[start + length:]
        with open(path, "rb") as f:  # through the page cache, which the kernel dropped
            assert f.read() == want
        assert _read(path) == want
        os.sync()
        if layout == "mirrored":
            res = pool.vv("volume", "scrub", "tank/v")
            assert "(clean)" in res.stdout, res.stdout
    for i, legs in enumerate(_leg_bytes(pool, "v", start, start + length)):
        for leg in legs:
            assert leg == bytes(len(leg)), f"piece {i} of the range is not zero on a leg"


def test_punching_a_linear_volume_frees_its_backing_blocks(tmp_path: Path) -> None:
    require()
    pool = TestPool(tmp_path, device_size=128 * MiB)
    with mounted(pool):
        pool.vv("volume", "create", "tank/v", "--size", "32M")
        path = pool.volume_path("v")
        _fill(path, 32 * MiB, seed=8)
        before = _allocated(pool)
        assert fallocate(path, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0, 32 * MiB) == 0
        after = _allocated(pool)
    assert before - after >= 30 * MiB, (before, after)


def test_fallocate_modes_a_volume_cannot_have(tmp_path: Path) -> None:
    require()
    pool = TestPool(tmp_path, device_size=64 * MiB)
    with mounted(pool):
        pool.vv("volume", "create", "tank/v", "--size", "8M")
        path = pool.volume_path("v")
        data = _fill(path, 8 * MiB, seed=9)
        assert fallocate(path, 0, 0, 8 * MiB) == 0  # allocate: it is, already
        assert fallocate(path, 0, 4 * MiB, 8 * MiB) == errno.EFBIG  # would grow it
        assert fallocate(path, FALLOC_FL_ZERO_RANGE, 4 * MiB, 8 * MiB) == errno.EFBIG
        assert fallocate(path, FALLOC_FL_COLLAPSE_RANGE, 0, MiB) == errno.EOPNOTSUPP
        assert os.path.getsize(path) == 8 * MiB
        assert _read(path) == data
        # the size stays, and a hole past the end zeroes only what is inside
        assert fallocate(path, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
                         7 * MiB, 4 * MiB) == 0
        assert os.path.getsize(path) == 8 * MiB
        assert _read(path) == data[:7 * MiB] + bytes(MiB)


def _queue(dev: str, name: str) -> int:
    return int(Path(f"/sys/block/{os.path.basename(dev)}/queue/{name}").read_text())


def test_a_loop_device_on_a_volume_discards_and_writes_zeroes(tmp_path: Path) -> None:
    require("losetup", "blkdiscard")
    pool = TestPool(tmp_path, device_size=128 * MiB)
    with mounted(pool):
        pool.vv("volume", "create", "tank/v", "--size", "32M", "--stripes", "2",
                "--stripe-size", "64K")
        path = pool.volume_path("v")
        data = _fill(path, 32 * MiB, seed=10)
        with loop_device(path) as dev:
            assert _queue(dev, "discard_max_bytes") > 0
            assert _queue(dev, "write_zeroes_max_bytes") > 0
            run("blkdiscard", "-o", str(2 * MiB), "-l", str(4 * MiB), dev)
            run("blkdiscard", "-z", "-o", str(12 * MiB), "-l", str(3 * MiB), dev)
            run("blockdev", "--flushbufs", dev)
        got = _read(path)
    want = bytearray(data)
    want[2 * MiB:6 * MiB] = bytes(4 * MiB)
    want[12 * MiB:15 * MiB] = bytes(3 * MiB)
    assert got == bytes(want)


def test_fstrim_on_ext4_over_a_loop_device_gives_space_back(tmp_path: Path) -> None:
    require("losetup", "mkfs.ext4", "fstrim", "e2fsck")
    pool = TestPool(tmp_path, device_size=256 * MiB)
    with mounted(pool):
        pool.vv("volume", "create", "tank/fs", "--size", "128M")
        path = pool.volume_path("fs")
        with loop_device(path) as dev:
            run("mkfs.ext4", "-q", "-E", "nodiscard", dev)
            with fs_mounted(dev, tmp_path / "mnt") as where:
                with open(where / "big", "wb") as f:
                    f.writelines(os.urandom(MiB) for _ in range(64))
                    os.fsync(f.fileno())
                os.sync()
                full = _allocated(pool)
                (where / "big").unlink()
                os.sync()
                res = run("fstrim", "-v", str(where))
                assert "trimmed" in res.stdout, res.stdout
            os.sync()
            trimmed = _allocated(pool)
            run("e2fsck", "-f", "-n", dev)
    assert full - trimmed >= 48 * MiB, (full, trimmed)


def test_fallocate_during_a_move_reaches_the_destination(fresh_pool: TestPool) -> None:
    """Ranges the move has copied already and ranges it has not: zeros after the switch."""
    from .test_move import _wait_done, _wait_progress

    pool = fresh_pool
    pool.create_volume("v", 64 * MiB, on=[("d0", None)])
    with mounted(pool):
        path = pool.volume_path("v")
        data = _fill(path, 64 * MiB, seed=11)
        pool.vv("volume", "move", "tank/v", "--to", "d1", "--rate", "16M")
        _wait_progress(pool, "copied", 1)
        punch = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
        assert fallocate(path, punch, 0, 2 * MiB) == 0  # copied already
        assert fallocate(path, punch, 60 * MiB, 2 * MiB) == 0  # not yet
        _wait_done(pool)
        got = _read(path)
    want = bytearray(data)
    want[0:2 * MiB] = bytes(2 * MiB)
    want[60 * MiB:62 * MiB] = bytes(2 * MiB)
    assert got == bytes(want)
