"""Real mounts for tests: pools on sparse files, nodes, loop devices, cleanup.

Everything here is made by the test that uses it and removed by name in
``finally`` blocks: a node's mount is lazily unmounted if still there, then
the node is sent SIGTERM, then SIGKILL; a loop device is detached by its own
name.  A missing prerequisite (root, /dev/fuse, a program) FAILS the test
with a message naming it -- it is never skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mapper
from vvfs.api import Manager

MiB = 1 << 20
GiB = 1 << 30
BIN = Path(sys.executable).parent
VV = str(BIN / "vv")
MOUNT_VVFS = str(BIN / "mount.vvfs")

#: program -> Debian package, for the failure message
PACKAGES = {"fio": "fio", "mkfs.ext4": "e2fsprogs", "e2fsck": "e2fsprogs",
            "mkfs.xfs": "xfsprogs", "xfs_repair": "xfsprogs", "losetup": "mount",
            "fusermount3": "fuse3", "mount": "mount", "umount": "mount",
            "make": "make"}


def require(*programs: str) -> None:
    """Fail (not skip) unless running as root with /dev/fuse and *programs*."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (FUSE mounts with allow_other, loop devices)")
    if not os.path.exists("/dev/fuse"):
        pytest.fail("this test needs /dev/fuse (modprobe fuse)")
    for prog in programs:
        if shutil.which(prog) is None:
            pytest.fail(f"this test needs {prog} (Debian package {PACKAGES.get(prog, '?')};"
                        " 'make deps' installs it)")


def run(*args: str, timeout: float = 120, check: bool = True, **kw: object
        ) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, fail the test with its output."""
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                         check=False, **kw)  # type: ignore[call-overload]
    if check and res.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return res


def is_mounted(path: str | Path) -> bool:
    path = os.path.abspath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def wait_until(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class TestPool:
    """A state directory with one pool on sparse files (built in-process)."""

    __test__ = False  # not a test class

    def __init__(self, root: Path, name: str = "tank", devices: int = 3,
                 device_size: int = GiB, paths: list[str] | None = None) -> None:
        self.root = root
        self.name = name
        self.state = str(root / "state")
        self.mnt = root / "mnt"
        self.mnt.mkdir(exist_ok=True)
        if paths is None:
            paths = []
            for i in range(devices):
                p = root / f"dev{i}.img"
                with open(p, "wb") as f:
                    f.truncate(device_size)
                paths.append(str(p))
        self.paths = paths
        with self.manager() as mgr:
            mgr.create_pool(name, paths, metadata_size=4 * MiB)

    def manager(self) -> Manager:
        return Manager(self.state)

    def create_volume(self, name: str, size: int, **spec: object) -> None:
        with self.manager() as mgr:
            mgr.create_volume(f"{self.name}/{name}", mapper.VolumeSpec(name="", size=size,
                                                                      **spec))  # type: ignore[arg-type]

    def env(self) -> dict[str, str]:
        return {**os.environ, "VVFS_STATE_DIR": self.state}

    def vv(self, *args: str, check: bool = True, timeout: float = 60
           ) -> subprocess.CompletedProcess[str]:
        return run(VV, *args, check=check, timeout=timeout, env=self.env())

    def volume_path(self, name: str) -> str:
        return str(self.mnt / self.name / name)

    def show(self, name: str) -> tuple[object, object]:
        """(pool, volume) as the media say (only without a running node)."""
        with self.manager() as mgr:
            return mgr.show_volume(f"{self.name}/{name}")


class MountedNode:
    """A node started with ``vv mount`` (daemonized) on ``pool.mnt``."""

    def __init__(self, pool: TestPool, *options: str) -> None:
        self.pool = pool
        self.options = options
        self.pid: int | None = None

    @property
    def mnt(self) -> str:
        return str(self.pool.mnt)

    def start(self) -> MountedNode:
        args = ["mount", self.pool.name, self.mnt]
        for o in self.options:
            args += ["-o", o]
        self.pool.vv(*args, timeout=60)
        if not is_mounted(self.mnt):
            pytest.fail(f"vv mount returned 0 but {self.mnt} is not mounted")
        with open(os.path.join(self.pool.state, "node.pid")) as f:
            self.pid = int(f.readline())
        return self

    def umount(self) -> None:
        """Unmount cleanly with vv umount (the node flushes and exits)."""
        self.pool.vv("umount", self.mnt, timeout=90)
        if is_mounted(self.mnt):
            pytest.fail(f"{self.mnt} still mounted after vv umount")
        if self.pid is not None and alive(self.pid):
            pytest.fail(f"node {self.pid} still running after vv umount")
        self.pid = None

    def kill(self) -> None:
        """SIGKILL the node, then lazily unmount its dead mount."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        wait_until(lambda: not alive(self.pid), 10, f"node {self.pid} to die")  # type: ignore[arg-type]
        self.pid = None
        lazy_unmount(self.mnt)

    def cleanup(self) -> None:
        """Whatever state we are in: unmount lazily, terminate, kill."""
        lazy_unmount(self.mnt)
        if self.pid is not None and alive(self.pid):
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
        self.pid = None


def lazy_unmount(mnt: str) -> None:
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True, check=False)
    if is_mounted(mnt):
        subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)


@contextlib.contextmanager
def public_dir(prefix: str) -> Iterator[Path]:
    """A 0755 directory in /tmp (pytest's own are 0700), removed unless a mount is left in it."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        if not is_mounted(root / "mnt"):
            shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def mounted(pool: TestPool, *options: str) -> Iterator[MountedNode]:
    node = MountedNode(pool, *options)
    try:
        yield node.start()
    finally:
        node.cleanup()


@contextlib.contextmanager
def loop_device(path: str, *, direct_io: bool = True) -> Iterator[str]:
    """Attach *path* to a free loop device; detach exactly that one afterwards."""
    args = ["losetup", "-f", "--show"]
    if direct_io:
        args.append("--direct-io=on")
    dev = run(*args, path).stdout.strip()
    try:
        yield dev
    finally:
        for _ in range(50):
            if subprocess.run(["losetup", "-d", dev], capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.1)
        # a loop device that lingers (autoclear) is freed once its users go


@contextlib.contextmanager
def fs_mounted(dev: str, where: Path, *opts: str) -> Iterator[Path]:
    """Mount a file system of *dev* on *where*; lazily unmount it afterwards."""
    where.mkdir(exist_ok=True)
    run("mount", *opts, dev, str(where))
    try:
        yield where
    finally:
        if is_mounted(where) and subprocess.run(["umount", str(where)], capture_output=True,
                                                check=False).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fio(*args: str, timeout: float = 120, check: bool = True, cwd: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    return run("fio", "--output-format=normal", *args, timeout=timeout, check=check, cwd=cwd)


def read_dev(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)
