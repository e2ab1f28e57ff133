"""A new or grown volume reads zeros: fresh extents are zeroed before the commit.

Why
---
Extents that a configuration newly gives to a volume (``vv volume create``,
a batch create, growing a volume) hold whatever their devices held before:
a removed volume's data, or a device that was never zero.  Left so, a new
volume would show another volume's bytes -- the worst leak a volume
manager can have -- and the legs of a new mirror would differ, so that a
balanced read of a never-written block could answer differently from one
read to the next.  ZFS zvols and Ceph images read zeros where they were
never written; vvfs zeroes every fresh extent of every layout (linear,
striped, mirrored, every leg), which costs next to nothing on most
devices: a hole punched in a file, WRITE_ZEROES on a block device
(:func:`vvfs.io.filedev.zero_fd`, the table of ways there).  md and LVM
raid1 copy one leg over the others instead (an initial sync).

Growing a volume that was shrunk brings back bytes it kept: shrinking keeps
the last extent (stripe row) whole, and the bytes past the new end still
hold what was written there.  Those (:func:`mapper.regrown_spans`) are
zeroed with the fresh extents.

What, in which order (``PoolSession.commit_zeroed``)
----------------------------------------------------
1. :func:`mapper.fresh_runs`: per device, the extents of the new
   configuration that the old one neither mapped nor reserved (a move's
   destination, which the move fills, is never fresh; moves and device
   replacements copy, and are not zeroed), and the regrown spans;
2. all of them are zeroed, on every leg;
3. the checksum entries of the blocks of mirrored volumes among them are
   set to :data:`ZERO_CRC`;
4. those devices are flushed;
5. only then is the configuration committed.

Entries: ZERO_CRC, not 0
------------------------
Both keep a scrub silent over never-written blocks: every leg holds zeros,
and an entry of 0 says "no checksum" while one of ZERO_CRC matches the data
(``vvfs.data.checksums.judge``, rule 1).  ZERO_CRC is chosen because it treats a
never-written block like a written one: a later bit flip in one leg of it is
found and repaired from the leg that still matches the entry (rule 2),
where with 0 no leg would match and scrub would take leg 0, flipped or not.
It is right across a crash because nothing names these blocks until step
5, and by then step 4 has made both the zeros and the entries durable: an
entry says ZERO_CRC only of a block that is zero on every leg.  A write after
the commit replaces data and entries like any other write, under the same
crash rules (man/vvfs.5, BLOCK CHECKSUMS).  Its cost: the entries are
written rather than punched, 1 MiB per GiB of each leg.  Volumes with one
copy keep no checksums; their entries are not touched.

Across a crash
--------------
Until step 5 the fresh extents are free in the configuration on media (and
regrown spans lie past the volume's end), so a crash anywhere in steps 2 to
4 leaves a pool that never shows them, whatever mix of old bytes, zeros and
entries it leaves there; the next allocation zeroes them again.

In a node
---------
The fresh extents are free in the node's live configuration and regrown
spans lie past the end of their volume, so nothing in its data path reads
or writes them.  The zeroing still goes through the node's own open
devices (``JobsPort.zero_ranges``: :meth:`vvfs.io.devio.DataDevice.zero`
on the path it serves the device by, then a flush), not through the
Manager's descriptors: the kernel drops the cached pages of the range of
the file or block device it is done on, and the node may reach a device
by another path (a second loop device, a multipath leg) whose page cache
would otherwise keep the old bytes.  Only devices the node does not have
open are zeroed here directly.

The entries are another matter: one 4 KiB page of entries covers 4 MiB of
data, often shared with blocks in use, and the node's :class:`ChecksumStore`
keeps pages in memory and writes whole pages back, so an entry changed
behind its back would be overwritten with the stale cached value at the
next write to a neighbouring block.  In a node the entries are therefore set
through its store (:meth:`ChecksumStore.fill`, on the trio thread); only
those of a device the store does not cover are written directly.  Step 4's
fsync through the Manager's descriptor covers the store's O_DIRECT writes
too: fsync flushes the file (or the whole block device), not a descriptor.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

import mapper
from metadata import checksums
from metadata.blockdev import BlockDevice
from metadata.checksums import BLOCK, ENTRY, ZERO_CRC
from metadata.model import Device, DeviceUUID, Pool
from vvfs.errors import RefusedError
from vvfs.io.filedev import zero_range

if TYPE_CHECKING:
    from vvfs.control.ports import Blocks, JobsPort, Range
    from vvfs.control.session import OpenPool

log = logging.getLogger(__name__)

#: Entries written per call when they are written directly (those of 1 GiB).
ENTRIES_PER_WRITE = 1 << 18

#: A byte range of a device's data extents: (device, first byte, bytes)
Fresh = tuple[DeviceUUID, int, int]


def fresh_ranges(old: Pool, new: Pool, *, mirrored_only: bool = False) -> list[Fresh]:
    """The byte ranges of the extents that *new* gives volumes afresh (step 1)."""
    devs = {d.uuid: d for d in new.devices}
    esize = new.extent_size
    return [(dev, devs[dev].data_start + start * esize, count * esize)
            for dev, runs in mapper.fresh_runs(old, new, mirrored_only=mirrored_only).items()
            for start, count in runs]


def to_zero(old: Pool, new: Pool) -> tuple[list[Fresh], list[Blocks]]:
    """(device ranges to zero, checksum entries to set) for committing *new* over *old*."""
    regrown = mapper.regrown_spans(old, new)
    data = fresh_ranges(old, new) + [(s.device, s.offset, s.length) for s in regrown]
    mirrored = fresh_ranges(old, new, mirrored_only=True) + [
        (s.device, s.offset, s.length) for s in regrown if s.mirrored]
    geo = {d.uuid: d for d in new.devices}
    entries: list[Blocks] = []
    for dev, off, n in mirrored:
        d = geo[dev]
        if d.csum_extents <= 0:
            continue
        first = d.data_start + -(-(off - d.data_start) // BLOCK) * BLOCK  # whole blocks only
        blocks = (off + n - first) // BLOCK
        if blocks > 0:
            entries.append((dev, first, blocks))
    return data, entries


def zero_fresh(op: OpenPool, new: Pool, jobs: JobsPort | None) -> None:
    """Steps 2 to 4 of the module docstring for *new* against ``op.pool``.

    *jobs* is the node's: its devices zero what it serves and its checksum
    store sets the entries it covers; None offline.  Raises ``RefusedError``
    if a device with fresh extents is not open, and DeviceIOError if one
    cannot be zeroed; the commit is then not made.
    """
    ranges, entries = to_zero(op.pool, new)
    if not ranges:
        return
    started = time.monotonic()
    devs: dict[DeviceUUID, BlockDevice] = {
        DeviceUUID(s.device_uuid): s.dev for s in op.choice.scans if s.device_uuid}
    absent = sorted({new.device(dev).name for dev, _off, _n in ranges if dev not in devs})
    if absent:
        raise RefusedError(f"pool {new.name}: devices {', '.join(absent)} are not open;"
                           " their new extents cannot be zeroed")
    left: list[Range] = list(ranges)
    if jobs is not None:
        left = jobs.zero_ranges(new.uuid, left)
    ways: Counter[str] = Counter()
    for dev, off, n in left:
        ways[zero_range(devs[DeviceUUID(dev)], off, n)] += n
    _set_entries(new, entries, devs, jobs)
    touched = {dev for dev, _off, _n in ranges}
    for dev in touched:
        devs[dev].flush()
    by_node = sum(n for _d, _o, n in ranges) - sum(ways.values())
    log.info("pool %s: zeroed %d bytes of new extents on %d devices (%s) in %.3f s",
             new.name, sum(n for _d, _o, n in ranges), len(touched),
             ", ".join([f"{how} {n}" for how, n in sorted(ways.items())]
                       + ([f"by the node {by_node}"] if by_node else [])),
             time.monotonic() - started)


def _set_entries(pool: Pool, todo: list[Blocks], devs: Mapping[DeviceUUID, BlockDevice],
                 jobs: JobsPort | None) -> None:
    """Set the checksum entries of *todo* to ZERO_CRC: in the node's store, else directly."""
    geo = {d.uuid: d for d in pool.devices}
    if jobs is not None and todo:
        todo = jobs.fill_checksums(pool.uuid, todo, ZERO_CRC)
    for dev, off, blocks in todo:
        write_entries(devs[dev], geo[dev], pool.extent_size, off, blocks)


def write_entries(dev: BlockDevice, device: Device, extent_size: int, data_offset: int,
                  blocks: int) -> None:
    """Write ZERO_CRC as the entries of *blocks* blocks from *data_offset*, straight to *dev*."""
    at = checksums.entry_offset(device, extent_size, data_offset)
    pattern = checksums.pack([ZERO_CRC] * min(blocks, ENTRIES_PER_WRITE))
    for first in range(0, blocks, ENTRIES_PER_WRITE):
        n = min(ENTRIES_PER_WRITE, blocks - first)
        dev.pwrite(pattern[:n * ENTRY], at + first * ENTRY)
