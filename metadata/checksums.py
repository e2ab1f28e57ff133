"""Block checksums on media: the checksum region's format and geometry (pure, no I/O).

One crc32c per 4 KiB block of every mirrored volume, kept on every device of
the pool.  The node's store of these entries, and the rules that judge legs
by them, are :mod:`vvfs.data.checksums`.

Where they live (man/vvfs.5, "BLOCK CHECKSUMS")
-----------------------------------------------
When a device is claimed, the last ``k = ceil(n / 1024)`` of the ``n``
extents its label gives it become its *checksum region* (devices of fewer
than :data:`MIN_EXTENTS` extents get none): the configuration lists the
device with ``extent_count = n - k`` data extents and ``csum_extents = k``,
so the allocator never sees the region, and the region is zeroed.  The
region begins at byte ``R = data_start + extent_count * extent_size`` and
holds one little-endian 32-bit entry per 4 KiB block of the data extents::

    entry of the block at device byte x  =  R + ((x - data_start) // 4096) * 4

so a 4 KiB *page* of the region covers 1024 blocks (4 MiB of data) and the
region costs 1/1024 of the device.  An entry is the crc32c (Castagnoli) of
the block's 4096 bytes; **0 means "no checksum"** (a fresh region, or a block
whose crc32c happens to be 0: such a block is never judged by its checksum).
"""

from __future__ import annotations

import struct

import crc32c as _crc32c

from .model import Device, Pool

BLOCK = 4096
ENTRY = 4
PAGE = 4096
BLOCKS_PER_PAGE = PAGE // ENTRY
#: Devices with fewer extents than this get no checksum region.
MIN_EXTENTS = 8
FEATURE = "block-checksums"


def crc(block: bytes | bytearray | memoryview) -> int:
    """The stored value for one block: its crc32c (0 stands for "none")."""
    return _crc32c.crc32c(block)


def block_crcs(view: memoryview) -> list[int]:
    """crc32c of each 4 KiB block of *view* (whose length is a multiple of 4 KiB)."""
    return [_crc32c.crc32c(view[i:i + BLOCK]) for i in range(0, len(view), BLOCK)]


#: The entry of a block of zeros: what the blocks of extents newly given to a
#: mirrored volume get (vvfs/control/zeroing.py says why not 0).
ZERO_CRC = _crc32c.crc32c(bytes(BLOCK))


def pack(values: list[int]) -> bytes:
    """Entries as stored: little-endian 32-bit values, one per block."""
    return struct.pack(f"<{len(values)}I", *values)


def unpack(raw: bytes | bytearray | memoryview) -> list[int]:
    return list(struct.unpack(f"<{len(raw) // ENTRY}I", raw))


# ---------------------------------------------------------------------------
# geometry (pure)


def region_extents(label_extents: int) -> int:
    """Extents of the checksum region carved from a device with *label_extents* extents."""
    if label_extents < MIN_EXTENTS:
        return 0
    return -(-label_extents // 1024)


def carve(device: Device) -> Device:
    """*device* with its checksum region carved off the end of its extents."""
    k = region_extents(device.extent_count)
    device.extent_count -= k
    device.csum_extents = k
    return device


def region(device: Device, extent_size: int) -> tuple[int, int] | None:
    """(first byte, length) of the device's checksum region, or None if it has none."""
    if device.csum_extents <= 0:
        return None
    return (device.data_start + device.extent_count * extent_size,
            device.csum_extents * extent_size)


def entry_offset(device: Device, extent_size: int, data_offset: int) -> int:
    """Device byte of the entry of the block at device byte *data_offset*."""
    start = device.data_start + device.extent_count * extent_size
    return start + ((data_offset - device.data_start) // BLOCK) * ENTRY


def init_region(dev: object, device: Device, extent_size: int) -> None:
    """Zero the checksum region of a device being claimed (*dev*: a metadata.blockdev device)."""
    where = region(device, extent_size)
    if where is None:
        return
    start, length = where
    chunk = bytes(1 << 20)
    for off in range(0, length, len(chunk)):
        dev.pwrite(chunk[:min(len(chunk), length - off)], start + off)  # type: ignore[attr-defined]


def enable(pool: Pool) -> None:
    """Mark *pool* as needing a vvfs that keeps block checksums (an incompatible feature)."""
    if any(d.csum_extents for d in pool.devices) and FEATURE not in pool.features:
        pool.features.append(FEATURE)
