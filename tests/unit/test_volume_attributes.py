"""Owner, group and mode of a volume: range checks, changing them later, safe display.

Pure mapper tests (mapper.placement.check_attributes and set_attributes,
mapper.namespace.attributes), then ``vv volume create`` and ``vv volume set``
end to end on sparse files (issue 11 item 10).
"""

from __future__ import annotations

import functools

import pytest

from mapper import PlacementError, VolumeSpec, create_volume, set_attributes
from mapper.namespace import SAFE_MODE, attributes
from metadata.model import Device, DeviceUUID, Volume, VolumeUUID

from ..support.pools import mapper_pool
from .test_cli import tank, vv  # noqa: F401 - fixtures

MiB = 1 << 20
E = 4 * MiB
MAX_ID = (1 << 32) - 2
new_pool = functools.partial(mapper_pool, extent_size=E)


def one_device_pool():
    dev = Device(uuid=DeviceUUID("dev-0"), name="d0", size=MiB + 16 * E, data_start=MiB,
                 extent_count=16, paths=["/dev/vd0"])
    return new_pool(dev)


def spec(**kw) -> VolumeSpec:
    return VolumeSpec(name="v", size=E, **kw)


def with_volume(**kw):
    return create_volume(one_device_pool(), spec(**kw))


# -- creating ----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["owner", "group"])
@pytest.mark.parametrize("value", [MAX_ID + 1, 1 << 64, -1])
def test_create_refuses_an_id_out_of_range(field, value):
    with pytest.raises(PlacementError, match=f"{field} {value} is not a number from 0 to"):
        with_volume(**{field: value})


def test_create_takes_the_highest_id():
    v = with_volume(owner=MAX_ID, group=MAX_ID).volume("v")
    assert (v.owner, v.group) == (MAX_ID, MAX_ID)


def test_create_refuses_an_id_that_is_not_an_integer():
    with pytest.raises(PlacementError, match="owner '1000' is not a number"):
        with_volume(owner="1000")


@pytest.mark.parametrize("mode", [0o7777, 0o4755, 0o2755, 0o1777])
def test_create_refuses_special_bits_unless_asked(mode):
    with pytest.raises(PlacementError, match="setuid, setgid or sticky"):
        with_volume(mode=mode)


def test_create_takes_special_bits_when_asked():
    assert with_volume(mode=0o4755, special_bits=True).volume("v").mode == 0o4755


@pytest.mark.parametrize("mode", [0o10000, -1, 0o100644])
def test_create_refuses_a_mode_beyond_the_file_mode_bits(mode):
    with pytest.raises(PlacementError, match="is not a file mode"):
        with_volume(mode=mode, special_bits=True)


# -- changing ----------------------------------------------------------------------


def test_set_attributes_changes_only_what_is_given():
    pool = with_volume(owner=1, group=2, mode=0o640)
    v = set_attributes(pool, "v", owner=1000).volume("v")
    assert (v.owner, v.group, v.mode) == (1000, 2, 0o640)


def test_set_attributes_leaves_the_pool_passed_in_as_it_was():
    pool = with_volume(owner=1)
    set_attributes(pool, "v", owner=1000, group=1000, mode=0o666)
    v = pool.volume("v")
    assert (v.owner, v.group, v.mode) == (1, 0, 0o600)


def test_set_attributes_refuses_a_bad_value():
    with pytest.raises(PlacementError, match="group 4294967295"):
        set_attributes(with_volume(), "v", group=MAX_ID + 1)


def test_set_attributes_replaces_a_bad_value_read_from_media():
    pool = with_volume()
    pool.volume("v").owner = 1 << 32
    assert set_attributes(pool, "v", owner=5).volume("v").owner == 5


# -- what the mount shows ----------------------------------------------------------


def volume(**kw) -> Volume:
    return Volume(uuid=VolumeUUID("u"), name="v", size=E, **kw)


def test_attributes_of_a_valid_volume_are_its_own():
    assert attributes(volume(owner=7, group=8, mode=0o4750)) == (7, 8, 0o4750, ())


@pytest.mark.parametrize(("kw", "bad"), [
    ({"owner": 1 << 32}, ("owner",)),
    ({"owner": -1, "group": "x"}, ("owner", "group")),
    ({"group": 1.5}, ("group",)),
    ({"mode": 0o100644}, ("mode",)),
    ({"mode": None}, ("mode",)),
])
def test_attributes_not_valid_on_media_show_root_owned_0600(kw, bad):
    a = attributes(volume(**kw))
    assert a.bad == bad
    for name in bad:
        assert getattr(a, name) == (SAFE_MODE if name == "mode" else 0)


# -- vv volume create / set ------------------------------------------------------


def test_vv_create_refuses_owner_2_to_the_32(tank, vv):  # noqa: F811
    r = vv("volume", "create", "tank/a", "--size", "4M", "--owner", "4294967296")
    assert r.code == 2 and "4294967296 is not in the range" in r.err
    assert vv("volume", "list", "tank", "--json").json() == []


def test_vv_create_refuses_mode_07777_without_special_bits(tank, vv):  # noqa: F811
    r = vv("volume", "create", "tank/a", "--size", "4M", "--mode", "07777")
    assert r.code == 1
    want = ("vv: volume a: mode 7777 has setuid, setgid or sticky bits;"
            " ask for them explicitly (--special-bits)")
    assert r.err.strip().splitlines() == [want]


def test_vv_create_takes_special_bits_when_asked(tank, vv):  # noqa: F811
    assert vv("volume", "create", "tank/a", "--size", "4M", "--mode", "1770",
              "--special-bits").code == 0
    assert vv("volume", "show", "tank/a", "--json").json()["mode"] == "1770"


def test_vv_set_changes_owner_group_and_mode(tank, vv):  # noqa: F811
    assert vv("volume", "create", "tank/a", "--size", "4M").code == 0
    r = vv("volume", "set", "tank/a", "--owner", "1000", "--group", "100", "--mode", "0640")
    assert r.code == 0, r.err
    v = vv("volume", "show", "tank/a", "--json").json()
    assert (v["owner"], v["group"], v["mode"]) == (1000, 100, "0640")


def test_vv_set_refuses_a_bad_owner_and_changes_nothing(tank, vv):  # noqa: F811
    assert vv("volume", "create", "tank/a", "--size", "4M", "--owner", "7").code == 0
    before = vv("pool", "show", "tank", "--json").json()["generation"]
    r = vv("volume", "set", "tank/a", "--owner", "-1")
    assert r.code == 2 and "--owner" in r.err
    assert vv("volume", "show", "tank/a", "--json").json()["owner"] == 7
    assert vv("pool", "show", "tank", "--json").json()["generation"] == before


def test_vv_set_the_same_values_commits_nothing(tank, vv):  # noqa: F811
    assert vv("volume", "create", "tank/a", "--size", "4M", "--owner", "7").code == 0
    before = vv("pool", "show", "tank", "--json").json()["generation"]
    assert vv("volume", "set", "tank/a", "--owner", "7").code == 0
    assert vv("pool", "show", "tank", "--json").json()["generation"] == before


def test_vv_set_needs_something_to_set(tank, vv):  # noqa: F811
    r = vv("volume", "set", "tank/a")
    assert r.code == 2 and "nothing to set" in r.err
