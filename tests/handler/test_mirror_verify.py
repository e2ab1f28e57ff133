"""Verified reads of mirrored volumes on fakes: a block that fails its checksum is healed.

The rig of :mod:`.test_mirror_paths` with checksum regions, the node's
write guard and checksum store (``make_rig(checksums=True)``): the objects
under test are the real :class:`~vvfs.data.volio.VolumeIO`,
:class:`~vvfs.data.mirror.PoolMirror` and
:class:`~vvfs.data.guard.PoolGuard`; rot is a bit flipped on a leg's
:class:`~vvfs.testing.faultdev.MemoryDevice`, behind the mirror's back.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

import pytest
import trio

from metadata import checksums as csum
from metadata import dirtylog
from metadata.blockdev import DeviceIOError
from metadata.model import DeviceUUID
from vvfs.data.checksums import ChecksumStore

from .test_mirror_paths import POOL, SIZE, E, KiB4, Rig, make_rig

DATA = 64 * 1024
#: the rotted byte: inside block 5 of the volume
ROT = 5 * KiB4 + 100
BLOCK5 = 5 * KiB4
POLICIES = ("primary", "balanced", "first")


def _rot(r: Rig, m: int, offset: int = ROT, bit: int = 3) -> None:
    """Flip one bit of leg *m*'s copy of volume byte *offset*, on the media."""
    loc = r.leg(m, offset)
    r.mems[loc.device].flip_bit(loc.offset, bit)


def _entry_offset(r: Rig, m: int, offset: int) -> int:
    loc = r.leg(m, offset)
    dev = next(d for d in r.pool.devices if d.uuid == loc.device)
    return csum.entry_offset(dev, E, loc.offset)


def _entry_on_media(r: Rig, m: int, offset: int) -> int:
    at = _entry_offset(r, m, offset)
    return struct.unpack("<I", r.mems[r.leg(m, offset).device].pread(4, at))[0]


def _data_writes(r: Rig, after: int) -> list[tuple[str, int, int]]:
    """The recorded writes of data extents (not of checksum regions, not of logs)."""
    regions = {d.name: csum.region(d, E)[0] for d in r.pool.devices}  # type: ignore[index]
    return [(n, at, k) for n, at, k in r.data_writes(after=after) if at < regions[n]]


def _fresh_store(r: Rig) -> None:
    """A new checksum store with an empty cache (as after a restart of the node)."""
    assert r.guard is not None
    r.guard.store = r.pm.checksums = ChecksumStore(r.pool, r.pm.devices)


async def _rotted(policy: str, spawn: Callable[..., None] | None = None) -> tuple[Rig, bytes]:
    """A rig whose volume holds DATA bytes at 0, with byte ROT rotted on leg 0.

    With ``first``, leg 1's reads are slowed down so that leg 0 wins the race.
    """
    r = await make_rig(policy, spawn, checksums=True)
    data = os.urandom(DATA)
    await r.vio.write(0, data)
    _rot(r, 0)
    if policy == "first":
        loc = r.leg(1)
        r.faults[loc.device].delay(0.3, ops=("read",), start=loc.offset, end=loc.offset + SIZE)
    return r, data


async def _read_twice(policy: str) -> tuple[Rig, bytes, list[bytes]]:
    """Read the data twice (``balanced`` takes each leg once) from a rig with rot on leg 0."""
    async with trio.open_nursery() as nursery:
        r, data = await _rotted(policy, nursery.start_soon)
        got = [bytes(await r.vio.read(0, DATA)) for _ in range(2)]
    return r, data, got


def _repaired_events(r: Rig) -> list[tuple[str, ...]]:
    return [e for e in r.events if e[0] == "checksum-repaired"]


# ---------------------------------------------------------------------------
# one leg rotted


@pytest.mark.parametrize("policy", POLICIES)
def test_a_block_rotted_on_one_leg_reads_the_right_bytes(policy: str) -> None:
    _r, data, got = trio.run(_read_twice, policy)
    assert got == [data, data]


@pytest.mark.parametrize("policy", POLICIES)
def test_a_block_rotted_on_one_leg_is_repaired_on_that_leg(policy: str) -> None:
    r, data, _got = trio.run(_read_twice, policy)
    assert r.on_leg(0, BLOCK5, KiB4) == data[BLOCK5:BLOCK5 + KiB4]


@pytest.mark.parametrize("policy", POLICIES)
def test_a_repair_is_an_event_naming_the_leg_its_device_and_the_offsets(policy: str) -> None:
    r, _data, _got = trio.run(_read_twice, policy)
    loc = r.leg(0, BLOCK5)
    [(_kind, severity, obj, message)] = _repaired_events(r)
    assert (severity, obj) == ("warning", "tank/m")
    assert (f"leg 0 on device {r.pm.name_of(loc.device)}" in message
            and f"volume byte {BLOCK5} (4096 bytes, device byte {loc.offset})" in message
            and "rewritten from leg 1" in message), message


def test_a_repair_is_counted_in_the_mirror_statistics() -> None:
    r, _data, _got = trio.run(_read_twice, "primary")
    stats = r.pm.statistics()
    assert (stats["checksum_repaired"], stats["checksum_errors"]) == (1, 0), stats


def test_a_read_of_part_of_a_rotted_block_returns_the_right_bytes() -> None:
    async def main() -> tuple[bytes, bytes]:
        r, data = await _rotted("primary")
        return bytes(await r.vio.read(ROT - 10, 20)), data[ROT - 10:ROT + 10]

    got, want = trio.run(main)
    assert got == want


def test_a_wrong_entry_where_the_legs_agree_is_rewritten_and_the_data_left_alone() -> None:
    async def main() -> tuple[Rig, bytes, int, int]:
        r = await make_rig("primary", checksums=True)
        data = os.urandom(DATA)
        await r.vio.write(0, data)
        good = _entry_on_media(r, 0, BLOCK5)
        r.mems[r.leg(0).device].flip_bit(_entry_offset(r, 0, BLOCK5), 0)
        _fresh_store(r)
        before = r.recorder.clock
        got = bytes(await r.vio.read(0, DATA))
        assert _data_writes(r, before) == [], "the data was rewritten"
        return r, got == data, good, _entry_on_media(r, 0, BLOCK5)

    _r, same, good, now = trio.run(main)
    assert same and now == good


def test_a_repair_write_that_fails_fails_the_leg_and_the_read_succeeds() -> None:
    async def main() -> tuple[Rig, bool]:
        r, data = await _rotted("primary")
        loc = r.leg(0)
        r.faults[loc.device].fail_range(loc.offset, loc.offset + SIZE, ops=("write",))
        same = bytes(await r.vio.read(0, DATA)) == data
        return r, same

    r, same = trio.run(main)
    u0, u1 = r.device(0), r.device(1)
    assert same
    assert u0 in r.pm.failed and r.pm.failed[DeviceUUID(u0)].recorded.is_set()
    assert dirtylog.read_log(r.mems[u1], r.geo(1), POOL, u1).stale == {u0}


# ---------------------------------------------------------------------------
# no leg matches


async def _rotted_everywhere(same: bool) -> tuple[Rig, DeviceIOError | None, int]:
    """Rot byte ROT on both legs (the same bit if *same*); read; (rig, error, writes after).

    The writes counted are all of them: data, checksum entries and logs.
    """
    r, _data = await _rotted("balanced")
    _rot(r, 1, bit=3 if same else 5)
    before = r.recorder.clock
    error = None
    try:
        await r.vio.read(0, DATA)
    except DeviceIOError as exc:
        error = exc
    return r, error, len([w for _key, w in r.recorder.writes() if w.seq > before])


def test_a_block_rotted_on_every_leg_fails_with_eio() -> None:
    _r, exc, _writes = trio.run(_rotted_everywhere, False)
    assert exc is not None and exc.errno == errno.EIO


def test_the_same_rot_on_every_leg_fails_with_eio() -> None:
    _r, exc, _writes = trio.run(_rotted_everywhere, True)
    assert exc is not None and exc.errno == errno.EIO


def test_a_block_that_no_leg_holds_right_is_an_error_event() -> None:
    r, _exc, _writes = trio.run(_rotted_everywhere, False)
    [(_kind, severity, obj, message)] = [e for e in r.events if e[0] == "checksum-error"]
    assert (severity, obj) == ("error", "tank/m")
    assert f"volume bytes {BLOCK5}+4096" in message and "d0" in message and "d1" in message


def test_nothing_is_written_when_no_leg_matches() -> None:
    r, _exc, writes = trio.run(_rotted_everywhere, False)
    assert writes == 0 and _repaired_events(r) == []
    assert r.pm.statistics()["checksum_errors"] == 1


# ---------------------------------------------------------------------------
# reads racing writes, and partial writes


def test_a_read_racing_a_write_of_the_same_block_never_repairs_with_stale_data() -> None:
    """The read finds the new bytes on leg 0 under the old entries, and leg 1 still old.

    The write covers two blocks whose entries lie in different pages, none
    of them cached: the write's store reads the four pages in (slowly) before
    it changes any entry, and leg 1's data write is slow.  The read of the
    first block meanwhile sees leg 0's new bytes, the old entry of leg 0 and,
    a page later, the old entry of leg 1, which leg 1's old bytes match: a
    read that healed without waiting for the write would copy them over leg 0.
    """
    at = (1024 - 1) * KiB4  # the last block of a page of entries, and the next
    old, new = os.urandom(2 * KiB4), os.urandom(2 * KiB4)

    async def main() -> tuple[Rig, bytes]:
        r = await make_rig("primary", checksums=True)
        await r.vio.write(at, old)
        _fresh_store(r)  # the entries' pages must be read in again, slowly:
        for d in r.pool.devices:
            start, length = csum.region(d, E)  # type: ignore[misc]
            r.faults[d.uuid].delay(0.25, ops=("read",), start=start, end=start + length)
        loc1 = r.leg(1)
        r.faults[loc1.device].delay(1.3, ops=("write",), start=loc1.offset,
                                    end=loc1.offset + SIZE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.vio.write, at, new)
            await trio.sleep(0.1)
            got = bytes(await r.vio.read(at, KiB4))
        return r, got

    r, got = trio.run(main)
    assert got in (old[:KiB4], new[:KiB4])
    assert r.on_leg(0, at, 2 * KiB4) == new and r.on_leg(1, at, 2 * KiB4) == new
    assert _repaired_events(r) == [] and r.pm.statistics()["checksum_errors"] == 0


def test_a_partial_write_into_a_rotted_block_keeps_its_other_bytes_right() -> None:
    async def main() -> tuple[Rig, bytes]:
        r, data = await _rotted("balanced")
        patch = b"\xee" * 10
        await r.vio.write(BLOCK5 + 2000, patch)
        want = bytearray(data[BLOCK5:BLOCK5 + KiB4])
        want[2000:2010] = patch
        return r, bytes(want)

    r, want = trio.run(main)
    assert r.on_leg(0, BLOCK5, KiB4) == want and r.on_leg(1, BLOCK5, KiB4) == want
