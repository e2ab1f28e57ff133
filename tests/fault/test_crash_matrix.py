"""Crash at every write of a configuration commit, on every device.

A real Manager operation on a 3-device pool runs under a Recorder; then, for
each write it made (on any device), the devices are turned into crash images
right after that write: the write itself lost, torn after one sector, or
landed, with each other device's unflushed writes cut independently (none,
all, a random subset).  Every image must open at the old or the new
generation -- exactly one of the two configurations, never a mix -- and
vvfsck must find it clean, or ``--repair`` must make it clean (a second run
exits 0) without changing the configuration it opens at.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

import mapper
import vvfsck as fsck
from vvfs.api import Manager
from vvfs.testing.faultdev import Cut

from ..support.fsck_support import (
    Env,
    make_env,
    media_choice,
    metadata_regions,
    put_back,
    record_op,
)

OPS: dict[str, Callable[[Manager], object]] = {
    "create mirrored volume": lambda mgr: mgr.create_volume(
        "tank/new", mapper.VolumeSpec(name="", size=5 << 20, mirrors=2)),
    "grow volume": lambda mgr: mgr.resize_volume("tank/v0", 9 << 20),
    "remove volume": lambda mgr: mgr.remove_volume("tank/v1"),
}


def _in_regions(base: dict[str, list[tuple[int, bytes]]], key: str, offset: int) -> bool:
    """Does device *key*'s write at *offset* land in its labels or metadata areas?"""
    regions = next(r for p, r in base.items() if os.path.realpath(p) == key)
    return any(start <= offset < start + len(data) for start, data in regions)


def variants(key: str, length: int, keys: list[str], seed: int) -> list[dict[str, Cut]]:
    """Cuts for a crash right after a write of *length* bytes on device *key*."""
    others = [k for k in keys if k != key]
    out = [
        {key: Cut("all", torn=0)} | {k: Cut("none") for k in others},   # the write is lost
        {key: Cut("all")} | {k: Cut("all") for k in others},            # all issued writes landed
        {key: Cut("subset", seed=seed, torn=1)} | {k: Cut("subset", seed=seed + i)
                                                   for i, k in enumerate(others, 1)},
    ]
    if length > 512:
        out.append({key: Cut("all", torn=1)} | {k: Cut("none") for k in others})  # torn
    return out


def check_image(env: Env, before: dict, after: dict, what: str) -> None:
    opened = media_choice(env.paths).pool.to_dict()
    assert opened in (before, after), f"{what}: opens at a mix of generations"
    first = env.check()
    assert first.rc in (fsck.EXIT_CLEAN, fsck.EXIT_FOUND), f"{what}:\n{first.out}{first.err}"
    if first.rc == fsck.EXIT_FOUND:
        fixed = env.repair()
        assert fixed.rc == fsck.EXIT_FOUND, f"{what}:\n{fixed.out}{fixed.err}"
        again = env.check()
        assert again.rc == fsck.EXIT_CLEAN, f"{what}:\n{again.out}{again.err}"
    assert media_choice(env.paths).pool.to_dict() == opened, f"{what}: repair changed it"


@pytest.mark.parametrize("op", list(OPS))
def test_crash_at_every_write_of_a_commit(root, op):
    env = make_env(root, volumes=2)
    base = {p: metadata_regions(p) for p in env.paths}
    before = media_choice(env.paths).pool.to_dict()
    rec = record_op(env, OPS[op])
    after = rec.after.to_dict()
    assert after != before
    keys = rec.recorder.device_keys()
    assert sorted(keys) == sorted(os.path.realpath(p) for p in env.paths)
    writes = rec.recorder.writes()
    # per device: 2 slot copies, 2 commit records; new extents of any volume (and a
    # new mirror's checksum entries) are zeroed before (vvfs/control/zeroing.py):
    # crash points too -- a mirror's 2 legs and 2 entry ranges, a grown linear volume's
    # one new extent
    commit = [(k, w) for k, w in writes if _in_regions(base, k, w.offset)]
    assert len(commit) == 4 * len(env.paths)
    zeroing = {"create mirrored volume": 4, "grow volume": 1}.get(op, 0)
    assert len(writes) - len(commit) == zeroing
    images = 0
    for n, (key, w) in enumerate(writes):
        for i, cuts in enumerate(variants(key, len(w.data), keys, seed=n)):
            for p, regions in base.items():
                put_back(p, regions)
            rec.crash(env, rec.recorder.crash_writes(w.seq, cuts))
            check_image(env, before, after, f"write {n} ({key} at {w.offset}), variant {i}")
            images += 1
    assert images >= 3 * len(writes)


def test_crash_after_the_commit_before_the_catalog(root):
    env = make_env(root)
    rec = record_op(env, OPS["grow volume"])
    rec.crash(env, rec.recorder.crash_writes(rec.recorder.clock, Cut("all")))
    run = env.check()
    assert run.rc == fsck.EXIT_FOUND
    assert "pool tank is stale" in run.out
    assert env.repair().rc == fsck.EXIT_FOUND
    assert env.check().rc == fsck.EXIT_CLEAN
