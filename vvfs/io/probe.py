"""Probe a would-be backing device before vvfs claims it.

`vv pool create` (F1.1) must refuse a device that carries a foreign signature
(a filesystem, partition table, RAID or LVM member, swap, ZFS label) unless
``--force`` is given, and must refuse a device that is in use even then.
This module answers the three questions that needs, for a regular image file
or a block device:

- :func:`foreign_signatures` — what libblkid recognises on it, through
  util-linux ``wipefs --no-act --json`` (so we know every signature libblkid
  knows, at the offsets ``wipefs --all`` would erase);
- :func:`wipe_signatures` — erase them, for ``--force``;
- :func:`in_use` — why it cannot be claimed: mounted, backing a loop device,
  held by a stacking driver, an active swap, opened exclusively by the
  kernel or another program, locked by a vvfs node that serves it, or open
  in any process at all.

Devices are compared by device number or by ``(st_dev, st_ino)``, never by
path string; symlinks are resolved first. Probing never touches storage
under a FUSE mount other than the probed path itself (vvfs may run this in
the node that serves such a mount, F3.7): loop devices identify their
backing files by ioctl, and only mount points on the probed file's own
filesystem, mount sources under ``/dev`` and active swap areas are
``stat``-ed.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import logging
import os
import re
import shutil
import stat
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from vvfs.errors import ProbeError
from vvfs.io import hold

log = logging.getLogger(__name__)

__all__ = [
    "ProbeError",
    "Signature",
    "device_size",
    "foreign_signatures",
    "in_use",
    "is_block_device",
    "wipe_signatures",
]

#: Directories searched for system programs after ``$PATH``: ``wipefs`` lives
#: in ``/usr/sbin``, which an ordinary user's ``$PATH`` may lack.
_SBIN_DIRS: tuple[str, ...] = ("/usr/sbin", "/sbin")

#: ``LOOP_GET_STATUS64`` from <linux/loop.h>; fills a ``struct loop_info64``
#: whose first three fields describe the backing file as stat(2) would.
_LOOP_GET_STATUS64 = 0x4C05
_LOOP_INFO64 = struct.Struct(
    "<"
    "Q"  # 0  lo_device: st_dev of the backing file
    "Q"  # 8  lo_inode: st_ino of the backing file
    "Q"  # 16 lo_rdevice: st_rdev of the backing file (0 unless a device)
    "208x"  # 24 lo_offset, lo_sizelimit, lo_number, flags, names, key: unused
)
assert _LOOP_INFO64.size == 232


@dataclass(frozen=True)
class Signature:
    """One signature libblkid found on a device.

    *type* is libblkid's name (``ext4``, ``gpt``, ``PMBR``, ``LVM2_member``,
    ``linux_raid_member``, ``zfs_member`` …), *offset* the byte offset of its
    magic, *uuid* and *label* are empty when the format has none.
    """

    type: str
    offset: int
    uuid: str
    label: str

    def describe(self) -> str:
        """One phrase for a user, e.g. ``ext4 signature at byte 1080 (0x438)``."""
        return f"{self.type} signature at byte {self.offset} ({self.offset:#x})"


# --------------------------------------------------------------------------
# Files and device numbers


def _stat_device(path: str) -> tuple[str, os.stat_result]:
    """Resolve *path* and stat it; it must be a regular file or a block device."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise ProbeError(f"{path}: no such file or block device") from None
    except OSError as exc:
        raise ProbeError(f"{path}: cannot stat: {exc.strerror}") from None
    if stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return real, st
    raise ProbeError(f"{path} is a {_kind(st.st_mode)}, not a block device or regular file")


def _kind(mode: int) -> str:
    """A user's word for a file type that cannot back a pool."""
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISFIFO(mode):
        return "named pipe"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """True if *a* and *b* are the same block device or the same inode."""
    if stat.S_ISBLK(a.st_mode) and stat.S_ISBLK(b.st_mode):
        return a.st_rdev == b.st_rdev
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _devnum(text: str) -> int:
    """``"7:0"`` (as in mountinfo and sysfs ``dev`` files) to a device number."""
    major, minor = text.strip().split(":")
    return os.makedev(int(major), int(minor))


def _read(path: str) -> str | None:
    """The text of a small /proc or /sys file, or None if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError:
        return None


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """Undo the kernel's octal escapes (``\\040`` for a space) in /proc fields."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


# --------------------------------------------------------------------------
# Signatures (util-linux wipefs)


def _program(name: str, package: str) -> str:
    """The path of system program *name*, or a ProbeError naming its package."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN_DIRS])
    found = shutil.which(name, path=search)
    if found is None:
        raise ProbeError(f"{name} not found: install the Debian package {package}")
    return found


def _run_wipefs(args: list[str], path: str) -> str:
    """Run wipefs with *args* on *path*; its stdout, or a one-line ProbeError."""
    cmd = [_program("wipefs", "util-linux"), *args, path]
    log.debug("running %s", cmd)
    try:
        proc = subprocess.run(
            cmd,
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C"},
        )
    except subprocess.CalledProcessError as exc:
        lines = (exc.stderr or "").strip().splitlines() or [f"exit status {exc.returncode}"]
        raise ProbeError(f"wipefs failed on {path}: {lines[0]}") from None
    return proc.stdout


def foreign_signatures(path: str) -> list[Signature]:
    """Every signature libblkid recognises on *path*, in the order wipefs lists them.

    *path* is a regular file or a block device (symlinks are followed). A
    device with several copies of a structure (GPT's backup header, ZFS's
    uberblocks) yields one entry per magic that ``wipefs --all`` would erase.
    Raises :class:`ProbeError` if *path* is missing or of another type, if
    wipefs is not installed, or if it fails.
    """
    real, _ = _stat_device(path)
    out = _run_wipefs(["--no-act", "--json"], real)
    if not out.strip():  # wipefs prints nothing at all when it finds nothing
        return []
    try:
        entries = json.loads(out)["signatures"]
        found = [
            Signature(
                type=str(e["type"]),
                offset=int(str(e["offset"]), 0),
                uuid=str(e.get("uuid") or ""),
                label=str(e.get("label") or ""),
            )
            for e in entries
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProbeError(f"cannot parse wipefs output for {path}: {exc}") from None
    return list(dict.fromkeys(found))  # drop exact repeats, keep order


def wipe_signatures(path: str) -> None:
    """Erase every signature libblkid recognises on *path* (``wipefs --all``).

    This is what ``--force`` does to a device that carries a foreign
    signature. It refuses (:class:`ProbeError`) a device that :func:`in_use`
    reports, since no option may override that.
    """
    real, _ = _stat_device(path)
    reason = in_use(real)
    if reason is not None:
        raise ProbeError(f"refusing to wipe signatures: {reason}")
    _run_wipefs(["--all", "--force"], real)


# --------------------------------------------------------------------------
# Sizes


def is_block_device(path: str) -> bool:
    """True if *path* (after following symlinks) is a block device."""
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def device_size(path: str) -> int:
    """The size in bytes of a regular file or a block device.

    Raises :class:`ProbeError` for a missing path or any other file type.
    """
    real, st = _stat_device(path)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    try:
        fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ProbeError(f"cannot open {path}: {exc.strerror}") from None
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    except OSError as exc:
        raise ProbeError(f"cannot find the size of {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# In use


@dataclass(frozen=True)
class _Mount:
    """One line of /proc/self/mountinfo that matters here."""

    devnum: int  # st_dev of files on this mount (field 3, major:minor)
    mount_point: str
    source: str  # the mount source ("/dev/loop0", "tmpfs", ...)


def _mounts() -> Iterator[_Mount]:
    """The mounts of this process's mount namespace."""
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            yield _Mount(
                devnum=_devnum(fields[2]),
                mount_point=_unescape(fields[4]),
                source=_unescape(fields[sep + 2]),
            )
        except (ValueError, IndexError):
            continue


def _mount_of_block(rdev: int) -> str | None:
    """Where block device *rdev* is mounted, or None.

    Matches the mount's device number, or (for filesystems such as btrfs that
    report an anonymous device number) a mount source under /dev that is the
    same block device.
    """
    for m in _mounts():
        if m.devnum == rdev:
            return m.mount_point
        if m.source.startswith("/dev/"):
            try:
                st = os.stat(m.source)
            except OSError:
                continue
            if stat.S_ISBLK(st.st_mode) and st.st_rdev == rdev:
                return m.mount_point
    return None


def _mount_of_file(st: os.stat_result) -> str | None:
    """A mount point that is this regular file (a bind mount of it), or None.

    Only mount points on the file's own filesystem are ``stat``-ed, so a hung
    network or FUSE mount elsewhere cannot block the probe.
    """
    for m in _mounts():
        if m.devnum != st.st_dev:
            continue
        try:
            mst = os.stat(m.mount_point)
        except OSError:
            continue
        if _same_file(mst, st):
            return m.mount_point
    return None


def _active_swaps() -> Iterator[tuple[str, os.stat_result]]:
    """Each active swap area in /proc/swaps: its name and its stat."""
    for line in (_read("/proc/swaps") or "").splitlines()[1:]:
        fields = line.split()
        if not fields:
            continue
        name = _unescape(fields[0])
        try:
            yield name, os.stat(name)
        except OSError:
            continue


def _is_swap_file(st: os.stat_result) -> bool:
    """True if the regular file *st* is an active swap file."""
    return any(_same_file(sst, st) for _, sst in _active_swaps())


def _is_swap_block(rdev: int) -> bool:
    """True if block device *rdev* is an active swap area."""
    return any(stat.S_ISBLK(sst.st_mode) and sst.st_rdev == rdev for _, sst in _active_swaps())


_FileKey = tuple[str, int, int]


def _file_key(st: os.stat_result) -> _FileKey:
    """What identifies a loop device's backing file: a block device's number, else its inode."""
    if stat.S_ISBLK(st.st_mode):
        return ("block", os.major(st.st_rdev), os.minor(st.st_rdev))
    return ("inode", st.st_dev, st.st_ino)


def _loop_backing(loop_dir: str) -> _FileKey | None:
    """The key (:func:`_file_key`) of the file behind the loop device at *loop_dir* in sysfs.

    A loop device is attached when sysfs has its ``loop/backing_file``. The
    backing file is then identified by the kernel itself (``LOOP_GET_STATUS64``
    gives its device, inode and rdev numbers) so that a backing file on a FUSE
    mount, possibly our own, is never touched. Only when the loop device node
    cannot be opened is the ``backing_file`` path stat-ed instead. None if the
    loop device is detached.
    """
    backing = _read(os.path.join(loop_dir, "loop", "backing_file"))
    if backing is None:
        return None
    key = _loop_status_key("/dev/" + os.path.basename(loop_dir))
    if key is not None:
        return key
    try:
        return _file_key(os.stat(backing.rstrip("\n")))
    except OSError:
        return None


def _loop_status_key(dev: str) -> _FileKey | None:
    """The backing file's key of loop device *dev*, from ``LOOP_GET_STATUS64``."""
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        buf = fcntl.ioctl(fd, _LOOP_GET_STATUS64, bytes(_LOOP_INFO64.size))
    except OSError:
        return None
    finally:
        os.close(fd)
    lo_device, lo_inode, lo_rdevice = _LOOP_INFO64.unpack(buf)
    if lo_rdevice:  # backed by a block device
        return ("block", os.major(lo_rdevice), os.minor(lo_rdevice))
    return ("inode", lo_device, lo_inode)


def _loops_backed_by(st: os.stat_result) -> list[str]:
    """The loop devices (``/dev/loopN``) whose backing file or device is *st*."""
    key = _file_key(st)
    return [
        "/dev/" + os.path.basename(loop_dir)
        for loop_dir in sorted(glob.glob("/sys/block/loop*"), key=_natural)
        if _loop_backing(loop_dir) == key
    ]


def _natural(name: str) -> tuple[str, int]:
    """Sort key putting loop2 before loop10."""
    m = re.match(r"(.*?)(\d+)$", name)
    return (m.group(1), int(m.group(2))) if m else (name, -1)


def _sysfs_dir(rdev: int) -> str:
    """The sysfs directory of block device *rdev*."""
    return os.path.realpath(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}")


def _partitions(rdev: int) -> list[tuple[str, int]]:
    """``(name, device number)`` of each partition of block device *rdev*."""
    base = _sysfs_dir(rdev)
    parts = []
    for entry in sorted(glob.glob(os.path.join(base, "*", "partition")), key=os.path.dirname):
        part_dir = os.path.dirname(entry)
        dev = _read(os.path.join(part_dir, "dev"))
        if dev is not None:
            parts.append((os.path.basename(part_dir), _devnum(dev)))
    return parts


def _holders(rdev: int) -> list[str]:
    """Names of the devices stacked on block device *rdev* (dm, md, bcache …)."""
    try:
        return sorted(os.listdir(os.path.join(_sysfs_dir(rdev), "holders")))
    except OSError:
        return []


def _exclusively_open(path: str) -> bool:
    """True if *path* cannot be opened with O_EXCL because someone holds it (EBUSY)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno == errno.EBUSY
    os.close(fd)
    return False


def _block_busy(path: str, rdev: int) -> str | None:
    """Why block device *rdev* (opened as *path*) is in use, as a predicate phrase."""
    mount = _mount_of_block(rdev)
    if mount is not None:
        return f"is mounted on {mount}"
    if _is_swap_block(rdev):
        return "is an active swap device"
    holders = _holders(rdev)
    if holders:
        return f"is held by {', '.join(holders)}"
    for name, part in _partitions(rdev):
        mount = _mount_of_block(part)
        if mount is not None:
            return f"has partition /dev/{name} mounted on {mount}"
        if _is_swap_block(part):
            return f"has partition /dev/{name} in use as swap"
        holders = _holders(part)
        if holders:
            return f"has partition /dev/{name} held by {', '.join(holders)}"
    if _exclusively_open(path):
        st = os.stat(path)
        who = hold.describe(hold.openers(st))
        return ("is busy: it cannot be opened exclusively (EBUSY)"
                + (f"; it is open by {who}" if who else ""))
    return None


def _opened_by(real: str, st: os.stat_result) -> str | None:
    """Who has the file or device *st* (at *real*) open -- a vvfs lock first -- as a predicate."""
    locked = not stat.S_ISBLK(st.st_mode) and hold.is_locked(real)
    who = hold.describe(hold.openers(st))
    if locked:
        return f"is in use by vvfs: {who or 'another process'} holds its device lock"
    if who:
        return f"is open by {who}"
    return None


def in_use(path: str) -> str | None:
    """A one-line reason why *path* cannot be claimed, or None if it is free.

    For a block device: mounted (itself or a partition), an active swap,
    held by a stacking driver (``holders`` in sysfs), the backing device of a
    loop device, or busy for an exclusive open. For a regular file: a mount
    point (bind mount), an active swap file, or the backing file of a loop
    device — and then whether that loop device is itself mounted or held.
    Either: locked by a vvfs process that serves it (:mod:`vvfs.io.hold`), or
    open in any process (named by pid and command, from ``/proc``).
    Raises :class:`ProbeError` if *path* is missing or of another type.
    """
    real, st = _stat_device(path)
    if stat.S_ISBLK(st.st_mode):
        reason = _block_busy(real, st.st_rdev)
        if reason is not None:
            return f"{path} {reason}"
        loops = _loops_backed_by(st)
        if loops:
            return f"{path} is the backing device of {loops[0]}"
        reason = _opened_by(real, st)
        return f"{path} {reason}" if reason else None
    mount = _mount_of_file(st)
    if mount is not None:
        return f"{path} is mounted on {mount}"
    if _is_swap_file(st):
        return f"{path} is an active swap file"
    loops = _loops_backed_by(st)
    for loop in loops:
        try:
            lst = os.stat(loop)
        except OSError:
            continue
        reason = _block_busy(loop, lst.st_rdev)
        if reason is not None:
            return f"{path} is attached to {loop}, which {reason}"
    if loops:
        return f"{path} is the backing file of {loops[0]}"
    reason = _opened_by(real, st)
    return f"{path} {reason}" if reason else None
