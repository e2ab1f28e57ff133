"""Mirrors that survive failures: degraded mode, dirty-range resync, replace, paths, policies.

Real mounts under fio ``--verify``.  A device fails for real: its backing
file is served by ``tests/support/faultfs.py``, a small FUSE file system that
returns EIO (or delays) on command, so the node sees exactly what a dying
disk gives it.  Every test builds its own pool; mounts are always cleaned
up (lazy unmount, terminate, kill).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import mapper
import vvfsck as fsck
from mapper.layout import VolumeMap
from metadata import dirtylog
from vvfs.data.mirror import MARK_AHEAD

from ..support.faultfs import FaultFS, faultfs_mounted
from ..support.mountutil import (
    BIN,
    GiB,
    MiB,
    TestPool,
    fio,
    mounted,
    read_dev,
    require,
    run,
    wait_until,
)

pytestmark = pytest.mark.slow

VOLUME = 256 * MiB
#: fio's working set: a corner of the volume, so that resync can be told apart
FIO_SIZE = 32 * MiB
NODE_OPTIONS = ("probe_interval=0", "resync_rate=0")
#: bits a sequential stream sets ahead of itself (vvfs.data.mirror.MARK_AHEAD regions of 1 MiB)
AHEAD = MARK_AHEAD * MiB
VVFSCK = str(BIN / "vvfsck")


def _sparse(path: Path, size: int = GiB) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


@contextlib.contextmanager
def faulty_pool(tmp_path: Path, faulty: tuple[str, ...] = ("dev1.img",), plain: tuple[str, ...]
                = ("dev0.img",), **volume: Any) -> Iterator[tuple[TestPool, FaultFS]]:
    """A pool whose devices *faulty* are served by faultfs, with mirrored volume m."""
    require("fio", "fusermount3")
    backing = tmp_path / "backing"
    backing.mkdir()
    for name in faulty:
        _sparse(backing / name)
    with faultfs_mounted(backing, tmp_path / "fault") as ffs:
        names = sorted(plain + faulty)
        paths = [ffs.path(n) if n in faulty else _sparse(tmp_path / n) for n in names]
        pool = TestPool(tmp_path, paths=paths)
        pool.create_volume("m", volume.pop("size", VOLUME), mirrors=2, **volume)
        yield pool, ffs


def _fio_args(path: str, *extra: str) -> list[str]:
    return ["fio", "--output-format=normal", "--name=mirror", f"--filename={path}",
            "--rw=randwrite", "--bsrange=4k-128k", f"--size={FIO_SIZE}", "--direct=1",
            "--ioengine=libaio", "--iodepth=8", "--verify=crc32c", "--verify_fatal=1", *extra]


@contextlib.contextmanager
def fio_running(path: str, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """fio verify in the background (rate-limited so that a fault lands mid-write)."""
    proc = subprocess.Popen(_fio_args(path, "--do_verify=1", "--rate=16m", *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _fio_result(proc: subprocess.Popen[str]) -> None:
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, f"fio failed:\n{out}"


def _verify_only(path: str) -> None:
    fio(*_fio_args(path, "--verify_only")[2:])


def _status(pool: TestPool) -> dict[str, Any]:
    return json.loads(pool.vv("status", "--json").stdout)["pools"][0]


def _device_state(pool: TestPool, name: str) -> str:
    return next(d["state"] for d in _status(pool)["devices"] if d["name"] == name)


def _events(pool: TestPool) -> list[dict[str, Any]]:
    return json.loads(pool.vv("events", "--json").stdout)


def _kinds(pool: TestPool) -> list[tuple[str, str]]:
    return [(e["kind"], e["object"]) for e in _events(pool)]


def _readable(path: str, tmp_path: Path) -> str:
    """A path of the same bytes that never fails (faultfs files: their backing file)."""
    fault = str(tmp_path / "fault") + "/"
    return str(tmp_path / "backing" / path[len(fault):]) if path.startswith(fault) else path


def assert_legs_identical(pool: TestPool, tmp_path: Path, name: str = "m") -> None:
    with pool.manager() as mgr:
        shown = mgr.show_pool(pool.name)
    p = shown.pool
    vmap = VolumeMap(p, p.volume(name))
    paths = {d.uuid: _readable(d.paths[0], tmp_path) for d in p.devices}
    files = {u: os.open(path, os.O_RDONLY) for u, path in paths.items()}
    try:
        for piece in vmap.resolve(0, vmap.size):
            for off in range(0, piece.length, 8 * MiB):
                n = min(8 * MiB, piece.length - off)
                a, b = (os.pread(files[loc.device], n, loc.offset + off) for loc in piece.legs)
                assert a == b, f"legs differ in volume bytes {piece.offset + off}+{n}"
    finally:
        for fd in files.values():
            os.close(fd)


def _write(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, offset) == len(data)
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# degraded mode and dirty-range resync


def test_a_failed_leg_under_fio_then_only_dirty_ranges_resync(tmp_path: Path) -> None:
    with faulty_pool(tmp_path) as (pool, ffs), mounted(pool, *NODE_OPTIONS) as node:
        path = pool.volume_path("m")
        with fio_running(path) as proc:
            time.sleep(0.7)
            ffs.fail("dev1.img")
            _fio_result(proc)  # no error reached the host
        _write(path, 192 * MiB, os.urandom(4 * MiB))  # a known range, while degraded
        wait_until(lambda: _device_state(pool, "d1") == "failed", 20, "d1 failed")
        vol = next(v for v in _status(pool)["volumes"] if v["name"] == "m")
        assert vol["state"] == "degraded"
        kinds = _kinds(pool)
        assert ("device-failed", "d1") in kinds and ("volume-degraded", "tank/m") in kinds
        assert any(k == "config-changed" for k, _ in kinds)
        offline = pool.vv("status")  # the table says so too
        assert "degraded" in offline.stdout and "failed" in offline.stdout

        ffs.heal()
        job = json.loads(pool.vv("device", "online", "tank", "d1", "--wait", "--json",
                                 timeout=120).stdout)
        assert job["state"] == "done", job
        print(f"resync after the failure copied {job['bytes_done']} bytes")
        # only what was written while d1 was away: fio's corner and the 4 MiB (and
        # the bits a stream set ahead of itself before d1 failed), not the volume
        assert 4 * MiB <= job["bytes_done"] <= FIO_SIZE + 4 * MiB + AHEAD, job
        assert _device_state(pool, "d1") == "ok"
        kinds = _kinds(pool)
        assert ("device-returned", "d1") in kinds and ("resync-done", "d1") in kinds
        _verify_only(path)  # balanced reads: half of them from the resynced leg
        node.umount()
    assert_legs_identical(pool, tmp_path)


def _dirty_region_offsets(pool: TestPool, tmp_path: Path) -> tuple[Any, list[int], int]:
    """(configuration, device offsets of dirty regions on leg 0's device, region size)."""
    with pool.manager() as mgr:
        p = mgr.show_pool(pool.name).pool
    vol = p.volume("m")
    leg0 = next(d for d in p.devices if d.uuid == vol.segments[0].areas[0][0].device)
    geo = dirtylog.geometry(leg0, p.extent_size)
    assert geo is not None
    from vvfs.io.filedev import FileDevice

    with FileDevice(_readable(leg0.paths[0], tmp_path), readonly=True) as dev:
        image = dirtylog.read_log(dev, geo, p.uuid, leg0.uuid)
    assert not image.problems
    return p, [geo.region_start(r) for r in image.dirty()], geo.region


class TornWrite(NamedTuple):
    """A region that differs between the legs after a crash (see _crash_with_a_torn_write)."""

    dirty: int  # regions dirty on leg 0 at the crash
    region: int  # bytes per region
    leg1: Path  # leg 1's backing file
    name: str  # leg 1's device name
    offset: int  # the damaged bytes on leg 1
    good: bytes  # what leg 0 holds there


def _crash_with_a_torn_write(pool: TestPool, tmp_path: Path) -> TornWrite:
    """SIGKILL a node under fio, then damage leg 1 in a region dirty at the crash.

    (An in-flight write that reached leg 0 and not leg 1.)
    """
    with mounted(pool, *NODE_OPTIONS) as node, fio_running(pool.volume_path("m")):
        time.sleep(1.0)
        node.kill()
    p, dirty, region = _dirty_region_offsets(pool, tmp_path)
    assert dirty, "no region was dirty at the crash"
    seg0 = p.volume("m").segments[0]
    leg0_dev, leg1_dev = seg0.areas[0][0].device, seg0.areas[1][0].device
    devs = {d.uuid: d for d in p.devices}
    base0 = devs[leg0_dev].data_start + seg0.areas[0][0].start * p.extent_size
    base1 = devs[leg1_dev].data_start + seg0.areas[1][0].start * p.extent_size
    victim = dirty[len(dirty) // 2]
    with open(devs[leg0_dev].paths[0], "rb") as f:
        f.seek(victim)
        good = f.read(4096)
    with open(devs[leg1_dev].paths[0], "r+b") as f:
        f.seek(base1 + victim - base0)
        f.write(os.urandom(4096))
    return TornWrite(len(dirty), region, Path(devs[leg1_dev].paths[0]), devs[leg1_dev].name,
                     base1 + victim - base0, good)


def test_a_sigkill_mid_writes_resyncs_only_dirty_ranges(tmp_path: Path) -> None:
    require("fio")
    pool = TestPool(tmp_path, devices=2)
    pool.create_volume("m", VOLUME, mirrors=2)
    torn = _crash_with_a_torn_write(pool, tmp_path)
    with mounted(pool, *NODE_OPTIONS) as node:
        wait_until(lambda: any(j["kind"] == "crash" and j["state"] == "done"
                               for j in _status(pool)["mirror"]["jobs"]), 60, "the resync")
        job = next(j for j in _status(pool)["mirror"]["jobs"] if j["kind"] == "crash")
        print(f"resync after the crash copied {job['bytes_done']} bytes;"
              f" {torn.dirty} regions were dirty on leg 0")
        assert torn.dirty * torn.region <= job["bytes_done"] <= FIO_SIZE + AHEAD, job
        assert ("resync-done", "tank") in _kinds(pool)
        node.umount()
    p, v = pool.show("m")
    assert VolumeMap(p, v).size == VOLUME  # type: ignore[arg-type]
    assert_legs_identical(pool, tmp_path)
    # repaired from leg 0, not the reverse
    assert read_dev(str(torn.leg1), torn.offset, 4096) == torn.good


def test_replace_a_failed_device(tmp_path: Path) -> None:
    with faulty_pool(tmp_path) as (pool, ffs), mounted(pool, *NODE_OPTIONS) as node:
        path = pool.volume_path("m")
        fio(*_fio_args(path, "--do_verify=1")[2:])
        old = next(d for d in _status(pool)["devices"] if d["name"] == "d1")["uuid"]
        ffs.fail("dev1.img")
        _write(path, 100 * MiB, os.urandom(MiB))
        wait_until(lambda: _device_state(pool, "d1") == "failed", 20, "d1 failed")
        spare = _sparse(tmp_path / "new.img")
        job = json.loads(pool.vv("device", "replace", "tank", "d1", spare, "--wait", "--json",
                                 timeout=120).stdout)
        assert job["state"] == "done", job
        assert job["bytes_done"] == VOLUME  # a full rebuild of d1's areas
        devices = {d["name"]: d for d in _status(pool)["devices"]}
        assert devices["d1"]["state"] == "ok" and devices["d1"]["path"] == spare
        assert old not in {d["uuid"] for d in devices.values()}
        _verify_only(path)
        node.umount()
    with pool.manager() as mgr:
        p = mgr.show_pool(pool.name).pool
    assert old not in {d.uuid for d in p.devices}
    assert not p.operations
    assert_legs_identical(pool, tmp_path)


# ---------------------------------------------------------------------------
# path failover


def test_path_failover_under_fio(tmp_path: Path) -> None:
    with faulty_pool(tmp_path) as (pool, ffs), mounted(pool, *NODE_OPTIONS) as node:
        alternate = str(tmp_path / "backing" / "dev1.img")  # the same bytes, another way
        pool.vv("device", "paths", "tank", "d1", "--add", alternate)
        with fio_running(pool.volume_path("m")) as proc:
            time.sleep(0.7)
            ffs.fail("dev1.img")
            _fio_result(proc)
        assert _device_state(pool, "d1") == "ok"
        kinds = _kinds(pool)
        assert ("path-failed", "d1") in kinds and ("device-failed", "d1") not in kinds
        paths = json.loads(pool.vv("device", "paths", "tank", "d1", "--json").stdout)["paths"]
        assert {p["path"]: p["state"] for p in paths} == {ffs.path("dev1.img"): "failed",
                                                           alternate: "active"}
        node.umount()
    assert_legs_identical(pool, tmp_path)


# ---------------------------------------------------------------------------
# read policies


def _device_reads(pool: TestPool) -> dict[str, int]:
    return {d["uuid"]: d["stats"]["bytes_read"] for d in _status(pool)["devices"]}


def _read_direct(path: str, count: int, size: int, stride: int) -> bytes:
    import mmap

    buf = mmap.mmap(-1, size)
    out = b""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        for i in range(count):
            assert os.preadv(fd, [buf], i * stride) == size
            out += bytes(buf)
    finally:
        os.close(fd)
    return out


def _legs(pool: TestPool) -> tuple[str, str]:
    _, v = pool.show("m")
    return v.segments[0].areas[0][0].device, v.segments[0].areas[1][0].device  # type: ignore[attr-defined]


def test_primary_policy_reads_only_leg_0(tmp_path: Path) -> None:
    require("fio")
    pool = TestPool(tmp_path, devices=2)
    pool.create_volume("m", 64 * MiB, mirrors=2, read_policy="primary")
    leg0, leg1 = _legs(pool)
    with mounted(pool, *NODE_OPTIONS) as node:
        path = pool.volume_path("m")
        _write(path, 0, os.urandom(16 * MiB))
        before = _device_reads(pool)
        _read_direct(path, 16, MiB, MiB)
        after = _device_reads(pool)
        assert after[leg0] - before[leg0] >= 16 * MiB
        assert after[leg1] == before[leg1], "primary read from leg 1"
        pool.vv("volume", "set", "tank/m", "--read-policy", "balanced")
        _read_direct(path, 16, MiB, MiB)
        again = _device_reads(pool)
        assert again[leg0] > after[leg0] and again[leg1] > after[leg1]
        node.umount()


def test_first_policy_answers_from_the_fast_leg(tmp_path: Path) -> None:
    with faulty_pool(tmp_path, faulty=("dev0.img", "dev1.img"), plain=(), size=64 * MiB,
                     read_policy="first") as (pool, ffs), mounted(pool, *NODE_OPTIONS) as node:
        path = pool.volume_path("m")
        data = os.urandom(8 * MiB)
        _write(path, 0, data)
        leg0, _ = _legs(pool)
        slow = next(Path(d["path"]).name for d in _status(pool)["devices"] if d["uuid"] == leg0)
        ffs.delay(slow, 0.25, "read")
        started = time.monotonic()
        got = _read_direct(path, 16, 256 * 1024, 512 * 1024)
        elapsed = time.monotonic() - started
        assert got == b"".join(data[i * 512 * 1024:i * 512 * 1024 + 256 * 1024]
                               for i in range(16))
        assert elapsed < 2.0, f"16 reads took {elapsed:.2f}s: the slow leg (0.25 s) was waited for"
        assert _status(pool)["mirror"]["first_wins"].get("1", 0) >= 8
        ffs.heal()  # (the delay also slows the metadata reads of a commit)
        pool.vv("volume", "set", "tank/m", "--read-policy", "primary")
        ffs.delay(slow, 0.25, "read")
        started = time.monotonic()
        _read_direct(path, 4, 256 * 1024, 512 * 1024)
        assert time.monotonic() - started >= 0.9  # primary waits for leg 0
        ffs.heal()
        node.umount()


# ---------------------------------------------------------------------------
# a device that vanishes and comes back; events as they happen


def _read_events(proc: subprocess.Popen[bytes], until: str, timeout: float) -> list[dict[str, Any]]:
    """JSON event lines from a `vv events --follow --json` process, up to kind *until*."""
    import select

    deadline = time.monotonic() + timeout
    buf, out = b"", []
    while time.monotonic() < deadline:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if not ready:
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            out.append(json.loads(line))
            if out[-1]["kind"] == until:
                return out
    pytest.fail(f"no {until} event streamed in {timeout}s; got {[e['kind'] for e in out]}")


def test_a_vanished_device_comes_back_by_itself_and_events_stream(tmp_path: Path) -> None:
    from ..support.mountutil import VV

    with faulty_pool(tmp_path, size=64 * MiB) as (pool, ffs), \
            mounted(pool, "probe_interval=0.5", "resync_rate=0") as node:
        path = pool.volume_path("m")
        _write(path, 0, os.urandom(MiB))
        follower = subprocess.Popen([VV, "events", "--follow", "--json"], env=pool.env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            ffs.vanish("dev1.img")
            _write(path, 8 * MiB, os.urandom(2 * MiB))
            seen = _read_events(follower, "volume-degraded", 30)
            assert ("device-failed", "d1") in [(e["kind"], e["object"]) for e in seen]
            ffs.heal()
            seen = _read_events(follower, "resync-done", 60)
            assert "device-returned" in [e["kind"] for e in seen]
        finally:
            follower.kill()
            follower.wait(10)
        wait_until(lambda: _device_state(pool, "d1") == "ok", 30, "d1 back")
        node.umount()
    assert_legs_identical(pool, tmp_path)


# ---------------------------------------------------------------------------
# a device missing when the node starts


PROBING = ("probe_interval=0.5", "resync_rate=0")


@contextlib.contextmanager
def moved_away(path: Path) -> Iterator[Path]:
    """Move *path* away (a device gone); put it back afterwards if the test did not.

    (Into a directory of its own: the search paths, one level deep, would find it.)
    """
    away = path.parent / "away" / path.name
    away.parent.mkdir(exist_ok=True)
    path.rename(away)
    try:
        yield away
    finally:
        if away.exists():
            away.rename(path)


def _job(pool: TestPool, kind: str) -> dict[str, Any]:
    return next(j for j in _status(pool)["mirror"]["jobs"] if j["kind"] == kind)


def test_a_device_missing_at_start_comes_back_by_itself(tmp_path: Path) -> None:
    require("fio")
    pool = TestPool(tmp_path, devices=2)
    pool.create_volume("m", VOLUME, mirrors=2)
    dev1 = tmp_path / "dev1.img"
    with moved_away(dev1) as away, mounted(pool, *PROBING) as node:
        wait_until(lambda: _device_state(pool, "d1") == "failed", 20, "d1 failed at start")
        assert ("device-failed", "d1") in _kinds(pool)
        path = pool.volume_path("m")
        fio(*_fio_args(path, "--do_verify=1")[2:])
        away.rename(dev1)
        wait_until(lambda: _device_state(pool, "d1") == "ok", 60, "d1 back by itself")
        job = _job(pool, "returning")
        assert job["state"] == "done", job
        print(f"resync of the returning device copied {job['bytes_done']} bytes")
        assert MiB <= job["bytes_done"] <= FIO_SIZE, job  # fio's corner, not the volume
        kinds = _kinds(pool)
        assert ("device-returned", "d1") in kinds and ("resync-done", "d1") in kinds
        _verify_only(path)
        node.umount()
    assert_legs_identical(pool, tmp_path)


def _failure(pool: TestPool, device: str) -> tuple[str, str]:
    """(state, failure) of *device* in the committed configuration (through the node, if any)."""
    from vvfs.node.client import open_manager

    with open_manager(pool.state) as mgr:
        d = mgr.show_pool(pool.name).pool.device(device)
    return d.state, d.failure


def test_a_vanished_device_is_looked_for_across_restarts(tmp_path: Path) -> None:
    pool = TestPool(tmp_path, devices=2)
    pool.create_volume("m", 64 * MiB, mirrors=2)
    dev1 = tmp_path / "dev1.img"
    data = os.urandom(4 * MiB)
    with moved_away(dev1) as away:
        with mounted(pool, *PROBING) as node:
            wait_until(lambda: _failure(pool, "d1") == ("failed", "vanished"), 20,
                       "d1's failure committed as vanished")
            _write(pool.volume_path("m"), 8 * MiB, data)
            node.umount()
        with mounted(pool, *PROBING) as node:  # d1 failed in the configuration already
            assert _failure(pool, "d1") == ("failed", "vanished")
            away.rename(dev1)
            wait_until(lambda: _failure(pool, "d1") == ("ok", ""), 60, "d1 back by itself")
            assert _job(pool, "returning")["state"] == "done"
            assert read_dev(pool.volume_path("m"), 8 * MiB, len(data)) == data
            node.umount()
    assert_legs_identical(pool, tmp_path)


def test_a_device_failed_by_hand_waits_for_online_across_restarts(tmp_path: Path) -> None:
    pool = TestPool(tmp_path, devices=2)
    pool.create_volume("m", 16 * MiB, mirrors=2)
    with mounted(pool, *PROBING) as node:
        pool.vv("device", "fail", "tank", "d1")
        assert _failure(pool, "d1") == ("failed", "admin")
        node.umount()
    with mounted(pool, *PROBING) as node:
        time.sleep(2.5)  # five probe intervals: the probe must leave it alone
        assert _failure(pool, "d1") == ("failed", "admin")
        assert not [k for k, obj in _kinds(pool) if k == "device-returned" and obj == "d1"]
        pool.vv("device", "online", "tank", "d1", "--wait")
        assert _failure(pool, "d1") == ("ok", "")
        node.umount()


def _split_brain(tmp_path: Path) -> tuple[TestPool, dict[str, bytes]]:
    """A pool of d0, d1 (mirrored volume m) used in two parts: each device alone, then both.

    This host goes on with d0 alone; another host imports d1 alone and does
    the same.  Returns the pool and the MiB each part wrote at offset 0.
    """
    pool = TestPool(tmp_path, devices=2)
    pool.create_volume("m", 16 * MiB, mirrors=2)
    written = {"d0": os.urandom(MiB), "d1": os.urandom(MiB)}
    elsewhere = copy.copy(pool)
    elsewhere.state, elsewhere.mnt = str(tmp_path / "state2"), tmp_path / "mnt2"
    elsewhere.mnt.mkdir()
    for host, alone, gone in ((pool, "d0", "d1"), (elsewhere, "d1", "d0")):
        with moved_away(tmp_path / f"dev{gone[1]}.img"):
            if host is elsewhere:
                host.vv("pool", "import", "tank", "--search", str(tmp_path), "--force")
            with mounted(host, *PROBING) as node:
                wait_until(lambda host=host, gone=gone: _failure(host, gone)
                           == ("failed", "vanished"), 20,
                           f"{gone} failed while {alone} is used alone")
                _write(host.volume_path("m"), 0, written[alone])
                node.umount()
    return pool, written


def _halves(pool: TestPool) -> tuple[str, str]:
    """(kept, apart): the device the pool goes on with, and the one it failed."""
    states = {d: _failure(pool, d) for d in ("d0", "d1")}
    [kept] = [d for d, s in states.items() if s == ("ok", "")]
    [apart] = [d for d, s in states.items() if s[0] == "failed"]
    return kept, apart


def test_a_device_written_apart_is_never_brought_back_as_it_is(tmp_path: Path) -> None:
    """A split brain: each device used alone, then both again."""
    pool, written = _split_brain(tmp_path)
    check = run(VVFSCK, "--state-dir", pool.state, "--pool", "tank", check=False)
    assert check.returncode == fsck.EXIT_LEFT, check.stdout + check.stderr
    assert "was written apart from the pool" in check.stdout, check.stdout
    # the newest configuration (d1's) says the other host took the pool: this
    # host may not serve it until it takes it back
    refused = pool.vv("mount", "tank", str(pool.mnt), check=False)
    assert refused.returncode != 0 and "is active on host" in refused.stderr, refused
    again = pool.vv("pool", "import", "tank", "--search", str(tmp_path), check=False)
    assert again.returncode == 1 and "took it; import it with --force" in again.stderr, again
    pool.vv("pool", "import", "tank", "--search", str(tmp_path), "--force")
    with mounted(pool, *PROBING) as node:
        kept, apart = _halves(pool)
        wait_until(lambda: ("device-diverged", apart) in _kinds(pool), 20,
                   f"a device-diverged event for {apart}")
        time.sleep(1.5)  # three more probe intervals: it stays out
        assert _failure(pool, apart)[0] == "failed"
        assert read_dev(pool.volume_path("m"), 0, MiB) == written[kept]
        refused = pool.vv("device", "online", "tank", apart, check=False)
        assert refused.returncode == 1, refused
        assert "was written apart from the pool" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        pool.vv("device", "online", "tank", apart, "--discard-divergent", "--wait",
                timeout=120)
        assert _failure(pool, apart) == ("ok", "")
        assert read_dev(pool.volume_path("m"), 0, MiB) == written[kept]
        node.umount()
    assert_legs_identical(pool, tmp_path)


def test_vvfsck_advises_discarding_only_the_half_the_pool_did_not_keep(tmp_path: Path
                                                                         ) -> None:
    pool, _ = _split_brain(tmp_path)
    with pool.manager() as mgr:
        d = {x.name: x.state for x in mgr.show_pool("tank").pool.devices}
    [kept] = [n for n, st in d.items() if st == "ok"]
    [apart] = [n for n, st in d.items() if st == "failed"]
    check = run(VVFSCK, "--state-dir", pool.state, "--pool", "tank", check=False)
    assert check.returncode == fsck.EXIT_LEFT, check.stdout + check.stderr
    advice = [ln for ln in check.stdout.splitlines() if "--discard-divergent" in ln]
    assert advice and all(f"tank {apart} --discard-divergent" in ln for ln in advice), \
        check.stdout
    assert f"device {kept} was written apart" not in check.stdout, check.stdout


def test_the_split_brain_remedy_leaves_a_pool_vvfsck_finds_clean(tmp_path: Path) -> None:
    pool, _ = _split_brain(tmp_path)
    # the newest half is the other host's: take the pool back to serve it here
    pool.vv("pool", "import", "tank", "--search", str(tmp_path), "--force")
    with mounted(pool, *PROBING) as node:
        _, apart = _halves(pool)
        pool.vv("device", "online", "tank", apart, "--discard-divergent", "--wait",
                timeout=120)
        assert _failure(pool, apart) == ("ok", "")
        node.umount()
    check = run(VVFSCK, "--state-dir", pool.state, "--pool", "tank", "--deep", check=False)
    assert check.returncode == fsck.EXIT_CLEAN, check.stdout + check.stderr
    assert "split-brain" not in check.stdout and "written apart" not in check.stdout, \
        check.stdout


def test_a_split_brain_is_seen_after_the_rings_wrapped(tmp_path: Path) -> None:
    """Offline, each device alone on its own host; then many commits on one side."""
    from vvfs.api import Manager

    pool = TestPool(tmp_path, devices=2)
    pool.create_volume("m", 16 * MiB, mirrors=2)
    with moved_away(tmp_path / "dev1.img"), pool.manager() as mgr:
        mgr.fail_device("tank", "d1", reason="test", only_if_failed=False)
        for i in range(12):  # more commits than a ring holds
            mgr.create_volume(f"tank/v{i}", mapper.VolumeSpec(name="", size=4 * MiB))
        failed_at = mgr.show_pool("tank").pool.device("d1").failed_at
    assert failed_at > 0
    with moved_away(tmp_path / "dev0.img"):
        other = Manager(str(tmp_path / "state2"))
        with other:
            other.import_pool("tank", search=[str(tmp_path)], force=True)
            other.fail_device("tank", "d0", reason="test", only_if_failed=False)
    check = run(VVFSCK, "--state-dir", pool.state, "--pool", "tank", check=False)
    assert check.returncode == fsck.EXIT_LEFT, check.stdout + check.stderr
    assert (f"while the pool has had it failed since generation {failed_at}"
            in check.stdout), check.stdout
    refused = pool.vv("device", "online", "tank", "d1", check=False)
    assert refused.returncode == 1 and "was written apart" in refused.stderr, refused


# ---------------------------------------------------------------------------
# a failed path that works again


def _path_states(pool: TestPool, device: str = "d1") -> dict[str, str]:
    out = json.loads(pool.vv("device", "paths", "tank", device, "--json").stdout)
    return {p["path"]: p["state"] for p in out["paths"]}


@pytest.mark.parametrize("backing", ["buffered", "direct"])
def test_a_failed_primary_path_returns_and_io_goes_back_to_it(tmp_path: Path, backing: str
                                                              ) -> None:
    with faulty_pool(tmp_path) as (pool, ffs), \
            mounted(pool, *PROBING, f"backing={backing}") as node:
        primary = ffs.path("dev1.img")
        alternate = str(tmp_path / "backing" / "dev1.img")  # the same bytes, another way
        pool.vv("device", "paths", "tank", "d1", "--add", alternate)
        path = pool.volume_path("m")
        with fio_running(path, "--rate=4m") as proc:  # writing until after the switch back
            time.sleep(0.7)
            ffs.fail("dev1.img")
            wait_until(lambda: _path_states(pool) == {primary: "failed", alternate: "active"},
                       20, "the switch to the alternate")
            ffs.heal()
            wait_until(lambda: _path_states(pool) == {primary: "active", alternate: "standby"},
                       20, "the primary back in use")
            _fio_result(proc)
        assert _device_state(pool, "d1") == "ok"
        kinds = _kinds(pool)
        assert ("path-failed", "d1") in kinds and ("path-returned", "d1") in kinds
        assert ("device-failed", "d1") not in kinds
        writes = ffs.state()["dev1.img"]["writes"]
        _write(path, 200 * MiB, os.urandom(MiB))
        assert ffs.state()["dev1.img"]["writes"] > writes, "d1 is not written through its primary"
        node.umount()
    assert_legs_identical(pool, tmp_path)


def test_a_device_missing_after_a_crash_gets_the_regions_dirty_at_the_crash(tmp_path: Path
                                                                            ) -> None:
    require("fio")
    pool = TestPool(tmp_path, devices=2)
    pool.create_volume("m", VOLUME, mirrors=2)
    torn = _crash_with_a_torn_write(pool, tmp_path)
    with moved_away(torn.leg1) as away, mounted(pool, *PROBING) as node:
        wait_until(lambda: _device_state(pool, torn.name) == "failed", 20, "a failure at start")
        wait_until(lambda: _job(pool, "crash")["state"] == "done", 20, "the crash resync")
        assert _job(pool, "crash")["regions_left"] == torn.dirty, _job(pool, "crash")
        away.rename(torn.leg1)
        wait_until(lambda: _device_state(pool, torn.name) == "ok", 60, "the device back")
        job = _job(pool, "returning")
        assert job["bytes_done"] >= torn.dirty * torn.region, job
        node.umount()
    assert_legs_identical(pool, tmp_path)
    assert read_dev(str(torn.leg1), torn.offset, 4096) == torn.good
