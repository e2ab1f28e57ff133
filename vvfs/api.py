"""The Python API of vvfs: every ``vv`` command is one call of :class:`Manager`.

``Manager(state_dir)`` works on one host's state directory: with no node
running it opens the pools from their media and commits changes to them
itself; a running node's admin socket serves the same calls
(:mod:`vvfs.node.client`).  See ``docs/api.md``.
"""

from __future__ import annotations

from vvfs.control.manager import Manager, OpenPool, PoolReport, PoolShow
from vvfs.errors import ApiError, LockedError, NotFoundError, RefusedError

__all__ = ["ApiError", "LockedError", "Manager", "NotFoundError", "OpenPool", "PoolReport",
           "PoolShow", "RefusedError"]
