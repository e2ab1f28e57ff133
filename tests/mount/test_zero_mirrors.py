"""A new mirror's legs agree from the start: fresh extents are zeroed before the commit.

The backing files are filled with bytes that differ from device to device
before the pool is made (or an old volume leaves its data behind), so that
legs left as they were would differ.  Also the zeroing primitive on a
regular file (a hole is punched) and on a real loop device (BLKZEROOUT).
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

import mapper
from mapper.layout import VolumeMap
from vvfs.data import checksums
from vvfs.io.filedev import FileDevice, zero_range
from vvfs.testing.faultdev import MemoryDevice

from ..support.mountutil import MiB, TestPool, loop_device, mounted, require

DEVICE = 256 * MiB


def _dirty_file(path: Path, size: int, seed: int) -> None:
    """A file of *size* bytes of a pseudo-random pattern of its own (*seed*)."""
    chunk = random.Random(seed).randbytes(MiB)
    with open(path, "wb") as f:
        f.writelines(chunk for _ in range(size // MiB))
        f.flush()
        os.fsync(f.fileno())


def _dirty_pool(root: Path, devices: int = 2) -> TestPool:
    """A pool whose data extents hold different bytes on every device."""
    require()
    paths = []
    for i in range(devices):
        p = root / f"dev{i}.img"
        _dirty_file(p, DEVICE, seed=i)
        paths.append(str(p))
    return TestPool(root, paths=paths)


def _leg_bytes(pool: TestPool, name: str, start: int = 0, end: int | None = None
               ) -> list[list[bytes]]:
    """Per piece of volume bytes [start, end): each leg's bytes, read from the backing files."""
    with pool.manager() as mgr:
        shown = mgr.show_pool(pool.name)
    vmap = VolumeMap(shown.pool, shown.pool.volume(name))
    end = vmap.size if end is None else end
    fds = {u: os.open(p, os.O_RDONLY) for u, p in shown.paths.items()}
    try:
        return [[os.pread(fds[loc.device], piece.length, loc.offset) for loc in piece.legs]
                for piece in vmap.resolve(start, end - start)]
    finally:
        for fd in fds.values():
            os.close(fd)


def assert_legs_zero(pool: TestPool, name: str, start: int = 0, end: int | None = None) -> None:
    for i, legs in enumerate(_leg_bytes(pool, name, start, end)):
        assert len(legs) >= 2
        assert all(leg == legs[0] for leg in legs), f"legs of piece {i} differ"
        assert legs[0] == bytes(len(legs[0])), f"piece {i} does not read as zeros"


def _entries(pool: TestPool, name: str) -> set[int]:
    """Every checksum entry, on every leg, of the volume's whole blocks."""
    with pool.manager() as mgr:
        shown = mgr.show_pool(pool.name)
    p = shown.pool
    vmap = VolumeMap(p, p.volume(name))
    seen: set[int] = set()
    for piece in vmap.resolve(0, vmap.size):
        for loc in piece.legs:
            dev = p.device(loc.device)
            at = checksums.entry_offset(dev, p.extent_size, loc.offset)
            with open(shown.paths[loc.device], "rb") as f:
                f.seek(at)
                seen |= set(checksums.unpack(f.read(piece.length // 4096 * 4)))
    return seen


# ---------------------------------------------------------------------------
# the primitive


def test_zero_punches_a_hole_in_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    _dirty_file(path, 16 * MiB, seed=7)
    before = os.stat(path)
    with FileDevice(str(path)) as dev:
        assert dev.zero(4 * MiB, 8 * MiB) == "punch-hole"
        dev.flush()
    after = os.stat(path)
    assert after.st_size == before.st_size
    assert (before.st_blocks - after.st_blocks) * 512 >= 8 * MiB  # the range is a hole
    data = path.read_bytes()
    assert data[4 * MiB:12 * MiB] == bytes(8 * MiB)
    chunk = random.Random(7).randbytes(MiB)
    assert data[:4 * MiB] == chunk * 4 and data[12 * MiB:] == chunk * 4


@pytest.mark.slow
def test_zero_uses_blkzeroout_on_a_loop_device(tmp_path: Path) -> None:
    require("losetup")
    path = tmp_path / "f"
    _dirty_file(path, 16 * MiB, seed=8)
    with loop_device(str(path)) as loop:
        with FileDevice(loop) as dev:
            assert dev.is_block
            assert dev.zero(4 * MiB, 8 * MiB) == "zeroout"
            dev.flush()
        fd = os.open(loop, os.O_RDONLY)
        try:
            zeroed = os.pread(fd, 8 * MiB, 4 * MiB)
            edge = os.pread(fd, MiB, 3 * MiB)
        finally:
            os.close(fd)
    assert zeroed == bytes(8 * MiB)
    assert edge == random.Random(8).randbytes(MiB)
    assert path.read_bytes()[4 * MiB:12 * MiB] == bytes(8 * MiB)


def test_zero_writes_zeros_when_the_device_refuses(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "f"
    _dirty_file(path, 4 * MiB, seed=9)

    def refuse(offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    with FileDevice(str(path)) as dev:
        dev._punch_hole = refuse  # type: ignore[method-assign]
        assert dev.zero(MiB, 2 * MiB + 512) == "write"
    assert path.read_bytes()[MiB:3 * MiB + 512] == bytes(2 * MiB + 512)
    assert "writing 2097664 bytes of zeros" in caplog.text


def test_zero_range_of_a_device_that_is_not_a_file() -> None:
    dev = MemoryDevice(4 * MiB)
    dev.pwrite(b"\xff" * (4 * MiB), 0)
    assert zero_range(dev, MiB, MiB) == "write"
    assert dev.pread(MiB, MiB) == bytes(MiB) and dev.pread(1, 2 * MiB) == b"\xff"


# ---------------------------------------------------------------------------
# offline: create, batch create, grow


def test_a_new_mirror_reads_zeros_on_every_leg(tmp_path: Path) -> None:
    pool = _dirty_pool(tmp_path)
    pool.create_volume("m", 64 * MiB, mirrors=2)
    assert_legs_zero(pool, "m")
    assert _entries(pool, "m") == {checksums.ZERO_CRC}


def test_a_batch_of_mirrors_reads_zeros_on_every_leg(tmp_path: Path) -> None:
    pool = _dirty_pool(tmp_path)
    specs = [mapper.VolumeSpec(name=n, size=16 * MiB, mirrors=2) for n in ("a", "b")]
    with pool.manager() as mgr:
        mgr.create_volumes(pool.name, specs)
    assert_legs_zero(pool, "a")
    assert_legs_zero(pool, "b")


def test_a_grown_mirror_is_zero_on_every_leg_past_its_old_size(tmp_path: Path) -> None:
    pool = _dirty_pool(tmp_path, devices=3)
    pool.create_volume("m", 16 * MiB, mirrors=2)
    pool.create_volume("l", 8 * MiB)  # so that growing m cannot simply extend in place
    with pool.manager() as mgr:
        mgr.resize_volume("tank/m", 64 * MiB)
    assert_legs_zero(pool, "m", 16 * MiB)


def test_a_linear_volume_keeps_what_the_device_held(tmp_path: Path) -> None:
    """Like LVM, a volume with one copy is not zeroed (man vv.8, volume create)."""
    pool = _dirty_pool(tmp_path)
    pool.create_volume("l", 8 * MiB)
    [[data]] = _leg_bytes(pool, "l")
    assert data != bytes(len(data))


# ---------------------------------------------------------------------------
# through a node: scrub finds nothing


@pytest.mark.slow
def test_scrub_of_a_new_mirror_over_dirty_devices_is_clean(tmp_path: Path) -> None:
    pool = _dirty_pool(tmp_path)
    pool.create_volume("m", 32 * MiB, mirrors=2)
    with mounted(pool):
        with open(pool.volume_path("m"), "rb") as f:
            assert f.read(4 * MiB) == bytes(4 * MiB)
        res = pool.vv("volume", "scrub", "tank/m")
        assert "(clean)" in res.stdout, res.stdout


@pytest.mark.slow
def test_mirror_created_in_the_node_over_a_removed_one_scrubs_clean(tmp_path: Path) -> None:
    """The node's checksum cache holds the old volume's entries: they must not come back.

    One page of entries covers a 4 MiB extent; a write to block 0 of the new
    volume writes its whole page, so stale cached entries of blocks 1..1023
    would reach the device and scrub would find them wrong.
    """
    pool = _dirty_pool(tmp_path)
    with mounted(pool):
        pool.vv("volume", "create", "tank/old", "--size", "16M", "--mirrors", "2")
        with open(pool.volume_path("old"), "r+b") as f:
            f.write(os.urandom(16 * MiB))
        pool.vv("volume", "remove", "tank/old")
        pool.vv("volume", "create", "tank/m", "--size", "16M", "--mirrors", "2")
        with open(pool.volume_path("m"), "r+b") as f:
            f.write(b"x" * 4096)
            f.seek(5 * MiB)
            f.write(b"y" * 4096)
            os.fsync(f.fileno())
        res = pool.vv("volume", "scrub", "tank/m")
        assert "(clean)" in res.stdout, res.stdout
    legs = _leg_bytes(pool, "m")
    assert all(leg == piece[0] for piece in legs for leg in piece)
    assert_legs_zero(pool, "m", 6 * MiB)
