"""The node's side of the management ports (:mod:`vvfs.control.ports`).

Management calls run in a worker thread (:meth:`vvfs.node.node.Node.call`);
the node's mount, background work and mirror service live on the trio
thread.  These adapters are what the node hands to its
:class:`~vvfs.control.manager.Manager`: each method crosses to the trio
thread where the work must run there (``trio.from_thread``), and reads
plain state directly where the old code did (a set membership, atomic
under the GIL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metadata.model import Pool
from vvfs.control.ports import Blocks, Ports, Range
from vvfs.node.jobs import BENCH_NO_GUARD, Jobs, emit
from vvfs.node.mirrors import Mirrors

if TYPE_CHECKING:
    from vvfs.node.node import Node


def node_ports(node: Node) -> Ports:
    """The ports of a running node, for its Manager."""
    return Ports(host=NodeHost(node), jobs=NodeJobs(node.jobs), mirrors=NodeMirrors(node.mirrors))


class NodeHost:
    """:class:`~vvfs.control.ports.HostPort`: the node's mount."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def open_volumes(self, pool_uuid: str) -> set[str]:
        return self.node.open_volumes_fenced(pool_uuid)

    def changed(self, pool_uuid: str, pool: Pool | None) -> None:
        self.node.note_change(pool_uuid, pool)

    def mounted_at(self, pool_uuid: str) -> str | None:
        return self.node.mountpoint if pool_uuid in self.node.pools else None


class NodeJobs:
    """:class:`~vvfs.control.ports.JobsPort`: the node's background work."""

    guards_enabled = not BENCH_NO_GUARD

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    def note_started(self, op_id: str) -> None:
        self.jobs.note_started(op_id)

    def stop_move(self, pool_uuid: str) -> None:
        self.jobs.from_thread(self.jobs.stop_move, pool_uuid)

    def restart_move(self, pool_uuid: str) -> None:
        self.jobs.from_thread(_run_sync, self.jobs.restart, pool_uuid)

    def move_progress(self, pool_uuid: str) -> dict[str, Any] | None:
        return self.jobs.from_thread(_run_sync, self.jobs.move_progress, pool_uuid)

    def emit(self, pool_uuid: str, kind: str, severity: str, obj: str, message: str) -> None:
        self.jobs.from_thread(_run_sync, emit, self.jobs.node, pool_uuid, kind, severity, obj,
                              message)

    def start_scrub(self, pool_uuid: str, volume_uuid: str, repair: bool) -> dict[str, Any]:
        return self.jobs.from_thread(self.jobs.start_scrub, pool_uuid, volume_uuid, repair)

    def scrub_status(self, pool_uuid: str, volume_uuid: str) -> dict[str, Any] | None:
        return self.jobs.from_thread(_run_sync, self.jobs.scrub_status, pool_uuid, volume_uuid)

    def fill_checksums(self, pool_uuid: str, todo: list[Blocks], value: int) -> list[Blocks]:
        return self.jobs.from_thread(self.jobs.fill_checksums, pool_uuid, todo, value)

    def zero_ranges(self, pool_uuid: str, ranges: list[Range]) -> list[Range]:
        return self.jobs.from_thread(self.jobs.zero_ranges, pool_uuid, ranges)


class NodeMirrors:
    """:class:`~vvfs.control.ports.MirrorsPort`: the node's mirror service."""

    def __init__(self, mirrors: Mirrors) -> None:
        self.mirrors = mirrors

    def is_failed(self, pool_uuid: str, device: str) -> bool:
        return self.mirrors.is_failed(pool_uuid, device)

    def failure_of(self, pool_uuid: str, device: str) -> str:
        return self.mirrors.failure_of(pool_uuid, device)

    def is_busy(self, pool_uuid: str, device: str) -> bool:
        return self.mirrors.is_busy(pool_uuid, device)

    def fail_now(self, pool_uuid: str, device: str, reason: str) -> bool:
        return bool(self.mirrors.from_thread(self.mirrors.fail_now, pool_uuid, device, reason))

    def mark_ranges(self, pool_uuid: str, ranges: list[Range]) -> int:
        return int(self.mirrors.from_thread(self.mirrors.mark_ranges, pool_uuid, ranges))

    def start_resync(self, pool_uuid: str, rate: int | None) -> dict[str, Any]:
        return dict(self.mirrors.from_thread(self.mirrors.start_resync, pool_uuid, rate))

    def status(self, pool_uuid: str) -> dict[str, Any]:
        return dict(self.mirrors.from_thread(self.mirrors.status, pool_uuid))

    def device_paths(self, pool_uuid: str, device: str) -> list[dict[str, str]] | None:
        return self.mirrors.from_thread(self.mirrors.device_paths, pool_uuid, device)

    def use_paths(self, pool_uuid: str, device: str, paths: list[str]
                  ) -> list[dict[str, str]] | None:
        return self.mirrors.from_thread(self.mirrors.use_paths, pool_uuid, device, paths)


async def _run_sync(fn: Any, *args: Any) -> Any:
    """Call the plain function *fn* on the trio thread (from_thread runs coroutines)."""
    return fn(*args)

