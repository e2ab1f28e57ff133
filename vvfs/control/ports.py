"""What management needs of the runtime: typed ports that the runtime hands in.

Management (:mod:`vvfs.control`) runs in a worker thread of the node, or in a
``vv`` command when no node serves the pools.  It never imports the node,
the data path or pyfuse3 (the import contracts in ``setup.cfg``): what it
needs of them comes in through these Protocols, given to the constructor of
:class:`~vvfs.control.manager.Manager` as one :class:`Ports`.

* :class:`HostPort` -- the node's mount: which volumes are open, and what to
  apply once a call has committed.
* :class:`JobsPort` -- the node's background work: moves, scrubs, the
  devices that new extents are zeroed through and the checksum store that
  new mirror extents are filled through.
* :class:`MirrorsPort` -- the node's mirror service: devices failed or busy
  in the data path, failing one now, marking ranges dirty, resyncs, the
  live state of paths.
* :class:`ResyncEngine` -- the offline runtime: runs a resync on a pool's
  devices when no node serves it (:mod:`vvfs.data.offline`).

Every method is called on the management thread; an implementation that
lives on another thread (the node's trio thread) crosses over itself.  A
port that is ``None`` means "no node": the offline behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from metadata.model import DeviceUUID, Pool

#: A byte range of one device: (device uuid, first byte, bytes)
Range = tuple[str, int, int]
#: Checksum entries to set: (device, device byte of the first data block, blocks)
Blocks = tuple[DeviceUUID, int, int]
#: What a resync reports as it goes and when it ends (``ResyncJob.progress``).
Progress = dict[str, Any]
#: Records an event: (kind, severity, object, message).
Emit = Callable[[str, str, str, str], None]


class HostPort(Protocol):
    """The node's mount, as management sees it."""

    def open_volumes(self, pool_uuid: str) -> set[str]:
        """Names of the pool's volumes open now; opens wait until the call ends."""
        ...

    def changed(self, pool_uuid: str, pool: Pool | None) -> None:
        """A configuration was committed (None: the pool was exported or destroyed)."""
        ...

    def mounted_at(self, pool_uuid: str) -> str | None:
        """The mount point where the node serves the pool now, or None."""
        ...


class JobsPort(Protocol):
    """The node's background work (:class:`vvfs.node.jobs.Jobs`)."""

    #: False when the node runs without write guards (a benchmark switch): no moves
    guards_enabled: bool

    def note_started(self, op_id: str) -> None:
        """A move recorded by this node: copy from the start, nothing to verify."""
        ...

    def stop_move(self, pool_uuid: str) -> None:
        """Stop the pool's move and its write shadow; wait for the writes that carry it."""
        ...

    def restart_move(self, pool_uuid: str) -> None:
        """Start the pool's recorded move again (after an abort whose commit failed)."""
        ...

    def move_progress(self, pool_uuid: str) -> dict[str, Any] | None:
        """The live progress of the pool's move task, or None."""
        ...

    def emit(self, pool_uuid: str, kind: str, severity: str, obj: str, message: str) -> None:
        """Record an event through the node's event queue."""
        ...

    def start_scrub(self, pool_uuid: str, volume_uuid: str, repair: bool) -> dict[str, Any]:
        """Start a scrub of one volume; its status at once."""
        ...

    def scrub_status(self, pool_uuid: str, volume_uuid: str) -> dict[str, Any] | None:
        """The status of the volume's last scrub since the node started, or None."""
        ...

    def fill_checksums(self, pool_uuid: str, todo: list[Blocks], value: int) -> list[Blocks]:
        """Set the entries of *todo* to *value* in the node's store; return what it does not cover."""
        ...

    def zero_ranges(self, pool_uuid: str, ranges: list[Range]) -> list[Range]:
        """Zero *ranges* through the node's open devices and flush them; return the others."""
        ...


class MirrorsPort(Protocol):
    """The node's mirror service (:class:`vvfs.node.mirrors.Mirrors`)."""

    def is_failed(self, pool_uuid: str, device: str) -> bool:
        """Has *device* failed in the data path?"""
        ...

    def failure_of(self, pool_uuid: str, device: str) -> str:
        """Why *device* failed in the data path: "vanished" or "error"."""
        ...

    def is_busy(self, pool_uuid: str, device: str) -> bool:
        """Is *device* resyncing or about to be brought back?"""
        ...

    def fail_now(self, pool_uuid: str, device: str, reason: str) -> bool:
        """Take *device* out of the data path now; False if it was out already."""
        ...

    def mark_ranges(self, pool_uuid: str, ranges: list[Range]) -> int:
        """Set the dirty bits of *ranges* in the devices' logs; how many regions."""
        ...

    def start_resync(self, pool_uuid: str, rate: int | None) -> dict[str, Any]:
        """Resync the pool's dirty regions now; the job's progress."""
        ...

    def status(self, pool_uuid: str) -> dict[str, Any]:
        """Resync jobs, dirty regions per device, failed and resyncing devices."""
        ...

    def device_paths(self, pool_uuid: str, device: str) -> list[dict[str, str]] | None:
        """The live state of the device's paths, or None if it is not open."""
        ...

    def use_paths(self, pool_uuid: str, device: str, paths: list[str]
                  ) -> list[dict[str, str]] | None:
        """Reach the open device by *paths* only, now (off a removed path); as device_paths."""
        ...


class ResyncEngine(Protocol):
    """Runs a resync with no node (:class:`vvfs.data.offline.OfflineResync`)."""

    def run(self, pool: Pool, paths: dict[str, str], targets: set[str], rate: int | None,
            kind: str, emit: Emit, progress: Callable[[Progress], None] | None) -> Progress:
        """Resync *pool* on the devices at *paths* (bringing back *targets*); its progress."""
        ...


@dataclass
class Ports:
    """The runtime as management sees it; every port None offline."""

    host: HostPort | None = None
    jobs: JobsPort | None = None
    mirrors: MirrorsPort | None = None
    #: how to resync when no node runs; None: offline resyncs are refused
    resync: ResyncEngine | None = None

    @property
    def in_node(self) -> bool:
        return self.host is not None

