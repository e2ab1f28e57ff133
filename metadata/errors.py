"""Errors raised by the metadata package.

Every error that comes from data read off media or out of the catalog is a
named exception carrying the device and byte offset it concerns, never an
``assert`` (asserts vanish under ``python -O``).
"""

from __future__ import annotations

#: Exit statuses of the command lines (``man/vv.8``); each error class says its own.
EXIT_OK = 0
EXIT_FAILED = 1  # the request was refused or failed; nothing changed
EXIT_USAGE = 2  # bad command line (click's own status for usage errors)
EXIT_IO = 3  # a device could not be read or written, or its media is damaged
EXIT_LOCKED = 4  # another vv command or a running node holds the state directory


class VVError(Exception):
    """Base of every vvfs error that a user may see as one line.

    ``exit_code`` is the status a command line exits with, ``http_status``
    what the node's admin API answers; subclasses set their own.  An
    instance may carry its own ``exit_code`` (a refusal relayed from a node).
    """

    exit_code: int = EXIT_FAILED
    http_status: int = 409


class ConfigError(VVError):
    """A pool configuration is malformed or violates an invariant."""


class MediaError(VVError):
    """Something read from a device is not what the format says it must be.

    *device* names the device (path or uuid) and *offset* the byte offset of
    the structure that is wrong, so that the message can be acted on.
    """

    exit_code = EXIT_IO
    http_status = 500

    def __init__(self, device: str, offset: int, what: str) -> None:
        self.device = device
        self.offset = offset
        self.what = what
        super().__init__(f"{device} at byte {offset}: {what}")


class ChecksumError(MediaError):
    """A structure's checksum does not match its bytes."""


class BadMagicError(MediaError):
    """A structure does not start with the magic the format expects."""


class UnsupportedFeatureError(MediaError):
    """The media uses a format version or incompatible feature we do not know."""


class NoValidGenerationError(VVError):
    """No generation of a pool's configuration is valid and complete."""
