"""Volumes as disks: loop-attach, mkfs, use, check, remount the pool, compare.

Each test makes its own loop device over a volume file and its own file
system mount, and removes both by name in ``finally`` (inner first), before
the node's mount goes.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ..support.mountutil import (
    MiB,
    TestPool,
    fs_mounted,
    loop_device,
    mounted,
    require,
    run,
)

pytestmark = pytest.mark.slow

KiB = 1024


@pytest.fixture(scope="module")
def disk_pool(tmp_path_factory: pytest.TempPathFactory) -> TestPool:
    require("losetup")
    pool = TestPool(tmp_path_factory.mktemp("disks"))
    pool.create_volume("ext", 128 * MiB, mirrors=2)
    pool.create_volume("xfs", 320 * MiB, stripes=2, stripe_size=64 * KiB)
    pool.create_volume("busy", 160 * MiB)
    return pool


def make_tree(root: Path, files: int = 120, seed: int = 3) -> dict[str, str]:
    """Write a tree of files of assorted sizes; return relative path -> sha256."""
    rng = random.Random(seed)
    sums = {}
    for i in range(files):
        rel = Path(f"d{i % 7}") / f"s{i % 3}" / f"f{i}.bin"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.choice([0, 1, 511, 4096, 70000, 300000]) + rng.randrange(4096))
        path.write_bytes(data)
        sums[str(rel)] = hashlib.sha256(data).hexdigest()
    return sums


def tree_sums(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if rel.startswith("lost+found"):
                continue
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _cycle(pool: TestPool, tmp_path: Path, volume: str, mkfs: list[str],
           check: list[str]) -> None:
    """mkfs on a loop device over the volume, copy a tree, check; remount; compare."""
    src = tmp_path / "src"
    sums = make_tree(src)
    with mounted(pool) as node:
        with loop_device(pool.volume_path(volume)) as dev:
            run(*mkfs, dev)
            with fs_mounted(dev, tmp_path / "fs") as fs:
                run("cp", "-a", f"{src}/.", str(fs))
            res = run(*check, dev, check=False)
            assert res.returncode == 0, f"{check[0]} found problems:\n{res.stdout}{res.stderr}"
        node.umount()
    with mounted(pool) as node:
        with loop_device(pool.volume_path(volume)) as dev, \
                fs_mounted(dev, tmp_path / "fs", "-o", "ro") as fs:
            assert tree_sums(fs) == sums
        node.umount()


def test_ext4_on_a_loop_device_survives_a_remount(disk_pool: TestPool, tmp_path: Path) -> None:
    require("mkfs.ext4", "e2fsck")
    _cycle(disk_pool, tmp_path, "ext", ["mkfs.ext4", "-q", "-F"], ["e2fsck", "-fn"])


def test_xfs_on_a_loop_device_survives_a_remount(disk_pool: TestPool, tmp_path: Path) -> None:
    require("mkfs.xfs", "xfs_repair")
    _cycle(disk_pool, tmp_path, "xfs", ["mkfs.xfs", "-q", "-f"], ["xfs_repair", "-n"])


def _sync_loop(stop: threading.Event, counts: list[int]) -> None:
    while not stop.is_set():
        subprocess.run(["sync"], timeout=60, check=True)
        counts[0] += 1


def test_ext4_on_loop_with_concurrent_sync_does_not_hang(disk_pool: TestPool,
                                                          tmp_path: Path) -> None:
    """Writers and a `sync` loop on ext4-on-loop-on-vvfs all finish in time (F3.7)."""
    require("mkfs.ext4", "e2fsck")
    with mounted(disk_pool) as node:
        with loop_device(disk_pool.volume_path("busy")) as dev:
            run("mkfs.ext4", "-q", "-F", dev)
            with fs_mounted(dev, tmp_path / "fs") as fs:
                stop, counts = threading.Event(), [0]
                syncer = threading.Thread(target=_sync_loop, args=(stop, counts))
                syncer.start()
                started = time.monotonic()
                try:
                    writers = [subprocess.Popen(["dd", "if=/dev/zero", f"of={fs}/w{i}",
                                                 "bs=1M", "count=40", "status=none"])
                               for i in range(3)]
                    for w in writers:
                        assert w.wait(timeout=90) == 0
                    run("sync", timeout=60)
                finally:
                    stop.set()
                    syncer.join(timeout=90)
                assert not syncer.is_alive(), "sync hung"
                assert counts[0] > 0
                assert time.monotonic() - started < 90
            res = run("e2fsck", "-fn", dev, check=False)
            assert res.returncode == 0, res.stdout + res.stderr
        node.umount()
