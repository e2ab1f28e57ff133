"""Tests of mapper.placement (configuration edits) and mapper.units."""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mapper import (
    FITS,
    PlacementError,
    SizeError,
    VolumeSpec,
    add_device,
    create_volume,
    free_runs,
    human_size,
    parse_size,
    remove_device,
    remove_volume,
    rename_volume,
    resize_volume,
    usage,
)
from metadata.errors import ConfigError, VVError
from metadata.model import Area, Device, DeviceUUID, Pool, Segment, Volume, VolumeUUID

from ..support.pools import mapper_pool

MiB = 1 << 20
GiB = 1 << 30
E = 4 * MiB
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_device(i: int, extents: int, **kw: Any) -> Device:
    return Device(
        uuid=DeviceUUID(f"dev-{i}"),
        name=f"d{i}",
        size=MiB + extents * E,
        data_start=MiB,
        extent_count=extents,
        paths=[f"/dev/vd{i}"],
        **kw,
    )


make_pool = functools.partial(mapper_pool, extent_size=E)


def gib_device(i: int, gib: float, **kw: Any) -> Device:
    return make_device(i, int(gib * GiB) // E, **kw)


def extents_on(pool: Pool, name: str) -> Counter[str]:
    """Physical extents of volume *name* per device name."""
    names = {d.uuid: d.name for d in pool.devices}
    count: Counter[str] = Counter()
    for s in pool.volume(name).segments:
        for leg in s.areas:
            for a in leg:
                count[names[a.device]] += s.area_length
    return count


def snapshot(pool: Pool) -> dict[str, Any]:
    return pool.to_dict()


# -- strategies ---------------------------------------------------------------------

specs = st.builds(
    VolumeSpec,
    name=st.just("x"),
    size=st.one_of(
        st.integers(1, 40 * E // 512).map(lambda n: n * 512),
        st.integers(1, 40).map(lambda n: n * E),
    ),
    stripes=st.integers(1, 3),
    stripe_size=st.sampled_from([4096, 65536, E]),
    mirrors=st.integers(1, 3),
    fit=st.sampled_from(FITS),
)


@st.composite
def pools(draw: st.DrawFn) -> Pool:
    n = draw(st.integers(1, 6))
    devices = [
        make_device(
            i,
            draw(st.integers(0, 40)),
            tier=draw(st.integers(1, 3)),
            cost=draw(st.sampled_from([0.0, 0.1, 0.2])),
        )
        for i in range(n)
    ]
    pool = make_pool(*devices)
    for i, spec in enumerate(draw(st.lists(specs, max_size=6))):
        try:
            pool = create_volume(pool, dataclasses.replace(spec, name=f"v{i}"))
        except PlacementError:
            pass
    names = [v.name for v in pool.volumes]
    for name in draw(st.lists(st.sampled_from(names), unique=True) if names else st.just([])):
        pool = remove_volume(pool, name)  # leave holes behind
    return pool


def feasible(pool: Pool, spec: VolumeSpec) -> bool:
    """Reference: can *spec* be placed, from free extent totals alone?"""
    extents = -(-spec.size // pool.extent_size)
    per_column = -(-extents // spec.stripes)
    width = spec.mirrors * spec.stripes
    free = usage(pool)
    caps = [min(free[d.uuid].free, per_column) for d in pool.devices if d.state == "ok"]
    return sum(caps) >= width * per_column


# -- properties ------------------------------------------------------------------------


@SETTINGS
@given(pools(), specs)
def test_create_succeeds_exactly_when_space_allows(pool: Pool, spec: VolumeSpec) -> None:
    spec = dataclasses.replace(spec, name="new")
    before = snapshot(pool)
    try:
        new = create_volume(pool, spec)
    except PlacementError as exc:
        too_few = spec.mirrors * spec.stripes > len(pool.devices)
        assert too_few or not feasible(pool, spec), str(exc)
        assert ("distinct devices" in str(exc)) if too_few else ("not enough space" in str(exc))
    else:
        assert feasible(pool, spec)
        assert new.volume("new").size == spec.size
    assert snapshot(pool) == before, "the argument was changed"


@SETTINGS
@given(pools(), specs)
def test_legs_and_columns_never_share_a_device(pool: Pool, spec: VolumeSpec) -> None:
    try:
        new = create_volume(pool, dataclasses.replace(spec, name="new"))
    except PlacementError:
        return
    for seg in new.volume("new").segments:
        devs = [a.device for leg in seg.areas for a in leg]
        assert len(devs) == len(set(devs)) == spec.mirrors * spec.stripes


@SETTINGS
@given(pools(), specs)
def test_every_column_gets_the_same_count(pool: Pool, spec: VolumeSpec) -> None:
    try:
        new = create_volume(pool, dataclasses.replace(spec, name="new"))
    except PlacementError:
        return
    vol = new.volume("new")
    per_column: Counter[tuple[int, int]] = Counter()
    for seg in vol.segments:
        assert seg.stripes == spec.stripes and seg.mirrors == spec.mirrors
        for m, leg in enumerate(seg.areas):
            for s, _area in enumerate(leg):
                per_column[m, s] += seg.area_length
    expect = extra_extents(spec) // spec.stripes
    assert set(per_column.values()) == {expect}
    assert len(per_column) == spec.mirrors * spec.stripes


@SETTINGS
@given(pools(), specs, st.integers(1, 30))
def test_grow_shrink_and_remove_return_every_extent(
    pool: Pool, spec: VolumeSpec, grow: int
) -> None:
    try:
        created = create_volume(pool, dataclasses.replace(spec, name="new"))
        grown = resize_volume(created, "new", spec.size + grow * E)
    except PlacementError:
        return
    shrunk = resize_volume(grown, "new", spec.size, allow_shrink=True)
    assert usage(shrunk) == usage(created)
    assert free_runs(remove_volume(shrunk, "new")) == free_runs(pool)
    assert free_runs(remove_volume(grown, "new")) == free_runs(pool)


@SETTINGS
@given(pools(), specs, st.integers(1, 30))
def test_grow_succeeds_exactly_when_space_allows(pool: Pool, spec: VolumeSpec, grow: int) -> None:
    try:
        created = create_volume(pool, dataclasses.replace(spec, name="new"))
    except PlacementError:
        return
    before = snapshot(created)
    extra = dataclasses.replace(spec, size=spec.size + grow * E)
    have = created.volume("new").extents()
    # what the grown volume needs beyond what it has, as a spec of its own
    more = dataclasses.replace(spec, size=max(0, extra_extents(extra) - have) * E)
    try:
        resize_volume(created, "new", extra.size)
    except PlacementError as exc:
        assert more.size > 0 and (
            spec.mirrors * spec.stripes > len(pool.devices) or not feasible(created, more)
        ), str(exc)
    else:
        assert more.size == 0 or feasible(created, more)
    assert snapshot(created) == before, "the argument was changed"


def extra_extents(spec: VolumeSpec) -> int:
    """Logical extents a volume of spec.size needs (whole stripe rows)."""
    extents = -(-spec.size // E)
    return -(-extents // spec.stripes) * spec.stripes


@SETTINGS
@given(pools(), specs, st.integers(1, 30))
def test_grow_keeps_legs_apart_and_maps_the_new_size(
    pool: Pool, spec: VolumeSpec, grow: int
) -> None:
    try:
        created = create_volume(pool, dataclasses.replace(spec, name="new"))
        grown = resize_volume(created, "new", spec.size + grow * E)
    except PlacementError:
        return
    vol = grown.volume("new")
    assert vol.extents() * E >= vol.size == spec.size + grow * E
    for seg in vol.segments:
        devs = [a.device for leg in seg.areas for a in leg]
        assert len(devs) == len(set(devs))


# -- create: choices ----------------------------------------------------------------


def test_spread_takes_the_device_with_most_free_space() -> None:
    pool = make_pool(gib_device(0, 2), gib_device(1, 8), gib_device(2, 4))
    new = create_volume(pool, VolumeSpec("v", GiB))
    assert extents_on(new, "v") == {"d1": GiB // E}


def test_cheapest_takes_the_lowest_cost_device() -> None:
    pool = make_pool(
        gib_device(0, 8, cost=0.3), gib_device(1, 2, cost=0.1), gib_device(2, 8, cost=0.2)
    )
    new = create_volume(pool, VolumeSpec("v", GiB, fit="cheapest"))
    assert extents_on(new, "v") == {"d1": GiB // E}


def test_fastest_takes_the_lowest_tier_device() -> None:
    pool = make_pool(gib_device(0, 8, tier=2), gib_device(1, 2, tier=1), gib_device(2, 4, tier=1))
    new = create_volume(pool, VolumeSpec("v", GiB, fit="fastest"))
    assert extents_on(new, "v") == {"d2": GiB // E}


def test_class_filter_keeps_to_one_tier() -> None:
    pool = make_pool(gib_device(0, 8, tier=1), gib_device(1, 2, tier=2))
    new = create_volume(pool, VolumeSpec("v", GiB, tier=2))
    assert extents_on(new, "v") == {"d1": GiB // E}


def test_protection_and_cost_filters() -> None:
    pool = make_pool(
        gib_device(0, 8, protection=0),
        gib_device(1, 4, protection=2, cost=0.5),
        gib_device(2, 2, protection=2, cost=0.1),
    )
    new = create_volume(pool, VolumeSpec("v", GiB, min_protection=1, max_cost=0.2))
    assert extents_on(new, "v") == {"d2": GiB // E}


def test_failed_devices_are_never_used() -> None:
    pool = make_pool(gib_device(0, 8, state="failed"), gib_device(1, 2), gib_device(2, 2))
    new = create_volume(pool, VolumeSpec("v", 2 * GiB, mirrors=2))
    assert set(extents_on(new, "v")) == {"d1", "d2"}


def test_stripes_spread_evenly_over_equal_devices() -> None:
    pool = make_pool(*(gib_device(i, 4) for i in range(4)))
    new = create_volume(pool, VolumeSpec("v", 4 * GiB, stripes=4))
    assert extents_on(new, "v") == {f"d{i}": GiB // E for i in range(4)}
    assert len(new.volume("v").segments) == 1


def test_striped_size_rounds_up_to_whole_rows() -> None:
    pool = make_pool(*(gib_device(i, 1) for i in range(3)))
    new = create_volume(pool, VolumeSpec("v", E, stripes=3))
    assert new.volume("v").extents() == 3


def test_mirrors_fill_the_devices_when_the_policy_would_paint_into_a_corner() -> None:
    # cheapest first would put both legs on d0+d1 and strand d2: the allocator must
    # still find the layout that uses all three.
    pool = make_pool(
        make_device(0, 10, cost=0.1), make_device(1, 10, cost=0.1), make_device(2, 10, cost=0.9)
    )
    new = create_volume(pool, VolumeSpec("v", 15 * E, mirrors=2, fit="cheapest"))
    assert extents_on(new, "v") == {"d0": 10, "d1": 10, "d2": 10}


def test_fragmented_space_makes_several_segments() -> None:
    pool = make_pool(make_device(0, 10))
    pool = create_volume(pool, VolumeSpec("a", 3 * E))
    pool = create_volume(pool, VolumeSpec("b", 2 * E))
    pool = remove_volume(pool, "a")
    new = create_volume(pool, VolumeSpec("c", 6 * E))
    segs = new.volume("c").segments
    assert [(s.start, s.length, s.areas[0][0].start) for s in segs] == [(0, 5, 5), (5, 1, 0)]


def test_created_volume_carries_the_spec() -> None:
    pool = make_pool(gib_device(0, 2), gib_device(1, 2))
    spec = VolumeSpec(
        "v", GiB, mirrors=2, owner=10, group=20, mode=0o640, hosts=["h1"], read_policy="primary"
    )
    vol = create_volume(pool, spec).volume("v")
    assert (vol.size, vol.mirrors, vol.owner, vol.group, vol.mode, vol.hosts, vol.read_policy) == (
        GiB,
        2,
        10,
        20,
        0o640,
        ["h1"],
        "primary",
    )


# -- create: --on ------------------------------------------------------------------------


def test_on_with_amounts_takes_exactly_that_much_in_order() -> None:
    pool = make_pool(gib_device(0, 8), gib_device(1, 8), gib_device(2, 8))
    new = create_volume(pool, VolumeSpec("v", 3 * GiB, on=[("d2", GiB), ("/dev/vd0", 2 * GiB)]))
    assert extents_on(new, "v") == {"d2": GiB // E, "d0": 2 * GiB // E}
    assert new.volume("v").segments[0].areas[0][0].device == "dev-2"


def test_on_amount_none_takes_the_rest() -> None:
    pool = make_pool(gib_device(0, 8), gib_device(1, 8))
    new = create_volume(pool, VolumeSpec("v", 3 * GiB, on=[("d0", None), ("d1", 512 * MiB)]))
    assert extents_on(new, "v") == {"d0": 2560 * MiB // E, "d1": 512 * MiB // E}


def test_on_without_amounts_restricts_the_candidates() -> None:
    pool = make_pool(gib_device(0, 8), gib_device(1, 2), gib_device(2, 2))
    new = create_volume(pool, VolumeSpec("v", GiB, mirrors=2, on=[("d1", None), ("d2", None)]))
    assert set(extents_on(new, "v")) == {"d1", "d2"}


@pytest.mark.parametrize(
    ("on", "match"),
    [
        ([("d0", GiB), ("d1", GiB)], "add up to 2.0 GiB but the volume size is 3.0 GiB"),
        ([("d0", None), ("d1", None), ("d2", GiB)], "only one --on device may omit"),
        ([("d0", 3 * GiB), ("d1", None)], "leaving nothing"),
        ([("d0", GiB), ("d0", 2 * GiB)], "named twice"),
        ([("d9", 3 * GiB)], "no device 'd9'"),
        ([("d1", 3 * GiB)], "not enough space on d1: --on asks 3.0 GiB, 2.0 GiB free"),
    ],
)
def test_on_with_amounts_errors(on: list[tuple[str, int | None]], match: str) -> None:
    pool = make_pool(gib_device(0, 8), gib_device(1, 2), gib_device(2, 8))
    with pytest.raises(PlacementError, match=match):
        create_volume(pool, VolumeSpec("v", 3 * GiB, on=on))


def test_on_with_amounts_needs_a_linear_volume() -> None:
    pool = make_pool(gib_device(0, 8), gib_device(1, 8))
    with pytest.raises(PlacementError, match="linear volume"):
        create_volume(pool, VolumeSpec("v", GiB, mirrors=2, on=[("d0", GiB)]))


def test_on_with_amounts_respects_the_class_filter() -> None:
    pool = make_pool(gib_device(0, 8, tier=1), gib_device(1, 8, tier=2))
    with pytest.raises(
        PlacementError, match="d0: device cannot be used: tier 1 excluded by --class 2"
    ):
        create_volume(pool, VolumeSpec("v", GiB, tier=2, on=[("d0", GiB)]))


# -- create: errors ---------------------------------------------------------------------


def test_not_enough_space_explains_itself() -> None:
    pool = make_pool(gib_device(0, 4, tier=2), gib_device(1, 3, tier=2), gib_device(2, 5, tier=1))
    with pytest.raises(PlacementError) as info:
        create_volume(pool, VolumeSpec("v", 10 * GiB, mirrors=2, tier=2))
    msg = str(info.value)
    assert "\n" not in msg
    assert "need 10.0 GiB on each of 2 distinct devices (2 mirrors x 1 stripe)" in msg
    assert "free: d0 4.0 GiB, d1 3.0 GiB, d2 5.0 GiB (tier 1 excluded by --class 2)" in msg


def test_too_few_devices_for_mirrors() -> None:
    pool = make_pool(gib_device(0, 4), gib_device(1, 4), gib_device(2, 4, state="failed"))
    with pytest.raises(PlacementError) as info:
        create_volume(pool, VolumeSpec("v", GiB, mirrors=3))
    msg = str(info.value)
    assert "needs 3 distinct devices (3 mirrors x 1 stripe; mirror legs" in msg
    assert "only 2 are eligible: d0, d1; excluded: d2 (failed)" in msg


def test_too_little_space_leaves_the_pool_alone() -> None:
    pool = make_pool(gib_device(0, 1))
    before = snapshot(pool)
    with pytest.raises(PlacementError, match="not enough space"):
        create_volume(pool, VolumeSpec("v", 2 * GiB))
    assert snapshot(pool) == before


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (VolumeSpec("a", GiB), "already has a volume 'a'"),
        (VolumeSpec("bad/name", GiB), "invalid volume name"),
        (VolumeSpec("v", 0), "must be positive"),
        (VolumeSpec("v", 1000), "multiple of 512"),
        (VolumeSpec("v", GiB, stripes=0), "at least 1"),
        (VolumeSpec("v", GiB, mirrors=0), "at least 1"),
        (VolumeSpec("v", GiB, stripes=2, stripe_size=3 * 4096), "power of two"),
        (VolumeSpec("v", GiB, stripes=2, stripe_size=2048), "power of two"),
        (VolumeSpec("v", GiB, stripes=2, stripe_size=2 * E), "divides the extent size"),
        (VolumeSpec("v", GiB, fit="best"), "unknown fit"),
        (VolumeSpec("v", GiB, read_policy="random"), "unknown read policy"),
    ],
)
def test_create_validation(spec: VolumeSpec, match: str) -> None:
    pool = create_volume(make_pool(gib_device(0, 8), gib_device(1, 8)), VolumeSpec("a", GiB))
    with pytest.raises(PlacementError, match=match):
        create_volume(pool, spec)


def test_placement_error_is_a_config_error() -> None:
    assert issubclass(PlacementError, ConfigError)


# -- resize ----------------------------------------------------------------------------


def test_grow_extends_the_last_segment_in_place() -> None:
    pool = create_volume(make_pool(gib_device(0, 8)), VolumeSpec("v", GiB))
    new = resize_volume(pool, "v", 3 * GiB)
    segs = new.volume("v").segments
    assert len(segs) == 1 and segs[0].length == 3 * GiB // E


def test_grow_extends_a_striped_mirror_in_place() -> None:
    pool = make_pool(*(gib_device(i, 4) for i in range(4)))
    pool = create_volume(pool, VolumeSpec("v", GiB, stripes=2, mirrors=2))
    new = resize_volume(pool, "v", 2 * GiB)
    assert len(new.volume("v").segments) == 1
    assert new.volume("v").extents() == 2 * GiB // E


def test_grow_past_a_neighbour_adds_a_segment_on_distinct_devices() -> None:
    pool = make_pool(gib_device(0, 4), gib_device(1, 4), gib_device(2, 4))
    pool = create_volume(pool, VolumeSpec("v", GiB, mirrors=2))
    assert set(extents_on(pool, "v")) == {"d0", "d1"}
    pool = create_volume(pool, VolumeSpec("w", GiB, mirrors=2, on=[("d0", None), ("d1", None)]))
    new = resize_volume(pool, "v", 2 * GiB)
    segs = new.volume("v").segments
    assert len(segs) == 2
    assert segs[1].start == GiB // E and segs[1].length == GiB // E
    assert len({a.device for leg in segs[1].areas for a in leg}) == 2


def test_grow_without_space_explains_itself_and_changes_nothing() -> None:
    pool = create_volume(make_pool(gib_device(0, 2)), VolumeSpec("v", GiB))
    before = snapshot(pool)
    with pytest.raises(PlacementError, match="not enough space for volume v grown to 4.0 GiB"):
        resize_volume(pool, "v", 4 * GiB)
    assert snapshot(pool) == before


def test_shrink_needs_confirmation() -> None:
    pool = create_volume(make_pool(gib_device(0, 8)), VolumeSpec("v", 2 * GiB))
    with pytest.raises(PlacementError, match="--yes"):
        resize_volume(pool, "v", GiB)


def test_shrink_frees_the_tail() -> None:
    pool = create_volume(make_pool(gib_device(0, 8)), VolumeSpec("v", 2 * GiB))
    new = resize_volume(pool, "v", GiB - 512, allow_shrink=True)
    assert new.volume("v").size == GiB - 512
    assert usage(new)[DeviceUUID("dev-0")].used == GiB // E


def test_shrink_across_segments_drops_the_later_ones() -> None:
    pool = make_pool(gib_device(0, 1), gib_device(1, 1))
    pool = create_volume(pool, VolumeSpec("v", 2 * GiB))
    assert len(pool.volume("v").segments) == 2
    new = resize_volume(pool, "v", 512 * MiB, allow_shrink=True)
    assert len(new.volume("v").segments) == 1
    assert sum(u.used for u in usage(new).values()) == 512 * MiB // E


@pytest.mark.parametrize("size", [0, -512, 1000])
def test_resize_to_an_invalid_size_is_refused(size: int) -> None:
    pool = create_volume(make_pool(gib_device(0, 8)), VolumeSpec("v", GiB))
    with pytest.raises(PlacementError, match="multiple of 512"):
        resize_volume(pool, "v", size, allow_shrink=True)


def test_resize_unknown_volume() -> None:
    with pytest.raises(PlacementError, match="no volume 'nope'"):
        resize_volume(make_pool(gib_device(0, 8)), "nope", GiB)


# -- remove, rename ------------------------------------------------------------------------


def test_remove_volume_frees_its_extents() -> None:
    pool = make_pool(gib_device(0, 8))
    new = remove_volume(create_volume(pool, VolumeSpec("v", GiB)), "v")
    assert new.volumes == [] and free_runs(new) == free_runs(pool)


def test_rename_volume() -> None:
    pool = create_volume(make_pool(gib_device(0, 8)), VolumeSpec("v", GiB))
    new = rename_volume(pool, "v", "w")
    assert [v.name for v in new.volumes] == ["w"] and pool.volumes[0].name == "v"


def test_rename_to_a_taken_or_bad_name_is_refused() -> None:
    pool = make_pool(gib_device(0, 8))
    pool = create_volume(create_volume(pool, VolumeSpec("v", GiB)), VolumeSpec("w", GiB))
    with pytest.raises(PlacementError, match="already has a volume 'w'"):
        rename_volume(pool, "v", "w")
    with pytest.raises(PlacementError, match="invalid volume name"):
        rename_volume(pool, "v", "-x")


# -- devices ------------------------------------------------------------------------------


def test_add_device_copies_it_in() -> None:
    pool = make_pool(gib_device(0, 8))
    dev = gib_device(1, 4)
    new = add_device(pool, dev)
    assert [d.name for d in new.devices] == ["d0", "d1"] and len(pool.devices) == 1
    new.devices[1].paths.append("/elsewhere")
    assert dev.paths == ["/dev/vd1"]


@pytest.mark.parametrize(
    ("dev", "match"),
    [
        (
            dataclasses.replace(gib_device(1, 4), uuid=DeviceUUID("dev-0")),
            "already has device uuid dev-0",
        ),
        (dataclasses.replace(gib_device(1, 4), name="d0"), "already has a device named 'd0'"),
        (dataclasses.replace(gib_device(1, 4), paths=["/dev/vd0"]), "already belongs to device d0"),
        (dataclasses.replace(gib_device(1, 4), name="a b"), "invalid device name"),
    ],
)
def test_add_device_refuses_duplicates(dev: Device, match: str) -> None:
    with pytest.raises(PlacementError, match=match):
        add_device(make_pool(gib_device(0, 8)), dev)


def test_remove_unused_device() -> None:
    pool = make_pool(gib_device(0, 8), gib_device(1, 8))
    pool = create_volume(pool, VolumeSpec("v", GiB, on=[("d0", None)]))
    assert [d.name for d in remove_device(pool, "/dev/vd1").devices] == ["d0"]


def test_remove_device_in_use_names_the_volumes() -> None:
    pool = make_pool(gib_device(0, 8))
    pool = create_volume(create_volume(pool, VolumeSpec("a", GiB)), VolumeSpec("b", GiB))
    with pytest.raises(PlacementError, match="d0 holds extents of 2 volumes: a, b"):
        remove_device(pool, "d0")


def test_remove_unknown_device() -> None:
    with pytest.raises(PlacementError, match="no device 'zz'"):
        remove_device(make_pool(gib_device(0, 8)), "zz")


def test_hand_built_volume_can_be_grown() -> None:
    pool = make_pool(make_device(0, 10), make_device(1, 10))
    seg = Segment(0, 2, 1, 65536, [[Area(DeviceUUID("dev-0"), 0)], [Area(DeviceUUID("dev-1"), 4)]])
    pool.volumes.append(
        Volume(uuid=VolumeUUID("v"), name="v", size=2 * E, mirrors=2, segments=[seg])
    )
    new = resize_volume(pool, "v", 5 * E)
    assert new.volume("v").segments[0].length == 5


# -- units ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (4 * GiB, "4.0 GiB"),
        (1536 * MiB, "1.5 GiB"),
        (1 << 40, "1.0 TiB"),
    ],
)
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("10G", 10 * GiB),
        ("10GiB", 10 * GiB),
        ("10gb", 10 * GiB),
        ("512M", 512 * MiB),
        ("4k", 4096),
        ("4 KiB", 4096),
        ("1T", 1 << 40),
        ("12345", 12345),
        ("100b", 100),
        ("1.5G", 1536 * MiB),
        (" 2m ", 2 * MiB),
    ],
)
def test_parse_size(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "G", "-1G", "10X", "1.2345", "ten", "10 GiB extra", "5iB"])
def test_parse_size_errors(text: str) -> None:
    with pytest.raises(SizeError) as info:
        parse_size(text)
    assert isinstance(info.value, ValueError) and isinstance(info.value, VVError)
    assert "\n" not in str(info.value)


@given(st.integers(0, 1 << 50))
@settings(max_examples=100, deadline=None)
def test_parse_size_reads_bytes_back(n: int) -> None:
    assert parse_size(str(n)) == n
