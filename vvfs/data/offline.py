"""The offline runtime: the data path's resync engine run by a ``vv`` command, with no node.

``vv device online``, ``vv device resync`` and ``vv device replace`` work
offline too: management commits the resync record as a node would, then
asks the :class:`~vvfs.control.ports.ResyncEngine` given to it to copy.
:class:`OfflineResync` opens the pool's devices through the data path's own
:class:`~vvfs.io.devio.DataDevice`, builds the same
:class:`~vvfs.data.mirror.PoolMirror` and :class:`~vvfs.data.checksums.ChecksumStore`
a node would, and runs one resync job to its end in a private trio loop.
The caller holds the state directory's lock throughout, so no node can
open the pool meanwhile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import trio

from metadata.blockdev import DeviceIOError
from metadata.model import DeviceUUID, Pool
from vvfs.data.checksums import ChecksumStore
from vvfs.data.mirror import PoolMirror, ResyncJob
from vvfs.errors import ResyncError
from vvfs.io.devio import DataDevice, io_limiter

#: What a resync reports (``ResyncJob.progress``), and how it records an event
#: (kind, severity, object, message): as :class:`vvfs.control.ports.ResyncEngine` says.
Progress = dict[str, Any]
Emit = Callable[[str, str, str, str], None]
#: Worker threads of the offline resync's device calls.
OFFLINE_IO_THREADS = 8
#: Seconds between progress reports while it runs.
PROGRESS_EVERY = 0.2


class OfflineResync:
    """A :class:`~vvfs.control.ports.ResyncEngine` that runs the resync in this process."""

    def run(self, pool: Pool, paths: dict[str, str], targets: set[str], rate: int | None,
            kind: str, emit: Emit, progress: Callable[[Progress], None] | None) -> Progress:
        """Resync *pool* in a private trio loop; return the job's progress document."""
        return trio.run(_resync, pool, paths, targets, rate, kind, emit, progress)


async def _resync(pool: Pool, paths: dict[str, str], targets: set[str], rate: int | None,
                  kind: str, emit: Emit, progress: Callable[[Progress], None] | None
                  ) -> Progress:
    devs = _open_devices(pool, paths, targets)
    try:
        pm = PoolMirror(pool, devs, emit=emit)
        pm.checksums = ChecksumStore(pool, devs)
        await pm.attach_devices()
        wanted = {DeviceUUID(t) for t in targets}
        pm.resyncing |= wanted
        job = pm.new_job(kind, wanted, rate)
        async with trio.open_nursery() as nursery:
            if progress is not None:
                nursery.start_soon(_report, job, pm, progress)
            await pm.resync(job)
            nursery.cancel_scope.cancel()
        await _finish(pm, job, kind, emit)
        if progress is not None:
            progress(job.progress(pm.names))
        return job.progress(pm.names)
    finally:
        for dev in devs.values():
            dev.close()


def _open_devices(pool: Pool, paths: dict[str, str], targets: set[str]
                  ) -> dict[DeviceUUID, DataDevice]:
    """The devices in service (and *targets*) at *paths*; ResyncError if a target is missing."""
    limiter = io_limiter(OFFLINE_IO_THREADS)
    devs: dict[DeviceUUID, DataDevice] = {}
    try:
        for d in pool.devices:
            if (d.state == "ok" or d.uuid in targets) and d.uuid in paths:
                with contextlib.suppress(DeviceIOError):
                    devs[d.uuid] = DataDevice(paths[d.uuid], d.uuid, limiter)
        for t in targets:
            if t not in devs:
                raise ResyncError(f"device {t} cannot be opened")
    except BaseException:
        for dev in devs.values():
            dev.close()
        raise
    return devs


async def _finish(pm: PoolMirror, job: ResyncJob, kind: str, emit: Emit) -> None:
    """After the job: drop the targets from the stale lists, record the outcome, flush."""
    if job.state == "done":
        for lg in pm.logs.values():
            if lg.stale & job.targets:
                await lg.set_stale(remove=job.targets)
        emit("resync-done", "info", pm.job_object(job),
             f"resync ({kind}) done offline: {job.done} bytes copied")
    else:
        emit("resync-failed", "error", pm.job_object(job),
             f"resync ({kind}) stopped: {job.error}")
    await pm.sync_logs()
    await pm.flush_devices(set(pm.devices))


async def _report(job: ResyncJob, pm: PoolMirror, progress: Callable[[Progress], None]
                  ) -> None:
    while True:
        progress(job.progress(pm.names))
        await trio.sleep(PROGRESS_EVERY)
