"""The Python API of vvfs: every `vv` command is one call of :class:`Manager`.

A :class:`Manager` works on one host's state directory.  Each mutating call
takes the state directory's exclusive lock, opens the pool from its media
(media wins over the catalog), computes the new configuration with
``mapper``, commits it to every device (two-phase, see ``metadata.media``),
then mirrors it into the catalog.  Nothing is changed when a call raises.

Return values are plain data (model objects, dataclasses, dicts) for the CLI
or another program to print.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import mapper
from mapper import move as moves
from metadata import checksums, dirtylog, media
from metadata import format as fmt
from metadata.blockdev import DeviceIOError
from metadata.catalog import Catalog
from metadata.errors import NoValidGenerationError, UnsupportedFeatureError
from metadata.model import Device, DeviceUUID, Pool, PoolUUID, Volume, check_name, new_uuid
from vvfs.control import zeroing
from vvfs.errors import ApiError, NotFoundError, RefusedError
from vvfs.io import probe
from vvfs.io.discovery import Found, discover
from vvfs.io.filedev import FileDevice
from vvfs.node import jobs as move_jobs
from vvfs.node import mirrors as mirror_ops
from vvfs.node import scrub as scrub_jobs
from vvfs.state import StateDir

log = logging.getLogger(__name__)

MIN_EXTENT = 1 << 20
MAX_EXTENT = 1 << 30


@dataclass
class OpenPool:
    """A pool opened from its media for reading or for one change."""

    choice: media.Choice
    paths: dict[str, str]

    @property
    def pool(self) -> Pool:
        return self.choice.pool

    def close(self) -> None:
        for s in self.choice.scans:
            s.dev.close()


@dataclass
class PoolReport:
    """What `vv scan` says of one pool."""

    uuid: str
    name: str
    generation: int | None
    status: str
    active_host: str | None
    imported_here: bool
    devices: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class PoolShow:
    """What `vv pool show` says of one pool: its configuration and its media."""

    pool: Pool
    #: device uuid -> path where the device was found
    paths: dict[str, str]
    #: uuids of devices the configuration lists that were not found
    missing: list[str] = field(default_factory=list)
    #: paths of devices whose newest generation is older than the pool's
    stale: list[str] = field(default_factory=list)


class Manager:
    """One host's view of its pools.  See the module docstring."""

    def __init__(self, state_dir: str | None = None) -> None:
        self.state = StateDir(state_dir)
        self.catalog = Catalog(self.state.config.catalog_url)
        self._lock_held = False
        #: Called with the new configuration after every commit, and with
        #: (pool uuid, None) when a pool is exported or destroyed; a running
        #: node uses it to swap the new maps into its data path.
        self.on_change: Callable[[str, Pool | None], None] | None = None
        #: Returns the names of a pool's volumes that are open (in use);
        #: such a volume is not removed, shrunk or renamed.
        self.open_volumes: Callable[[str], set[str]] | None = None
        #: The running node's background work (vvfs.node.jobs.Jobs): moves and
        #: scrubs need it; None offline.
        self.jobs: move_jobs.Jobs | None = None
        #: The running node's mirror service (vvfs.node.mirrors.Mirrors): failures,
        #: returns, resync and replacement; None offline.
        self.mirrors: mirror_ops.Mirrors | None = None
        #: Offline only: called with a resync's progress document as it runs.
        self.progress: Callable[[dict], None] | None = None

    @contextlib.contextmanager
    def holding_lock(self, what: str) -> Iterator[None]:
        """Take the state directory's lock once, for a long-lived owner (the node).

        While held, the calls of this Manager do not lock again.
        """
        with self.state.locked(what):
            self._lock_held = True
            try:
                yield
            finally:
                self._lock_held = False

    def _locked(self, what: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext() if self._lock_held else self.state.locked(what)

    def _changed(self, pool_uuid: str, pool: Pool | None) -> None:
        if self.on_change is not None:
            self.on_change(pool_uuid, pool)

    def _refuse_if_open(self, pool: Pool, name: str, what: str) -> None:
        if self.open_volumes is not None and name in self.open_volumes(pool.uuid):
            raise RefusedError(f"volume {pool.name}/{name} is open; close it before it can be"
                               f" {what}")

    @property
    def host_id(self) -> str:
        return self.state.config.host_id

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------
    # opening and committing

    def _pool_uuid(self, name: str) -> str:
        row = self.catalog.find_pool(name)
        if row is None:
            raise NotFoundError(f"no imported pool {name!r} (see 'vv pool list', 'vv scan')")
        return row.uuid

    def _open(self, name: str) -> OpenPool:
        """Open an imported pool from the paths the catalog remembers.

        A device not found at its remembered path is looked for on the
        search paths.  The catalog is brought in line with the media.
        """
        uuid = self._pool_uuid(name)
        remembered = self.catalog.device_paths(uuid)
        found = discover(list(remembered.values()), readonly=False)
        scans = found.pools.pop(uuid, [])
        found.close()
        if found.unsupported:
            for s in scans:
                s.dev.close()
            why = next(iter(found.unsupported.values()))
            raise RefusedError(why)
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
        if not scans:
            raise RefusedError(f"pool {name}: none of its devices can be found")
        try:
            choice = media.choose_generation(scans)
        except NoValidGenerationError as exc:
            for s in scans:
                s.dev.close()
            raise RefusedError(f"pool {name}: {exc}") from None
        op = OpenPool(choice, {s.device_uuid: s.name for s in scans if s.device_uuid})
        if self.catalog.pool_generation(uuid) != choice.generation or remembered != op.paths:
            self.catalog.sync_pool(choice.pool, op.paths)
        return op

    @contextlib.contextmanager
    def _reading(self, name: str) -> Iterator[OpenPool]:
        op = self._open(name)
        try:
            yield op
        finally:
            op.close()

    @contextlib.contextmanager
    def _changing(self, name: str, *, allow_missing: bool = False) -> Iterator[OpenPool]:
        with self._locked("vv"):
            op = self._open(name)
            try:
                if op.choice.missing and not allow_missing:
                    names = [op.pool.device(u).name for u in op.choice.missing]
                    raise RefusedError(
                        f"pool {op.pool.name} is missing devices {', '.join(names)}:"
                        " changes refused until they return (see 'vv scan', vvfsck)"
                    )
                yield op
            finally:
                op.close()

    def _commit(self, op: OpenPool, new: Pool, extra: Sequence[media.Target] = ()) -> Pool:
        """Commit *new* to every present, working device of it (plus *extra*)."""
        new.generation = op.choice.max_seen + 1
        was = {d.uuid: d.state for d in op.pool.devices}
        for d in new.devices:  # commits never reach a failed device: say since when
            if d.state != "failed":
                d.failed_at = 0
            elif was.get(d.uuid) != "failed" or not d.failed_at:
                d.failed_at = new.generation
        checksums.enable(new)
        dirtylog.enable(new)
        new.check()
        moves.validate(new, op.pool)  # nothing may remap what a move is copying
        by_uuid = {s.device_uuid: s for s in op.choice.scans}
        targets = [
            media.Target(by_uuid[d.uuid].dev, by_uuid[d.uuid].label)  # type: ignore[arg-type]
            for d in new.devices if d.state != "failed" and d.uuid in by_uuid
        ]
        targets.extend(extra)
        media.commit_generation(targets, new)
        old = op.choice.pool
        op.choice.max_seen = new.generation
        op.choice.pool = new
        listed = {d.uuid for d in new.devices}
        paths = {u: p for u, p in op.paths.items() if u in listed}
        self.catalog.sync_pool(new, paths, previous=old)
        mirror_ops.record_commit(self, old, new)
        self._changed(new.uuid, new)
        return new

    def _commit_zeroed(self, op: OpenPool, new: Pool) -> Pool:
        """Commit *new* after zeroing the extents it gives mirrored volumes afresh.

        So the legs of a new mirror (or of a mirror's new part) agree from
        the start; see :mod:`vvfs.control.zeroing`.  For placements, not for moves or
        replacements, whose new extents are filled by a copy.
        """
        zeroing.zero_fresh_legs(self, op, new)
        return self._commit(op, new)

    # ------------------------------------------------------------------
    # claiming devices

    def _check_claimable(self, path: str, force: bool) -> int:
        """Refuse a device in use, or carrying a signature unless *force*; return its size."""
        size = probe.device_size(path)
        reason = probe.in_use(path)
        if reason:
            raise RefusedError(f"{path}: {reason}; refusing to claim it (--force does not"
                               " override a device in use)")
        try:
            with FileDevice(path, readonly=True) as dev:
                label, _errors = media.read_label(dev)
        except DeviceIOError as exc:
            raise RefusedError(str(exc)) from None
        row = self.catalog.find_pool(label.pool_uuid) if label is not None else None
        if row is not None:
            raise RefusedError(f"{path}: belongs to imported pool {row.name}; refusing to claim"
                               " it (--force does not override a device in use)")
        if label is not None and not force:
            owner = ""
            raise RefusedError(
                f"{path}: vvfs signature of {owner}{label.pool_uuid} at byte"
                f" {fmt.LABEL_A_OFFSET}; use --force to claim it anyway"
            )
        if not force:
            sigs = probe.foreign_signatures(path)
            if sigs:
                raise RefusedError(
                    f"{path}: {sigs[0].describe()}"
                    + (f" (and {len(sigs) - 1} more)" if len(sigs) > 1 else "")
                    + "; use --force to claim it anyway"
                )
        return size

    def _claim(self, path: str, pool_uuid: str, extent_size: int, metadata_size: int,
               size: int, force: bool, tier: int, protection: int, cost: float,
               name: str) -> tuple[FileDevice, fmt.Label, Device]:
        try:
            geometry = fmt.plan_geometry(size, extent_size, metadata_size)
        except fmt.GeometryError as exc:
            raise RefusedError(f"{path}: {exc}") from None
        if force:
            probe.wipe_signatures(path)
        label = fmt.Label(pool_uuid, new_uuid(), geometry, time.time())
        device = Device(
            uuid=DeviceUUID(label.device_uuid), name=name, size=geometry.device_size,
            data_start=geometry.data_start, extent_count=geometry.extent_count, tier=tier,
            protection=protection, cost=cost, paths=[os.path.abspath(path)],
        )
        dirtylog.carve(device, extent_size)  # the dirty log: the last extents
        checksums.carve(device)  # the block-checksum region at the end of the extents
        dev = FileDevice(path)
        try:
            media.initialize_device(dev, label)
            checksums.init_region(dev, device, extent_size)
            dirtylog.init_log(dev, device, extent_size, pool_uuid)
        except DeviceIOError:
            dev.close()
            raise
        return dev, label, device

    @staticmethod
    def _unclaim(dev: FileDevice, label: fmt.Label) -> None:
        """Erase the labels and metadata areas written by a claim (undo)."""
        media.erase_metadata(dev, label)

    def _remember_dir(self, path: str) -> None:
        """Keep the directory of a file-backed device on the search paths."""
        if stat.S_ISREG(os.stat(path).st_mode):
            self.state.add_search_path(os.path.dirname(os.path.abspath(path)))

    # ------------------------------------------------------------------
    # pools

    def create_pool(self, name: str, paths: list[str], *, extent_size: int = 4 << 20,
                    metadata_size: int = fmt.DEFAULT_METADATA_SIZE, force: bool = False,
                    tier: int = 2, protection: int = 0, cost: float = 0.0) -> Pool:
        """Claim *paths* and write a new pool on them (generation 1)."""
        check_name("pool", name)
        if not paths:
            raise ApiError("a pool needs at least one device")
        if extent_size & (extent_size - 1) or not MIN_EXTENT <= extent_size <= MAX_EXTENT:
            raise ApiError("extent size must be a power of two from 1 MiB to 1 GiB")
        real = [os.path.realpath(p) for p in paths]
        if len(set(real)) != len(real):
            raise ApiError("a device is named twice")
        with self._locked("vv pool create"):
            if self.catalog.find_pool(name) is not None:
                raise RefusedError(f"a pool named {name!r} is already imported")
            sizes = [self._check_claimable(p, force) for p in paths]
            pool = Pool(uuid=PoolUUID(new_uuid()), name=name, extent_size=extent_size,
                        generation=1, active_host=self.host_id)
            claimed: list[tuple[FileDevice, fmt.Label]] = []
            try:
                for i, (path, size) in enumerate(zip(paths, sizes)):
                    dev, label, device = self._claim(path, pool.uuid, extent_size, metadata_size,
                                                     size, force, tier, protection, cost, f"d{i}")
                    claimed.append((dev, label))
                    pool.devices.append(device)
                checksums.enable(pool)
                dirtylog.enable(pool)
                pool.check()
                media.commit_generation([media.Target(d, lb) for d, lb in claimed], pool)
            except BaseException:
                for dev, label in claimed:
                    with contextlib.suppress(DeviceIOError):
                        self._unclaim(dev, label)
                raise
            finally:
                for dev, _ in claimed:
                    dev.close()
            self.catalog.sync_pool(pool, {d.uuid: d.paths[0] for d in pool.devices})
            for p in paths:
                self._remember_dir(p)
            self._changed(pool.uuid, pool)
            return pool

    def list_pools(self) -> list[dict]:
        out = []
        for row in self.catalog.pools():
            pool = self.catalog.load_pool(row.uuid)
            cap = sum(d.extent_count for d in pool.devices) * pool.extent_size
            free = sum(u.free for u in mapper.usage(pool).values()) * pool.extent_size
            failed, degraded = mirror_ops.degraded_summary(pool)
            out.append({"name": pool.name, "uuid": pool.uuid, "generation": pool.generation,
                        "devices": len(pool.devices), "volumes": len(pool.volumes),
                        "size": cap, "free": free, "failed_devices": failed,
                        "degraded_volumes": degraded})
        return out

    def show_pool(self, name: str) -> PoolShow:
        with self._reading(name) as op:
            return PoolShow(op.pool, dict(op.paths), list(op.choice.missing),
                            [s.name for s in op.choice.stale])

    def export_pool(self, name: str) -> Pool:
        """Clear the pool's host stamp on media and forget it here."""
        with self._changing(name) as op:
            if self.open_volumes is not None and self.open_volumes(op.pool.uuid):
                raise RefusedError(f"pool {name} has open volumes: "
                                   + ", ".join(sorted(self.open_volumes(op.pool.uuid))))
            new = op.pool.copy()
            new.active_host = None
            self._commit(op, new)
            self.catalog.drop_pool(new.uuid)
            self._changed(new.uuid, None)
            return new

    def import_pool(self, key: str, *, search: Sequence[str] = (), force: bool = False) -> Pool:
        """Find pool *key* (name or uuid) on the media and make it this host's."""
        with self._locked("vv pool import"):
            found = discover(list(search) + self.state.config.search_paths, readonly=False)
            try:
                uuid = self._match_pool(found, key)
                if self.catalog.find_pool(uuid) is not None:
                    raise RefusedError(f"pool {key} is already imported on this host")
                scans = found.pools[uuid]
                try:
                    choice = media.choose_generation(scans)
                except NoValidGenerationError as exc:
                    raise RefusedError(f"pool {key}: {exc}") from None
                pool = choice.pool
                if self.catalog.find_pool(pool.name) is not None:
                    raise RefusedError(f"a pool named {pool.name!r} is already imported here")
                if pool.active_host not in (None, self.host_id) and not force:
                    raise RefusedError(
                        f"pool {pool.name} is active on host {pool.active_host};"
                        " import it with --force only if that host is down"
                    )
                if choice.missing and not force:
                    names = [pool.device(u).name for u in choice.missing]
                    raise RefusedError(f"pool {pool.name} is incomplete: devices"
                                       f" {', '.join(names)} not found (--force to import anyway)")
                op = OpenPool(choice, {s.device_uuid: s.name for s in scans if s.device_uuid})
                new = pool.copy()
                new.active_host = self.host_id
                for d in new.devices:
                    if d.uuid in op.paths:
                        d.paths = [op.paths[d.uuid]]
                self._commit(op, new)
                for p in op.paths.values():
                    self._remember_dir(p)
                return new
            finally:
                found.close()

    @staticmethod
    def _match_pool(found: Found, key: str) -> str:
        if key in found.pools:
            return key
        matches = []
        for uuid, scans in found.pools.items():
            try:
                name = media.choose_generation(scans).pool.name
            except NoValidGenerationError:
                continue
            if name == key:
                matches.append(uuid)
        if not matches:
            raise NotFoundError(f"no pool {key!r} found on the search paths")
        if len(matches) > 1:
            raise RefusedError(f"several pools are named {key!r}: {', '.join(matches)};"
                               " import one by uuid")
        return matches[0]

    def destroy_pool(self, name: str, *, yes: bool = False) -> None:
        """Erase the pool's labels and metadata from every device."""
        if not yes:
            raise RefusedError(f"destroying pool {name} erases all its volumes; add --yes")
        with self._changing(name, allow_missing=True) as op:
            if self.open_volumes is not None and self.open_volumes(op.pool.uuid):
                raise RefusedError(f"pool {name} has open volumes: "
                                   + ", ".join(sorted(self.open_volumes(op.pool.uuid))))
            for s in op.choice.scans:
                if s.label is not None:
                    self._unclaim(s.dev, s.label)  # type: ignore[arg-type]
            self.catalog.drop_pool(op.pool.uuid)
            self._changed(op.pool.uuid, None)

    def scan(self, paths: list[str] | None = None) -> tuple[list[PoolReport], dict[str, list[str]]]:
        """Report every pool whose devices lie on *paths* (default: search paths)."""
        found = discover(paths or self.state.config.search_paths)
        try:
            reports = [self._report(uuid, scans) for uuid, scans in found.pools.items()]
            labelled = {s.name for scans in found.pools.values() for s in scans}
            for path, why in found.unsupported.items():
                if path not in labelled:
                    reports.append(PoolReport("?", "?", None, "newer format", None, False,
                                              {"?": path}, problems=[why]))
            return reports, found.duplicates
        finally:
            found.close()

    def _report(self, uuid: str, scans: list[media.DeviceScan]) -> PoolReport:
        try:
            choice = media.choose_generation(scans)
        except (NoValidGenerationError, UnsupportedFeatureError) as exc:
            status = ("newer format" if isinstance(exc, UnsupportedFeatureError)
                      else "unreadable")
            return PoolReport(uuid, "?", None, status, None, False,
                              {s.device_uuid or "?": s.name for s in scans}, problems=[str(exc)])
        pool = choice.pool
        listed = {d.uuid for d in pool.devices}
        rep = PoolReport(
            uuid=uuid, name=pool.name, generation=choice.generation,
            status="incomplete" if choice.missing else "complete",
            active_host=pool.active_host,
            imported_here=self.catalog.find_pool(uuid) is not None,
            devices={pool.device(s.device_uuid).name if s.device_uuid in listed
                     else s.device_uuid or "?": s.name for s in scans},
            missing=[pool.device(u).name for u in choice.missing],
            stale=[s.name for s in choice.stale],
            problems=[str(f) for s in scans for f in s.findings],
        )
        orphans = [s.name for s in scans if s.device_uuid not in listed]
        if orphans:
            rep.problems.append("devices no longer in the pool: " + ", ".join(orphans))
        return rep

    # ------------------------------------------------------------------
    # devices

    def add_device(self, pool_name: str, path: str, *, tier: int = 2, protection: int = 0,
                   cost: float = 0.0, force: bool = False) -> Device:
        with self._changing(pool_name) as op:
            size = self._check_claimable(path, force)
            ref = op.choice.scans[0].label
            assert ref is not None  # open pools only hold labelled scans
            taken = {d.name for d in op.pool.devices}
            name = next(f"d{i}" for i in range(len(taken) + 1) if f"d{i}" not in taken)
            dev, label, device = self._claim(path, op.pool.uuid, op.pool.extent_size,
                                             ref.geometry.area_size, size, force, tier,
                                             protection, cost, name)
            try:
                new = mapper.add_device(op.pool, device)
                op.paths[device.uuid] = os.path.abspath(path)
                self._commit(op, new, [media.Target(dev, label)])
            except BaseException:
                op.paths.pop(device.uuid, None)
                with contextlib.suppress(DeviceIOError):
                    self._unclaim(dev, label)
                raise
            finally:
                dev.close()
            self._remember_dir(path)
            return device

    def remove_device(self, pool_name: str, key: str) -> Device:
        with self._changing(pool_name) as op:
            device = op.pool.device(key)
            if device.uuid in moves.busy_devices(op.pool):
                raise RefusedError(f"device {device.name} takes part in a move in progress;"
                                   " wait for it or abort it (vv volume move --abort)")
            new = mapper.remove_device(op.pool, device.uuid)
            if not new.devices:
                raise RefusedError("cannot remove the last device; destroy the pool instead")
            self._commit(op, new)
            for s in op.choice.scans:
                if s.device_uuid == device.uuid and s.label is not None:
                    with contextlib.suppress(DeviceIOError):
                        self._unclaim(s.dev, s.label)  # type: ignore[arg-type]
            return device

    def list_devices(self, pool_name: str) -> tuple[Pool, dict[str, str], dict]:
        with self._reading(pool_name) as op:
            return op.pool, dict(op.paths), mapper.usage(op.pool)

    def list_classes(self, pool_name: str) -> list:
        with self._reading(pool_name) as op:
            return mapper.class_usage(op.pool)

    # ------------------------------------------------------------------
    # volumes

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        pool, sep, vol = path.partition("/")
        if not sep or not pool or not vol:
            raise ApiError(f"{path!r}: name a volume as POOL/VOLUME")
        return pool, vol

    def create_volume(self, path: str, spec: mapper.VolumeSpec) -> Volume:
        pool_name, spec.name = self._split(path)
        with self._changing(pool_name) as op:
            new = self._commit_zeroed(op, mapper.create_volume(op.pool, spec))
            return new.volume(spec.name)

    def create_volumes(self, pool_name: str, specs: list[mapper.VolumeSpec]) -> list[Volume]:
        """Create several volumes of one pool in a single commit (all or nothing)."""
        with self._changing(pool_name) as op:
            new = self._commit_zeroed(op, mapper.create_volumes(op.pool, specs))
            names = {s.name for s in specs}
            return [v for v in new.volumes if v.name in names]

    def list_volumes(self, pool_name: str) -> list[Volume]:
        with self._reading(pool_name) as op:
            return list(op.pool.volumes)

    def show_volume(self, path: str) -> tuple[Pool, Volume]:
        pool_name, name = self._split(path)
        with self._reading(pool_name) as op:
            return op.pool, op.pool.volume(name)

    def remove_volume(self, path: str) -> None:
        pool_name, name = self._split(path)
        with self._changing(pool_name) as op:
            op.pool.volume(name)
            self._refuse_if_open(op.pool, name, "removed")
            self._commit(op, mapper.remove_volume(op.pool, name))

    def resize_volume(self, path: str, size: int, *, allow_shrink: bool = False) -> Volume:
        pool_name, name = self._split(path)
        with self._changing(pool_name) as op:
            if size < op.pool.volume(name).size:
                self._refuse_if_open(op.pool, name, "shrunk")
            new = self._commit_zeroed(op, mapper.resize_volume(op.pool, name, size,
                                                               allow_shrink))
            return new.volume(name)

    def rename_volume(self, path: str, new_name: str) -> Volume:
        pool_name, name = self._split(path)
        if "/" in new_name:
            p2, new_name = self._split(new_name)
            if p2 != pool_name:
                raise ApiError("a volume cannot be renamed into another pool")
        with self._changing(pool_name) as op:
            new = self._commit(op, mapper.rename_volume(op.pool, name, new_name))
            return new.volume(new_name)

    # ------------------------------------------------------------------
    # moving and scrubbing data (in the node: vvfs/move.py, vvfs/scrub.py)

    def move_volume(self, path: str, to: str | None = None, from_: str | None = None, *,
                    abort: bool = False, rate: int = 0) -> dict:
        """Start moving POOL/VOL's extents to device *to* (only those on *from_*); or abort.

        Returns the move's progress document at once; the node copies in the
        background (``move_status``), at most *rate* bytes/s if not 0.
        Needs a running node, except to abort.
        """
        return move_jobs.move_volume(self, path, to, from_, abort, rate)

    def evacuate_device(self, pool_name: str, key: str, *, rate: int = 0) -> dict:
        """Start moving every extent off device *key* to the pool's other devices."""
        return move_jobs.evacuate_device(self, pool_name, key, rate)

    def move_status(self, pool_name: str) -> dict:
        """The pool's move in progress (live progress in a node); {} when there is none."""
        return move_jobs.move_status(self, pool_name)

    def move_checkpoint(self, pool_name: str, op_id: str, copied: int) -> None:
        """(The node's move task) commit that *copied* extents are copied and flushed."""
        move_jobs.checkpoint(self, pool_name, op_id, copied)

    def move_finish(self, pool_name: str, op_id: str) -> None:
        """(The node's move task) switch the map to the destination and drop the record."""
        move_jobs.finish(self, pool_name, op_id)

    def scrub_volume(self, path: str, *, repair: bool = False) -> dict:
        """Start scrubbing POOL/VOL in the node; returns its status at once."""
        return scrub_jobs.scrub_volume(self, path, repair)

    def scrub_status(self, path: str) -> dict:
        """Progress and findings of the last scrub of POOL/VOL in the running node."""
        return scrub_jobs.scrub_status(self, path)

    # ------------------------------------------------------------------
    # failures, resync, replacement, paths, read policy, events (vvfs/resync.py)

    def list_events(self, pool: str | None = None, since: int = 0, limit: int = 1000
                    ) -> list[dict]:
        """Events (of *pool*, or all) with id > *since*, oldest first, at most *limit*."""
        return mirror_ops.list_events(self, pool, since, limit)

    def set_volume(self, path: str, *, read_policy: str | None = None) -> Volume:
        """Change settings of POOL/VOL: its read policy (balanced, primary, first)."""
        return mirror_ops.set_volume(self, path, read_policy)

    def device_paths(self, pool_name: str, key: str, *, add: str | None = None,
                     remove: str | None = None) -> dict:
        """The paths of a device (primary first, with their live state); add or remove one.

        A path added must carry the device's own label (another way to the
        same device), never a copy of it.
        """
        return mirror_ops.device_paths(self, pool_name, key, add, remove)

    def fail_device(self, pool_name: str, key: str, *, reason: str = "",
                    only_if_failed: bool = False) -> dict:
        """Take a device out of service: no more I/O to it; commit it ``failed``.

        (The node commits a device that failed in its data path with
        *only_if_failed*: nothing happens if it is back by then.)
        """
        return mirror_ops.fail_device(self, pool_name, key, reason, only_if_failed)

    def online_device(self, pool_name: str, key: str, *, rate: int | None = None,
                      discard_divergent: bool = False) -> dict:
        """Bring a failed device back: resync the ranges written without it, then mark it ok.

        With a node, returns at once (state ``queued``; see ``resync_status``);
        offline, returns once the resync is done.  *rate* limits bytes/s.  A
        device written apart from the pool (a split brain) is refused unless
        *discard_divergent*: then it is rebuilt whole from the other legs.
        """
        return mirror_ops.online_device(self, pool_name, key, rate, discard_divergent)

    def resync_pool(self, pool_name: str, key: str | None = None, *,
                    rate: int | None = None) -> dict:
        """Resync the dirty ranges of a pool now (of a failed device *key*: bring it back)."""
        return mirror_ops.resync_pool(self, pool_name, key, rate)

    def resync_status(self, pool_name: str) -> dict:
        """Resync jobs (with progress), dirty regions per device, failed devices."""
        return mirror_ops.resync_status(self, pool_name)

    def finish_resync(self, pool_name: str, key: str) -> dict:
        """(The node's resync task) commit a resynced device ``ok`` and drop its record."""
        return mirror_ops.finish_resync(self, pool_name, key)

    def replace_device(self, pool_name: str, old: str, new: str, *, force: bool = False,
                       rate: int | None = None) -> dict:
        """Claim device *new*, put it in *old*'s place in every mirror and rebuild it.

        *old* (name, uuid or path) is forgotten at once; its data is copied to
        *new* from the other legs (a full copy, throttled to *rate* bytes/s).
        Refused when some data of *old* has no other copy.
        """
        return mirror_ops.replace_device(self, pool_name, old, new, force, rate)

    # ------------------------------------------------------------------
    # catalog

    def rebuild_catalog(self, search: Sequence[str] = ()) -> list[str]:
        """Recreate the catalog from media: every pool stamped with this host id."""
        with self._locked("vv catalog rebuild"):
            found = discover(list(search) + self.state.config.search_paths)
            try:
                names = []
                for known in [row.uuid for row in self.catalog.pools()]:
                    self.catalog.drop_pool(known)
                for uuid, scans in found.pools.items():
                    try:
                        choice = media.choose_generation(scans)
                    except NoValidGenerationError:
                        continue
                    if choice.pool.active_host != self.host_id:
                        continue
                    self.catalog.sync_pool(choice.pool, {s.device_uuid: s.name for s in scans
                                                         if s.device_uuid})
                    names.append(choice.pool.name)
                return names
            finally:
                found.close()
