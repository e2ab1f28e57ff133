"""`vv mount` and `vv umount`: start a node on a mount point, and stop it.

``vv mount [POOL...] MNT`` daemonizes unless ``--foreground``: the parent
returns 0 only once the mount is live, or prints the node's one-line error
and exits 1.  The daemon logs to ``STATE_DIR/node.log`` and records its pid
and mount point in ``STATE_DIR/node.pid``.

``vv umount MNT`` unmounts MNT with umount(2) -- which the kernel refuses
while a volume is open or loop-attached, so nothing in use is cut off --
and then waits for the node to flush its devices and exit.  When umount(2)
is not permitted (not root) it runs ``fusermount3 -u``.  ``--force`` instead
signals the node (SIGTERM), which ends at once and detaches the mount even
if it is busy.

Mount options (``-o``, comma-separated, also used by ``mount.vvfs``):

=================  ======================================================
state_dir=DIR      host state directory (like --state-dir)
ro                 read-only mount: writes fail with EROFS
backing=buffered   backing devices through the page cache (default)
backing=direct     backing devices opened with O_DIRECT
io_threads=N       device calls in flight across the node (default 32)
resync_rate=SIZE   bytes per second a resync copies at most (default 256M; 0: no limit)
probe_interval=S   seconds between looks for vanished devices and failed paths
                   (default 5; 0: never)
engine=native      I/O of linear and striped volumes served by the native driver's
                   threads (vvfs/driver); the rest as with python (default where
                   the driver is built; else python, said in the log)
engine=python      every request through pyfuse3 and the Python data path
driver_threads=N   threads of the native driver (default: one per CPU; at most 64)
debug              debug logging of the node
=================  ======================================================

Standard mount(8) options (rw, defaults, auto, noauto, _netdev, nofail,
user, nosuid, nodev, noatime, x-*, comment=...) are accepted and ignored;
the mount is always nosuid,nodev,allow_other,default_permissions.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import TextIO

import click

from mapper.units import SizeError, parse_size

from .common import EXIT_FAILED, QuietError, state_dir_option

log = logging.getLogger("vvfs.mount")

IGNORED_OPTIONS = frozenset({
    "rw", "defaults", "auto", "noauto", "_netdev", "nofail", "user", "nouser", "users",
    "owner", "group", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "async", "sync",
    "atime", "noatime", "relatime", "norelatime", "strictatime", "nodiratime", "diratime",
    "lazytime", "nolazytime", "allow_other", "default_permissions", "silent", "loud",
})
IGNORED_PREFIXES = ("x-", "comment=", "fsname=", "subtype=", "helper=")
LOG_NAME = "node.log"


@dataclass
class MountOptions:
    """What ``-o`` says, ready for :class:`vvfs.node.node.Node`."""

    state_dir: str | None = None
    readonly: bool = False
    direct: bool = False
    io_threads: int = 32
    resync_rate: int = 256 << 20
    probe_interval: float = 5.0
    debug: bool = False
    engine: str = "native"
    driver_threads: int = 0  #: 0: one per CPU
    ignored: list[str] = field(default_factory=list)


def parse_options(text: str, state_dir: str | None = None) -> MountOptions:
    """Parse a comma-separated mount option string; raise QuietError on a bad one."""
    opts = MountOptions(state_dir=state_dir)
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, _, value = item.partition("=")
        if key == "state_dir" and value:
            opts.state_dir = value
        elif item == "ro":
            opts.readonly = True
        elif key == "backing" and value in ("direct", "buffered"):
            opts.direct = value == "direct"
        elif key == "io_threads" and value.isdigit() and int(value) > 0:
            opts.io_threads = int(value)
        elif key == "resync_rate" and value:
            try:
                opts.resync_rate = parse_size(value) if value != "0" else 0
            except SizeError:
                raise QuietError(f"malformed mount option {item!r}") from None
        elif key == "probe_interval" and _is_number(value):
            opts.probe_interval = float(value)
        elif item == "debug":
            opts.debug = True
        elif key == "engine" and value in ("python", "native"):
            opts.engine = value
        elif key == "driver_threads" and value.isdigit() and 0 < int(value) <= 64:
            opts.driver_threads = int(value)
        elif item in IGNORED_OPTIONS or item.startswith(IGNORED_PREFIXES):
            opts.ignored.append(item)
        else:
            raise QuietError(f"unknown or malformed mount option {item!r}")
    return opts


def _is_number(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


def _state_path(state_dir: str | None) -> str:
    """The state directory, created and its vvfs.yaml checked before anything starts."""
    from vvfs.state import StateDir

    return StateDir(state_dir).path


# ---------------------------------------------------------------------------
# starting a node


def start_node(mountpoint: str, pools: list[str], opts: MountOptions, *,
               foreground: bool) -> None:
    """Mount: run the node here (foreground) or in a daemon that reports back."""
    mountpoint = os.path.abspath(mountpoint)
    if not os.path.isdir(mountpoint):
        raise QuietError(f"mount point {mountpoint} is not a directory")
    state = _state_path(opts.state_dir)
    if foreground:
        _log_to(sys.stderr, opts.debug)
        code = _run_node(mountpoint, pools, opts, ready_fd=None)
        sys.exit(code)
    _daemonize(mountpoint, pools, opts, os.path.join(state, LOG_NAME))


def _log_to(stream: TextIO, debug: bool) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def _daemonize(mountpoint: str, pools: list[str], opts: MountOptions, log_path: str) -> None:
    """Fork a daemon; return once it reports the mount live, else raise its error."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:  # opened here, so that an unwritable state directory is one line from vv mount
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise QuietError(f"cannot write the node's log {log_path}: {exc.strerror}") from None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(r)
        code = EXIT_FAILED
        try:
            os.setsid()
            _detach_stdio(log_fd)
            _log_to(sys.stderr, opts.debug)
            code = _run_node(mountpoint, pools, opts, ready_fd=w)
        finally:
            os._exit(code)
    os.close(w)
    os.close(log_fd)
    with os.fdopen(r, "rb") as f:
        report = f.read().decode(errors="replace").strip()
    if report == "ok":
        return
    if not report:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise QuietError(f"the node exited while starting; see {log_path}")
    status, _, message = report.partition(" ")
    raise QuietError(message, int(status) if status.isdigit() else EXIT_FAILED)


def _detach_stdio(out: int) -> None:
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)


def _run_node(mountpoint: str, pools: list[str], opts: MountOptions, ready_fd: int | None
              ) -> int:
    """Run a node until it stops; tell *ready_fd* "ok" or the error. Returns an exit code.

    Without *ready_fd* (foreground) an error before the mount is live raises
    QuietError; after that errors are logged.
    """
    import trio

    from metadata.errors import VVError
    from vvfs.node.node import Node, unwrap_group

    live = False

    def report(msg: str, code: int = EXIT_FAILED) -> None:
        """Tell the parent: "ok", or the exit status and the one-line error."""
        nonlocal ready_fd
        if ready_fd is not None:
            line = msg if msg == "ok" else f"{code} {msg}"
            os.write(ready_fd, (line + "\n").encode())
            os.close(ready_fd)
            ready_fd = None

    async def main() -> None:
        nonlocal live
        node = Node(mountpoint, pools, state_dir=opts.state_dir, direct=opts.direct,
                    io_threads=opts.io_threads, readonly=opts.readonly,
                    resync_rate=opts.resync_rate, probe_interval=opts.probe_interval,
                    engine=opts.engine, driver_threads=opts.driver_threads)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            live = True
            report("ok")

    try:
        with unwrap_group():
            trio.run(main)
    except VVError as exc:
        if not live and ready_fd is None:
            raise QuietError(str(exc), exc.exit_code) from None
        log.error("%s", exc)
        report(str(exc), exc.exit_code)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - one line to the parent, the trace to the log
        log.error("node failed: %s\n%s", exc, traceback.format_exc())
        report(f"node failed: {exc!r}")
        return EXIT_FAILED
    finally:
        report("the node stopped before the mount was live")
    return 0


# ---------------------------------------------------------------------------
# stopping a node


def node_pid(state_dir: str | None, mountpoint: str) -> int | None:
    """Pid of the node serving *mountpoint* per STATE_DIR/node.pid, if alive."""
    from vvfs.node.node import PID_FILE
    from vvfs.state import resolve_state_dir

    try:
        with open(os.path.join(resolve_state_dir(state_dir), PID_FILE)) as f:
            pid, mnt = int(f.readline()), f.readline().strip()
    except (OSError, ValueError):
        return None
    if mnt != mountpoint or not _alive(pid):
        return None
    return pid


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def is_vvfs_mount(mountpoint: str) -> bool:
    from vvfs.io.discovery import vvfs_mountpoints

    return mountpoint in vvfs_mountpoints()


def _umount(mountpoint: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(mountpoint.encode(), 0) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EBUSY:
        raise QuietError(f"{mountpoint} is busy: a volume is open or loop-attached"
                         " (see 'vv status', 'losetup -a'); close it, or use --force")
    if err != errno.EPERM:
        raise QuietError(f"cannot unmount {mountpoint}: {os.strerror(err)}")
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    if fusermount is None:
        raise QuietError(f"cannot unmount {mountpoint}: not permitted and no fusermount3")
    res = subprocess.run([fusermount, "-u", mountpoint], capture_output=True, text=True,
                         check=False)
    if res.returncode:
        raise QuietError(res.stderr.strip().splitlines()[-1] if res.stderr.strip()
                         else f"fusermount3 -u {mountpoint} failed")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def stop_node(mountpoint: str, state_dir: str | None, *, force: bool, timeout: float) -> None:
    mountpoint = os.path.abspath(mountpoint)
    pid = node_pid(state_dir, mountpoint)
    mounted = is_vvfs_mount(mountpoint)
    if not mounted and pid is None:
        raise QuietError(f"{mountpoint} is not a vvfs mount")
    if force and pid is not None:
        os.kill(pid, signal.SIGTERM)
    elif mounted:
        _umount(mountpoint)
    if pid is not None and not _wait_gone(pid, timeout):
        raise QuietError(f"the node (pid {pid}) has not exited after {timeout:g}s;"
                         " see its log")


# ---------------------------------------------------------------------------
# commands


@click.command("mount")
@click.argument("args", nargs=-1, required=True, metavar="[POOL...] MNT")
@click.option("--foreground", "-f", is_flag=True, help="Run the node here, logging to stderr.")
@click.option("-o", "options", multiple=True, metavar="OPTS",
              help="Mount options, comma-separated: state_dir=DIR, ro, backing=direct|buffered,"
                   " io_threads=N, resync_rate=SIZE, probe_interval=S, engine=python|native,"
                   " driver_threads=N, debug (repeatable).")
@state_dir_option
def mount(args: tuple[str, ...], foreground: bool, options: tuple[str, ...],
          state_dir: str | None) -> None:
    """Serve POOLs (default: all imported pools) as MNT/POOL/VOLUME files.

    Returns once the mount is live (the node keeps running in the
    background and logs to STATE_DIR/node.log), or runs in the foreground
    with --foreground.  Stop it with 'vv umount MNT'.
    """
    *pools, mnt = args
    opts = parse_options(",".join(options), state_dir)
    start_node(mnt, pools, opts, foreground=foreground)
    click.echo(f"mounted {', '.join(pools) or 'all pools'} on {os.path.abspath(mnt)}")


@click.command("umount")
@click.argument("mountpoint", metavar="MNT")
@click.option("--force", is_flag=True,
              help="Signal the node to stop even if volumes are open (they are cut off).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the node to flush and exit.")
@state_dir_option
def umount(mountpoint: str, force: bool, timeout: float, state_dir: str | None) -> None:
    """Unmount MNT and wait for its node to flush its devices and exit.

    Refused while a volume is open or loop-attached, unless --force.
    """
    stop_node(mountpoint, state_dir, force=force, timeout=timeout)
    click.echo(f"unmounted {os.path.abspath(mountpoint)}")
