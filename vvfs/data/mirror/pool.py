"""One pool's mirror: :class:`PoolMirror`, composed of the parts of this package.

A :class:`PoolMirror` is the pool's :class:`~vvfs.data.mirror.core.MirrorCore`
(devices, their states and failures, flushes, logs, gate) and owns the
pieces that work on it, one object each:

* ``writer`` -- :class:`~vvfs.data.mirror.writes.MirroredWrites`, the write path;
* ``reader`` -- :class:`~vvfs.data.mirror.reads.ReadPolicies`, the read policies;
* ``cleaner`` -- :class:`~vvfs.data.mirror.clean.Cleaner`, clearing idle bits;
* ``resyncer`` -- :class:`~vvfs.data.mirror.resync.ResyncEngine`, the resync jobs.

Its public methods are what the rest of vvfs calls (``VolumeIO``, the
node's mirror service, moves, scrubs); they hand over to those pieces.
Here too: the configuration (:meth:`PoolMirror.swap`), loading the logs of
open devices (:meth:`PoolMirror.attach_devices`) and the statistics.

Concurrency: everything runs on the trio thread; statements between two
awaits are atomic (see each module for its locks and what a cancellation
leaves behind).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

from mapper.mirrors import MirrorIndex
from metadata.blockdev import DeviceIOError
from metadata.model import DeviceUUID, Pool
from vvfs.data.mirror.clean import CLEAN_IDLE, FORCE_FLUSH_AFTER, Cleaner
from vvfs.data.mirror.core import Emit, MirrorCore, is_failure
from vvfs.data.mirror.log import load_log
from vvfs.data.mirror.reads import ReadPolicies
from vvfs.data.mirror.resync import ResyncEngine, ResyncJob
from vvfs.data.mirror.writes import MirroredWrites
from vvfs.io.devio import DataDevice

log = logging.getLogger(__name__)


class PoolMirror(MirrorCore):
    """Mirrored I/O, failures, dirty logs and resync of one pool (see the package docstring).

    The arguments are :class:`~vvfs.data.mirror.core.MirrorCore`'s.
    """

    def __init__(self, pool: Pool, devices: dict[DeviceUUID, DataDevice], *,
                 emit: Emit | None = None,
                 spawn: Callable[..., None] | None = None,
                 on_failed: Callable[[DeviceUUID], None] | None = None,
                 on_retire: Callable[[DataDevice], None] | None = None) -> None:
        super().__init__(pool, devices, emit=emit, spawn=spawn, on_failed=on_failed,
                         on_retire=on_retire)
        self.resyncer = ResyncEngine(self)
        self.writer = MirroredWrites(self, self.resyncer)
        self.reader = ReadPolicies(self, self.resyncer)
        self.cleaner = Cleaner(self, self.resyncer)

    # -- configuration and devices --------------------------------------------

    def swap(self, pool: Pool) -> None:
        """Use configuration *pool* (maps, devices) from now on."""
        self.pool = pool
        self.index = MirrorIndex(pool)
        self.geos = self._geometries(pool)
        known = {d.uuid for d in pool.devices}
        for uuid in [u for u in self.logs if u not in known]:
            del self.logs[uuid]
        for uuid in [u for u in self.failed if u not in known]:
            del self.failed[uuid]
        self.resyncing &= known  # type: ignore[assignment]

    async def attach_devices(self) -> None:
        """Read the logs of open devices that have none loaded (at start, after a change)."""
        for uuid, dev in list(self.devices.items()):
            if dev.on_path_failed is None:
                dev.on_path_failed = self._path_failed
            geo = self.geos.get(uuid)
            if uuid in self.logs or geo is None:
                continue
            try:
                self.logs[uuid] = await load_log(dev, geo, self.pool.uuid)
            except DeviceIOError as exc:
                if is_failure(exc) and uuid in self.index.devices():
                    self.fail(uuid, exc)
                else:
                    log.error("pool %s: dirty log of %s unreadable: %s", self.pool.name,
                              self.name_of(uuid), exc)

    def dirty_at_start(self) -> tuple[int, set[str]]:
        """(dirty regions, devices some header calls stale) over the loaded logs."""
        regions = sum(len(lg.set_regions) for lg in self.logs.values())
        stale = set().union(*(lg.stale for lg in self.logs.values())) if self.logs else set()
        return regions, stale

    def _path_failed(self, dev: DataDevice, path: str, new: str | None,
                     exc: DeviceIOError) -> None:
        if len(dev.paths) < 2:
            return  # the device's only path: a device failure, reported as such
        name = self.name_of(dev.uuid)
        if new is not None:
            self.emit("path-failed", "warning", name,
                      f"device {name}: path {path} failed ({exc}); now using {new}")
        else:
            self.emit("path-failed", "error", name,
                      f"device {name}: path {path} failed ({exc}); no working path is left")

    # -- I/O of mirrored volumes (vvfs.data.mirror.writes, .reads) --------------

    async def write(self, vio: Any, offset: int, view: memoryview,
                    alongside: Callable[[], Awaitable[None]] | None = None) -> None:
        """Write *view* at volume byte *offset* of mirrored volume *vio* (:mod:`.writes`)."""
        await self.writer.write(vio, offset, view, alongside)

    async def read(self, vio: Any, offset: int, view: memoryview, *, all_legs: bool = False,
                   verify: bool = True) -> None:
        """Fill *view* from volume byte *offset* of mirrored volume *vio* (:mod:`.reads`).

        Every whole block is verified by its checksum (:mod:`.verify`) unless
        *verify* is False; with *all_legs* on every leg (the caller holds the
        range exclusively).
        """
        await self.reader.read(vio, offset, view, all_legs=all_legs, verify=verify)

    async def mark_ranges(self, ranges: Iterable[tuple[str, int, int]]) -> int:
        """Set (durably) the bits of device byte ranges ``(device, offset, length)``."""
        return await self.writer.mark_ranges(ranges)

    async def clean(self, idle: float = CLEAN_IDLE, force: float = FORCE_FLUSH_AFTER) -> int:
        """Clear the bits of idle regions whose every copy is flushed (:mod:`.clean`)."""
        return await self.cleaner.clean(idle, force)

    # -- resync (vvfs.data.mirror.resync) ---------------------------------------

    @property
    def jobs(self) -> list[ResyncJob]:
        return self.resyncer.jobs

    @property
    def copy_lock(self) -> trio.Lock:
        """Held by a resync job from start to end, and by a move around each extent it copies."""
        return self.resyncer.copy_lock

    @property
    def source_only(self) -> int:
        """Resyncs after a crash running: reads use the source leg only."""
        return self.resyncer.source_only

    @property
    def needs_resync(self) -> bool:
        """Set while bits found at start wait for their resync (the cleaner waits too)."""
        return self.resyncer.needs_resync

    @needs_resync.setter
    def needs_resync(self, value: bool) -> None:
        self.resyncer.needs_resync = value

    def new_job(self, kind: str, targets: Iterable[DeviceUUID] = (), rate: int | None = None
                ) -> ResyncJob:
        return self.resyncer.new_job(kind, targets, rate)

    def running_job(self) -> ResyncJob | None:
        return self.resyncer.running_job()

    def resyncing_now(self) -> str | None:
        """Why a move or a scrub must wait now (the pool resyncs), or None."""
        return self.resyncer.resyncing_now()

    def quiet(self, blocked: Callable[[], str | None], waiting: Callable[[str], None]
              ) -> AbstractAsyncContextManager[None]:
        """Hold :attr:`copy_lock` once no resync runs and *blocked()* says None.

        See :meth:`ResyncEngine.quiet <vvfs.data.mirror.resync.ResyncEngine.quiet>`.
        """
        return self.resyncer.quiet(blocked, waiting)

    async def resync(self, job: ResyncJob) -> None:
        """Run *job* (:mod:`.resync`); its state says how it ended."""
        await self.resyncer.resync(job)

    def job_object(self, job: ResyncJob) -> str:
        return self.resyncer.job_object(job)

    # -- status -------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        s = self.stats
        names = self.names
        return {"degraded_writes": s.degraded_writes, "read_retries": s.read_retries,
                "first_wins": {str(k): v for k, v in s.first_wins.items()},
                "resync_bytes": s.resync_bytes, "resync_judged": s.resync_judged,
                "resync_judged_other": s.resync_judged_other, "cleaned": s.cleaned,
                "verified": s.verified, "checksum_mismatches": s.checksum_mismatches,
                "checksum_repaired": s.checksum_repaired,
                "checksum_entries_repaired": s.checksum_entries_repaired,
                "checksum_errors": s.checksum_errors,
                "failed": {names.get(u, u): {"error": f.error, "since": f.when}
                           for u, f in self.failed.items()},
                "resyncing": sorted(names.get(u, u) for u in self.resyncing),
                "logs": {names.get(u, u): lg.statistics() for u, lg in self.logs.items()},
                "jobs": [j.progress(names) for j in self.jobs]}
