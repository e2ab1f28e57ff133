"""Tests of mapper.namespace: which volumes a host sees (level 1, LUN masking)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mapper import visible, visible_volumes
from metadata.model import Pool, PoolUUID, Volume, VolumeUUID

SETTINGS = settings(max_examples=200, deadline=None)

identities = st.sampled_from(["host-a", "host-b", "host-c", "a.example.org", ""])
host_sets = st.frozensets(identities)
host_lists = st.lists(identities, max_size=4)


def volume(name: str, hosts: list[str]) -> Volume:
    return Volume(uuid=VolumeUUID(f"vol-{name}"), name=name, size=1 << 20, hosts=list(hosts))


def pool_of(*volumes: Volume) -> Pool:
    return Pool(uuid=PoolUUID("pool-1"), name="p", extent_size=1 << 20, volumes=list(volumes))


pools = st.lists(host_lists, max_size=6).map(
    lambda lists: pool_of(*(volume(f"v{i}", hosts) for i, hosts in enumerate(lists))))


# -- visible ------------------------------------------------------------------------


def test_a_volume_presented_to_nobody_is_seen_by_every_host() -> None:
    v = volume("all", [])
    assert visible(v, frozenset({"host-a"}))
    assert visible(v, frozenset({"host-a", "host-b"}))


def test_a_volume_presented_to_nobody_is_seen_by_a_host_without_identities() -> None:
    assert visible(volume("all", []), frozenset())


def test_a_host_without_identities_sees_no_presented_volume() -> None:
    assert not visible(volume("a", ["host-a"]), frozenset())


def test_a_host_sees_a_volume_presented_to_one_of_its_identities() -> None:
    v = volume("a", ["host-a", "host-b"])
    assert visible(v, frozenset({"host-b"}))
    assert visible(v, frozenset({"other", "host-a"}))  # a host id or its hostname


def test_a_host_does_not_see_a_volume_presented_elsewhere() -> None:
    assert not visible(volume("a", ["host-a"]), frozenset({"host-b", "host-c"}))


def test_identities_compare_as_exact_strings() -> None:
    v = volume("a", ["host-a"])
    assert not visible(v, frozenset({"HOST-A"}))
    assert not visible(v, frozenset({"host-"}))
    assert not visible(v, frozenset({"host-a "}))


@SETTINGS
@given(hosts=host_lists, host_ids=host_sets)
def test_visible_is_empty_list_or_a_shared_identity(hosts: list[str],
                                                    host_ids: frozenset[str]) -> None:
    assert visible(volume("v", hosts), host_ids) == (not hosts or bool(set(hosts) & host_ids))


@SETTINGS
@given(hosts=host_lists, host_ids=host_sets)
def test_order_and_duplicates_of_the_host_list_do_not_matter(hosts: list[str],
                                                             host_ids: frozenset[str]) -> None:
    expected = visible(volume("v", hosts), host_ids)
    assert visible(volume("v", sorted(hosts, reverse=True)), host_ids) == expected
    assert visible(volume("v", hosts + hosts), host_ids) == expected


@SETTINGS
@given(hosts=host_lists, host_ids=host_sets, more=host_sets)
def test_more_identities_never_hide_a_volume(hosts: list[str], host_ids: frozenset[str],
                                             more: frozenset[str]) -> None:
    if visible(volume("v", hosts), host_ids):
        assert visible(volume("v", hosts), host_ids | more)


@SETTINGS
@given(hosts=host_lists, host_ids=host_sets)
def test_visible_does_not_change_its_arguments(hosts: list[str],
                                               host_ids: frozenset[str]) -> None:
    v = volume("v", hosts)
    visible(v, host_ids)
    assert v.hosts == hosts


# -- visible_volumes ----------------------------------------------------------------


def test_a_pool_without_volumes_shows_none() -> None:
    assert visible_volumes(pool_of(), frozenset({"host-a"})) == []


def test_a_pool_presented_elsewhere_shows_none() -> None:
    p = pool_of(volume("a", ["host-a"]), volume("b", ["host-b"]))
    assert visible_volumes(p, frozenset({"host-c"})) == []


def test_visible_volumes_keeps_the_pool_order() -> None:
    p = pool_of(volume("z", []), volume("hidden", ["host-b"]), volume("a", ["host-a"]),
                volume("m", []))
    assert [v.name for v in visible_volumes(p, frozenset({"host-a"}))] == ["z", "a", "m"]


@SETTINGS
@given(pool=pools, host_ids=host_sets)
def test_visible_volumes_is_the_pools_own_volumes_that_are_visible(
        pool: Pool, host_ids: frozenset[str]) -> None:
    got = visible_volumes(pool, host_ids)
    expected = [v for v in pool.volumes if visible(v, host_ids)]
    assert [id(v) for v in got] == [id(v) for v in expected]  # the same objects, in order


@SETTINGS
@given(pool=pools, host_ids=host_sets)
def test_visible_volumes_does_not_change_the_pool(pool: Pool, host_ids: frozenset[str]) -> None:
    before = pool.copy()
    visible_volumes(pool, host_ids)
    assert pool == before
