"""A new or grown volume reads zeros: fresh extents are zeroed before the commit.

On every layout (linear, striped, mirrored), offline and through a node.
The backing files are filled with bytes that differ from device to device
before the pool is made (or an old volume leaves its data behind), so that
extents left as they were would show them, and the legs of a mirror would
differ.  Also the zeroing primitive on a regular file (a hole is punched)
and on a real loop device (WRITE_ZEROES).
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
from vvfs.io import filedev
from vvfs.io.filedev import FileDevice, zero_range
from vvfs.testing.faultdev import MemoryDevice

from ..support.mountutil import MiB, TestPool, loop_device, mounted, require

DEVICE = 256 * MiB
#: the layouts of a new volume, as VolumeSpec keywords
LAYOUTS = {"linear": {}, "striped": {"stripes": 2, "stripe_size": 64 * 1024},
           "mirrored": {"mirrors": 2}}


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


def _entries(pool: TestPool, name: str, start: int = 0) -> set[int]:
    """Every checksum entry, on every leg, of the volume's whole blocks from *start*."""
    with pool.manager() as mgr:
        shown = mgr.show_pool(pool.name)
    p = shown.pool
    vmap = VolumeMap(p, p.volume(name))
    seen: set[int] = set()
    for piece in vmap.resolve(start, vmap.size - start):
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


def test_zero_keeping_the_allocation_of_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    _dirty_file(path, 16 * MiB, seed=7)
    before = os.stat(path)
    with FileDevice(str(path)) as dev:
        assert dev.zero(4 * MiB, 8 * MiB + 512, keep_allocation=True) == "zero-range"
    assert os.stat(path).st_blocks == before.st_blocks  # still allocated
    assert path.read_bytes()[4 * MiB - 1:12 * MiB + 513] == (
        random.Random(7).randbytes(MiB)[-1:] + bytes(8 * MiB + 512)
        + random.Random(7).randbytes(MiB)[512:513])


def _loop_zero(tmp_path: Path, keep_allocation: bool) -> tuple[str, bytes, bytes, bytes]:
    """Zero bytes 4M-512 .. 12M+512 of a dirty file through a loop device over it."""
    require("losetup")
    path = tmp_path / "f"
    _dirty_file(path, 16 * MiB, seed=8)
    start, length = 4 * MiB - 512, 8 * MiB + 1024  # edges not on 4 KiB: written
    with loop_device(str(path)) as loop:
        with FileDevice(loop) as dev:
            assert dev.is_block
            how = dev.zero(start, length, keep_allocation=keep_allocation)
            dev.flush()
        fd = os.open(loop, os.O_RDONLY)
        try:
            zeroed = os.pread(fd, length, start)
            edge = os.pread(fd, MiB - 512, 3 * MiB)
        finally:
            os.close(fd)
    assert path.read_bytes()[start:start + length] == bytes(length)
    return how, zeroed, edge, random.Random(8).randbytes(MiB)[:MiB - 512]


@pytest.mark.slow
def test_zero_unmaps_through_a_loop_device(tmp_path: Path) -> None:
    how, zeroed, edge, want = _loop_zero(tmp_path, keep_allocation=False)
    assert how == "punch-hole"  # WRITE_ZEROES that may unmap: a hole in the file
    assert zeroed == bytes(len(zeroed)) and edge == want


@pytest.mark.slow
def test_zero_keeping_the_allocation_uses_blkzeroout_on_a_loop_device(tmp_path: Path) -> None:
    how, zeroed, edge, want = _loop_zero(tmp_path, keep_allocation=True)
    assert how == "zeroout"
    assert zeroed == bytes(len(zeroed)) and edge == want


def test_zero_writes_zeros_when_the_device_refuses(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    _dirty_file(path, 4 * MiB, seed=9)

    def refuse(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setitem(filedev.WAYS, "punch-hole", refuse)
    with FileDevice(str(path)) as dev:
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


def assert_reads_zero(pool: TestPool, name: str, start: int = 0, end: int | None = None
                      ) -> None:
    """Every leg of every piece of volume bytes [start, end) holds zeros on its device."""
    for i, legs in enumerate(_leg_bytes(pool, name, start, end)):
        for leg in legs:
            assert leg == bytes(len(leg)), f"piece {i} does not read as zeros"


def _areas(pool: TestPool, name: str) -> set[tuple[str, int]]:
    """(device, first extent) of every area of the volume."""
    with pool.manager() as mgr:
        vol = mgr.show_pool(pool.name).pool.volume(name)
    return {(a.device, a.start) for s in vol.segments for leg in s.areas for a in leg}


def _fill(pool: TestPool, name: str, seed: int) -> bytes:
    """Write a pattern over the whole volume on every leg, straight to the devices."""
    with pool.manager() as mgr:
        shown = mgr.show_pool(pool.name)
    vmap = VolumeMap(shown.pool, shown.pool.volume(name))
    data = random.Random(seed).randbytes(vmap.size)
    fds = {u: os.open(p, os.O_RDWR) for u, p in shown.paths.items()}
    try:
        for piece in vmap.resolve(0, vmap.size):
            for loc in piece.legs:
                os.pwrite(fds[loc.device], data[piece.offset:piece.offset + piece.length],
                          loc.offset)
    finally:
        for fd in fds.values():
            os.fsync(fd)
            os.close(fd)
    return data


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_volume_created_over_a_removed_one_reads_zeros(tmp_path: Path, layout: str) -> None:
    pool = TestPool(tmp_path, device_size=256 * MiB)
    pool.create_volume("old", 32 * MiB, **LAYOUTS[layout])
    _fill(pool, "old", seed=1)
    was = _areas(pool, "old")
    with pool.manager() as mgr:
        mgr.remove_volume(f"{pool.name}/old")
    pool.create_volume("new", 32 * MiB, **LAYOUTS[layout])
    assert _areas(pool, "new") & was, "the new volume should reuse the old one's extents"
    assert_reads_zero(pool, "new")


def test_a_linear_volume_reads_zeros_on_a_dirty_device(tmp_path: Path) -> None:
    pool = _dirty_pool(tmp_path)
    pool.create_volume("l", 8 * MiB)
    assert_reads_zero(pool, "l")


@pytest.mark.parametrize("layout", ["linear", "striped"])
def test_a_grown_volume_reads_zeros_past_its_old_size(tmp_path: Path, layout: str) -> None:
    pool = _dirty_pool(tmp_path, devices=3)
    pool.create_volume("v", 16 * MiB, **LAYOUTS[layout])
    pool.create_volume("l", 8 * MiB)  # so that growing v cannot simply extend in place
    with pool.manager() as mgr:
        mgr.resize_volume("tank/v", 64 * MiB)
    assert_reads_zero(pool, "v", 16 * MiB)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_volume_grown_after_a_shrink_reads_zeros_past_the_shrunk_size(
        tmp_path: Path, layout: str) -> None:
    """Shrinking keeps the last extent whole; growing must not bring its old bytes back."""
    pool = TestPool(tmp_path, device_size=256 * MiB)
    pool.create_volume("v", 32 * MiB, **LAYOUTS[layout])
    data = _fill(pool, "v", seed=2)
    cut = 9 * MiB + 512  # inside an extent, not on a block
    with pool.manager() as mgr:
        mgr.resize_volume("tank/v", cut, allow_shrink=True)
        mgr.resize_volume("tank/v", 32 * MiB)
    kept = _leg_bytes(pool, "v", 0, cut)
    assert all(b"".join(legs[i] for legs in kept) == data[:cut] for i in range(len(kept[0])))
    assert_reads_zero(pool, "v", cut)
    if layout == "mirrored":  # the regrown whole blocks read as zero blocks
        assert _entries(pool, "v", 9 * MiB + 4096) == {checksums.ZERO_CRC}


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


def _write_through(path: str, size: int, seed: int) -> bytes:
    """Write a pattern over a volume file of the mount (buffered: the caches hold it)."""
    data = random.Random(seed).randbytes(size)
    with open(path, "r+b") as f:
        f.write(data)
    return data


def _read_through(path: str, start: int = 0, end: int | None = None) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read() if end is None else f.read(end - start)


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_in_a_node_a_volume_created_over_a_removed_one_reads_zeros(
        tmp_path: Path, layout: str) -> None:
    pool = TestPool(tmp_path, device_size=256 * MiB)
    spec = {"linear": [], "striped": ["--stripes", "2", "--stripe-size", "64K"],
            "mirrored": ["--mirrors", "2"]}[layout]
    with mounted(pool):
        pool.vv("volume", "create", "tank/old", "--size", "32M", *spec)
        _write_through(pool.volume_path("old"), 32 * MiB, seed=3)
        pool.vv("volume", "remove", "tank/old")
        pool.vv("volume", "create", "tank/new", "--size", "32M", *spec)
        assert _read_through(pool.volume_path("new")) == bytes(32 * MiB)
    assert_reads_zero(pool, "new")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["linear", "striped"])
def test_in_a_node_a_grown_volume_reads_zeros_past_its_old_size(
        tmp_path: Path, layout: str) -> None:
    pool = TestPool(tmp_path, device_size=256 * MiB)
    spec = {"linear": [], "striped": ["--stripes", "2", "--stripe-size", "64K"]}[layout]
    with mounted(pool):
        pool.vv("volume", "create", "tank/old", "--size", "64M", *spec)
        _write_through(pool.volume_path("old"), 64 * MiB, seed=4)
        pool.vv("volume", "create", "tank/v", "--size", "8M", *spec)
        pool.vv("volume", "remove", "tank/old")
        pool.vv("volume", "resize", "tank/v", "--size", "64M")
        assert os.path.getsize(pool.volume_path("v")) == 64 * MiB
        assert _read_through(pool.volume_path("v"), 8 * MiB) == bytes(56 * MiB)


@pytest.mark.slow
def test_in_a_node_a_volume_grown_after_a_shrink_reads_zeros(tmp_path: Path) -> None:
    pool = TestPool(tmp_path, device_size=256 * MiB)
    with mounted(pool):
        pool.vv("volume", "create", "tank/v", "--size", "16M")
        data = _write_through(pool.volume_path("v"), 16 * MiB, seed=5)
        pool.vv("volume", "resize", "tank/v", "--size", "5M", "--yes")
        pool.vv("volume", "resize", "tank/v", "--size", "16M")
        got = _read_through(pool.volume_path("v"))
    assert got[:5 * MiB] == data[:5 * MiB]
    assert got[5 * MiB:] == bytes(11 * MiB)
