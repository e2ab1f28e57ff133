"""`mount -t fuse.vvfs` and fstab lines, with what the project installs (SPEC: mount.vvfs).

mount(8) runs ``/sbin/mount.fuse.vvfs`` for a file system of type
``fuse.vvfs`` and looks in no other directory; when that is missing it runs
``mount.fuse3``, which runs the program ``vvfs`` from its default PATH
(mount(8) hands helpers no PATH of its own).  setup.cfg installs both
console scripts; ``make mount-helper`` (part of ``make``) links the first
into /sbin for a venv install, and a system-wide pip install puts the
second on that PATH.  Each test installs what it needs the way the project
does, for this interpreter's scripts, and puts back what was there before.
The mounts are real; they are unmounted in ``finally``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.mountutil import (
    BIN,
    MiB,
    MountedNode,
    TestPool,
    alive,
    is_mounted,
    require,
    run,
    wait_until,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HELPER = "/sbin/mount.fuse.vvfs"
#: where a system-wide pip install (as root) puts console scripts; on mount.fuse3's PATH
SYSTEM_BIN = "/usr/local/bin"


def script(name: str) -> str:
    """The console script *name* beside this interpreter, or fail saying how to install it."""
    path = BIN / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: install vvfs's console scripts (setup.cfg) into"
                    f" this environment ('pip install -e .', or 'make')")
    return str(path)


@contextlib.contextmanager
def put_back(path: str) -> Iterator[None]:
    """Whatever *path* is now (a symlink, or nothing), it is again on leaving."""
    if os.path.exists(path) and not os.path.islink(path):
        pytest.fail(f"{path} exists and is not a symlink; not touching it")
    before = os.readlink(path) if os.path.islink(path) else None
    try:
        yield
    finally:
        if os.path.lexists(path):
            os.unlink(path)
        if before is not None:
            os.symlink(before, path)


@contextlib.contextmanager
def helper_linked_by_make() -> Iterator[None]:
    """/sbin/mount.fuse.vvfs as ``make mount-helper`` links it, to this environment's script."""
    require("make")
    target = script("mount.fuse.vvfs")
    with put_back(HELPER):
        run("make", "-s", "-C", str(ROOT), "mount-helper", f"MOUNT_HELPER_TARGET={target}")
        assert os.readlink(HELPER) == target
        yield


@contextlib.contextmanager
def vvfs_on_the_system_path() -> Iterator[None]:
    """No /sbin helper, and ``vvfs`` in /usr/local/bin as a system pip install puts it."""
    target = script("vvfs")
    system = os.path.join(SYSTEM_BIN, "vvfs")
    with put_back(HELPER), put_back(system):
        if os.path.lexists(HELPER):
            os.unlink(HELPER)
        if os.path.lexists(system):
            os.unlink(system)
        os.symlink(target, system)
        yield


def _adopt(pool: TestPool) -> MountedNode:
    """A MountedNode for a node that something else started on pool.mnt."""
    node = MountedNode(pool)
    wait_until(lambda: os.path.exists(os.path.join(pool.state, "node.pid")), 10, "node.pid")
    with open(os.path.join(pool.state, "node.pid")) as f:
        node.pid = int(f.readline())
    return node


def _mount_and_unmount(pool: TestPool, *mount_args: str) -> None:
    """Run mount(8) with *mount_args*, see the pool's volume, umount; clean up in any case."""
    mnt = str(pool.mnt)
    node = MountedNode(pool)
    try:
        run("mount", *mount_args)
        node = _adopt(pool)
        assert os.listdir(os.path.join(mnt, pool.name)) == ["v"]
        run("umount", mnt)
        wait_until(lambda: not alive(node.pid), 30, "the node to exit")  # type: ignore[arg-type]
        assert not is_mounted(mnt)
    finally:
        node.cleanup()


def test_mount_t_fuse_vvfs_runs_the_helper_make_links(fresh_pool: TestPool) -> None:
    require("mount", "umount")
    fresh_pool.create_volume("v", 8 * MiB)
    with helper_linked_by_make():
        _mount_and_unmount(fresh_pool, "-t", "fuse.vvfs", "-o",
                           f"state_dir={fresh_pool.state},_netdev", fresh_pool.name,
                           str(fresh_pool.mnt))


def test_an_fstab_line_mounts_the_pool(fresh_pool: TestPool, tmp_path: Path) -> None:
    require("mount", "umount")
    fresh_pool.create_volume("v", 8 * MiB)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{fresh_pool.name} {fresh_pool.mnt} fuse.vvfs "
                     f"defaults,_netdev,nofail,state_dir={fresh_pool.state} 0 0\n")
    with helper_linked_by_make():
        _mount_and_unmount(fresh_pool, "-a", "-T", str(fstab))


def test_mount_fuse3_runs_the_vvfs_program(fresh_pool: TestPool) -> None:
    require("mount", "umount")
    if not os.path.exists("/sbin/mount.fuse3"):
        pytest.fail("this test needs /sbin/mount.fuse3 (Debian package fuse3)")
    fresh_pool.create_volume("v", 8 * MiB)
    with vvfs_on_the_system_path():
        _mount_and_unmount(fresh_pool, "-t", "fuse.vvfs", "-o",
                           f"state_dir={fresh_pool.state}", fresh_pool.name,
                           str(fresh_pool.mnt))
