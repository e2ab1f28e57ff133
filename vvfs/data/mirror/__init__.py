"""Mirrors in the data path: degraded mode, the dirty log, read policies, resync.

One :class:`PoolMirror` per pool serves the reads, writes and flushes of its
*mirrored* volumes (``VolumeIO`` hands them over; linear and striped
volumes keep their own path) and owns the pool's dirty logs
(:class:`DirtyLog`, one per open device, format in
:mod:`metadata.dirtylog`), the region gate and the resync engine.

Where things are (each module's docstring says how its part works, which
locks it takes and what a cancellation leaves behind):

* :mod:`.core` -- the state every part shares; device states (ok,
  resyncing, failed), failing a device and recording the failure, flushes;
* :mod:`.log` -- the dirty log of one device in the node (:class:`DirtyLog`);
* :mod:`.gate` -- the region gate (:class:`RegionGate`): the regions a
  write is in before its bits are set and its data goes out, and those a
  resync holds alone;
* :mod:`.writes` -- mirrored writes: mark, write every leg, degrade a
  failing leg, suspect regions;
* :mod:`.reads` -- the read policies (balanced, primary, first);
* :mod:`.verify` -- every read checked by the block checksums, a bad copy
  healed from another leg (ZFS's self-healing read);
* :mod:`.clean` -- the cleaner, clearing the bits of idle regions;
* :mod:`.resync` -- the resync engine (:class:`ResyncJob`, throttling);
* :mod:`.calls` -- device calls: pieces planned into vectored calls, run
  concurrently;
* :mod:`.pool` -- :class:`PoolMirror`, composed of the above.

Concurrency: everything runs on the trio thread; statements between two
awaits are atomic.  Cancellation: device calls are never abandoned; a
cancelled write may have reached some legs (its bits stay set); a cancelled
resync leaves bits set and is simply run again.
"""

from vvfs.data.mirror.clean import CLEAN_IDLE, FORCE_FLUSH_AFTER
from vvfs.data.mirror.core import (
    FAILURE_ERRNOS,
    VANISHED_ERRNOS,
    Emit,
    FailedDevice,
    MirrorStats,
    is_failure,
)
from vvfs.data.mirror.gate import Key, RegionGate
from vvfs.data.mirror.log import DirtyLog, LogStats, load_log
from vvfs.data.mirror.pool import PoolMirror
from vvfs.data.mirror.reads import FIRST_MAX_IN_FLIGHT
from vvfs.data.mirror.resync import PROGRESS_EVERY, QUIET_POLL, RESYNC_BATCH, ResyncJob, Throttle
from vvfs.data.mirror.writes import MARK_AHEAD

__all__ = [
    "CLEAN_IDLE",
    "FAILURE_ERRNOS",
    "FIRST_MAX_IN_FLIGHT",
    "FORCE_FLUSH_AFTER",
    "MARK_AHEAD",
    "PROGRESS_EVERY",
    "QUIET_POLL",
    "RESYNC_BATCH",
    "VANISHED_ERRNOS",
    "DirtyLog",
    "Emit",
    "FailedDevice",
    "Key",
    "LogStats",
    "MirrorStats",
    "PoolMirror",
    "RegionGate",
    "ResyncJob",
    "Throttle",
    "is_failure",
    "load_log",
]
