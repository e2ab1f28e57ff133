"""Configuration edits: create, resize, rename and remove volumes; add and
remove devices.

Every function here is pure: it takes a :class:`Pool`, never changes it, and
returns a *new* pool that has passed :meth:`Pool.check`.  A request that
cannot be met raises :class:`PlacementError` with a one-line message and
leaves nothing half done.

Allocation
----------
A volume of ``size`` bytes needs ``ceil(size / extent_size)`` logical
extents, rounded up to a multiple of ``stripes``; each of its
``mirrors * stripes`` columns (``areas[m][s]`` of a segment) needs
``logical / stripes`` physical extents.  No two columns of one segment may
share a device, so the request is feasible exactly when

    sum over eligible devices of min(free, per_column) >= columns * per_column

The allocator checks that first (all or nothing), then repeatedly picks
``columns`` distinct devices in the order of the fit policy, takes from each
the same number of extents out of its largest free run, and emits one
segment.  The amount taken is the largest that keeps the rest of the request
feasible; should the policy's choice make no progress, the devices with the
most free space are taken instead, which always can.  Adjacent segments that
continue each other on every area are merged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from metadata.errors import ConfigError
from metadata.model import (
    DEVICE_STATES,
    READ_POLICIES,
    Area,
    Device,
    DeviceUUID,
    Pool,
    Segment,
    Volume,
    VolumeUUID,
    check_name,
    new_uuid,
)

from . import namespace
from .alloc import free_runs, used_by
from .units import human_size

__all__ = [
    "FITS",
    "PlacementError",
    "VolumeSpec",
    "add_device",
    "create_volume",
    "remove_device",
    "remove_volume",
    "rename_volume",
    "resize_volume",
    "set_attributes",
]

#: Fit policies: the order in which devices are preferred.
FITS = ("spread", "cheapest", "fastest")
MIN_STRIPE_SIZE = 4096
#: Highest owner uid and group gid of a volume file: 2**32 - 1 is (uid_t) -1,
#: which chown(2) reads as "leave unchanged".
MAX_ID = namespace.MAX_ID
#: The permission bits of a volume's mode; SPECIAL_BITS (setuid, setgid,
#: sticky) only when asked for explicitly (``special=True``).
PERMISSION_BITS = 0o777
SPECIAL_BITS = 0o7000


class PlacementError(ConfigError):
    """A configuration change cannot be made as asked."""


@dataclass
class VolumeSpec:
    """What ``vv volume create`` asks for.

    ``tier``, ``min_protection`` and ``max_cost`` filter the eligible devices
    (``--class``, ``--min-protection``, ``--max-cost``); ``fit`` orders them.
    ``on`` names devices (by name, uuid or path): without amounts it only
    restricts the candidates; with amounts (linear volumes only) each named
    device gives exactly that many bytes, in order, and one amount may be
    ``None`` for "the rest of the size".
    """

    name: str
    size: int
    stripes: int = 1
    stripe_size: int = 65536
    mirrors: int = 1
    tier: int | None = None
    min_protection: int | None = None
    max_cost: float | None = None
    fit: str = "spread"
    on: list[tuple[str, int | None]] = field(default_factory=list)
    owner: int = 0
    group: int = 0
    mode: int = 0o600
    hosts: list[str] = field(default_factory=list)
    read_policy: str = "balanced"
    #: allow setuid, setgid and sticky bits in ``mode`` (``--special-bits``)
    special_bits: bool = False


# -- free space being allocated ----------------------------------------------


class _Free:
    """The free runs of one device, consumed as an allocation proceeds."""

    __slots__ = ("dev", "runs", "total")

    def __init__(self, dev: Device, runs: Iterable[tuple[int, int]]) -> None:
        self.dev = dev
        self.runs = [[s, n] for s, n in runs]
        self.total = sum(n for _, n in self.runs)

    def largest(self) -> int:
        return max((n for _, n in self.runs), default=0)

    def take_largest(self, n: int) -> int:
        """Take *n* extents from the start of the largest run; return the start."""
        best = max(self.runs, key=lambda r: (r[1], -r[0]))
        return self.take_at(best[0], n)

    def free_at(self, start: int) -> int:
        """Length of the free run beginning exactly at extent *start*."""
        for s, n in self.runs:
            if s == start:
                return n
        return 0

    def take_at(self, start: int, n: int) -> int:
        """Take *n* extents from the run beginning at *start*; return *start*."""
        for i, run in enumerate(self.runs):
            if run[0] == start and run[1] >= n:
                run[0] += n
                run[1] -= n
                if not run[1]:
                    del self.runs[i]
                self.total -= n
                return start
        raise RuntimeError(f"mapper bug: extents {start}+{n} of {self.dev.name} are not free")


def _frees(pool: Pool) -> dict[DeviceUUID, _Free]:
    runs = free_runs(pool)
    return {d.uuid: _Free(d, runs[d.uuid]) for d in pool.devices}


_FitKey = Callable[[_Free], tuple[float, ...]]

_FIT_KEYS: dict[str, _FitKey] = {
    "spread": lambda f: (-f.total,),
    "cheapest": lambda f: (f.dev.cost, -f.total),
    "fastest": lambda f: (f.dev.tier, -f.total),
}


# -- the allocator -------------------------------------------------------------


def _feasible(frees: list[_Free], width: int, need: int) -> bool:
    return sum(min(f.total, need) for f in frees) >= width * need


def _max_take(frees: list[_Free], chosen: list[_Free], width: int, need: int, cap: int) -> int:
    """Largest t <= cap such that taking t from each chosen device stays feasible."""
    ids = {id(f) for f in chosen}
    fixed = sum(min(f.total, need) for f in chosen) - width * need
    others = [f.total for f in frees if id(f) not in ids]

    def ok(t: int) -> bool:
        return fixed + sum(min(c, need - t) for c in others) >= 0

    lo, hi = 0, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _step(frees: list[_Free], width: int, need: int, key: _FitKey) -> tuple[list[_Free], int]:
    """Choose the devices of the next segment and how many extents each gives."""
    live = [f for f in frees if f.total > 0]
    for order in (key, lambda f: (-min(f.total, need), *key(f))):
        chosen = sorted(live, key=order)[:width]
        if len(chosen) < width:
            break
        cap = min([need] + [f.largest() for f in chosen])
        t = _max_take(frees, chosen, width, need, cap)
        if t > 0:
            return chosen, t
    raise RuntimeError("mapper bug: allocation of a feasible request made no progress")


def _allocate(
    frees: list[_Free], mirrors: int, stripes: int, need: int, key: _FitKey
) -> list[tuple[int, list[list[Area]]]]:
    """Chunks of (extents per column, areas[m][s]) giving *need* per column."""
    width = mirrors * stripes
    chunks = []
    while need > 0:
        chosen, t = _step(frees, width, need, key)
        areas = [Area(f.dev.uuid, f.take_largest(t)) for f in chosen]
        chunks.append((t, [areas[m * stripes : (m + 1) * stripes] for m in range(mirrors)]))
        need -= t
    return chunks


def _segments(
    chunks: list[tuple[int, list[list[Area]]]], start: int, stripes: int, stripe_size: int
) -> list[Segment]:
    segs = []
    for t, areas in chunks:
        segs.append(Segment(start, t * stripes, stripes, stripe_size, areas))
        start += t * stripes
    return segs


def _merge_segments(segs: list[Segment]) -> list[Segment]:
    """Merge each segment into the one before when it continues every area."""
    out: list[Segment] = []
    for s in segs:
        prev = out[-1] if out else None
        if prev is not None and _continues(prev, s):
            prev.length += s.length
        else:
            out.append(s)
    return out


def _continues(a: Segment, b: Segment) -> bool:
    if (a.stripes, a.stripe_size, a.mirrors) != (b.stripes, b.stripe_size, b.mirrors):
        return False
    if a.start + a.length != b.start:
        return False
    n = a.area_length
    for leg_a, leg_b in zip(a.areas, b.areas):
        for x, y in zip(leg_a, leg_b):
            if x.device != y.device or x.start + n != y.start:
                return False
    return True


# -- messages ------------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _shape(mirrors: int, stripes: int) -> str:
    return f"{_plural(mirrors, 'mirror')} x {_plural(stripes, 'stripe')}"


def _free_list(pool: Pool, frees: dict[DeviceUUID, _Free], reasons: dict[DeviceUUID, str]) -> str:
    parts = []
    for d in pool.devices:
        text = f"{d.name} {human_size(frees[d.uuid].total * pool.extent_size)}"
        if d.uuid in reasons:
            text += f" ({reasons[d.uuid]})"
        parts.append(text)
    return ", ".join(parts) if parts else "no devices"


# -- eligibility -----------------------------------------------------------------


def _exclusion(d: Device, spec: VolumeSpec) -> str | None:
    """Why *d* may not hold *spec*'s volume, or None when it may."""
    if d.state == "failed":
        return "failed"
    if spec.tier is not None and d.tier != spec.tier:
        return f"tier {d.tier} excluded by --class {spec.tier}"
    if spec.min_protection is not None and d.protection < spec.min_protection:
        return f"protection {d.protection} below --min-protection {spec.min_protection}"
    if spec.max_cost is not None and d.cost > spec.max_cost:
        return f"cost {d.cost:g} above --max-cost {spec.max_cost:g}"
    return None


def _device(pool: Pool, key: str) -> Device:
    try:
        return pool.device(key)
    except PlacementError:
        raise
    except ConfigError as exc:
        raise PlacementError(str(exc)) from exc


def _named(pool: Pool, spec: VolumeSpec) -> list[Device]:
    """The devices named by ``--on``, each once."""
    devs: list[Device] = []
    for key, _amount in spec.on:
        d = _device(pool, key)
        if any(d.uuid == x.uuid for x in devs):
            raise PlacementError(f"device {d.name} named twice by --on")
        devs.append(d)
    return devs


def _eligibility(pool: Pool, spec: VolumeSpec) -> dict[DeviceUUID, str]:
    """Reasons, by device uuid, why devices are excluded from *spec*."""
    reasons: dict[DeviceUUID, str] = {}
    named = {d.uuid for d in _named(pool, spec)}
    for d in pool.devices:
        why = _exclusion(d, spec)
        if why is None and named and d.uuid not in named:
            why = "not named by --on"
        if why is not None:
            reasons[d.uuid] = why
    return reasons


# -- validation --------------------------------------------------------------------


def _check_size(size: int, what: str) -> None:
    if size <= 0 or size % 512:
        raise PlacementError(
            f"invalid size {size} for {what}: it must be positive and a multiple of 512 bytes"
        )


def _check_name(name: str) -> None:
    try:
        check_name("volume", name)
    except ConfigError as exc:
        raise PlacementError(str(exc)) from exc


def _check_spec(pool: Pool, spec: VolumeSpec) -> None:
    _check_name(spec.name)
    if pool.has_volume(spec.name):
        raise PlacementError(f"pool {pool.name} already has a volume {spec.name!r}")
    _check_size(spec.size, f"volume {spec.name}")
    if spec.stripes < 1 or spec.mirrors < 1:
        raise PlacementError(
            f"volume {spec.name}: stripes and mirrors must be at least 1"
            f" (got {spec.stripes} stripes, {spec.mirrors} mirrors)"
        )
    ss = spec.stripe_size
    if ss < MIN_STRIPE_SIZE or ss & (ss - 1) or pool.extent_size % ss:
        raise PlacementError(
            f"invalid stripe size {ss}: it must be a power of two of at least"
            f" {human_size(MIN_STRIPE_SIZE)} that divides the extent size"
            f" {human_size(pool.extent_size)}"
        )
    if spec.fit not in FITS:
        raise PlacementError(f"unknown fit {spec.fit!r}: use one of {', '.join(FITS)}")
    if spec.read_policy not in READ_POLICIES:
        raise PlacementError(
            f"unknown read policy {spec.read_policy!r}: use one of {', '.join(READ_POLICIES)}"
        )
    check_attributes(f"volume {spec.name}", spec.owner, spec.group, spec.mode,
                     special=spec.special_bits)
    if _has_amounts(spec) and (spec.stripes != 1 or spec.mirrors != 1):
        raise PlacementError(
            "--on DEV:SIZE amounts need a linear volume (1 stripe, 1 mirror);"
            " name devices without sizes to restrict a striped or mirrored one"
        )


def check_attributes(what: str, owner: int | None, group: int | None, mode: int | None, *,
                     special: bool = False) -> None:
    """Raise PlacementError unless each given owner, group and mode is valid.

    *owner* and *group* must be integers from 0 to :data:`MAX_ID`; *mode*
    an integer of permission bits (at most 0o777), with setuid, setgid and
    sticky (0o7000) allowed only if *special*.  ``None`` is not checked (not
    being changed).  *what* opens the message ("volume tank/db").
    """
    for name, value in (("owner", owner), ("group", group)):
        if value is not None and not namespace.valid_id(value):
            raise PlacementError(f"{what}: {name} {value!r} is not a number from 0 to {MAX_ID}")
    if mode is None:
        return
    allowed = PERMISSION_BITS | (SPECIAL_BITS if special else 0)
    if type(mode) is not int or mode < 0 or mode & ~(PERMISSION_BITS | SPECIAL_BITS):
        raise PlacementError(f"{what}: mode {mode!r} is not a file mode (0 to 0o7777)")
    if mode & ~allowed:
        raise PlacementError(f"{what}: mode {mode:04o} has setuid, setgid or sticky bits;"
                             " ask for them explicitly (--special-bits)")


def _has_amounts(spec: VolumeSpec) -> bool:
    return any(amount is not None for _key, amount in spec.on)


def _logical_extents(size: int, extent_size: int, stripes: int) -> int:
    extents = -(-size // extent_size)
    return -(-extents // stripes) * stripes


# -- create ------------------------------------------------------------------------


def create_volume(pool: Pool, spec: VolumeSpec) -> Pool:
    """Return a new pool with the volume *spec* describes allocated in it."""
    return create_volumes(pool, [spec])


def create_volumes(pool: Pool, specs: Sequence[VolumeSpec]) -> Pool:
    """Return a new pool with every volume of *specs* allocated, in order.

    All or nothing: the first spec that cannot be satisfied raises and the
    pool passed in is unchanged.  Free space is computed once for the batch.
    """
    new = pool.copy()
    frees = _frees(new)
    for spec in specs:
        _check_spec(new, spec)
        reasons = _eligibility(new, spec)
        if _has_amounts(spec):
            segments = _place_amounts(new, spec, frees, reasons)
        else:
            segments = _place(new, spec, frees, reasons)
        new.volumes.append(
            Volume(
                uuid=VolumeUUID(new_uuid()),
                name=spec.name,
                size=spec.size,
                stripes=spec.stripes,
                stripe_size=spec.stripe_size,
                mirrors=spec.mirrors,
                owner=spec.owner,
                group=spec.group,
                mode=spec.mode,
                hosts=list(spec.hosts),
                read_policy=spec.read_policy,
                segments=segments,
            )
        )
    new.check()
    return new


def _check_width(
    pool: Pool,
    what: str,
    width: int,
    shape: str,
    eligible: list[Device],
    reasons: dict[DeviceUUID, str],
) -> None:
    if width <= len(eligible):
        return
    names = ", ".join(d.name for d in eligible) or "none"
    excluded = ", ".join(f"{d.name} ({reasons[d.uuid]})" for d in pool.devices if d.uuid in reasons)
    raise PlacementError(
        f"pool {pool.name}: {what} needs {width} distinct devices ({shape};"
        f" mirror legs and stripes never share a device) but only {len(eligible)}"
        f" are eligible: {names}" + (f"; excluded: {excluded}" if excluded else "")
    )


def _space_error(
    pool: Pool,
    what: str,
    need: int,
    width: int,
    shape: str,
    frees: dict[DeviceUUID, _Free],
    reasons: dict[DeviceUUID, str],
) -> PlacementError:
    return PlacementError(
        f"pool {pool.name}: not enough space for {what}: need"
        f" {human_size(need * pool.extent_size)} on each of {width} distinct devices"
        f" ({shape}); free: {_free_list(pool, frees, reasons)}"
    )


def _place(
    pool: Pool, spec: VolumeSpec, frees: dict[DeviceUUID, _Free], reasons: dict[DeviceUUID, str]
) -> list[Segment]:
    """Allocate by criteria: the fit policy over the eligible devices."""
    what = f"volume {spec.name} ({human_size(spec.size)})"
    eligible = [d for d in pool.devices if d.uuid not in reasons]
    width = spec.mirrors * spec.stripes
    shape = _shape(spec.mirrors, spec.stripes)
    _check_width(pool, what, width, shape, eligible, reasons)
    need = _logical_extents(spec.size, pool.extent_size, spec.stripes) // spec.stripes
    candidates = [frees[d.uuid] for d in eligible]
    if not _feasible(candidates, width, need):
        raise _space_error(pool, what, need, width, shape, frees, reasons)
    chunks = _allocate(candidates, spec.mirrors, spec.stripes, need, _FIT_KEYS[spec.fit])
    return _merge_segments(_segments(chunks, 0, spec.stripes, spec.stripe_size))


def _amounts(pool: Pool, spec: VolumeSpec) -> list[tuple[Device, int]]:
    """The ``--on`` devices with their byte amounts, ``None`` resolved."""
    devs = _named(pool, spec)
    amounts = [amount for _key, amount in spec.on]
    if amounts.count(None) > 1:
        raise PlacementError("only one --on device may omit its size (it takes the rest)")
    for d, amount in zip(devs, amounts):
        if amount is not None and amount <= 0:
            raise PlacementError(f"--on {d.name}: size must be positive")
    known = sum(a for a in amounts if a is not None)
    if None in amounts:
        rest = spec.size - known
        if rest <= 0:
            raise PlacementError(
                f"--on sizes add up to {human_size(known)}, leaving nothing of the"
                f" {human_size(spec.size)} volume for the device without a size"
            )
        amounts = [rest if a is None else a for a in amounts]
    elif known != spec.size:
        raise PlacementError(
            f"--on sizes add up to {human_size(known)} but the volume size is"
            f" {human_size(spec.size)}; give one device no size to take the rest"
        )
    return [(d, int(a)) for d, a in zip(devs, amounts) if a is not None]


def _place_amounts(
    pool: Pool, spec: VolumeSpec, frees: dict[DeviceUUID, _Free], reasons: dict[DeviceUUID, str]
) -> list[Segment]:
    """Allocate a linear volume from the ``--on`` devices, exactly as asked."""
    esize = pool.extent_size
    chunks: list[tuple[int, list[list[Area]]]] = []
    for d, amount in _amounts(pool, spec):
        if d.uuid in reasons:
            raise PlacementError(f"--on {d.name}: device cannot be used: {reasons[d.uuid]}")
        want = -(-amount // esize)
        free = frees[d.uuid]
        if free.total < want:
            raise PlacementError(
                f"pool {pool.name}: not enough space on {d.name}: --on asks"
                f" {human_size(want * esize)}, {human_size(free.total * esize)} free"
            )
        while want > 0:
            t = min(want, free.largest())
            chunks.append((t, [[Area(d.uuid, free.take_largest(t))]]))
            want -= t
    return _merge_segments(_segments(chunks, 0, 1, spec.stripe_size))


# -- resize ------------------------------------------------------------------------


def _volume(pool: Pool, name: str) -> Volume:
    try:
        return pool.volume(name)
    except ConfigError as exc:
        raise PlacementError(str(exc)) from exc


def resize_volume(pool: Pool, name: str, new_size: int, allow_shrink: bool = False) -> Pool:
    """Return a new pool where volume *name* has *new_size* bytes.

    Growing extends the last segment in place where the extents right after
    each of its areas are free, then allocates new segments (same stripes and
    mirrors, spread over the devices with most free space).  Shrinking needs
    *allow_shrink* and frees the extents past the new end.
    """
    _check_size(new_size, f"volume {name}")
    new = pool.copy()
    vol = _volume(new, name)
    if new_size < vol.size and not allow_shrink:
        raise PlacementError(
            f"shrinking volume {vol.name} from {human_size(vol.size)} to"
            f" {human_size(new_size)} discards its data past the new end; confirm with --yes"
        )
    need = _logical_extents(new_size, new.extent_size, vol.stripes)
    have = vol.extents()
    if new_size > vol.size and need > have:
        _grow(new, vol, need - have, new_size)
    elif new_size < vol.size and need < have:
        vol.segments = _truncate(vol.segments, need)
    vol.size = new_size
    new.check()
    return new


def _truncate(segments: list[Segment], need: int) -> list[Segment]:
    """Keep the first *need* logical extents (rounded up to whole stripe rows)."""
    kept = []
    for s in segments:
        if s.start >= need:
            break
        if s.start + s.length > need:
            s.length = -(-(need - s.start) // s.stripes) * s.stripes
        kept.append(s)
    return kept


def _grow(pool: Pool, vol: Volume, extra: int, new_size: int) -> None:
    """Map *extra* more logical extents at the end of *vol* (edits *pool*)."""
    last = vol.segments[-1] if vol.segments else None
    stripes = last.stripes if last else vol.stripes
    mirrors = last.mirrors if last else vol.mirrors
    stripe_size = last.stripe_size if last else vol.stripe_size
    need = -(-extra // stripes)
    width = mirrors * stripes
    frees = _frees(pool)
    reasons = {d.uuid: "failed" for d in pool.devices if d.state == "failed"}
    candidates = [frees[d.uuid] for d in pool.devices if d.uuid not in reasons]
    if last is not None:
        need -= _extend_in_place(last, frees, candidates, reasons, need)
    if need <= 0:
        return
    what = f"volume {vol.name} grown to {human_size(new_size)}"
    shape = _shape(mirrors, stripes)
    eligible = [f.dev for f in candidates]
    _check_width(pool, what, width, shape, eligible, reasons)
    if not _feasible(candidates, width, need):
        raise _space_error(pool, what, need, width, shape, frees, reasons)
    chunks = _allocate(candidates, mirrors, stripes, need, _FIT_KEYS["spread"])
    start = vol.extents()
    tail = _segments(chunks, start, stripes, stripe_size)
    vol.segments = vol.segments[:-1] + _merge_segments(vol.segments[-1:] + tail)


def _extend_in_place(
    last: Segment,
    frees: dict[DeviceUUID, _Free],
    candidates: list[_Free],
    reasons: dict[DeviceUUID, str],
    need: int,
) -> int:
    """Lengthen *last* over free extents right after its areas; return per-column count."""
    areas = [a for leg in last.areas for a in leg]
    if any(a.device in reasons or a.device not in frees for a in areas):
        return 0
    n = last.area_length
    cap = min([need] + [frees[a.device].free_at(a.start + n) for a in areas])
    if cap <= 0:
        return 0
    chosen = [frees[a.device] for a in areas]
    t = _max_take(candidates, chosen, len(areas), need, cap)
    for a in areas:
        frees[a.device].take_at(a.start + n, t)
    last.length += t * last.stripes
    return t


# -- remove, rename ------------------------------------------------------------------


def remove_volume(pool: Pool, name: str) -> Pool:
    """Return a new pool without volume *name*; its extents become free."""
    new = pool.copy()
    vol = _volume(new, name)
    new.volumes = [v for v in new.volumes if v.uuid != vol.uuid]
    new.check()
    return new


def rename_volume(pool: Pool, old: str, new: str) -> Pool:
    """Return a new pool where volume *old* is called *new*."""
    _check_name(new)
    out = pool.copy()
    vol = _volume(out, old)
    if new != vol.name and out.has_volume(new):
        raise PlacementError(f"pool {pool.name} already has a volume {new!r}")
    vol.name = new
    out.check()
    return out


def set_attributes(pool: Pool, name: str, *, owner: int | None = None,
                   group: int | None = None, mode: int | None = None,
                   special: bool = False) -> Pool:
    """Return a new pool where volume *name* has the given owner, group and mode.

    ``None`` leaves a value as it is; the new values are checked by
    :func:`check_attributes` (values already in the pool are not: a bad one
    read from media can be replaced here).  Raises PlacementError.
    """
    check_attributes(f"volume {pool.name}/{name}", owner, group, mode, special=special)
    out = pool.copy()
    vol = _volume(out, name)
    if owner is not None:
        vol.owner = owner
    if group is not None:
        vol.group = group
    if mode is not None:
        vol.mode = mode
    out.check()
    return out


# -- devices ---------------------------------------------------------------------


def add_device(pool: Pool, device: Device) -> Pool:
    """Return a new pool that also holds *device* (copied, not shared)."""
    try:
        check_name("device", device.name)
    except ConfigError as exc:
        raise PlacementError(str(exc)) from exc
    for d in pool.devices:
        if d.uuid == device.uuid:
            raise PlacementError(f"pool {pool.name} already has device uuid {device.uuid}")
        if d.name == device.name:
            raise PlacementError(f"pool {pool.name} already has a device named {device.name!r}")
        shared = sorted(set(d.paths) & set(device.paths))
        if shared:
            raise PlacementError(f"path {shared[0]} already belongs to device {d.name}")
    if device.state not in DEVICE_STATES:
        raise PlacementError(f"device {device.name}: unknown state {device.state!r}")
    if device.extent_count < 0 or device.data_start < 0:
        raise PlacementError(f"device {device.name}: negative extent count or data start")
    new = pool.copy()
    new.devices.append(dataclasses.replace(device, paths=list(device.paths)))
    new.check()
    return new


def remove_device(pool: Pool, key: str) -> Pool:
    """Return a new pool without the device *key* (name, uuid or path).

    Refused while any volume has extents on it: move them off first.
    """
    dev = _device(pool, key)
    users = used_by(pool, dev.uuid)
    if users:
        raise PlacementError(
            f"device {dev.name} holds extents of {_plural(len(users), 'volume')}:"
            f" {', '.join(users)}; move them off first (vv device evacuate {dev.name})"
        )
    new = pool.copy()
    new.devices = [d for d in new.devices if d.uuid != dev.uuid]
    new.check()
    return new
