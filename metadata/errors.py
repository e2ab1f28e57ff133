"""Errors raised by the metadata package.

Every error that comes from data read off media or out of the catalog is a
named exception carrying the device and byte offset it concerns, never an
``assert`` (asserts vanish under ``python -O``).
"""

from __future__ import annotations


class VVError(Exception):
    """Base of every vvfs error that a user may see as one line."""


class ConfigError(VVError):
    """A pool configuration is malformed or violates an invariant."""


class MediaError(VVError):
    """Something read from a device is not what the format says it must be.

    *device* names the device (path or uuid) and *offset* the byte offset of
    the structure that is wrong, so that the message can be acted on.
    """

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
