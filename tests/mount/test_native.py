"""The native driver (``-o engine=native``, the default) on a real mount, beside the Python engine.

The rest of the mount tier runs on the default engine too, so moves under fio
(test_move.py), a failed mirror leg under fio and SIGKILL mid-writes
(test_mirror_failover.py, test_mount_crash.py) are exercised with the native
engine serving the linear volumes and handing the mirrored ones to Python;
:func:`test_the_default_engine_is_native` makes sure that stays so.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import random
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mapper.layout import VolumeMap

from ..support import ackwriter
from ..support.mountutil import MiB, TestPool, fio, mounted, require, wait_until

pytestmark = pytest.mark.slow

KiB = 1024
ROOT = Path(__file__).resolve().parents[2]  # for python -m tests.support...
SIZE = 32 * MiB


def _fio_verify(path: str, bs: str, *extra: str) -> None:
    fio("--name=verify", f"--filename={path}", "--rw=randwrite", f"--bs={bs}",
        f"--size={SIZE}", "--direct=1", "--ioengine=libaio", "--iodepth=16",
        "--verify=crc32c", "--verify_fatal=1", "--do_verify=1", *extra)


def _status(pool: TestPool) -> dict[str, Any]:
    return json.loads(pool.vv("status", "--json").stdout)


def _engine_row(pool: TestPool, name: str) -> dict[str, Any]:
    return _status(pool)["engine"]["volumes"][f"{pool.name}/{name}"]


def _three(pool: TestPool) -> None:
    pool.create_volume("lin", SIZE)
    pool.create_volume("str", SIZE, stripes=2, stripe_size=64 * KiB)
    pool.create_volume("mir", SIZE, mirrors=2)


@pytest.mark.parametrize("engine", ["native", "python"])
@pytest.mark.parametrize("bs", ["4k", "1M"])
def test_fio_verify_on_every_layout(fresh_pool: TestPool, engine: str, bs: str) -> None:
    """crc32c verify at QD16 on linear, striped and mirrored volumes, through either engine."""
    require("fio")
    _three(fresh_pool)
    with mounted(fresh_pool, f"engine={engine}", "driver_threads=2") as node:
        for name in ("lin", "str", "mir"):
            _fio_verify(fresh_pool.volume_path(name), bs)
        node.umount()


def test_native_serves_linear_and_striped_and_hands_mirrors_to_python(
        fresh_pool: TestPool) -> None:
    require("fio")
    _three(fresh_pool)
    with mounted(fresh_pool, "driver_threads=2"):
        before = _status(fresh_pool)["engine"]
        assert before["engine"] == "native" and before["threads"] == 2
        for name in ("lin", "str", "mir"):
            fd = os.open(fresh_pool.volume_path(name), os.O_RDWR)
            try:
                for k in range(64):
                    os.pwrite(fd, bytes([k + 1]) * 4096, k * 8192)
                os.fsync(fd)
                assert os.pread(fd, 4096, 63 * 8192) == bytes([64]) * 4096
                row = _engine_row(fresh_pool, name)  # while open
            finally:
                os.close(fd)
            if name == "mir":
                assert row["served_by"] == "python" and row["why"] == "mirrored", row
                assert row["native_requests"] == 0 and row["python_requests"] >= 64, row
            else:
                assert row["served_by"] == "native", row
                assert row["native_writes"] >= 64 and row["native_fsyncs"] >= 1, row
                assert row["python_requests"] == 0, row
        after = _status(fresh_pool)["engine"]
        assert after["served_natively"] - before["served_natively"] >= 2 * 65
        assert _engine_row(fresh_pool, "lin")["served_by"] == "closed"


def _fio_requests(output: str) -> int:
    """Reads plus writes fio issued, from its "issued rwts" line."""
    m = re.search(r"issued rwts: total=(\d+),(\d+),", output)
    assert m, output
    return int(m.group(1)) + int(m.group(2))


@pytest.mark.parametrize("name", ["lin", "str", "mir"])
def test_fio_requests_are_counted_where_they_are_served(fresh_pool: TestPool, name: str) -> None:
    """After fio verify (4 KiB, O_DIRECT: one FUSE request per fio request at least), the
    engine counted every request: linear and striped ones natively (served_by native while a
    handle is open), mirrored ones handed to Python (why "mirrored"), none of them natively."""
    require("fio")
    _three(fresh_pool)
    path = fresh_pool.volume_path(name)
    with mounted(fresh_pool, "engine=native", "driver_threads=2"):
        fd = os.open(path, os.O_RDONLY)  # keeps a handle open for served_by
        try:
            before = _status(fresh_pool)["engine"]
            out = fio("--name=verify", f"--filename={path}", "--rw=randwrite", "--bs=4k",
                      f"--size={SIZE}", "--direct=1", "--ioengine=libaio", "--iodepth=16",
                      "--verify=crc32c", "--verify_fatal=1", "--do_verify=1").stdout
            after = _status(fresh_pool)["engine"]
            row = _engine_row(fresh_pool, name)
        finally:
            os.close(fd)
    requests = _fio_requests(out)
    assert requests >= 2 * SIZE // (4 * KiB), out  # every block written, then read back
    native = after["served_natively"] - before["served_natively"]
    python = after["handed_to_python"] - before["handed_to_python"]
    print(f"{name}: fio {requests} requests; native {native}, to Python {python}")
    if name == "mir":
        assert (row["served_by"], row["why"]) == ("python", "mirrored"), row
        assert native == 0 and python >= requests, (native, python, requests)
    else:
        assert (row["served_by"], row["why"]) == ("native", ""), row
        assert native >= requests, (native, python, requests)
        assert python < requests // 100, (native, python, requests)  # open, getattr, flush...


def test_the_default_engine_is_native(fresh_pool: TestPool) -> None:
    """What the other mount tests run on (module docstring)."""
    fresh_pool.create_volume("lin", SIZE)
    with mounted(fresh_pool):
        assert _status(fresh_pool)["engine"]["engine"] == "native"
        out = fresh_pool.vv("status").stdout
        assert "engine native" in out, out


def test_a_read_only_mount_refuses_writes_natively(fresh_pool: TestPool) -> None:
    fresh_pool.create_volume("lin", SIZE)
    with mounted(fresh_pool, "ro"):
        fd = os.open(fresh_pool.volume_path("lin"), os.O_RDONLY)
        try:
            assert os.pread(fd, 4096, 0) == bytes(4096)
        finally:
            os.close(fd)
        with pytest.raises(OSError) as err:
            os.open(fresh_pool.volume_path("lin"), os.O_RDWR)
        assert err.value.errno in (errno.EROFS, errno.EACCES), err.value


# -- the same writes through both engines ---------------------------------------


def _writes(seed: int, size: int) -> list[tuple[int, bytes, bool]]:
    """Seeded (offset, data, direct) writes: 512 B to 1 MiB, unaligned ones too."""
    rnd = random.Random(seed)
    out = []
    for _ in range(300):
        direct = rnd.random() < 0.4
        if direct:
            n = rnd.choice([4, 8, 64, 256]) * KiB
            off = rnd.randrange(0, (size - n) // 4096) * 4096
        else:
            n = rnd.randrange(512, MiB)
            off = rnd.randrange(0, size - n)
        out.append((off, rnd.randbytes(n), direct))
    return out


def _apply(path: str, writes: list[tuple[int, bytes, bool]]) -> None:
    fd = os.open(path, os.O_RDWR)
    dfd = os.open(path, os.O_RDWR | os.O_DIRECT)
    try:
        for off, data, direct in writes:
            if direct:
                buf = mmap.mmap(-1, len(data))
                buf.write(data)
                assert os.pwritev(dfd, [buf], off) == len(data)
            else:
                assert os.pwrite(fd, data, off) == len(data)
        os.fsync(fd)
    finally:
        os.close(dfd)
        os.close(fd)


def _device_bytes(pool: TestPool, name: str) -> bytes:
    """Volume *name*'s bytes as its devices hold them (leg 0), read from the backing files."""
    with pool.manager() as mgr:
        shown = mgr.show_pool(pool.name)
    vmap = VolumeMap(shown.pool, shown.pool.volume(name))
    out = bytearray()
    for piece in vmap.resolve(0, vmap.size):
        loc = piece.legs[0]
        with open(shown.paths[loc.device], "rb") as f:
            out += os.pread(f.fileno(), piece.length, loc.offset)
    return bytes(out)


@pytest.mark.parametrize("layout", ["lin", "str"])
def test_both_engines_leave_the_same_bytes_on_the_devices(tmp_path: Any, layout: str) -> None:
    """Differential: the same seeded writes through each engine; the devices then hold the
    same volume bytes, and those are the bytes the writes make (an in-memory model).

    Compared through each pool's own map (two pools need not place extents alike),
    after a clean unmount, straight from the backing files.
    """
    require()
    expect = bytearray(SIZE)
    writes = _writes(12, SIZE)
    for off, data, _ in writes:
        expect[off:off + len(data)] = data
    seen = {}
    for engine in ("python", "native"):
        (tmp_path / engine).mkdir()
        pool = TestPool(tmp_path / engine)
        spec: dict[str, Any] = {"stripes": 2, "stripe_size": 64 * KiB} if layout == "str" else {}
        pool.create_volume(layout, SIZE, **spec)
        with mounted(pool, f"engine={engine}") as node:
            _apply(pool.volume_path(layout), writes)
            row = _engine_row(pool, layout)
            node.umount()
        if engine == "native":
            assert row["native_requests"] > 0, row
        seen[engine] = _device_bytes(pool, layout)
    assert seen["python"] == bytes(expect), "the Python engine wrote other bytes than asked"
    assert seen["native"] == seen["python"], "the native engine left other bytes on the devices"


# -- every other opcode while the driver threads are busy -----------------------


def _namespace_ops(pool: TestPool) -> dict[str, object]:
    """One pass of lookups, stat, readdir, open/close, statfs, xattrs and refused changes.

    Returns what each answered (a value or an errno), to compare between engines.
    """
    top, vol = str(pool.mnt / pool.name), pool.volume_path("str")
    got: dict[str, object] = {}

    def one(key: str, fn: Any) -> None:
        try:
            got[key] = fn()
        except OSError as exc:
            got[key] = f"errno {exc.errno}"

    one("listdir", lambda: sorted(os.listdir(top)))
    one("stat", lambda: (stat.S_IFMT(os.stat(vol).st_mode), os.stat(vol).st_size))
    one("missing", lambda: os.stat(os.path.join(top, "nope")))
    one("open", lambda: os.close(os.open(vol, os.O_RDONLY)))
    one("statfs", lambda: os.statvfs(top).f_bsize > 0)
    one("getxattr", lambda: os.getxattr(vol, "user.x"))
    one("mkdir", lambda: os.mkdir(os.path.join(top, "d")))
    one("unlink", lambda: os.unlink(vol + ".x"))
    one("rename", lambda: os.rename(vol, vol + ".y"))
    return got


def test_every_opcode_is_answered_beside_fio(fresh_pool: TestPool) -> None:
    """Namespace requests in a loop while fio keeps both driver threads busy: each is
    answered (within a deadline), as the Python engine answers it, and fio verifies."""
    require("fio")
    fresh_pool.create_volume("lin", SIZE)
    fresh_pool.create_volume("str", SIZE, stripes=2, stripe_size=64 * KiB)
    with mounted(fresh_pool, "engine=python"):
        reference = _namespace_ops(fresh_pool)
    assert str(reference["mkdir"]).startswith("errno"), reference
    assert reference["getxattr"] in (f"errno {errno.ENODATA}", f"errno {errno.ENOTSUP}"), reference
    with mounted(fresh_pool, "engine=native", "driver_threads=2"):
        load = subprocess.Popen(
            ["fio", "--name=rw", f"--filename={fresh_pool.volume_path('lin')}", "--rw=randrw",
             "--bs=4k", f"--size={SIZE}", "--direct=1", "--ioengine=libaio", "--iodepth=16",
             "--time_based", "--runtime=8", "--verify=crc32c", "--verify_fatal=1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        answers: list[dict[str, object]] = []
        slowest = [0.0]  # seconds of the slowest pass
        errors: list[BaseException] = []

        def loop() -> None:
            try:
                while load.poll() is None:
                    start = time.monotonic()
                    answers.append(_namespace_ops(fresh_pool))
                    slowest[0] = max(slowest[0], time.monotonic() - start)
            except BaseException as exc:  # noqa: BLE001 -- reported below
                errors.append(exc)

        worker = threading.Thread(target=loop, daemon=True)
        try:
            worker.start()
            out, _ = load.communicate(timeout=60)
            worker.join(timeout=15)
            assert not worker.is_alive(), "a namespace request got no answer within 15 s"
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
        assert load.returncode == 0, out
        assert not errors, errors
        assert len(answers) >= 20, f"only {len(answers)} passes in 8 s"
        assert slowest[0] < 5, f"a pass of namespace requests took {slowest[0]:.1f} s beside fio"
        for got in answers:
            assert got == reference, (got, reference)
        st = _status(fresh_pool)["engine"]
        assert st["served_natively"] > 1000 and st["handed_to_python"] > 20 * 9, st


# -- a map change under load ------------------------------------------------------


def test_a_resize_during_fio_verify(fresh_pool: TestPool) -> None:
    """Growing a natively served volume under fio verify: fio passes, the new size shows,
    and a write past the old end lands on the devices (the new table, or Python, serves it).

    fio writes at 4 MiB/s (8 s) so that the resize, a second or two with vv's start,
    is done while fio still writes; the block past the old end is read back from the
    backing files after the unmount, not from the page cache.
    """
    require("fio")
    fresh_pool.create_volume("lin", SIZE)
    block = random.Random(3).randbytes(MiB)
    with mounted(fresh_pool, "driver_threads=2") as node:
        path = fresh_pool.volume_path("lin")
        load = subprocess.Popen(
            ["fio", "--name=v", f"--filename={path}", "--rw=randwrite", "--bs=4k",
             f"--size={SIZE}", "--direct=1", "--ioengine=libaio", "--iodepth=16",
             "--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--rate=32m,4m"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(0.7)
            fresh_pool.vv("volume", "resize", "tank/lin", "--size", str(2 * SIZE))
            assert load.poll() is None, "fio ended before the resize: the test proves nothing"
            out, _ = load.communicate(timeout=120)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
        assert load.returncode == 0, out
        assert os.stat(path).st_size == 2 * SIZE
        fd = os.open(path, os.O_RDWR)
        try:
            assert os.pwrite(fd, block, SIZE + 5 * MiB) == MiB
            os.fsync(fd)
            assert os.pread(fd, MiB, SIZE + 5 * MiB) == block
            assert _engine_row(fresh_pool, "lin")["served_by"] == "native"
        finally:
            os.close(fd)
        node.umount()
    on_devices = _device_bytes(fresh_pool, "lin")
    assert len(on_devices) == 2 * SIZE
    assert on_devices[SIZE + 5 * MiB:SIZE + 6 * MiB] == block, "the write past the old end is lost"


# -- a crash of the node during native mirrored writes ------------------------------


def _legs_bytes(pool: TestPool, name: str) -> list[bytes]:
    """Each leg's copy of volume *name*, read from the backing files (no node running)."""
    with pool.manager() as mgr:
        shown = mgr.show_pool(pool.name)
    vmap = VolumeMap(shown.pool, shown.pool.volume(name))
    legs: list[bytearray] = []
    for piece in vmap.resolve(0, vmap.size):
        legs += [bytearray() for _ in range(len(piece.legs) - len(legs))]
        for leg, loc in zip(legs, piece.legs, strict=True):
            with open(shown.paths[loc.device], "rb") as f:
                leg += os.pread(f.fileno(), piece.length, loc.offset)
    return [bytes(leg) for leg in legs]


def _ackwriter(path: str, log: str, seed: int) -> subprocess.Popen[str]:
    """Eight threads of O_DIRECT 64 KiB writes at ~8 MiB/s, each logged once acknowledged."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.ackwriter", path, log, f"--size={SIZE}",
         f"--bs={64 * KiB}", "--depth=8", f"--seed={seed}", "--pause=0.06"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_sigkill_during_native_mirrored_writes_then_resync_leaves_identical_legs(
        fresh_pool: TestPool, tmp_path: Any) -> None:
    """SIGKILL the node of a native mount mid-writes on a mirror (eight writers in flight);
    after a remount (Python engine) the crash resync runs, every acknowledged write reads
    back, a block fsynced before survives, and both legs hold the same bytes.

    The writes come from tests/support/ackwriter.py, which logs a write only once it
    returned: fio's saved verify state counts a write that failed when the node died as
    written (see that module)."""
    fresh_pool.create_volume("mir", 2 * SIZE, mirrors=2)
    path = fresh_pool.volume_path("mir")
    log = str(tmp_path / "acked")
    before = random.Random(6).randbytes(MiB)
    with mounted(fresh_pool, "engine=native", "driver_threads=2", "probe_interval=0") as node:
        fd = os.open(path, os.O_RDWR)
        try:
            assert os.pwrite(fd, before, SIZE + 3 * MiB) == MiB  # outside the writer's range
            os.fsync(fd)
        finally:
            os.close(fd)
        proc = _ackwriter(path, log, seed=12)
        try:
            wait_until(lambda: os.path.exists(log) and len(ackwriter.acknowledged(log)) >= 64,
                       30, "64 acknowledged writes")
            assert proc.poll() is None, f"the writer ended before the kill:\n{proc.communicate()[0]}"
            assert _status(fresh_pool)["engine"]["engine"] == "native"
            node.kill()
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode != 0, f"the writer finished before the node died:\n{out}"
    acked = ackwriter.acknowledged(log)
    assert len(acked) >= 64 and len(set(acked)) == len(acked), acked
    with mounted(fresh_pool, "engine=python", "probe_interval=0", "resync_rate=0") as node:
        def crash_resync_done() -> bool:
            jobs = _status(fresh_pool)["pools"][0]["mirror"]["jobs"]
            return any(j["kind"] == "crash" and j["state"] == "done" for j in jobs)
        wait_until(crash_resync_done, 60, "the crash resync")
        with open(path, "rb") as f:
            seen = {off: os.pread(f.fileno(), 64 * KiB, off) for off in range(0, SIZE, 64 * KiB)}
        node.umount()
    lost = [off for off in acked if seen[off] != ackwriter.block(12, off, 64 * KiB)]
    assert not lost, f"{len(lost)} acknowledged writes lost, first at offset {lost[0]}"
    unwritten = [off for off in range(0, SIZE, 64 * KiB) if off not in set(acked)]
    assert any(seen[off] != ackwriter.block(12, off, 64 * KiB) for off in unwritten), \
        "every block reads as written: the check cannot tell a lost write"
    legs = _legs_bytes(fresh_pool, "mir")
    assert len(legs) == 2 and len(legs[0]) == 2 * SIZE
    assert legs[0][SIZE + 3 * MiB:SIZE + 4 * MiB] == before, "the fsynced block is gone"
    assert legs[0] == legs[1], "the legs differ after the crash resync"
