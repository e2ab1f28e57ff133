"""Free-space accounting: which physical extents of each device are free.

Everything here is computed from the configuration alone: the used extents
of a device are the union of the areas of every segment of every volume on
it, and of the extents that operation records reserve (``reserved_runs``).
Per device the used intervals are sorted and merged, so the cost is
``O(areas log areas)`` whatever the extent counts (no per-extent sets).
Areas on unknown devices or beyond a device's end, which ``Pool.check``
rejects, are ignored or clipped here rather than raising, so that a checker
can still account for a damaged configuration.
"""

from __future__ import annotations

from typing import NamedTuple

from metadata.model import DeviceUUID, Pool, reserved_runs

__all__ = ["ClassUsage", "DeviceUsage", "class_usage", "free_runs", "fresh_mirror_runs",
           "fresh_runs", "usage", "used_by"]

Run = tuple[int, int]  # (first physical extent, count)


class DeviceUsage(NamedTuple):
    """Extents of one device: ``used + free == total``."""

    total: int
    used: int
    free: int


class ClassUsage(NamedTuple):
    """Capacity of one storage class (tier, protection, cost).

    ``total_bytes`` counts the data extents of every device of the class;
    ``free_bytes`` only the free extents of devices that can be allocated
    from (not in state ``failed``).
    """

    tier: int
    protection: int
    cost: float
    devices: int
    total_bytes: int
    free_bytes: int


def used_runs(pool: Pool) -> dict[DeviceUUID, list[Run]]:
    """Sorted, merged (start, count) runs of used extents per device."""
    raw: dict[DeviceUUID, list[Run]] = {d.uuid: [] for d in pool.devices}
    for v in pool.volumes:
        for s in v.segments:
            n = s.length // s.stripes
            for leg in s.areas:
                for a in leg:
                    runs = raw.get(a.device)
                    if runs is not None and n > 0:
                        runs.append((a.start, n))
    for dev, start, count, _what in reserved_runs(pool, strict=False):  # a move's destination
        runs = raw.get(DeviceUUID(dev))
        if runs is not None and count > 0:
            runs.append((start, count))
    limits = {d.uuid: d.extent_count for d in pool.devices}
    return {dev: _merge(runs, limits[dev]) for dev, runs in raw.items()}


def _merge(runs: list[Run], limit: int) -> list[Run]:
    """Union of *runs*, clipped to ``[0, limit)``, as sorted disjoint runs."""
    merged: list[list[int]] = []
    for start, count in sorted(runs):
        start, end = max(start, 0), min(start + count, limit)
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e - s) for s, e in merged]


def _subtract(runs: list[Run], minus: list[Run]) -> list[Run]:
    """*runs* less *minus* (both sorted and disjoint), as sorted disjoint runs."""
    out: list[Run] = []
    i = 0
    for start, count in runs:
        pos, end = start, start + count
        while i < len(minus) and minus[i][0] + minus[i][1] <= pos:
            i += 1
        j = i
        while pos < end and j < len(minus) and minus[j][0] < end:
            cut, cut_end = minus[j]
            cut_end += cut
            if cut > pos:
                out.append((pos, cut - pos))
            pos = max(pos, cut_end)
            j += 1
        if pos < end:
            out.append((pos, end - pos))
    return out


def fresh_runs(old: Pool, new: Pool, *, mirrored_only: bool = False
               ) -> dict[DeviceUUID, list[Run]]:
    """Extents that segments of *new* use and that nothing of *old* used.

    Per device, sorted disjoint ``(first extent, count)`` runs: the areas of
    every segment of *new* (only those with two legs or more if
    *mirrored_only*), less every area and reserved run of *old*.  These
    extents hold whatever the device held before -- an earlier volume's
    data, different bytes on each leg -- so they are zeroed before *new* is
    committed.  A move's destination (reserved in *old*, filled by the
    move's copy) is never fresh.  Devices without fresh extents are left out.
    """
    limits = {d.uuid: d.extent_count for d in new.devices}
    raw: dict[DeviceUUID, list[Run]] = {}
    for v in new.volumes:
        for s in v.segments:
            if mirrored_only and len(s.areas) < 2:
                continue
            for leg in s.areas:
                for a in leg:
                    raw.setdefault(a.device, []).append((a.start, s.area_length))
    before = used_runs(old)
    out: dict[DeviceUUID, list[Run]] = {}
    for dev, runs in raw.items():
        fresh = _subtract(_merge(runs, limits.get(dev, 0)), before.get(dev, []))
        if fresh:
            out[dev] = fresh
    return out


def fresh_mirror_runs(old: Pool, new: Pool) -> dict[DeviceUUID, list[Run]]:
    """:func:`fresh_runs` of the mirrored segments only (their checksum entries are set)."""
    return fresh_runs(old, new, mirrored_only=True)


def free_runs(pool: Pool) -> dict[DeviceUUID, list[Run]]:
    """Sorted (start, count) runs of free physical extents of every device."""
    used = used_runs(pool)
    out: dict[DeviceUUID, list[Run]] = {}
    for d in pool.devices:
        free: list[Run] = []
        pos = 0
        for start, count in used[d.uuid]:
            if start > pos:
                free.append((pos, start - pos))
            pos = start + count
        if d.extent_count > pos:
            free.append((pos, d.extent_count - pos))
        out[d.uuid] = free
    return out


def usage(pool: Pool) -> dict[DeviceUUID, DeviceUsage]:
    """Total, used and free extents of every device."""
    runs = free_runs(pool)
    out: dict[DeviceUUID, DeviceUsage] = {}
    for d in pool.devices:
        free = sum(n for _, n in runs[d.uuid])
        total = max(d.extent_count, 0)
        out[d.uuid] = DeviceUsage(total, total - free, free)
    return out


def class_usage(pool: Pool) -> list[ClassUsage]:
    """Capacity per storage class, sorted by (tier, protection, cost)."""
    per_dev = usage(pool)
    acc: dict[tuple[int, int, float], list[int]] = {}
    for d in pool.devices:
        row = acc.setdefault((d.tier, d.protection, d.cost), [0, 0, 0])
        u = per_dev[d.uuid]
        row[0] += 1
        row[1] += u.total * pool.extent_size
        if d.state != "failed":
            row[2] += u.free * pool.extent_size
    return [ClassUsage(t, p, c, *row) for (t, p, c), row in sorted(acc.items())]


def used_by(pool: Pool, device_uuid: str) -> list[str]:
    """Names of the volumes that have extents on the device, in pool order."""
    names: list[str] = []
    for v in pool.volumes:
        if any(a.device == device_uuid for s in v.segments for leg in s.areas for a in leg):
            names.append(v.name)
    return names
