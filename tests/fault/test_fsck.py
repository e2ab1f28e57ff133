"""One test per vvfsck check: inject one fault, assert the finding, repair, assert clean.

Pools are made by the real Manager on 64 MiB sparse files (see fsck_support).
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import yaml

import mapper
import vvfsck as fsck
from metadata import format as fmt
from metadata import media
from metadata.model import Area, new_uuid
from vvfs.io.filedev import FileDevice

from ..support.fsck_support import (
    MDA,
    assert_repaired_clean,
    catalog_pool,
    commit_raw,
    copy_sparse,
    label_of,
    make_env,
    media_choice,
    pending_resync,
    sparse,
    zero,
)
from ..support.util import CrashAfterWrites, flip


def test_clean_pool_is_clean(env):
    run = env.check()
    assert run.rc == fsck.EXIT_CLEAN
    assert run.lines == [f"pool tank ({env.media_pool().uuid}) at generation 3: clean"]


def same_label(a: fmt.Label, b: fmt.Label) -> bool:
    """Equal but for the creation time (a rebuilt label takes the device's "added" time)."""
    return dataclasses.replace(a, created=0.0) == dataclasses.replace(b, created=0.0)


# -- labels ------------------------------------------------------------------


def test_check_labels_finds_a_corrupt_copy(env):
    flip(env.paths[1], fmt.LABEL_A_OFFSET + 40)
    run = env.check()
    assert run.rc == fsck.EXIT_FOUND
    assert run.findings() == [(f"{env.paths[1]} at byte 4096: label A: checksum mismatch"
                              " [repair: rewrite label A from label B]")]
    assert_repaired_clean(env)


def test_check_labels_finds_copies_that_differ(env):
    label = label_of(env.paths[0])
    other = dataclasses.replace(label, created=label.created + 1)
    with FileDevice(env.paths[0]) as dev:
        dev.pwrite(other.pack(), label.geometry.label_b)
    run = env.check()
    assert f"{env.paths[0]} at byte {label.geometry.label_b}: label B differs from label A" \
        in run.out
    assert_repaired_clean(env)
    assert label_of(env.paths[0]) == label


def test_check_lost_labels_rebuilds_both(env):
    label = label_of(env.paths[2])
    for off in label.geometry.label_offsets:
        zero(env.paths[2], off, fmt.LABEL_SIZE)
    run = env.check()
    assert run.rc == fsck.EXIT_FOUND
    assert f"{env.paths[2]} at byte 4096: both labels lost; found by its metadata area" \
           " header at byte 8192" in run.out
    assert "missing" not in run.out
    assert_repaired_clean(env)
    assert same_label(label_of(env.paths[2]), label)


def test_check_lost_labels_finds_the_device_by_area_header_b(env):
    label = label_of(env.paths[2])
    for off in label.geometry.label_offsets:
        zero(env.paths[2], off, fmt.LABEL_SIZE)
    zero(env.paths[2], fmt.MDA_A_OFFSET, fmt.AREA_HEADER_SIZE)
    run = env.check()
    assert f"header at byte {label.geometry.area_b}" in run.out
    assert_repaired_clean(env)
    assert same_label(label_of(env.paths[2]), label)


def test_check_area_headers(env):
    area_b = label_of(env.paths[0]).geometry.area_b
    flip(env.paths[0], area_b + 20)
    run = env.check()
    assert f"{env.paths[0]} at byte {area_b}: metadata area header B: checksum mismatch" \
        in run.out
    assert_repaired_clean(env)


# -- generations -------------------------------------------------------------


def test_check_generation_none_complete(env):
    for p in env.paths:
        g = label_of(p).geometry
        for area in g.area_offsets:
            for i in range(g.slot_count):
                flip(p, area + fmt.SLOTS_OFFSET + i * g.slot_size + 100)
    run = env.check("--repair", "--yes")
    assert run.rc == fsck.EXIT_LEFT
    assert "no complete generation of the configuration" in run.out
    assert "--rollback GEN" in run.out


def interrupted_commit(env, writes: int) -> int:
    """Start committing the next generation; stop after *writes* writes (a crash)."""
    choice = media_choice(env.paths)
    new = choice.pool.copy()
    new.generation = choice.max_seen + 1
    new.operations = [{"kind": "test"}]
    budget = [writes]
    devs = [FileDevice(p) for p in env.paths]
    try:
        targets = [media.Target(CrashAfterWrites(d, shared_budget=budget),
                                media.read_label(d)[0]) for d in devs]
        with pytest.raises(media.CommitError):
            media.commit_generation(targets, new)
    finally:
        for d in devs:
            d.close()
    return new.generation


def test_check_interrupted_generations(env):
    gen = interrupted_commit(env, 2)  # both slot copies on the first device, then a crash
    run = env.check()
    assert run.rc == fsck.EXIT_FOUND
    assert len(run.findings()) == 1
    assert run.findings()[0].startswith(f"{env.paths[0]} at byte ")
    assert f"generation {gen}: an interrupted commit" in run.out
    assert_repaired_clean(env)
    assert env.media_pool().generation == gen - 1


def test_check_missing_devices(env):
    os.rename(env.paths[2], env.root / "elsewhere")
    run = env.check()
    assert run.rc == fsck.EXIT_LEFT
    [line] = run.findings()
    assert line.startswith("device d2 (")
    assert f"missing: generation 3 lists it, last seen at {env.paths[2]}" in line


def test_missing_device_holds_back_metadata_repairs(env):
    g = label_of(env.paths[0]).geometry
    zero(env.paths[0], fmt.slot_offset(g, 1, 3), fmt.SLOT_HEADER_SIZE)
    os.rename(env.paths[2], env.root / "elsewhere")
    run = env.check("--repair", "--yes")
    assert run.rc == fsck.EXIT_LEFT
    assert "not repaired while a device of the pool is missing" in run.out


def test_check_stale_devices(env):
    copy_sparse(env.paths[1], env.root / "old-image")
    with env.manager() as mgr:
        mgr.create_volume("tank/later", mapper.VolumeSpec(name="", size=1 << 20))
    copy_sparse(env.root / "old-image", env.paths[1])
    run = env.check()
    g = label_of(env.paths[1]).geometry
    assert run.findings() == [
        (f"{env.paths[1]} at byte {fmt.slot_offset(g, 0, 4)}: stale: its newest generation is"
        f" 3, the pool's is 4 (rolled back to an old image?) [repair: write generation 4 to"
        f" it (from {env.paths[0]} copy A)]")]
    assert_repaired_clean(env)
    with FileDevice(env.paths[1], readonly=True) as dev:
        assert max(media.scan_device(dev).commits) == 4


def test_check_metadata_copies_slot(env):
    g = label_of(env.paths[0]).geometry
    off = fmt.slot_offset(g, 1, 3)
    zero(env.paths[0], off, fmt.SLOT_HEADER_SIZE)
    run = env.check()
    assert run.findings() == [(f"{env.paths[0]} at byte {off}: generation 3 slot B: missing"
                              f" [repair: rewrite it from {env.paths[0]} copy A]")]
    assert_repaired_clean(env)


def test_check_metadata_copies_commit_record(env):
    g = label_of(env.paths[2]).geometry
    off = fmt.commit_offset(g, 0, 3)
    flip(env.paths[2], off + 50)
    run = env.check()
    assert f"{env.paths[2]} at byte {off}: generation 3 commit record A: damaged" in run.out
    assert_repaired_clean(env)


def test_check_damaged_metadata_older_generation(env):
    g = label_of(env.paths[1]).geometry
    off = fmt.slot_offset(g, 0, 2)
    flip(env.paths[1], off + fmt.SLOT_HEADER_SIZE + 3)
    run = env.check()
    assert run.findings() == [
        (f"{env.paths[1]} at byte {off}: slot 2 copy A: generation 2: payload checksum"
        f" mismatch [repair: rewrite generation 2 from {env.paths[0]} copy A]")]
    assert_repaired_clean(env)


def test_check_damaged_metadata_garbage_slot_is_erased(env):
    g = label_of(env.paths[1]).geometry
    off = fmt.slot_offset(g, 0, 6)  # a slot never written
    with open(env.paths[1], "r+b") as f:
        f.seek(off)
        f.write(b"VVFSSLOT" + bytes(100))
    run = env.check()
    assert f"{env.paths[1]} at byte {off}: slot 6 copy A: checksum mismatch" \
           " [repair: erase the slot" in run.out
    assert_repaired_clean(env)


# -- the configuration -------------------------------------------------------


def test_check_orphan_devices(env):
    path = sparse(env.root / "devs" / "stray")
    pool = env.media_pool()
    label = fmt.Label(pool.uuid, new_uuid(), fmt.plan_geometry(64 << 20, 1 << 20, MDA), 1.0)
    with FileDevice(path) as dev:
        media.initialize_device(dev, label)  # claimed, then the add never committed
    run = env.check()
    assert f"{path} at byte 4096: carries pool tank's label but generation 3 does not list" \
        in run.out
    assert_repaired_clean(env)
    with FileDevice(path, readonly=True) as dev:
        assert media.read_label(dev)[0] is None


def test_check_extent_overlaps(env):
    pool = env.media_pool()
    a, b = pool.volumes
    b.segments[0].areas[0][0] = a.segments[0].areas[0][0]
    commit_raw(env, pool)
    dev = pool.device(a.segments[0].areas[0][0].device)
    start = a.segments[0].areas[0][0].start
    run = env.check()
    assert run.rc == fsck.EXIT_LEFT
    where = dev.paths[0]
    assert f"{where} at byte {dev.data_start + start * pool.extent_size}: extents {start}-" \
        in run.out
    assert f"of device {dev.name} are used by volume v0 and volume v1" in run.out
    assert "generation 3 is consistent: vvfsck --rollback 3" in run.out


def test_check_extent_ranges(env):
    pool = env.media_pool()
    seg = pool.volumes[0].segments[0]
    dev = pool.device(seg.areas[0][0].device)
    seg.areas[0][0] = Area(dev.uuid, dev.extent_count - 1)
    commit_raw(env, pool)
    run = env.check()
    assert run.rc == fsck.EXIT_LEFT
    assert f"volume v0: extents {dev.extent_count - 1}-" in run.out
    assert f"lie outside device {dev.name}" in run.out


def test_check_leg_devices(env):
    pool = env.media_pool()
    vol = pool.volumes[0]
    seg = vol.segments[0]
    seg.areas.append([Area(seg.areas[0][0].device, 40)])
    vol.mirrors = 2
    commit_raw(env, pool)
    run = env.check()
    assert "volume v0: the segment at extent 0 puts 2 of its legs or stripes on one device" \
        in run.out


def test_check_leaked_extents(env):
    pool = env.media_pool()
    vol = pool.volumes[0]  # 3 MiB: 3 extents
    before = mapper.usage(pool)
    seg = vol.segments[-1]
    dev = pool.device(seg.areas[0][0].device)
    vol.size = 1 << 20
    commit_raw(env, pool)
    run = env.check()
    assert run.rc == fsck.EXIT_FOUND
    off = dev.data_start + (seg.areas[0][0].start + 1) * pool.extent_size
    assert f"{dev.paths[0]} at byte {off}: volume v0 maps 3 extents, its size needs 1: 2" \
           " extents are held but unreachable" in run.out
    assert_repaired_clean(env)
    after = mapper.usage(env.media_pool())
    assert sum(u.free for u in after.values()) == sum(u.free for u in before.values()) + 2


def test_check_interrupted_operations(env):
    pool = env.media_pool()
    pool.operations = [{"kind": "move", "volume": "v0", "segment": 0, "to": "d2"}]
    commit_raw(env, pool)
    run = env.check()
    assert run.findings() == [
        ("pool tank: move operation was interrupted (segment=0, to='d2', volume='v0');"
        " generation 4 still records it and no node runs to finish it [repair: roll it back:"
        " commit a generation without it (the volume map still names the data's old place;"
        " extents it reserved become free)]")]
    assert_repaired_clean(env)
    after = env.media_pool()
    assert after.operations == [] and after.generation == 5
    assert after.volumes == pool.volumes


# A resync record (mapper/mirrors.py): a device brought back stays failed until a node resynced
# it.  Pending, it is reported and kept; stale or naming no device of the pool, it is dropped.


@pytest.fixture
def mirrored(root):
    """Two volumes mirrored on two of three devices: any one device may fail."""
    return make_env(root, mirrors=2)


def test_check_interrupted_operations_reports_a_pending_resync(mirrored):
    pool = pending_resync(mirrored)
    run = mirrored.check()
    assert run.rc == fsck.EXIT_CLEAN, run.out
    [line] = run.findings()
    assert line.startswith("pool tank: resync of device d1 pending (returning, recorded ")
    assert line.endswith(": it stays failed until the resync ends [nothing to repair: mounting"
                         " the pool resumes it, or vv device resync tank d1]")
    assert run.lines[-1] == (f"pool tank ({pool.uuid}) at generation {pool.generation}:"
                             " clean; 1 operation pending")


def test_repair_keeps_a_pending_resync(mirrored):
    pool = pending_resync(mirrored)
    run = mirrored.repair()
    assert run.rc == fsck.EXIT_CLEAN, run.out
    assert "repaired" not in run.out
    after = mirrored.media_pool()
    assert after.generation == pool.generation
    assert after.operations == pool.operations
    assert after.device("d1").state == "failed"


def test_repairs_of_other_findings_keep_a_pending_resync(mirrored):
    pool = pending_resync(mirrored)
    flip(mirrored.paths[0], fmt.LABEL_A_OFFSET + 40)
    run = mirrored.repair()
    assert run.rc == fsck.EXIT_FOUND, run.out
    assert not [ln for ln in run.lines if ln.startswith("left: ")]
    assert run.lines[-1].endswith(": repaired, clean now; 1 operation pending")
    again = mirrored.check()
    assert again.rc == fsck.EXIT_CLEAN, again.out
    assert mirrored.media_pool().operations == pool.operations


def test_pending_resync_of_a_device_not_found(mirrored):
    pending_resync(mirrored)
    os.rename(mirrored.paths[1], mirrored.root / "elsewhere")
    run = mirrored.check()
    assert run.rc == fsck.EXIT_CLEAN, run.out
    [line] = run.findings()
    assert "resync of device d1 pending" in line
    assert "the device is not among those found: connect it first" in line


def test_check_interrupted_operations_drops_a_stale_resync_record(mirrored):
    pending_resync(mirrored, fail=False)
    run = mirrored.check()
    assert run.rc == fsck.EXIT_FOUND
    [line] = run.findings()
    assert line.startswith("pool tank: resync record (")
    assert line.endswith(" is stale: generation 4 has device d1 ok already (its resync"
                         " ended, or was never needed) [repair: drop the record: commit a"
                         " generation without it]")
    assert_repaired_clean(mirrored)
    after = mirrored.media_pool()
    assert after.operations == [] and after.device("d1").state == "ok"


@pytest.mark.parametrize(("record", "why"), [
    ({"kind": "resync", "id": "x", "reason": "returning"}, "names no device"),
    ({"kind": "resync", "id": "x", "device": "0" * 32},
     f"names device {'0' * 32}, which generation 4 does not list"),
])
def test_check_interrupted_operations_drops_a_resync_record_of_no_device(mirrored, record, why):
    pool = mirrored.media_pool()
    pool.operations = [record]
    commit_raw(mirrored, pool)
    run = mirrored.check()
    assert run.rc == fsck.EXIT_FOUND
    [line] = run.findings()
    assert line.startswith("pool tank: resync record (") and why in line
    assert_repaired_clean(mirrored)
    assert mirrored.media_pool().operations == []


def test_dump_shows_a_pending_resync(mirrored):
    pool = pending_resync(mirrored)
    doc = yaml.safe_load(mirrored.check("--dump").out)
    [op] = doc["pools"][0]["operations"]
    assert op["kind"] == "resync" and op["state"] == "pending"
    assert op["device"] == "d1" and op["device uuid"] == pool.device("d1").uuid
    assert op["reason"] == "returning" and op["started"].endswith(" UTC")


def test_check_configuration_catch_all(env):
    pool = env.media_pool()
    pool.volumes[1].name = pool.volumes[0].name
    commit_raw(env, pool, sync_catalog=False)
    run = env.check()
    assert "pool tank: generation 4: volume name 'v0' used twice" in run.out


# -- catalog, clones, mirrors ------------------------------------------------


def test_check_catalog_stale(env):
    pool = env.media_pool()
    pool.volumes[0].mode = 0o640
    commit_raw(env, pool, sync_catalog=False)
    run = env.check()
    assert run.findings() == [
        (f"catalog sqlite:///{env.state}/catalog.sqlite: pool tank is stale: generation 3, media"
        " 4 [repair: re-sync the catalog from the media]")]
    assert_repaired_clean(env)


def test_check_catalog_differs_at_same_generation(env):
    pool = env.media_pool()
    pool.volumes[0].mode = 0o640
    with env.manager() as mgr:
        mgr.catalog.sync_pool(pool, {})
    run = env.check()
    assert "pool tank is differs" not in run.out
    assert "differs from the media at generation 3" in run.out
    assert_repaired_clean(env)


def test_check_catalog_other_host(env):
    pool = env.media_pool()
    pool.active_host = "someone-else"
    commit_raw(env, pool)
    run = env.check()
    assert "its media say it belongs to host someone-else" in run.out
    fixed = env.repair()
    assert fixed.rc == fsck.EXIT_FOUND
    assert catalog_pool(env) is None


def test_check_duplicate_uuids(env):
    clone = str(env.root / "devs" / "disk1-clone")
    copy_sparse(env.paths[1], clone)
    run = env.check()
    assert run.rc == fsck.EXIT_LEFT
    [line] = run.findings()
    assert line.startswith(f"{clone} at byte 4096: device uuid ")
    assert f"is also on {env.paths[1]} (cloned media?)" in line
    assert "no repair: vvfsck cannot tell the original from the copy" in line


def test_check_mirrors(root):
    env = make_env(root, volumes=1, mirrors=2)
    pool = env.media_pool()
    vmap = mapper.VolumeMap(pool, pool.volumes[0])
    [piece] = vmap.resolve(1 << 20, 4096)
    leg = piece.legs[1]
    path = pool.device(leg.device).paths[0]
    with FileDevice(path) as dev:
        dev.pwrite(b"\xff" * 100, leg.offset + 600)
    assert env.check().rc == fsck.EXIT_CLEAN
    run = env.check("--deep")
    assert run.rc == fsck.EXIT_LEFT
    assert run.findings()[0].startswith(f"{path} at byte {leg.offset + 512}: volume v0: bytes"
                                        f" {(1 << 20) + 512}-")
    assert "of leg 1 differ from leg 0" in run.out


def test_check_mirrors_skips_the_legs_of_a_failed_device(mirrored):
    """A leg behind because its device is failed (a pending resync) is not damage."""
    pool = pending_resync(mirrored)
    failed = pool.device("d1").uuid
    vol = next(v for v in pool.volumes if v.mirrors > 1)
    [piece] = mapper.VolumeMap(pool, vol).resolve(1 << 20, 4096)
    leg = next(loc for loc in piece.legs if loc.device == failed)
    with FileDevice(pool.device(failed).paths[0]) as dev:
        dev.pwrite(b"\xff" * 100, leg.offset + 600)
    run = mirrored.check("--deep")
    assert run.rc == fsck.EXIT_CLEAN, run.out
    assert "differ from leg" not in run.out


def test_check_mirrors_clean_when_legs_agree(root):
    env = make_env(root, volumes=2, mirrors=2)
    assert env.check("--deep").rc == fsck.EXIT_CLEAN


def test_check_unsupported_media_is_left_alone(env):
    label = label_of(env.paths[0])
    newer = dataclasses.replace(label, incompat=frozenset({"thin-volumes"}))
    with FileDevice(env.paths[0]) as dev:
        dev.pwrite(newer.pack(), fmt.LABEL_A_OFFSET)
    with open(env.paths[0], "rb") as f:
        before = f.read(1 << 20)
    run = env.repair()
    assert run.rc == fsck.EXIT_LEFT
    assert run.findings() == [
        (f"{env.paths[0]} at byte 4096: label needs incompatible features this vvfs does not"
        " know: thin-volumes [no repair: written by a newer vvfs: check the pool with that"
        " vvfs; this one reads no further and changes nothing]")]
    with open(env.paths[0], "rb") as f:
        assert f.read(1 << 20) == before
