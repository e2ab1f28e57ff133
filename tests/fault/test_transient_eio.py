"""A device that does not answer for a moment is never forgotten (issue 11, item 7).

A read EIO while a pool is opened made the device "missing" and the catalog
forget its path for good: every later commit was refused, ``vv device
online`` said it had not failed, vvfsck said clean.  The device's backing
file is served by ``tests/support/faultfs.py`` (a FUSE file system that
fails on command), so the management code sees exactly what a flaky disk
gives it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ..support.faultfs import FaultFS, faultfs_mounted
from ..support.fsck_support import make_env
from ..support.mountutil import GiB, TestPool, mounted, require

pytestmark = pytest.mark.slow


def _linear_pool(tmp_path: Path, ffs: FaultFS) -> TestPool:
    """A linear pool on dev0.img (a plain file) and dev1.img (served by faultfs)."""
    dev0 = tmp_path / "dev0.img"
    with open(dev0, "wb") as f:
        f.truncate(GiB)
    return TestPool(tmp_path, paths=[str(dev0), ffs.path("dev1.img")])


def _faulty(tmp_path: Path):  # type: ignore[no-untyped-def]
    require("fusermount3")
    backing = tmp_path / "backing"
    backing.mkdir()
    with open(backing / "dev1.img", "wb") as f:
        f.truncate(GiB)
    return faultfs_mounted(backing, tmp_path / "fault")


def _devices(pool: TestPool) -> dict[str, dict]:
    out = json.loads(pool.vv("device", "list", "tank", "--json").stdout)
    return {d["name"]: d for d in out}


def test_a_device_unreadable_during_a_create_is_found_again(tmp_path: Path) -> None:
    with _faulty(tmp_path) as ffs:
        pool = _linear_pool(tmp_path, ffs)
        ffs.fail("dev1.img")
        refused = pool.vv("volume", "create", "tank/a", "--size", "64M", check=False)
        assert refused.returncode == 1, refused
        ffs.heal()
        pool.vv("volume", "create", "tank/b", "--size", "64M")
        d1 = _devices(pool)["d1"]
        assert d1["path"] == ffs.path("dev1.img") and d1["state"] == "ok", d1


def test_a_device_unreadable_during_a_create_on_a_node_is_found_again(tmp_path: Path
                                                                     ) -> None:
    with _faulty(tmp_path) as ffs:
        pool = _linear_pool(tmp_path, ffs)
        with mounted(pool, "probe_interval=0") as node:
            ffs.fail("dev1.img")
            refused = pool.vv("volume", "create", "tank/a", "--size", "64M", check=False)
            assert refused.returncode == 1, refused
            ffs.heal()
            pool.vv("volume", "create", "tank/b", "--size", "64M")
            assert os.path.exists(pool.volume_path("b"))
            node.umount()
        with mounted(pool, "probe_interval=0") as node:  # and across a remount
            pool.vv("volume", "create", "tank/c", "--size", "64M")
            node.umount()
        assert _devices(pool)["d1"]["path"] == ffs.path("dev1.img")


def test_online_of_a_missing_device_says_it_is_missing(tmp_path: Path) -> None:
    with _faulty(tmp_path) as ffs:
        pool = _linear_pool(tmp_path, ffs)
        ffs.fail("dev1.img")
        out = pool.vv("device", "online", "tank", "d1", check=False)
        assert out.returncode == 1, out
        assert "is missing, not failed" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_vvfsck_reports_a_catalog_that_lost_a_device_path(tmp_path: Path) -> None:
    env = make_env(tmp_path, n=2)
    with env.manager() as mgr:
        row = mgr.catalog.find_pool("tank")
        assert row is not None
        d1 = mgr.show_pool("tank").pool.device("d1")
        paths = mgr.catalog.device_paths(row.uuid)
    with env.manager() as mgr:  # the catalog as item 7 left it: d1 with no path
        mgr.catalog.sync_pool(env.media_pool(), {u: p for u, p in paths.items()
                                                 if u != d1.uuid})
    found = env.check()
    assert found.rc == 1, found.out + found.err
    assert any("device d1 is at" in f and "remembers no path for it" in f
               for f in found.findings()), found.out
    env.repair()
    assert env.check().rc == 0
    with env.manager() as mgr:
        assert mgr.catalog.device_paths(row.uuid)[d1.uuid] == paths[d1.uuid]
