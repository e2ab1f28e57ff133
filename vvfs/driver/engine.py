"""The native engine: the driver's threads, the tables they serve, and the Python half.

:class:`NativeEngine` is what the node runs once pyfuse3 has answered the
kernel's INIT (``-o engine=native``): it clones the session's /dev/fuse
descriptor for each driver thread (:class:`vvfs.driver._native.Driver`),
hands every request those threads do not serve to
:func:`vvfs.driver.protocol.serve` on the trio thread, and keeps the
tables the threads serve from.

Which volumes are served natively (:func:`eligible`): those with one copy
(linear or striped), every device open, and no move recorded in their
pool.  Everything else -- mirrors (their dirty log, checksums, read
policies), a moving volume (the move's range locks and second copy), a
device missing -- is served by the Python data path, which stays the
reference for semantics.

Tables (:func:`table_for`) are downloaded when a volume file is opened
(:meth:`NativeEngine.opened`) and again by :meth:`NativeEngine.reconcile`,
which the node calls after every change of a pool (a map, a device, a move
record) and which also runs every :data:`RECONCILE_EVERY` seconds: a table
that no longer matches its volume is retired (its requests in flight end,
its devices are flushed if it wrote) before the new one, or none, serves.
A move therefore calls :meth:`NativeEngine.quiesce` before its first copy:
from then on the volume's writes go through the guard.

Concurrency: every method runs on the trio thread except ``_submit``, which
a driver thread calls with the GIL and which only schedules work there.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from mapper.layout import VolumeMap
from vvfs.data.volio import PoolIO, VolumeIO
from vvfs.driver import protocol

log = logging.getLogger(__name__)

try:
    from vvfs.driver import _native  # type: ignore[attr-defined]
except ImportError as exc:  # not built: no compiler when installed
    _native = None
    NATIVE_MISSING = f"the native driver is not built ({exc})"
else:
    NATIVE_MISSING = ""

#: Seconds between two passes of :meth:`NativeEngine.reconcile` on its own.
RECONCILE_EVERY = 1.0


def available() -> str:
    """Empty when the native engine can run here; else why not."""
    if NATIVE_MISSING:
        return NATIVE_MISSING
    import pyfuse3
    if not hasattr(pyfuse3, "get_session_fd"):
        return "pyfuse3 has no get_session_fd() (build it with tools/patches/pyfuse3.patch)"
    return ""


def eligible(pio: PoolIO, vio: VolumeIO) -> str:
    """Empty when *vio* can be served natively; else why not (for ``vv status``)."""
    if vio.vmap.mirrors > 1:
        return "mirrored"
    guard = vio.guard
    if guard is not None and guard.move is not None:
        return "move"
    for uuid in vio.vmap.devices():
        dev = pio.devices.get(uuid)
        if dev is None or dev.fds() is None:
            return "device missing"
    return ""


def table_for(pio: PoolIO, vio: VolumeIO, *, writable: bool = True) -> Any:
    """The native table of *vio*'s map on *pio*'s open devices (see :func:`eligible`)."""
    segments = []
    for start, end, stripes, unit, columns in vio.vmap.segments():
        cols = []
        for devs, bases in columns:
            fd, dfd = pio.devices[devs[0]].fds()  # type: ignore[misc]
            cols.append((fd, dfd, bases[0]))
        segments.append((start, end, stripes, unit, cols))
    return _native.Table(vio.size, segments, writable=writable)


@dataclass
class _Open:
    """A file handle the threads know of, and what it was built from."""

    vio: VolumeIO
    table: Any = None
    built: tuple[Any, ...] = ()


@dataclass
class NativeEngine:
    """The native engine of one mount (see the module docstring)."""

    ops: Any  #: the pyfuse3 operations (vvfs.node.fs.VolumeFS)
    pools: Callable[[], Iterable[PoolIO]]
    threads: int
    #: False on a read-only mount: writes go to Python, which answers EROFS
    writable: bool = True
    driver: Any = None
    handles: dict[int, _Open] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)  #: volume uuid -> why not native
    #: volume uuid -> counters of tables retired (so status counts since mount)
    past: dict[str, dict[str, int]] = field(default_factory=dict)
    #: pools whose configuration is being changed: no table is built for them
    held: set[str] = field(default_factory=set)
    _nursery: trio.Nursery | None = None
    _token: trio.lowlevel.TrioToken | None = None

    async def run(self, session_fd: int, *, task_status: trio.TaskStatus[None]
                  = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the session until it is unmounted or :meth:`stop` is called."""
        self._token = trio.lowlevel.current_trio_token()
        self.driver = _native.Driver(session_fd, self.threads, self._submit)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.driver.start()
                log.info("native driver: %d threads on clones of /dev/fuse", self.threads)
                nursery.start_soon(self._reconcile_loop)
                task_status.started()
                await trio.to_thread.run_sync(self.driver.join)
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            for fh in list(self.handles):
                await self._drop(fh)
            self.driver.join()
            self.driver.close()

    def stop(self) -> None:
        if self.driver is not None:
            self.driver.stop()

    def _submit(self, fd: int, request: bytes) -> None:
        """From a driver thread, with the GIL: serve *request* on the trio thread."""
        if self._token is not None:  # set before the threads start
            self._token.run_sync_soon(self._spawn, fd, request)

    def _spawn(self, fd: int, request: bytes) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(protocol.serve, self.ops, fd, request, self)

    # -- protocol.Hooks -----------------------------------------------------

    def opened(self, fh: int) -> None:
        vio = self.ops.volume_of(fh)
        self.handles[fh] = _Open(vio)
        self._build(fh)

    def released(self, fh: int) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._drop, fh)

    # -- tables -------------------------------------------------------------

    def _pool_of(self, vio: VolumeIO) -> PoolIO | None:
        for pio in self.pools():
            if pio.uuid == vio.pool_uuid:
                return pio
        return None

    def _state(self, vio: VolumeIO, pio: PoolIO) -> tuple[Any, ...]:
        devs = tuple(sorted((u, pio.devices[u].fds()) for u in vio.vmap.devices()
                            if u in pio.devices))
        return (id(vio.vmap), vio.size, devs)

    def _build(self, fh: int) -> None:
        """Download a table for *fh* if its volume is eligible (no await: before the reply)."""
        op = self.handles[fh]
        pio = self._pool_of(op.vio)
        why = "pool gone" if pio is None else eligible(pio, op.vio)
        if not why and op.vio.pool_uuid in self.held:
            why = "configuration changing"
        self.why[op.vio.uuid] = why
        if why or pio is None:
            return
        try:
            table = table_for(pio, op.vio, writable=self.writable)
        except (OSError, ValueError) as exc:
            self.why[op.vio.uuid] = f"no table: {exc}"
            log.warning("volume %s: served in Python: %s", op.vio.name, exc)
            return
        if self.driver.register(fh, table):
            op.table, op.built = table, self._state(op.vio, pio)

    async def _drop(self, fh: int) -> None:
        op = self.handles.pop(fh, None)
        if op is not None:
            await self._retire(fh, op)

    async def _retire(self, fh: int, op: _Open) -> None:
        """Stop serving *fh* natively; return once no request uses its table."""
        if op.table is None:
            return
        table, op.table, op.built = op.table, None, ()
        self.driver.unregister(fh)
        try:
            await trio.to_thread.run_sync(table.retire)
        finally:
            past = self.past.setdefault(op.vio.uuid, {})
            for k, v in table.statistics().items():
                past[k] = past.get(k, 0) + v

    async def quiesce(self, pool_uuid: str) -> None:
        """Retire every table of *pool_uuid*'s volumes; return once none serves natively."""
        for fh, op in list(self.handles.items()):
            if op.vio.pool_uuid == pool_uuid:
                await self._retire(fh, op)

    @contextlib.asynccontextmanager
    async def changing(self, pool_uuid: str) -> AsyncIterator[None]:
        """Around a change of *pool_uuid*'s configuration (maps, devices, moves).

        Before the body runs no request of the pool's volumes is served
        from a table (they all go to the Python data path, which the body
        changes); afterwards tables are built again from the new maps.  So
        no table ever serves a map that the media no longer hold.
        """
        self.held.add(pool_uuid)
        try:
            await self.quiesce(pool_uuid)
            yield
        finally:
            self.held.discard(pool_uuid)
            await self.reconcile()

    async def reconcile(self) -> None:
        """Make every open handle's table match its volume now (see the module docstring)."""
        for fh, op in list(self.handles.items()):
            pio = self._pool_of(op.vio)
            now = None if pio is None or eligible(pio, op.vio) else self._state(op.vio, pio)
            if now == op.built and (now is None) == (op.table is None):
                continue
            await self._retire(fh, op)
            if fh in self.handles:
                self._build(fh)

    async def _reconcile_loop(self) -> None:
        said_flusher = False
        while True:
            await trio.sleep(RECONCILE_EVERY)
            errno_ = self.driver.statistics()["io_flusher_errno"]
            if errno_ and not said_flusher:  # each thread tried at its start
                log.warning("native driver: its threads cannot be I/O flushers"
                            " (PR_SET_IO_FLUSHER: %s)", os.strerror(errno_))
                said_flusher = True
            await self.reconcile()

    def statistics(self) -> dict[str, Any]:
        """The driver's counters, and per volume uuid: who serves it now and what it served.

        ``served_by`` is "native" while a table serves one of its handles,
        "python" (with ``why``) while it is open and none does, "closed"
        otherwise; the ``native_*`` counters count since the mount.
        """
        out: dict[str, Any] = {"engine": "native", **(self.driver.statistics()
                                                       if self.driver else {})}
        vols: dict[str, Any] = {uuid: {"served_by": "closed", "why": "", **counts}
                                for uuid, counts in self.past.items()}
        for op in self.handles.values():
            row = vols.setdefault(op.vio.uuid, {"served_by": "closed", "why": ""})
            if op.table is not None:
                row["served_by"], row["why"] = "native", ""
                for k, v in op.table.statistics().items():
                    row[k] = row.get(k, 0) + v
            elif row["served_by"] != "native":
                row["served_by"], row["why"] = "python", self.why.get(op.vio.uuid, "")
        out["volumes"] = vols
        return out


__all__ = ["NativeEngine", "VolumeMap", "available", "eligible", "table_for"]
