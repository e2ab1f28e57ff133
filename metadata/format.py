"""On-media format v1: labels, metadata areas, slots and commit records.

``man/vvfs.5`` is the specification; this module is its reference
implementation.  All integers are little-endian.  Every structure ends in a
SHA-256 of the bytes before it, and is checked (length, magic, version,
checksum) before any field is trusted.

Device layout (``S`` = device size rounded down to 4096)::

    0         4096          zeroed at claim
    4096      4096          label, copy A
    8192      M             metadata area, copy A
    D         n * E         data: n extents of E bytes (D aligned to 1 MiB)
    S-4096-M  M             metadata area, copy B
    S-4096    4096          label, copy B

Metadata area layout (size ``M``)::

    0         512           area header
    4096      8 * 512       commit ring: record of generation g at (g % 8)
    8192      N * Z         slot ring: generation g in slot (g % N);
                            a slot is a 512-byte header then the payload
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
import uuid as uuidlib
import zlib
from dataclasses import dataclass
from typing import NamedTuple

from .errors import BadMagicError, ChecksumError, MediaError, UnsupportedFeatureError

SECTOR = 512
BLOCK = 4096
LABEL_A_OFFSET = 4096
LABEL_SIZE = 4096
MDA_A_OFFSET = 8192
AREA_HEADER_SIZE = 512
COMMIT_RING_OFFSET = 4096
COMMIT_RECORDS = 8
SLOTS_OFFSET = 8192
SLOT_HEADER_SIZE = 512
DATA_ALIGN = 1 << 20
DEFAULT_SLOTS = 8
#: Default size of each metadata area copy; holds 10,000 volumes (bench/).
DEFAULT_METADATA_SIZE = 16 << 20
MIN_METADATA_SIZE = SLOTS_OFFSET + DEFAULT_SLOTS * 8192
MAX_METADATA_SIZE = 1 << 30
FEATURES_FIELD = 256

FORMAT_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})

#: Incompatible features this reader knows.  A label naming any other is
#: refused by name (see COMPATIBILITY in man/vvfs.5).
KNOWN_INCOMPAT: frozenset[str] = frozenset()
KNOWN_COMPAT: frozenset[str] = frozenset()

ENCODING_JSON = 0
ENCODING_ZLIB_JSON = 1

LABEL_MAGIC = b"VVFSLABL"
AREA_MAGIC = b"VVFSMDAH"
SLOT_MAGIC = b"VVFSSLOT"
COMMIT_MAGIC = b"VVFSCMIT"

# Label, 4096 bytes:
#   0  8s  magic "VVFSLABL"          8  I  format version
#  12  I   label size (4096)        16  16s pool uuid     32 16s device uuid
#  48  Q   device size at claim     56  Q  extent size
#  64  Q   label A offset           72  Q  label B offset
#  80  Q   area A offset            88  Q  area B offset   96 Q area size
# 104  I   slot count              108  I  slot size
# 112  Q   data start              120  Q  extent count
# 128  d   created (unix time)
# 136  256s incompatible features (comma-separated ASCII, NUL padded)
# 392  256s compatible features
# 648  ...  zero
# 4064 32s SHA-256 of bytes 0..4063
LABEL = struct.Struct("<8sII16s16sQQQQQQQIIQQd256s256s")
assert LABEL.size == 648

# Area header, 512 bytes:
#   0 8s magic "VVFSMDAH"   8 I version   12 I copy (0 = A, 1 = B)
#  16 16s pool uuid        32 16s device uuid
#  48 Q area offset        56 Q area size  64 I slot count  68 I slot size
#  72 ... zero             480 32s SHA-256 of bytes 0..479
AREA_HEADER = struct.Struct("<8sII16s16sQQII")
assert AREA_HEADER.size == 72

# Slot header, 512 bytes:
#   0 8s magic "VVFSSLOT"   8 I version   12 I payload encoding
#  16 16s pool uuid        32 16s device uuid
#  48 Q generation         56 Q payload length   64 d time
#  72 32s SHA-256 of the payload
# 104 ... zero             480 32s SHA-256 of bytes 0..479
SLOT_HEADER = struct.Struct("<8sII16s16sQQd32s")
assert SLOT_HEADER.size == 104

# Commit record, 512 bytes:
#   0 8s magic "VVFSCMIT"   8 I version   12 I zero
#  16 16s pool uuid        32 Q generation   40 d time
#  48 32s SHA-256 of the committed payload
#  80 ... zero             480 32s SHA-256 of bytes 0..479
COMMIT = struct.Struct("<8sII16sQd32s")
assert COMMIT.size == 80


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _seal(body: bytes, size: int) -> bytes:
    """Pad *body* with zeros to *size* - 32 bytes and append its SHA-256."""
    padded = body.ljust(size - 32, b"\0")
    return padded + _sha(padded)


def _unseal(raw: bytes, size: int, magic: bytes, device: str, offset: int, what: str) -> bytes:
    if len(raw) != size:
        raise MediaError(device, offset, f"{what}: short read ({len(raw)} of {size} bytes)")
    if raw[:8] != magic:
        raise BadMagicError(device, offset, f"{what}: no {magic.decode()} magic")
    if _sha(raw[:-32]) != raw[-32:]:
        raise ChecksumError(device, offset, f"{what}: checksum mismatch")
    version = struct.unpack_from("<I", raw, 8)[0]
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedFeatureError(
            device, offset, f"{what}: format version {version} is not supported"
        )
    return raw


def _features(raw: bytes) -> frozenset[str]:
    text = raw.rstrip(b"\0").decode("ascii", "replace")
    return frozenset(f for f in text.split(",") if f)


def _ub(u: str) -> bytes:
    return uuidlib.UUID(u).bytes


def _us(b: bytes) -> str:
    return str(uuidlib.UUID(bytes=b))


# ---------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class Geometry:
    """Where everything lies on one device; stored in its label."""

    device_size: int
    extent_size: int
    label_b: int
    area_a: int
    area_b: int
    area_size: int
    slot_count: int
    slot_size: int
    data_start: int
    extent_count: int

    @property
    def label_offsets(self) -> tuple[int, int]:
        return (LABEL_A_OFFSET, self.label_b)

    @property
    def area_offsets(self) -> tuple[int, int]:
        return (self.area_a, self.area_b)

    @property
    def max_payload(self) -> int:
        return self.slot_size - SLOT_HEADER_SIZE


class GeometryError(ValueError):
    pass


def plan_geometry(
    device_size: int, extent_size: int, area_size: int = DEFAULT_METADATA_SIZE,
    slot_count: int = DEFAULT_SLOTS,
) -> Geometry:
    """Lay out a device of *device_size* bytes; raise GeometryError if it cannot hold one extent."""
    if area_size % BLOCK or not MIN_METADATA_SIZE <= area_size <= MAX_METADATA_SIZE:
        raise GeometryError(
            f"metadata size must be a multiple of 4 KiB from {MIN_METADATA_SIZE // 1024} KiB"
            f" to {MAX_METADATA_SIZE >> 20} MiB"
        )
    if slot_count < 2:
        raise GeometryError("a metadata area needs at least two slots")
    size = device_size - device_size % BLOCK
    slot_size = (area_size - SLOTS_OFFSET) // slot_count
    slot_size -= slot_size % BLOCK
    label_b = size - LABEL_SIZE
    area_b = label_b - area_size
    data_start = -(-(MDA_A_OFFSET + area_size) // DATA_ALIGN) * DATA_ALIGN
    extent_count = max(0, (area_b - data_start) // extent_size)
    if extent_count < 1:
        raise GeometryError(
            f"device of {device_size} bytes is too small: it must hold two metadata areas"
            f" of {area_size} bytes and at least one extent of {extent_size} bytes"
        )
    return Geometry(size, extent_size, label_b, MDA_A_OFFSET, area_b, area_size, slot_count,
                    slot_size, data_start, extent_count)


# ---------------------------------------------------------------------------
# Label


@dataclass(frozen=True)
class Label:
    pool_uuid: str
    device_uuid: str
    geometry: Geometry
    created: float
    incompat: frozenset[str] = frozenset()
    compat: frozenset[str] = frozenset()

    def pack(self) -> bytes:
        g = self.geometry
        for what, names in (("incompatible", self.incompat), ("compatible", self.compat)):
            if len(",".join(sorted(names))) > FEATURES_FIELD:
                raise ValueError(f"{what} feature names do not fit {FEATURES_FIELD} bytes")
        body = LABEL.pack(
            LABEL_MAGIC, FORMAT_VERSION, LABEL_SIZE, _ub(self.pool_uuid), _ub(self.device_uuid),
            g.device_size, g.extent_size, LABEL_A_OFFSET, g.label_b, g.area_a, g.area_b,
            g.area_size, g.slot_count, g.slot_size, g.data_start, g.extent_count, self.created,
            ",".join(sorted(self.incompat)).encode("ascii"),
            ",".join(sorted(self.compat)).encode("ascii"),
        )
        return _seal(body, LABEL_SIZE)

    @classmethod
    def unpack(cls, raw: bytes, device: str, offset: int) -> Label:
        _unseal(raw, LABEL_SIZE, LABEL_MAGIC, device, offset, "label")
        (_m, _v, size, pool, dev, dsize, esize, la, lb, aa, ab, asize, nslots, zslot, dstart,
         ecount, created, incompat, compat) = LABEL.unpack_from(raw)
        if size != LABEL_SIZE or la != LABEL_A_OFFSET:
            raise MediaError(device, offset, "label: inconsistent size or label A offset")
        geometry = Geometry(dsize, esize, lb, aa, ab, asize, nslots, zslot, dstart, ecount)
        _check_geometry(geometry, device, offset)
        label = cls(_us(pool), _us(dev), geometry, created, _features(incompat), _features(compat))
        unknown = label.incompat - KNOWN_INCOMPAT
        if unknown:
            raise UnsupportedFeatureError(
                device, offset,
                "label needs incompatible features this vvfs does not know: "
                + ", ".join(sorted(unknown)),
            )
        return label


def _check_geometry(g: Geometry, device: str, offset: int) -> None:
    """The label's checksum is right; still refuse a layout that makes no sense."""
    problems = []
    if g.extent_size <= 0 or g.extent_size & (g.extent_size - 1):
        problems.append("extent size not a power of two")
    if g.slot_count < 2 or g.slot_size < 2 * SLOT_HEADER_SIZE:
        problems.append("bad slot geometry")
    if SLOTS_OFFSET + g.slot_count * g.slot_size > g.area_size:
        problems.append("slots overflow the metadata area")
    if g.area_a + g.area_size > g.data_start:
        problems.append("area A overlaps data")
    if g.data_start + g.extent_count * g.extent_size > g.area_b:
        problems.append("data overlaps area B")
    if g.area_b + g.area_size > g.label_b or g.label_b + LABEL_SIZE > g.device_size:
        problems.append("area B or label B beyond the device")
    if problems:
        raise MediaError(device, offset, "label: " + "; ".join(problems))


# ---------------------------------------------------------------------------
# Area header


@dataclass(frozen=True)
class AreaHeader:
    copy: int
    pool_uuid: str
    device_uuid: str
    offset: int
    size: int
    slot_count: int
    slot_size: int

    def pack(self) -> bytes:
        body = AREA_HEADER.pack(AREA_MAGIC, FORMAT_VERSION, self.copy, _ub(self.pool_uuid),
                                _ub(self.device_uuid), self.offset, self.size, self.slot_count,
                                self.slot_size)
        return _seal(body, AREA_HEADER_SIZE)

    @classmethod
    def unpack(cls, raw: bytes, device: str, offset: int) -> AreaHeader:
        _unseal(raw, AREA_HEADER_SIZE, AREA_MAGIC, device, offset, "metadata area header")
        _m, _v, copy, pool, dev, off, size, n, z = AREA_HEADER.unpack_from(raw)
        return cls(copy, _us(pool), _us(dev), off, size, n, z)


# ---------------------------------------------------------------------------
# Slots: one generation of the configuration


class SlotHeader(NamedTuple):
    encoding: int
    pool_uuid: str
    device_uuid: str
    generation: int
    length: int
    time: float
    digest: bytes


def slot_offset(g: Geometry, copy: int, generation: int) -> int:
    return g.area_offsets[copy] + SLOTS_OFFSET + (generation % g.slot_count) * g.slot_size


def commit_offset(g: Geometry, copy: int, generation: int) -> int:
    return g.area_offsets[copy] + COMMIT_RING_OFFSET + (generation % COMMIT_RECORDS) * SECTOR


def encode_payload(config: dict, compress: bool = True) -> tuple[int, bytes]:
    text = json.dumps(config, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if compress:
        return ENCODING_ZLIB_JSON, zlib.compress(text, 6)
    return ENCODING_JSON, text


def pack_slot(pool_uuid: str, device_uuid: str, generation: int, encoding: int,
              payload: bytes, max_payload: int, when: float | None = None) -> bytes:
    """The bytes of a whole slot write: header then payload, padded to 512."""
    if len(payload) > max_payload:
        raise MediaError(device_uuid, 0, f"configuration of {len(payload)} bytes does not fit"
                         f" a metadata slot of {max_payload} bytes (grow --metadata-size)")
    body = SLOT_HEADER.pack(SLOT_MAGIC, FORMAT_VERSION, encoding, _ub(pool_uuid),
                            _ub(device_uuid), generation, len(payload),
                            time.time() if when is None else when, _sha(payload))
    data = _seal(body, SLOT_HEADER_SIZE) + payload
    return data.ljust(-(-len(data) // SECTOR) * SECTOR, b"\0")


def unpack_slot_header(raw: bytes, device: str, offset: int) -> SlotHeader:
    _unseal(raw, SLOT_HEADER_SIZE, SLOT_MAGIC, device, offset, "metadata slot")
    _m, _v, enc, pool, dev, gen, length, when, digest = SLOT_HEADER.unpack_from(raw)
    if enc not in (ENCODING_JSON, ENCODING_ZLIB_JSON):
        raise UnsupportedFeatureError(device, offset, f"metadata slot: unknown encoding {enc}")
    return SlotHeader(enc, _us(pool), _us(dev), gen, length, when, digest)


def decode_payload(header: SlotHeader, payload: bytes, device: str, offset: int) -> dict:
    """Check the payload against its header and return the configuration document."""
    if len(payload) != header.length or _sha(payload) != header.digest:
        raise ChecksumError(device, offset, f"generation {header.generation}: payload checksum"
                            " mismatch")
    try:
        text = zlib.decompress(payload) if header.encoding == ENCODING_ZLIB_JSON else payload
        doc = json.loads(text.decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, ValueError) as exc:
        raise MediaError(device, offset, f"generation {header.generation}: payload does not"
                         f" decode: {exc}") from None
    if not isinstance(doc, dict):
        raise MediaError(device, offset, f"generation {header.generation}: payload is not an"
                         " object")
    return doc


# ---------------------------------------------------------------------------
# Commit records


class CommitRecord(NamedTuple):
    pool_uuid: str
    generation: int
    time: float
    digest: bytes


def pack_commit(pool_uuid: str, generation: int, digest: bytes, when: float | None = None) -> bytes:
    body = COMMIT.pack(COMMIT_MAGIC, FORMAT_VERSION, 0, _ub(pool_uuid), generation,
                       time.time() if when is None else when, digest)
    return _seal(body, SECTOR)


def unpack_commit(raw: bytes, device: str, offset: int) -> CommitRecord:
    _unseal(raw, SECTOR, COMMIT_MAGIC, device, offset, "commit record")
    _m, _v, _z, pool, gen, when, digest = COMMIT.unpack_from(raw)
    return CommitRecord(_us(pool), gen, when, digest)


def payload_digest(payload: bytes) -> bytes:
    return _sha(payload)
