"""The cleaner: clearing the dirty-log bits of regions whose copies agree again.

Bits are cleared lazily by :meth:`Cleaner.clean` (the node calls it every
second): a region idle for :data:`CLEAN_IDLE` seconds, none of whose copies
lies on a failed, missing or resyncing device, has its devices flushed and
-- if no write entered it meanwhile -- its bit cleared.  So a steady stream
of writes to the same regions pays no log write at all.  A copy not yet
flushed keeps its bit until a flush that happens anyway covers it (the
host's fsync), or until it has been idle :data:`FORCE_FLUSH_AFTER` seconds.
Suspect regions (:mod:`.writes`) are never cleaned, and nothing is while a
resync runs or while the bits found at start wait for theirs: resync clears
what it copied itself.

Concurrency: everything runs on the trio thread; statements between two
awaits are atomic.  A region is picked with the gate's ``seq`` of its last
write, and cleared only if that did not move (and no write is in it, and no
resync holds it) once its devices were flushed.
"""

from __future__ import annotations

import math

import trio

from metadata.model import DeviceUUID
from vvfs.data.mirror.core import MirrorCore
from vvfs.data.mirror.resync import ResyncEngine

#: Seconds a region must be idle before its bit is cleared.
CLEAN_IDLE = 5.0
#: A bit waits for a flush that happens anyway (the host's fsync); after this
#: many idle seconds the cleaner flushes the devices itself.
FORCE_FLUSH_AFTER = 30.0


class Cleaner:
    """Clears the bits of *core*'s idle regions (not while *resync* has work, see above)."""

    def __init__(self, core: MirrorCore, resync: ResyncEngine) -> None:
        self.core = core
        self.resync = resync

    async def clean(self, idle: float = CLEAN_IDLE, force: float = FORCE_FLUSH_AFTER) -> int:
        """Clear the bits of idle regions whose every copy is flushed; return how many.

        A copy not yet flushed keeps its bit until a flush that happens
        anyway covers it (the host's fsync), or until the region has been
        idle *force* seconds: then the cleaner flushes its devices.
        """
        core, resync = self.core, self.resync
        if resync.needs_resync or any(j.state == "running" for j in resync.jobs):
            return 0
        candidates, flush = self._candidates(idle, force)
        if not candidates:
            await core.sync_logs()
            return 0
        if flush:
            await core.flush_devices(flush)
        gate = core.gate
        cleared = 0
        by_dev: dict[str, list[int]] = {}
        for uuid, r, seq in candidates:
            k = (uuid, r)
            if gate.seq.get(k, 0) == seq and k not in gate.inflight and k not in gate.locked:
                by_dev.setdefault(uuid, []).append(r)
        for uuid, regions in by_dev.items():
            target = core.logs.get(uuid)
            if target is not None and uuid in core.devices and all(
                    p in core.devices and p not in core.resyncing for p in flush):
                cleared += target.clear(regions)
                gate.forget((uuid, r) for r in regions)
        core.stats.cleaned += cleared
        await core.sync_logs()
        return cleared

    def _candidates(self, idle: float, force: float
                    ) -> tuple[list[tuple[str, int, int]], set[str]]:
        """((device, region, gate seq) of the bits to clear, devices to flush first)."""
        core = self.core
        now = trio.current_time()
        gate = core.gate
        candidates: list[tuple[str, int, int]] = []
        flush: set[str] = set()
        for uuid, lg in core.logs.items():
            if uuid not in core.devices or uuid in core.resyncing:
                continue
            for r in lg.set_regions:
                k = (uuid, r)
                if k in gate.inflight or k in gate.locked or k in core.suspect:
                    continue
                quiet = now - gate.last.get(k, -math.inf)
                if quiet < idle:
                    continue
                partners = self._clearable(uuid, r)
                if partners is None:
                    continue
                pending = self._unflushed(uuid, r)
                if pending and quiet < force:
                    continue
                candidates.append((uuid, r, gate.seq.get(k, 0)))
                flush |= pending
        return candidates, flush

    def _clearable(self, uuid: str, r: int) -> set[DeviceUUID] | None:
        """Devices to flush before clearing bit *r* of *uuid*, or None if it must stay."""
        core = self.core
        geo = core.geos[uuid]
        partners = core.index.partners(uuid, geo.region_start(r), geo.region)
        for p in partners:
            if p not in core.devices or p in core.resyncing:
                return None
        return partners

    def _unflushed(self, uuid: str, r: int) -> set[str]:
        """Devices holding a copy of region *r* of *uuid* whose last write there is not flushed."""
        core = self.core
        geo = core.geos[uuid]
        out: set[str] = set()
        for s in core.index.spans(uuid, geo.region_start(r), geo.region):
            for loc in s.legs:
                pgeo, dev = core.geos.get(loc.device), core.devices.get(loc.device)
                if pgeo is None or dev is None:
                    continue
                if core.gate.wseq.get((loc.device, pgeo.region_of(loc.offset)), 0) \
                        > dev.durable_writes:
                    out.add(loc.device)
        return out
