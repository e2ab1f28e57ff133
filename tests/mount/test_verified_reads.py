"""Verified reads through a real mount: a block rotted in one leg's backing file is
read right, reported in ``vv events`` and repaired on that leg.

One mount for the module: a mirrored volume is written through the mount, one
bit of leg 1's copy is flipped in its backing file (written straight to the
file and fsynced, below the node), and the volume is read back with
``O_DIRECT`` (so every read reaches the node) four times -- the balanced
policy takes each leg in turn.  The tests then look at what the reads
returned, at the events and at the backing file.
"""

from __future__ import annotations

import json
import mmap
import os
import time
from dataclasses import dataclass
from typing import Any

import pytest

from mapper.layout import VolumeMap

from ..support.mountutil import MiB, TestPool, mounted, require
from ..support.util import flip

BLOCK = 4096
DATA = 1 * MiB
#: the rotted byte, inside volume block 37
ROT = 37 * BLOCK + 1234
READ = 64 * 1024


@dataclass
class Outcome:
    data: bytes
    reads: list[bytes]
    events: list[dict[str, Any]]
    leg_after: bytes
    #: leg 1's device name and path, and the device byte of the rotted block there
    device: str
    path: str
    device_block: int



def _read_direct(path: str, offset: int, length: int) -> bytes:
    buf = mmap.mmap(-1, length)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.preadv(fd, [buf], offset) == length
    finally:
        os.close(fd)
    return bytes(buf)


def _checksum_events(pool: TestPool) -> list[dict[str, Any]]:
    events = json.loads(pool.vv("events", "--json").stdout)
    return [e for e in events if e["kind"].startswith("checksum-")]


def _wait_for_events(pool: TestPool, timeout: float = 10) -> list[dict[str, Any]]:
    """The checksum events, once there are some (events reach the catalog shortly after)."""
    deadline = time.monotonic() + timeout
    while not (events := _checksum_events(pool)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return events


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    require()
    pool = TestPool(tmp_path_factory.mktemp("verify"))
    pool.create_volume("m", 8 * MiB, mirrors=2)
    data = os.urandom(DATA)
    with mounted(pool):
        path = pool.volume_path("m")
        with open(path, "r+b") as f:
            f.write(data)
            os.fsync(f.fileno())
        with pool.manager() as mgr:
            shown = mgr.show_pool(pool.name)
        names = {d.uuid: d.name for d in shown.pool.devices}
        [piece] = VolumeMap(shown.pool, shown.pool.volume("m")).resolve(ROT, 1)
        bad = piece.legs[1]
        backing = shown.paths[bad.device]
        flip(backing, bad.offset, 0x08)
        block = ROT - ROT % BLOCK
        reads = [_read_direct(path, block - block % READ, READ) for _ in range(4)]
        events = _wait_for_events(pool)
        dev_block = bad.offset - bad.offset % BLOCK
        with open(backing, "rb") as f:
            f.seek(dev_block)
            leg_after = f.read(BLOCK)
    return Outcome(data, reads, events, leg_after, names[bad.device], backing, dev_block)


@pytest.mark.slow
def test_reads_of_a_rotted_block_return_the_written_bytes(outcome: Outcome) -> None:
    start = ROT - ROT % READ
    assert all(r == outcome.data[start:start + READ] for r in outcome.reads)


@pytest.mark.slow
def test_the_repair_is_in_vv_events_naming_the_leg_device_and_offsets(outcome: Outcome) -> None:
    [event] = outcome.events
    block = ROT - ROT % BLOCK
    assert (event["kind"], event["severity"], event["object"]) == (
        "checksum-repaired", "warning", "tank/m")
    assert (f"leg 1 on device {outcome.device} at volume byte {block} (4096 bytes, device byte"
            f" {outcome.device_block})") in event["message"], event["message"]


@pytest.mark.slow
def test_the_rotted_leg_is_repaired_in_its_backing_file(outcome: Outcome) -> None:
    block = ROT - ROT % BLOCK
    assert outcome.leg_after == outcome.data[block:block + BLOCK]
