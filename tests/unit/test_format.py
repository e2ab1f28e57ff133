"""The on-media format: round trips, damaged copies, interrupted commits."""

from __future__ import annotations

import os

import pytest

from metadata import format as fmt
from metadata import media
from metadata.blockdev import DeviceIOError
from metadata.errors import (
    BadMagicError,
    ChecksumError,
    NoValidGenerationError,
    UnsupportedFeatureError,
)
from metadata.model import Device, Pool, new_uuid
from vvfs.io.filedev import FileDevice

from ..support.util import CrashAfterWrites, sparse_file

DEV_SIZE = 64 << 20
EXTENT = 1 << 20
MDA = 256 << 10


def committed_pool(tmp_path, n=3):
    """A pool on *n* sparse files, committed at generation 1."""
    pool = Pool(uuid=new_uuid(), name="tank", extent_size=EXTENT, generation=1)
    targets = []
    for i in range(n):
        path = sparse_file(tmp_path / f"dev{i}", DEV_SIZE)
        geom = fmt.plan_geometry(DEV_SIZE, EXTENT, MDA)
        label = fmt.Label(pool.uuid, new_uuid(), geom, 1.0)
        dev = FileDevice(path)
        media.initialize_device(dev, label)
        pool.devices.append(Device(uuid=label.device_uuid, name=f"d{i}", size=DEV_SIZE,
                                   data_start=geom.data_start, extent_count=geom.extent_count,
                                   paths=[path]))
        targets.append(media.Target(dev, label))
    media.commit_generation(targets, pool)
    return pool, targets


def reopen(targets) -> media.Choice:
    return media.choose_generation([media.scan_device(t.dev) for t in targets])


def next_gen(pool: Pool, gen: int) -> Pool:
    new = pool.copy()
    new.generation = gen
    new.operations = [{"marker": gen}]
    return new


def flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def test_label_round_trip():
    geom = fmt.plan_geometry(1 << 30, 4 << 20)
    label = fmt.Label(new_uuid(), new_uuid(), geom, 123.5, frozenset(), frozenset({"x"}))
    assert fmt.Label.unpack(label.pack(), "dev", 4096) == label


def test_geometry_keeps_areas_apart():
    g = fmt.plan_geometry(100 << 20, 4 << 20, 1 << 20)
    assert g.area_a + g.area_size <= g.data_start
    assert g.data_start + g.extent_count * g.extent_size <= g.area_b
    assert g.area_b + g.area_size == g.label_b
    assert g.label_b + fmt.LABEL_SIZE == g.device_size


def test_too_small_device_refused():
    with pytest.raises(fmt.GeometryError, match="too small"):
        fmt.plan_geometry(2 << 20, 4 << 20, 1 << 20)


def test_label_checksum_detected():
    geom = fmt.plan_geometry(1 << 30, 4 << 20)
    raw = bytearray(fmt.Label(new_uuid(), new_uuid(), geom, 1.0).pack())
    raw[50] ^= 1
    with pytest.raises(ChecksumError, match="dev at byte 4096"):
        fmt.Label.unpack(bytes(raw), "dev", 4096)


def test_unknown_incompat_feature_refused_by_name():
    geom = fmt.plan_geometry(1 << 30, 4 << 20)
    raw = fmt.Label(new_uuid(), new_uuid(), geom, 1.0, frozenset({"thin-volumes"})).pack()
    with pytest.raises(UnsupportedFeatureError, match="thin-volumes"):
        fmt.Label.unpack(raw, "dev", 4096)


def test_wrong_magic_named():
    with pytest.raises(BadMagicError, match="at byte 8192"):
        fmt.AreaHeader.unpack(bytes(512), "dev", 8192)


def test_commit_round_trip(tmp_path):
    pool, targets = committed_pool(tmp_path)
    choice = reopen(targets)
    assert choice.generation == 1
    assert choice.pool.to_dict() == pool.to_dict()
    assert not choice.missing and not choice.behind and not choice.rolled_back


def test_ring_keeps_several_generations(tmp_path):
    pool, targets = committed_pool(tmp_path)
    for gen in range(2, 12):
        media.commit_generation(targets, next_gen(pool, gen))
    scan = media.scan_device(targets[0].dev)
    assert sorted(scan.slots) == list(range(4, 12))  # the last 8
    assert reopen(targets).generation == 11


@pytest.mark.parametrize("where", ["label_a", "label_b"])
def test_flipped_label_byte_uses_other_copy(tmp_path, where):
    _pool, targets = committed_pool(tmp_path)
    g = targets[0].label.geometry
    flip_byte(targets[0].dev.name, (fmt.LABEL_A_OFFSET if where == "label_a" else g.label_b) + 40)
    scan = media.scan_device(targets[0].dev)
    assert scan.label == targets[0].label
    bad = 0 if where == "label_a" else 1
    assert isinstance(scan.label_errors[bad], ChecksumError)
    assert reopen(targets).generation == 1


@pytest.mark.parametrize("copy", [0, 1])
@pytest.mark.parametrize("part", ["header", "payload"])
def test_flipped_metadata_byte_uses_other_copy(tmp_path, copy, part):
    pool, targets = committed_pool(tmp_path)
    g = targets[1].label.geometry
    off = fmt.slot_offset(g, copy, 1) + (20 if part == "header" else fmt.SLOT_HEADER_SIZE + 5)
    flip_byte(targets[1].dev.name, off)
    choice = reopen(targets)
    assert choice.generation == 1
    assert choice.pool.to_dict() == pool.to_dict()
    scan = next(s for s in choice.scans if s.dev is targets[1].dev)
    assert any(f.offset == fmt.slot_offset(g, copy, 1) or
               f.offset == fmt.slot_offset(g, copy, 1) + fmt.SLOT_HEADER_SIZE
               for f in scan.findings)


def test_both_metadata_copies_damaged_on_one_device(tmp_path):
    _pool, targets = committed_pool(tmp_path)
    g = targets[2].label.geometry
    for copy in (0, 1):
        flip_byte(targets[2].dev.name, fmt.slot_offset(g, copy, 1) + fmt.SLOT_HEADER_SIZE + 1)
    choice = reopen(targets)
    assert choice.generation == 1  # the commit records and the other devices hold it
    assert [s.dev for s in choice.behind] == [targets[2].dev]


def _writes_of_one_commit(tmp_path) -> int:
    pool, targets = committed_pool(tmp_path / "count")
    counters = [CrashAfterWrites(t.dev, limit=None) for t in targets]
    media.commit_generation([media.Target(c, t.label) for c, t in zip(counters, targets)],
                            next_gen(pool, 2))
    return sum(c.writes for c in counters)


def test_commit_interrupted_after_every_write(tmp_path):
    """Crash after each write of a commit: old or new generation, never a mix."""
    (tmp_path / "count").mkdir()
    total = _writes_of_one_commit(tmp_path)
    assert total == 3 * 4  # per device: 2 slots, 2 commit records
    for crash_at in range(total + 1):
        d = tmp_path / f"crash{crash_at}"
        d.mkdir()
        pool, targets = committed_pool(d)
        budget = [crash_at]
        wrapped = [CrashAfterWrites(t.dev, shared_budget=budget) for t in targets]
        new = next_gen(pool, 2)
        try:
            media.commit_generation([media.Target(w, t.label)
                                     for w, t in zip(wrapped, targets)], new)
        except media.CommitError:
            pass
        choice = reopen(targets)
        expect = pool if choice.generation == 1 else new
        assert choice.pool.to_dict() == expect.to_dict()
        # every device holds the chosen generation, or is merely behind by one commit
        prepared_everywhere = crash_at >= 5
        assert choice.generation == (2 if prepared_everywhere else 1), crash_at
        for t in targets:
            t.dev.close()


def test_interrupted_generation_is_not_reused(tmp_path):
    pool, targets = committed_pool(tmp_path)
    wrapped = [CrashAfterWrites(targets[0].dev, shared_budget=[2])] + [
        CrashAfterWrites(t.dev, shared_budget=[0]) for t in targets[1:]]
    with pytest.raises(media.CommitError):
        media.commit_generation([media.Target(w, t.label) for w, t in zip(wrapped, targets)],
                                next_gen(pool, 2))
    choice = reopen(targets)
    assert choice.generation == 1
    assert choice.rolled_back == [2]
    assert choice.max_seen == 2


def test_missing_device_with_uncommitted_generation_rolls_back(tmp_path):
    pool, targets = committed_pool(tmp_path)
    # prepare generation 2 on all devices but write no commit record
    budget = [6]
    wrapped = [CrashAfterWrites(t.dev, shared_budget=budget) for t in targets]
    with pytest.raises(media.CommitError):
        media.commit_generation([media.Target(w, t.label) for w, t in zip(wrapped, targets)],
                                next_gen(pool, 3 - 1))
    # with every device present gen 2 is complete
    assert reopen(targets).generation == 2
    # without device 2 nobody can tell gen 2 was complete: the committed gen 1 wins
    choice = media.choose_generation([media.scan_device(t.dev) for t in targets[:2]])
    assert choice.generation == 1
    assert choice.missing == [targets[2].label.device_uuid]


def test_no_generation_at_all(tmp_path):
    path = sparse_file(tmp_path / "x", DEV_SIZE)
    dev = FileDevice(path)
    label = fmt.Label(new_uuid(), new_uuid(), fmt.plan_geometry(DEV_SIZE, EXTENT, MDA), 1.0)
    media.initialize_device(dev, label)
    with pytest.raises(NoValidGenerationError):
        media.choose_generation([media.scan_device(dev)])


def test_read_error_names_device_and_offset(tmp_path):
    path = sparse_file(tmp_path / "small", 4096)
    with FileDevice(path) as dev, pytest.raises(DeviceIOError, match=r"small at byte 8192"):
        dev.pread(512, 8192)


def test_oversized_configuration_refused(tmp_path):
    pool, targets = committed_pool(tmp_path)
    big = next_gen(pool, 2)
    big.operations = [{"junk": os.urandom(64).hex()} for _ in range(2000)]
    with pytest.raises(media.CommitError, match="does not fit"):
        media.commit_generation(targets, big)
    assert reopen(targets).generation == 1


def test_generation_with_unknown_feature_is_refused_not_rolled_back(tmp_path):
    pool, targets = committed_pool(tmp_path)
    newer = next_gen(pool, 2)
    doc = newer.to_dict()
    doc["features"] = ["frobnicate"]
    enc, payload = fmt.encode_payload(doc)
    digest = fmt.payload_digest(payload)
    for t in targets:
        for copy in (0, 1):
            t.dev.pwrite(fmt.pack_slot(pool.uuid, t.label.device_uuid, 2, enc, payload,
                                       t.label.geometry.max_payload),
                         fmt.slot_offset(t.label.geometry, copy, 2))
            t.dev.pwrite(fmt.pack_commit(pool.uuid, 2, digest),
                         fmt.commit_offset(t.label.geometry, copy, 2))
    with pytest.raises(UnsupportedFeatureError, match="frobnicate"):
        reopen(targets)


def test_unknown_keys_are_compatible_additions():
    pool = Pool(uuid=new_uuid(), name="tank", extent_size=EXTENT, generation=1)
    pool.devices.append(Device(uuid=new_uuid(), name="d0", size=DEV_SIZE, data_start=1 << 20,
                               extent_count=10))
    doc = pool.to_dict()
    doc["devices"][0]["future_key"] = 1
    doc["future_top"] = {"x": 1}
    assert Pool.from_dict(doc).to_dict() == pool.to_dict()


def test_slot_of_a_newer_format_version_is_refused(tmp_path):
    import hashlib
    import struct

    _pool, targets = committed_pool(tmp_path)
    g = targets[0].label.geometry
    off = fmt.slot_offset(g, 0, 1)
    raw = bytearray(targets[0].dev.pread(fmt.SLOT_HEADER_SIZE, off))
    struct.pack_into("<I", raw, 8, 99)
    raw[-32:] = hashlib.sha256(bytes(raw[:-32])).digest()
    targets[0].dev.pwrite(bytes(raw), off)
    with pytest.raises(UnsupportedFeatureError, match="version 99"):
        reopen(targets)
