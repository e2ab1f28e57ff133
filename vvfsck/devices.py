"""Where the devices of a pass come from: paths (the command line) or device objects.

Every pass opens its devices afresh through a :class:`DeviceSet` and closes
them afterwards, so a repair is read back from the media by the next pass.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Protocol

from metadata.blockdev import BlockDevice, DeviceIOError
from vvfs.errors import FsckError
from vvfs.io.filedev import FileDevice

log = logging.getLogger(__name__)


class DeviceSet(Protocol):
    """Opens the devices of one pass and closes them afterwards."""

    def open(self) -> list[BlockDevice]: ...

    def close(self, devs: list[BlockDevice]) -> None: ...

    def only(self, names: set[str], writable: bool) -> DeviceSet: ...


class PathDevices:
    """Devices by path, opened afresh for every pass.

    With *strict* (paths the user named), a path that cannot be opened is an
    operational error; otherwise (search paths) it is skipped.
    """

    def __init__(self, paths: Sequence[str], *, writable: bool = False,
                 strict: bool = True) -> None:
        self.paths = list(dict.fromkeys(paths))
        self.writable = writable
        self.strict = strict

    def open(self) -> list[BlockDevice]:
        devs: list[BlockDevice] = []
        seen: set[tuple[int, int]] = set()
        for p in self.paths:
            ident = _identity(p)
            if ident is not None and ident in seen:
                continue
            try:
                devs.append(FileDevice(p, readonly=not self.writable))
            except DeviceIOError as exc:
                if self.strict:
                    self.close(devs)
                    raise FsckError(str(exc)) from None
                log.debug("skipping %s: %s", p, exc)
                continue
            if ident is not None:
                seen.add(ident)
        return devs

    def close(self, devs: list[BlockDevice]) -> None:
        for d in devs:
            d.close()

    def only(self, names: set[str], writable: bool) -> PathDevices:
        return PathDevices([p for p in self.paths if p in names], writable=writable,
                           strict=self.strict)


class GivenDevices:
    """Device objects handed in by a program or a test; never closed here."""

    def __init__(self, devs: Sequence[BlockDevice]) -> None:
        self.devs = list(devs)

    def open(self) -> list[BlockDevice]:
        return list(self.devs)

    def close(self, devs: list[BlockDevice]) -> None:
        pass

    def only(self, names: set[str], writable: bool) -> GivenDevices:
        return GivenDevices([d for d in self.devs if d.name in names])


def _identity(path: str) -> tuple[int, int] | None:
    """The same file or block device reached by two paths is read once."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st.st_rdev == 0 else (-1, st.st_rdev)
