"""The Python API of vvfs: every ``vv`` command is one call of :class:`Manager`.

``Manager(state_dir)`` works on one host's state directory: with no node
running it opens the pools from their media and commits changes to them
itself, and runs resyncs with the offline runtime (:mod:`vvfs.data.offline`);
a running node's admin socket serves the same calls
(:mod:`vvfs.node.client`).  This module is where management
(:mod:`vvfs.control`, which never imports the data path) meets the data
path's resync engine.  See ``docs/api.md``.
"""

from __future__ import annotations

from vvfs.control import manager as _control
from vvfs.control.manager import OpenPool, PoolReport, PoolShow
from vvfs.control.ports import Ports
from vvfs.data.offline import OfflineResync
from vvfs.errors import ApiError, LockedError, NotFoundError, RefusedError

__all__ = ["ApiError", "LockedError", "Manager", "NotFoundError", "OpenPool", "PoolReport",
           "PoolShow", "Ports", "RefusedError"]


class Manager(_control.Manager):
    """:class:`vvfs.control.manager.Manager` with the offline runtime unless given *ports*."""

    def __init__(self, state_dir: str | None = None, *, ports: Ports | None = None) -> None:
        super().__init__(state_dir, ports=ports or Ports(resync=OfflineResync()))
