"""The checksum store and the range lock, in-process with slow fake devices (no mount)."""

from __future__ import annotations

import random
import struct

import trio
import trio.testing

from metadata import checksums
from metadata.model import Device, DeviceUUID, Pool, PoolUUID
from vvfs.data.checksums import BLOCK, ChecksumStore
from vvfs.data.guard import RangeLock

MiB = 1 << 20
E = 4 * MiB


class SlowDevice:
    """Bytes in memory; every call sleeps a random while (so calls overtake each other)."""

    def __init__(self, size: int, seed: int) -> None:
        self.data = bytearray(size)
        self.rng = random.Random(seed)

    async def pread(self, length: int, offset: int) -> bytearray:
        await trio.sleep(self.rng.random() / 1000)
        return bytearray(self.data[offset:offset + length])

    async def pwrite(self, data: bytes, offset: int) -> None:
        snap = bytes(data)
        await trio.sleep(self.rng.random() / 1000)
        self.data[offset:offset + len(snap)] = snap


def make() -> tuple[Pool, Device, SlowDevice]:
    d = Device(uuid=DeviceUUID("dev-0"), name="d0", size=MiB + 64 * E, data_start=MiB,
               extent_count=64)
    checksums.carve(d)
    pool = Pool(uuid=PoolUUID("p"), name="p", extent_size=E, devices=[d])
    return pool, d, SlowDevice(MiB + 64 * E, 1)


def entries_on_media(dev: SlowDevice, d: Device, first: int, n: int) -> list[int]:
    off = checksums.entry_offset(d, E, d.data_start + first * BLOCK)
    return [v for (v,) in struct.iter_unpack("<I", dev.data[off:off + 4 * n])]


def test_carve_leaves_the_region_outside_the_extents() -> None:
    _pool, d, _dev = make()
    assert (d.extent_count, d.csum_extents) == (63, 1)
    start, length = checksums.region(d, E)  # type: ignore[misc]
    assert start == d.data_start + 63 * E and length == E
    assert checksums.entry_offset(d, E, d.data_start + 5 * BLOCK) == start + 20


def test_concurrent_updates_of_one_page_all_reach_the_media() -> None:
    """Many updates of entries sharing a page, with writes overtaking: none is lost."""
    pool, d, dev = make()

    async def main() -> None:
        store = ChecksumStore(pool, {d.uuid: dev}, cache_pages=2)  # type: ignore[dict-item]
        async with trio.open_nursery() as nursery:
            for i in range(300):
                block = i % 1024 + (i // 1024) * 1024
                nursery.start_soon(store.update, [(d.uuid, d.data_start + block * BLOCK,
                                                   checksums.pack([1000 + i]))])
        assert entries_on_media(dev, d, 0, 300) == [1000 + i for i in range(300)]
        assert await store.read(d.uuid, d.data_start, 300) == [1000 + i for i in range(300)]
        assert await store.read_media(d.uuid, d.data_start, 3) == [1000, 1001, 1002]

    trio.run(main)


def test_a_run_across_pages_is_split() -> None:
    pool, d, dev = make()

    async def main() -> None:
        store = ChecksumStore(pool, {d.uuid: dev}, cache_pages=2)  # type: ignore[dict-item]
        values = list(range(1, 3001))
        await store.update([(d.uuid, d.data_start + 1000 * BLOCK, checksums.pack(values))])
        assert entries_on_media(dev, d, 1000, 3000) == values
        assert entries_on_media(dev, d, 999, 1) == [0]

    trio.run(main)


def test_pages_are_evicted_but_values_kept() -> None:
    pool, d, dev = make()

    async def main() -> None:
        store = ChecksumStore(pool, {d.uuid: dev}, cache_pages=2)  # type: ignore[dict-item]
        for page in range(6):
            await store.update([(d.uuid, d.data_start + page * 1024 * BLOCK,
                                 checksums.pack([page + 1]))])
        assert store.statistics()["pages_cached"] <= 2
        for page in range(6):
            assert await store.read(d.uuid, d.data_start + page * 1024 * BLOCK, 1) == [page + 1]

    trio.run(main)


def test_exclusive_range_waits_for_writes_and_holds_new_ones() -> None:
    order: list[str] = []

    async def main() -> None:
        lock = RangeLock()

        async def writer(name: str, start: int, delay: float) -> None:
            await trio.sleep(delay)
            async with lock.writing(start, start + 4096):
                order.append(f"{name} in")
                await trio.sleep(0.05)
                order.append(f"{name} out")

        async def locker() -> None:
            await trio.sleep(0.01)
            async with lock.exclusive(0, 8192):
                order.append("lock in")
                await trio.sleep(0.05)
                order.append("lock out")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, "w1", 0, 0)
            nursery.start_soon(locker)
            nursery.start_soon(writer, "w2", 4096, 0.02)  # overlaps: waits for the lock
            nursery.start_soon(writer, "w3", 65536, 0.02)  # elsewhere: not held up

    trio.run(main)
    assert order.index("w1 out") < order.index("lock in") < order.index("lock out") \
        < order.index("w2 in")
    assert order.index("w3 in") < order.index("lock out")
