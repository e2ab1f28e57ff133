"""The targets of ``python -m bench.run``: files that fio and the ext4 workload use.

* ``raw`` -- the backing file itself, the limit every layer is measured against;
* ``vvfs-linear``, ``vvfs-mirror``, ``vvfs-stripe`` -- volumes of one vvfs pool
  built and mounted with the real ``vv`` CLI (``vv mount -o
  backing=direct,engine=native``: linear and striped volumes served by the
  native driver, mirrored ones by the Python data path);
* ``vvfs-linear-python`` -- the same linear volume, the pool mounted again
  with ``engine=python`` (the bench unmounts and remounts between the two);
* ``vvfs-mirror-nv`` -- a second mirrored volume of that pool whose reads the
  node serves without verifying the block checksums
  (``VVFS_BENCH_NO_VERIFY``): what verification costs, in the same run;
* ``qsd`` -- ``qemu-storage-daemon`` exporting the backing file through its
  FUSE export (``cache.direct=on,aio=native``);
* ``nbdfuse`` -- ``nbdfuse`` over ``nbdkit file`` on a Unix socket
  (``cache=none fadvise=random``).

Each server is a context manager that yields a :class:`Target` once the file
is served and, in a ``finally``, stops what it started: FUSE mounts are
unmounted (lazily when a plain unmount fails), processes are terminated and
then killed, only ever by the pid this module started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields

from .workloads import BenchError

log = logging.getLogger(__name__)

#: Seconds to wait for a server to serve its file.
START_TIMEOUT = 30.0


@dataclass
class Target:
    """A file to benchmark, and how it is served."""

    name: str
    title: str
    #: the file fio opens (None when skipped)
    path: str | None
    #: how the page cache is kept out of the way for this target
    cache: str
    #: server processes whose CPU time is recorded per run
    pids: list[int] = field(default_factory=list)
    #: why the target is not measured (None when it is)
    skipped: str | None = None
    #: result of :func:`bench.workloads.check_data`: "ok", or what came back wrong
    data_check: str | None = None
    #: called before each use: makes sure the file is served as this target says
    before: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    #: (native, python) requests its server has served so far, when it counts them
    requests: Callable[[], tuple[int, int] | None] | None = field(
        default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), list) else v
                for f in fields(self) if f.name not in ("before", "requests")}

    def ready(self) -> None:
        """Serve the file as this target says (a vvfs remount when needed)."""
        if self.before is not None:
            self.before()


def skipped(name: str, title: str, why: str) -> Target:
    """A target that cannot be measured; said loudly on stderr."""
    print(f"bench: SKIPPING {name}: {why}", file=sys.stderr, flush=True)
    return Target(name, title, None, "", skipped=why)


def raw_target(path: str) -> Target:
    return Target("raw", "raw backing file", path,
                  "fio opens the file with O_DIRECT (no page cache)")


# ---------------------------------------------------------------- helpers


def is_mounted(path: str) -> bool:
    """Whether *path* is a mount point (per /proc/self/mountinfo)."""
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == path:
                return True
    return False


def mounts_under(root: str) -> list[str]:
    """Mount points at or below *root*."""
    root = os.path.realpath(root)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == root or point.startswith(root + os.sep):
                found.append(point)
    return found


def fuse_unmount(path: str) -> None:
    """Unmount the FUSE mount at *path* if it is mounted; lazily when busy."""
    if not is_mounted(path):
        return
    proc = subprocess.run(["fusermount3", "-u", path], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        log.warning("fusermount3 -u %s: %s; lazy unmount", path, proc.stderr.strip())
        subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True, check=False)


def stop_process(proc: subprocess.Popen, name: str, timeout: float = 10.0) -> None:
    """End a process this module started: wait, then SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1.0)
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %d) ignored SIGTERM; killing it", name, proc.pid)
        proc.kill()
        proc.wait(timeout=timeout)


def wait_until(pred, what: str, proc: subprocess.Popen | None, log_path: str | None,
               timeout: float = START_TIMEOUT) -> None:
    """Poll *pred* until true; fail early if *proc* exits, quoting its log."""
    deadline = time.monotonic() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what}: exited with {proc.returncode}: {_tail(log_path)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready after {timeout:.0f}s: {_tail(log_path)}")
        time.sleep(0.05)


def _tail(path: str | None) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else ""


def version(cmd: list[str]) -> str | None:
    """First line of a ``--version`` output, or None when the program is missing."""
    if shutil.which(cmd[0]) is None:
        return None
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else None


def _spawn(cmd: list[str], log_path: str) -> subprocess.Popen:
    log.debug("starting %s", " ".join(cmd))
    with open(log_path, "ab") as logf:
        # own session: a ^C to the benchmark does not kill the servers before
        # the finally blocks below have unmounted their files
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)


# ---------------------------------------------------------------- qemu-storage-daemon

QSD_TITLE = "qemu-storage-daemon FUSE export"


@contextlib.contextmanager
def qsd_target(backing: str, mountpoint: str, log_path: str) -> Iterator[Target]:
    """``qemu-storage-daemon`` exporting *backing* over FUSE at the file *mountpoint*."""
    if shutil.which("qemu-storage-daemon") is None:
        yield skipped("qsd", QSD_TITLE, "qemu-storage-daemon not installed "
                      "(Debian package qemu-system-common)")
        return
    with open(mountpoint, "ab"):
        pass  # the FUSE export mounts over a regular file
    cmd = ["qemu-storage-daemon",
           "--blockdev", (f"driver=file,node-name=file0,filename={backing},"
                         "cache.direct=on,cache.no-flush=off,aio=native"),
           "--blockdev", "driver=raw,node-name=disk0,file=file0",
           "--export", (f"type=fuse,id=exp0,node-name=disk0,mountpoint={mountpoint},"
                       "writable=on,growable=off")]
    proc = _spawn(cmd, log_path)
    try:
        wait_until(lambda: is_mounted(mountpoint), "qemu-storage-daemon", proc, log_path)
        yield Target("qsd", QSD_TITLE, mountpoint,
                     "file node cache.direct=on (O_DIRECT), aio=native, raw format node",
                     pids=[proc.pid])
    finally:
        stop_process(proc, "qemu-storage-daemon")  # SIGTERM removes the export
        fuse_unmount(mountpoint)


# ---------------------------------------------------------------- nbdfuse + nbdkit

NBD_TITLE = "nbdfuse over nbdkit file"


@contextlib.contextmanager
def nbdfuse_target(backing: str, mountdir: str, sock: str, log_path: str) -> Iterator[Target]:
    """``nbdkit file`` serving *backing* on a Unix socket, ``nbdfuse`` showing it as
    ``MOUNTDIR/disk``."""
    missing = [f"{prog} (Debian package {pkg})"
               for prog, pkg in (("nbdkit", "nbdkit"), ("nbdfuse", "libnbd-bin"))
               if shutil.which(prog) is None]
    if missing:
        yield skipped("nbdfuse", NBD_TITLE, "not installed: " + ", ".join(missing))
        return
    os.makedirs(mountdir, exist_ok=True)
    kit = _spawn(["nbdkit", "--foreground", "--exit-with-parent", "--unix", sock,
                  "file", f"file={backing}", "cache=none", "fadvise=random"], log_path)
    fuse: subprocess.Popen | None = None
    try:
        wait_until(lambda: os.path.exists(sock), "nbdkit", kit, log_path)
        fuse = _spawn(["nbdfuse", os.path.join(mountdir, "disk"), "--unix", sock], log_path)
        wait_until(lambda: is_mounted(mountdir), "nbdfuse", fuse, log_path)
        yield Target("nbdfuse", NBD_TITLE, os.path.join(mountdir, "disk"),
                     "nbdkit file plugin cache=none (evicts what it read or wrote from "
                     "the page cache) fadvise=random (no read-ahead); nbdkit cannot "
                     "open O_DIRECT", pids=[fuse.pid, kit.pid])
    finally:
        fuse_unmount(mountdir)  # nbdfuse exits once unmounted
        if fuse is not None:
            stop_process(fuse, "nbdfuse")
        stop_process(kit, "nbdkit")


# ---------------------------------------------------------------- vvfs

VVFS_TITLES = {
    "vvfs-linear": "vvfs linear volume (native engine)",
    "vvfs-mirror": "vvfs 2-way mirror (mount engine=native; mirrors go through Python)",
    "vvfs-mirror-nv": ("vvfs 2-way mirror, reads not verified (VVFS_BENCH_NO_VERIFY; "
                       "through Python)"),
    "vvfs-stripe": "vvfs 2-way stripe (native engine)",
    "vvfs-linear-python": "vvfs linear volume, the same one, mounted with engine=python",
}
#: the volume of pool ``bench`` behind each vvfs target
VVFS_VOLUMES = {"vvfs-linear": "linear", "vvfs-mirror": "mirror",
                "vvfs-mirror-nv": "mirror-nv", "vvfs-stripe": "stripe",
                "vvfs-linear-python": "linear"}
#: the engine each vvfs target's mount runs with (the others: the one of --vvfs-opts)
VVFS_ENGINES = {"vvfs-linear-python": "python"}


def with_engine(opts: str, engine: str | None) -> str:
    """Mount options *opts* with ``engine=`` set to *engine* (unchanged when None)."""
    if engine is None:
        return opts
    kept = [o for o in opts.split(",") if o and not o.startswith("engine=")]
    return ",".join([*kept, f"engine={engine}"])


def vv_command() -> str | None:
    """The ``vv`` of this Python environment (or on PATH)."""
    here = os.path.join(os.path.dirname(sys.executable), "vv")
    return here if os.access(here, os.X_OK) else shutil.which("vv")


def vv_mount_available(vv: str | None) -> str | None:
    """None when ``vv mount`` exists, else why not."""
    if vv is None:
        return "the vv command is not installed (pip install -e . in the venv)"
    proc = subprocess.run([vv, "mount", "--help"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return "vvfs mount not available ('vv mount --help' failed)"
    return None


def _vv(vv: str, env: dict, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run([vv, *args], env=env, capture_output=True, text=True, check=False,
                          timeout=timeout)
    if proc.returncode != 0:
        raise BenchError(f"vv {' '.join(args)}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


class VvfsMount:
    """The pool ``bench`` mounted at one mount point, with one set of options at a time.

    One node holds a state directory, so the targets that need other options
    (``vvfs-linear-python``: the same volume, ``engine=python``) are served by
    unmounting and mounting again with theirs: :meth:`use`.  ``pids`` is the
    list every vvfs target shares: the node serving the mount now.
    """

    def __init__(self, vv: str, env: dict, mountpoint: str, opts: str) -> None:
        self.vv, self.env, self.mountpoint, self.opts = vv, env, mountpoint, opts
        self.current: str | None = None
        self.pids: list[int] = []
        self.remounts = 0

    def use(self, opts: str) -> None:
        """Serve the pool with mount options *opts* (remounting when they differ)."""
        if self.current == opts:
            return
        if self.current is not None:
            self.unmount()
            self.remounts += 1
        _vv(self.vv, dict(self.env, VVFS_BENCH_NO_VERIFY="bench/mirror-nv"), "mount", "-o",
            opts, "bench", self.mountpoint, timeout=START_TIMEOUT)
        self.current = opts
        pid = self.status().get("pid")
        self.pids[:] = [pid] if pid else []

    def status(self) -> dict:
        return json.loads(_vv(self.vv, self.env, "status", "--json"))

    def requests(self, volume: str) -> tuple[int, int] | None:
        """(native, python) requests served of ``bench/VOLUME`` since the mount."""
        try:
            row = self.status().get("engine", {}).get("volumes", {}).get(f"bench/{volume}")
        except (BenchError, ValueError, subprocess.TimeoutExpired):
            return None
        if not row:
            return None
        return int(row.get("native_requests", 0)), int(row.get("python_requests", 0))

    def unmount(self) -> None:
        node_pid = self.pids[0] if self.pids else None
        _vvfs_unmount(self.vv, self.env, self.mountpoint, node_pid)
        self.current = None
        self.pids[:] = []


@contextlib.contextmanager
def vvfs_targets(dev_a: str, dev_b: str, state_dir: str, mountpoint: str, size: int,
                 mount_opts: str) -> Iterator[list[Target]]:
    """A pool ``bench`` on *dev_a* and *dev_b* with a linear volume (on *dev_a*), two
    2-way mirrors and a 2-way stripe of *size* bytes each, mounted at *mountpoint*.

    The node runs with ``VVFS_BENCH_NO_VERIFY=bench/mirror-nv``: that mirror's
    reads are not verified by the block checksums (the other mirror's are).
    Each target's ``before`` remounts with its options when they are not the
    ones mounted now (``vvfs-linear-python``: ``engine=python``).
    """
    vv = vv_command()
    why = vv_mount_available(vv)
    if why is not None:
        yield [skipped(n, t, why) for n, t in VVFS_TITLES.items()]
        return
    assert vv is not None
    env = dict(os.environ, VVFS_STATE_DIR=state_dir)
    _vv(vv, env, "pool", "create", "bench", dev_a, dev_b)
    devices = json.loads(_vv(vv, env, "device", "list", "bench", "--json"))
    first = next(d["name"] for d in devices if os.path.realpath(d["path"]) == dev_a)
    _vv(vv, env, "volume", "create", "bench/linear", "--size", str(size), "--on", first)
    _vv(vv, env, "volume", "create", "bench/mirror", "--size", str(size), "--mirrors", "2")
    _vv(vv, env, "volume", "create", "bench/mirror-nv", "--size", str(size), "--mirrors", "2")
    _vv(vv, env, "volume", "create", "bench/stripe", "--size", str(size), "--stripes", "2")
    os.makedirs(mountpoint, exist_ok=True)
    mnt = VvfsMount(vv, env, mountpoint, mount_opts)
    try:
        mnt.use(mount_opts)
        yield [_vvfs_target(mnt, name, title) for name, title in VVFS_TITLES.items()]
    finally:
        mnt.unmount()


def _vvfs_target(mnt: VvfsMount, name: str, title: str) -> Target:
    opts = with_engine(mnt.opts, VVFS_ENGINES.get(name))
    cache = (f"vv mount -o {opts}: backing files opened "
             + ("O_DIRECT" if "backing=direct" in opts else "buffered (page cache)")
             + "; fio's O_DIRECT opens make FUSE direct_io (no page cache above)")
    return Target(name, title, os.path.join(mnt.mountpoint, "bench", VVFS_VOLUMES[name]),
                  cache, pids=mnt.pids, before=lambda: mnt.use(opts),
                  requests=lambda: mnt.requests(VVFS_VOLUMES[name]))


def _vvfs_unmount(vv: str, env: dict, mountpoint: str, node_pid: int | None) -> None:
    if not is_mounted(mountpoint):
        return
    try:
        _vv(vv, env, "umount", mountpoint, timeout=90)
        return
    except (BenchError, subprocess.TimeoutExpired) as e:
        log.warning("vv umount %s failed (%s); forcing", mountpoint, e)
    with contextlib.suppress(BenchError, subprocess.TimeoutExpired):
        _vv(vv, env, "umount", "--force", mountpoint, timeout=60)
    fuse_unmount(mountpoint)
    if node_pid and _alive(node_pid):
        log.warning("vvfs node %d still running; SIGKILL", node_pid)
        os.kill(node_pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process *pid* (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
