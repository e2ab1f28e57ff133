"""The mirrored data path on fakes, without a mount: writes, failures, the dirty log, reads, resync.

A two-way mirrored volume of an in-process pool model, its devices
:class:`~vvfs.testing.faultdev.MemoryDevice` behind a
:class:`~vvfs.testing.faultdev.RecordingDevice` (every write, in global
order) and a :class:`~vvfs.testing.faultdev.FaultyDevice` (injected
faults), seen by the data path through
:class:`~vvfs.testing.asyncdev.AsyncDevice`.  The objects under test are
the real ones: :class:`~vvfs.data.volio.VolumeIO` handing the volume's I/O
to :class:`~vvfs.data.mirror.PoolMirror`, and
:class:`~vvfs.data.guard.PoolGuard` with its range locks.  Each test runs
its own trio loop.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from mapper import VolumeSpec, create_volume
from mapper.layout import Loc, VolumeMap
from metadata import checksums as csum
from metadata import dirtylog
from metadata.blockdev import DeviceIOError
from metadata.model import Device, DeviceUUID, Pool, PoolUUID, new_uuid
from vvfs.data import checksums
from vvfs.data.checksums import ChecksumStore
from vvfs.data.guard import PoolGuard
from vvfs.data.mirror import PoolMirror
from vvfs.data.volio import VolumeIO
from vvfs.testing.asyncdev import AsyncDevice
from vvfs.testing.faultdev import FaultyDevice, MemoryDevice, Recorder, WriteRecord

MiB = 1 << 20
E = 4 * MiB
POOL = new_uuid()
SIZE = 16 * MiB
KiB4 = 4096
#: what the legs hold where a test makes them differ
A, B = b"A" * KiB4, b"B" * KiB4


def _device(name: str, checksums: bool = False) -> Device:
    d = Device(uuid=DeviceUUID(new_uuid()), name=name, size=66 * E, data_start=MiB,
               extent_count=64)
    dirtylog.carve(d, E)
    if checksums:
        csum.carve(d)
    return d


@dataclass
class Rig:
    """One pool, one mirrored volume ``m`` and everything needed to look under it."""

    pool: Pool
    pm: PoolMirror
    vio: VolumeIO
    recorder: Recorder
    mems: dict[str, MemoryDevice]
    faults: dict[str, FaultyDevice]
    #: every device, also once the mirror dropped a failed one from its table
    devs: dict[str, AsyncDevice]
    events: list[tuple[str, ...]] = field(default_factory=list)
    #: the write guard and checksum store (``make_rig(checksums=True)``), else None
    guard: PoolGuard | None = None

    def leg(self, m: int, offset: int = 0) -> Loc:
        """Where volume byte *offset* lies on leg *m*."""
        return self.vio.vmap.resolve(offset, 1)[0].legs[m]

    def device(self, m: int) -> str:
        return self.leg(m).device

    def on_leg(self, m: int, offset: int, length: int) -> bytes:
        """The bytes leg *m* holds for volume bytes ``[offset, offset + length)``."""
        loc = self.leg(m, offset)
        return self.mems[loc.device].pread(length, loc.offset)

    def put_on_leg(self, m: int, offset: int, data: bytes) -> None:
        """Change leg *m* behind the mirror's back (the legs then differ)."""
        loc = self.leg(m, offset)
        self.mems[loc.device].pwrite(data, loc.offset)

    def geo(self, m: int) -> dirtylog.LogGeometry:
        return self.pm.geos[self.device(m)]

    def region(self, m: int, offset: int = 0) -> int:
        """The region of leg *m*'s device that volume byte *offset* lies in."""
        return self.geo(m).region_of(self.leg(m, offset).offset)

    def dirty_on_media(self, m: int) -> list[int]:
        """The regions set in leg *m*'s dirty log as it is on the device."""
        u = self.device(m)
        return dirtylog.read_log(self.mems[u], self.geo(m), POOL, u).dirty()

    def writes(self, *, log: bool, after: int = 0) -> list[tuple[str, WriteRecord]]:
        """(device name, write) of the recorded writes of the logs, or of the data, in order."""
        logs = {self.pm.name_of(u): self.pm.geos[u].offset for u in self.mems}
        return [(key, w) for key, w in self.recorder.writes()
                if w.seq > after and (w.offset >= logs[key]) == log]

    def data_writes(self, after: int = 0) -> list[tuple[str, int, int]]:
        """(device name, byte, length) of the recorded writes outside the logs, in order."""
        return [(key, w.offset, len(w.data)) for key, w in self.writes(log=False, after=after)]


async def make_rig(policy: str = "balanced",
                   spawn: Callable[..., None] | None = None, *,
                   checksums: bool = False) -> Rig:
    """Two devices, a 16 MiB two-way mirror on them with read policy *policy*, logs loaded.

    *spawn* is the mirror's (None: nothing runs in the background).  With
    *checksums* the devices have checksum regions and the volume has the
    node's write guard and checksum store, its entries set to those of
    zero blocks as for a new volume (``Rig.guard``).
    """
    pool = Pool(uuid=PoolUUID(POOL), name="tank", extent_size=E,
                devices=[_device("d0", checksums), _device("d1", checksums)])
    pool = create_volume(pool, VolumeSpec(name="m", size=SIZE, mirrors=2))
    volume = pool.volume("m")
    volume.read_policy = policy
    recorder = Recorder()
    limiter = trio.CapacityLimiter(4)
    mems: dict[str, MemoryDevice] = {}
    faults: dict[str, FaultyDevice] = {}
    devs: dict[str, AsyncDevice] = {}
    for d in pool.devices:
        mem = MemoryDevice(d.size, name=d.name)
        dirtylog.init_log(mem, d, E, POOL)
        mems[d.uuid] = mem
        faults[d.uuid] = FaultyDevice(recorder.device(mem))
        devs[d.uuid] = AsyncDevice(faults[d.uuid], d.uuid, limiter)
    # the mirror's live table (it drops failed devices from it)
    table: dict[DeviceUUID, Any] = {DeviceUUID(u): dev for u, dev in devs.items()}
    events: list[tuple[str, ...]] = []
    pm = PoolMirror(pool, table, emit=lambda *e: events.append(e), spawn=spawn)
    await pm.attach_devices()
    vio = VolumeIO(PoolUUID(POOL), volume, VolumeMap(pool, volume), table)
    vio.mirror = pm
    r = Rig(pool, pm, vio, recorder, mems, faults, devs, events)
    if checksums:
        r.guard = vio.guard = pm.guard = PoolGuard(ChecksumStore(pool, table))
        pm.checksums = r.guard.store
        for p in vio.vmap.resolve(0, SIZE):  # a new volume's entries (vvfs.control.zeroing)
            for loc in p.legs:
                await r.guard.store.fill(loc.device, loc.offset, p.length // KiB4, csum.ZERO_CRC)
    return r


# ---------------------------------------------------------------------------
# writes


def test_a_mirrored_write_reaches_every_leg() -> None:
    async def main() -> None:
        r = await make_rig()
        data = os.urandom(64 * 1024)
        assert await r.vio.write(MiB + KiB4, data) == len(data)
        assert r.on_leg(0, MiB + KiB4, len(data)) == data
        assert r.on_leg(1, MiB + KiB4, len(data)) == data

    trio.run(main)


def test_overlapping_writes_land_on_every_leg_and_entry_in_one_order() -> None:
    # Two writes of one block in flight at once: the first one's write to
    # leg 1 is slow.  Each leg, and each leg's checksum entry, must end with
    # the same one of them (the later), never leg 0 with one and leg 1 with
    # the other, or an entry of the other's bytes.
    async def main() -> None:
        r = await make_rig(checksums=True)
        at = MiB
        loc = r.leg(1, at)
        r.faults[loc.device].delay(0.3, ops=("write",), start=loc.offset,
                                   end=loc.offset + KiB4, times=1)
        first, second = os.urandom(KiB4), os.urandom(KiB4)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.vio.write, at, first)
            await trio.sleep(0.05)  # the first is in flight, its leg 1 write asleep
            nursery.start_soon(r.vio.write, at, second)
        assert r.on_leg(0, at, KiB4) == r.on_leg(1, at, KiB4) == second
        for m in (0, 1):
            leg = r.leg(m, at)
            assert await r.guard.store.read_media(leg.device, leg.offset, 1) == \
                [checksums.crc(second)], f"leg {m}'s entry"

    trio.run(main)


def test_a_writes_checksum_entries_wait_with_its_data_for_a_resync_holding_the_region() -> None:
    # A resync holds the region (the gate), copies it and refreshes the
    # entries from the bytes it read.  A write waiting for it must not have
    # stored its entries already, or the resync's refresh would overwrite
    # them and the write's bytes would land under the old bytes' entries.
    async def main() -> None:
        r = await make_rig(checksums=True)
        assert r.guard is not None
        at, old, new = MiB, os.urandom(KiB4), os.urandom(KiB4)
        await r.vio.write(at, old)
        legs = [r.leg(m, at) for m in (0, 1)]
        keys = {(loc.device, r.pm.geos[loc.device].region_of(loc.offset)) for loc in legs}
        async with trio.open_nursery() as nursery, r.pm.gate.holding(keys):
            nursery.start_soon(r.vio.write, at, new)
            await trio.sleep(0.1)  # the write waits at the gate
            await r.guard.store.update([(loc.device, loc.offset, checksums.pack(
                [checksums.crc(old)])) for loc in legs])  # the resync's refresh
        for m, loc in enumerate(legs):
            assert r.on_leg(m, at, KiB4) == new
            assert await r.guard.store.read_media(loc.device, loc.offset, 1) == \
                [checksums.crc(new)], f"leg {m}'s entry"

    trio.run(main)


async def _write_with_leg_1_failing(r: Rig, data: bytes) -> None:
    """Write *data* at volume byte 0 while leg 1's data area refuses writes (EIO)."""
    loc = r.leg(1)
    r.faults[loc.device].fail_range(loc.offset, loc.offset + SIZE, ops=("write",))
    await r.vio.write(0, data)


def test_a_leg_failing_mid_write_degrades_the_volume_and_the_write_succeeds() -> None:
    async def main() -> None:
        r = await make_rig()
        data = os.urandom(64 * 1024)
        await _write_with_leg_1_failing(r, data)  # raises nothing: leg 0 has it
        assert r.on_leg(0, 0, len(data)) == data
        assert r.device(1) in r.pm.failed and r.device(1) not in r.pm.devices
        assert r.pm.volume_state(r.vio.volume) == "degraded"
        assert r.pm.stats.degraded_writes == 1
        kinds = [e[0] for e in r.events]
        assert "device-failed" in kinds and "volume-degraded" in kinds

    trio.run(main)


def test_a_failed_leg_is_recorded_stale_on_the_survivors_log_before_the_reply() -> None:
    async def main() -> None:
        r = await make_rig()
        await _write_with_leg_1_failing(r, os.urandom(KiB4))
        u0, u1 = r.device(0), r.device(1)
        assert r.pm.failed[DeviceUUID(u1)].recorded.is_set()
        on_media = dirtylog.read_log(r.mems[u0], r.geo(0), POOL, u0)
        assert on_media.stale == {u1}

    trio.run(main)


def test_io_goes_on_with_the_other_leg_after_a_leg_failed() -> None:
    async def main() -> None:
        r = await make_rig()
        await _write_with_leg_1_failing(r, os.urandom(KiB4))
        later = os.urandom(32 * 1024)
        await r.vio.write(2 * MiB, later)
        assert r.on_leg(0, 2 * MiB, len(later)) == later
        assert await r.vio.read(2 * MiB, len(later)) == later
        assert r.pm.stats.degraded_writes == 2

    trio.run(main)


def test_regions_written_while_degraded_stay_dirty() -> None:
    async def main() -> None:
        r = await make_rig()
        await _write_with_leg_1_failing(r, os.urandom(KiB4))
        assert await r.pm.clean(idle=0, force=0) == 0
        assert r.region(0) in r.dirty_on_media(0)

    trio.run(main)


def test_a_write_that_fails_on_every_leg_raises() -> None:
    async def main() -> None:
        r = await make_rig()
        for m in (0, 1):
            loc = r.leg(m)
            r.faults[loc.device].fail_range(loc.offset, loc.offset + SIZE, ops=("write",))
        with pytest.raises(DeviceIOError) as exc:
            await r.vio.write(0, os.urandom(KiB4))
        assert exc.value.errno == errno.EIO
        assert r.pm.volume_state(r.vio.volume) == "failed"

    trio.run(main)


# ---------------------------------------------------------------------------
# the dirty log


def test_a_writes_regions_are_marked_on_media_before_its_data_goes_out() -> None:
    async def main() -> None:
        r = await make_rig()
        await r.vio.write(3 * MiB, os.urandom(KiB4))
        logs, data = r.writes(log=True), r.writes(log=False)
        assert {key for key, _ in logs} == {"d0", "d1"}, "both legs' logs are written"
        assert {key for key, _ in data} == {"d0", "d1"}
        assert max(w.seq for _, w in logs) < min(w.seq for _, w in data)
        for m in (0, 1):
            assert r.region(m, 3 * MiB) in r.dirty_on_media(m)

    trio.run(main)


def test_a_write_to_a_region_marked_already_writes_no_log() -> None:
    async def main() -> None:
        r = await make_rig()
        await r.vio.write(0, os.urandom(KiB4))
        before = r.recorder.clock
        await r.vio.write(8 * KiB4, os.urandom(KiB4))  # the same region
        assert r.writes(log=True, after=before) == []
        assert len(r.data_writes(after=before)) == 2

    trio.run(main)


def test_clean_clears_the_bits_of_an_idle_region_after_flushing_its_copies() -> None:
    async def main() -> None:
        r = await make_rig()
        await r.vio.write(0, os.urandom(KiB4))
        assert r.dirty_on_media(0) and r.dirty_on_media(1)
        assert await r.pm.clean(idle=0, force=0) == 2  # region 0 on each leg
        assert r.dirty_on_media(0) == [] and r.dirty_on_media(1) == []
        for dev in r.devs.values():
            assert dev.durable_writes == dev.completed_writes, "cleared before a flush"

    trio.run(main)


def test_clean_leaves_a_region_that_is_not_idle() -> None:
    async def main() -> None:
        r = await make_rig()
        await r.vio.write(0, os.urandom(KiB4))
        assert await r.pm.clean(idle=60, force=0) == 0
        assert r.region(0) in r.dirty_on_media(0)

    trio.run(main)


def test_clean_waits_for_the_hosts_flush_until_forced() -> None:
    async def main() -> None:
        r = await make_rig()
        await r.vio.write(0, os.urandom(KiB4))
        assert await r.pm.clean(idle=0, force=60) == 0, "cleared an unflushed region"
        await r.vio.flush()
        assert await r.pm.clean(idle=0, force=60) == 2
        assert r.dirty_on_media(0) == []

    trio.run(main)


# ---------------------------------------------------------------------------
# range locks (vvfs.data.guard) over the mirrored path


def _guard(r: Rig) -> PoolGuard:
    guard = PoolGuard(ChecksumStore(r.pool, {}))
    r.vio.guard = guard
    return guard


def test_an_exclusive_range_holds_a_mirrored_write_until_it_is_released() -> None:
    async def main() -> None:
        r = await make_rig()
        guard = _guard(r)
        data = os.urandom(KiB4)
        lock = guard.lock(r.vio.uuid)
        async with trio.open_nursery() as nursery, lock.exclusive(0, 2 * KiB4):
            nursery.start_soon(guard.write, r.vio, KiB4, data)
            await trio.sleep(0.1)
            assert r.on_leg(0, KiB4, KiB4) != data, "the write went past the lock"
            assert r.data_writes() == []
        assert r.on_leg(0, KiB4, KiB4) == data and r.on_leg(1, KiB4, KiB4) == data

    trio.run(main)


def test_an_exclusive_range_waits_for_a_mirrored_write_in_flight() -> None:
    async def main() -> None:
        r = await make_rig()
        guard = _guard(r)
        loc = r.leg(1)
        r.faults[loc.device].delay(0.3, ops=("write",), start=loc.offset, end=loc.offset + SIZE)
        data = os.urandom(KiB4)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(guard.write, r.vio, 0, data)
            await trio.sleep(0.05)  # the write is at the slow leg now
            async with guard.lock(r.vio.uuid).exclusive(0, KiB4):
                assert r.on_leg(1, 0, KiB4) == data, "locked while the write was in flight"

    trio.run(main)


def test_an_exclusive_range_does_not_hold_a_write_elsewhere() -> None:
    async def main() -> None:
        r = await make_rig()
        guard = _guard(r)
        data = os.urandom(KiB4)
        async with guard.lock(r.vio.uuid).exclusive(0, KiB4):
            with trio.fail_after(5):
                await guard.write(r.vio, MiB, data)
        assert r.on_leg(1, MiB, KiB4) == data

    trio.run(main)


# ---------------------------------------------------------------------------
# read policies


async def _diverged(policy: str, spawn: Callable[..., None] | None = None) -> Rig:
    """A rig whose legs hold A (leg 0) and B (leg 1) at volume byte 0."""
    r = await make_rig(policy, spawn)
    await r.vio.write(0, A)
    r.put_on_leg(1, 0, B)
    return r


def test_primary_reads_the_first_leg() -> None:
    async def main() -> list[bytes]:
        r = await _diverged("primary")
        return [bytes(await r.vio.read(0, KiB4)) for _ in range(4)]

    assert trio.run(main) == [A] * 4


def test_balanced_takes_the_legs_in_turn() -> None:
    async def main() -> list[bytes]:
        r = await _diverged("balanced")
        return [bytes(await r.vio.read(0, KiB4)) for _ in range(4)]

    got = trio.run(main)
    assert got[0] != got[1] and got[0::2] == [got[0]] * 2 and got[1::2] == [got[1]] * 2


@pytest.mark.parametrize(("slow", "wins"), [(0, B), (1, A)])
def test_first_answers_with_the_leg_that_completes_first(slow: int, wins: bytes) -> None:
    async def main() -> tuple[bytes, dict[int, int], int]:
        async with trio.open_nursery() as nursery:
            r = await _diverged("first", nursery.start_soon)
            loc = r.leg(slow)
            fault = r.faults[loc.device].delay(0.5, ops=("read",), start=loc.offset,
                                               end=loc.offset + SIZE)
            reads = fault.calls["read"]
            got = bytes(await r.vio.read(0, KiB4))
        # the slow leg was asked too; its answer came later and was dropped
        return got, r.pm.stats.first_wins, fault.calls["read"] - reads

    got, wins_by_leg, slow_reads = trio.run(main)
    assert got == wins
    assert wins_by_leg == {1 - slow: 1}
    assert slow_reads == 1


def test_a_resyncing_leg_is_never_read() -> None:
    async def main() -> list[bytes]:
        r = await _diverged("balanced")
        r.pm.resyncing.add(DeviceUUID(r.device(0)))
        return [bytes(await r.vio.read(0, KiB4)) for _ in range(4)]

    assert trio.run(main) == [B] * 4


def test_a_leg_that_fails_a_read_is_failed_and_the_other_leg_answers() -> None:
    async def main() -> None:
        r = await _diverged("primary")
        loc = r.leg(0)
        r.faults[loc.device].fail_range(loc.offset, loc.offset + SIZE, ops=("read",))
        assert await r.vio.read(0, KiB4) == B
        assert r.device(0) in r.pm.failed
        assert r.pm.stats.read_retries == 1

    trio.run(main)


# ---------------------------------------------------------------------------
# resync


async def _clean_rig() -> Rig:
    """A rig with A written over the first two regions and every bit cleared again."""
    r = await make_rig()
    region = r.geo(0).region
    await r.vio.write(0, A * (2 * region // KiB4))
    await r.pm.clean(idle=0, force=0)
    assert r.dirty_on_media(0) == [] and r.dirty_on_media(1) == []
    return r


def test_a_resync_copies_a_dirty_region_that_differs_and_nothing_else() -> None:
    async def main() -> None:
        r = await _clean_rig()
        region = r.geo(0).region
        r.put_on_leg(1, 0, B)  # region 0 differs, and is made dirty below
        r.put_on_leg(1, region, B)  # region 1 differs, but its bit is clear
        loc0 = r.leg(0)
        await r.pm.mark_ranges([(loc0.device, loc0.offset, KiB4)])
        before = r.recorder.clock
        job = r.pm.new_job("manual")
        await r.pm.resync(job)
        assert job.state == "done", job
        # without checksums the first leg is right: leg 1 gets leg 0's region
        assert r.on_leg(1, 0, KiB4) == A
        assert r.data_writes(after=before) == [(r.pm.name_of(r.device(1)), r.leg(1).offset,
                                                region)]
        assert r.on_leg(1, region, KiB4) == B, "a region with a clear bit was resynced"
        assert r.dirty_on_media(0) == [] and r.dirty_on_media(1) == []

    trio.run(main)


def test_a_resync_of_a_dirty_region_whose_legs_agree_writes_no_data() -> None:
    async def main() -> None:
        r = await _clean_rig()
        loc0 = r.leg(0)
        await r.pm.mark_ranges([(loc0.device, loc0.offset, KiB4)])
        before = r.recorder.clock
        job = r.pm.new_job("manual")
        await r.pm.resync(job)
        assert job.state == "done", job
        assert r.data_writes(after=before) == []
        assert r.dirty_on_media(0) == []

    trio.run(main)
