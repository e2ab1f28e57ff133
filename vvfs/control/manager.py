"""Manager: every ``vv`` command is one call of it (a thin facade over the verbs).

A :class:`Manager` works on one host's state directory.  Each mutating call
takes the state directory's exclusive lock, opens the pool from its media
(media wins over the catalog), computes the new configuration with
``mapper``, commits it to every device (two-phase, see ``metadata.media``),
then mirrors it into the catalog.  Nothing is changed when a call raises.

The bodies are in the verb modules (:mod:`~vvfs.control.pools`,
:mod:`~vvfs.control.devices`, :mod:`~vvfs.control.volumes`,
:mod:`~vvfs.control.moves`, :mod:`~vvfs.control.scrubs`,
:mod:`~vvfs.control.mirrors`), which work through one public
:class:`~vvfs.control.session.PoolSession`.  What a running node adds (its
mount, background work and mirror service), or the offline runtime, comes in
as :class:`~vvfs.control.ports.Ports` through the constructor.

Return values are plain data (model objects, dataclasses, dicts) for the CLI
or another program to print.  The node's admin API serves the methods listed
in :data:`vvfs.node.codec.API_METHODS` with these signatures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import mapper
from metadata import format as fmt
from metadata.catalog import Catalog
from metadata.model import Device, Pool, Volume
from vvfs.control import devices, events, mirrors, moves, pools, scrubs, volumes
from vvfs.control.pools import PoolReport, PoolShow
from vvfs.control.ports import Ports
from vvfs.control.session import OpenPool, PoolSession
from vvfs.state import StateDir

__all__ = ["Manager", "OpenPool", "PoolReport", "PoolShow"]


class Manager:
    """One host's view of its pools.  See the module docstring."""

    def __init__(self, state_dir: str | None = None, *, ports: Ports | None = None) -> None:
        self.state = StateDir(state_dir)
        self.catalog = Catalog(self.state.config.catalog_url)
        self.session = PoolSession(self.state, self.catalog, ports or Ports())

    @property
    def host_id(self) -> str:
        return self.state.config.host_id

    @property
    def progress(self) -> Callable[[dict], None] | None:
        """Offline only: called with a resync's progress document as it runs."""
        return self.session.progress

    @progress.setter
    def progress(self, fn: Callable[[dict], None] | None) -> None:
        self.session.progress = fn

    def holding_lock(self, what: str) -> contextlib.AbstractContextManager[None]:
        """Take the state directory's lock once, for a long-lived owner (the node)."""
        return self.session.holding_lock(what)

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Manager:  # noqa: PYI034 - a subclass keeps this return type
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pools -------------------------------------------------------------------

    def create_pool(self, name: str, paths: list[str], *, extent_size: int = 4 << 20,
                    metadata_size: int = fmt.DEFAULT_METADATA_SIZE, force: bool = False,
                    tier: int = 2, protection: int = 0, cost: float = 0.0) -> Pool:
        """Claim *paths* and write a new pool on them (generation 1)."""
        return pools.create_pool(self.session, name, paths, extent_size=extent_size,
                                 metadata_size=metadata_size, force=force, tier=tier,
                                 protection=protection, cost=cost)

    def list_pools(self) -> list[dict]:
        return pools.list_pools(self.session)

    def show_pool(self, name: str) -> PoolShow:
        return pools.show_pool(self.session, name)

    def export_pool(self, name: str) -> Pool:
        """Clear the pool's host stamp on media and forget it here."""
        return pools.export_pool(self.session, name)

    def import_pool(self, key: str, *, search: Sequence[str] = (), force: bool = False) -> Pool:
        """Find pool *key* (name or uuid) on the media and make it this host's."""
        return pools.import_pool(self.session, key, search=search, force=force)

    def destroy_pool(self, name: str, *, yes: bool = False) -> None:
        """Erase the pool's labels and metadata from every device."""
        pools.destroy_pool(self.session, name, yes=yes)

    def scan(self, paths: list[str] | None = None) -> tuple[list[PoolReport], dict[str, list[str]]]:
        """Report every pool whose devices lie on *paths* (default: search paths)."""
        return pools.scan(self.session, paths)

    def rebuild_catalog(self, search: Sequence[str] = ()) -> list[str]:
        """Recreate the catalog from media: every pool stamped with this host id."""
        return pools.rebuild_catalog(self.session, search)

    # -- devices -------------------------------------------------------------------

    def add_device(self, pool_name: str, path: str, *, tier: int = 2, protection: int = 0,
                   cost: float = 0.0, force: bool = False) -> Device:
        return devices.add_device(self.session, pool_name, path, tier=tier,
                                  protection=protection, cost=cost, force=force)

    def remove_device(self, pool_name: str, key: str) -> Device:
        return devices.remove_device(self.session, pool_name, key)

    def list_devices(self, pool_name: str) -> tuple[Pool, dict[str, str], dict]:
        return devices.list_devices(self.session, pool_name)

    def list_classes(self, pool_name: str) -> list:
        return devices.list_classes(self.session, pool_name)

    # -- volumes -------------------------------------------------------------------

    def create_volume(self, path: str, spec: mapper.VolumeSpec) -> Volume:
        return volumes.create_volume(self.session, path, spec)

    def create_volumes(self, pool_name: str, specs: list[mapper.VolumeSpec]) -> list[Volume]:
        """Create several volumes of one pool in a single commit (all or nothing)."""
        return volumes.create_volumes(self.session, pool_name, specs)

    def list_volumes(self, pool_name: str) -> list[Volume]:
        return volumes.list_volumes(self.session, pool_name)

    def show_volume(self, path: str) -> tuple[Pool, Volume]:
        return volumes.show_volume(self.session, path)

    def remove_volume(self, path: str) -> None:
        volumes.remove_volume(self.session, path)

    def resize_volume(self, path: str, size: int, *, allow_shrink: bool = False) -> Volume:
        return volumes.resize_volume(self.session, path, size, allow_shrink=allow_shrink)

    def rename_volume(self, path: str, new_name: str) -> Volume:
        return volumes.rename_volume(self.session, path, new_name)

    def set_volume(self, path: str, *, read_policy: str | None = None) -> Volume:
        """Change settings of POOL/VOL: its read policy (balanced, primary, first)."""
        return volumes.set_volume(self.session, path, read_policy)

    # -- moving and scrubbing data (copied in the node: vvfs/node/jobs.py, scrub.py) ---

    def move_volume(self, path: str, to: str | None = None, from_: str | None = None, *,
                    abort: bool = False, rate: int = 0) -> dict:
        """Start moving POOL/VOL's extents to device *to* (only those on *from_*); or abort.

        Returns the move's progress document at once; the node copies in the
        background (``move_status``), at most *rate* bytes/s if not 0.
        Needs a running node, except to abort.
        """
        return moves.move_volume(self.session, path, to, from_, abort, rate)

    def evacuate_device(self, pool_name: str, key: str, *, rate: int = 0) -> dict:
        """Start moving every extent off device *key* to the pool's other devices."""
        return moves.evacuate_device(self.session, pool_name, key, rate)

    def move_status(self, pool_name: str) -> dict:
        """The pool's move in progress (live progress in a node); {} when there is none."""
        return moves.move_status(self.session, pool_name)

    def move_checkpoint(self, pool_name: str, op_id: str, copied: int) -> None:
        """(The node's move task) commit that *copied* extents are copied and flushed."""
        moves.checkpoint(self.session, pool_name, op_id, copied)

    def move_finish(self, pool_name: str, op_id: str) -> None:
        """(The node's move task) switch the map to the destination and drop the record."""
        moves.finish(self.session, pool_name, op_id)

    def scrub_volume(self, path: str, *, repair: bool = False) -> dict:
        """Start scrubbing POOL/VOL in the node; returns its status at once."""
        return scrubs.scrub_volume(self.session, path, repair)

    def scrub_status(self, path: str) -> dict:
        """Progress and findings of the last scrub of POOL/VOL in the running node."""
        return scrubs.scrub_status(self.session, path)

    # -- failures, resync, replacement, paths, events (vvfs/control/mirrors.py) -----

    def list_events(self, pool: str | None = None, since: int = 0, limit: int = 1000
                    ) -> list[dict]:
        """Events (of *pool*, or all) with id > *since*, oldest first, at most *limit*."""
        return events.list_events(self.catalog, pool, since, limit)

    def device_paths(self, pool_name: str, key: str, *, add: str | None = None,
                     remove: str | None = None) -> dict:
        """The paths of a device (primary first, with their live state); add or remove one.

        A path added must carry the device's own label (another way to the
        same device), never a copy of it.
        """
        return mirrors.device_paths(self.session, pool_name, key, add, remove)

    def fail_device(self, pool_name: str, key: str, *, reason: str = "",
                    only_if_failed: bool = False, yes: bool = False) -> dict:
        """Take a device out of service: no more I/O to it; commit it ``failed``.

        Refused when it holds the only copy in service of some volume (a
        linear or striped volume on it, a mirror whose other legs failed),
        unless *yes*.  (The node commits a device that failed in its data
        path with *only_if_failed*: nothing happens if it is back by then.)
        """
        return mirrors.fail_device(self.session, pool_name, key, reason, only_if_failed, yes)

    def online_device(self, pool_name: str, key: str, *, rate: int | None = None,
                      discard_divergent: bool = False) -> dict:
        """Bring a failed device back: resync the ranges written without it, then mark it ok.

        With a node, returns at once (state ``queued``; see ``resync_status``);
        offline, returns once the resync is done.  *rate* limits bytes/s.  A
        device written apart from the pool (a split brain) is refused unless
        *discard_divergent*: then it is rebuilt whole from the other legs.
        """
        return mirrors.online_device(self.session, pool_name, key, rate, discard_divergent)

    def resync_pool(self, pool_name: str, key: str | None = None, *,
                    rate: int | None = None) -> dict:
        """Resync the dirty ranges of a pool now (of a failed device *key*: bring it back)."""
        return mirrors.resync_pool(self.session, pool_name, key, rate)

    def resync_status(self, pool_name: str) -> dict:
        """Resync jobs (with progress), dirty regions per device, failed devices."""
        return mirrors.resync_status(self.session, pool_name)

    def finish_resync(self, pool_name: str, key: str) -> dict:
        """(The node's resync task) commit a resynced device ``ok`` and drop its record."""
        return mirrors.finish_resync(self.session, pool_name, key)

    def replace_device(self, pool_name: str, old: str, new: str, *, force: bool = False,
                       rate: int | None = None) -> dict:
        """Claim device *new*, put it in *old*'s place in every mirror and rebuild it.

        *old* (name, uuid or path) is forgotten at once; its data is copied to
        *new* from the other legs (a full copy, throttled to *rate* bytes/s).
        Refused when some data of *old* has no other copy.
        """
        return mirrors.replace_device(self.session, pool_name, old, new, force, rate)

