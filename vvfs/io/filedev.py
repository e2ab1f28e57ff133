"""Plain device I/O: a block device or regular file behind :class:`~metadata.blockdev.BlockDevice`.

:class:`FileDevice` is what the management side, vvfsck and discovery read
and write labels and metadata areas through (the node's data path uses
:class:`vvfs.io.devio.DataDevice`).  :func:`zero_range` makes a byte range
of a device read as zeros as cheaply as the device allows (a hole punched
in a file, ``BLKZEROOUT`` on a block device), for extents newly given to a
mirrored volume.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import stat
import struct
from typing import Self

from metadata.blockdev import BlockDevice, DeviceIOError

log = logging.getLogger(__name__)

# <linux/falloc.h> and <linux/fs.h>
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
BLKZEROOUT = 0x127F  # _IO(0x12, 127): arg -> u64[2] {start, length}, 512-byte aligned
#: Bytes per write when zeros have to be written out.
ZERO_CHUNK = 8 << 20
#: errnos by which a device or file system says "not this way", not "failed".
_REFUSED = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS})

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = getattr(_libc, "fallocate64", _libc.fallocate)
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


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

    def zero(self, offset: int, length: int) -> str:
        """Make *length* bytes from *offset* read as zeros; return how it was done.

        A regular file gets a hole punched (``"punch-hole"``: it stays
        sparse); a block device gets ``BLKZEROOUT`` (``"zeroout"``: a loop
        device over a file turns it into a fallocate of that file, a disk may
        unmap the blocks), or else a punched hole.  Only when the device
        refuses these does it write zeros, :data:`ZERO_CHUNK` bytes at a time
        (``"write"``), and says so in the log.  The kernel drops the page
        cache of the range either way; nothing is durable before :meth:`flush`.
        """
        if length <= 0:
            return "nothing"
        ways = [("zeroout", self._zeroout)] if self.is_block else []
        ways.append(("punch-hole", self._punch_hole))
        refusals = []
        for how, call in ways:
            try:
                call(offset, length)
                return how
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise DeviceIOError(self.name, offset, f"{how} failed: {exc.strerror}",
                                        exc.errno) from None
                refusals.append(f"{how}: {exc.strerror}")
        log.warning("%s: cannot zero without writing (%s); writing %d bytes of zeros at"
                    " byte %d", self.name, "; ".join(refusals), length, offset)
        chunk = bytes(min(ZERO_CHUNK, length))
        for pos in range(0, length, len(chunk)):
            self.pwrite(chunk[:min(len(chunk), length - pos)], offset + pos)
        return "write"

    def _zeroout(self, offset: int, length: int) -> None:
        fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("=QQ", offset, length))

    def _punch_hole(self, offset: int, length: int) -> None:
        if _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def zero_range(dev: BlockDevice, offset: int, length: int) -> str:
    """Make a byte range of *dev* read as zeros (see :meth:`FileDevice.zero`).

    A device that is not a :class:`FileDevice` (a test's in-memory or
    fault-injecting device) gets zeros written.
    """
    if isinstance(dev, FileDevice):
        return dev.zero(offset, length)
    chunk = bytes(min(ZERO_CHUNK, max(length, 0)))
    for pos in range(0, length, ZERO_CHUNK):
        dev.pwrite(chunk[:min(ZERO_CHUNK, length - pos)], offset + pos)
    return "write"
