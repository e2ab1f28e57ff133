"""The bad days of issue 4, one test each: what happened, what vvfsck says, and that
``vvfsck --repair`` followed by ``vvfsck`` is clean."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mapper
import vvfsck as fsck
from metadata import format as fmt
from metadata import media
from metadata.catalog import Catalog, CatalogError
from vvfs.api import Manager
from vvfs.io.filedev import FileDevice
from vvfs.testing.faultdev import Cut, FaultyDevice

from ..support.fsck_support import (
    assert_repaired_clean,
    catalog_pool,
    commit_raw,
    copy_sparse,
    label_of,
    make_env,
    media_choice,
    pending_resync,
    record_op,
    state_dir,
    vvfsck,
    zero,
)

ROOT = Path(__file__).resolve().parents[2]


def add_volume(env, name: str = "extra") -> None:
    with env.manager() as mgr:
        mgr.create_volume(f"tank/{name}", mapper.VolumeSpec(name="", size=1 << 20))


def test_torn_label_copy(env):
    """Relabelling wrote only the first sector of label B before the power went."""
    label = label_of(env.paths[0])
    newer = dataclasses.replace(label, created=label.created + 60)
    with FileDevice(env.paths[0]) as f:
        dev = FaultyDevice(f).tear_write(1, start=label.geometry.label_b)
        with pytest.raises(Exception, match="torn after 1 sectors"):
            media.write_labels(dev, newer)
    run = env.check()
    assert run.findings() == [
        (f"{env.paths[0]} at byte {label.geometry.label_b}: label B: checksum mismatch"
        " [repair: rewrite label B from label A]")]
    assert_repaired_clean(env)


def test_all_labels_lost_on_one_device(env):
    """Both labels of one device wiped: rebuilt from the others, and the pool works again."""
    label = label_of(env.paths[1])
    zero(env.paths[1], 0, fmt.MDA_A_OFFSET)
    zero(env.paths[1], label.geometry.label_b, fmt.LABEL_SIZE)
    run = env.check()
    assert [ln.split(": ")[0] for ln in run.findings()] == [f"{env.paths[1]} at byte 4096"]
    assert_repaired_clean(env)
    add_volume(env)  # the Manager opens and commits to all three devices again
    assert media_choice(env.paths).behind == []


def test_metadata_rolled_back_to_an_older_image(env):
    """A device file replaced by a copy taken two generations ago."""
    copy_sparse(env.paths[2], env.root / "old")
    add_volume(env, "a")
    add_volume(env, "b")
    copy_sparse(env.root / "old", env.paths[2])
    run = env.check()
    assert [ln.split(": ")[1] for ln in run.findings()] == ["stale"]
    assert "its newest generation is 3, the pool's is 5" in run.out
    assert_repaired_clean(env)
    assert media_choice(env.paths).stale == []


def test_eio_in_the_middle_of_a_commit_blames_only_that_device(env):
    choice = media_choice(env.paths)
    new = choice.pool.copy()
    new.generation = choice.max_seen + 1
    new.volumes[0].mode = 0o644
    devs = [FileDevice(p) for p in env.paths]
    try:
        faulty = FaultyDevice(devs[1]).fail_writes(after=1)
        wrapped = [devs[0], faulty, devs[2]]
        targets = [media.Target(d, media.read_label(d)[0]) for d in wrapped]
        with pytest.raises(media.CommitError) as err:
            media.commit_generation(targets, new)
        assert env.paths[1] in str(err.value)
        assert env.paths[0] not in str(err.value) and env.paths[2] not in str(err.value)

        out: list[str] = []
        findings = fsck.Checker(fsck.GivenDevices(wrapped), emit=out.append).check()
        assert findings and {f.where for f in findings} == {env.paths[1]}

        out.clear()
        rc = fsck.Checker(fsck.GivenDevices(wrapped), emit=out.append).run(
            repair=True, confirm=lambda q: True)
        assert rc == fsck.EXIT_LEFT  # the device still fails its writes
        failed = [ln for ln in out if ln.startswith("repair failed: ")]
        assert failed and all(ln.startswith(f"repair failed: {env.paths[1]} ") for ln in failed)

        faulty.heal()
        rc = fsck.Checker(fsck.GivenDevices(wrapped), emit=out.append).run(
            repair=True, confirm=lambda q: True)
        assert rc == fsck.EXIT_FOUND
        assert fsck.Checker(fsck.GivenDevices(wrapped), emit=out.append).run() == 0
    finally:
        for d in devs:
            d.close()
    assert media_choice(env.paths).generation == choice.generation


def test_catalog_deleted(env):
    for name in os.listdir(env.state):
        if name.startswith("catalog.sqlite"):
            os.unlink(os.path.join(env.state, name))
    run = env.check()
    assert run.rc == fsck.EXIT_FOUND
    assert "pool tank is imported on this host (media generation 3) but not in the catalog" \
        in run.out
    assert_repaired_clean(env)


def test_catalog_stale_after_a_crash_before_its_sync(env, monkeypatch):
    def fail(self, pool, paths, previous=None):
        raise CatalogError("disk full (injected)")

    with env.manager() as mgr:
        monkeypatch.setattr(Catalog, "sync_pool", fail)
        with pytest.raises(CatalogError):
            mgr.create_volume("tank/late", mapper.VolumeSpec(name="", size=1 << 20))
        monkeypatch.undo()
    run = env.check()
    assert "pool tank is stale: generation 3, media 4" in run.out
    assert_repaired_clean(env)
    assert catalog_pool(env).has_volume("late")


def test_catalog_ahead_of_the_media(env):
    for i, p in enumerate(env.paths):
        copy_sparse(p, env.root / f"image{i}")
    add_volume(env)
    for i, p in enumerate(env.paths):
        copy_sparse(env.root / f"image{i}", p)
    run = env.check()
    assert "pool tank is ahead of the media: generation 4, media 3" in run.out
    assert_repaired_clean(env)
    assert not catalog_pool(env).has_volume("extra")


def test_ring_wraps_then_a_crash_tears_a_slot(env):
    for i in range(4):  # generations 4-11: the 8-slot ring has wrapped
        add_volume(env, f"w{i}")
        with env.manager() as mgr:
            mgr.remove_volume(f"tank/w{i}")
    assert media_choice(env.paths).generation == 11
    rec = record_op(env, lambda mgr: mgr.create_volume(
        "tank/torn", mapper.VolumeSpec(name="", size=1 << 20)))
    key = os.path.realpath(env.paths[1])
    [first, *_] = [w for w in rec.recorder.writes(key)]
    torn_at = first[1].seq  # disk1's first slot write of generation 12, torn after 1 sector
    rec.crash(env, rec.recorder.crash_writes(torn_at, {key: Cut("all", torn=1)}))
    choice = media_choice(env.paths)
    assert choice.generation == 11 and choice.pool.to_dict() == rec.before.to_dict()
    run = env.check()
    assert run.rc == fsck.EXIT_FOUND
    assert "generation 12: an interrupted commit" in run.out
    assert_repaired_clean(env)
    add_volume(env, "after")
    assert media_choice(env.paths).generation == 12


def test_devices_shuffled_to_new_paths_on_a_new_host(env):
    with env.manager() as mgr:
        mgr.export_pool("tank")
    moved = env.root / "elsewhere"
    moved.mkdir()
    for i, p in enumerate(reversed(env.paths)):
        os.rename(p, moved / f"lun{i}")
    state = state_dir(env.root / "host2", [str(moved)], host_id="host-2")
    with Manager(state) as mgr:
        pool = mgr.import_pool("tank")
    assert pool.active_host == "host-2"
    run = vvfsck("--pool", "tank", "--state-dir", state)
    assert run.rc == fsck.EXIT_CLEAN, run.out
    assert vvfsck(moved).rc == fsck.EXIT_CLEAN


def test_two_devices_with_the_same_uuid(env):
    clone = str(env.root / "devs" / "disk2-clone")
    copy_sparse(env.paths[2], clone)  # cloned, then the pool moved on
    add_volume(env)
    run = env.check()
    assert run.rc == fsck.EXIT_LEFT
    [line] = run.findings()
    assert line.startswith(f"{clone} at byte 4096: device uuid {label_of(clone).device_uuid}"
                           f" is also on {env.paths[2]} (cloned media?)")
    # given both on the command line, the newer one is checked and the stale clone named
    run = vvfsck(*env.paths, clone)
    assert [ln.split(" at byte")[0] for ln in run.findings()] == [clone]


def test_node_killed_mid_resync_then_vv_device_resync_finishes_it(root):
    """`vv device online` committed the resync record, then the node died; vvfsck keeps the
    record, and `vv device resync` (offline: no node runs) finishes what the node began."""
    env = make_env(root, mirrors=2)
    pending_resync(env)
    checked = env.repair()
    assert checked.rc == fsck.EXIT_CLEAN, checked.out + checked.err
    assert "resync of device d1 pending" in checked.out
    resynced = subprocess.run(
        [sys.executable, "-m", "tools.vv", "device", "resync", "--state-dir", env.state,
         "tank", "d1"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert resynced.returncode == 0, resynced.stdout + resynced.stderr
    assert resynced.stdout.startswith("resynced d1: ")
    pool = env.media_pool()
    assert pool.operations == [] and pool.device("d1").state == "ok"
    after = env.check()
    assert after.rc == fsck.EXIT_CLEAN, after.out
    assert after.lines == [f"pool tank ({pool.uuid}) at generation {pool.generation}: clean"]


def test_repair_then_check_is_clean(env):
    """Several faults at once: one --repair run fixes all of them."""
    pool = env.media_pool()
    pool.operations = [{"kind": "resync", "volume": "v1"}]
    commit_raw(env, pool, sync_catalog=False)  # generation 4, the catalog left at 3
    g = label_of(env.paths[0]).geometry
    zero(env.paths[0], fmt.LABEL_A_OFFSET, 512)
    zero(env.paths[1], fmt.slot_offset(g, 1, 4), fmt.SLOT_HEADER_SIZE)
    zero(env.paths[2], fmt.commit_offset(g, 0, 4), fmt.SECTOR)
    run = env.check()
    assert run.rc == fsck.EXIT_FOUND and len(run.findings()) == 5, run.out
    assert_repaired_clean(env)
