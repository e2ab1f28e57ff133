"""Plain device I/O: a block device or regular file behind :class:`~metadata.blockdev.BlockDevice`.

:class:`FileDevice` is what the management side, vvfsck and discovery read
and write labels and metadata areas through (the node's data path uses
:class:`vvfs.io.devio.DataDevice`).  :func:`zero_fd` makes a byte range of
a device read as zeros as cheaply as the device allows; both classes zero
through it (:meth:`FileDevice.zero`, :meth:`~vvfs.io.devio.DataDevice.zero`),
for extents newly given to a volume and for a volume file's fallocate.

The ways, fastest first
-----------------------
===========  ===================  ==========================================
device       *keep_allocation*    tried in order
===========  ===================  ==========================================
file         False (discard)      ``punch-hole``: FALLOC_FL_PUNCH_HOLE, the
                                  range becomes a hole (the file stays sparse)
file         True (zero)          ``zero-range``: FALLOC_FL_ZERO_RANGE (the
                                  blocks stay allocated, as unwritten
                                  extents), then ``punch-hole``
block        False (discard)      ``punch-hole``: fallocate PUNCH_HOLE on the
                                  block device, which is WRITE_ZEROES with
                                  unmapping allowed and no fallback (a loop
                                  device punches a hole in its file, a disk
                                  unmaps or zeroes in place), then
                                  ``zeroout``
block        True (zero)          ``zeroout``: BLKZEROOUT, WRITE_ZEROES
                                  without unmapping (a loop device turns it
                                  into ZERO_RANGE of its file); where the
                                  device has no WRITE_ZEROES the kernel
                                  writes zero pages itself
===========  ===================  ==========================================

Only when the device refuses every way (EOPNOTSUPP and the like) are zeros
written from here, :data:`ZERO_CHUNK` bytes at a time (``"write"``), and
the log says so.  On a block device the edges of a range that do not fall
on :data:`ZERO_ALIGN` are written as zeros (the primitives want whole
logical blocks).  Every way drops the kernel's cached pages of the range
(of this file, or of this block device); nothing is durable before a flush.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import stat
import struct
from collections.abc import Callable
from typing import Self

from metadata.blockdev import BlockDevice, DeviceIOError

log = logging.getLogger(__name__)

# <linux/falloc.h> and <linux/fs.h>
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
BLKZEROOUT = 0x127F  # _IO(0x12, 127): arg -> u64[2] {start, length}, 512-byte aligned
#: Bytes per write when zeros have to be written out.
ZERO_CHUNK = 8 << 20
#: Granularity of the fast ways on a block device (a logical block of up to a page).
ZERO_ALIGN = 4096
#: errnos by which a device or file system says "not this way", not "failed".
_REFUSED = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS})

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = getattr(_libc, "fallocate64", _libc.fallocate)
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2); raises OSError."""
    if _fallocate(fd, mode, offset, length):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _punch_hole(fd: int, offset: int, length: int) -> None:
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)


def _zero_range(fd: int, offset: int, length: int) -> None:
    fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)


def _zeroout(fd: int, offset: int, length: int) -> None:
    fcntl.ioctl(fd, BLKZEROOUT, struct.pack("=QQ", offset, length))


#: name -> call, for every way of the table in the module docstring
WAYS: dict[str, Callable[[int, int, int], None]] = {
    "punch-hole": _punch_hole, "zero-range": _zero_range, "zeroout": _zeroout}


def ways_for(is_block: bool, keep_allocation: bool) -> list[str]:
    """The ways to try, in order (the table of the module docstring)."""
    if is_block:
        return ["zeroout"] if keep_allocation else ["punch-hole", "zeroout"]
    return ["zero-range", "punch-hole"] if keep_allocation else ["punch-hole"]


def zero_fd(fd: int, name: str, is_block: bool, offset: int, length: int, *,
            keep_allocation: bool = False) -> str:
    """Make *length* bytes from *offset* of the device open as *fd* read as zeros.

    Returns the way the bulk of the range was zeroed (the module
    docstring): ``"punch-hole"``, ``"zero-range"``, ``"zeroout"``,
    ``"write"``, or ``"nothing"`` for an empty range.  Raises
    DeviceIOError naming *name* and the offset if the device fails.
    """
    if length <= 0:
        return "nothing"
    end = offset + length
    if is_block:  # whole logical blocks for the fast ways, the edges written
        first = min(end, offset + -offset % ZERO_ALIGN)
        last = max(first, end - end % ZERO_ALIGN)
        write_zeros(fd, name, offset, first - offset)
        write_zeros(fd, name, last, end - last)
        offset, length = first, last - first
        if length <= 0:
            return "write"
    refusals = []
    for how in ways_for(is_block, keep_allocation):
        try:
            WAYS[how](fd, offset, length)
            return how
        except OSError as exc:
            if exc.errno not in _REFUSED:
                raise DeviceIOError(name, offset, f"{how} failed: {exc.strerror}",
                                    exc.errno) from None
            refusals.append(f"{how}: {exc.strerror}")
    log.warning("%s: cannot zero without writing (%s); writing %d bytes of zeros at"
                " byte %d", name, "; ".join(refusals), length, offset)
    write_zeros(fd, name, offset, length)
    return "write"


def write_zeros(fd: int, name: str, offset: int, length: int) -> None:
    """Write *length* zero bytes at *offset*, :data:`ZERO_CHUNK` at a time."""
    chunk = bytes(min(ZERO_CHUNK, max(length, 0)))
    pos = 0
    try:
        while pos < length:
            pos += os.pwrite(fd, chunk[:min(len(chunk), length - pos)], offset + pos)
    except OSError as exc:
        raise DeviceIOError(name, offset + pos, f"write failed: {exc.strerror}",
                            exc.errno) from None


class FileDevice:
    """A block device or regular file opened read-write (or read-only)."""

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self.name = path
        self.path = path
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        try:
            self.fd = os.open(path, flags)
        except OSError as exc:
            raise DeviceIOError(path, 0, f"cannot open: {exc.strerror}", exc.errno) from None
        st = os.fstat(self.fd)
        self.is_block = stat.S_ISBLK(st.st_mode)

    def pread(self, length: int, offset: int) -> bytes:
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as exc:
            raise DeviceIOError(self.name, offset, f"read failed: {exc.strerror}", exc.errno) from None
        if len(data) != length:
            raise DeviceIOError(
                self.name, offset, f"short read: {len(data)} of {length} bytes (device too small?)"
            )
        return data

    def pwrite(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        pos = 0
        try:
            while pos < len(view):
                pos += os.pwrite(self.fd, view[pos:], offset + pos)
        except OSError as exc:
            raise DeviceIOError(
                self.name, offset + pos, f"write failed: {exc.strerror}", exc.errno
            ) from None

    def flush(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise DeviceIOError(self.name, 0, f"flush failed: {exc.strerror}", exc.errno) from None

    def size(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_END)

    def zero(self, offset: int, length: int, *, keep_allocation: bool = False) -> str:
        """Make *length* bytes from *offset* read as zeros; return how (:func:`zero_fd`)."""
        return zero_fd(self.fd, self.name, self.is_block, offset, length,
                       keep_allocation=keep_allocation)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def zero_range(dev: BlockDevice, offset: int, length: int) -> str:
    """Make a byte range of *dev* read as zeros (see :func:`zero_fd`), allocation not kept.

    A device that is not a :class:`FileDevice` (a test's in-memory or
    fault-injecting device) gets zeros written.
    """
    if isinstance(dev, FileDevice):
        return dev.zero(offset, length)
    chunk = bytes(min(ZERO_CHUNK, max(length, 0)))
    for pos in range(0, length, ZERO_CHUNK):
        dev.pwrite(chunk[:min(ZERO_CHUNK, length - pos)], offset + pos)
    return "write"
