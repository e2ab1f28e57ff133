"""On-media format of the dirty log: a write-intent bitmap on every device.

``man/vvfs.5`` ("DIRTY LOG") is the specification; this module is its
reference implementation.  All integers are little-endian.  Every block is
4096 bytes and ends in a SHA-256 of the bytes before it.

What a bit means
----------------
Each device carries a bitmap of its own data bytes, one bit per *region* of
``Device.log_region`` bytes (a power of two from 1 MiB up to the extent
size, so that regions never straddle an extent; 1 MiB keeps the log writes
of a write stream rare -- see vvfs/data/mirror/writes.py -- and a resync close to what
was written).  Region *r* covers device
bytes ``[data_start + r * R, data_start + (r + 1) * R)``.  A set bit says
"the mirrored data in this region may differ from its copies on the other
legs": it is set (and on stable storage) before a mirrored write touches
the region, and cleared only once every leg holds the data and has flushed
it.  While a leg is missing, the bits of the regions written meanwhile stay
set on the legs that got the data, so a returning device is resynced from
those bits alone; after a crash the set bits are exactly the ranges that
may have been in flight.

The header also lists *stale* devices: devices of the pool that missed
writes recorded in this bitmap (a leg failed).  Whoever opens the pool
learns from it which copy is the old one, even if the failure never made
it into the configuration.

**A block that cannot be read or verified counts as all-dirty**, never as
clean (a corrupt header: every region dirty).  A resync of a region that
was not really dirty costs a copy; a lost bit would cost data.

Where it lives
--------------
When a device is claimed (``carve``), the last ``log_extents`` extents of
the data extents its label gives it become its log: the configuration
lists the device with that many fewer extents (``extent_count``), so the
allocator never sees them.  Other regions carved after it (block
checksums, ``csum_extents``) lie between the data extents and the log::

    log offset L = data_start + (extent_count + csum_extents) * extent_size

    L + 0         4096   header
    L + 4096 * b  4096   bitmap block b (b = 1 .. blocks)

Header (4096 bytes)::

       0  8s   magic "VVFSDLOG"        8  I  version (1)
      12  I    block size (4096)      16 16s pool uuid      32 16s device uuid
      48  Q    log offset L            56  Q  region size R
      64  Q    region count            72  I  bitmap blocks   76  I  bits per block (32000)
      80  Q    data start              88  Q  sequence (one more at each header write)
      96  I    stale count (<= 64)    100  I  zero
     104  64 * 16s  stale device uuids (the first *stale count* are meaningful)
    1128  ...  zero                  4064 32s SHA-256 of bytes 0..4063

Bitmap block b (4096 bytes)::

       0  8s   magic "VVFSDBMP"        8  I  version (1)
      12  I    block number b         16 16s device uuid
      32  Q    sequence (one more at each write of this block)
      40  24   zero
      64  4000 bitmap: region (b - 1) * 32000 + i is bit i % 8 (LSB first)
               of byte i // 8; bits past the region count are zero
    4064  32s  SHA-256 of bytes 0..4063
"""

from __future__ import annotations

import hashlib
import struct
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import NamedTuple

from .blockdev import BlockDevice, DeviceIOError
from .errors import BadMagicError, ChecksumError, MediaError, UnsupportedFeatureError
from .model import Device, Pool

BLOCK = 4096
VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
HEADER_MAGIC = b"VVFSDLOG"
BLOCK_MAGIC = b"VVFSDBMP"
BITMAP_OFFSET = 64
BITMAP_BYTES = 4000
BITS_PER_BLOCK = BITMAP_BYTES * 8
MAX_STALE = 64
MIN_REGION = 1 << 20
#: Devices with fewer data extents than this get no log (and no resync by bitmap).
MIN_EXTENTS = 4

# Header: see the module docstring for the byte-by-byte layout.
HEADER = struct.Struct("<8sII16s16sQQQIIQQII")
assert HEADER.size == 104
STALE_OFFSET = 104
# Bitmap block header.
BLOCK_HEADER = struct.Struct("<8sII16sQ")
assert BLOCK_HEADER.size == 40
assert BITMAP_OFFSET + BITMAP_BYTES + 32 == BLOCK


def _sha(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def _seal(body: bytes | bytearray) -> bytes:
    padded = bytes(body).ljust(BLOCK - 32, b"\0")
    return padded + _sha(padded)


def _ub(u: str) -> bytes:
    return uuidlib.UUID(u).bytes


def _us(b: bytes) -> str:
    return str(uuidlib.UUID(bytes=b))


# ---------------------------------------------------------------------------
# geometry


def plan(data_extents: int, extent_size: int) -> tuple[int, int]:
    """(log extents, region size) for a device with *data_extents* extents; (0, 0) for none."""
    if data_extents < MIN_EXTENTS or extent_size < 2 * BLOCK:
        return 0, 0
    extents = 1
    while extents < data_extents // 2:
        bits = (extents * extent_size // BLOCK - 1) * BITS_PER_BLOCK
        region = MIN_REGION
        data = (data_extents - extents) * extent_size
        while region < extent_size and -(-data // region) > bits:
            region *= 2
        region = min(region, extent_size)
        if -(-data // region) <= bits:
            return extents, region
        extents += 1
    return 0, 0


def carve(device: Device, extent_size: int) -> Device:
    """*device* with its dirty log carved off the end of its extents (call before others)."""
    n, region = plan(device.extent_count, extent_size)
    device.extent_count -= n
    device.log_extents = n
    device.log_region = region
    return device


@dataclass(frozen=True)
class LogGeometry:
    """Where one device's log lies and what it covers."""

    offset: int
    region: int
    regions: int
    blocks: int
    data_start: int

    def region_of(self, device_offset: int) -> int:
        return (device_offset - self.data_start) // self.region

    def regions_of(self, device_offset: int, length: int) -> range:
        """Indices of the regions touched by device bytes ``[offset, offset + length)``."""
        first = (device_offset - self.data_start) // self.region
        last = (device_offset + max(length, 1) - 1 - self.data_start) // self.region
        return range(max(first, 0), min(last + 1, self.regions))

    def region_start(self, r: int) -> int:
        return self.data_start + r * self.region

    def block_offset(self, b: int) -> int:
        """Device byte of bitmap block *b* (1-based)."""
        return self.offset + b * BLOCK

    @property
    def bitmap_bytes(self) -> int:
        return -(-self.regions // 8)


def geometry(device: Device, extent_size: int) -> LogGeometry | None:
    """The log of *device* in configuration terms, or None if it has none."""
    if device.log_extents <= 0 or device.log_region <= 0:
        return None
    covered = (device.extent_count + device.csum_extents) * extent_size
    regions = -(-covered // device.log_region)
    blocks = -(-regions // BITS_PER_BLOCK)
    offset = device.data_start + (device.extent_count + device.csum_extents) * extent_size
    return LogGeometry(offset, device.log_region, regions, blocks, device.data_start)


# ---------------------------------------------------------------------------
# header and blocks


class LogHeader(NamedTuple):
    pool_uuid: str
    device_uuid: str
    offset: int
    region: int
    regions: int
    blocks: int
    data_start: int
    sequence: int
    stale: tuple[str, ...]


def pack_header(pool_uuid: str, device_uuid: str, geo: LogGeometry, sequence: int,
                stale: list[str] | tuple[str, ...] | set[str] = ()) -> bytes:
    stale = sorted(stale)
    if len(stale) > MAX_STALE:
        raise ValueError(f"at most {MAX_STALE} stale devices fit a dirty log header")
    body = HEADER.pack(HEADER_MAGIC, VERSION, BLOCK, _ub(pool_uuid), _ub(device_uuid),
                       geo.offset, geo.region, geo.regions, geo.blocks, BITS_PER_BLOCK,
                       geo.data_start, sequence, len(stale), 0)
    body += b"".join(_ub(u) for u in stale)
    return _seal(body)


def _check(raw: bytes | bytearray, magic: bytes, device: str, offset: int, what: str) -> None:
    if len(raw) != BLOCK:
        raise MediaError(device, offset, f"{what}: short read ({len(raw)} of {BLOCK} bytes)")
    if bytes(raw[:8]) != magic:
        raise BadMagicError(device, offset, f"{what}: no {magic.decode()} magic")
    if _sha(memoryview(raw)[:-32]) != bytes(raw[-32:]):
        raise ChecksumError(device, offset, f"{what}: checksum mismatch")
    version = struct.unpack_from("<I", raw, 8)[0]
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedFeatureError(device, offset, f"{what}: version {version} is not"
                                      " supported")


def unpack_header(raw: bytes | bytearray, device: str, offset: int) -> LogHeader:
    """Check and decode a header; raise MediaError (naming *device* and *offset*)."""
    _check(raw, HEADER_MAGIC, device, offset, "dirty log header")
    (_m, _v, size, pool, dev, off, region, regions, blocks, bpb, dstart, seq, nstale,
     _z) = HEADER.unpack_from(raw)
    if size != BLOCK or bpb != BITS_PER_BLOCK or nstale > MAX_STALE:
        raise MediaError(device, offset, "dirty log header: inconsistent sizes")
    stale = tuple(_us(bytes(raw[STALE_OFFSET + 16 * i:STALE_OFFSET + 16 * (i + 1)]))
                  for i in range(nstale))
    return LogHeader(_us(pool), _us(dev), off, region, regions, blocks, dstart, seq, stale)


def pack_block(device_uuid: str, b: int, sequence: int, bitmap: bytes | bytearray | memoryview
               ) -> bytes:
    """Bitmap block *b* holding *bitmap* (at most 4000 bytes; zero padded)."""
    if len(bitmap) > BITMAP_BYTES:
        raise ValueError("bitmap block overflow")
    body = BLOCK_HEADER.pack(BLOCK_MAGIC, VERSION, b, _ub(device_uuid), sequence)
    body = body.ljust(BITMAP_OFFSET, b"\0") + bytes(bitmap).ljust(BITMAP_BYTES, b"\0")
    return _seal(body)


def unpack_block(raw: bytes | bytearray, device_uuid: str, b: int, device: str, offset: int
                 ) -> tuple[int, bytes]:
    """(sequence, 4000 bitmap bytes) of block *b*; MediaError if it is not that block."""
    _check(raw, BLOCK_MAGIC, device, offset, f"dirty log block {b}")
    _m, _v, index, dev, seq = BLOCK_HEADER.unpack_from(raw)
    if index != b or _us(dev) != device_uuid:
        raise MediaError(device, offset, f"dirty log block {b}: belongs to block {index} of"
                         f" device {_us(dev)}")
    return seq, bytes(raw[BITMAP_OFFSET:BITMAP_OFFSET + BITMAP_BYTES])


# ---------------------------------------------------------------------------
# bitmaps in memory


def get_bit(bits: bytes | bytearray, r: int) -> bool:
    return bool(bits[r >> 3] & (1 << (r & 7)))


def set_bit(bits: bytearray, r: int) -> None:
    bits[r >> 3] |= 1 << (r & 7)


def clear_bit(bits: bytearray, r: int) -> None:
    bits[r >> 3] &= ~(1 << (r & 7)) & 0xFF


def set_bits(bits: bytes | bytearray) -> list[int]:
    """Indices of the set bits."""
    out = []
    for i, byte in enumerate(bits):
        if byte:
            for j in range(8):
                if byte & (1 << j):
                    out.append(i * 8 + j)
    return out


def block_of(r: int) -> int:
    """Bitmap block (1-based) holding region *r*."""
    return r // BITS_PER_BLOCK + 1


def block_bytes(bits: bytes | bytearray, geo: LogGeometry, b: int) -> bytes:
    """The bitmap bytes of block *b*, bits past the region count cleared."""
    start = (b - 1) * BITMAP_BYTES
    chunk = bytearray(bits[start:start + BITMAP_BYTES])
    last = geo.regions - (b - 1) * BITS_PER_BLOCK  # regions in this block
    if last < len(chunk) * 8:
        for r in range(max(last, 0), len(chunk) * 8):
            clear_bit(chunk, r)
    return bytes(chunk)


def all_dirty(geo: LogGeometry, b: int | None = None) -> bytearray:
    """A bitmap (whole, or block *b*'s part only) with every region of it set."""
    bits = bytearray(geo.bitmap_bytes)
    rng = range(geo.regions) if b is None else range(
        (b - 1) * BITS_PER_BLOCK, min(b * BITS_PER_BLOCK, geo.regions))
    for r in rng:
        set_bit(bits, r)
    return bits


@dataclass
class LogImage:
    """What a device's log says: its bitmap, its stale devices and what was wrong."""

    geo: LogGeometry
    bits: bytearray
    stale: set[str] = field(default_factory=set)
    sequence: int = 0
    block_sequences: dict[int, int] = field(default_factory=dict)
    problems: list[MediaError] = field(default_factory=list)

    def dirty(self) -> list[int]:
        return set_bits(self.bits)


def decode(raw: bytes | bytearray, geo: LogGeometry, pool_uuid: str, device_uuid: str,
           device: str) -> LogImage:
    """Decode a whole log read from media (header then blocks) into a :class:`LogImage`.

    Damage never raises: a bad header makes every region dirty, a bad
    block makes its regions dirty; each problem is listed in ``problems``.
    """
    image = LogImage(geo, bytearray(geo.bitmap_bytes))
    try:
        hdr = unpack_header(raw[:BLOCK], device, geo.offset)
        if (hdr.pool_uuid, hdr.device_uuid, hdr.offset, hdr.region, hdr.regions,
                hdr.data_start) != (pool_uuid, device_uuid, geo.offset, geo.region, geo.regions,
                                    geo.data_start):
            raise MediaError(device, geo.offset, "dirty log header does not match the"
                             " configuration")
        image.stale = set(hdr.stale)
        image.sequence = hdr.sequence
    except MediaError as exc:
        image.problems.append(exc)
        image.bits = all_dirty(geo)
        return image
    for b in range(1, geo.blocks + 1):
        off = geo.block_offset(b)
        try:
            seq, chunk = unpack_block(raw[b * BLOCK:(b + 1) * BLOCK], device_uuid, b, device, off)
            image.block_sequences[b] = seq
        except MediaError as exc:
            image.problems.append(exc)
            chunk = bytes(all_dirty(geo, b)[(b - 1) * BITMAP_BYTES:b * BITMAP_BYTES])
        start = (b - 1) * BITMAP_BYTES
        n = min(BITMAP_BYTES, geo.bitmap_bytes - start)
        image.bits[start:start + n] = chunk[:n]
    return image


def read_log(dev: BlockDevice, geo: LogGeometry, pool_uuid: str, device_uuid: str) -> LogImage:
    """Read a device's log; unreadable means all-dirty (see :func:`decode`)."""
    try:
        raw = dev.pread((geo.blocks + 1) * BLOCK, geo.offset)
    except DeviceIOError as exc:
        image = LogImage(geo, all_dirty(geo))
        image.problems.append(MediaError(dev.name, geo.offset, f"dirty log unreadable: {exc}"))
        return image
    return decode(raw, geo, pool_uuid, device_uuid, dev.name)


def encode(image: LogImage, pool_uuid: str, device_uuid: str) -> bytes:
    """The bytes of a whole log (header and every block) holding *image*."""
    out = [pack_header(pool_uuid, device_uuid, image.geo, image.sequence, image.stale)]
    for b in range(1, image.geo.blocks + 1):
        out.append(pack_block(device_uuid, b, image.block_sequences.get(b, 0),
                              block_bytes(image.bits, image.geo, b)))
    return b"".join(out)


def write_log(dev: BlockDevice, image: LogImage, pool_uuid: str, device_uuid: str) -> None:
    """Write a whole log (header and blocks) and flush."""
    dev.pwrite(encode(image, pool_uuid, device_uuid), image.geo.offset)
    dev.flush()


def init_log(dev: BlockDevice, device: Device, extent_size: int, pool_uuid: str) -> None:
    """Write a clean log on a device being claimed (nothing if it has none)."""
    geo = geometry(device, extent_size)
    if geo is None:
        return
    write_log(dev, LogImage(geo, bytearray(geo.bitmap_bytes)), pool_uuid, device.uuid)


FEATURE = "dirty-log"


def enable(pool: Pool) -> None:
    """Mark *pool* as needing a vvfs that keeps the dirty log (an incompatible feature).

    An older vvfs would write mirrors without setting bits, and a crash
    would then leave legs that differ where no bit says so.
    """
    if any(d.log_extents for d in pool.devices) and FEATURE not in pool.features:
        pool.features.append(FEATURE)
