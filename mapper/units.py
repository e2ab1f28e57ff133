"""Byte sizes for people: ``human_size`` prints them, ``parse_size`` reads them.

All multiples are binary (1 K = 1024 bytes) whatever the spelling: ``4k``,
``4K``, ``4KB`` and ``4KiB`` all mean 4096 bytes, because that is what a
storage administrator typing ``--size 10G`` expects of a disk-like tool.
"""

from __future__ import annotations

import re
from fractions import Fraction

from metadata.errors import VVError

__all__ = ["SizeError", "human_size", "parse_size"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*([kmgtpe]?)(i?b)?$", re.IGNORECASE)


class SizeError(VVError, ValueError):
    """A size given by the user cannot be read."""


def human_size(n: int) -> str:
    """Format *n* bytes: ``512 B``, ``4.0 KiB``, ``10.0 GiB``."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n < 1024:
        return f"{sign}{n} B"
    power = 0
    while power + 1 < len(_UNITS) and n >= 1024 ** (power + 1):
        power += 1
    return f"{sign}{n / 1024**power:.1f} {_UNITS[power]}"


def parse_size(text: str) -> int:
    """Read a size such as ``10G``, ``10GiB``, ``512M``, ``4k`` or ``12345``.

    A bare number is bytes.  Suffixes are case-insensitive binary multiples
    (K, M, G, T, P, E, optionally followed by ``B`` or ``iB``).  A fraction
    (``1.5G``) is accepted when it comes to a whole number of bytes.
    """
    match = _SIZE_RE.match(text.strip())
    if match is None:
        raise SizeError(
            f"invalid size {text!r}: use a number of bytes or a number with a suffix"
            " K, M, G, T or P (binary: 1K = 1024), e.g. 512M or 10G"
        )
    number, prefix, suffix = match.groups()
    if not prefix and suffix and suffix.lower() == "ib":
        raise SizeError(f"invalid size {text!r}: 'iB' needs a multiple before it, e.g. 10GiB")
    value = Fraction(number) * 1024 ** _POWERS[prefix.lower()]
    if value.denominator != 1:
        raise SizeError(f"invalid size {text!r}: not a whole number of bytes")
    return int(value)
