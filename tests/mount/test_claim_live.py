"""Devices and pools a running node serves: never claimed, never destroyed under it.

A real node (``vv mount``) serves pool tank (a mirrored volume) from state
directory A; a second state directory B -- another host id on this host --
tries to take tank's devices with ``--force``.  The node holds every device
it serves (vvfs/io/hold.py), so the refusal names it.  `vv` also talks to
that node with relative paths, resolved where the command runs.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from metadata import media
from vvfs.io import hold
from vvfs.io.filedev import FileDevice

from ..support.mountutil import (
    VV,
    MiB,
    MountedNode,
    TestPool,
    is_mounted,
    loop_device,
    mounted,
    require,
    run,
)
from ..support.util import sparse_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MountedNode]:
    """Pool tank (mirrored volume m) mounted from state directory A for the module."""
    require("fusermount3")
    pool = TestPool(tmp_path_factory.mktemp("claim"), devices=2)
    pool.create_volume("m", 16 * MiB, mirrors=2)
    with mounted(pool) as n:
        yield n


def vv_b(tmp_path: Path, *args: str, cwd: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    """`vv ARGS` with state directory B (another host id), offline."""
    env = {**os.environ, "VVFS_STATE_DIR": str(tmp_path / "b")}
    return run(VV, *args, check=False, env=env, cwd=cwd)


def pool_of(path: str) -> str | None:
    with FileDevice(path, readonly=True) as dev:
        label, _ = media.read_label(dev)
    return label.pool_uuid if label is not None else None


def tank_uuid(node: MountedNode) -> str:
    return str(json.loads(node.pool.vv("pool", "show", "tank", "--json").stdout)["uuid"])


def test_the_node_locks_every_device_it_serves(node: MountedNode) -> None:
    assert [hold.is_locked(p) for p in node.pool.paths] == [True, True]


def test_force_does_not_add_a_device_a_node_serves(node: MountedNode, tmp_path: Path) -> None:
    other = str(tmp_path / "other.img")
    with open(other, "wb") as f:
        f.truncate(256 * MiB)
    assert vv_b(tmp_path, "pool", "create", "p2", other).returncode == 0
    victim = node.pool.paths[1]
    res = vv_b(tmp_path, "device", "add", "p2", victim, "--force")
    assert res.returncode == 1
    assert f"{victim} is in use by vvfs: pid {node.pid} (" in res.stderr, res.stderr
    assert pool_of(victim) == tank_uuid(node)


def test_force_does_not_create_a_pool_on_a_device_a_node_serves(node: MountedNode,
                                                                tmp_path: Path) -> None:
    victim = node.pool.paths[0]
    res = vv_b(tmp_path, "pool", "create", "p3", victim, "--force")
    assert res.returncode == 1
    assert f"{victim} is in use by vvfs: pid {node.pid} (" in res.stderr, res.stderr
    assert pool_of(victim) == tank_uuid(node)


def test_destroy_of_a_mounted_pool_is_refused(node: MountedNode) -> None:
    res = node.pool.vv("pool", "destroy", "tank", "--yes", check=False)
    assert res.returncode == 1
    assert f"pool tank is mounted on {node.mnt}; unmount it" in res.stderr, res.stderr
    assert os.listdir(os.path.join(node.mnt, "tank")) == ["m"]
    assert pool_of(node.pool.paths[0]) == tank_uuid(node)


def test_device_add_through_the_node_takes_a_relative_path(node: MountedNode,
                                                           tmp_path: Path) -> None:
    with open(tmp_path / "spare.img", "wb") as f:
        f.truncate(256 * MiB)
    res = run(VV, "device", "add", "tank", "spare.img", check=False, env=node.pool.env(),
              cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    listed = node.pool.vv("device", "list", "tank", "--json").stdout
    assert f'"path": "{tmp_path / "spare.img"}"' in listed


def test_the_node_holds_a_block_device_exclusively(tmp_path: Path) -> None:
    require("fusermount3", "losetup")
    files = [sparse_file(tmp_path / f"blk{i}.img", 256 * MiB) for i in range(2)]
    with loop_device(files[0], direct_io=False) as l0, loop_device(files[1],
                                                                   direct_io=False) as l1:
        pool = TestPool(tmp_path, devices=0, paths=[l0, l1])
        with mounted(pool) as n:
            assert is_mounted(n.mnt)
            with pytest.raises(OSError) as exc:
                os.close(os.open(l0, os.O_RDONLY | os.O_EXCL))
    assert exc.value.errno == 16  # EBUSY
