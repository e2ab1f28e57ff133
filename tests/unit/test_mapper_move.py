"""Tests of mapper.move: the map edits of an online move (pure, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mapper import VolumeSpec, create_volume, layout, move, remove_volume, resize_volume, usage
from mapper.alloc import used_runs
from metadata.errors import ConfigError
from metadata.model import Device, DeviceUUID, Pool

from ..support.pools import mapper_pool

MiB = 1 << 20
E = 4 * MiB
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pool_of_extents(*extents: int) -> Pool:
    """A mapper pool of devices d0, d1, ... of *extents* extents each, after 1 MiB of labels."""
    devs = [Device(uuid=DeviceUUID(f"dev-{i}"), name=f"d{i}", size=MiB + n * E, data_start=MiB,
                   extent_count=n) for i, n in enumerate(extents)]
    return mapper_pool(*devs, extent_size=E)


def vol(pool: Pool, name: str, extents: int, **kw: Any) -> Pool:
    return create_volume(pool, VolumeSpec(name=name, size=extents * E, **kw))


def devices_of(pool: Pool, name: str) -> set[str]:
    names = {d.uuid: d.name for d in pool.devices}
    return {names[a.device] for s in pool.volume(name).segments for leg in s.areas for a in leg}


def extent_owners(pool: Pool) -> dict[tuple[str, int], str]:
    """(device, extent) -> owner, asserting that no extent has two owners."""
    owners: dict[tuple[str, int], str] = {}

    def claim(dev: str, start: int, n: int, who: str) -> None:
        for e in range(start, start + n):
            assert (dev, e) not in owners, f"extent {e} of {dev}: {owners[(dev, e)]} and {who}"
            owners[(dev, e)] = who

    for v in pool.volumes:
        for s in v.segments:
            for leg in s.areas:
                for a in leg:
                    claim(a.device, a.start, s.area_length, v.name)
    for op in pool.operations:
        for dev, start, n in op.get("reserved", []):
            claim(dev, start, n, "move")
    return owners


def assert_accounting(pool: Pool) -> None:
    owners = extent_owners(pool)
    for d in pool.devices:
        u = usage(pool)[d.uuid]
        mine = sum(1 for (dev, _e) in owners if dev == d.uuid)
        assert u.used == mine and u.used + u.free == u.total == d.extent_count


def test_plan_reserves_the_destination_and_keeps_the_map() -> None:
    pool = vol(pool_of_extents(20, 20), "a", 5, on=[("d0", None)])
    planned = move.plan_move(pool, "a", "d1")
    rec = move.find(planned)
    assert rec is not None and rec.total == 5 and rec.copied == 0
    assert planned.volumes == pool.volumes
    assert usage(planned)[DeviceUUID("dev-1")].used == 5
    assert_accounting(planned)


def test_switch_maps_the_destination_and_frees_the_source() -> None:
    pool = vol(pool_of_extents(20, 20), "a", 5, on=[("d0", None)])
    planned = move.plan_move(pool, "a", "d1")
    done = move.switch(planned, move.find(planned).id)  # type: ignore[union-attr]
    assert devices_of(done, "a") == {"d1"} and done.operations == []
    assert usage(done)[DeviceUUID("dev-0")].used == 0
    assert usage(done)[DeviceUUID("dev-1")].used == 5
    assert_accounting(done)


def test_abort_gives_back_the_pool_as_it_was() -> None:
    pool = vol(pool_of_extents(20, 20), "a", 5, on=[("d0", None)])
    planned = move.plan_move(pool, "a", "d1")
    aborted = move.abort(planned, move.find(planned).id)  # type: ignore[union-attr]
    assert aborted.to_dict() == pool.to_dict()


def test_checkpoint_records_progress() -> None:
    pool = move.plan_move(vol(pool_of_extents(20, 20), "a", 5, on=[("d0", None)]), "a", "d1")
    rec = move.find(pool)
    assert rec is not None
    pool = move.checkpoint(pool, rec.id, 3, now=5.0)
    assert move.find(pool).copied == 3  # type: ignore[union-attr]
    with pytest.raises(move.MoveError):
        move.checkpoint(pool, rec.id, 2)  # never backwards


def test_fragmented_destination_splits_segments() -> None:
    pool = pool_of_extents(20, 10)
    pool = vol(pool, "x", 2, on=[("d1", None)])
    pool = vol(pool, "y", 2, on=[("d1", None)])
    pool = vol(pool, "z", 2, on=[("d1", None)])
    pool = remove_volume(pool, "y")  # d1: 2 used, 2 free, 2 used, 4 free
    pool = vol(pool, "a", 6, on=[("d0", None)])
    planned = move.plan_move(pool, "a", "d1")
    assert len(move.find(planned).pieces) == 2  # type: ignore[union-attr]
    done = move.switch(planned, move.find(planned).id)  # type: ignore[union-attr]
    assert devices_of(done, "a") == {"d1"} and len(done.volume("a").segments) == 2
    assert_accounting(done)
    before = layout.VolumeMap(pool, pool.volume("a"))
    after = layout.VolumeMap(done, done.volume("a"))
    assert before.size == after.size


def test_mirror_leg_moves_with_from() -> None:
    pool = vol(pool_of_extents(20, 20, 20), "m", 4, mirrors=2)
    legs = devices_of(pool, "m")
    spare = ({"d0", "d1", "d2"} - legs).pop()
    src = min(legs)
    with pytest.raises(move.MoveError, match="--from"):
        move.plan_move(pool, "m", spare)
    planned = move.plan_move(pool, "m", spare, src)
    done = move.switch(planned, move.find(planned).id)  # type: ignore[union-attr]
    assert devices_of(done, "m") == legs - {src} | {spare}


def test_a_leg_never_joins_its_twin() -> None:
    pool = vol(pool_of_extents(20, 20), "m", 4, mirrors=2)
    with pytest.raises(move.MoveError, match="legs never share"):
        move.plan_move(pool, "m", "d1", "d0")


def test_one_move_at_a_time() -> None:
    pool = vol(vol(pool_of_extents(20, 20), "a", 2, on=[("d0", None)]), "b", 2, on=[("d0", None)])
    planned = move.plan_move(pool, "a", "d1")
    with pytest.raises(move.MoveError, match="already in progress"):
        move.plan_move(planned, "b", "d1")


def test_validate_refuses_removing_a_moving_volume() -> None:
    planned = move.plan_move(vol(pool_of_extents(20, 20), "a", 5, on=[("d0", None)]), "a", "d1")
    move.validate(planned)
    with pytest.raises(move.MoveError, match="being moved"):
        move.validate(remove_volume(planned, "a"), planned)


def test_growing_a_moving_volume_is_allowed() -> None:
    planned = move.plan_move(vol(pool_of_extents(20, 20), "a", 5, on=[("d0", None)]), "a", "d1")
    grown = resize_volume(planned, "a", 8 * E)
    move.validate(grown)
    done = move.switch(grown, move.find(grown).id)  # type: ignore[union-attr]
    assert_accounting(done)
    assert done.volume("a").extents() == 8


def test_reserved_extents_are_not_allocated() -> None:
    planned = move.plan_move(vol(pool_of_extents(20, 6), "a", 5, on=[("d0", None)]), "a", "d1")
    with pytest.raises(ConfigError):
        vol(planned, "b", 2, on=[("d1", None)])


def test_evacuate_moves_every_area_off_the_device() -> None:
    pool = pool_of_extents(20, 20, 20)
    pool = vol(pool, "m", 3, mirrors=2)
    pool = vol(pool, "l", 4)
    victim = next(iter(devices_of(pool, "m")))
    planned = move.plan_evacuate(pool, victim)
    done = move.switch(planned, move.find(planned).id)  # type: ignore[union-attr]
    for name in ("m", "l"):
        assert victim not in devices_of(done, name)
    assert usage(done)[next(d.uuid for d in done.devices if d.name == victim)].used == 0
    assert_accounting(done)


def test_malformed_record_is_refused() -> None:
    planned = move.plan_move(vol(pool_of_extents(20, 20), "a", 5, on=[("d0", None)]), "a", "d1")
    op = dict(planned.operations[0])
    op["total"] = 99
    with pytest.raises(move.MoveError):
        move.parse(op)


def test_record_survives_serialisation() -> None:
    planned = move.plan_move(vol(pool_of_extents(20, 20), "a", 5, on=[("d0", None)]), "a", "d1")
    again = Pool.from_dict(planned.to_dict())
    assert move.find(again) == move.find(planned)


@st.composite
def pools_with_volumes(draw: st.DrawFn) -> Pool:
    pool = pool_of_extents(*draw(st.lists(st.integers(4, 30), min_size=2, max_size=4)))
    for i in range(draw(st.integers(1, 5))):
        mirrors = draw(st.integers(1, min(2, len(pool.devices))))
        stripes = draw(st.integers(1, max(1, min(2, len(pool.devices) // mirrors))))
        size = draw(st.integers(1, 6)) * E
        try:
            pool = create_volume(pool, VolumeSpec(name=f"v{i}", size=size, mirrors=mirrors,
                                                  stripes=stripes, stripe_size=64 << 10))
        except ConfigError:
            pass
        if draw(st.booleans()) and len(pool.volumes) > 1:
            pool = remove_volume(pool, pool.volumes[0].name)
    return pool


@SETTINGS
@given(pools_with_volumes(), st.data())
def test_no_extent_used_twice_during_and_after_a_move(pool: Pool, data: st.DataObject) -> None:
    if not pool.volumes:
        return
    v = data.draw(st.sampled_from(pool.volumes), "volume")
    dest = data.draw(st.sampled_from(pool.devices), "to")
    src = data.draw(st.sampled_from([None, *pool.devices]), "from")
    evacuate = data.draw(st.booleans(), "evacuate")
    try:
        if evacuate:
            planned = move.plan_evacuate(pool, dest.name)
        else:
            planned = move.plan_move(pool, v.name, dest.name, src.name if src else None)
    except move.MoveError:
        return
    assert_accounting(planned)  # during: old place mapped, destination reserved
    rec = move.find(planned)
    assert rec is not None
    assert sum(used_runs(planned)[DeviceUUID(p.dest)][0][1] > 0 for p in rec.pieces) >= 1
    mid = move.checkpoint(planned, rec.id, data.draw(st.integers(0, rec.total)))
    assert_accounting(mid)
    done = move.switch(mid, rec.id)
    assert_accounting(done)  # after: the new place mapped, the old free
    assert not done.operations
    total = sum(usage(pool)[d.uuid].used for d in pool.devices)
    assert sum(usage(done)[d.uuid].used for d in done.devices) == total
    for before in pool.volumes:
        after = done.volume(before.name)
        assert after.extents() == before.extents() and after.size == before.size
    assert move.abort(planned, rec.id).to_dict() == pool.to_dict()
