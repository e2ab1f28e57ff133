"""Failures, returns, resync and replacement of devices: the management calls.

The node's mirror service (:mod:`vvfs.node.mirrors`) runs the data-path half:
it fails devices in the data path, probes vanished ones, runs resync jobs.
These calls decide and commit.  With a node (``s.ports.mirrors``) they commit
and leave the work to it; offline they run the same resync engine through
``s.ports.resync`` (:mod:`vvfs.data.offline`), holding the state directory's
lock.

Bringing a device back (``vv device online``, ``vv device replace``) commits
a *resync record* (:data:`mapper.mirrors.RESYNC_KIND`) in
``Pool.operations`` with the device still ``failed``; the node resyncs it
and one more call (:func:`finish_resync`) commits it ``ok`` and drops the
record.  A device written apart from the pool (a split brain,
:func:`metadata.media.diverged`) is refused (:class:`DivergedError`) unless
``--discard-divergent``: then it is rebuilt whole from the other legs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from mapper import mirrors as mmirrors
from mapper.mirrors import RESYNC_KIND, resync_records
from metadata import dirtylog, media
from metadata.errors import VVError
from metadata.model import Device, Pool
from vvfs.control import claim
from vvfs.control.ports import MirrorsPort
from vvfs.control.session import OpenPool, PoolSession
from vvfs.errors import DivergedError, NotFoundError, RefusedError, ResyncError
from vvfs.io.discovery import check_label, discover
from vvfs.io.filedev import FileDevice

log = logging.getLogger(__name__)


def device_paths(s: PoolSession, pool_name: str, key: str, add: str | None,
                 remove: str | None) -> dict[str, Any]:
    svc = s.ports.mirrors
    with s.changing(pool_name, allow_missing=True) as op:
        dev = op.pool.device(key)
        paths = list(dev.paths) or ([op.paths[dev.uuid]] if dev.uuid in op.paths else [])
        if add is not None:
            add = os.path.abspath(add)
            if add in paths:
                raise RefusedError(f"{add} is already a path of device {dev.name}")
            try:
                check_label(add, op.pool.uuid, dev.uuid)
            except ResyncError as exc:
                raise RefusedError(f"{exc}; only another path to device {dev.name} can be"
                                   " added") from None
            paths.append(add)
        if remove is not None:
            paths = _without(op, dev, paths, os.path.abspath(remove))
        live = None
        if paths != dev.paths:
            new = s.commit(op, mmirrors.set_device_paths(op.pool, dev.uuid, paths))
            dev = new.device(dev.uuid)
            live = svc.use_paths(op.pool.uuid, dev.uuid, list(dev.paths)) if svc else None
        elif svc is not None:
            live = svc.device_paths(op.pool.uuid, dev.uuid)
        states = {p["path"]: p["state"] for p in live or []}
        return {"device": dev.name, "uuid": dev.uuid,
                "paths": [{"path": p, "state": states.get(p, "-" if live is None else
                                                          "standby"),
                           "primary": i == 0} for i, p in enumerate(dev.paths)]}


def _without(op: OpenPool, dev: Device, paths: list[str], remove: str) -> list[str]:
    """*paths* less *remove*; refused if no path left leads to the device.

    Where the device is open for this change (``op.paths``, what the catalog
    remembers next) moves to the first path left that carries its label, so
    that nothing opens the removed path again.
    """
    if remove not in paths:
        raise NotFoundError(f"{remove} is not a path of device {dev.name}")
    if len(paths) == 1:
        raise RefusedError(f"{remove} is the only path of device {dev.name}")
    left = [p for p in paths if p != remove]
    found = op.paths.get(dev.uuid)
    if found is not None and found not in left:
        for p in left:
            with contextlib.suppress(ResyncError):
                check_label(p, op.pool.uuid, dev.uuid)
                op.paths[dev.uuid] = p
                break
        else:
            raise RefusedError(f"no other path of device {dev.name} ({', '.join(left)}) leads"
                               f" to it now; {remove} stays")
    return left


def fail_device(s: PoolSession, pool_name: str, key: str, reason: str, only_if_failed: bool,
                yes: bool = False) -> dict[str, Any]:
    svc = s.ports.mirrors
    with s.changing(pool_name, allow_missing=True) as op:
        dev = op.pool.device(key)
        lost = [] if only_if_failed or yes or dev.state == "failed" else \
            mmirrors.only_copies(op.pool, dev.uuid)
        if lost:
            raise RefusedError(f"device {dev.name} holds the only copy of volumes"
                               f" {', '.join(lost)}: failing it makes them unreadable; add --yes"
                               " to fail it anyway")
        # only_if_failed: the node's own report of a failure it saw; else an administrator's
        failure = "admin"
        if svc is not None:
            failed = svc.fail_now(op.pool.uuid, dev.uuid, reason) \
                if not only_if_failed or svc.is_failed(op.pool.uuid, dev.uuid) else False
            if not failed and only_if_failed:
                return {"device": dev.name, "state": dev.state}
            if only_if_failed:
                failure = svc.failure_of(op.pool.uuid, dev.uuid)
        else:
            _mark_stale_offline(op, dev.uuid)
        if dev.state != "failed" or (dev.failure != failure and not only_if_failed):
            new = s.commit(op, mmirrors.set_device_state(op.pool, dev.uuid, "failed",
                                                            failure))
            dev = new.device(dev.uuid)
        return {"device": dev.name, "state": dev.state, "failure": dev.failure}


def _mark_stale_offline(op: OpenPool, device: str) -> None:
    """Offline: name *device* stale in the log of every other present device."""
    for sc in op.choice.scans:
        if sc.device_uuid == device or sc.device_uuid is None:
            continue
        d = next((x for x in op.pool.devices if x.uuid == sc.device_uuid), None)
        geo = dirtylog.geometry(d, op.pool.extent_size) if d is not None else None
        if d is None or geo is None:
            continue
        image = dirtylog.read_log(sc.dev, geo, op.pool.uuid, d.uuid)
        image.stale.add(device)
        image.sequence += 1
        dirtylog.write_log(sc.dev, image, op.pool.uuid, d.uuid)


def online_device(s: PoolSession, pool_name: str, key: str, rate: int | None,
                  discard_divergent: bool = False) -> dict[str, Any]:
    with s.held("vv resync"):
        return _online(s, pool_name, key, rate, discard_divergent)


def _online(s: PoolSession, pool_name: str, key: str, rate: int | None,
            discard_divergent: bool = False) -> dict[str, Any]:
    svc = s.ports.mirrors
    with s.changing(pool_name, allow_missing=True) as op:
        dev = op.pool.device(key)
        failed_here = svc is not None and svc.is_failed(op.pool.uuid, dev.uuid)
        stale = any(sc.device_uuid == dev.uuid for sc in op.choice.stale)
        recorded = any(r["device"] == dev.uuid for r in resync_records(op.pool))
        if dev.state != "failed" and not failed_here and not stale:
            if svc is not None and svc.is_busy(op.pool.uuid, dev.uuid):
                return {"device": dev.name, "state": "resyncing"}
            if dev.uuid in op.choice.missing:
                raise RefusedError(f"device {dev.name} is missing, not failed: no readable"
                                   f" label at its paths ({', '.join(dev.paths) or 'none'}) or"
                                   " on the search paths; it is used again once it answers")
            raise RefusedError(f"device {dev.name} has not failed; 'vv device resync"
                               f" {pool_name}' resyncs dirty ranges")
        path = _locate(s, op, dev)
        if path is None:
            raise RefusedError(f"device {dev.name} cannot be found: no readable label on its"
                               f" paths ({', '.join(dev.paths) or 'none'}) or the search paths")
        if not recorded:
            with _scanned(op, dev, path) as scan:
                if _check_diverged(op, dev, path, scan, discard_divergent) \
                        or _is_stale(op, dev, scan):
                    _rebuild_whole(svc, op, dev, scan)
        if dev.state != "failed" or not recorded:
            new = mmirrors.set_device_state(op.pool, dev.uuid, "failed")
            if not recorded:
                new.operations.append(_record(dev.uuid, rate, "returning"))
            s.commit(op, new)
        if svc is not None:
            return {"device": dev.name, "state": "queued"}
        return _finish_offline(s, op, dev.uuid, rate, "returning")


@contextlib.contextmanager
def _scanned(op: OpenPool, dev: Device, path: str) -> Iterator[media.DeviceScan]:
    """The scan of *dev*: the pool's own, or one of *path* opened for the occasion."""
    scan = next((sc for sc in op.choice.scans if sc.device_uuid == dev.uuid), None)
    if scan is not None:
        yield scan
        return
    with FileDevice(path) as f:
        yield media.scan_device(f)


def _check_diverged(op: OpenPool, dev: Device, path: str, scan: media.DeviceScan,
                    discard: bool) -> bool:
    """Was *dev* (found at *path*) written apart from the pool (:func:`media.diverged`)?

    Raises :class:`DivergedError` if so, unless *discard*: then True (the
    caller rebuilds it whole, discarding what was written to it apart).
    """
    found = media.diverged(scan, op.choice)
    if found is None:
        return False
    if discard:
        log.warning("pool %s: device %s was written apart (%s); rebuilding it whole,"
                    " discarding those writes", op.pool.name, dev.name, found)
        return True
    raise DivergedError(
        f"device {dev.name} was written apart from the pool: {found} (each part went on"
        f" without the other). Bringing it back discards what was written to it then: copy"
        f" that out first (open {path} on its own), then run: vv device online"
        f" {op.pool.name} {dev.name} --discard-divergent")


def _is_stale(op: OpenPool, dev: Device, scan: media.DeviceScan) -> bool:
    """Does *dev* miss configurations it should hold (a rolled-back copy)?

    A working device must hold the pool's generation; a failed one, the
    generation before it failed (``failed_at - 1``: commits stopped
    reaching it there).  One that does not missed writes that no dirty log
    names -- they were cleared once both legs had them -- so it is rebuilt
    whole, like a replacement.
    """
    wanted = op.choice.generation if dev.state != "failed" else max(dev.failed_at - 1, 0)
    newest = scan.newest_slot()
    if newest is not None and newest >= wanted:
        return False
    log.warning("pool %s: device %s is stale (its newest generation %s, it should hold %d);"
                " rebuilding it whole", op.pool.name, dev.name, newest, wanted)
    return True


def _rebuild_whole(svc: MirrorsPort | None, op: OpenPool, dev: Device, scan: media.DeviceScan) -> None:
    """Make the coming resync of *dev* copy every mirrored range it holds, and empty its log.

    Its own log (bits and stale list) belongs to the part that went on apart:
    a fresh one replaces it, and the bits set on its partners' logs name
    everything it holds, as for a replacement.  Then the generations that
    part committed are erased from it (:func:`media.apart_generations`): it
    keeps only the history it shares with the pool, so nothing (vvfsck, the
    probe, a later ``vv device online``) takes it for written apart again.
    In that order: once the generations are gone, only the bits durably set
    on its partners say that it must be rebuilt whole.
    """
    dirtylog.init_log(scan.dev, dev, op.pool.extent_size, op.pool.uuid)
    _mark_whole(svc, op, _partner_ranges(op.pool, dev.uuid))
    apart = media.apart_generations(scan, op.choice)
    if scan.label is not None and apart:
        log.warning("pool %s: erasing generations %s, written apart, from device %s",
                    op.pool.name, ", ".join(map(str, apart)), dev.name)
        media.erase_generations(scan.dev, scan.label, apart)


def _partner_ranges(pool: Pool, device: str) -> list[tuple[str, int, int]]:
    """(device, byte, length) of every copy, on the other legs, of what *device* holds."""
    index = mmirrors.MirrorIndex(pool)
    return [(loc.device, loc.offset, span.length)
            for off, n in index.extent_ranges(device)
            for span in index.spans(device, off, n)
            for loc in span.legs if loc.device != device]


def _mark_whole(svc: MirrorsPort | None, op: OpenPool, ranges: Sequence[tuple[str, int, int]]) -> None:
    """Set the dirty bits of *ranges*: through the node's logs, or on media offline."""
    if svc is not None:
        svc.mark_ranges(op.pool.uuid, list(ranges))
    else:
        _mark_ranges_offline(op, ranges)


def _locate(s: PoolSession, op: OpenPool, dev: Device) -> str | None:
    """Where device *dev* answers with its label now (recorded in ``op.paths``), or None.

    A device that failed is not remembered by the catalog any more: look at
    its configured paths, then on the search paths.
    """
    if dev.uuid in op.paths:
        return str(op.paths[dev.uuid])
    for path in dev.paths:
        with contextlib.suppress(ResyncError):
            check_label(path, op.pool.uuid, dev.uuid)
            op.paths[dev.uuid] = path
            return str(path)
    found = discover(s.state.config.search_paths, skip=list(op.paths.values()))
    try:
        for sc in found.pools.get(op.pool.uuid, []):
            if sc.device_uuid == dev.uuid:
                op.paths[dev.uuid] = sc.name
                return str(sc.name)
    finally:
        found.close()
    return None


def _record(device: str, rate: int | None, reason: str) -> dict[str, Any]:
    return mmirrors.resync_record(device, rate, reason, time.time())


def finish_resync(s: PoolSession, pool_name: str, key: str) -> dict[str, Any]:
    with s.changing(pool_name, allow_missing=True) as op:
        dev = op.pool.device(key)
        new = op.pool.copy()
        new.operations = [o for o in new.operations
                          if not (isinstance(o, dict) and o.get("kind") == RESYNC_KIND
                                  and o.get("device") == dev.uuid)]
        new.device(dev.uuid).state = "ok"
        new.device(dev.uuid).failure = ""
        if new.to_dict() != op.pool.to_dict():
            s.commit(op, new)
        return {"device": dev.name, "state": "ok"}


def resync_pool(s: PoolSession, pool_name: str, key: str | None, rate: int | None
                ) -> dict[str, Any]:
    with s.held("vv resync"):
        return _resync_pool(s, pool_name, key, rate)


def _resync_pool(s: PoolSession, pool_name: str, key: str | None, rate: int | None
                 ) -> dict[str, Any]:
    svc = s.ports.mirrors
    if key is not None:
        with s.reading(pool_name) as op:
            dev = op.pool.device(key)
            failed = dev.state == "failed" or (svc is not None
                                               and svc.is_failed(op.pool.uuid, dev.uuid))
        if failed:
            return _online(s, pool_name, key, rate)
    with s.changing(pool_name, allow_missing=True) as op:
        if svc is not None:
            return dict(svc.start_resync(op.pool.uuid, rate))
        return run_offline(s, op, set(), rate, "manual")


def resync_status(s: PoolSession, pool_name: str) -> dict[str, Any]:
    svc = s.ports.mirrors
    if svc is not None:
        uuid = s.pool_uuid(pool_name)
        return dict(svc.status(uuid))
    with s.reading(pool_name) as op:
        dirty = {}
        for sc in op.choice.scans:
            d = next((x for x in op.pool.devices if x.uuid == sc.device_uuid), None)
            geo = dirtylog.geometry(d, op.pool.extent_size) if d is not None else None
            if geo is not None:
                image = dirtylog.read_log(sc.dev, geo, op.pool.uuid, d.uuid)  # type: ignore[union-attr]
                dirty[d.name] = len(image.dirty())  # type: ignore[union-attr]
        return {"jobs": [], "dirty_regions": dirty,
                "failed": [d.name for d in op.pool.devices if d.state == "failed"],
                "resyncing": [], "bringing_back": []}


def replace_device(s: PoolSession, pool_name: str, old: str, new_path: str, force: bool,
                   rate: int | None) -> dict[str, Any]:
    with s.held("vv resync"):
        return _replace(s, pool_name, old, new_path, force, rate)


def _replace(s: PoolSession, pool_name: str, old: str, new_path: str, force: bool,
             rate: int | None) -> dict[str, Any]:
    svc = s.ports.mirrors
    with s.changing(pool_name, allow_missing=True) as op:
        olddev = op.pool.device(old)
        if svc is not None and svc.is_busy(op.pool.uuid, olddev.uuid):
            raise RefusedError(f"device {olddev.name} is being resynced; wait for it")
        size = claim.check_claimable(s.catalog, new_path, force)
        ref = next(sc.label for sc in op.choice.scans if sc.label is not None)
        where = claim.Placement(op.pool.uuid, op.pool.extent_size, ref.geometry.area_size,
                                olddev.tier, olddev.protection, olddev.cost)
        with claim.claiming(new_path, olddev.name, size, where, force=force) as c:
            device = c.device
            try:
                _commit_replacement(s, op, olddev, device, new_path, rate)
            except BaseException:
                op.paths.pop(device.uuid, None)
                raise
        s.remember_dir(new_path)
        claim.unclaim_scans(op.choice.scans, olddev.uuid)
        if svc is not None:
            return {"device": device.name, "uuid": device.uuid, "replaced": olddev.uuid,
                    "state": "queued"}
        out = _finish_offline(s, op, device.uuid, rate, "replace",
                              {device.uuid: os.path.abspath(new_path)})
        out.update({"uuid": device.uuid, "replaced": olddev.uuid})
        return out


def _commit_replacement(s: PoolSession, op: OpenPool, olddev: Device, device: Device,
                        new_path: str, rate: int | None) -> None:
    """Commit *device* in *olddev*'s place, with a resync record and its partners marked."""
    svc = s.ports.mirrors
    new = mmirrors.replace_device(op.pool, olddev.uuid, device)
    new.operations.append(_record(device.uuid, rate, "replace"))
    if svc is not None:
        # OLD leaves the data path first, so that nothing clears these bits
        # (its copies are no longer all in service) before NEW is rebuilt
        svc.fail_now(op.pool.uuid, olddev.uuid, f"being replaced by {new_path}")
    _mark_whole(svc, op, _partner_ranges(new, device.uuid))
    op.paths[device.uuid] = os.path.abspath(new_path)
    s.commit(op, new)


def _mark_ranges_offline(op: OpenPool, ranges: Sequence[tuple[str, int, int]]) -> None:
    by_dev: dict[str, list[tuple[int, int]]] = {}
    for uuid, off, n in ranges:
        by_dev.setdefault(uuid, []).append((off, n))
    for sc in op.choice.scans:
        if sc.device_uuid not in by_dev:
            continue
        d = next(x for x in op.pool.devices if x.uuid == sc.device_uuid)
        geo = dirtylog.geometry(d, op.pool.extent_size)
        if geo is None:
            continue
        image = dirtylog.read_log(sc.dev, geo, op.pool.uuid, d.uuid)
        for off, n in by_dev[sc.device_uuid]:
            for r in geo.regions_of(off, n):
                dirtylog.set_bit(image.bits, r)
        dirtylog.write_log(sc.dev, image, op.pool.uuid, d.uuid)


def _finish_offline(s: PoolSession, op: OpenPool, device: str, rate: int | None, kind: str,
                    extra_paths: dict[str, str] | None = None) -> dict[str, Any]:
    out = run_offline(s, op, {device}, rate, kind, extra_paths)
    if out.get("state") == "done":
        finish_resync(s, op.pool.name, device)
    name = next((d.name for d in op.pool.devices if d.uuid == device), device)
    return {"device": name, **out}


def run_offline(s: PoolSession, op: OpenPool, targets: set[str], rate: int | None, kind: str,
                extra_paths: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a resync of pool *op* with no node (:class:`~vvfs.control.ports.ResyncEngine`)."""
    if s.ports.resync is None:
        raise ResyncError("no resync engine here: mount the pool (vv mount) to resync it")
    pool: Pool = op.pool
    paths = {sc.device_uuid: sc.name for sc in op.choice.scans if sc.device_uuid}
    paths.update(op.paths)
    paths.update(extra_paths or {})

    def emit(kind_: str, severity: str, obj: str, message: str) -> None:
        with contextlib.suppress(VVError):
            s.catalog.add_event(pool.uuid, kind_, severity, obj, message)

    return s.ports.resync.run(pool, paths, targets, rate, kind, emit, s.progress)


def degraded_summary(pool: Pool) -> tuple[list[str], list[str]]:
    """(failed device names, degraded mirrored volume names) of a configuration."""
    failed = {d.uuid for d in pool.devices if d.state == "failed"}
    vols = [v.name for v in pool.volumes
            if any(a.device in failed for seg in v.segments for leg in seg.areas for a in leg)]
    return [d.name for d in pool.devices if d.uuid in failed], vols


