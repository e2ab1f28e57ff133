"""Live management of a mounted pool: `vv` talks to the running node (SPEC F3.6, F7.1).

A real node (``vv mount``, daemonized) serves a pool on sparse files; `vv`
runs as a subprocess with VVFS_STATE_DIR pointing at the node's state
directory.  Teardown always lazily unmounts, then terminates, then kills the
node (``tests/support/mountutil.py``).  The module's mount lies under a directory
that other users may traverse, so that a second user can be tried.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.mountutil import (
    MiB,
    MountedNode,
    TestPool,
    is_mounted,
    loop_device,
    mounted,
    public_dir,
    require,
    wait_until,
)

pytestmark = pytest.mark.slow

NOBODY = 65534


@pytest.fixture(scope="module")
def public_root() -> Iterator[Path]:
    """A 0755 directory in /tmp (pytest's own are 0700), removed when unmounted."""
    with public_dir("vvfs-live-") as root:
        yield root


@pytest.fixture(scope="module")
def live(public_root: Path) -> Iterator[MountedNode]:
    """Pool tank mounted by a node for the whole module."""
    require("fusermount3")
    pool = TestPool(public_root)
    for p in pool.paths:
        os.chmod(p, 0o600)
    with mounted(pool) as node:
        yield node


def vol(node: MountedNode, name: str) -> Path:
    return Path(node.pool.volume_path(name))


def as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", "--", *cmd], capture_output=True, text=True,
                          timeout=30, check=False)


# ---------------------------------------------------------------------------
# changes take effect in the mount at once


def test_created_volume_appears_at_once(live):
    live.pool.vv("volume", "create", "tank/appear", "--size", "16M")
    assert vol(live, "appear").stat().st_size == 16 * MiB


def test_resized_volume_grows_at_once(live):
    live.pool.vv("volume", "create", "tank/grow", "--size", "8M")
    assert vol(live, "grow").stat().st_size == 8 * MiB
    live.pool.vv("volume", "resize", "tank/grow", "--size", "24M")
    assert vol(live, "grow").stat().st_size == 24 * MiB
    with open(vol(live, "grow"), "r+b") as f:
        f.seek(20 * MiB)
        f.write(b"past the old end")
        f.seek(20 * MiB)
        assert f.read(16) == b"past the old end"


def test_removed_volume_disappears_at_once(live):
    live.pool.vv("volume", "create", "tank/vanish", "--size", "8M")
    assert vol(live, "vanish").exists()
    live.pool.vv("volume", "remove", "tank/vanish")
    assert not vol(live, "vanish").exists()
    assert "vanish" not in os.listdir(live.pool.mnt / "tank")


def test_renamed_volume_keeps_its_data(live):
    live.pool.vv("volume", "create", "tank/before", "--size", "8M")
    with open(vol(live, "before"), "r+b") as f:
        f.write(b"kept across a rename")
    live.pool.vv("volume", "rename", "tank/before", "after")
    assert not vol(live, "before").exists()
    with open(vol(live, "after"), "rb") as f:
        assert f.read(20) == b"kept across a rename"


# ---------------------------------------------------------------------------
# open volumes


def test_open_volume_is_not_removed(live):
    live.pool.vv("volume", "create", "tank/busy", "--size", "8M")
    fd = os.open(vol(live, "busy"), os.O_RDONLY)
    try:
        r = live.pool.vv("volume", "remove", "tank/busy", check=False)
        assert r.returncode == 1
        assert r.stderr == "vv: volume tank/busy is open; close it before it can be removed\n"
        assert vol(live, "busy").exists()
    finally:
        os.close(fd)


def test_loop_attached_volume_is_not_renamed(live):
    # A loop device holds the volume file open: renaming it would leave the
    # loop on a file that no longer exists under any name.
    live.pool.vv("volume", "create", "tank/attached", "--size", "8M")
    with loop_device(str(vol(live, "attached"))):
        r = live.pool.vv("volume", "rename", "tank/attached", "moved", check=False)
        assert r.returncode == 1
        assert r.stderr == ("vv: volume tank/attached is open; close it before it can be"
                            " renamed\n")
        assert vol(live, "attached").exists() and not vol(live, "moved").exists()


def test_closed_volume_is_removed(live):
    live.pool.vv("volume", "create", "tank/closed", "--size", "8M")
    os.close(os.open(vol(live, "closed"), os.O_RDONLY))
    # FUSE sends RELEASE asynchronously after close(2): give it a moment.
    wait_until(lambda: live.pool.vv("volume", "remove", "tank/closed",
                                    check=False).returncode == 0, 10, "the removal")
    assert not vol(live, "closed").exists()


def test_status_shows_who_has_a_volume_open(live):
    live.pool.vv("volume", "create", "tank/watched", "--size", "8M")
    fd = os.open(vol(live, "watched"), os.O_RDONLY)
    try:
        doc = json.loads(live.pool.vv("status", "--json").stdout)
    finally:
        os.close(fd)
    assert doc["running"] is True and doc["pid"] == live.pid
    (pool,) = [p for p in doc["pools"] if p["name"] == "tank"]
    (entry,) = [v for v in pool["volumes"] if v["name"] == "watched"]
    assert entry["open"] >= 1 and os.getpid() in entry["pids"]


def test_status_table_names_the_node(live):
    out = live.pool.vv("status").stdout
    assert out.startswith(f"node pid {live.pid}  socket ")
    assert f"mounted at {live.mnt}" in out


# ---------------------------------------------------------------------------
# `vv` goes through the socket while the node holds the lock


def test_vv_is_not_refused_by_the_nodes_lock(live):
    with open(os.path.join(live.pool.state, "lock")) as f:
        assert f.read().startswith("vvfs node on ")
    r = live.pool.vv("volume", "create", "tank/via-socket", "--size", "4M", check=False)
    assert (r.returncode, r.stderr) == (0, "")


def test_refusal_through_the_socket_is_one_line(live):
    r = live.pool.vv("volume", "create", "tank/huge", "--size", "100G", check=False)
    assert r.returncode == 1
    assert r.stderr.startswith("vv: pool tank: ") and r.stderr.count("\n") == 1


# ---------------------------------------------------------------------------
# a second user


def test_second_user_cannot_open_a_0600_volume(live):
    live.pool.vv("volume", "create", "tank/private", "--size", "4M")
    r = as_nobody("head", "-c", "1", str(vol(live, "private")))
    assert r.returncode != 0 and os.strerror(errno.EACCES) in r.stderr


def test_second_user_reads_but_cannot_write_a_0644_volume(live):
    live.pool.vv("volume", "create", "tank/shared", "--size", "4M", "--mode", "0644")
    assert as_nobody("head", "-c", "1", str(vol(live, "shared"))).returncode == 0
    r = as_nobody("sh", "-c", ': >> "$1"', "sh", str(vol(live, "shared")))
    assert r.returncode != 0 and os.strerror(errno.EACCES) in r.stderr


# ---------------------------------------------------------------------------
# committed to media


def test_live_changes_are_on_media_after_unmount(fresh_pool: TestPool):
    require("fusermount3")
    with mounted(fresh_pool) as node:
        vv = fresh_pool.vv
        vv("volume", "create", "tank/a", "--size", "8M")
        vv("volume", "create", "tank/b", "--size", "8M")
        vv("volume", "create", "tank/c", "--size", "8M")
        vv("volume", "resize", "tank/a", "--size", "40M")
        vv("volume", "rename", "tank/b", "bb")
        vv("volume", "remove", "tank/c")
        node.umount()
    assert not is_mounted(fresh_pool.mnt)
    rows = json.loads(fresh_pool.vv("volume", "list", "tank", "--json").stdout)
    assert {r["name"]: r["size"] for r in rows} == {"a": 40 * MiB, "bb": 8 * MiB}
