"""The legs of a new mirror agree from the start: fresh extents are zeroed first.

Why
---
Extents that a configuration newly gives to a mirrored volume (``vv volume
create --mirrors N``, a batch create, growing such a volume) hold whatever
their devices held before -- an old volume's data, or a device that was
never zero -- and different bytes on each leg.  Left so, a balanced read of a
never-written block could answer differently from one read to the next, and
a scrub would report every such block as a data mismatch.  md and LVM raid1
copy one leg over the others (an initial sync); vvfs zeroes every leg
instead, which costs next to nothing: a hole punched in a file,
``BLKZEROOUT`` on a block device (:meth:`vvfs.io.filedev.FileDevice.zero`).

Linear and striped volumes are not zeroed (as in LVM): a single copy has
nothing to disagree with and keeps no checksums, and zeroing would make
reads of never-written blocks no more right than they are.

What, in which order (``Manager._commit_zeroed``)
-------------------------------------------------
1. :func:`mapper.fresh_mirror_runs`: per device, the extents of the new
   configuration's mirrored segments that the old configuration neither
   mapped nor reserved (a move's destination, which the move fills, is
   never fresh; moves and device replacements copy, and are not zeroed);
2. every leg's fresh extents are zeroed;
3. the checksum entries of their blocks are set to :data:`ZERO_CRC`;
4. those devices are flushed;
5. only then is the configuration committed.

Entries: ZERO_CRC, not 0
------------------------
Both keep a scrub silent over never-written blocks: every leg holds zeros,
and an entry of 0 says "no checksum" while one of ZERO_CRC matches the data
(``vvfs.node.scrub.judge``, rule 1).  ZERO_CRC is chosen because it treats a
never-written block like a written one: a later bit flip in one leg of it is
found and repaired from the leg that still matches the entry (rule 2),
where with 0 no leg would match and scrub would take leg 0, flipped or not.
It is right across a crash because nothing names these blocks until step
5, and by then step 4 has made both the zeros and the entries durable: an
entry says ZERO_CRC only of a block that is zero on every leg.  A write after
the commit replaces data and entries like any other write, under the same
crash rules (man/vvfs.5, BLOCK CHECKSUMS).  Its cost: the entries are
written rather than punched, 1 MiB per GiB of each leg.

Across a crash
--------------
Until step 5 the fresh extents are free in the configuration on media, so a
crash anywhere in steps 2 to 4 leaves a pool that never maps them, whatever
mix of old bytes, zeros and entries it leaves there; the next allocation
zeroes them again.

In a node
---------
The fresh extents are free in the node's live configuration too, so nothing
in its data path reads or writes them: the data is zeroed through the
Manager's own descriptor (the kernel drops cached pages of the range).  The
entries are another matter: one 4 KiB page of entries covers 4 MiB of data,
often shared with blocks in use, and the node's :class:`ChecksumStore`
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
    from vvfs.control.ports import Blocks, JobsPort
    from vvfs.control.session import OpenPool

log = logging.getLogger(__name__)

#: Entries written per call when they are written directly (those of 1 GiB).
ENTRIES_PER_WRITE = 1 << 18

#: A byte range of a device's data extents: (device, first byte, bytes)
Fresh = tuple[DeviceUUID, int, int]


def fresh_ranges(old: Pool, new: Pool) -> list[Fresh]:
    """The byte ranges of the extents that *new* gives mirrored segments afresh."""
    devs = {d.uuid: d for d in new.devices}
    esize = new.extent_size
    return [(dev, devs[dev].data_start + start * esize, count * esize)
            for dev, runs in mapper.fresh_mirror_runs(old, new).items()
            for start, count in runs]


def zero_fresh_legs(op: OpenPool, new: Pool, jobs: JobsPort | None) -> None:
    """Steps 2 to 4 of the module docstring for *new* against ``op.pool``.

    *jobs* is the node's, whose checksum store sets the entries it covers;
    None offline.  Raises ``RefusedError`` if a device with fresh extents is not open, and
    DeviceIOError if one cannot be zeroed; the commit is then not made.
    """
    ranges = fresh_ranges(op.pool, new)
    if not ranges:
        return
    started = time.monotonic()
    devs: dict[DeviceUUID, BlockDevice] = {
        DeviceUUID(s.device_uuid): s.dev for s in op.choice.scans if s.device_uuid}
    absent = sorted({new.device(dev).name for dev, _off, _n in ranges if dev not in devs})
    if absent:
        raise RefusedError(f"pool {new.name}: devices {', '.join(absent)} are not open;"
                           " their new extents cannot be zeroed")
    ways: Counter[str] = Counter()
    for dev, off, n in ranges:
        ways[zero_range(devs[dev], off, n)] += n
    _set_entries(new, ranges, devs, jobs)
    touched = {dev for dev, _off, _n in ranges}
    for dev in touched:
        devs[dev].flush()
    log.info("pool %s: zeroed %d bytes of new mirror legs on %d devices (%s) in %.3f s",
             new.name, sum(ways.values()), len(touched),
             ", ".join(f"{how} {n}" for how, n in sorted(ways.items())),
             time.monotonic() - started)


def _set_entries(pool: Pool, ranges: list[Fresh], devs: Mapping[DeviceUUID, BlockDevice],
                 jobs: JobsPort | None) -> None:
    """Set the checksum entries of *ranges* to ZERO_CRC: in the node's store, else directly."""
    geo = {d.uuid: d for d in pool.devices}
    todo: list[Blocks] = [(dev, off, n // BLOCK) for dev, off, n in ranges
                          if geo[dev].csum_extents > 0]
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
