"""`vvfsck`: offline check and repair of a vvfs pool (being built)."""

from __future__ import annotations

import sys


def main() -> None:
    print("vvfsck: not yet implemented", file=sys.stderr)
    sys.exit(4)
