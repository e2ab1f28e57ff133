"""`mount.vvfs`: the mount(8) helper for `mount -t fuse.vvfs` (being built)."""

from __future__ import annotations

import sys


def main() -> None:
    print("mount.vvfs: not yet implemented", file=sys.stderr)
    sys.exit(1)
