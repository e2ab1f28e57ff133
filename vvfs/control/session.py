"""One host's pools, opened from their media for reading or for one change.

:class:`PoolSession` is what every management verb (``vvfs.control.pools``,
``devices``, ``volumes``, ``moves``, ``scrubs``, ``mirrors``) works through:

* :meth:`PoolSession.reading` opens an imported pool from the paths the
  catalog remembers (a device not found there is looked for on the search
  paths) and brings the catalog in line with the media (media wins);
* :meth:`PoolSession.changing` does the same under the state directory's
  exclusive lock, refusing a pool with missing devices unless told, and a
  pool whose media say it is active on another host (a shared catalog
  lists those too);
* :meth:`PoolSession.commit` writes a new configuration to every present,
  working device (two-phase, see :mod:`metadata.media`), then mirrors it
  into the catalog, records a config-changed event and tells the runtime
  (:class:`~vvfs.control.ports.HostPort`) so that the mount follows.

Nothing is changed when a step raises before the media commit; a commit
that reached the media is the truth even if the catalog step fails (vvfsck
and the next open bring the catalog back in line).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from mapper import move as moves
from metadata import checksums, dirtylog, media
from metadata.catalog import Catalog
from metadata.errors import NoValidGenerationError
from metadata.model import Pool
from vvfs.control import events, zeroing
from vvfs.control.ports import Ports
from vvfs.errors import ApiError, NotFoundError, RefusedError
from vvfs.io.discovery import discover
from vvfs.state import StateDir

log = logging.getLogger(__name__)


@dataclass
class OpenPool:
    """A pool opened from its media for reading or for one change."""

    choice: media.Choice
    #: device uuid -> the path it is open at now (found by its label)
    paths: dict[str, str]
    #: device uuid -> the path the catalog remembered when the pool was opened
    remembered: dict[str, str] = field(default_factory=dict)

    def catalog_paths(self, pool: Pool) -> dict[str, str]:
        """Where each device of *pool* was last found, for the catalog.

        Where found now; else where the catalog remembered it: a device
        that does not answer for a moment (an EIO while its label was read)
        is looked for there again, never forgotten.
        """
        listed = {d.uuid for d in pool.devices}
        out = {u: p for u, p in self.remembered.items() if u in listed}
        out.update({u: p for u, p in self.paths.items() if u in listed})
        return out

    @property
    def pool(self) -> Pool:
        return self.choice.pool

    def close(self) -> None:
        for s in self.choice.scans:
            s.dev.close()


class PoolSession:
    """Opening, reading, changing and committing the pools of one state directory."""

    def __init__(self, state: StateDir, catalog: Catalog, ports: Ports) -> None:
        self.state = state
        self.catalog = catalog
        self.ports = ports
        #: Offline only: called with a resync's progress document as it runs.
        self.progress: Callable[[dict], None] | None = None
        self._lock_held = False

    @property
    def host_id(self) -> str:
        return self.state.config.host_id

    # -- the state directory's lock ------------------------------------------

    @contextlib.contextmanager
    def holding_lock(self, what: str) -> Iterator[None]:
        """Take the state directory's lock once, for a long-lived owner (the node).

        While held, the calls of this session do not lock again.
        """
        with self.state.locked(what):
            self._lock_held = True
            try:
                yield
            finally:
                self._lock_held = False

    def locked(self, what: str) -> contextlib.AbstractContextManager[None]:
        """The state directory's lock for one call (nothing if already held)."""
        return contextlib.nullcontext() if self._lock_held else self.state.locked(what)

    def held(self, what: str) -> contextlib.AbstractContextManager[None]:
        """The lock held across several steps (a resync offline); a node holds it already."""
        return contextlib.nullcontext() if self._lock_held else self.holding_lock(what)

    # -- the runtime ------------------------------------------------------------

    def changed(self, pool_uuid: str, pool: Pool | None) -> None:
        """Tell the runtime of a commit (*pool*) or of a pool gone (None)."""
        if self.ports.host is not None:
            self.ports.host.changed(pool_uuid, pool)

    def open_volumes(self, pool_uuid: str) -> set[str]:
        """Names of the pool's volumes open in the node (none offline)."""
        return self.ports.host.open_volumes(pool_uuid) if self.ports.host is not None else set()

    def refuse_if_open(self, pool: Pool, name: str, what: str) -> None:
        if name in self.open_volumes(pool.uuid):
            raise RefusedError(f"volume {pool.name}/{name} is open; close it before it can be"
                               f" {what}")

    def refuse_if_any_open(self, pool: Pool) -> None:
        busy = self.open_volumes(pool.uuid)
        if busy:
            raise RefusedError(f"pool {pool.name} has open volumes: " + ", ".join(sorted(busy)))

    def refuse_if_mounted(self, pool: Pool, what: str) -> None:
        """Refuse *what* while the node serves the pool in its mount."""
        where = self.ports.host.mounted_at(pool.uuid) if self.ports.host is not None else None
        if where is not None:
            raise RefusedError(f"pool {pool.name} is mounted on {where}; unmount it"
                               f" ('vv umount {where}') before it can be {what}")

    def remember_dir(self, path: str) -> None:
        """Keep the directory of a file-backed device on the search paths."""
        if stat.S_ISREG(os.stat(path).st_mode):
            self.state.add_search_path(os.path.dirname(os.path.abspath(path)))

    # -- opening ----------------------------------------------------------------

    def pool_uuid(self, name: str) -> str:
        row = self.catalog.find_pool(name)
        if row is None:
            raise NotFoundError(f"no imported pool {name!r} (see 'vv pool list', 'vv scan')")
        return row.uuid

    def open(self, name: str) -> OpenPool:
        """Open an imported pool from the paths the catalog remembers.

        A device not found at its remembered path is looked for at its
        configured paths and on the search paths.  The catalog is brought
        in line with the media, but never forgets where a device not found
        now was last found (see :meth:`OpenPool.catalog_paths`).
        """
        uuid = self.pool_uuid(name)
        remembered = self.catalog.device_paths(uuid)
        scans = self._scan(uuid, remembered)
        if not scans:
            raise RefusedError(f"pool {name}: none of its devices can be found")
        try:
            choice = self._choose(name, scans)
            if choice.missing and self._look_for(uuid, choice, scans, remembered):
                choice = self._choose(name, scans)
        except BaseException:
            for s in scans:
                s.dev.close()
            raise
        op = OpenPool(choice, {s.device_uuid: s.name for s in scans if s.device_uuid},
                      dict(remembered))
        paths = op.catalog_paths(choice.pool)
        if self.catalog.pool_generation(uuid) != choice.generation or remembered != paths:
            self.catalog.sync_pool(choice.pool, paths)
        return op

    def _scan(self, uuid: str, remembered: dict[str, str]) -> list[media.DeviceScan]:
        """The scans of pool *uuid*'s devices: at their remembered paths, then the search paths."""
        found = discover(list(remembered.values()), readonly=False)
        scans = found.pools.pop(uuid, [])
        found.close()
        if found.unsupported:
            for s in scans:
                s.dev.close()
            raise RefusedError(next(iter(found.unsupported.values())))
        have = {s.device_uuid for s in scans}
        if set(remembered) - have:
            extra = discover(self.state.config.search_paths, readonly=False,
                             skip=[s.name for s in scans])
            for s in extra.pools.pop(uuid, []):
                if s.device_uuid in remembered and s.device_uuid not in have:
                    scans.append(s)
                    have.add(s.device_uuid)
                else:
                    s.dev.close()
            extra.close()
        return scans

    @staticmethod
    def _choose(name: str, scans: list[media.DeviceScan]) -> media.Choice:
        try:
            return media.choose_generation(scans)
        except NoValidGenerationError as exc:
            raise RefusedError(f"pool {name}: {exc}") from None

    def _look_for(self, uuid: str, choice: media.Choice, scans: list[media.DeviceScan],
                  remembered: dict[str, str]) -> bool:
        """Look for the devices *choice* misses at their paths (and on the search paths).

        The search paths only for a device the catalog does not remember
        (:meth:`_scan` looked there for the others).  Those found join
        *scans*; True if any did.
        """
        missing = set(choice.missing)
        where = [p for d in choice.pool.devices if d.uuid in missing for p in d.paths]
        if missing - set(remembered):
            where += self.state.config.search_paths
        found = discover(where, readonly=False, skip=[s.name for s in scans])
        added = False
        for s in found.pools.pop(uuid, []):
            if s.device_uuid in missing:
                scans.append(s)
                missing.discard(s.device_uuid)  # type: ignore[arg-type]
                added = True
            else:
                s.dev.close()
        found.close()
        return added

    @contextlib.contextmanager
    def reading(self, name: str) -> Iterator[OpenPool]:
        """The pool *name* opened from its media, closed afterwards."""
        op = self.open(name)
        try:
            yield op
        finally:
            op.close()

    @contextlib.contextmanager
    def changing(self, name: str, *, allow_missing: bool = False) -> Iterator[OpenPool]:
        """The pool *name* opened for one change, under the state directory's lock.

        Refused while devices of it are missing, unless *allow_missing*, and
        whenever its media do not say that it is active on this host
        (:meth:`refuse_if_not_ours`).
        """
        with self.locked("vv"):
            op = self.open(name)
            try:
                self.refuse_if_not_ours(op.pool)
                if op.choice.missing and not allow_missing:
                    names = [op.pool.device(u).name for u in op.choice.missing]
                    raise RefusedError(
                        f"pool {op.pool.name} is missing devices {', '.join(names)}:"
                        " changes refused until they return (see 'vv scan', vvfsck)"
                    )
                yield op
            finally:
                op.close()

    def refuse_if_not_ours(self, pool: Pool) -> None:
        """Refuse a change to a pool that its media say is active on another host, or none.

        A catalog shared by several hosts (PostgreSQL) lists every host's
        pools; until the hosts coordinate their commits (F8.2), only the
        host that the media name may change a pool -- two hosts committing
        to one pool would each overwrite what the other acknowledged.
        """
        if pool.active_host == self.host_id:
            return
        if pool.active_host is None:
            raise RefusedError(f"pool {pool.name} is exported (active on no host);"
                               " import it here before changing it ('vv pool import')")
        raise RefusedError(f"pool {pool.name} is active on host {pool.active_host}; this"
                           f" host ({self.host_id}) may not change it (export it there"
                           " first)")

    # -- committing ---------------------------------------------------------------

    def commit(self, op: OpenPool, new: Pool, extra: Sequence[media.Target] = ()) -> Pool:
        """Commit *new* to every present, working device of it (plus *extra*)."""
        new.generation = op.choice.max_seen + 1
        _stamp_failures(op.pool, new)
        checksums.enable(new)
        dirtylog.enable(new)
        new.check()
        moves.validate(new, op.pool)  # nothing may remap what a move is copying
        # never to a stale device (an older copy): it would look current after this
        stale = {id(s) for s in op.choice.stale}
        by_uuid = {s.device_uuid: s for s in op.choice.scans if id(s) not in stale}
        targets = [
            media.Target(by_uuid[d.uuid].dev, by_uuid[d.uuid].label)  # type: ignore[arg-type]
            for d in new.devices if d.state != "failed" and d.uuid in by_uuid
        ]
        targets.extend(extra)
        media.commit_generation(targets, new)
        old = op.choice.pool
        op.choice.max_seen = new.generation
        op.choice.pool = new
        self.catalog.sync_pool(new, op.catalog_paths(new), previous=old)
        events.record_commit(self.catalog, old, new)
        self.changed(new.uuid, new)
        return new

    def commit_zeroed(self, op: OpenPool, new: Pool) -> Pool:
        """Commit *new* after zeroing the extents it gives volumes afresh.

        So a new or grown volume of any layout reads zeros where it was
        never written, and the legs of a mirror agree from the start; see
        :mod:`vvfs.control.zeroing`.  For placements, not for moves or
        replacements, whose new extents are filled by a copy.
        """
        zeroing.zero_fresh(op, new, self.ports.jobs)
        return self.commit(op, new)


def _stamp_failures(old: Pool, new: Pool) -> None:
    """Commits never reach a failed device: record in *new* since which generation."""
    was = {d.uuid: d.state for d in old.devices}
    for d in new.devices:
        if d.state != "failed":
            d.failed_at = 0
        elif was.get(d.uuid) != "failed" or not d.failed_at:
            d.failed_at = new.generation


def split_volume_path(path: str) -> tuple[str, str]:
    """("POOL", "VOLUME") of "POOL/VOLUME"."""
    pool, sep, vol = path.partition("/")
    if not sep or not pool or not vol:
        raise ApiError(f"{path!r}: name a volume as POOL/VOLUME")
    return pool, vol
