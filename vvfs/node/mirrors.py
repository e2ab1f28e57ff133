"""Failures, returns, resync and replacement of devices: the node's mirror service.

The data path of mirrors (degraded writes, the dirty log, read policies, the
resync engine) is :mod:`vvfs.data.mirror`.  This module is what drives it:

:class:`Mirrors` (one per node)
    Creates a :class:`~vvfs.data.mirror.PoolMirror` for every pool the node
    opens and attaches it to the pool's volumes; runs the background tasks
    in the node's nursery: the **event writer** (events reach the catalog
    from a queue, in a worker thread, never on a FUSE request's path), the
    **committer** (a failed device is committed as ``failed`` through
    ``Node.call``, i.e. serialized with every other management call), the
    **cleaner** (clears the bits of idle regions every
    :data:`CLEAN_INTERVAL` seconds), the **probe** (every
    ``probe_interval`` seconds a device that failed by *vanishing* -- ENXIO,
    ENODEV, ENOENT, ENOTCONN ... -- is looked for again at its paths and
    brought back when its label answers; a device that failed with EIO, a
    sick disk, waits for ``vv device online``; and a failed *path* of a
    device in service is used again once it carries the device's label,
    see :meth:`vvfs.io.devio.DataDevice.restore_path`) and the **resync jobs**.

A mirror leg not found when the node opens its pool (or applies a new
configuration) fails at once as vanished (ENOENT): recorded in the stale
lists of the other logs, committed ``failed``, probed.  It must not be
opened quietly by a later configuration change: it may have missed writes
of an earlier session (the bits the other logs keep for it, which nothing
clears while a copy is missing) and comes back only through a resync, like
a device that vanished while running.  The configuration records why a
device failed (``Device.failure``): a device it holds ``failed`` because
it vanished is probed by the next node too; one that failed with I/O
errors or by ``vv device fail`` waits for ``vv device online``.

Bringing a device back (``vv device online``, the probe, ``vv device
replace``) is driven by the configuration: the management call commits a
*resync record* ``{"kind": "resync", "id": DEV, "device": DEV}`` in
``Pool.operations`` with the device still ``failed``; whenever the node
applies a configuration holding such a record (right after the call, or at
start after a crash) it opens the device, checks its label, loads its
dirty log, makes it *resyncing* (written, not read) and runs a resync of
every dirty region.  When that ends, one more call (``finish_resync``)
commits the device ``ok`` and drops the record, and the device's uuid is
removed from the stale lists of the other logs.  vvfsck reports a
record as a pending resync and keeps it; one dropped (a stale record, or
by hand) only leaves the device ``failed``: nothing is lost.

Split brain: a failed device that committed configurations the pool does
not have (:func:`metadata.media.diverged`: one generation number, two
contents -- the pool was used in two parts, each without the other) is
never brought back as it is: what it holds since is not what the pool
holds, and its own dirty bits name regions of the other part's history.
``vv device online`` refuses it (:class:`DivergedError`), the probe records
a ``device-diverged`` event and stops looking, and only ``vv device online
--discard-divergent`` brings it back -- rebuilt whole from the other legs,
with a fresh dirty log, like a replacement, and the generations its part
committed erased from it -- once the administrator has copied out what it
alone holds.

At start, bits found set in the logs (a crash) start a resync of those
regions from the first healthy leg (reads use that leg meanwhile), and a
device named stale by another device's log is resynced before it is read.

Management side
---------------
The management calls (``vv device online|fail|replace|resync``) are
:mod:`vvfs.control.mirrors`: with a node they commit and leave the work to
this service, which they reach through :class:`vvfs.node.ports.NodeMirrors`;
offline they run the same resync engine through :mod:`vvfs.data.offline`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from mapper.mirrors import resync_records
from metadata import format as fmt
from metadata.blockdev import DeviceIOError
from metadata.errors import VVError
from metadata.model import DeviceUUID, PoolUUID
from vvfs.data.mirror import PoolMirror, ResyncJob
from vvfs.errors import (
    DivergedError,
    MissingError,
    ResyncError,
    StaleDeviceError,
    WrongDeviceError,
)
from vvfs.io.devio import DataDevice
from vvfs.io.discovery import candidate_paths, check_label, identity

if TYPE_CHECKING:
    from vvfs.data.volio import PoolIO
    from vvfs.node.node import Node

log = logging.getLogger(__name__)

#: Default resync rate limit, bytes per second (``-o resync_rate=``; 0 = none).
DEFAULT_RATE = 256 << 20
#: Default seconds between probes of vanished devices (``-o probe_interval=``; 0 = none).
DEFAULT_PROBE_INTERVAL = 5.0
CLEAN_INTERVAL = 2.5
SEVERITIES = {"device-failed": "error", "volume-degraded": "warning", "path-failed": "warning",
              "device-returned": "info", "resync-progress": "info", "resync-done": "info",
              "resync-failed": "error", "config-changed": "info", "path-returned": "info",
              "device-diverged": "error"}


# ---------------------------------------------------------------------------
# the node's service


class Mirrors:
    """The node's mirror service (see the module docstring)."""

    def __init__(self, node: Node, *, rate: int | None = DEFAULT_RATE,
                 probe_interval: float = DEFAULT_PROBE_INTERVAL) -> None:
        self.node = node
        self.rate = rate or None
        self.probe_interval = probe_interval
        self.pools: dict[PoolUUID, PoolMirror] = {}
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._later: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._events: list[tuple[str | None, str, str, str, str]] = []
        self._events_wake = trio.Event()
        #: set (and replaced) after events reached the catalog: followers wake on it
        self.events_written = trio.Event()
        self._fails: list[tuple[PoolUUID, DeviceUUID]] = []
        self._fails_wake = trio.Event()
        self._bringing: set[tuple[str, str]] = set()
        self._probing: set[tuple[str, str]] = set()
        #: (pool, device) of returning devices written apart from the pool: not probed
        self._diverged: set[tuple[str, str]] = set()
        #: (pool, device, path) of failed paths being tried again
        self._path_probing: set[tuple[str, str, str]] = set()
        #: (pool, device) -> why the node would not open it (wrong label, stale): failed next
        self._refused: dict[tuple[str, str], WrongDeviceError] = {}

    # -- running --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Run the background tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            nursery.start_soon(self._event_writer)
            nursery.start_soon(self._committer)
            nursery.start_soon(self._cleaner)
            if self.probe_interval > 0:
                nursery.start_soon(self._prober)
            later, self._later = self._later, []
            for fn, args in later:
                nursery.start_soon(fn, *args)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Start a background task now, or once :meth:`run` runs.

        A VVError it raises (a device, a commit) is logged, not allowed to
        stop the node; anything else is a bug and propagates.
        """
        if self._nursery is None:
            self._later.append((_logged, (fn, *args)))
        else:
            self._nursery.start_soon(_logged, fn, *args)

    def from_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run async *fn* on the node's trio thread from a Manager call's worker thread."""
        if self._token is None:
            raise ResyncError("the node is not running its mirror service yet")
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    async def close(self) -> None:
        """Before the devices close: clear what can be cleared, write the logs, the events."""
        for pm in self.pools.values():
            with contextlib.suppress(DeviceIOError):
                await pm.clean(idle=0, force=0)
        await self._write_events()

    # -- pools (trio thread, called by the node) -------------------------------

    def pool_changed(self, pio: PoolIO) -> None:
        """Attach the pool's mirror to its volumes (after open or a new configuration)."""
        pm = self.pools.get(pio.uuid)
        if pm is None:
            pm = self.pools[pio.uuid] = PoolMirror(
                pio.pool, pio.devices, emit=functools.partial(self.emit, pio.uuid),
                spawn=self.spawn, on_failed=functools.partial(self._on_failed, pio.uuid),
                on_retire=self._on_retire)
        else:
            pm.swap(pio.pool)
        guard = self.node.jobs.guards.get(pio.uuid)
        pm.checksums = guard.store if guard is not None else None
        pm.guard = guard
        for vio in pio.volumes.values():
            vio.mirror = pm
        for d in pio.pool.devices:  # failed in the configuration: out of service, quietly
            if d.state == "failed" and d.uuid not in pio.devices:
                # one that went away is looked for by the probe, as if it had just vanished
                pm.note_failed(d.uuid, "failed in the configuration"
                               + (" (it had vanished)" if d.failure == "vanished" else ""),
                               errno.ENOENT if d.failure == "vanished" else None)
        for d in pio.pool.devices:
            dev = pio.devices.get(d.uuid)
            if dev is not None and d.paths and dev.set_paths(d.paths):
                self.spawn(self._leave_unlisted, pm, dev)

    async def pool_loaded(self, pio: PoolIO) -> None:
        """After the node opened a pool: load logs, start what a crash left to do."""
        pm = self.pools[pio.uuid]
        await pm.attach_devices()
        self._fail_refused(pm)
        _fail_missing(pm)
        regions, stale = pm.dirty_at_start()
        stale_here = {DeviceUUID(u) for u in stale if u in pm.devices}
        if regions or stale_here:
            pm.needs_resync = True
            pm.resyncing |= stale_here
            job = pm.new_job("crash", stale_here, self.rate)
            log.warning("pool %s: %d dirty regions at start%s; resyncing them", pio.name,
                        regions, f", stale devices {sorted(pm.name_of(u) for u in stale_here)}"
                        if stale_here else "")
            self.spawn(self._run_job, pm, job, False)
        self._apply_records(pm)

    async def pool_updated(self, pio: PoolIO) -> None:
        """After the node applied a new configuration of an open pool."""
        pm = self.pools.get(pio.uuid)
        if pm is None:
            return
        await pm.attach_devices()
        self._fail_refused(pm)
        _fail_missing(pm)
        self._apply_records(pm)

    async def pool_dropped(self, pool_uuid: str) -> None:
        pm = self.pools.pop(PoolUUID(pool_uuid), None)
        if pm is not None:
            with contextlib.suppress(DeviceIOError):
                await pm.clean(idle=0, force=0)

    def refused(self, pool_uuid: str, device: str, exc: WrongDeviceError) -> None:
        """(Node) *device* was not opened: no path of it proved to be it (*exc* says why).

        Failed once the pool's mirror is attached (:meth:`_fail_refused`).
        """
        self._refused[(pool_uuid, device)] = exc

    def _fail_refused(self, pm: PoolMirror) -> None:
        """Fail the devices the node refused to open; rebuild the stale ones that can be.

        A stale device (:class:`StaleDeviceError`: a rolled-back copy) missed
        writes that no dirty log names: it comes back only rebuilt whole from
        its partners (``vv device online`` decides so, see
        :mod:`vvfs.control.mirrors`), started here at once when every extent
        it holds has another copy.  One holding the only copy of some volume
        waits for ``vv device online``, which accepts it as it is.
        """
        for (pool_uuid, device), exc in list(self._refused.items()):
            if pool_uuid != pm.pool.uuid:
                continue
            del self._refused[(pool_uuid, device)]
            uuid = DeviceUUID(device)
            if uuid in pm.devices or not any(d.uuid == uuid for d in pm.pool.devices):
                continue
            pm.fail(uuid, exc)
            if not isinstance(exc, StaleDeviceError):
                continue
            alone = _single_copies(pm, uuid)
            if alone:
                log.warning("pool %s: device %s is stale and holds the only copy of %s; 'vv"
                            " device online %s %s' takes it back as it is", pm.pool.name,
                            pm.name_of(uuid), ", ".join(alone), pm.pool.name, pm.name_of(uuid))
            else:
                self.spawn(self._rebuild_stale, pm, uuid)

    async def _rebuild_stale(self, pm: PoolMirror, device: DeviceUUID) -> None:
        key = (pm.pool.uuid, device)
        if key in self._bringing:
            return
        log.info("pool %s: rebuilding stale device %s whole", pm.pool.name, pm.name_of(device))
        await self.node.call("online_device", {"pool_name": pm.pool.name, "key": device})

    async def _leave_unlisted(self, pm: PoolMirror, dev: DataDevice) -> None:
        """Move *dev* off a path the configuration no longer lists (fail it if it cannot)."""
        old = dev.path
        try:
            new = await dev.leave_unlisted()
        except DeviceIOError as exc:
            if pm.devices.get(DeviceUUID(dev.uuid)) is dev:
                pm.fail(dev.uuid, exc)
            return
        if new is not None:
            name = pm.name_of(dev.uuid)
            pm.emit("path-returned", "info", name,
                    f"device {name}: path {old} is no longer one of its paths; I/O moved to"
                    f" {new}")

    def is_failed(self, pool_uuid: str, device: str) -> bool:
        pm = self.pools.get(PoolUUID(pool_uuid))
        return pm is not None and device in pm.failed

    def failure_of(self, pool_uuid: str, device: str) -> str:
        """Why *device* failed in the data path: "vanished" or "error" (Device.failure)."""
        pm = self.pools.get(PoolUUID(pool_uuid))
        fd = pm.failed.get(DeviceUUID(device)) if pm is not None else None
        return "vanished" if fd is not None and fd.vanished else "error"

    def is_busy(self, pool_uuid: str, device: str) -> bool:
        """Is *device* resyncing or about to be brought back?"""
        pm = self.pools.get(PoolUUID(pool_uuid))
        return (pm is not None and device in pm.resyncing) or (pool_uuid, device) in self._bringing

    # -- events ---------------------------------------------------------------

    def emit(self, pool_uuid: str | None, kind: str, severity: str, obj: str, message: str
             ) -> None:
        """Queue an event for the catalog (no I/O here)."""
        level = {"error": logging.ERROR, "warning": logging.WARNING}.get(severity, logging.INFO)
        log.log(level, "event %s: %s", kind, message)
        self._events.append((pool_uuid, kind, severity, obj, message))
        self._events_wake.set()

    async def _write_events(self) -> None:
        while self._events:
            batch, self._events = self._events, []
            catalog = self.node.manager.catalog
            try:
                await trio.to_thread.run_sync(_add_events, catalog, batch)
            except VVError as exc:
                log.error("events not recorded in the catalog: %s", exc)
        self.events_written.set()
        self.events_written = trio.Event()

    async def _event_writer(self) -> None:
        while True:
            await self._events_wake.wait()
            self._events_wake = trio.Event()
            await self._write_events()

    async def wait_events(self, timeout: float) -> None:
        """Return when new events were written by this node, or after *timeout* seconds."""
        with trio.move_on_after(timeout):
            await self.events_written.wait()

    # -- failures -------------------------------------------------------------

    def _on_failed(self, pool_uuid: str, device: DeviceUUID) -> None:
        self._fails.append((PoolUUID(pool_uuid), device))
        self._fails_wake.set()

    def _on_retire(self, dev: DataDevice) -> None:
        self.spawn(_close_when_idle, dev)

    async def _committer(self) -> None:
        while True:
            await self._fails_wake.wait()
            self._fails_wake = trio.Event()
            while self._fails:
                pool_uuid, device = self._fails.pop(0)
                pm = self.pools.get(pool_uuid)
                if pm is None or device not in pm.failed:
                    continue
                fd = pm.failed[device]
                try:
                    await self.node.call("fail_device", {"pool_name": pm.pool.name,
                                                         "key": device, "reason": fd.error,
                                                         "only_if_failed": True})
                except VVError as exc:
                    log.error("pool %s: failure of %s not committed: %s; retrying",
                              pm.pool.name, fd.name, exc)
                    await trio.sleep(5)
                    self._fails.append((pool_uuid, device))

    async def fail_now(self, pool_uuid: str, device: str, reason: str) -> bool:
        """Fail *device* in the data path (if not yet) and record it; False if not failed."""
        pm = self.pools.get(PoolUUID(pool_uuid))
        if pm is None:
            return False
        if device not in pm.failed:
            pm.fail(DeviceUUID(device), ResyncError("taken out of service"
                                                    + (f": {reason}" if reason else "")))
        await pm.record_failure(DeviceUUID(device))
        return device in pm.failed

    # -- background loops -------------------------------------------------------

    async def _cleaner(self) -> None:
        while True:
            await trio.sleep(CLEAN_INTERVAL)
            for pm in list(self.pools.values()):
                try:
                    await pm.clean()
                except DeviceIOError as exc:
                    log.error("pool %s: cleaning the dirty log failed: %s", pm.pool.name, exc)

    async def _prober(self) -> None:
        while True:
            await trio.sleep(self.probe_interval)
            for pm in list(self.pools.values()):
                for fd in list(pm.failed.values()):
                    key = (pm.pool.uuid, fd.uuid)
                    if not fd.vanished or key in self._probing or key in self._bringing \
                            or key in self._diverged:
                        continue
                    self.spawn(self._probe, pm, fd.uuid)
                for dev in list(pm.devices.values()):
                    for path, state in list(dev.path_state.items()):
                        pkey = (pm.pool.uuid, dev.uuid, path)
                        if state == "failed" and pkey not in self._path_probing:
                            self.spawn(self._retry_path, pm, dev, path)

    async def _probe(self, pm: PoolMirror, device: DeviceUUID) -> None:
        key = (pm.pool.uuid, device)
        self._probing.add(key)
        try:
            for path in self._paths_of(pm, device):
                try:
                    await trio.to_thread.run_sync(_probe_label, path, pm.pool.uuid, device)
                except VVError:
                    continue
                log.info("pool %s: device %s answers again at %s", pm.pool.name,
                         pm.name_of(device), path)
                try:
                    await self.node.call("online_device", {"pool_name": pm.pool.name,
                                                           "key": device})
                except DivergedError as exc:
                    # never brought back by itself: an administrator chooses what is lost
                    self._diverged.add(key)
                    pm.emit("device-diverged", "error", pm.name_of(device), str(exc))
                except VVError as exc:
                    log.warning("pool %s: device %s not brought back: %s", pm.pool.name,
                                pm.name_of(device), exc)
                return
        finally:
            self._probing.discard(key)

    async def _retry_path(self, pm: PoolMirror, dev: DataDevice, path: str) -> None:
        """Use failed *path* of *dev* again if it carries the device's label."""
        key = (pm.pool.uuid, dev.uuid, path)
        self._path_probing.add(key)
        try:
            try:
                await trio.to_thread.run_sync(_probe_label, path, pm.pool.uuid, dev.uuid)
                state = await dev.restore_path(path)
            except VVError:
                return
            if state is None or pm.devices.get(DeviceUUID(dev.uuid)) is not dev:
                return
            name = pm.name_of(dev.uuid)
            pm.emit("path-returned", "info", name,
                    f"device {name}: path {path} works again; I/O is back on it"
                    if state == "active" else
                    f"device {name}: path {path} works again; standby")
        finally:
            self._path_probing.discard(key)

    # -- bringing devices back --------------------------------------------------

    def _paths_of(self, pm: PoolMirror, device: str) -> list[str]:
        """Where to look for *device*: its paths, in order (only they are ever opened).

        Where this host last found it, only for a device that lists no path.
        """
        dev = next((d for d in pm.pool.devices if d.uuid == device), None)
        if dev is not None and dev.paths:
            return list(dev.paths)
        try:
            paths = self.node.manager.catalog.device_paths(pm.pool.uuid)
        except VVError:
            paths = {}
        return [paths[device]] if device in paths else []

    def _apply_records(self, pm: PoolMirror) -> None:
        for rec in resync_records(pm.pool):
            device = DeviceUUID(str(rec["device"]))
            key = (pm.pool.uuid, device)
            if key in self._bringing or device in pm.resyncing:
                continue
            if not any(d.uuid == device for d in pm.pool.devices):
                continue
            self._bringing.add(key)
            self._diverged.discard(key)
            rate = rec.get("rate")
            self.spawn(self._bring_back, pm, device, int(rate) if rate else self.rate,
                       str(rec.get("reason", "returning")))

    async def _bring_back(self, pm: PoolMirror, device: DeviceUUID, rate: int | None,
                          kind: str) -> None:
        key = (pm.pool.uuid, device)
        name = pm.name_of(device)
        try:
            if device not in pm.devices:
                paths = [p for p in self._paths_of(pm, device) if candidate_paths([p])]
                if not paths:
                    raise ResyncError(f"device {name}: none of its paths"
                                      f" ({', '.join(self._paths_of(pm, device)) or 'none'})"
                                      " exists outside a vvfs mount")
                dev = await trio.to_thread.run_sync(functools.partial(
                    DataDevice, paths[0], device, self.node.limiter, direct=self.node.direct,
                    alternates=paths[1:], verify=identity(pm.pool.uuid, device)))
                path = dev.path
                pm.failed.pop(device, None)
                pm.devices[device] = dev
                pm.resyncing.add(device)
                await pm.attach_devices()
                if device not in pm.devices:
                    raise ResyncError(f"device {name} failed again while its log was read")
                pm.emit("device-returned", "info", name,
                        f"device {name} is back at {path}; resyncing its dirty ranges"
                        if kind != "replace" else
                        f"device {name} ({path}) replaces a device; rebuilding it")
            else:
                pm.resyncing.add(device)
            job = pm.new_job(kind, {device}, rate)
            await self._run_job(pm, job, True)
        except (VVError, OSError) as exc:
            pm.emit("resync-failed", "error", name, f"device {name} cannot be brought back:"
                    f" {exc}")
            if device in pm.devices and device not in pm.failed:
                pm.fail(device, DeviceIOError(name, 0, str(exc), errno.EIO))
        finally:
            self._bringing.discard(key)

    async def _run_job(self, pm: PoolMirror, job: ResyncJob, commit: bool) -> None:
        await pm.resync(job)
        names = pm.names
        what = ", ".join(sorted(names.get(t, t) for t in job.targets)) or pm.pool.name
        if job.state != "done":
            pm.emit("resync-failed", "error", what, f"resync {job.id} ({job.kind}) of {what}"
                    f" stopped: {job.error}")
            return
        if commit:
            for t in job.targets:
                await self.node.call("finish_resync", {"pool_name": pm.pool.name,
                                                       "key": t})
        for t in job.targets:
            pm.resyncing.discard(t)
        for u, lg in list(pm.logs.items()):
            if u in pm.devices and lg.stale & job.targets:
                try:
                    await lg.set_stale(remove=job.targets)
                except DeviceIOError as exc:
                    pm.fail(u, exc)
        left = (f"; {job.regions_left} regions keep their bits for a leg that is missing"
                if job.regions_left else "")
        pm.emit("resync-done", "info", what,
                f"resync {job.id} ({job.kind}) of {what} done: {job.done} bytes copied"
                f" ({job.regions} regions) in {job.finished - job.started:.1f}s{left}"
                if job.finished else f"resync {job.id} done{left}")

    # -- calls from management (through vvfs.node.ports.NodeMirrors) -----------

    async def start_resync(self, pool_uuid: str, rate: int | None) -> dict[str, Any]:
        pm = self._pm(pool_uuid)
        job = pm.running_job()
        if job is None:
            job = pm.new_job("manual", (), rate or self.rate)
            self.spawn(self._run_job, pm, job, False)
        return job.progress(pm.names)

    async def mark_ranges(self, pool_uuid: str, ranges: list[tuple[str, int, int]]) -> int:
        return await self._pm(pool_uuid).mark_ranges(ranges)

    async def status(self, pool_uuid: str) -> dict[str, Any]:
        pm = self._pm(pool_uuid)
        names = pm.names
        return {"jobs": [j.progress(names) for j in pm.jobs],
                "dirty_regions": {names.get(u, u): len(lg.set_regions)
                                  for u, lg in pm.logs.items()},
                "failed": sorted(names.get(u, u) for u in pm.failed),
                "resyncing": sorted(names.get(u, u) for u in pm.resyncing),
                "bringing_back": sorted(names.get(d, d) for p, d in self._bringing
                                        if p == pool_uuid)}

    async def device_paths(self, pool_uuid: str, device: str) -> list[dict[str, str]] | None:
        pm = self.pools.get(PoolUUID(pool_uuid))
        dev = pm.devices.get(DeviceUUID(device)) if pm is not None else None
        if dev is None:
            return None
        return [{"path": p, "state": dev.path_state[p]} for p in dev.paths]

    async def use_paths(self, pool_uuid: str, device: str, paths: list[str]
                        ) -> list[dict[str, str]] | None:
        """Reach open *device* by *paths* from now on (off a removed one first); its table."""
        pm = self.pools.get(PoolUUID(pool_uuid))
        dev = pm.devices.get(DeviceUUID(device)) if pm is not None else None
        if pm is None or dev is None:
            return None
        if dev.set_paths(paths):
            await self._leave_unlisted(pm, dev)
        return await self.device_paths(pool_uuid, device)

    def _pm(self, pool_uuid: str) -> PoolMirror:
        pm = self.pools.get(PoolUUID(pool_uuid))
        if pm is None:
            raise ResyncError(f"pool {pool_uuid} is not served by this node")
        return pm

    # -- status -----------------------------------------------------------------

    def pool_status(self, pio: PoolIO) -> dict[str, Any]:
        pm = self.pools.get(pio.uuid)
        if pm is None:
            return {}
        return {"devices": {d.uuid: pm.device_state(d.uuid, d.state) for d in pio.pool.devices},
                "errors": {u: fd.error for u, fd in pm.failed.items()},
                "volumes": {v.uuid: pm.volume_state(v) if v.mirrors > 1 else
                            ("failed" if pm.volume_state(v) == "failed" else "ok")
                            for v in pio.pool.volumes},
                "mirror": pm.statistics()}


def _fail_missing(pm: PoolMirror) -> None:
    """Fail, as vanished, every mirror leg that is neither open nor failed.

    A device not found when its pool is opened (its path gone, its file
    moved) holds no copy the mirror can use, and -- for all the node knows
    -- misses writes of an earlier session that the other logs name.  Failed
    with ENOENT it is recorded in the stale lists of the other logs,
    committed ``failed``, never opened by a later configuration change, and
    looked for by the probe: it comes back only through a resync.
    """
    for uuid in sorted(pm.index.devices()):
        if uuid not in pm.devices and uuid not in pm.failed:
            pm.fail(uuid, MissingError("not found when the pool was opened"))


async def _logged(fn: Callable[..., Any], *args: Any) -> None:
    try:
        await fn(*args)
    except VVError as exc:
        log.error("background %s failed: %s", getattr(fn, "__name__", fn), exc)


def _add_events(catalog: Any, batch: list[tuple[str | None, str, str, str, str]]) -> None:
    for pool_uuid, kind, severity, obj, message in batch:
        catalog.add_event(pool_uuid, kind, severity, obj, message)


async def _close_when_idle(dev: DataDevice) -> None:
    while dev.stats.in_flight:
        await trio.sleep(0.05)
    dev.close()


def _probe_label(path: str, pool_uuid: str, device: str) -> fmt.Label:
    """:func:`_check_label`, for the probe: never a path gone or under a vvfs mount."""
    if not candidate_paths([path]):
        raise ResyncError(f"{path}: gone, or under a vvfs mount")
    return check_label(path, pool_uuid, device)


def _single_copies(pm: PoolMirror, device: str) -> list[str]:
    """Names of the volumes with no other copy of what *device* holds of them."""
    return [v.name for v in pm.pool.volumes if v.mirrors < 2
            and any(a.device == device for s in v.segments for leg in s.areas for a in leg)]
