"""Small helpers shared by the tests: sparse files, a flipped bit, a crashing device."""

from __future__ import annotations

import os
from pathlib import Path

from metadata.blockdev import BlockDevice, DeviceIOError


def sparse_file(path: Path | str, size: int) -> str:
    """Create a sparse file of *size* bytes and return its path as a string."""
    with open(path, "wb") as f:
        f.truncate(size)
    return os.fspath(path)


def flip(path: str, offset: int, mask: int = 0x40) -> None:
    """Change one byte of a file (it differs afterwards), written through to the file.

    Straight to the backing file, as rot would: whoever reads it next (a
    node with O_DIRECT, vvfsck) sees the changed byte.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        old = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([old[0] ^ mask]), offset)
        os.fsync(fd)
    finally:
        os.close(fd)


class CrashAfterWrites:
    """A device whose writes stop taking effect after a budget: a crash.

    ``shared_budget`` is a one-element list shared by several devices, so
    that "crash after the k-th write of the whole commit" can be expressed;
    once it reaches zero every later write raises DeviceIOError without
    touching the media, as if the machine had stopped.  With ``limit=None``
    and no budget it only counts.
    """

    def __init__(self, inner: BlockDevice, limit: int | None = None,
                 shared_budget: list[int] | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.budget = shared_budget if shared_budget is not None else (
            [limit] if limit is not None else None)
        self.writes = 0

    def pread(self, length: int, offset: int) -> bytes:
        return self.inner.pread(length, offset)

    def pwrite(self, data: bytes, offset: int) -> None:
        if self.budget is not None:
            if self.budget[0] <= 0:
                raise DeviceIOError(self.name, offset, "crashed (injected)")
            self.budget[0] -= 1
        self.writes += 1
        self.inner.pwrite(data, offset)

    def flush(self) -> None:
        if self.budget is not None and self.budget[0] <= 0:
            raise DeviceIOError(self.name, 0, "crashed (injected)")
        self.inner.flush()

    def size(self) -> int:
        return self.inner.size()

    def close(self) -> None:
        self.inner.close()
