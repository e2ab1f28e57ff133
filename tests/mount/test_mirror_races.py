"""Races and writes that end part-way, in the write guard and the mirror.

* every write holds its volume range, checksums or not, so that a move's
  copy or a scrub can wait for it;
* a mirrored write that reached some legs and not others keeps its dirty
  bits until a resync makes the legs agree (never cleaned as idle);
* a device coming back resyncs to the end while the host keeps writing.

Real files and the project's own classes (the first two), a real mount
under fio (the third).  A leg that refuses writes is a real device wrapper
whose writes really fail.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import trio

from mapper.layout import VolumeMap
from metadata.blockdev import DeviceIOError
from metadata.model import DeviceUUID, Pool, PoolUUID
from vvfs.data.checksums import ChecksumStore
from vvfs.data.guard import PoolGuard
from vvfs.data.mirror import PoolMirror
from vvfs.data.volio import VolumeIO
from vvfs.io.devio import DataDevice, io_limiter

from ..support.mountutil import MiB, TestPool, mounted, require
from .test_mirror_failover import (
    NODE_OPTIONS,
    _fio_result,
    _verify_only,
    _write,
    assert_legs_identical,
    fio_running,
)


def _config(pool: TestPool) -> Pool:
    with pool.manager() as mgr:
        return mgr.show_pool(pool.name).pool


class RefusingDevice(DataDevice):
    """A device whose writes fail with EINVAL (an error that fails no device) until healed."""

    refusing = True

    async def pwritev(self, bufs, offset):  # type: ignore[no-untyped-def]
        if self.refusing:
            raise DeviceIOError(self.name, offset, "write refused", errno.EINVAL)
        await super().pwritev(bufs, offset)


class SlowVolume:
    """A volume whose plain writes wait for *release*: what the guard wraps (not under test)."""

    def __init__(self, pool: Pool, name: str) -> None:
        self.volume = pool.volume(name)
        self.uuid = self.volume.uuid
        self.size = self.volume.size
        self.vmap = VolumeMap(pool, self.volume)
        self.devices: dict[str, DataDevice] = {}
        self.release = trio.Event()
        self.started = trio.Event()

    async def write_unguarded(self, offset: int, data: bytes | memoryview) -> int:
        self.started.set()
        await self.release.wait()
        return len(data)


def test_a_write_without_checksums_holds_its_range(tmp_path: Path) -> None:
    pool = TestPool(tmp_path, devices=2)
    pool.create_volume("lin", 16 * MiB)
    p = _config(pool)

    async def main() -> None:
        guard = PoolGuard(ChecksumStore(p, {}))
        vol = SlowVolume(p, "lin")
        assert not guard.checksummed(vol)
        locked = trio.Event()

        async def copy() -> None:  # what a move's extent copy does
            async with guard.lock(vol.uuid).exclusive(0, 4 * MiB):
                locked.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(guard.write, vol, 4096, b"x" * 4096)
            await vol.started.wait()
            nursery.start_soon(copy)
            await trio.sleep(0.2)
            assert not locked.is_set(), "the exclusive lock did not wait for the write"
            vol.release.set()
            with trio.fail_after(5):
                await locked.wait()

    trio.run(main)


def test_a_write_that_ends_part_way_keeps_its_bits_until_a_resync(tmp_path: Path) -> None:
    pool = TestPool(tmp_path, devices=2)
    pool.create_volume("m", 16 * MiB, mirrors=2)
    p = _config(pool)
    volume = p.volume("m")
    vmap = VolumeMap(p, volume)
    leg0, leg1 = vmap.resolve(0, MiB)[0].legs

    async def main() -> None:
        limiter = io_limiter(4)
        devs: dict[DeviceUUID, DataDevice] = {}
        for d in p.devices:
            cls = RefusingDevice if d.uuid == leg1.device else DataDevice
            devs[DeviceUUID(d.uuid)] = cls(d.paths[0], d.uuid, limiter)
        try:
            pm = PoolMirror(p, devs)
            await pm.attach_devices()
            vio = VolumeIO(PoolUUID(p.uuid), volume, vmap, devs)
            vio.mirror = pm
            data = os.urandom(MiB)
            with pytest.raises(DeviceIOError, match="write refused"):
                await pm.write(vio, 0, memoryview(data))
            # leg 0 holds the write, leg 1 does not: the regions are suspect
            assert await devs[leg0.device].pread(MiB, leg0.offset) == data
            assert await devs[leg1.device].pread(MiB, leg1.offset) != data
            region = pm.geos[leg0.device].region_of(leg0.offset)
            assert (leg0.device, region) in pm.suspect
            await pm.clean(idle=0, force=0)
            assert pm.logs[leg0.device].is_set(region), "an idle part-way write was cleaned"
            devs[leg1.device].refusing = False  # type: ignore[attr-defined]
            job = pm.new_job("repair")
            await pm.resync(job)
            assert job.state == "done", job
            assert await devs[leg1.device].pread(MiB, leg1.offset) == data
            assert not pm.suspect
            assert not pm.logs[leg0.device].is_set(region)
        finally:
            for dev in devs.values():
                dev.close()

    trio.run(main)


@pytest.mark.slow
def test_a_returning_device_resyncs_to_the_end_under_writes(tmp_path: Path) -> None:
    require("fio")
    pool = TestPool(tmp_path, devices=2)
    pool.create_volume("m", 64 * MiB, mirrors=2)
    with mounted(pool, *NODE_OPTIONS) as node:
        path = pool.volume_path("m")
        pool.vv("device", "fail", "tank", "d1")
        _write(path, 0, os.urandom(16 * MiB))  # 16 regions dirty for d1
        with fio_running(path) as proc:  # writes over the same corner meanwhile
            job = json.loads(pool.vv("device", "online", "tank", "d1", "--rate", "6M",
                                     "--wait", "--json", timeout=120).stdout)
            _fio_result(proc)
        assert job["state"] == "done", job
        _verify_only(path)
        node.umount()
    assert_legs_identical(pool, tmp_path)
