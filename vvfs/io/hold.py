"""Who holds a device: the locks a vvfs process takes on the devices it serves,
and the processes that have a device open.

``--force`` never takes a device in use (F1.1).  For a device that a vvfs
node (or an offline resync) serves, that must be cheap and certain, not a
guess from ``/proc``: every :class:`~vvfs.io.devio.DataDevice` takes a
:class:`DeviceHold` on its path for as long as it is open:

* a regular file gets an open file description lock (``F_OFD_SETLK``,
  ``F_WRLCK`` on the whole file).  Such locks belong to the inode, so every
  name of the file (hard links, bind mounts) is covered, and they are
  released by the kernel when the holder dies;
* a block device is opened once with ``O_EXCL``: the kernel then refuses
  every other exclusive open (``mount``, ``mkfs``, another node, the claim's
  own check in :func:`vvfs.io.probe.in_use`) with EBUSY.

Holds are counted per process: several DataDevices of one process on the
same file (a device reopened while the old descriptor drains) share one
lock, so a process never conflicts with itself.  A second process -- another
node serving the same file from another state directory -- cannot take it:
:func:`take` raises :class:`~metadata.blockdev.DeviceIOError` naming who has
the file open.

:func:`is_locked` is the claim's test (a lock it cannot take, even in the
process that holds it: a claim inside the node is refused too), and
:func:`openers` names every process that has a device open, from
``/proc/PID/fd``.  Reading ``/proc`` never touches storage under another
file system: only descriptors on the probed file's own file system are
``stat``-ed (so a hung FUSE mount, our own included, cannot block a probe).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat
import struct
import threading
from dataclasses import dataclass

from metadata.blockdev import DeviceIOError

log = logging.getLogger(__name__)

#: ``struct flock`` (x86-64 and the other 64-bit ABIs): l_type, l_whence,
#: l_start, l_len, l_pid; OFD locks need l_pid 0.
_FLOCK = struct.Struct("hhqqi4x")
assert _FLOCK.size == 32
F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
#: errnos by which a file system says it has no locks (the hold is then skipped).
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS})

_Key = tuple[str, int, int]


@dataclass
class _Held:
    fd: int
    count: int


_held: dict[_Key, _Held] = {}
_held_lock = threading.Lock()


def _key(st: os.stat_result) -> _Key:
    if stat.S_ISBLK(st.st_mode):
        return ("block", st.st_rdev, 0)
    return ("inode", st.st_dev, st.st_ino)


class DeviceHold:
    """This process's hold on one device file (see the module docstring); release() ends it."""

    def __init__(self, key: _Key | None) -> None:
        self._key = key

    def release(self) -> None:
        """Give the hold back (the lock goes with the last hold of the process)."""
        key, self._key = self._key, None
        if key is None:
            return
        with _held_lock:
            held = _held.get(key)
            if held is None:
                return
            held.count -= 1
            if held.count == 0:
                del _held[key]
                os.close(held.fd)


def take(path: str) -> DeviceHold:
    """Hold the device at *path* for this process.

    Raises :class:`DeviceIOError` (EBUSY) when another process holds it or,
    for a block device, has it open exclusively (mounted, a RAID member ...).
    A file system without locks gives a hold that holds nothing (logged).
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DeviceIOError(path, 0, f"cannot open: {exc.strerror}", exc.errno) from None
    key = _key(st)
    with _held_lock:
        held = _held.get(key)
        if held is not None:
            held.count += 1
            return DeviceHold(key)
        fd = _lock(path, st)
        if fd < 0:
            return DeviceHold(None)
        _held[key] = _Held(fd, 1)
        return DeviceHold(key)


def _lock(path: str, st: os.stat_result) -> int:
    """A descriptor holding *path* (-1: the file system has no locks), or DeviceIOError."""
    block = stat.S_ISBLK(st.st_mode)
    flags = os.O_CLOEXEC | (os.O_RDONLY | os.O_EXCL if block else os.O_RDWR)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise _busy(path, st) from None
        raise DeviceIOError(path, 0, f"cannot open: {exc.strerror}", exc.errno) from None
    if block:
        return fd
    try:
        fcntl.fcntl(fd, F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise _busy(path, st) from None
        if exc.errno in _NO_LOCKS:
            log.warning("%s: the file system takes no locks (%s); serving it unlocked",
                        path, exc.strerror)
            return -1
        raise DeviceIOError(path, 0, f"cannot lock: {exc.strerror}", exc.errno) from None
    return fd


def _busy(path: str, st: os.stat_result) -> DeviceIOError:
    who = describe(openers(st, exclude_self=True))
    return DeviceIOError(path, 0, f"in use by another process ({who or 'unknown'});"
                         " not served", errno.EBUSY)


def is_locked(path: str) -> bool:
    """True if a vvfs process (this one included) holds the regular file at *path*."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        probe = _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
        found = fcntl.fcntl(fd, F_OFD_GETLK, probe)
        return _FLOCK.unpack(found)[0] != fcntl.F_UNLCK
    except OSError:
        return False
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# /proc


@dataclass(frozen=True)
class Opener:
    """A process that has a device open."""

    pid: int
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command})"


def describe(found: list[Opener]) -> str:
    """``pid 12 (vv), pid 40 (qemu-system-x86)`` -- at most three, then how many more."""
    text = ", ".join(o.describe() for o in found[:3])
    return text + (f" and {len(found) - 3} more" if len(found) > 3 else "")


def openers(st: os.stat_result, *, exclude_self: bool = False) -> list[Opener]:
    """The processes with a descriptor open on the file or block device *st*, by pid.

    Only descriptors whose path lies on the file system holding *st* are
    ``stat``-ed (a longest-prefix match over the mount table); processes
    whose descriptors cannot be read (another user's, without root) are
    not seen.
    """
    safe = _safe_prefixes(st.st_dev)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or (exclude_self and int(entry.name) == os.getpid()):
            continue
        if _has_open(entry.path, st, safe):
            found.append(Opener(int(entry.name), _command(entry.path)))
    return sorted(found, key=lambda o: o.pid)


def _has_open(proc: str, st: os.stat_result, safe: _Prefixes) -> bool:
    try:
        fds = os.listdir(os.path.join(proc, "fd"))
    except OSError:
        return False
    for fd in fds:
        link = os.path.join(proc, "fd", fd)
        try:
            target = os.readlink(link)
            if not safe.covers(target):
                continue
            fst = os.stat(link)
        except OSError:
            continue
        if _same(fst, st):
            return True
    return False


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    if stat.S_ISBLK(a.st_mode) and stat.S_ISBLK(b.st_mode):
        return a.st_rdev == b.st_rdev
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _command(proc: str) -> str:
    try:
        with open(os.path.join(proc, "comm"), encoding="utf-8", errors="replace") as f:
            return f.read().strip() or "?"
    except OSError:
        return "?"


class _Prefixes:
    """Which absolute paths lie on one file system (the mounts that carry its device number)."""

    def __init__(self, mounts: list[tuple[str, bool]]) -> None:
        #: (mount point, on the file system wanted), in mount table order
        self.mounts = mounts

    def covers(self, path: str) -> bool:
        """True if *path* lies on the wanted file system (the last, longest mount over it)."""
        if not path.startswith("/"):
            return False  # pipe:[..], socket:[..], anon_inode:...
        best, on_mine = -1, False
        for point, mine in self.mounts:
            if _under(path, point) and len(point) >= best:
                best, on_mine = len(point), mine
        return on_mine


def _under(path: str, mount_point: str) -> bool:
    return mount_point == "/" or path == mount_point or path.startswith(mount_point + "/")


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _safe_prefixes(devnum: int) -> _Prefixes:
    mounts = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split(" ")
        try:
            major, minor = fields[2].split(":")
            point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
            mounts.append((point, os.makedev(int(major), int(minor)) == devnum))
        except (IndexError, ValueError):
            continue
    return _Prefixes(mounts)
