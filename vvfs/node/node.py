"""The node: one process that serves a host's pools through a FUSE mount.

A :class:`Node` holds the state directory's exclusive lock for its whole
life (so offline ``vv`` commands cannot change a pool under it), opens the
pools and their devices, mounts :class:`vvfs.node.fs.VolumeFS` and runs the
pyfuse3 main loop in trio, beside the admin API server when
``vvfs.node.admin`` is installed.

Management calls (:meth:`Node.call`) run one at a time (a ``trio.Lock``) in
a worker thread, so that a commit's fsyncs never block the data path.  The
Manager reports each committed configuration through its host port
(:class:`vvfs.node.ports.NodeHost`) in that thread; the node collects them and, once the call has returned and before
:meth:`Node.call` returns, applies them on the trio thread: new devices are
opened, the volume maps are swapped, the mount is told what appeared,
disappeared or changed.  While a call runs that asked which volumes are
open (``open_volumes_fenced``: removal, shrinking, destroying), opens of that
pool's volumes wait, so nothing can be opened between the check and the
commit.

Stopping: SIGTERM, SIGINT or SIGHUP end the main loop and unmount (lazily,
as libfuse does); an external unmount (``vv umount``, ``umount MNT``) ends
it too.  Either way the devices are flushed and closed before the node
returns.  The node never reads or writes a device that lies under a vvfs
mount, and marks itself an I/O flusher (``PR_SET_IO_FLUSHER``) so that
memory reclaim never waits on it while it is writing back.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyfuse3
import trio

from metadata.blockdev import DeviceIOError
from metadata.errors import VVError
from metadata.model import DeviceUUID, Pool, PoolUUID
from vvfs.control.manager import Manager
from vvfs.data.volio import PoolIO
from vvfs.errors import ApiError, NodeError, WrongDeviceError
from vvfs.io.devio import DEFAULT_IO_THREADS, DataDevice, io_limiter
from vvfs.io.discovery import candidate_paths, identity
from vvfs.node.fs import VolumeFS
from vvfs.node.jobs import Jobs
from vvfs.node.mirrors import DEFAULT_PROBE_INTERVAL, DEFAULT_RATE, Mirrors
from vvfs.node.ports import node_ports

log = logging.getLogger(__name__)

PR_SET_IO_FLUSHER = 57
#: Largest FUSE request the kernel takes (FUSE_MAX_MAX_PAGES pages); libfuse
#: sets max_write to the same by default.
MAX_IO = 1 << 20
#: (libfuse 3 negotiates max_write and max_pages up to MAX_IO by itself and
#: refuses a max_read option that differs from what it negotiates.)
FUSE_OPTIONS = ("fsname=vvfs", "subtype=vvfs", "allow_other", "default_permissions",
                "nosuid", "nodev")
#: pyfuse3 tasks kept reading /dev/fuse (each holds one request at a time).
#: With pyfuse3's default of 1, a task that finds another reader waiting
#: exits and a new one is spawned for the next busy moment: under a queue
#: depth > 1 that is a task created and destroyed per request.
FUSE_TASKS = 16
#: At most this many FUSE requests are handled at once.
FUSE_TASKS_MAX = 128
PID_FILE = "node.pid"
#: Seconds to wait for the kernel's FUSE INIT after mounting.
INIT_TIMEOUT = 30
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextlib.contextmanager
def unwrap_group() -> Iterator[None]:
    """Re-raise an exception group holding one exception as that exception."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from group
        raise


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def set_io_flusher() -> bool:
    """Mark this process an I/O flusher; warn and return False if refused."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        log.warning("cannot mark the node an I/O flusher (PR_SET_IO_FLUSHER): %s",
                    os.strerror(err))
        return False
    log.debug("marked as I/O flusher")
    return True


class Node:
    """A running vvfs node; see the module docstring.

    *pools* are the names of the pools to serve (default: every imported
    pool, including those created or imported while running).  *direct*
    opens backing devices with O_DIRECT (see :mod:`vvfs.io.devio`).
    """

    def __init__(self, mountpoint: str, pools: Sequence[str] = (), *,
                 state_dir: str | None = None, direct: bool = False,
                 io_threads: int = DEFAULT_IO_THREADS, readonly: bool = False,
                 fuse_options: Iterable[str] = (), resync_rate: int | None = DEFAULT_RATE,
                 probe_interval: float = DEFAULT_PROBE_INTERVAL, engine: str = "native",
                 driver_threads: int = 0) -> None:
        self.mountpoint = os.path.abspath(mountpoint)
        #: "native": the driver's threads serve the session once INIT is answered
        self.engine_name = engine
        self.driver_threads = driver_threads or os.cpu_count() or 1
        self.engine: Any = None
        #: why engine=native was asked for and the Python engine serves ("" otherwise)
        self.engine_why = ""
        #: moves, scrubs and write guards (vvfs/node/jobs.py)
        self.jobs = Jobs(self)
        #: mirrors: failures, dirty logs, resync, events (vvfs/node/mirrors.py)
        self.mirrors = Mirrors(self, rate=resync_rate, probe_interval=probe_interval)
        self.manager = Manager(state_dir, ports=node_ports(self))
        self.pool_names = list(pools)
        self.direct = direct
        self.readonly = readonly
        self.fuse_options = set(FUSE_OPTIONS) | set(fuse_options) | ({"ro"} if readonly else set())
        self.limiter = io_limiter(io_threads)
        self.fs = VolumeFS(host_ids={self.manager.host_id, socket.gethostname()},
                           readonly=readonly)
        self.fs.change_attributes = self._change_attributes
        #: pool uuid -> device uuid -> open device
        self.devices: dict[PoolUUID, dict[DeviceUUID, DataDevice]] = {}
        self.state = "starting"
        self.started = time.time()
        self.io_flusher = False
        self._call_lock = trio.Lock()
        self._pending: list[tuple[str, Pool | None]] = []
        self._pending_paths: dict[str, dict[str, str]] = {}
        self._token: trio.lowlevel.TrioToken | None = None

    @property
    def pools(self) -> dict[PoolUUID, PoolIO]:
        return self.fs.pools

    @property
    def socket_path(self) -> str:
        return self.manager.state.config.socket

    @property
    def pid_file(self) -> str:
        return os.path.join(self.manager.state.path, PID_FILE)

    # ------------------------------------------------------------------
    # life cycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve until unmounted or signalled; the mount is live when started() is called."""
        self._token = trio.lowlevel.current_trio_token()
        if not os.path.isdir(self.mountpoint):
            raise NodeError(f"mount point {self.mountpoint} is not a directory")
        with self.manager.holding_lock(f"vvfs node on {self.mountpoint}"):
            self.io_flusher = set_io_flusher()
            try:
                await self._open_pools()
                self._mount()
                try:
                    with unwrap_group():
                        await self._serve(task_status)
                finally:
                    self._unmount()
            finally:
                with trio.CancelScope(shield=True):
                    await self.mirrors.close()
                    await self._close_all()
                self.manager.close()
        log.info("node stopped")

    def stop(self) -> None:
        """Ask the main loop to end (call on the trio thread)."""
        if self.state == "running":
            log.info("stopping")
            self.state = "stopping"
            if self.engine is not None and self.engine.driver is not None:
                self.engine.stop()
            else:
                pyfuse3.terminate()

    def _mount(self) -> None:
        log.info("mounting %d pools on %s", len(self.pools), self.mountpoint)
        if self.engine_name == "native":
            from vvfs.driver import engine

            why = self.engine_why = engine.available()
            if why:
                log.warning("engine=native: %s; every request goes through pyfuse3", why)
            else:
                self.engine = engine.NativeEngine(self.fs, lambda: self.fs.pools.values(),
                                                  self.driver_threads,
                                                  writable=not self.readonly)
                self.fs.on_init = pyfuse3.terminate  # INIT answered: the driver takes over
        try:
            pyfuse3.init(self.fs, self.mountpoint, self.fuse_options)
        except RuntimeError as exc:
            raise NodeError(f"cannot mount on {self.mountpoint}: {exc}") from None
        self.fs.mounted = True
        self._write_pid_file()

    def _unmount(self) -> None:
        self.fs.mounted = False
        log.info("unmounting %s", self.mountpoint)
        pyfuse3.close(unmount=True)
        self._remove_pid_file()

    async def _serve(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_signals)
            await self._start_admin(nursery)
            await self.jobs.attach(nursery)  # resumes moves recorded in the pools
            await nursery.start(self.mirrors.run)  # resyncs left by a crash, probes
            done = trio.Event()
            nursery.start_soon(self._main_loop, done, nursery.cancel_scope)
            with trio.move_on_after(INIT_TIMEOUT):
                await self.fs.wait_initialized()
            if self.fs.initialized:
                self.state = "running"
                task_status.started()
                log.info("serving %s", self.mountpoint)
                await done.wait()
            nursery.cancel_scope.cancel()
        if not self.fs.initialized:
            raise NodeError(f"the kernel did not complete the FUSE handshake on"
                            f" {self.mountpoint} (see the node log)")

    async def _main_loop(self, done: trio.Event, scope: trio.CancelScope) -> None:
        try:
            await pyfuse3.main(min_tasks=FUSE_TASKS, max_tasks=FUSE_TASKS_MAX)
            if self.engine is not None and self.state in ("starting", "running"):
                # pyfuse3 answered INIT and stopped (VolumeFS.on_init): the driver serves
                await self.engine.run(pyfuse3.get_session_fd())
        finally:
            self.state = "stopping"
            done.set()
            scope.cancel()

    async def quiesce_native(self, pool_uuid: str) -> None:
        """Return once no request of *pool_uuid*'s volumes is served natively (a move starts)."""
        if self.engine is not None and self.engine.driver is not None:
            await self.engine.quiesce(pool_uuid)

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async for signum in signals:
                log.info("got signal %s", signal.Signals(signum).name)
                self.stop()

    async def _start_admin(self, nursery: trio.Nursery) -> None:
        try:
            from vvfs.node.admin import serve  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            log.warning("admin API not available (%s); serving without it", exc)
            return
        await nursery.start(serve, self, self.socket_path)

    def _write_pid_file(self) -> None:
        tmp = self.pid_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n{self.mountpoint}\n")
        os.replace(tmp, self.pid_file)

    def _remove_pid_file(self) -> None:
        with contextlib.suppress(OSError), open(self.pid_file) as f:
            if f.readline().strip() == str(os.getpid()):
                os.unlink(self.pid_file)

    # ------------------------------------------------------------------
    # pools and devices

    async def _open_pools(self) -> None:
        names = self.pool_names or await trio.to_thread.run_sync(self._imported_names)
        for name in names:
            try:
                pool, paths = await trio.to_thread.run_sync(self._read_pool, name)
            except VVError as exc:
                if self.pool_names:
                    raise NodeError(f"cannot open pool {name}: {exc}") from None
                log.error("pool %s not served: %s", name, exc)
                continue
            await self._add_pool(pool, paths)

    def _imported_names(self) -> list[str]:
        return [row.name for row in self.manager.catalog.pools()]

    def _read_pool(self, name: str) -> tuple[Pool, dict[str, str]]:
        op = self.manager.session.open(name)
        try:
            self.manager.session.refuse_if_not_ours(op.pool)  # a shared catalog lists others'
            if op.choice.missing:
                missing = [op.pool.device(u).name for u in op.choice.missing]
                log.warning("pool %s: devices missing: %s", name, ", ".join(missing))
            return op.pool, dict(op.paths)
        finally:
            op.close()

    async def _add_pool(self, pool: Pool, paths: dict[str, str]) -> None:
        devs: dict[DeviceUUID, DataDevice] = {}
        self.devices[pool.uuid] = devs
        await self._open_devices(pool, paths, devs)
        pio = PoolIO(pool, devs)
        self.fs.add_pool(pio)
        self.jobs.pool_changed(pio)
        self.mirrors.pool_changed(pio)
        await self.mirrors.pool_loaded(pio)

    async def _open_devices(self, pool: Pool, paths: dict[str, str],
                            devs: dict[DeviceUUID, DataDevice]) -> None:
        """Open the working devices of *pool* not open yet, each at its listed paths only.

        Every path is checked through its own descriptor before any I/O: the
        label must name this pool and device, and the device must hold the
        pool's generation (:func:`vvfs.io.discovery.verify_identity`).  A
        device that fails the check is handed to the mirror service, which
        fails it (see :meth:`vvfs.node.mirrors.Mirrors.refused`).
        """
        for d in pool.devices:
            if d.uuid in devs or d.state == "failed" or self.mirrors.is_failed(pool.uuid, d.uuid):
                continue
            listed = self._listed_paths(pool, d.uuid, paths.get(d.uuid))
            if not listed:
                continue
            try:
                devs[d.uuid] = await trio.to_thread.run_sync(
                    functools.partial(DataDevice, listed[0], d.uuid, self.limiter,
                                      direct=self.direct, alternates=listed[1:],
                                      verify=identity(pool.uuid, d.uuid),
                                      generation=pool.generation))
            except WrongDeviceError as exc:
                self.mirrors.refused(pool.uuid, d.uuid, exc)
            except DeviceIOError as exc:
                log.error("pool %s: device %s: %s", pool.name, d.name, exc)

    def _listed_paths(self, pool: Pool, device: str, found: str | None) -> list[str]:
        """The paths to open *device* at, in order: its configured paths (else where found).

        Paths that are gone or lie under a vvfs mount are left out (and said so).
        """
        d = pool.device(device)
        listed = list(d.paths) or ([found] if found else [])
        usable = [p for p in listed if candidate_paths([p])]
        if not usable:
            where = f"; found at {found}, not one of its paths (add it with 'vv device paths" \
                    f" {pool.name} {d.name} --add {found}')" if found and found not in listed \
                else ""
            log.error("pool %s: device %s: none of its paths (%s) exists outside a vvfs mount%s;"
                      " not opened", pool.name, d.name, ", ".join(listed) or "none", where)
        return usable

    async def _update_pool(self, pool: Pool, paths: dict[str, str]) -> None:
        pio = self.pools[pool.uuid]
        devs = self.devices[pool.uuid]
        await self._open_devices(pool, paths, devs)
        async with self._native_held(pool.uuid):  # no table serves the old map meanwhile
            change = pio.apply(pool)
            self.jobs.pool_changed(pio)
            self.mirrors.pool_changed(pio)
            await self.fs.apply_pool(pio, change)
            keep = {d.uuid for d in pool.devices}
            for uuid in [u for u in devs if u not in keep]:
                await self._close_device(devs.pop(uuid))
        await self.mirrors.pool_updated(pio)

    async def _drop_pool(self, pool_uuid: str) -> None:
        async with self._native_held(pool_uuid):
            await self.jobs.pool_dropped(pool_uuid)
            await self.mirrors.pool_dropped(pool_uuid)
            await self.fs.remove_pool(pool_uuid)
            for dev in self.devices.pop(PoolUUID(pool_uuid), {}).values():
                await self._close_device(dev)

    def _native_held(self, pool_uuid: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The native engine's :meth:`~vvfs.driver.engine.NativeEngine.changing`, if it runs."""
        if self.engine is not None and self.engine.driver is not None:
            return self.engine.changing(pool_uuid)  # type: ignore[no-any-return]
        return contextlib.nullcontext()

    async def _close_device(self, dev: DataDevice) -> None:
        """Flush and close *dev* once no call is in flight on it.

        (A volume still open on it -- a pool exported under an open volume --
        then gets EIO rather than I/O on a reused descriptor number.)
        """
        try:
            await dev.flush()
        except DeviceIOError as exc:
            log.error("flush before close failed: %s", exc)
        while dev.stats.in_flight:
            await trio.sleep(0.01)
        dev.close()

    async def _close_all(self) -> None:
        for devs in self.devices.values():
            for dev in devs.values():
                await self._close_device(dev)
        self.devices.clear()

    # ------------------------------------------------------------------
    # management calls

    async def call(self, method: str, args: dict[str, Any]) -> Any:
        """Run ``Manager.<method>(**args)`` in a worker thread, one call at a time.

        Returns what the Manager returns once every configuration it
        committed is live in the mount.  Manager errors propagate unchanged.
        Cancellation waits for the Manager call to finish (it is not
        interruptible) and still applies what it committed.
        """
        fn = getattr(self.manager, method, None) if not method.startswith("_") else None
        if fn is None or not callable(fn):
            raise ApiError(f"no such call {method!r}")
        async with self._call_lock:
            log.debug("call %s(%s)", method, args)
            self._pending, self._pending_paths = [], {}
            try:
                return await trio.to_thread.run_sync(self._call_sync, fn, args)
            finally:
                with trio.CancelScope(shield=True):
                    try:
                        await self._apply_pending()
                    finally:
                        self.fs.unfence_all()

    def _call_sync(self, fn: Any, args: dict[str, Any]) -> Any:
        try:
            return fn(**args)
        finally:
            for uuid, pool in self._pending:
                if pool is not None:
                    try:
                        self._pending_paths[uuid] = self.manager.catalog.device_paths(uuid)
                    except Exception as exc:  # noqa: BLE001 - must not mask fn's error
                        log.error("cannot read device paths of pool %s: %s", uuid, exc)

    async def _change_attributes(self, path: str, owner: int | None, group: int | None,
                                 mode: int | None) -> None:
        """(The mount: root's chown or chmod) ``vv volume set`` POOL/VOL, live on return.

        The mode came from root's chmod(2): setuid, setgid and sticky bits
        were asked for explicitly.
        """
        await self.call("set_volume", {"path": path, "owner": owner, "group": group,
                                       "mode": mode, "special_bits": True})

    def note_change(self, pool_uuid: str, pool: Pool | None) -> None:
        """(Management thread) remember a committed change for the trio thread."""
        self._pending.append((pool_uuid, pool))

    def open_volumes_fenced(self, pool_uuid: str) -> set[str]:
        """Open volumes of a pool; holds back new opens until the management call ends."""
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            return trio.from_thread.run_sync(self.fs.fence, pool_uuid, trio_token=self._token)
        return self.fs.fence(pool_uuid)

    async def _apply_pending(self) -> None:
        last: dict[str, Pool | None] = {}
        for uuid, pool in self._pending:
            last.pop(uuid, None)
            last[uuid] = pool
        self._pending = []
        for uuid, pool in last.items():
            if pool is None:
                await self._drop_pool(uuid)
            elif uuid in self.pools:
                await self._update_pool(pool, self._pending_paths.get(uuid, {}))
            elif not self.pool_names or pool.name in self.pool_names:
                await self._add_pool(pool, self._pending_paths.get(uuid, {}))

    # ------------------------------------------------------------------
    # events (the admin API's stream)

    async def events(self, pool: str | None, since: int, limit: int) -> list[dict[str, Any]]:
        """Events with id > *since* from the catalog (a worker thread)."""
        return await trio.to_thread.run_sync(self.manager.list_events, pool, since, limit)

    async def wait_events(self, timeout: float) -> None:
        """Return when this node recorded events, or after *timeout* seconds."""
        await self.mirrors.wait_events(timeout)

    # ------------------------------------------------------------------
    # status

    def status(self) -> dict[str, Any]:
        """Pools, devices and volumes as served now, with who has volumes open."""
        return {"mountpoint": self.mountpoint, "pid": os.getpid(), "state": self.state,
                "host_id": self.manager.host_id, "started": self.started,
                "io_flusher": self.io_flusher, "direct": self.direct,
                "jobs": self.jobs.statistics(),  # moves, write guards (vvfs/node/jobs.py)
                # which engine serves the mount, and per open volume which path and how much
                "engine": self._engine_status(),
                "pools": [self._pool_status(pio) for pio in self.pools.values()]}

    def _engine_status(self) -> dict[str, Any]:
        """Which engine serves the mount and, per volume, which path served how many requests.

        ``python_requests`` are the reads and writes the Python data path
        served (VolumeIO's counters), ``native_requests`` those the driver's
        threads served from a table; both since the mount.
        """
        native = self.engine is not None and self.engine.driver is not None
        doc: dict[str, Any] = self.engine.statistics() if native else {
            "engine": "python", "requested": self.engine_name, "why": self.engine_why}
        rows = doc.pop("volumes", {})
        vols = {}
        for pio in self.pools.values():
            for vio in pio.volumes.values():
                row = dict(rows.get(vio.uuid) or {
                    "served_by": "python" if vio.handles else "closed",
                    "why": "" if native else "engine=python"})
                row["native_requests"] = row.get("native_reads", 0) + row.get("native_writes", 0)
                row["python_requests"] = vio.stats.reads + vio.stats.writes
                vols[f"{pio.name}/{vio.name}"] = row
        doc["volumes"] = vols
        return doc

    def _volume_stats(self, vio: Any) -> dict[str, Any]:
        """*vio*'s counters, with what the native driver served of it added in."""
        stats = dict(vio.statistics())
        if self.engine is not None and self.engine.driver is not None:
            row = self.engine.statistics()["volumes"].get(vio.uuid) or {}
            for key in ("reads", "writes", "bytes_read", "bytes_written"):
                stats[key] = stats.get(key, 0) + row.get(f"native_{key}", 0)
            stats["flushes"] = stats.get("flushes", 0) + row.get("native_fsyncs", 0)
        return stats

    def _pool_status(self, pio: PoolIO) -> dict[str, Any]:
        devs = self.devices.get(pio.uuid, {})
        live = self.mirrors.pool_status(pio)
        devices = []
        for d in pio.pool.devices:
            dev = devs.get(d.uuid)
            state = d.state if d.state != "ok" else ("ok" if dev else "missing")
            state = live.get("devices", {}).get(d.uuid, state)
            devices.append({"name": d.name, "uuid": d.uuid, "size": d.size, "state": state,
                            "path": dev.path if dev else (d.paths[0] if d.paths else None),
                            "error": live.get("errors", {}).get(d.uuid),  # why it failed
                            "stats": dev.statistics() if dev else None})
        volumes = []
        for vio in sorted(pio.volumes.values(), key=lambda v: v.name):
            v = vio.volume
            volumes.append({"name": v.name, "uuid": v.uuid, "size": v.size,
                            "stripes": v.stripes, "mirrors": v.mirrors,
                            "visible": self.fs.visible(v), "open": len(vio.handles),
                            "pids": sorted(set(vio.handles.values())),
                            "state": live.get("volumes", {}).get(v.uuid, "ok"),
                            "read_policy": v.read_policy, "stats": self._volume_stats(vio)})
        return {"name": pio.name, "uuid": pio.uuid, "generation": pio.pool.generation,
                "devices": devices, "volumes": volumes, "mirror": live.get("mirror", {}),
                "move": self.jobs.move_progress(pio.uuid)}
