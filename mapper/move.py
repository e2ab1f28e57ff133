"""Map edits of an online move: plan it, checkpoint it, switch the map, abort.

Pure functions, like the rest of ``mapper``: each takes a :class:`Pool` and
returns a new one (checked), or raises :class:`MoveError`.  The node copies
the data (``vvfs/node/jobs.py``); this module only says what goes where.

The move record
---------------
A move in progress is one dict in ``Pool.operations`` (man/vvfs.5, "MOVE
RECORDS")::

    {"kind": "move", "version": 1, "id": "3f2a9c...", "what": "volume a to d2",
     "created": 1700000000.0, "checkpoint": 1700000012.5,
     "copied": 17, "total": 48, "rate": 0,
     "pieces": [{"volume": VOLUME_UUID, "leg": 0, "col": 0, "stripes": 1,
                 "lstart": 0, "from": DEV_UUID, "src": 12,
                 "to": DEV_UUID, "dst": 40, "count": 24}, ...],
     "reserved": [[DEV_UUID, 40, 24], ...]}

A *piece* moves ``count`` physical extents of one area (mirror leg ``leg``,
stripe column ``col``) of a volume from extent ``src`` of device ``from`` to
extent ``dst`` of device ``to``; ``lstart`` is the logical extent of the
volume where the piece begins and ``stripes`` the segment's stripe count, so
physical extent ``j`` of the piece holds logical extents ``lstart +
j*stripes`` to ``lstart + (j+1)*stripes - 1`` (all of them for a linear
segment's single column).  ``reserved`` lists every destination run: the
allocator never hands those extents out (``metadata.model.reserved_runs``).
``copied`` counts extents, in piece order, that are copied *and flushed* on
their destination as of the last checkpoint; ``total`` is the sum of the
counts; ``rate`` limits the copy (bytes per second, 0 = no limit).

Protocol
--------
1. :func:`plan_move` / :func:`plan_evacuate` add the record (a commit).
2. The node copies extent by extent from ``copied`` on, every write to a
   moving extent also reaching its destination, and commits
   :func:`checkpoint` every few extents.
3. :func:`switch` replaces every moved run in the volume maps by its
   destination and drops the record in one commit; the old extents are
   free from that generation on.
4. :func:`abort` drops the record; the maps never stopped naming the old
   place, so everything is as before the move.

While the record exists, :func:`validate` (called before every commit by
the Manager) refuses any change that would unmap or remap a moving extent
(removing, shrinking or re-placing the volume under it).
"""

from __future__ import annotations

import dataclasses
import time
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from metadata.errors import ConfigError
from metadata.model import Area, Device, DeviceUUID, Pool, Segment, Volume

from .alloc import free_runs
from .placement import PlacementError, _merge_segments
from .units import human_size

__all__ = [
    "RECORD_VERSION",
    "MoveError",
    "MoveRecord",
    "Piece",
    "abort",
    "checkpoint",
    "find",
    "parse",
    "plan_evacuate",
    "plan_move",
    "switch",
    "validate",
]

KIND = "move"
RECORD_VERSION = 1


class MoveError(PlacementError):
    """A move cannot be planned, continued or finished as asked."""


@dataclass(frozen=True)
class Piece:
    """One run of physical extents moving from one device to another."""

    volume: str
    leg: int
    col: int
    stripes: int
    lstart: int
    source: str
    src: int
    dest: str
    dst: int
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {"volume": self.volume, "leg": self.leg, "col": self.col,
                "stripes": self.stripes, "lstart": self.lstart, "from": self.source,
                "src": self.src, "to": self.dest, "dst": self.dst, "count": self.count}

    @classmethod
    def from_dict(cls, d: Any) -> Piece:
        if not isinstance(d, dict):
            raise MoveError(f"move piece is not an object: {d!r}"[:120])
        try:
            p = cls(str(d["volume"]), int(d["leg"]), int(d["col"]), int(d["stripes"]),
                    int(d["lstart"]), str(d["from"]), int(d["src"]), str(d["to"]),
                    int(d["dst"]), int(d["count"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise MoveError(f"malformed move piece: {exc!r}") from None
        if min(p.leg, p.col, p.lstart, p.src, p.dst) < 0 or p.count < 1 or p.stripes < 1:
            raise MoveError(f"move piece with a negative or empty range: {d!r}"[:160])
        return p

    def logical(self, j: int) -> tuple[int, int]:
        """Logical extents (first, count) held by physical extent *j* of the piece."""
        return self.lstart + j * self.stripes, self.stripes


@dataclass(frozen=True)
class MoveRecord:
    """A parsed move record (see the module docstring)."""

    id: str
    what: str
    copied: int
    total: int
    pieces: tuple[Piece, ...]
    created: float
    checkpoint: float
    #: copy rate limit in bytes per second (0: as fast as the devices go)
    rate: int = 0

    def locate(self, k: int) -> tuple[Piece, int]:
        """The piece holding extent *k* (0 <= k < total) of the move, and the index in it."""
        for p in self.pieces:
            if k < p.count:
                return p, k
            k -= p.count
        raise IndexError(f"extent {k} past the end of move {self.id}")

    def devices(self) -> set[str]:
        return {p.source for p in self.pieces} | {p.dest for p in self.pieces}

    def volumes(self) -> list[str]:
        return list(dict.fromkeys(p.volume for p in self.pieces))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "version": RECORD_VERSION, "id": self.id, "what": self.what,
                "created": self.created, "checkpoint": self.checkpoint,
                "copied": self.copied, "total": self.total,
                "rate": self.rate, "pieces": [p.to_dict() for p in self.pieces],
                "reserved": [[p.dest, p.dst, p.count] for p in self.pieces]}


def is_move(op: Any) -> bool:
    return isinstance(op, dict) and op.get("kind") == KIND and "pieces" in op


def parse(op: Any) -> MoveRecord:
    """Check the structure of a move record and return it parsed (MoveError if malformed)."""
    if not is_move(op):
        raise MoveError("not a move record")
    if op.get("version") != RECORD_VERSION:
        raise MoveError(f"move record version {op.get('version')!r} is not supported")
    pieces = tuple(Piece.from_dict(p) for p in op.get("pieces") or [])
    try:
        rec = MoveRecord(str(op["id"]), str(op.get("what", "")), int(op["copied"]),
                         int(op["total"]), pieces, float(op.get("created", 0.0)),
                         float(op.get("checkpoint", 0.0)), int(op.get("rate", 0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise MoveError(f"malformed move record: {exc!r}") from None
    if not pieces or rec.total != sum(p.count for p in pieces):
        raise MoveError(f"move {rec.id}: total {rec.total} is not the sum of its pieces")
    if not 0 <= rec.copied <= rec.total:
        raise MoveError(f"move {rec.id}: copied {rec.copied} outside 0..{rec.total}")
    want = [[p.dest, p.dst, p.count] for p in pieces]
    if [list(r) if isinstance(r, (list, tuple)) else r for r in op.get("reserved", [])] != want:
        raise MoveError(f"move {rec.id}: reserved runs do not match its pieces")
    return rec


def find(pool: Pool, op_id: str | None = None) -> MoveRecord | None:
    """The pool's move record (the one with *op_id*, if given), parsed; None if none."""
    for op in pool.operations:
        if is_move(op) and (op_id is None or op.get("id") == op_id):
            return parse(op)
    return None


# ---------------------------------------------------------------------------
# where a piece lies in its volume


def _segment_at(vol: Volume, lstart: int) -> Segment | None:
    for s in vol.segments:
        if s.start <= lstart < s.start + s.length:
            return s
    return None


def _busy(pool: Pool, name: str, rec_id: str) -> MoveError:
    return MoveError(f"volume {name} is being moved (move {rec_id}): this change would"
                     " unmap or remap extents it is copying; wait for the move or abort it"
                     f" (vv volume move {pool.name}/{name} --abort)")


def _check_piece(pool: Pool, p: Piece, rec_id: str, before: Pool | None = None) -> Volume:
    """Raise MoveError unless *p*'s source is still mapped where the record says."""
    vol = next((v for v in pool.volumes if v.uuid == p.volume), None)
    if vol is None:
        old = next((v for v in (before.volumes if before else []) if v.uuid == p.volume), None)
        raise _busy(pool, old.name if old else p.volume, rec_id)
    s = _segment_at(vol, p.lstart)
    ok = (s is not None and s.stripes == p.stripes and (p.lstart - s.start) % s.stripes == 0
          and p.lstart + p.count * p.stripes <= s.start + s.length
          and p.leg < len(s.areas) and p.col < len(s.areas[p.leg]))
    if ok:
        a = s.areas[p.leg][p.col]  # type: ignore[union-attr]
        ok = a.device == p.source and a.start + (p.lstart - s.start) // p.stripes == p.src  # type: ignore[union-attr]
    if not ok:
        raise _busy(pool, vol.name, rec_id)
    return vol


def validate(pool: Pool, before: Pool | None = None) -> None:
    """Raise MoveError unless every move record is well formed and matches the maps.

    *before* (the configuration being changed) only names a volume that the
    change removed.
    """
    devs = {d.uuid: d for d in pool.devices}
    for op in pool.operations:
        if not is_move(op):
            continue
        rec = parse(op)
        for p in rec.pieces:
            _check_piece(pool, p, rec.id, before)
            for key in (p.source, p.dest):
                if key not in devs:
                    raise MoveError(f"move {rec.id}: unknown device {key}")


def busy_devices(pool: Pool) -> set[str]:
    """Uuids of the devices that a move in progress reads from or writes to."""
    out: set[str] = set()
    for op in pool.operations:
        if is_move(op):
            out |= parse(op).devices()
    return out


def involved(pool: Pool, record: MoveRecord) -> set[str]:
    """Uuids of the devices holding the volumes *record* moves, and of its destinations.

    A move must not copy while one of these is failed or being resynced.
    """
    vols = record.volumes()
    out = {a.device for v in pool.volumes if v.uuid in vols
           for s in v.segments for leg in s.areas for a in leg}
    return out | {p.dest for p in record.pieces}


# ---------------------------------------------------------------------------
# planning


def _new_id() -> str:
    return uuidlib.uuid4().hex[:12]


def _device(pool: Pool, key: str) -> Device:
    try:
        return pool.device(key)
    except ConfigError as exc:
        raise MoveError(str(exc)) from None


def _volume(pool: Pool, key: str) -> Volume:
    try:
        return pool.volume(key)
    except ConfigError as exc:
        raise MoveError(str(exc)) from None


class _Space:
    """Free runs of the devices, consumed as destinations are chosen."""

    def __init__(self, pool: Pool) -> None:
        self.runs = {u: [list(r) for r in runs] for u, runs in free_runs(pool).items()}

    def free(self, dev: str) -> int:
        return sum(n for _s, n in self.runs.get(DeviceUUID(dev), []))

    def take(self, dev: str, count: int) -> list[tuple[int, int]]:
        """Take *count* extents of *dev*, largest runs first; return (start, n) runs."""
        runs = self.runs[DeviceUUID(dev)]
        out = []
        while count > 0:
            best = max(runs, key=lambda r: (r[1], -r[0]))
            n = min(best[1], count)
            out.append((best[0], n))
            best[0] += n
            best[1] -= n
            if not best[1]:
                runs.remove(best)
            count -= n
        return out


def _pieces_for(vol: Volume, s: Segment, leg: int, col: int, dest: Device,
                space: _Space) -> list[Piece]:
    a = s.areas[leg][col]
    out, done = [], 0
    if space.free(dest.uuid) < s.area_length:
        raise MoveError(f"not enough space on {dest.name} for volume {vol.name}: the move needs"
                        f" {s.area_length} more extents there, {space.free(dest.uuid)} are free")
    for start, n in space.take(dest.uuid, s.area_length):
        out.append(Piece(vol.uuid, leg, col, s.stripes, s.start + done * s.stripes, a.device,
                         a.start + done, dest.uuid, start, n))
        done += n
    return out


def _record(pool: Pool, what: str, pieces: list[Piece], now: float | None, rate: int) -> Pool:
    if not pieces:
        raise MoveError(f"nothing to move: {what}")
    busy = find(pool)
    if busy is not None:
        raise MoveError(f"pool {pool.name}: a move is already in progress ({busy.what});"
                        " wait for it or abort it")
    when = time.time() if now is None else now
    if rate < 0:
        raise MoveError(f"invalid copy rate {rate}")
    rec = MoveRecord(_new_id(), what, 0, sum(p.count for p in pieces), tuple(pieces), when,
                     when, rate)
    new = pool.copy()
    new.operations.append(rec.to_dict())
    try:
        new.check()
    except ConfigError as exc:
        raise MoveError(f"cannot move: {exc}") from None
    switch(new, rec.id)  # the final map must be valid too: legs on distinct devices
    return new


def plan_move(pool: Pool, volume: str, to: str, source: str | None = None, *,
              now: float | None = None, rate: int = 0) -> Pool:
    """Record the move of *volume*'s extents to device *to* (only those on *source* if given).

    Without *source*, every area not already on *to* moves; that needs a
    volume whose segments each have one area (linear): a mirror leg or a
    stripe column is moved by naming its device with *source*.
    """
    vol = _volume(pool, volume)
    dest = _device(pool, to)
    src = _device(pool, source) if source is not None else None
    if dest.state == "failed":
        raise MoveError(f"device {dest.name} has failed; choose another destination")
    if src is not None and src.uuid == dest.uuid:
        raise MoveError(f"--from and --to both name device {dest.name}")
    space = _Space(pool)
    pieces: list[Piece] = []
    for s in vol.segments:
        for leg, areas in enumerate(s.areas):
            for col, a in enumerate(areas):
                if a.device == dest.uuid or (src is not None and a.device != src.uuid):
                    continue
                if src is None and (len(s.areas) > 1 or s.stripes > 1):
                    raise MoveError(
                        f"volume {vol.name} is mirrored or striped: name the device to move"
                        f" off with --from (one leg or column at a time)")
                others = {x.device for lg in s.areas for x in lg} - {a.device}
                if dest.uuid in others:
                    raise MoveError(
                        f"volume {vol.name}: device {dest.name} already holds another leg or"
                        f" stripe of the segment at extent {s.start}; legs never share a device")
                pieces += _pieces_for(vol, s, leg, col, dest, space)
    if not pieces:
        where = f" on {src.name}" if src is not None else f" off {dest.name}"
        raise MoveError(f"volume {vol.name} has no extents{where} to move")
    what = f"volume {vol.name}" + (f" from {src.name}" if src else "") + f" to {dest.name}"
    return _record(pool, what, pieces, now, rate)


def plan_evacuate(pool: Pool, device: str, *, now: float | None = None, rate: int = 0) -> Pool:
    """Record a move of every extent on *device* to the other devices.

    Each area goes whole to one device that holds no other leg or column of
    its segment and is not failed, the one with the most free space first.
    """
    dev = _device(pool, device)
    space = _Space(pool)
    pieces: list[Piece] = []
    for vol in pool.volumes:
        for s in vol.segments:
            for leg, areas in enumerate(s.areas):
                for col, a in enumerate(areas):
                    if a.device != dev.uuid:
                        continue
                    taken = {x.device for lg in s.areas for x in lg}
                    choices = [d for d in pool.devices if d.state != "failed"
                               and d.uuid not in taken and space.free(d.uuid) >= s.area_length]
                    if not choices:
                        raise MoveError(
                            f"cannot evacuate {dev.name}: no other device has"
                            f" {human_size(s.area_length * pool.extent_size)} free for volume"
                            f" {vol.name} (segment at extent {s.start}) outside its other legs"
                            " and stripes; add a device first")
                    best = max(choices, key=lambda d: space.free(d.uuid))
                    pieces += _pieces_for(vol, s, leg, col, best, space)
    if not pieces:
        raise MoveError(f"device {dev.name} holds no extents: nothing to evacuate")
    return _record(pool, f"evacuate {dev.name}", pieces, now, rate)


# ---------------------------------------------------------------------------
# progress, switch, abort


def _replace(pool: Pool, rec: MoveRecord, op: dict[str, Any] | None) -> Pool:
    new = pool.copy()
    new.operations = [o for o in new.operations
                      if not (is_move(o) and o.get("id") == rec.id)]
    if op is not None:
        new.operations.append(op)
    return new


def _get(pool: Pool, op_id: str) -> MoveRecord:
    rec = find(pool, op_id)
    if rec is None:
        raise MoveError(f"pool {pool.name}: no move {op_id} in progress")
    return rec


def checkpoint(pool: Pool, op_id: str, copied: int, *, now: float | None = None) -> Pool:
    """Record that the first *copied* extents of move *op_id* are copied and flushed."""
    rec = _get(pool, op_id)
    if not rec.copied <= copied <= rec.total:
        raise MoveError(f"move {op_id}: checkpoint {copied} outside {rec.copied}..{rec.total}")
    when = time.time() if now is None else now
    new = _replace(pool, rec, dataclasses.replace(rec, copied=copied, checkpoint=when).to_dict())
    new.check()
    return new


def abort(pool: Pool, op_id: str) -> Pool:
    """Drop move *op_id*: the maps still name the old place; the reserved extents are free."""
    new = _replace(pool, _get(pool, op_id), None)
    new.check()
    return new


def _cut(s: Segment, points: Iterable[int]) -> list[Segment]:
    """*s* split at the logical extents *points* that fall inside it."""
    inner = sorted({b for b in points if s.start < b < s.start + s.length})
    out, start = [], s.start
    for b in [*inner, s.start + s.length]:
        shift = (start - s.start) // s.stripes
        out.append(Segment(start, b - start, s.stripes, s.stripe_size,
                           [[Area(a.device, a.start + shift) for a in leg] for leg in s.areas]))
        start = b
    return out


def switch(pool: Pool, op_id: str) -> Pool:
    """Return the pool with move *op_id* finished: moved runs mapped at their destination.

    Segments are split where a moved run begins or ends, then merged again
    where they continue each other; the record (and its reservation) is gone.
    """
    rec = _get(pool, op_id)
    new = _replace(pool, rec, None)
    for vol_uuid in rec.volumes():
        mine = [p for p in rec.pieces if p.volume == vol_uuid]
        for p in mine:
            _check_piece(pool, p, rec.id)
        vol = next(v for v in new.volumes if v.uuid == vol_uuid)
        points = [b for p in mine for b in (p.lstart, p.lstart + p.count * p.stripes)]
        segs = [sub for s in vol.segments for sub in _cut(s, points)]
        for sub in segs:
            for p in mine:
                end = p.lstart + p.count * p.stripes
                if p.lstart <= sub.start < end:
                    sub.areas[p.leg][p.col] = Area(DeviceUUID(p.dest),
                                                   p.dst + (sub.start - p.lstart) // p.stripes)
        vol.segments = _merge_segments(segs)
    try:
        new.check()
    except ConfigError as exc:
        raise MoveError(f"move {rec.id}: the switched map is invalid: {exc}") from None
    return new
