"""What every part of a pool's mirror shares: its devices, their states and failures.

:class:`MirrorCore` holds the configuration, the live device table, the
dirty logs (:mod:`.log`), the region gate (:mod:`.gate`), the suspect
regions and the counters of one pool; the write path (:mod:`.writes`), the
read policies (:mod:`.reads`), the cleaner (:mod:`.clean`) and the resync
engine (:mod:`.resync`) work on it, and :class:`~vvfs.data.mirror.PoolMirror`
is it, composed with them.

Device states in memory
-----------------------
* **ok**: in ``devices`` (the node's live table), read and written.
* **resyncing**: in ``devices`` and in ``resyncing``: written (so that what
  resync copied stays in sync) but never read, until its resync is done.
* **failed**: removed from ``devices`` at once (in :meth:`MirrorCore.fail`,
  between two awaits, so no new call reaches it) and kept in ``failed``;
  its descriptors are closed once its calls in flight have ended.

A device fails when a call of a mirrored volume returns an error in
:data:`FAILURE_ERRNOS` (EIO, or a vanished device: ENXIO, ENODEV, ENOENT,
EBADF, ENOTCONN ... -- after every path of it failed, see
:mod:`vvfs.io.devio`), or when a mirrored write must skip a device that is
not open.  Errors of linear or striped volumes are passed to the host as
EIO and fail nothing: there is no other copy to go on with.

A failure is *recorded* (:meth:`MirrorCore.record_failure`) by adding the
device to the stale list of every surviving log header, durably and once
per failure; a mirrored write that did not reach a leg waits for it before
its reply (see :mod:`.writes`).

Concurrency: everything runs on the trio thread; statements between two
awaits are atomic.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from mapper.mirrors import MirrorIndex
from metadata import dirtylog
from metadata.blockdev import DeviceIOError
from metadata.dirtylog import LogGeometry
from metadata.model import DeviceUUID, Pool
from vvfs.data.mirror.gate import Key, RegionGate
from vvfs.data.mirror.log import DirtyLog
from vvfs.errors import BlockChecksumError
from vvfs.io.devio import PATH_ERRNOS, DataDevice

log = logging.getLogger(__name__)

#: Errors that fail a device (after every path of it failed).
FAILURE_ERRNOS = PATH_ERRNOS | {errno.ENOSPC, errno.EROFS}
#: Failures that say the device went away (rather than broke): the node's
#: probe brings such a device back on its own when it answers again.
VANISHED_ERRNOS = frozenset({errno.ENXIO, errno.ENODEV, errno.ENOENT, errno.ENOTCONN,
                             errno.EBADF, errno.ESTALE, errno.ENOMEDIUM, errno.ESHUTDOWN,
                             errno.ENOLINK})

Emit = Callable[[str, str, str, str], None]


def is_failure(exc: BaseException) -> bool:
    """Does *exc* fail the device it names (see :data:`FAILURE_ERRNOS`)?

    A block whose copies all fail their checksum (:class:`BlockChecksumError`,
    EIO) fails no device: every device answered.
    """
    return (isinstance(exc, DeviceIOError) and exc.errno in FAILURE_ERRNOS
            and not isinstance(exc, BlockChecksumError))


@dataclass
class FailedDevice:
    uuid: DeviceUUID
    name: str
    error: str
    errno: int | None
    when: float
    recorded: trio.Event = field(default_factory=trio.Event)
    recording: bool = False

    @property
    def vanished(self) -> bool:
        return self.errno in VANISHED_ERRNOS


@dataclass
class MirrorStats:
    degraded_writes: int = 0
    read_retries: int = 0
    first_wins: dict[int, int] = field(default_factory=dict)
    resync_bytes: int = 0
    #: blocks a resync found different on the legs it read (and judged)
    resync_judged: int = 0
    #: ... of which a leg other than the first was right (by its checksum)
    resync_judged_other: int = 0
    cleaned: int = 0
    #: blocks whose crc32c a read compared with the stored entry (:mod:`.verify`)
    verified: int = 0
    #: ... that did not match (then judged again under the range lock)
    checksum_mismatches: int = 0
    #: blocks of a leg rewritten from a copy that matches the checksum
    checksum_repaired: int = 0
    #: checksum entries rewritten where the legs agreed
    checksum_entries_repaired: int = 0
    #: blocks no copy of which matched: the read failed with EIO
    checksum_errors: int = 0


class MirrorCore:
    """The shared state of one pool's mirror, its device states and failures (module docstring).

    *devices* is the node's live device table of the pool (this object
    removes failed devices from it and adds returning ones).  *emit*
    records an event (kind, severity, object, message); *spawn* starts a
    background task (``spawn(fn, *args)``) or is None (then nothing runs in
    the background: ``first`` reads wait for every leg).  *on_failed* is
    called with a device uuid once its failure is recorded on the
    survivors; *on_retire* with a failed device's DataDevice.
    """

    def __init__(self, pool: Pool, devices: dict[DeviceUUID, DataDevice], *,
                 emit: Emit | None = None,
                 spawn: Callable[..., None] | None = None,
                 on_failed: Callable[[DeviceUUID], None] | None = None,
                 on_retire: Callable[[DataDevice], None] | None = None) -> None:
        self.pool = pool
        self.devices = devices
        self.emit: Emit = emit or (lambda *_a: None)
        self.spawn = spawn
        self.on_failed = on_failed
        self.on_retire = on_retire
        self.index = MirrorIndex(pool)
        self.geos = self._geometries(pool)
        self.logs: dict[str, DirtyLog] = {}
        self.failed: dict[DeviceUUID, FailedDevice] = {}
        self.resyncing: set[DeviceUUID] = set()
        self.gate = RegionGate()
        #: the pool's write guard (vvfs.data.guard.PoolGuard): a move's shadow
        self.guard: Any = None
        #: regions of writes that ended part-way (cancelled, or an error that
        #: fails no device): never cleaned, only resynced
        self.suspect: set[Key] = set()
        #: the pool's block-checksum store (vvfs.data.checksums), refreshed by resync
        self.checksums: Any = None
        self.stats = MirrorStats()

    @staticmethod
    def _geometries(pool: Pool) -> dict[str, LogGeometry]:
        out: dict[str, LogGeometry] = {}
        for d in pool.devices:
            geo = dirtylog.geometry(d, pool.extent_size)
            if geo is not None:
                out[d.uuid] = geo
        return out

    def name_of(self, uuid: str) -> str:
        for d in self.pool.devices:
            if d.uuid == uuid:
                return d.name
        return uuid

    @property
    def names(self) -> dict[str, str]:
        return {d.uuid: d.name for d in self.pool.devices}

    def readable(self, uuid: str) -> bool:
        return uuid in self.devices and uuid not in self.resyncing

    def device_state(self, uuid: str, config_state: str) -> str:
        if uuid in self.failed:
            return "failed"
        if uuid in self.resyncing:
            return "resyncing"
        if uuid in self.devices:
            return "ok"
        return config_state if config_state != "ok" else "missing"

    def volume_state(self, volume: Any) -> str:
        """ok, degraded, resyncing or failed (a piece with no working leg)."""
        state = "ok"
        for s in volume.segments:
            for c in range(s.stripes):
                legs = [leg[c].device for leg in s.areas]
                if not any(u in self.devices for u in legs):
                    return "failed"
                if any(u not in self.devices for u in legs):
                    state = "degraded"
                elif state == "ok" and any(u in self.resyncing for u in legs):
                    state = "resyncing"
        return state

    # -- failures ---------------------------------------------------------------

    def fail(self, uuid: str, exc: BaseException) -> FailedDevice:
        """Take device *uuid* out of service now (no await); events follow."""
        fd = self.failed.get(DeviceUUID(uuid))
        if fd is not None:
            return fd
        name = self.name_of(uuid)
        err = getattr(exc, "errno", None)
        fd = FailedDevice(DeviceUUID(uuid), name, str(exc), err, time.time())
        self.failed[DeviceUUID(uuid)] = fd
        dev = self.devices.pop(DeviceUUID(uuid), None)
        self.resyncing.discard(DeviceUUID(uuid))
        self.logs.pop(uuid, None)
        log.error("pool %s: device %s failed: %s", self.pool.name, name, exc)
        lost = [v.name for v in self.pool.volumes if v.mirrors < 2
                and any(a.device == uuid for s in v.segments for leg in s.areas for a in leg)]
        self.emit("device-failed", "error", name,
                  f"device {name} failed: {exc}"
                  + (f"; volumes without another copy fail with EIO: {', '.join(lost)}"
                     if lost else ""))
        for v in self.pool.volumes:
            if v.mirrors >= 2 and any(a.device == uuid for s in v.segments for leg in s.areas
                                      for a in leg):
                self.emit("volume-degraded", "warning", f"{self.pool.name}/{v.name}",
                          f"volume {self.pool.name}/{v.name} is degraded: device {name}"
                          " failed; I/O goes on with the other legs")
        if dev is not None and self.on_retire is not None:
            self.on_retire(dev)
        if self.spawn is not None:
            self.spawn(self.record_failure, DeviceUUID(uuid))
        return fd

    def note_failed(self, uuid: str, why: str, err: int | None = None) -> None:
        """A device the configuration already says failed: out of service, quietly.

        *err* is the errno it failed with, if known (a vanished one is probed).
        """
        if uuid in self.failed or uuid in self.devices:
            return
        fd = FailedDevice(DeviceUUID(uuid), self.name_of(uuid), why, err, time.time())
        self.failed[DeviceUUID(uuid)] = fd
        if self.spawn is not None:
            self.spawn(self.record_failure, DeviceUUID(uuid))

    async def record_failure(self, uuid: DeviceUUID) -> None:
        """Return once *uuid* is in the stale list of every surviving log (once per failure)."""
        fd = self.failed.get(uuid)
        if fd is None or fd.recorded.is_set():
            return
        if fd.recording:
            await fd.recorded.wait()
            return
        fd.recording = True
        try:
            logs = [lg for u, lg in self.logs.items() if u in self.devices]
            errors: list[tuple[DeviceUUID, DeviceIOError]] = []

            async def one(lg: DirtyLog) -> None:
                try:
                    await lg.set_stale(add=[uuid])
                except DeviceIOError as exc:
                    errors.append((DeviceUUID(lg.device_uuid), exc))

            async with trio.open_nursery() as nursery:
                for lg in logs:
                    nursery.start_soon(one, lg)
            for u, exc in errors:
                self.fail(u, exc)
        finally:
            fd.recorded.set()
        committed = any(d.uuid == uuid and d.state == "failed" for d in self.pool.devices)
        if self.on_failed is not None and uuid in self.failed and not committed:
            self.on_failed(uuid)

    async def record_all(self, uuids: Iterable[DeviceUUID]) -> None:
        """:meth:`record_failure` of each of *uuids* that failed, one after the other."""
        for u in uuids:
            if u in self.failed:
                await self.record_failure(u)

    # -- flushes ----------------------------------------------------------------

    async def flush(self, vio: Any) -> None:
        """Flush every live device of mirrored volume *vio*; a failing one is failed."""
        if self.volume_state(vio.volume) == "failed":
            raise DeviceIOError(vio.name, 0, "no working leg left for some of the volume",
                                errno.EIO)
        await self.flush_devices(set(vio.vmap.devices()))

    async def flush_devices(self, uuids: set[str]) -> None:
        errors: list[tuple[DeviceUUID, DeviceIOError]] = []

        async def one(u: DeviceUUID, dev: DataDevice) -> None:
            try:
                await dev.flush()
            except DeviceIOError as exc:
                errors.append((u, exc))

        async with trio.open_nursery() as nursery:
            for u in uuids:
                dev = self.devices.get(DeviceUUID(u))
                if dev is not None:
                    nursery.start_soon(one, DeviceUUID(u), dev)
        for u, exc in errors:
            if not is_failure(exc):
                raise exc
            self.fail(u, exc)
        await self.record_all(u for u, _ in errors)

    async def sync_logs(self) -> None:
        """Write pending changes (cleared bits) of every live log."""
        for uuid, lg in list(self.logs.items()):
            if lg.pending and uuid in self.devices:
                try:
                    await lg.sync()
                except DeviceIOError as exc:
                    if is_failure(exc):
                        self.fail(uuid, exc)
                    else:
                        raise
