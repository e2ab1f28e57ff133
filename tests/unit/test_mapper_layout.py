"""Tests of mapper.layout: volume bytes -> device bytes.

The property tests compare ``VolumeMap.resolve`` with a brute-force
reference that maps every 512-byte sector on its own, on small pools built
by the placement code (extents of 64 KiB keep the sector count small).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mapper import (
    FITS,
    Loc,
    Piece,
    PlacementError,
    ResolveError,
    VolumeMap,
    VolumeSpec,
    create_volume,
    remove_volume,
    resize_volume,
)
from metadata.errors import VVError
from metadata.model import Area, Device, DeviceUUID, Pool, Segment, Volume, VolumeUUID

from ..support.pools import mapper_pool

E = 64 * 1024
SECTOR = 512
DEV0, DEV1, DEV2 = (DeviceUUID(f"dev-{i}") for i in range(3))
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_device(i: int, extents: int, data_start: int = 4096, **kw: Any) -> Device:
    return Device(
        uuid=DeviceUUID(f"dev-{i}"),
        name=f"d{i}",
        size=data_start + extents * E,
        data_start=data_start,
        extent_count=extents,
        **kw,
    )


make_pool = functools.partial(mapper_pool, extent_size=E)


def linear(name: str, size: int, *runs: tuple[str, int, int]) -> Volume:
    """A hand-made linear volume: runs of (device uuid, start, count)."""
    segs, pos = [], 0
    for dev, start, count in runs:
        segs.append(Segment(pos, count, 1, 65536, [[Area(DeviceUUID(dev), start)]]))
        pos += count
    return Volume(uuid=VolumeUUID(f"vol-{name}"), name=name, size=size, segments=segs)


# -- strategies -------------------------------------------------------------------

specs = st.builds(
    VolumeSpec,
    name=st.just("x"),
    size=st.integers(1, 16 * E // SECTOR).map(lambda n: n * SECTOR),
    stripes=st.integers(1, 3),
    stripe_size=st.sampled_from([4096, 8192, 65536]),
    mirrors=st.integers(1, 2),
    fit=st.sampled_from(FITS),
)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("create"), specs),
        st.tuples(st.just("create"), specs),
        st.tuples(st.just("create"), specs),
        st.tuples(st.just("remove"), st.integers(0, 7)),
        st.tuples(st.just("grow"), st.integers(0, 7), st.integers(1, 8 * E // SECTOR)),
    ),
    min_size=2,
    max_size=10,
)


@st.composite
def pools(draw: st.DrawFn) -> Pool:
    """A small pool whose volumes were created, grown and removed by placement."""
    n = draw(st.integers(1, 5))
    devices = [
        make_device(
            i,
            draw(st.integers(0, 40)),
            data_start=draw(st.sampled_from([0, 4096, 1 << 20])),
            tier=draw(st.integers(1, 3)),
        )
        for i in range(n)
    ]
    pool = make_pool(*devices)
    for i, op in enumerate(draw(ops)):
        try:
            pool = apply(pool, i, op)
        except PlacementError:
            pass
    return pool


def apply(pool: Pool, i: int, op: tuple[Any, ...]) -> Pool:
    if op[0] == "create":
        return create_volume(pool, dataclasses.replace(op[1], name=f"v{i}"))
    if not pool.volumes:
        return pool
    vol = pool.volumes[op[1] % len(pool.volumes)]
    if op[0] == "remove":
        return remove_volume(pool, vol.name)
    return resize_volume(pool, vol.name, vol.size + op[2] * SECTOR)


def sector_map(pool: Pool, vol: Volume) -> list[tuple[Loc, ...]]:
    """Reference: where each 512-byte sector of *vol* lives, per leg.

    Computed from the segment definition directly, one sector at a time.
    """
    devs = {d.uuid: d for d in pool.devices}
    out = []
    for sector in range(vol.size // SECTOR):
        off = sector * SECTOR
        seg = next(s for s in vol.segments if s.start * E <= off < (s.start + s.length) * E)
        rel = off - seg.start * E
        unit = seg.stripe_size if seg.stripes > 1 else seg.area_length * E
        k, within = divmod(rel, unit)
        row, col = divmod(k, seg.stripes)
        locs = []
        for leg in seg.areas:
            a = leg[col]
            base = devs[a.device].data_start + a.start * E
            locs.append(Loc(a.device, base + row * unit + within))
        out.append(tuple(locs))
    return out


def area_extents(vol: Volume) -> set[tuple[str, int]]:
    return {
        (a.device, a.start + i)
        for s in vol.segments
        for leg in s.areas
        for a in leg
        for i in range(s.area_length)
    }


# -- properties ----------------------------------------------------------------------


@SETTINGS
@given(pools())
def test_every_sector_maps_to_a_distinct_device_byte(pool: Pool) -> None:
    seen: set[Loc] = set()
    for vol in pool.volumes:
        vmap = VolumeMap(pool, vol)
        for sector in range(vol.size // SECTOR):
            pieces = vmap.resolve(sector * SECTOR, SECTOR)
            assert len(pieces) == 1 and pieces[0].length == SECTOR
            legs = pieces[0].legs
            assert len(legs) == vol.mirrors
            assert len({loc.device for loc in legs}) == len(legs)
            for loc in legs:
                assert loc not in seen
                seen.add(loc)


@SETTINGS
@given(pools())
def test_sectors_agree_with_reference_and_cover_the_areas(pool: Pool) -> None:
    devs = {d.uuid: d for d in pool.devices}
    for vol in pool.volumes:
        vmap = VolumeMap(pool, vol)
        ref = sector_map(pool, vol)
        got = [vmap.resolve(i * SECTOR, SECTOR)[0].legs for i in range(len(ref))]
        assert got == ref
        mapped = {
            (loc.device, (loc.offset - devs[loc.device].data_start) // E)
            for legs in got
            for loc in legs
        }
        areas = area_extents(vol)
        assert mapped <= areas
        if vol.size == vol.extents() * E:
            assert mapped == areas


@st.composite
def pool_and_range(draw: st.DrawFn) -> tuple[Pool, Volume, int, int]:
    pool = draw(pools().filter(lambda p: bool(p.volumes)))
    vol = draw(st.sampled_from(pool.volumes))
    sectors = vol.size // SECTOR
    first = draw(st.integers(0, sectors - 1))
    count = draw(st.integers(1, sectors - first))
    return pool, vol, first, count


@SETTINGS
@given(pool_and_range())
def test_resolve_range_matches_sector_reference(args: tuple[Pool, Volume, int, int]) -> None:
    pool, vol, first, count = args
    ref = sector_map(pool, vol)
    pieces = VolumeMap(pool, vol).resolve(first * SECTOR, count * SECTOR)
    pos = first * SECTOR
    for piece in pieces:
        assert piece.offset == pos and piece.length > 0
        for i in range(0, piece.length, SECTOR):
            expect = ref[(piece.offset + i) // SECTOR]
            assert tuple(Loc(loc.device, loc.offset + i) for loc in piece.legs) == expect
        pos += piece.length
    assert pos == (first + count) * SECTOR


@SETTINGS
@given(pool_and_range())
def test_pieces_never_cross_a_stripe_unit(args: tuple[Pool, Volume, int, int]) -> None:
    pool, vol, first, count = args
    for piece in VolumeMap(pool, vol).resolve(first * SECTOR, count * SECTOR):
        seg = next(
            s for s in vol.segments if s.start * E <= piece.offset < (s.start + s.length) * E
        )
        seg_end = (seg.start + seg.length) * E
        if seg.stripes > 1:
            unit_end = (piece.offset // seg.stripe_size + 1) * seg.stripe_size
            assert piece.offset + piece.length <= min(unit_end, seg_end)


# -- examples ------------------------------------------------------------------------


def test_linear_volume_over_one_run_is_one_piece() -> None:
    pool = make_pool(make_device(0, 16, data_start=8192))
    pool.volumes.append(linear("a", 10 * E, ("dev-0", 3, 10)))
    vmap = VolumeMap(pool, pool.volumes[0])
    assert vmap.resolve(5, 10 * E - 5) == [Piece(5, 10 * E - 5, (Loc(DEV0, 8192 + 3 * E + 5),))]


def test_contiguous_linear_segments_merge_into_one_piece() -> None:
    pool = make_pool(make_device(0, 16))
    pool.volumes.append(linear("a", 6 * E, ("dev-0", 2, 2), ("dev-0", 4, 4)))
    assert len(VolumeMap(pool, pool.volumes[0]).resolve(0, 6 * E)) == 1


def test_noncontiguous_segments_split_at_the_boundary() -> None:
    pool = make_pool(make_device(0, 16), make_device(1, 16))
    pool.volumes.append(linear("a", 4 * E, ("dev-0", 0, 2), ("dev-1", 0, 2)))
    pieces = VolumeMap(pool, pool.volumes[0]).resolve(E, 2 * E)
    assert pieces == [
        Piece(E, E, (Loc(DEV0, 4096 + E),)),
        Piece(2 * E, E, (Loc(DEV1, 4096),)),
    ]


def test_striped_units_rotate_over_columns() -> None:
    pool = make_pool(make_device(0, 8, data_start=0), make_device(1, 8, data_start=0))
    seg = Segment(0, 4, 2, 4096, [[Area(DeviceUUID("dev-0"), 1), Area(DeviceUUID("dev-1"), 5)]])
    vol = Volume(
        uuid=VolumeUUID("v"), name="s", size=4 * E, stripes=2, stripe_size=4096, segments=[seg]
    )
    pieces = VolumeMap(pool, vol).resolve(2048, 3 * 4096)
    assert pieces == [
        Piece(2048, 2048, (Loc(DEV0, E + 2048),)),
        Piece(4096, 4096, (Loc(DEV1, 5 * E),)),
        Piece(8192, 4096, (Loc(DEV0, E + 4096),)),
        Piece(12288, 2048, (Loc(DEV1, 5 * E + 4096),)),
    ]


def test_mirrored_piece_has_one_loc_per_leg_in_leg_order() -> None:
    pool = make_pool(make_device(0, 8), make_device(1, 8, data_start=0))
    seg = Segment(0, 2, 1, 65536, [[Area(DeviceUUID("dev-1"), 2)], [Area(DeviceUUID("dev-0"), 0)]])
    vol = Volume(uuid=VolumeUUID("v"), name="m", size=2 * E, mirrors=2, segments=[seg])
    vmap = VolumeMap(pool, vol)
    assert vmap.resolve(100, 10) == [Piece(100, 10, (Loc(DEV1, 2 * E + 100), Loc(DEV0, 4196)))]
    assert vmap.mirrors == 2


def test_map_reports_size_and_devices() -> None:
    pool = make_pool(make_device(0, 8), make_device(1, 8), make_device(2, 8))
    pool.volumes.append(linear("a", 3 * E - 512, ("dev-0", 0, 1), ("dev-2", 0, 2)))
    vmap = VolumeMap(pool, pool.volumes[0])
    assert vmap.size == 3 * E - 512
    assert vmap.devices() == {"dev-0", "dev-2"}


@pytest.mark.parametrize(
    ("offset", "length"), [(-1, 10), (0, 4 * E + 1), (4 * E, 1), (4 * E - 1, 2), (0, -1)]
)
def test_resolve_outside_the_volume_raises(offset: int, length: int) -> None:
    pool = make_pool(make_device(0, 8))
    pool.volumes.append(linear("a", 4 * E, ("dev-0", 0, 4)))
    with pytest.raises(ResolveError) as info:
        VolumeMap(pool, pool.volumes[0]).resolve(offset, length)
    assert isinstance(info.value, ValueError) and isinstance(info.value, VVError)


def test_zero_length_resolves_to_nothing() -> None:
    pool = make_pool(make_device(0, 8))
    pool.volumes.append(linear("a", 4 * E, ("dev-0", 0, 4)))
    assert VolumeMap(pool, pool.volumes[0]).resolve(4 * E, 0) == []


def test_volume_on_unknown_device_is_refused() -> None:
    pool = make_pool(make_device(0, 8))
    pool.volumes.append(linear("a", 4 * E, ("dev-9", 0, 4)))
    with pytest.raises(VVError, match="unknown device"):
        VolumeMap(pool, pool.volumes[0])


def test_stripe_unit_that_does_not_divide_the_extent_is_refused() -> None:
    pool = make_pool(make_device(0, 8), make_device(1, 8))
    seg = Segment(0, 2, 2, 3000, [[Area(DeviceUUID("dev-0"), 0), Area(DeviceUUID("dev-1"), 0)]])
    vol = Volume(uuid=VolumeUUID("v"), name="s", size=2 * E, stripes=2, segments=[seg])
    with pytest.raises(VVError, match="stripe size 3000"):
        VolumeMap(pool, vol)


def test_segments_short_of_the_size_are_refused() -> None:
    pool = make_pool(make_device(0, 8))
    pool.volumes.append(linear("a", 4 * E + 512, ("dev-0", 0, 4)))
    with pytest.raises(VVError, match="do not cover"):
        VolumeMap(pool, pool.volumes[0])
