"""Levels 2 and 3 of resolution: volume byte offset -> device byte offset.

A :class:`VolumeMap` is built once per (pool, volume) and answers
:meth:`VolumeMap.resolve` on the hot I/O path.  Everything that does not
depend on the request -- segment boundaries, stripe geometry and the device
byte offset where each area begins -- is computed in the constructor, so a
call is a bisect and a little arithmetic per piece.

Geometry of a segment with ``stripes`` columns and stripe unit ``ss`` bytes:
logical stripe unit ``k`` of the segment (``k = rel // ss``) lives in column
``k % stripes`` at row ``k // stripes`` of that column's area, i.e. at byte
``base[leg][column] + (k // stripes) * ss + rel % ss`` of the area's device,
where ``base = device.data_start + area.start * extent_size``.  A linear
segment (one column) is the special case where the whole area is one run.

Pieces returned by ``resolve``:

* cover the request exactly and in order;
* never cross a stripe-unit boundary of a striped segment;
* never cross a segment boundary, except that consecutive pieces of
  *linear* segments that are contiguous on the same device on every leg are
  merged into one (a linear volume over one run is always one piece).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import NamedTuple

from metadata.errors import ConfigError, VVError
from metadata.model import Device, DeviceUUID, Pool, Segment, Volume

__all__ = ["Loc", "Piece", "ResolveError", "VolumeMap"]


class ResolveError(VVError, ValueError):
    """A byte range asked of a volume is not inside the volume."""


class Loc(NamedTuple):
    """A byte on a device: ``data_start + extent * extent_size + within``."""

    device: DeviceUUID
    offset: int


class Piece(NamedTuple):
    """A contiguous run of volume bytes and where each mirror leg keeps it."""

    offset: int
    length: int
    legs: tuple[Loc, ...]


class _Seg:
    """Precomputed geometry of one segment (internal to VolumeMap)."""

    __slots__ = ("bases", "devs", "end", "linear", "start", "stripes", "unit")

    def __init__(
        self,
        start: int,
        end: int,
        stripes: int,
        unit: int,
        devs: tuple[tuple[DeviceUUID, ...], ...],
        bases: tuple[tuple[int, ...], ...],
    ) -> None:
        self.start = start  # first volume byte of the segment
        self.end = end  # one past its last volume byte
        self.stripes = stripes
        self.unit = unit  # stripe unit in bytes
        self.devs = devs  # devs[column][leg]
        self.bases = bases  # bases[column][leg]: device byte of the area start
        self.linear = stripes == 1


class VolumeMap:
    """The resolved map of one volume of one pool configuration.

    The map is a snapshot: build a new one when the configuration changes.
    Raises :class:`ConfigError` when a segment names a device the pool does
    not have, a striped segment's stripe unit does not divide the extent
    size, or the segments do not cover the volume.  ``mirrors`` is the
    volume's mirror count; each :class:`Piece` has one :class:`Loc` per leg.
    """

    __slots__ = ("_devices", "_segs", "_starts", "mirrors", "name", "size")

    def __init__(self, pool: Pool, volume: Volume) -> None:
        devices = {d.uuid: d for d in pool.devices}
        self.name = volume.name
        self.size = volume.size
        self.mirrors = volume.mirrors
        segs = [_build(volume.name, s, devices, pool.extent_size) for s in volume.segments]
        if (segs[-1].end if segs else 0) < volume.size:
            raise ConfigError(f"volume {volume.name}: segments do not cover its size")
        self._segs = segs
        self._starts = [s.start for s in segs]
        self._devices = frozenset(d for s in segs for col in s.devs for d in col)

    def devices(self) -> frozenset[DeviceUUID]:
        """The uuids of every device holding some of this volume."""
        return self._devices

    def segments(self) -> list[tuple[int, int, int, int, list[tuple[tuple[DeviceUUID, ...],
                                                                tuple[int, ...]]]]]:
        """The precomputed geometry, for a table that resolves outside Python.

        One ``(start, end, stripes, unit, columns)`` per segment in volume
        order, volume bytes ``[start, end)``; *columns* has one
        ``(devices, bases)`` per stripe column, a device uuid and the device
        byte where its area begins for each leg (the module docstring's
        formula).
        """
        return [(s.start, s.end, s.stripes, s.unit, list(zip(s.devs, s.bases)))
                for s in self._segs]

    def resolve(self, offset: int, length: int) -> list[Piece]:
        """Map volume bytes ``[offset, offset + length)`` to device bytes.

        Returns the pieces in volume order (see the module docstring).  A
        zero-length request inside the volume resolves to no pieces.
        Raises :class:`ResolveError` if the range is not inside
        ``[0, self.size)``.
        """
        if (
            offset < 0
            or length < 0
            or offset + length > self.size
            or (length and offset >= self.size)
        ):
            raise ResolveError(
                f"volume {self.name}: bytes {offset}+{length} outside its size {self.size}"
            )
        pieces: list[Piece] = []
        end = offset + length
        segs = self._segs
        i = bisect_right(self._starts, offset) - 1
        while offset < end:
            seg = segs[i]
            if seg.linear:
                n = min(end, seg.end) - offset
                rel = offset - seg.start
                legs = tuple(Loc(d, b + rel) for d, b in zip(seg.devs[0], seg.bases[0]))
                if pieces and _extends(pieces[-1], legs, segs[i - 1].linear):
                    last = pieces[-1]
                    pieces[-1] = Piece(last.offset, last.length + n, last.legs)
                else:
                    pieces.append(Piece(offset, n, legs))
            else:
                n = self._striped(seg, offset, end, pieces)
            offset += n
            if offset >= seg.end:
                i += 1
        return pieces

    @staticmethod
    def _striped(seg: _Seg, offset: int, end: int, pieces: list[Piece]) -> int:
        """Append the pieces of *seg* from *offset*; return the bytes covered."""
        unit, stripes = seg.unit, seg.stripes
        stop = min(end, seg.end)
        pos = offset
        while pos < stop:
            rel = pos - seg.start
            k, within = divmod(rel, unit)
            row, column = divmod(k, stripes)
            n = min(unit - within, stop - pos)
            at = row * unit + within
            legs = tuple(Loc(d, b + at) for d, b in zip(seg.devs[column], seg.bases[column]))
            pieces.append(Piece(pos, n, legs))
            pos += n
        return stop - offset


def _build(name: str, s: Segment, devices: dict[DeviceUUID, Device], esize: int) -> _Seg:
    """Precompute one segment; raise ConfigError if it cannot be resolved."""
    if not s.areas or any(len(leg) != s.stripes for leg in s.areas):
        raise ConfigError(f"volume {name}: segment at {s.start} does not match its stripes")
    if s.stripes > 1 and (s.stripe_size <= 0 or esize % s.stripe_size):
        raise ConfigError(
            f"volume {name}: stripe size {s.stripe_size} does not divide the extent size {esize}"
        )
    devs, bases = [], []
    for column in range(s.stripes):
        areas = [leg[column] for leg in s.areas]
        for a in areas:
            if a.device not in devices:
                raise ConfigError(f"volume {name}: unknown device {a.device}")
        devs.append(tuple(a.device for a in areas))
        bases.append(tuple(devices[a.device].data_start + a.start * esize for a in areas))
    start, end = s.start * esize, (s.start + s.length) * esize
    return _Seg(start, end, s.stripes, s.stripe_size, tuple(devs), tuple(bases))


def _extends(last: Piece, legs: tuple[Loc, ...], last_linear: bool) -> bool:
    """True when *legs* continue *last* on the same device on every leg."""
    if not last_linear or len(last.legs) != len(legs):
        return False
    for a, b in zip(last.legs, legs):
        if a.device != b.device or a.offset + last.length != b.offset:
            return False
    return True


class Span(NamedTuple):
    """Device bytes of one leg: ``length`` bytes from ``offset`` of ``device``."""

    device: DeviceUUID
    offset: int
    length: int
    mirrored: bool  #: the volume has two legs or more (its blocks keep checksums)


def regrown_spans(old: Pool, new: Pool) -> list[Span]:
    """Device bytes that a volume grown in *new* maps again from extents it kept.

    Shrinking keeps the last extent (stripe row) of a volume whole, so the
    bytes past the new end still hold what was written there; growing the
    volume again brings them back inside it.  For every volume of both
    pools (by uuid) that *new* makes larger, these are the legs' device
    bytes of volume bytes ``[old size, min(new size, old mapped end))``
    -- never fresh extents (:func:`mapper.alloc.fresh_runs` has those).
    In volume order; empty when nothing was regrown.
    """
    before = {v.uuid: v for v in old.volumes}
    out: list[Span] = []
    for v in new.volumes:
        was = before.get(v.uuid)
        if was is None or v.size <= was.size:
            continue
        mapped = sum(s.length for s in was.segments) * old.extent_size
        end = min(v.size, mapped)
        if end <= was.size:
            continue
        for p in VolumeMap(new, v).resolve(was.size, end - was.size):
            out.extend(Span(loc.device, loc.offset, p.length, v.mirrors > 1) for loc in p.legs)
    return out
