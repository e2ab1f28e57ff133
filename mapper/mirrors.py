"""Mirror geometry and map edits for failures, resync and replacement (no I/O).

:class:`MirrorIndex` answers, for a byte range of one device, where the same
volume bytes live on the other legs: every leg of a mirrored segment lays
out stripe column *c* identically inside its area, so device byte
``base(leg, c) + x`` of one leg holds the same volume byte as
``base(leg', c) + x`` of every other leg.  Resync copies device ranges
between legs with it, and the dirty log's cleaner asks it which devices
must all be healthy before a region's bit may be cleared.

The edits (:func:`replace_device`, :func:`set_device_state`,
:func:`set_device_paths`, :func:`set_read_policy`) follow the rules of
:mod:`mapper.placement`: they take a pool, never change it, and return a new
pool that passed :meth:`Pool.check`.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_right
from typing import Any, NamedTuple

from metadata.errors import ConfigError
from metadata.model import (
    DEVICE_STATES,
    FAILURES,
    READ_POLICIES,
    Area,
    Device,
    DeviceUUID,
    Pool,
    check_name,
)

from .alloc import free_runs
from .layout import Loc
from .move import find as find_move
from .placement import PlacementError

__all__ = [
    "RESYNC_KIND",
    "MirrorIndex",
    "Span",
    "only_copies",
    "replace_device",
    "resync_record",
    "resync_records",
    "set_device_paths",
    "set_device_state",
    "set_read_policy",
]


#: ``Pool.operations`` kind of a resync record: a device being brought back or
#: rebuilt (``{"kind": "resync", "id": DEV, "device": DEV, ...}``); the device
#: stays ``failed`` until a node has resynced it and dropped the record.
RESYNC_KIND = "resync"


def resync_record(device: str, rate: int | None, reason: str, started: float
                  ) -> dict[str, Any]:
    """A resync record for *device* (*reason*: "returning" or "replace"; *rate*: bytes/s)."""
    rec: dict[str, Any] = {"kind": RESYNC_KIND, "id": device, "device": device,
                           "reason": reason, "started": started}
    if rate:
        rec["rate"] = rate
    return rec


def resync_records(pool: Pool) -> list[dict[str, Any]]:
    """The well-formed resync records of *pool*, in order."""
    return [op for op in pool.operations
            if isinstance(op, dict) and op.get("kind") == RESYNC_KIND and op.get("device")]


class Span(NamedTuple):
    """Device bytes of one leg and the same bytes on every leg of their segment.

    ``legs[i]`` is where leg *i* keeps them (``legs[leg]`` is the range asked
    about); ``length`` bytes from there.
    """

    volume: str
    leg: int
    length: int
    legs: tuple[Loc, ...]


class _Run(NamedTuple):
    start: int
    end: int
    volume: str
    leg: int
    bases: tuple[Loc, ...]  # where the run begins on each leg


class MirrorIndex:
    """Where the mirrored areas of one pool configuration lie (see the module docstring)."""

    def __init__(self, pool: Pool) -> None:
        devs = {d.uuid: d for d in pool.devices}
        esize = pool.extent_size
        runs: dict[DeviceUUID, list[_Run]] = {}
        for v in pool.volumes:
            for s in v.segments:
                if len(s.areas) < 2:
                    continue
                n = s.area_length * esize
                for c in range(s.stripes):
                    bases = []
                    for leg in s.areas:
                        a = leg[c]
                        d = devs.get(a.device)
                        bases.append(Loc(a.device, (d.data_start if d else 0) + a.start * esize))
                    tb = tuple(bases)
                    for m, loc in enumerate(tb):
                        runs.setdefault(loc.device, []).append(
                            _Run(loc.offset, loc.offset + n, v.name, m, tb))
        for lst in runs.values():
            lst.sort()
        self._runs = runs
        self._starts = {dev: [r.start for r in lst] for dev, lst in runs.items()}

    def devices(self) -> set[DeviceUUID]:
        """Devices holding some mirrored data."""
        return set(self._runs)

    def spans(self, device: str, offset: int, length: int) -> list[Span]:
        """The mirrored parts of ``[offset, offset + length)`` on *device*, in order."""
        lst = self._runs.get(DeviceUUID(device))
        if not lst:
            return []
        end = offset + length
        i = max(bisect_right(self._starts[DeviceUUID(device)], offset) - 1, 0)
        out = []
        while i < len(lst) and lst[i].start < end:
            r = lst[i]
            lo, hi = max(offset, r.start), min(end, r.end)
            if lo < hi:
                rel = lo - r.start
                out.append(Span(r.volume, r.leg, hi - lo,
                                tuple(Loc(b.device, b.offset + rel) for b in r.bases)))
            i += 1
        return out

    def partners(self, device: str, offset: int, length: int) -> set[DeviceUUID]:
        """Every device (this one included) holding a copy of some of these bytes."""
        return {loc.device for s in self.spans(device, offset, length) for loc in s.legs}

    def extent_ranges(self, device: str) -> list[tuple[int, int]]:
        """(device byte, length) of every mirrored run on *device*."""
        return [(r.start, r.end - r.start) for r in self._runs.get(DeviceUUID(device), [])]


# ---------------------------------------------------------------------------
# edits


def _device(pool: Pool, key: str) -> Device:
    try:
        return pool.device(key)
    except ConfigError as exc:
        raise PlacementError(str(exc)) from exc


def only_copies(pool: Pool, device: str) -> list[str]:
    """Names of the volumes of which *device* holds the only copy still in service.

    A volume is in that case when some column of some segment has every leg
    on *device* or on a failed device: failing *device* makes those bytes
    unreadable (a linear or striped volume on it; a mirror whose other legs
    have failed).  In pool order.
    """
    failed = {d.uuid for d in pool.devices if d.state == "failed"} | {device}
    out = []
    for v in pool.volumes:
        if any(all(leg[c].device in failed for leg in seg.areas)
               for seg in v.segments for c in range(seg.stripes)):
            out.append(v.name)
    return out


def set_device_state(pool: Pool, key: str, state: str, failure: str = "") -> Pool:
    """Return a new pool where device *key* is in *state* ("ok" or "failed").

    *failure* says why a device fails (one of ``FAILURES``); an ok device
    has none.
    """
    if state not in DEVICE_STATES:
        raise PlacementError(f"unknown device state {state!r}: use one of"
                             f" {', '.join(DEVICE_STATES)}")
    if failure and (state != "failed" or failure not in FAILURES):
        raise PlacementError(f"a device {state} cannot have failure {failure!r}")
    new = pool.copy()
    dev = _device(new, key)
    dev.state, dev.failure = state, failure if state == "failed" else ""
    new.check()
    return new


def set_device_paths(pool: Pool, key: str, paths: list[str]) -> Pool:
    """Return a new pool where device *key* is reached by *paths* (primary first)."""
    if not paths:
        raise PlacementError("a device needs at least one path")
    if len(set(paths)) != len(paths):
        raise PlacementError("a path is named twice")
    new = pool.copy()
    dev = _device(new, key)
    for d in new.devices:
        shared = sorted(set(d.paths) & set(paths)) if d.uuid != dev.uuid else []
        if shared:
            raise PlacementError(f"path {shared[0]} already belongs to device {d.name}")
    dev.paths = list(paths)
    new.check()
    return new


def set_read_policy(pool: Pool, name: str, policy: str) -> Pool:
    """Return a new pool where volume *name* reads with *policy*."""
    if policy not in READ_POLICIES:
        raise PlacementError(f"unknown read policy {policy!r}: use one of"
                             f" {', '.join(READ_POLICIES)}")
    new = pool.copy()
    try:
        new.volume(name).read_policy = policy
    except ConfigError as exc:
        raise PlacementError(str(exc)) from exc
    new.check()
    return new


def replace_device(pool: Pool, old_key: str, new_device: Device) -> Pool:
    """Return a new pool where *new_device* holds every area of device *old_key*.

    *new_device* is added in state ``failed`` (its areas hold nothing yet:
    a rebuild copies them from the other legs and then marks it ``ok``) and
    the old device is forgotten.  Each area keeps its extent numbers when
    they are free on the new device, else takes the first free run that
    fits.  Refused while the old device is a source or destination of a
    move, and when some area of the old device has no copy on another
    working device (a linear or striped volume, or every other leg failed):
    that data cannot be rebuilt -- move it off instead (``vv device
    evacuate``) while the old device still works.
    """
    old = _device(pool, old_key)
    check_name("device", new_device.name)
    record = find_move(pool)
    if record is not None and any(old.uuid in (p.source, p.dest) for p in record.pieces):
        raise PlacementError(f"device {old.name} takes part in move {record.id}"
                             f" ({record.what}); abort the move first"
                             " ('vv volume move POOL/VOL --abort')")
    if any(d.uuid == new_device.uuid for d in pool.devices):
        raise PlacementError(f"device uuid {new_device.uuid} is already in pool {pool.name}")
    states = {d.uuid: d.state for d in pool.devices}
    for v in pool.volumes:
        for s in v.segments:
            on_old = [m for m, leg in enumerate(s.areas) if any(a.device == old.uuid for a in leg)]
            if not on_old:
                continue
            others = [leg for m, leg in enumerate(s.areas) if m not in on_old]
            if not any(all(states.get(a.device) == "ok" for a in leg) for leg in others):
                raise PlacementError(
                    f"volume {v.name} has no other working copy of its data on {old.name};"
                    " it cannot be rebuilt (move it off with 'vv device evacuate' while"
                    f" {old.name} still works)")
    new = pool.copy()
    dev = dataclasses.replace(new_device, paths=list(new_device.paths), state="failed")
    if new.devices and any(d.name == dev.name for d in new.devices if d.uuid != old.uuid):
        raise PlacementError(f"pool {pool.name} already has a device named {dev.name!r}")
    new.devices = [d for d in new.devices if d.uuid != old.uuid] + [dev]
    free = [[s, n] for s, n in free_runs(new)[dev.uuid]]
    for v in new.volumes:
        for s in v.segments:
            n = s.area_length
            for leg in s.areas:
                for i, a in enumerate(leg):
                    if a.device == old.uuid:
                        leg[i] = Area(dev.uuid, _take(free, a.start, n, dev, pool))
    new.check()
    return new


def _take(free: list[list[int]], want: int, n: int, dev: Device, pool: Pool) -> int:
    """Take *n* extents from *free* runs: at *want* if free there, else first fit."""
    for run in free:
        if run[0] <= want and want + n <= run[0] + run[1]:
            head = want - run[0]
            tail = run[0] + run[1] - (want + n)
            free.remove(run)
            if head:
                free.append([run[0], head])
            if tail:
                free.append([want + n, tail])
            free.sort()
            return want
    for run in free:
        if run[1] >= n:
            start = run[0]
            run[0] += n
            run[1] -= n
            if not run[1]:
                free.remove(run)
            return start
    raise PlacementError(f"device {dev.name} is too small to replace a device of pool"
                         f" {pool.name}: no run of {n} free extents left")
