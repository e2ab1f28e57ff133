"""Resync and moves together, and which leg a resync keeps.

* A resync keeps, block by block, the leg whose data matches its stored
  checksum (not simply leg 0), and what it writes to a moving run also
  reaches the move's destination: shown on real files through the resync
  engine itself, and through a real mount after a crash.
* A move pauses while a leg of the moved volume is failed and goes on by
  itself after the leg is back and resynced; it is refused while a device
  is failed.  Real mount, fio ``--verify``, a real failing layer (faultfs).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from mapper import move as moves
from mapper.layout import VolumeMap
from metadata import dirtylog
from metadata.model import DeviceUUID, Pool
from vvfs.data import checksums
from vvfs.data.checksums import ChecksumStore
from vvfs.data.guard import MoveShadow, PoolGuard
from vvfs.data.mirror import PoolMirror
from vvfs.io.devio import DataDevice, io_limiter
from vvfs.io.filedev import FileDevice

from ..support.mountutil import MiB, TestPool, mounted, wait_until
from .test_mirror_failover import (
    NODE_OPTIONS,
    _fio_result,
    _kinds,
    _status,
    _verify_only,
    _write,
    assert_legs_identical,
    faulty_pool,
    fio_running,
)

pytestmark = pytest.mark.slow


def _config(pool: TestPool) -> Pool:
    with pool.manager() as mgr:
        return mgr.show_pool(pool.name).pool


def _pread(path: str, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _pwrite(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _set_dirty(pool: Pool, device: str, path: str, offset: int, length: int) -> None:
    """Set the dirty-log bits of ``[offset, offset+length)`` on *device*, as a crash leaves them."""
    d = next(x for x in pool.devices if x.uuid == device)
    geo = dirtylog.geometry(d, pool.extent_size)
    assert geo is not None, f"device {d.name} has no dirty log"
    with FileDevice(path) as dev:
        image = dirtylog.read_log(dev, geo, pool.uuid, d.uuid)
        for r in geo.regions_of(offset, length):
            dirtylog.set_bit(image.bits, r)
        dirtylog.write_log(dev, image, pool.uuid, d.uuid)


# ---------------------------------------------------------------------------
# the resync engine on real files


def test_resync_keeps_the_leg_matching_its_checksum_and_feeds_a_move(tmp_path: Path) -> None:
    pool = TestPool(tmp_path, devices=3)
    pool.create_volume("m", 16 * MiB, mirrors=2, on=[("d0", None), ("d1", None)])
    p = _config(pool)
    vmap = VolumeMap(p, p.volume("m"))
    piece = vmap.resolve(0, MiB)[0]
    leg0, leg1 = piece.legs
    name = {d.uuid: d.name for d in p.devices}
    path = {d.uuid: d.paths[0] for d in p.devices}
    # a move of leg 0's extents to d2 is recorded (not copied yet)
    moving = moves.plan_move(p, "m", "d2", name[leg0.device])
    record = moves.find(moving)
    assert record is not None
    right, torn = os.urandom(MiB), bytearray(os.urandom(MiB))
    torn[:MiB // 2] = right[:MiB // 2]  # leg 0 differs in the second half only
    _pwrite(path[leg0.device], leg0.offset, bytes(torn))
    _pwrite(path[leg1.device], leg1.offset, right)

    async def main() -> dict[str, int]:
        limiter = io_limiter(4)
        devs = {DeviceUUID(d.uuid): DataDevice(d.paths[0], d.uuid, limiter) for d in p.devices}
        try:
            store = ChecksumStore(moving, devs)
            values = checksums.pack(checksums.block_crcs(memoryview(right)))
            await store.update([(leg0.device, leg0.offset, values),
                                (leg1.device, leg1.offset, values)])
            guard = PoolGuard(store)
            guard.move = MoveShadow.build(moving, record)
            pm = PoolMirror(moving, devs)
            pm.checksums, pm.guard = store, guard
            await pm.attach_devices()
            await pm.mark_ranges([(leg0.device, leg0.offset, MiB)])
            job = pm.new_job("crash")
            await pm.resync(job)
            assert job.state == "done", job
            dest = guard.move.map(leg0.device, leg0.offset, MiB)
            assert len(dest) == 1, dest
            _skip, dest_dev, dest_at, n = dest[0]
            assert n == MiB
            assert await devs[dest_dev].pread(MiB, dest_at) == right, \
                "the resync's write to leg 0 did not reach the move's destination"
            assert await store.read_media(dest_dev, dest_at, MiB // 4096) == \
                checksums.block_crcs(memoryview(right)), "the destination's entries"
            return {"judged": pm.stats.resync_judged, "other": pm.stats.resync_judged_other}
        finally:
            for dev in devs.values():
                dev.close()

    stats = trio.run(main)
    blocks = MiB // 2 // 4096
    assert stats == {"judged": blocks, "other": blocks}, stats
    assert _pread(path[leg0.device], leg0.offset, MiB) == right, "leg 0 kept its torn half"
    assert _pread(path[leg1.device], leg1.offset, MiB) == right, "leg 1 was overwritten"


# ---------------------------------------------------------------------------
# through a real mount


def test_a_crash_resync_does_not_spread_a_torn_block_of_leg_0(tmp_path: Path) -> None:
    pool = TestPool(tmp_path, devices=2)
    pool.create_volume("m", 64 * MiB, mirrors=2)
    good = os.urandom(MiB)
    at = 8 * MiB
    with mounted(pool, *NODE_OPTIONS) as node:
        _write(pool.volume_path("m"), at, good)
        node.umount()
    p = _config(pool)
    piece = VolumeMap(p, p.volume("m")).resolve(at, MiB)[0]
    leg0 = piece.legs[0]
    path = {d.uuid: d.paths[0] for d in p.devices}
    # a crash in the middle of a write there: leg 0's block torn, the bits set
    _pwrite(path[leg0.device], leg0.offset + 5 * 4096 + 100, os.urandom(1000))
    for loc in piece.legs:
        _set_dirty(p, loc.device, path[loc.device], loc.offset, MiB)
    with mounted(pool, *NODE_OPTIONS) as node:
        def done() -> bool:
            jobs = _status(pool)["mirror"].get("jobs", [])
            return any(j["kind"] == "crash" and j["state"] == "done" for j in jobs)

        wait_until(done, 30, "the crash resync to finish")
        mirror = _status(pool)["mirror"]
        assert mirror["resync_judged_other"] == 1, mirror
        assert _pread(pool.volume_path("m"), at, MiB) == good
        node.umount()
    assert_legs_identical(pool, tmp_path)


def _node_move(pool: TestPool) -> dict[str, Any]:
    from vvfs.node.client import open_manager

    with open_manager(pool.state) as mgr:
        return mgr.move_status(pool.name)  # type: ignore[no-any-return]


def test_a_move_pauses_while_its_source_leg_is_failed(tmp_path: Path) -> None:
    with faulty_pool(tmp_path, plain=("dev0.img", "dev2.img"), size=64 * MiB,
                     on=[("d0", None), ("d1", None)]) as (pool, ffs), \
            mounted(pool, *NODE_OPTIONS) as node:
        path = pool.volume_path("m")
        with fio_running(path) as proc:
            pool.vv("volume", "move", "tank/m", "--from", "d1", "--to", "d2", "--rate", "8M")
            wait_until(lambda: _node_move(pool).get("copied", 0) >= 2, 30, "the move to start")
            ffs.fail("dev1.img")
            _fio_result(proc)  # the host saw no error
        _write(path, 40 * MiB, os.urandom(4 * MiB))  # a known range, while degraded
        wait_until(lambda: "d1" in (_node_move(pool).get("paused") or ""), 30,
                   "the move to pause for d1")
        copied = _node_move(pool)["copied"]
        assert "paused: device d1 is failed" in pool.vv("status").stdout
        time.sleep(1.5)
        st = _node_move(pool)
        assert st["copied"] == copied and st["state"] != "failed", st

        ffs.heal()
        job = json.loads(pool.vv("device", "online", "tank", "d1", "--wait", "--json",
                                 timeout=120).stdout)
        assert job["state"] == "done", job
        wait_until(lambda: not _node_move(pool), 60, "the move to finish")
        kinds = [k for k, _ in _kinds(pool)]
        assert "move-paused" in kinds and "move-continued" in kinds and "move-done" in kinds
        assert "move-failed" not in kinds
        _verify_only(path)
        node.umount()
    legs = {a["device"] for s in json.loads(pool.vv("volume", "show", "tank/m", "--json")
                                            .stdout)["segments"] for leg in s["areas"]
            for a in leg}
    devices = {d["uuid"]: d["name"] for d in json.loads(pool.vv("device", "list", "tank",
                                                                "--json").stdout)}
    assert {devices[u] for u in legs} == {"d0", "d2"}
    assert_legs_identical(pool, tmp_path)


def test_a_move_is_refused_while_a_device_is_failed(tmp_path: Path) -> None:
    pool = TestPool(tmp_path, devices=3)
    pool.create_volume("m", 16 * MiB, mirrors=2, on=[("d0", None), ("d1", None)])
    with mounted(pool, *NODE_OPTIONS):
        pool.vv("device", "fail", "tank", "d1")
        before = _config_through_node(pool)
        out = pool.vv("volume", "move", "tank/m", "--from", "d0", "--to", "d2", check=False)
        assert out.returncode == 1, out
        assert "d1 is failed" in out.stderr and len(out.stderr.strip().splitlines()) == 1, \
            out.stderr
        assert _config_through_node(pool) == before
        assert not _node_move(pool)


def _config_through_node(pool: TestPool) -> dict[str, Any]:
    from vvfs.node.client import open_manager

    with open_manager(pool.state) as mgr:
        return mgr.show_pool(pool.name).pool.to_dict()  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------
# scrub beside failures and resyncs


def _scrub_status(pool: TestPool) -> dict[str, Any]:
    from vvfs.node.client import open_manager

    with open_manager(pool.state) as mgr:
        return mgr.scrub_status(f"{pool.name}/m")  # type: ignore[no-any-return]


def test_scrub_leaves_a_failed_or_resyncing_leg_alone(tmp_path: Path) -> None:
    pool = TestPool(tmp_path, devices=2)
    size = 16 * MiB
    pool.create_volume("m", size, mirrors=2)
    p = _config(pool)
    leg0 = VolumeMap(p, p.volume("m")).resolve(0, 1)[0].legs[0]
    behind = next(d.name for d in p.devices if d.uuid == leg0.device)
    first, later = os.urandom(size), os.urandom(8 * MiB)
    with mounted(pool, *NODE_OPTIONS) as node:
        path = pool.volume_path("m")
        _write(path, 0, first)
        pool.vv("device", "fail", "tank", behind)  # leg 0 falls behind from here
        _write(path, 4 * MiB, later)
        st = json.loads(pool.vv("volume", "scrub", "tank/m", "--repair", "--json").stdout)
        assert st["findings"] == [] and st["repaired"] == 0, st
        assert st["skipped"] == size, st

        # a scrub started while leg 0 resyncs waits for the resync, and never
        # takes the stale leg 0 for the right one
        pool.vv("device", "online", "tank", behind, "--rate", "2M")
        wait_until(lambda: behind in _status(pool)["mirror"].get("resyncing", []), 20,
                   f"{behind} to resync")
        pool.vv("volume", "scrub", "tank/m", "--repair", "--no-wait")
        states = set()
        while (st := _scrub_status(pool))["state"] not in ("done", "failed"):
            states.add(st["state"])
            time.sleep(0.1)
        assert st["state"] == "done" and st["findings"] == [], st
        assert "waiting for resync" in states, states
        expect = first[:4 * MiB] + later + first[12 * MiB:]
        assert _pread(path, 0, size) == expect
        node.umount()
    assert_legs_identical(pool, tmp_path)


# ---------------------------------------------------------------------------
# progress on a terminal


def _on_a_terminal(pool: TestPool, *args: str, timeout: float = 120) -> str:
    """Run ``vv ARGS`` with a pseudo-terminal as stdin, stdout and stderr; return what it drew."""
    import pty
    import select
    import subprocess

    from ..support.mountutil import VV

    master, slave = pty.openpty()
    env = {**pool.env(), "TERM": "xterm", "COLUMNS": "120", "LINES": "40"}
    proc = subprocess.Popen([VV, *args], stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the terminal's last writer is gone
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, out.decode(
            errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    return out.decode(errors="replace")


def test_resync_and_move_draw_progress_bars_on_a_terminal(tmp_path: Path) -> None:
    pool = TestPool(tmp_path, devices=3)
    pool.create_volume("m", 64 * MiB, mirrors=2, on=[("d0", None), ("d1", None)])
    with mounted(pool, *NODE_OPTIONS) as node:
        path = pool.volume_path("m")
        pool.vv("device", "fail", "tank", "d1")
        _write(path, 0, os.urandom(32 * MiB))  # 32 MiB dirty for d1
        drawn = _on_a_terminal(pool, "device", "online", "tank", "d1", "--wait",
                               "--rate", "8M")
        # rich redraws one line in place: a bar, the bytes, the rate, the time left
        assert "\r" in drawn and "━" in drawn, drawn
        assert "32.0/32.0 MiB" in drawn and "B/s" in drawn and "(done)" in drawn, drawn
        assert _failure_state(pool, "d1") == "ok"

        drawn = _on_a_terminal(pool, "volume", "move", "tank/m", "--from", "d1", "--to", "d2",
                               "--rate", "16M", "--wait")
        bars = [line for line in drawn.split("\r") if "extents" in line and "[" in line]
        assert len(bars) >= 3 and any("#" in b for b in bars), drawn
        assert any("100.0%" in b for b in bars) or "done" in drawn, drawn
        assert not _node_move(pool)
        node.umount()
    assert_legs_identical(pool, tmp_path)


def _failure_state(pool: TestPool, device: str) -> str:
    """*device*'s state in the committed configuration, through the node."""
    return next(str(d["state"]) for d in _config_through_node(pool)["devices"]
                if d["name"] == device)
