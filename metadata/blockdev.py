"""The device interface that the on-media format is read and written through.

Everything that reads or writes a label or a metadata area does it through
:class:`BlockDevice`, so that the node's I/O engine, the fault-injecting
device of the tests and a plain file all fit the same code.  This module
holds only the protocol and its error; the device I/O that implements it
for files and block devices is :mod:`vvfs.io.filedev`.
"""

from __future__ import annotations

from typing import Protocol

from .errors import EXIT_IO, VVError


class DeviceIOError(VVError):
    """A read or write of a backing device failed."""

    exit_code = EXIT_IO
    http_status = 500

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
