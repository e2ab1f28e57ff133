"""The fault-injecting, recording and memory devices behave as documented."""

from __future__ import annotations

import errno
import time

import pytest

from metadata.blockdev import DeviceIOError
from vvfs.io.filedev import FileDevice
from vvfs.testing.faultdev import Cut, FaultyDevice, MemoryDevice, Recorder

from ..support.fsck_support import sparse

MiB = 1 << 20


def mem(size: int = MiB) -> MemoryDevice:
    return MemoryDevice(size, name="m")


def test_memory_device_round_trip_across_blocks():
    dev = mem()
    dev.pwrite(b"x" * 5000, 4000)
    assert dev.pread(5000, 4000) == b"x" * 5000
    assert dev.pread(10, 0) == bytes(10)


def test_memory_device_refuses_io_past_the_end():
    with pytest.raises(DeviceIOError, match="m at byte 1048570"):
        mem().pread(10, MiB - 6)


def test_memory_device_snapshot_restore():
    dev = mem()
    dev.pwrite(b"a", 0)
    snap = dev.snapshot()
    dev.pwrite(b"b", 0)
    dev.restore(snap)
    assert dev.pread(1, 0) == b"a"


def test_eio_on_a_range_only():
    dev = FaultyDevice(mem()).fail_range(4096, 8192)
    dev.pwrite(b"ok", 0)
    with pytest.raises(DeviceIOError, match=r"m at byte 4000: read failed: .*\(injected\)") as e:
        dev.pread(200, 4000)
    assert e.value.errno == errno.EIO
    assert dev.pread(10, 8192) == bytes(10)


def test_eio_on_the_nth_call():
    dev = FaultyDevice(mem()).fail_call(3, ops=["write"])
    dev.pwrite(b"1", 0)
    dev.pwrite(b"2", 1)
    with pytest.raises(DeviceIOError):
        dev.pwrite(b"3", 2)
    dev.pwrite(b"4", 3)
    assert dev.pread(4, 0) == b"12\x004"


def test_write_only_errors_leave_reads_working():
    inner = mem()
    inner.pwrite(b"data", 0)
    dev = FaultyDevice(inner).fail_writes(after=1)
    dev.pwrite(b"D", 0)
    with pytest.raises(DeviceIOError, match="write failed"):
        dev.pwrite(b"A", 1)
    with pytest.raises(DeviceIOError, match="flush failed"):
        dev.flush()
    assert dev.pread(4, 0) == b"Data"


def test_delay():
    dev = FaultyDevice(mem()).delay(0.05, ops=["read"])
    t = time.monotonic()
    dev.pread(1, 0)
    assert time.monotonic() - t >= 0.05


def test_vanish_and_come_back():
    dev = FaultyDevice(mem()).vanish()
    with pytest.raises(DeviceIOError, match="vanished") as e:
        dev.pread(1, 0)
    assert e.value.errno == errno.ENODEV
    dev.come_back()
    assert dev.pread(1, 0) == b"\0"


def test_dropped_writes_report_success_and_change_nothing():
    dev = FaultyDevice(mem()).drop_writes(0, 512)
    dev.pwrite(b"lost", 0)
    dev.pwrite(b"kept", 1024)
    assert dev.pread(4, 0) == bytes(4)
    assert dev.pread(4, 1024) == b"kept"


def test_torn_write_keeps_a_sector_prefix():
    inner = mem()
    inner.pwrite(b"o" * 2048, 0)
    dev = FaultyDevice(inner).tear_write(2)
    with pytest.raises(DeviceIOError, match="torn after 2 sectors"):
        dev.pwrite(b"n" * 2048, 0)
    assert inner.pread(2048, 0) == b"n" * 1024 + b"o" * 1024


def test_silent_torn_write():
    inner = mem()
    FaultyDevice(inner).tear_write(1, silent=True).pwrite(b"n" * 1024, 0)
    assert inner.pread(1024, 0) == b"n" * 512 + bytes(512)


def test_bit_flip_on_read_leaves_media_alone():
    inner = mem()
    dev = FaultyDevice(inner).flip_bit_on_read(10, bit=3)
    assert dev.pread(16, 0)[10] == 8
    assert inner.pread(16, 0) == bytes(16)


def test_random_bit_flips():
    dev = FaultyDevice(mem()).flip_random_bits(1.0, seed=4)
    assert dev.pread(64, 0) != bytes(64)


def test_heal_removes_every_fault():
    dev = FaultyDevice(mem()).fail_range(0, 10).vanish().flip_bit_on_read(0)
    dev.heal()
    assert dev.pread(4, 0) == bytes(4)


def test_faulty_device_wraps_a_real_file(tmp_path):
    path = sparse(tmp_path / "f", MiB)
    with FileDevice(path) as f:
        dev = FaultyDevice(f).fail_range(0, 512, ops=["write"])
        with pytest.raises(DeviceIOError, match=str(tmp_path)):
            dev.pwrite(b"x", 0)
        dev.pwrite(b"y", 512)
        assert f.pread(1, 512) == b"y"


# ---------------------------------------------------------------------------
# Recording and crash images


def recorded_pair() -> tuple[Recorder, MemoryDevice, MemoryDevice]:
    """Two devices: a: w1 w2 flush w3; b: w4 flush (in global order w1 w2 fa w4 fb w3)."""
    rec = Recorder()
    a, b = mem(), mem()
    a.pwrite(b"0" * 8, 0)
    ra, rb = rec.device(a, "a"), rec.device(b, "b")
    ra.pwrite(b"1", 0)
    ra.pwrite(b"2", 1)
    ra.flush()
    rb.pwrite(b"4", 0)
    rb.flush()
    ra.pwrite(b"3", 2)
    return rec, a, b


def image(rec: Recorder, devs: dict, surviving) -> dict[str, bytes]:
    rec.apply(surviving, lambda key: devs[key])
    return {k: d.pread(3, 0) for k, d in devs.items()}


def test_epochs_split_at_flushes():
    rec, _a, _b = recorded_pair()
    assert [[w.data for w in ep] for ep in rec.epochs("a")] == [[b"1", b"2"], [b"3"]]


def test_crash_before_anything_restores_the_old_content():
    rec, a, b = recorded_pair()
    assert image(rec, {"a": a, "b": b}, rec.crash_writes(0, Cut("all"))) == {
        "a": b"000", "b": bytes(3)}


def test_crash_keeps_flushed_epochs_and_cuts_the_open_one():
    rec, a, b = recorded_pair()
    at = rec.crash_points()[-1]  # after w3
    got = image(rec, {"a": a, "b": b}, rec.crash_writes(at, {"a": Cut("none"), "b": Cut("none")}))
    assert got == {"a": b"120", "b": b"4\0\0"}


def test_unflushed_writes_of_another_device_may_be_lost():
    rec, a, b = recorded_pair()
    w4 = rec.crash_points()[2]  # b's write, issued after a's flush returned
    got = image(rec, {"a": a, "b": b}, rec.crash_writes(w4, {"b": Cut("none")}))
    assert got == {"a": b"120", "b": bytes(3)}


def test_prefix_cut_and_torn_write():
    rec, a, b = recorded_pair()
    w2 = rec.crash_points()[1]
    assert image(rec, {"a": a, "b": b}, rec.crash_writes(w2, {"a": Cut("prefix", 1)}))["a"] \
        == b"100"
    got = image(rec, {"a": a, "b": b}, rec.crash_writes(w2, {"a": Cut("prefix", 2, torn=0)}))
    assert got["a"] == b"100"


def test_random_subset_is_reproducible():
    rec, a, b = recorded_pair()
    w2 = rec.crash_points()[1]
    one = image(rec, {"a": a, "b": b}, rec.crash_writes(w2, Cut("subset", seed=7)))
    two = image(rec, {"a": a, "b": b}, rec.crash_writes(w2, Cut("subset", seed=7)))
    assert one == two


def test_per_device_epoch_view():
    rec, a, b = recorded_pair()
    got = image(rec, {"a": a, "b": b}, {"a": rec.epoch_writes("a", 1, Cut("none"))})
    assert got["a"] == b"120" and got["b"] == bytes(3)


def test_torn_write_at_sector_granularity():
    rec = Recorder()
    dev = mem()
    rd = rec.device(dev, "d")
    rd.pwrite(b"n" * 1536, 0)
    rec.apply(rec.crash_writes(rec.clock, Cut("all", torn=1)), lambda k: dev)
    assert dev.pread(1536, 0) == b"n" * 512 + bytes(1024)
