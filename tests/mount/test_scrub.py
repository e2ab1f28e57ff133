"""Scrub through a real mount: a bit flip in one leg is found, named and repaired.

Also the pure block verdicts of ``vvfs.data.checksums.judge`` and the checksum region
that a new pool's devices get.
"""

from __future__ import annotations

import os

import pytest

from mapper.layout import VolumeMap
from vvfs.data import checksums
from vvfs.data.checksums import judge

from ..support.mountutil import MiB, TestPool, fio, mounted, require
from ..support.util import flip

VOLUME = 32 * MiB


# ---------------------------------------------------------------------------
# verdicts (pure)


def _blk(fill: int) -> bytes:
    return bytes([fill]) * 4096


def test_judge_clean_block() -> None:
    v = judge([_blk(1), _blk(1)], [checksums.crc(_blk(1))] * 2)
    assert v.bad_data == () and v.bad_entry == ()


def test_judge_picks_the_leg_that_matches_the_checksum() -> None:
    good = checksums.crc(_blk(1))
    v = judge([_blk(2), _blk(1)], [good, good])
    assert (v.right, v.bad_data, v.bad_entry) == (1, (0,), ())


def test_judge_fixes_a_stale_entry_when_legs_agree() -> None:
    v = judge([_blk(1), _blk(1)], [checksums.crc(_blk(1)), 12345])
    assert (v.bad_data, v.bad_entry) == ((), (1,))


def test_judge_takes_leg_0_when_no_leg_matches() -> None:
    v = judge([_blk(1), _blk(2)], [7, 7])
    assert (v.right, v.bad_data) == (0, (1,))
    assert v.bad_entry == (0, 1) and "took leg 0" in v.reason


def test_judge_unreadable_leg_is_repaired_from_the_other() -> None:
    v = judge([None, _blk(1)], [None, checksums.crc(_blk(1))])
    assert (v.right, v.bad_data) == (1, (0,))


def test_new_devices_get_a_checksum_region(fresh_pool: TestPool) -> None:
    with fresh_pool.manager() as mgr:
        pool = mgr.show_pool(fresh_pool.name).pool
    assert "block-checksums" in pool.features
    for d in pool.devices:
        assert d.csum_extents == checksums.region_extents(d.extent_count + d.csum_extents) > 0
        _start, length = checksums.region(d, pool.extent_size)  # type: ignore[misc]
        assert length * 1024 >= d.extent_count * pool.extent_size


# ---------------------------------------------------------------------------
# through a mount


def _legs(pool: TestPool, name: str) -> tuple[VolumeMap, dict[str, str], dict[str, str]]:
    with pool.manager() as mgr:
        shown = mgr.show_pool(pool.name)
    names = {d.uuid: d.name for d in shown.pool.devices}
    return VolumeMap(shown.pool, shown.pool.volume(name)), shown.paths, names



def _legs_identical(pool: TestPool, name: str) -> bool:
    vmap, paths, _names = _legs(pool, name)
    fds = {u: os.open(p, os.O_RDONLY) for u, p in paths.items()}
    try:
        for piece in vmap.resolve(0, vmap.size):
            datas = {os.pread(fds[loc.device], piece.length, loc.offset) for loc in piece.legs}
            if len(datas) != 1:
                return False
        return True
    finally:
        for fd in fds.values():
            os.close(fd)


@pytest.mark.slow
def test_scrub_finds_and_repairs_a_bit_flip(fresh_pool: TestPool) -> None:
    require("fio")
    pool = fresh_pool
    pool.create_volume("m", VOLUME, mirrors=2)
    with mounted(pool) as node:
        path = pool.volume_path("m")
        fio("--name=fill", f"--filename={path}", "--rw=write", "--bs=1M", f"--size={VOLUME}",
            "--direct=1", "--ioengine=libaio", "--iodepth=4", "--verify=crc32c",
            "--do_verify=1", "--verify_fatal=1")
        clean = pool.vv("volume", "scrub", "tank/m")
        assert "(clean)" in clean.stdout, clean.stdout

        vmap, paths, names = _legs(pool, "m")
        target = 5 * MiB + 12345
        [piece] = vmap.resolve(target, 1)
        bad = piece.legs[1]
        flip(paths[bad.device], bad.offset, 0x10)
        block = target - target % 4096
        dev_block = bad.offset - bad.offset % 4096

        found = pool.vv("volume", "scrub", "tank/m", check=False)
        assert found.returncode == 1, found.stdout + found.stderr
        expect = (f"m: leg 1 on {names[bad.device]} ({paths[bad.device]}): data differs at"
                  f" volume byte {block} (4096 bytes, device byte {dev_block}); right copy:"
                  " leg 0 (leg 0 matches the stored checksum) -- not repaired")
        assert expect in found.stdout, found.stdout
        assert "1 blocks of data differ" in found.stdout

        fixed = pool.vv("volume", "scrub", "tank/m", "--repair")
        assert "-- repaired" in fixed.stdout and "1 repaired" in fixed.stdout, fixed.stdout
        node.umount()
    assert _legs_identical(pool, "m")
    with mounted(pool):
        again = pool.vv("volume", "scrub", "tank/m")
        assert "(clean)" in again.stdout, again.stdout
        fio("--name=fill", f"--filename={pool.volume_path('m')}", "--rw=read", "--bs=1M",
            f"--size={VOLUME}", "--direct=1", "--ioengine=libaio", "--iodepth=4",
            "--verify=crc32c", "--verify_only=1", "--verify_fatal=1")


@pytest.mark.slow
def test_scrub_fixes_a_damaged_checksum_entry(fresh_pool: TestPool) -> None:
    """A flipped bit in a checksum entry is a checksum finding, not a data error."""
    pool = fresh_pool
    pool.create_volume("m", 8 * MiB, mirrors=2)
    with mounted(pool):
        with open(pool.volume_path("m"), "r+b") as f:
            f.write(os.urandom(1 * MiB))
        vmap, paths, _names = _legs(pool, "m")
        with pool.manager() as mgr:
            shown = mgr.show_pool(pool.name).pool
        loc = vmap.resolve(0, 1)[0].legs[0]
        dev = next(d for d in shown.devices if d.uuid == loc.device)
        flip(paths[loc.device], checksums.entry_offset(dev, shown.extent_size, loc.offset), 0x10)
        found = pool.vv("volume", "scrub", "tank/m", "--repair")
        assert "checksum entry is wrong at volume byte 0" in found.stdout, found.stdout
        assert "0 blocks of data differ, 1 checksum entries wrong" in found.stdout
        again = pool.vv("volume", "scrub", "tank/m")
        assert "(clean)" in again.stdout, again.stdout
