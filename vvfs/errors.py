"""Every error of vvfs, each carrying the exit status and HTTP status it means.

A user mistake or a refused request is one of these: the command lines print
its message as one line and exit with ``exit_code``; the node's admin API
answers ``http_status`` with ``{"error", "type", "exit_code"}``.  Nothing
computes either from the class elsewhere (borg's ``exit_mcode`` style).

The base class and the errors of the on-media format live in
:mod:`metadata.errors` (``metadata`` imports nothing of ours) and carry their
statuses there; this module re-exports them beside the rest, so that one
import names every error.

Exit status of ``vv`` (``man/vv.8``): :data:`EXIT_OK` 0, :data:`EXIT_FAILED`
1 (refused or failed; nothing changed), :data:`EXIT_USAGE` 2 (bad command
line), :data:`EXIT_IO` 3 (a device could not be read or written, or its
media is damaged), :data:`EXIT_LOCKED` 4 (another command or a running
node holds the state directory).
"""

from __future__ import annotations

import errno

from mapper.layout import ResolveError
from mapper.move import MoveError
from mapper.placement import PlacementError
from mapper.units import SizeError
from metadata.blockdev import DeviceIOError
from metadata.catalog import CatalogError
from metadata.errors import (
    EXIT_FAILED,
    EXIT_IO,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_USAGE,
    BadMagicError,
    ChecksumError,
    ConfigError,
    MediaError,
    NoValidGenerationError,
    UnsupportedFeatureError,
    VVError,
)
from metadata.media import CommitError
from metadata.model import UnsupportedConfigError

__all__ = [
    "EXIT_FAILED", "EXIT_IO", "EXIT_LOCKED", "EXIT_OK", "EXIT_USAGE",
    "AdminError", "ApiError", "ArgumentError", "BadMagicError", "BlockChecksumError", "CatalogError",
    "ChecksumError", "CodecError", "CommitError", "ConfigError", "DeviceIOError",
    "DivergedError", "DriverProtocolError", "FsckError", "JobError",
    "LockedError", "MediaError", "MissingError", "MoveError", "NoSpaceError",
    "NoValidGenerationError", "NodeConnectionError", "NodeError", "NotFoundError",
    "PlacementError", "ProbeError", "RefusedError", "RemoteError", "ResolveError",
    "ResyncError", "SizeError", "StaleDeviceError", "StateError", "UnsupportedConfigError",
    "UnsupportedFeatureError", "VVError", "WrongDeviceError",
]


# ---------------------------------------------------------------------------
# management (vvfs.control)


class ApiError(VVError):
    """A request that cannot be carried out; the message says why."""


class NotFoundError(ApiError):
    """A pool, device, volume or path named in a request does not exist."""

    http_status = 404


class RefusedError(ApiError):
    """The request is understood but refused (in use, signature, no space ...)."""


class StateError(VVError):
    """The host's state directory or its vvfs.yaml cannot be used."""


class LockedError(VVError):
    """Another vv command or a running node holds the state directory's lock."""

    exit_code = EXIT_LOCKED
    http_status = 423


class ResyncError(VVError):
    """A resync, return or replacement cannot be done as asked."""


class MissingError(ResyncError):
    """A mirror leg was not found when its pool was opened (a vanished device: ENOENT)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOENT


class DivergedError(ResyncError):
    """A failed device was written apart from the pool (a split brain): not brought back as is."""


# ---------------------------------------------------------------------------
# devices and the data path (vvfs.io, vvfs.data)


class ProbeError(VVError):
    """A device cannot be probed: it is missing, of the wrong type, or a tool failed."""


class WrongDeviceError(DeviceIOError):
    """A path does not lead to the device expected: no label, or another device's or pool's.

    A :class:`DeviceIOError` with ENXIO, so that the data path treats it as a
    path that leads nowhere: it is never read or written, another path is
    tried, and a device with no path left fails as vanished.
    """

    def __init__(self, path: str, what: str, err: int = errno.ENXIO) -> None:
        super().__init__(path, 0, what, err)


class StaleDeviceError(WrongDeviceError):
    """The device's newest generation is older than the one it must hold (a rolled-back copy).

    EIO, not ENXIO: the device is there, but it missed writes that no dirty
    log can name; it comes back only rebuilt whole.
    """

    def __init__(self, path: str, newest: int | None, wanted: int) -> None:
        self.newest = newest
        self.wanted = wanted
        held = f"generation {newest}" if newest is not None else "no generation"
        super().__init__(path, f"stale: its newest configuration is {held}, older than the"
                               f" pool's {wanted} (a rolled-back copy?)", errno.EIO)


class NoSpaceError(VVError):
    """A write starts at or beyond the end of the volume."""


class BlockChecksumError(DeviceIOError):
    """No copy of a mirrored volume's block matches its stored crc32c: the read fails (EIO).

    Names the device and byte of the copy that was read first; it fails no
    device (vvfs.data.mirror.core.is_failure): the devices answered.
    """

    def __init__(self, device: str, offset: int, what: str) -> None:
        super().__init__(device, offset, what, errno.EIO)


# ---------------------------------------------------------------------------
# the node (vvfs.node)


class NodeError(VVError):
    """The node cannot start (mount point, pools, FUSE)."""


class JobError(VVError):
    """Background work cannot be started or reached."""


class CodecError(VVError):
    """A value cannot be encoded, or a document is not a valid encoding."""


class ArgumentError(VVError):
    """The arguments of an admin API call do not have the types the method declares."""

    http_status = 400


class DriverProtocolError(VVError):
    """A request a native driver thread read is not a FUSE request (vvfs/driver)."""


class AdminError(VVError):
    """The admin socket cannot be served."""


class NodeConnectionError(VVError):
    """The node could not be reached, or answered something unreadable."""


class RemoteError(VVError):
    """A refusal by the node whose error class this client does not know."""


# ---------------------------------------------------------------------------
# the offline checker (vvfsck)


class FsckError(VVError):
    """vvfsck cannot run at all (exit status 4): nothing was checked or changed."""
