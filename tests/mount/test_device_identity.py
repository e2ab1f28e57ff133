"""A device is read and written only once it proves to be what the pool expects.

Real mounts (issue 11, items 2, 3 and 17): a leg rolled back to an old image,
a path whose label is gone or foreign, a path taken out of a device's list.
The node checks pool uuid, device uuid and generation on every open; a
device that fails the check is failed (an event says why) and never read
or written until it is rebuilt or found again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from metadata import format as fmt
from metadata import media
from vvfs.io.filedev import FileDevice

from ..support.mountutil import MiB, TestPool, mounted, read_dev, require, wait_until
from .test_mirror_failover import (
    _events,
    _path_states,
    _read_direct,
    _status,
    _write,
    assert_legs_identical,
    faulty_pool,
)

pytestmark = pytest.mark.slow

OPTIONS = ("probe_interval=0", "resync_rate=0")
VOLUME = 64 * MiB


def _device(pool: TestPool, name: str) -> dict:
    return next(d for d in _status(pool)["devices"] if d["name"] == name)


def _messages(pool: TestPool, kind: str, obj: str) -> list[str]:
    return [e["message"] for e in _events(pool) if e["kind"] == kind and e["object"] == obj]


def _digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 * MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def _leg(pool: TestPool, leg: int) -> tuple[str, Path]:
    """(device name, backing file) of leg *leg* of volume m (offline only)."""
    p, v = pool.show("m")
    uuid = v.segments[0].areas[leg][0].device  # type: ignore[attr-defined]
    d = next(d for d in p.devices if d.uuid == uuid)  # type: ignore[attr-defined]
    return d.name, Path(d.paths[0])


# ---------------------------------------------------------------------------
# item 2: a leg rolled back to an old image


def test_a_rolled_back_leg_is_failed_at_open_and_rebuilt_whole(tmp_path: Path) -> None:
    require("fusermount3")
    pool = TestPool(tmp_path, devices=2)
    pool.create_volume("m", VOLUME, mirrors=2)
    old, new = os.urandom(16 * MiB), os.urandom(16 * MiB)
    with mounted(pool, *OPTIONS) as node:
        _write(pool.volume_path("m"), 0, old)
        node.umount()
    name1, leg1 = _leg(pool, 1)
    shutil.copyfile(leg1, tmp_path / "old.img")  # an image of leg 1 as it was
    with mounted(pool, *OPTIONS) as node:
        _write(pool.volume_path("m"), 0, new)
        pool.vv("volume", "create", "tank/x", "--size", "4M")  # a newer generation
        node.umount()
    os.replace(tmp_path / "old.img", leg1)  # the old image put back while offline
    with mounted(pool, "probe_interval=0", "resync_rate=16m") as node:
        failed = _messages(pool, "device-failed", name1)
        assert failed and "older than the pool's" in failed[0], _events(pool)
        # never read meanwhile: balanced reads of the rewritten region all give the new bytes
        assert _read_direct(pool.volume_path("m"), 16, MiB, MiB) == new
        wait_until(lambda: _device(pool, name1)["state"] == "ok", 60, f"{name1} rebuilt")
        job = next(j for j in _status(pool)["mirror"]["jobs"] if j["kind"] == "returning")
        assert job["state"] == "done" and job["bytes_done"] == VOLUME, job  # in full
        assert _read_direct(pool.volume_path("m"), 16, MiB, MiB) == new
        node.umount()
    assert_legs_identical(pool, tmp_path)


# ---------------------------------------------------------------------------
# item 3: a path that no longer carries the device's label


def test_a_device_whose_labels_are_lost_is_never_opened(tmp_path: Path) -> None:
    require("fusermount3")
    pool = TestPool(tmp_path, devices=2)
    pool.create_volume("m", VOLUME, mirrors=2)
    name1, leg1 = _leg(pool, 1)
    pool.vv("pool", "export", "tank")
    label = fmt.Label.unpack(read_dev(str(leg1), fmt.LABEL_A_OFFSET, fmt.LABEL_SIZE), str(leg1),
                             fmt.LABEL_A_OFFSET)
    with FileDevice(str(leg1)) as f:  # every header gone: labels, areas, rings, slots
        media.erase_metadata(f, label)
    before = _digest(leg1)
    pool.vv("pool", "import", "tank", "--force")
    with mounted(pool, *OPTIONS) as node:
        wait_until(lambda: _device(pool, name1)["state"] == "failed", 20, f"{name1} failed")
        assert any("label" in m for m in _messages(pool, "device-failed", name1)), _events(pool)
        _write(pool.volume_path("m"), 0, os.urandom(8 * MiB))
        assert _read_direct(pool.volume_path("m"), 1, MiB, MiB)  # served by the other leg
        node.umount()
    assert _digest(leg1) == before, "the node wrote into a file that is not the device"


def test_failover_never_switches_to_a_path_with_another_label(tmp_path: Path) -> None:
    with faulty_pool(tmp_path) as (pool, ffs), mounted(pool, *OPTIONS) as node:
        alternate = str(tmp_path / "backing" / "dev1.img")  # the same bytes, another way
        pool.vv("device", "paths", "tank", "d1", "--add", alternate)
        (tmp_path / "other").mkdir()
        other = TestPool(tmp_path / "other", name="other", devices=1, device_size=VOLUME * 2)
        os.replace(other.paths[0], alternate)  # the alternate path now names another disk
        # (the faultfs path still serves d1's bytes through its open descriptor)
        before = _digest(alternate)
        ffs.fail("dev1.img")
        _write(pool.volume_path("m"), 0, os.urandom(4 * MiB))
        wait_until(lambda: _device(pool, "d1")["state"] == "failed", 20, "d1 failed")
        refused = [m for m in _messages(pool, "path-failed", "d1") if alternate in m]
        assert refused and "carries device" in refused[0], _events(pool)
        ffs.heal()
        node.umount()
    assert _digest(alternate) == before, "pool data landed on another pool's disk"


# ---------------------------------------------------------------------------
# item 17: the path table; only listed paths are opened


def test_removing_the_active_path_moves_io_to_a_listed_path(tmp_path: Path) -> None:
    with faulty_pool(tmp_path) as (pool, ffs), mounted(pool, *OPTIONS) as node:
        primary = ffs.path("dev1.img")
        alternate = str(tmp_path / "backing" / "dev1.img")
        pool.vv("device", "paths", "tank", "d1", "--add", alternate)
        assert _path_states(pool) == {primary: "active", alternate: "standby"}
        out = json.loads(pool.vv("device", "paths", "tank", "d1", "--remove", primary,
                                 "--json").stdout)
        assert {p["path"]: p["state"] for p in out["paths"]} == {alternate: "active"}
        assert _path_states(pool) == {alternate: "active"}
        writes = ffs.state()["dev1.img"]["writes"]
        _write(pool.volume_path("m"), 0, os.urandom(4 * MiB))
        assert ffs.state()["dev1.img"]["writes"] == writes, "d1 still written at a removed path"
        assert _device(pool, "d1")["path"] == alternate
        node.umount()
    assert_legs_identical(pool, tmp_path)


def test_online_opens_a_device_only_at_a_listed_path(tmp_path: Path) -> None:
    with faulty_pool(tmp_path) as (pool, ffs), mounted(pool, *OPTIONS) as node:
        primary = ffs.path("dev1.img")
        alternate = str(tmp_path / "backing" / "dev1.img")
        pool.vv("device", "paths", "tank", "d1", "--add", alternate)
        pool.vv("device", "paths", "tank", "d1", "--remove", primary)
        pool.vv("device", "fail", "tank", "d1")
        _write(pool.volume_path("m"), 0, os.urandom(MiB))
        pool.vv("device", "online", "tank", "d1", "--wait", timeout=120)
        assert _device(pool, "d1")["state"] == "ok"
        assert _device(pool, "d1")["path"] == alternate
        writes = ffs.state()["dev1.img"]["writes"]
        _write(pool.volume_path("m"), 0, os.urandom(4 * MiB))
        assert ffs.state()["dev1.img"]["writes"] == writes, "d1 reopened at a removed path"
        node.umount()
    assert_legs_identical(pool, tmp_path)


def test_a_device_found_at_a_path_no_longer_listed_is_opened_at_a_listed_one(tmp_path: Path
                                                                             ) -> None:
    with faulty_pool(tmp_path) as (pool, ffs):
        primary = ffs.path("dev1.img")
        alternate = str(tmp_path / "backing" / "dev1.img")
        pool.vv("device", "paths", "tank", "d1", "--add", alternate)
        pool.vv("device", "paths", "tank", "d1", "--remove", primary)  # offline
        with mounted(pool, *OPTIONS) as node:
            assert _path_states(pool) == {alternate: "active"}
            writes = ffs.state()["dev1.img"]["writes"]
            _write(pool.volume_path("m"), 0, os.urandom(4 * MiB))
            time.sleep(0.1)
            assert ffs.state()["dev1.img"]["writes"] == writes, "d1 opened at a removed path"
            node.umount()


