"""The device interface that the on-media format is read and written through.

Everything that reads or writes a label or a metadata area does it through
:class:`BlockDevice`, so that the node's I/O engine, the fault-injecting
device of the tests and a plain file all fit the same code.
"""

from __future__ import annotations

import os
import stat
from typing import Protocol

from .errors import VVError


class DeviceIOError(VVError):
    """A read or write of a backing device failed."""

    def __init__(self, device: str, offset: int, what: str, errno: int | None = None) -> None:
        self.device = device
        self.offset = offset
        self.errno = errno
        super().__init__(f"{device} at byte {offset}: {what}")


class BlockDevice(Protocol):
    """What the format code needs from a device.

    ``pread`` returns exactly *length* bytes or raises; ``pwrite`` writes all
    of *data* or raises; ``flush`` returns once everything written before it
    is on stable storage.
    """

    name: str

    def pread(self, length: int, offset: int) -> bytes: ...

    def pwrite(self, data: bytes, offset: int) -> None: ...

    def flush(self) -> None: ...

    def size(self) -> int: ...

    def close(self) -> None: ...


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

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FileDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
