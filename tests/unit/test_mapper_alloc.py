"""Tests of mapper.alloc: free-space accounting from the configuration."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mapper import (
    FITS,
    ClassUsage,
    DeviceUsage,
    PlacementError,
    VolumeSpec,
    class_usage,
    create_volume,
    free_runs,
    fresh_mirror_runs,
    fresh_runs,
    regrown_spans,
    remove_volume,
    resize_volume,
    usage,
    used_by,
)
from metadata.model import Area, Device, DeviceUUID, Pool, Segment, Volume, VolumeUUID

from ..support.pools import mapper_pool

E = 64 * 1024
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_device(i: int, extents: int, **kw: Any) -> Device:
    return Device(
        uuid=DeviceUUID(f"dev-{i}"),
        name=f"d{i}",
        size=4096 + extents * E,
        data_start=4096,
        extent_count=extents,
        **kw,
    )


make_pool = functools.partial(mapper_pool, extent_size=E)


def linear(name: str, *runs: tuple[str, int, int]) -> Volume:
    segs, pos = [], 0
    for dev, start, count in runs:
        segs.append(Segment(pos, count, 1, 65536, [[Area(DeviceUUID(dev), start)]]))
        pos += count
    return Volume(uuid=VolumeUUID(f"vol-{name}"), name=name, size=pos * E, segments=segs)


# -- strategy: pools shaped by create, grow, shrink and remove ---------------------

specs = st.builds(
    VolumeSpec,
    name=st.just("x"),
    size=st.integers(1, 12 * E // 512).map(lambda n: n * 512),
    stripes=st.integers(1, 3),
    stripe_size=st.sampled_from([4096, 65536]),
    mirrors=st.integers(1, 2),
    fit=st.sampled_from(FITS),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("create"), specs),
        st.tuples(st.just("create"), specs),
        st.tuples(st.just("remove"), st.integers(0, 9)),
        st.tuples(st.just("resize"), st.integers(0, 9), st.integers(1, 16 * E // 512)),
    ),
    min_size=1,
    max_size=12,
)


@st.composite
def pools(draw: st.DrawFn) -> Pool:
    n = draw(st.integers(1, 6))
    devices = [
        make_device(
            i,
            draw(st.integers(0, 40)),
            tier=draw(st.integers(1, 2)),
            protection=draw(st.integers(0, 1)),
            cost=draw(st.sampled_from([0.0, 0.5])),
            state=draw(st.sampled_from(["ok", "ok", "ok", "failed"])),
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
    return resize_volume(pool, vol.name, op[2] * 512, allow_shrink=True)


def used_extents(pool: Pool) -> dict[str, list[int]]:
    """Every used physical extent per device, one entry per use (brute force)."""
    out: dict[str, list[int]] = {d.uuid: [] for d in pool.devices}
    for v in pool.volumes:
        for s in v.segments:
            for leg in s.areas:
                for a in leg:
                    out[a.device].extend(range(a.start, a.start + s.area_length))
    return out


# -- properties ---------------------------------------------------------------------


@SETTINGS
@given(pools())
def test_no_physical_extent_is_used_twice(pool: Pool) -> None:
    for dev, extents in used_extents(pool).items():
        assert len(extents) == len(set(extents)), dev


@SETTINGS
@given(pools())
def test_free_runs_are_the_complement_of_the_used_extents(pool: Pool) -> None:
    used = used_extents(pool)
    runs = free_runs(pool)
    assert list(runs) == [d.uuid for d in pool.devices]
    for d in pool.devices:
        free = [e for start, n in runs[d.uuid] for e in range(start, start + n)]
        assert free == sorted(set(range(d.extent_count)) - set(used[d.uuid]))
        assert all(n > 0 for _, n in runs[d.uuid])
        ends = [s + n for s, n in runs[d.uuid]]
        starts = [s for s, _ in runs[d.uuid]]
        assert all(end < nxt for end, nxt in zip(ends, starts[1:])), "runs not coalesced"


@SETTINGS
@given(pools())
def test_used_plus_free_is_the_capacity(pool: Pool) -> None:
    used = used_extents(pool)
    for d in pool.devices:
        u = usage(pool)[d.uuid]
        assert u.used + u.free == u.total == d.extent_count
        assert u.used == len(used[d.uuid])


@SETTINGS
@given(pools())
def test_class_usage_adds_up_per_class(pool: Pool) -> None:
    per_dev = usage(pool)
    classes = class_usage(pool)
    assert [(c.tier, c.protection, c.cost) for c in classes] == sorted(
        {(d.tier, d.protection, d.cost) for d in pool.devices}
    )
    for c in classes:
        members = [
            d
            for d in pool.devices
            if (d.tier, d.protection, d.cost) == (c.tier, c.protection, c.cost)
        ]
        assert c.devices == len(members)
        assert c.total_bytes == sum(d.extent_count for d in members) * E
        ok = [d for d in members if d.state != "failed"]
        assert c.free_bytes == sum(per_dev[d.uuid].free for d in ok) * E


@SETTINGS
@given(pools())
def test_used_by_names_the_volumes_on_a_device(pool: Pool) -> None:
    for d in pool.devices:
        expect = [
            v.name
            for v in pool.volumes
            if any(a.device == d.uuid for s in v.segments for leg in s.areas for a in leg)
        ]
        assert used_by(pool, d.uuid) == expect


# -- examples -------------------------------------------------------------------------


def test_empty_device_is_one_free_run() -> None:
    pool = make_pool(make_device(0, 10), make_device(1, 0))
    assert free_runs(pool) == {"dev-0": [(0, 10)], "dev-1": []}


def test_free_runs_fall_between_areas() -> None:
    pool = make_pool(make_device(0, 10))
    pool.volumes = [linear("a", ("dev-0", 2, 3)), linear("b", ("dev-0", 5, 1), ("dev-0", 8, 2))]
    assert free_runs(pool) == {"dev-0": [(0, 2), (6, 2)]}
    assert usage(pool) == {"dev-0": DeviceUsage(total=10, used=6, free=4)}


def test_full_device_has_no_free_runs() -> None:
    pool = make_pool(make_device(0, 4))
    pool.volumes = [linear("a", ("dev-0", 0, 4))]
    assert free_runs(pool) == {"dev-0": []}


def test_class_usage_groups_by_tier_protection_and_cost() -> None:
    pool = make_pool(
        make_device(0, 10, tier=1, cost=2.0),
        make_device(1, 20, tier=1, cost=2.0),
        make_device(2, 30, tier=3, protection=1),
        make_device(3, 40, tier=1, cost=2.0, state="failed"),
    )
    pool.volumes = [linear("a", ("dev-1", 0, 5))]
    assert class_usage(pool) == [
        ClassUsage(
            tier=1, protection=0, cost=2.0, devices=3, total_bytes=70 * E, free_bytes=25 * E
        ),
        ClassUsage(
            tier=3, protection=1, cost=0.0, devices=1, total_bytes=30 * E, free_bytes=30 * E
        ),
    ]


def test_used_by_an_unused_device_is_empty() -> None:
    pool = make_pool(make_device(0, 4), make_device(1, 4))
    pool.volumes = [linear("a", ("dev-0", 0, 1))]
    assert used_by(pool, "dev-0") == ["a"]
    assert used_by(pool, "dev-1") == []


def test_free_runs_scale_to_ten_thousand_volumes() -> None:
    devices = [make_device(i, 1_000_000) for i in range(16)]
    pool = make_pool(*devices, extent_size=4 << 20)
    pos = [0] * 16
    for i in range(10_000):
        a, b = i % 16, (i + 7) % 16
        seg = Segment(
            0,
            3,
            1,
            65536,
            [[Area(DeviceUUID(f"dev-{a}"), pos[a])], [Area(DeviceUUID(f"dev-{b}"), pos[b])]],
        )
        pos[a] += 3 + i % 2  # leave a one-extent hole every other volume
        pos[b] += 3 + i % 2
        pool.volumes.append(
            Volume(
                uuid=VolumeUUID(f"v{i}"),
                name=f"v{i}",
                size=3 * (4 << 20),
                mirrors=2,
                segments=[seg],
            )
        )
    began = time.perf_counter()
    runs = free_runs(pool)
    assert time.perf_counter() - began < 2.0
    assert sum(n for r in runs.values() for _, n in r) == 16 * 1_000_000 - 10_000 * 2 * 3


# -- fresh extents of new volumes (zeroed before a commit) ----------------------------


def mirrored_extents(pool: Pool, min_legs: int = 2) -> dict[str, set[int]]:
    """Every physical extent of a segment with *min_legs* legs or more, per device (brute force)."""
    out: dict[str, set[int]] = {}
    for v in pool.volumes:
        for s in v.segments:
            if len(s.areas) >= min_legs:
                for leg in s.areas:
                    for a in leg:
                        out.setdefault(a.device, set()).update(
                            range(a.start, a.start + s.area_length))
    return out


def expand(runs: dict[DeviceUUID, list[tuple[int, int]]]) -> dict[str, set[int]]:
    return {dev: {x for start, n in rs for x in range(start, start + n)}
            for dev, rs in runs.items()}


def _applied(pool: Pool, more: list[tuple[Any, ...]]) -> Pool:
    """*pool* after every op of *more* that places (the others are skipped)."""
    new = pool
    for i, op in enumerate(more, start=100):
        try:
            new = apply(new, i, op)
        except PlacementError:
            pass
    return new


@SETTINGS
@given(pools(), ops)
def test_fresh_mirror_runs_are_the_new_mirrored_extents_nothing_used_before(
        pool: Pool, more: list[tuple[Any, ...]]) -> None:
    new = _applied(pool, more)
    before = {dev: set(x) for dev, x in used_extents(pool).items()}
    want = {dev: xs - before.get(dev, set()) for dev, xs in mirrored_extents(new).items()}
    want = {dev: xs for dev, xs in want.items() if xs}
    fresh = fresh_mirror_runs(pool, new)
    assert expand(fresh) == want
    for runs in fresh.values():
        assert runs == sorted(runs) and all(n > 0 for _s, n in runs)
        assert all(a + n < b for (a, n), (b, _m) in itertools.pairwise(runs))  # merged


@SETTINGS
@given(pools(), ops)
def test_fresh_runs_are_the_new_extents_of_every_layout_nothing_used_before(
        pool: Pool, more: list[tuple[Any, ...]]) -> None:
    new = _applied(pool, more)
    before = {dev: set(x) for dev, x in used_extents(pool).items()}
    want = {dev: xs - before.get(dev, set()) for dev, xs in mirrored_extents(new, 1).items()}
    assert expand(fresh_runs(pool, new)) == {dev: xs for dev, xs in want.items() if xs}


def test_a_new_linear_volume_on_a_removed_ones_extents_is_fresh() -> None:
    pool = make_pool(make_device(0, 10))
    old = create_volume(pool, VolumeSpec(name="old", size=3 * E))
    gone = remove_volume(old, "old")
    new = create_volume(gone, VolumeSpec(name="new", size=2 * E))
    assert fresh_runs(gone, new) == {DeviceUUID("dev-0"): [(0, 2)]}
    assert fresh_mirror_runs(gone, new) == {}


def test_a_new_striped_volume_is_fresh_on_every_column() -> None:
    pool = make_pool(make_device(0, 10), make_device(1, 10))
    new = create_volume(pool, VolumeSpec(name="s", size=4 * E, stripes=2, stripe_size=4096))
    assert fresh_runs(pool, new) == {DeviceUUID("dev-0"): [(0, 2)],
                                     DeviceUUID("dev-1"): [(0, 2)]}


def test_growing_a_shrunk_volume_regrows_the_bytes_it_kept() -> None:
    """Shrinking to 1.5 extents keeps 2; growing back maps bytes 1.5E..2E again."""
    pool = make_pool(make_device(0, 10))
    pool = create_volume(pool, VolumeSpec(name="l", size=4 * E))
    shrunk = resize_volume(pool, "l", 3 * E // 2, allow_shrink=True)
    grown = resize_volume(shrunk, "l", 3 * E)
    assert regrown_spans(shrunk, grown) == [(DeviceUUID("dev-0"), 4096 + 3 * E // 2, E // 2,
                                             False)]
    assert fresh_runs(shrunk, grown) == {DeviceUUID("dev-0"): [(2, 1)]}


def test_growing_a_mirror_regrows_every_leg() -> None:
    pool = make_pool(make_device(0, 10), make_device(1, 10))
    pool = create_volume(pool, VolumeSpec(name="m", size=2 * E, mirrors=2))
    shrunk = resize_volume(pool, "m", E + 4096, allow_shrink=True)
    spans = regrown_spans(shrunk, resize_volume(shrunk, "m", 2 * E))
    assert sorted(spans) == [(DeviceUUID(f"dev-{i}"), 4096 + E + 4096, E - 4096, True)
                             for i in range(2)]


def test_growing_a_volume_never_shrunk_regrows_nothing() -> None:
    pool = make_pool(make_device(0, 10))
    pool = create_volume(pool, VolumeSpec(name="l", size=2 * E))
    assert regrown_spans(pool, resize_volume(pool, "l", 5 * E)) == []
    assert regrown_spans(pool, create_volume(pool, VolumeSpec(name="n", size=E))) == []


def test_a_new_mirrored_volume_is_fresh_on_every_leg() -> None:
    pool = make_pool(make_device(0, 10), make_device(1, 10))
    new = create_volume(pool, VolumeSpec(name="m", size=3 * E, mirrors=2))
    assert fresh_mirror_runs(pool, new) == {DeviceUUID("dev-0"): [(0, 3)],
                                            DeviceUUID("dev-1"): [(0, 3)]}


def test_a_linear_volume_is_never_fresh() -> None:
    pool = make_pool(make_device(0, 10), make_device(1, 10))
    assert fresh_mirror_runs(pool, create_volume(pool, VolumeSpec(name="l", size=3 * E))) == {}


def test_growing_a_mirror_makes_only_the_new_extents_fresh() -> None:
    pool = make_pool(make_device(0, 10), make_device(1, 10))
    pool = create_volume(pool, VolumeSpec(name="m", size=2 * E, mirrors=2))
    grown = resize_volume(pool, "m", 5 * E)
    fresh = expand(fresh_mirror_runs(pool, grown))
    assert fresh == {"dev-0": {2, 3, 4}, "dev-1": {2, 3, 4}}


def test_a_move_destination_is_not_fresh() -> None:
    """A move's switch maps the extents its record reserved: in use already, not fresh."""
    def mirror(at0: int) -> Volume:
        legs = [[Area(DeviceUUID("dev-0"), at0)], [Area(DeviceUUID("dev-1"), 0)]]
        return Volume(uuid=VolumeUUID("vol-m"), name="m", size=2 * E, mirrors=2,
                      segments=[Segment(0, 2, 1, 65536, legs)])

    before = make_pool(make_device(0, 10), make_device(1, 10))
    before.volumes.append(mirror(4))
    before.operations.append({"kind": "move", "id": "x", "reserved": [["dev-0", 0, 2]]})
    after = make_pool(make_device(0, 10), make_device(1, 10))
    after.volumes.append(mirror(0))
    assert fresh_mirror_runs(before, after) == {}
    before.operations = []
    assert fresh_mirror_runs(before, after) == {DeviceUUID("dev-0"): [(0, 2)]}
