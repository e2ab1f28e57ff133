"""Owner, group and mode through a real mount (issue 11 item 10, SPEC F2.3).

Root's chown and chmod on MNT/POOL/VOL are committed to the pool by the
node; anyone else is refused.  An owner that is not valid, written to the
media by another program, never takes the node down.  A real node
(``vv mount``, daemonized) serves a pool on sparse files; teardown always
lazily unmounts, then terminates, then kills it (tests/support/mountutil.py).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..handler.test_fs_handlers import bad_on_media
from ..support.mountutil import MiB, TestPool, alive, mounted, public_dir, require
from .test_live import NOBODY, as_nobody

pytestmark = pytest.mark.slow


@pytest.fixture
def public_root() -> Iterator[Path]:
    """A 0755 directory in /tmp (pytest's own are 0700), so that nobody can reach the mount."""
    with public_dir("vvfs-attrs-") as root:
        yield root


@pytest.fixture
def pool(public_root: Path) -> TestPool:
    require("fusermount3", "setpriv")
    p = TestPool(public_root, devices=2, device_size=256 * MiB)
    p.create_volume("a", 8 * MiB, owner=7, group=8, mode=0o640)
    return p


def show(pool: TestPool, name: str) -> dict:
    return json.loads(pool.vv("volume", "show", f"{pool.name}/{name}", "--json").stdout)


def test_root_chown_through_the_mount_is_committed(pool):
    with mounted(pool):
        path = pool.volume_path("a")
        os.chown(path, 1000, 100)
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (1000, 100)
        v = show(pool, "a")
        assert (v["owner"], v["group"], v["mode"]) == (1000, 100, "0640")


def test_root_chmod_through_the_mount_is_committed(pool):
    with mounted(pool):
        path = pool.volume_path("a")
        os.chmod(path, 0o2660)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o2660
        assert show(pool, "a")["mode"] == "2660"


def test_chown_through_the_mount_survives_a_remount(pool):
    with mounted(pool) as node:
        os.chown(pool.volume_path("a"), 1234, 4321)
        node.umount()
    with mounted(pool):
        st = os.stat(pool.volume_path("a"))
        assert (st.st_uid, st.st_gid) == (1234, 4321)


def test_chmod_by_the_owner_who_is_not_root_is_refused(pool):
    pool.vv("volume", "set", f"{pool.name}/a", "--owner", str(NOBODY), "--mode", "0600")
    with mounted(pool):
        path = pool.volume_path("a")
        r = as_nobody("chmod", "0666", path)
        assert r.returncode != 0 and "not permitted" in r.stderr
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert show(pool, "a")["mode"] == "0600"


def test_owner_not_valid_on_media_does_not_kill_the_node(pool):
    bad_on_media(pool, "a", owner=1 << 32)
    with mounted(pool) as node:
        assert os.listdir(os.path.join(node.mnt, pool.name)) == ["a"]
        assert os.stat(pool.volume_path("a")).st_uid == 0
        assert node.pid is not None and alive(node.pid)


def test_owner_not_valid_on_media_can_be_set_right_through_the_node(pool):
    bad_on_media(pool, "a", owner=1 << 32)
    with mounted(pool):
        os.listdir(os.path.join(pool.mnt, pool.name))
        pool.vv("volume", "set", f"{pool.name}/a", "--owner", "5")
        assert os.stat(pool.volume_path("a")).st_uid == 5


def test_mode_with_special_bits_is_refused_while_mounted_unless_asked(pool):
    with mounted(pool):
        r = pool.vv("volume", "set", f"{pool.name}/a", "--mode", "4755", check=False)
        assert r.returncode == 1 and "--special-bits" in r.stderr
        assert stat.S_IMODE(os.stat(pool.volume_path("a")).st_mode) == 0o640
