"""The dirty log: its on-media format, the in-node log, the gate, and mirror geometry.

Format tests run on :class:`vvfs.testing.faultdev.MemoryDevice`; the in-node
:class:`vvfs.data.mirror.DirtyLog` runs on a real file through
:class:`vvfs.io.devio.DataDevice`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from mapper import VolumeSpec, create_volume
from mapper.mirrors import MirrorIndex, replace_device
from mapper.move import plan_move
from mapper.placement import PlacementError
from metadata import dirtylog
from metadata.dirtylog import BITS_PER_BLOCK, BLOCK
from metadata.model import Device, DeviceUUID, Pool, PoolUUID, new_uuid
from vvfs.data.mirror import RegionGate, load_log
from vvfs.io.devio import DataDevice, io_limiter
from vvfs.testing.faultdev import FaultyDevice, MemoryDevice

MiB = 1 << 20
E = 4 * MiB
POOL = new_uuid()


def _device(extents: int = 256, name: str = "d0") -> Device:
    d = Device(uuid=DeviceUUID(new_uuid()), name=name, size=(extents + 2) * E,
               data_start=MiB, extent_count=extents)
    dirtylog.carve(d, E)
    return d


def _fresh(d: Device) -> tuple[MemoryDevice, dirtylog.LogGeometry]:
    mem = MemoryDevice(d.size + 2 * E, name=d.name)
    dirtylog.init_log(mem, d, E, POOL)
    geo = dirtylog.geometry(d, E)
    assert geo is not None
    return mem, geo


# ---------------------------------------------------------------------------
# geometry


def test_carve_takes_the_last_extent_and_covers_the_rest() -> None:
    d = _device(256)
    assert (d.extent_count, d.log_extents, d.log_region) == (255, 1, dirtylog.MIN_REGION)
    geo = dirtylog.geometry(d, E)
    assert geo is not None
    assert geo.offset == d.data_start + 255 * E
    assert geo.regions * geo.region >= d.extent_count * E
    assert geo.blocks == -(-geo.regions // BITS_PER_BLOCK)


def test_a_huge_device_gets_bigger_regions_never_above_an_extent() -> None:
    n, region = dirtylog.plan(1 << 24, E)  # 64 TiB of extents
    assert n >= 1 and dirtylog.MIN_REGION < region <= E
    assert -(-(1 << 24) * E // region) <= (n * E // BLOCK - 1) * BITS_PER_BLOCK


def test_a_tiny_device_gets_no_log() -> None:
    assert dirtylog.plan(dirtylog.MIN_EXTENTS - 1, E) == (0, 0)
    d = _device(2)
    assert d.log_extents == 0 and dirtylog.geometry(d, E) is None


def test_regions_of_a_range() -> None:
    geo = dirtylog.geometry(_device(), E)
    assert geo is not None
    r = geo.region
    assert list(geo.regions_of(geo.data_start, 1)) == [0]
    assert list(geo.regions_of(geo.data_start + r - 1, 2)) == [0, 1]
    assert list(geo.regions_of(geo.data_start + 3 * r, 2 * r)) == [3, 4]


# ---------------------------------------------------------------------------
# format: set, clear, corrupt


def test_a_fresh_log_is_clean() -> None:
    d = _device()
    mem, geo = _fresh(d)
    image = dirtylog.read_log(mem, geo, POOL, d.uuid)
    assert image.problems == [] and image.dirty() == [] and image.stale == set()


def test_set_bits_round_trip_and_clear() -> None:
    d = _device()
    mem, geo = _fresh(d)
    image = dirtylog.read_log(mem, geo, POOL, d.uuid)
    for r in (0, 7, 8, geo.regions - 1):
        dirtylog.set_bit(image.bits, r)
    image.stale = {"11111111-1111-1111-1111-111111111111"}
    dirtylog.write_log(mem, image, POOL, d.uuid)
    back = dirtylog.read_log(mem, geo, POOL, d.uuid)
    assert back.dirty() == [0, 7, 8, geo.regions - 1]
    assert back.stale == image.stale
    dirtylog.clear_bit(back.bits, 7)
    dirtylog.write_log(mem, back, POOL, d.uuid)
    assert dirtylog.read_log(mem, geo, POOL, d.uuid).dirty() == [0, 8, geo.regions - 1]


def test_the_bytes_are_where_the_man_page_says() -> None:
    d = _device()
    mem, geo = _fresh(d)
    image = dirtylog.read_log(mem, geo, POOL, d.uuid)
    dirtylog.set_bit(image.bits, 9)
    dirtylog.write_log(mem, image, POOL, d.uuid)
    header = mem.pread(BLOCK, geo.offset)
    assert header[:8] == b"VVFSDLOG"
    block = mem.pread(BLOCK, geo.offset + BLOCK)
    assert block[:8] == b"VVFSDBMP"
    assert int.from_bytes(block[12:16], "little") == 1
    assert block[64 + 1] == 0b10  # region 9: byte 1, bit 1


def _corrupt(mem: MemoryDevice, offset: int) -> None:
    """Flip one bit at *offset* (guaranteed to change the bytes)."""
    mem.flip_bit(offset, 3)


def test_a_corrupt_bitmap_block_counts_as_all_dirty() -> None:
    d = _device(BITS_PER_BLOCK * dirtylog.MIN_REGION // E + 64)  # two bitmap blocks
    mem, geo = _fresh(d)
    assert geo.blocks >= 2
    _corrupt(mem, geo.block_offset(1) + 100)
    image = dirtylog.read_log(mem, geo, POOL, d.uuid)
    assert len(image.problems) == 1 and "block 1" in str(image.problems[0])
    dirty = image.dirty()
    assert dirty == list(range(min(BITS_PER_BLOCK, geo.regions)))  # block 1's regions only


def test_a_corrupt_header_makes_every_region_dirty() -> None:
    d = _device()
    mem, geo = _fresh(d)
    _corrupt(mem, geo.offset + 60)
    image = dirtylog.read_log(mem, geo, POOL, d.uuid)
    assert image.problems and image.dirty() == list(range(geo.regions))


def test_a_block_of_another_device_counts_as_all_dirty() -> None:
    d, other = _device(), _device(name="d1")
    mem, geo = _fresh(d)
    mem.pwrite(dirtylog.pack_block(other.uuid, 1, 5, bytes(10)), geo.block_offset(1))
    image = dirtylog.read_log(mem, geo, POOL, d.uuid)
    assert "belongs to" in str(image.problems[0]) and len(image.dirty()) == geo.regions


def test_an_unreadable_log_is_all_dirty() -> None:
    d = _device()
    mem, geo = _fresh(d)
    bad = FaultyDevice(mem).fail_range(geo.offset, geo.offset + BLOCK, ops=("read",))
    image = dirtylog.read_log(bad, geo, POOL, d.uuid)
    assert image.problems and len(image.dirty()) == geo.regions


def test_a_never_written_log_is_all_dirty() -> None:
    d = _device()
    geo = dirtylog.geometry(d, E)
    assert geo is not None
    image = dirtylog.read_log(MemoryDevice(d.size + 2 * E), geo, POOL, d.uuid)
    assert len(image.dirty()) == geo.regions


# ---------------------------------------------------------------------------
# the in-node log: batching and durability


def _file_log(tmp_path: Path) -> tuple[Device, str]:
    d = _device(2048)
    path = str(tmp_path / "dev.img")
    with open(path, "wb") as f:
        f.truncate(d.size + 2 * E)
    from vvfs.io.filedev import FileDevice

    with FileDevice(path) as f:
        dirtylog.init_log(f, d, E, POOL)
    return d, path


def test_marks_are_on_media_when_they_return_and_batch(tmp_path: Path) -> None:
    d, path = _file_log(tmp_path)

    async def main() -> tuple[int, int, list[int]]:
        dev = DataDevice(path, d.uuid, io_limiter(4))
        geo = dirtylog.geometry(d, E)
        assert geo is not None
        log = await load_log(dev, geo, POOL)
        async with trio.open_nursery() as nursery:
            for r in range(50):
                nursery.start_soon(log.mark, [r, r + 1000])
        first = log.stats.syncs
        await log.mark([3, 1003])  # set already and on media: no write at all
        log.clear(range(10))
        await log.sync()
        dev.close()
        return first, log.stats.syncs, log.stats.marks_fast

    first, total, fast = trio.run(main)
    assert first < 10, f"50 concurrent marks took {first} log writes"
    assert total == first + 1 and fast == 1
    from vvfs.io.filedev import FileDevice

    geo = dirtylog.geometry(d, E)
    assert geo is not None
    with FileDevice(path, readonly=True) as f:
        image = dirtylog.read_log(f, geo, POOL, d.uuid)
    assert image.dirty() == list(range(10, 50)) + list(range(1000, 1050))


def test_stale_devices_survive_in_the_header(tmp_path: Path) -> None:
    d, path = _file_log(tmp_path)
    gone = new_uuid()

    async def main() -> set[str]:
        dev = DataDevice(path, d.uuid, io_limiter(2))
        geo = dirtylog.geometry(d, E)
        assert geo is not None
        await (await load_log(dev, geo, POOL)).set_stale(add=[gone])
        again = await load_log(dev, geo, POOL)
        dev.close()
        return again.stale

    assert trio.run(main) == {gone}


def test_a_damaged_block_is_rewritten_as_all_dirty_at_the_first_sync(tmp_path: Path) -> None:
    d, path = _file_log(tmp_path)
    geo = dirtylog.geometry(d, E)
    assert geo is not None
    with open(path, "r+b") as f:
        f.seek(geo.block_offset(1) + 200)
        f.write(b"\xff")

    async def main() -> list[int]:
        dev = DataDevice(path, d.uuid, io_limiter(2))
        log = await load_log(dev, geo, POOL)
        await log.sync()
        again = await load_log(dev, geo, POOL)
        dev.close()
        assert not again.problems
        return sorted(again.set_regions)

    assert trio.run(main) == list(range(geo.regions))


# ---------------------------------------------------------------------------
# the gate


def test_a_held_region_waits_for_writes_and_holds_new_ones() -> None:
    async def main() -> list[str]:
        gate, order = RegionGate(), []
        await gate.enter({("a", 1)})

        async def resync() -> None:
            async with gate.holding({("a", 1)}):
                order.append("resync")
                await trio.sleep(0.05)
            order.append("resync done")

        async def writer() -> None:
            await trio.sleep(0.01)
            await gate.enter({("a", 1)})
            order.append("write")
            gate.leave({("a", 1)})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(resync)
            nursery.start_soon(writer)
            await trio.sleep(0.02)
            order.append("first write ends")
            gate.leave({("a", 1)})
        return order

    assert trio.run(main) == ["first write ends", "resync", "resync done", "write"]


# ---------------------------------------------------------------------------
# mirror geometry and replace (mapper.mirrors)


def _pool(n: int = 3) -> Pool:
    p = Pool(uuid=PoolUUID(POOL), name="tank", extent_size=E)
    p.devices = [_device(64, f"d{i}") for i in range(n)]
    return p


def test_spans_give_the_same_bytes_on_every_leg() -> None:
    p = create_volume(_pool(), VolumeSpec(name="m", size=16 * MiB, mirrors=2))
    s = p.volumes[0].segments[0]
    devs = {d.uuid: d for d in p.devices}
    a, b = s.areas[0][0], s.areas[1][0]
    base_a = devs[a.device].data_start + a.start * E
    base_b = devs[b.device].data_start + b.start * E
    (span,) = MirrorIndex(p).spans(a.device, base_a + MiB, 4096)
    assert span.leg == 0 and span.length == 4096
    assert [tuple(loc) for loc in span.legs] == [(a.device, base_a + MiB), (b.device, base_b + MiB)]
    assert MirrorIndex(p).spans(a.device, base_a + 16 * MiB, 4096) == []


def test_replace_moves_every_area_and_forgets_the_old_device() -> None:
    p = create_volume(_pool(), VolumeSpec(name="m", size=16 * MiB, mirrors=2))
    old = p.volumes[0].segments[0].areas[1][0].device
    new = _device(64, "d9")
    q = replace_device(p, old, new)
    assert old not in {d.uuid for d in q.devices}
    assert q.device(new.uuid).state == "failed"
    assert all(a.device != old for s in q.volumes[0].segments for leg in s.areas for a in leg)


def test_replace_refuses_data_without_another_copy() -> None:
    p = create_volume(_pool(), VolumeSpec(name="lin", size=16 * MiB))
    old = p.volumes[0].segments[0].areas[0][0].device
    with pytest.raises(PlacementError, match="no other working copy"):
        replace_device(p, old, _device(64, "d9"))


def test_replace_refuses_a_device_that_a_move_reads_or_writes() -> None:
    p = create_volume(_pool(4), VolumeSpec(name="m", size=16 * MiB, mirrors=2))
    legs = [leg[0].device for leg in p.volumes[0].segments[0].areas]
    names = {d.uuid: d.name for d in p.devices}
    spare = next(d.name for d in p.devices if d.uuid not in legs)
    moving = plan_move(p, "m", spare, names[legs[0]])
    for key in (legs[0], spare):
        with pytest.raises(PlacementError, match="takes part in move .*abort the move first"):
            replace_device(moving, key, _device(64, "d9"))
    # the other leg is no part of the move: it can be replaced (the move then waits
    # for the rebuild, see vvfs/node/jobs.py)
    q = replace_device(moving, legs[1], _device(64, "d9"))
    assert q.operations == moving.operations


# ---------------------------------------------------------------------------
# man/vvfs.5 says the same as the code


@pytest.mark.parametrize(
    ("st", "magic", "tail"),
    [(dirtylog.HEADER, dirtylog.HEADER_MAGIC,
      [dirtylog.STALE_OFFSET, dirtylog.STALE_OFFSET + 16 * dirtylog.MAX_STALE, BLOCK - 32]),
     (dirtylog.BLOCK_HEADER, dirtylog.BLOCK_MAGIC,
      [dirtylog.BLOCK_HEADER.size, dirtylog.BITMAP_OFFSET, BLOCK - 32])],
    ids=["header", "bitmap-block"],
)
def test_vvfs5_dirty_log_tables_match_the_structs(st: object, magic: bytes,
                                                   tail: list[int]) -> None:
    from .test_manpages import MAN, field_offsets, table_offsets

    assert table_offsets(MAN / "vvfs.5", magic) == field_offsets(st) + tail  # type: ignore[arg-type]
