"""Claiming devices for a pool: the checks first, then labels and areas, undone on failure.

A device is claimed by ``vv pool create``, ``vv device add`` and ``vv device
replace``, always the same way:

1. :func:`check_claimable` refuses a device that is in use (mounted, a loop
   device's backing file, locked by a vvfs node, open in any process, a
   device of a pool imported here or of a pool its label says is active on
   some host), and one that carries a signature -- an exported pool's vvfs
   label or a foreign one (file systems, partition tables, RAID, LVM ...)
   -- unless *force*.  ``--force`` never overrides a device in use.
2. :func:`claiming` writes the labels, the empty metadata areas, the zeroed
   checksum region and a fresh dirty log, and yields the open device.  If
   the caller's commit fails (anything raised inside the ``with``), the
   labels and areas are erased again, so a failed claim leaves no half
   pool member behind; the device is closed either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from metadata import checksums, dirtylog, media
from metadata import format as fmt
from metadata.blockdev import DeviceIOError
from metadata.catalog import Catalog
from metadata.errors import VVError
from metadata.model import Device, DeviceUUID, Pool, new_uuid
from vvfs.errors import RefusedError
from vvfs.io import probe
from vvfs.io.filedev import FileDevice

log = logging.getLogger(__name__)


@dataclass
class Claim:
    """A device being claimed: open, labelled, not yet in a committed configuration."""

    dev: FileDevice
    label: fmt.Label
    device: Device

    @property
    def target(self) -> media.Target:
        """Where a commit writes the pool's configuration on this device."""
        return media.Target(self.dev, self.label)


@dataclass(frozen=True)
class Placement:
    """What a claim writes besides the device itself: its pool and storage class."""

    pool_uuid: str
    extent_size: int
    metadata_size: int
    tier: int = 2
    protection: int = 0
    cost: float = 0.0


def check_claimable(catalog: Catalog, path: str, force: bool) -> int:
    """Refuse a device in use, or carrying a signature unless *force*; return its size.

    In use, whatever *force* says: a device of a pool in this host's catalog;
    one that :func:`vvfs.io.probe.in_use` reports (mounted, a loop device's
    backing file, locked by a vvfs node that serves it, open in any
    process); one whose own configuration says that its pool is active on
    a host (this one or another: only an exported pool's device may be
    taken with *force*).
    """
    size = probe.device_size(path)
    label, pool = _read_vvfs(path)
    row = catalog.find_pool(label.pool_uuid) if label is not None else None
    if row is not None:
        raise RefusedError(f"{path}: belongs to imported pool {row.name}; refusing to claim"
                           " it (--force does not override a device in use)")
    reason = probe.in_use(path)
    if reason:
        raise RefusedError(f"{reason}; refusing to claim it (--force does not override a"
                           " device in use)")
    if pool is not None and pool.active_host is not None:
        raise RefusedError(f"{path}: a device of pool {pool.name} ({pool.uuid}), active on"
                           f" host {pool.active_host}; refusing to claim it (--force does not"
                           " override a device in use: export or destroy that pool first)")
    if label is not None and not force:
        raise RefusedError(f"{path}: vvfs signature of {label.pool_uuid} at byte"
                           f" {fmt.LABEL_A_OFFSET}; use --force to claim it anyway")
    if not force:
        sigs = probe.foreign_signatures(path)
        if sigs:
            raise RefusedError(
                f"{path}: {sigs[0].describe()}"
                + (f" (and {len(sigs) - 1} more)" if len(sigs) > 1 else "")
                + "; use --force to claim it anyway"
            )
    return size


def _read_vvfs(path: str) -> tuple[fmt.Label | None, Pool | None]:
    """The vvfs label on *path* and the pool configuration its own areas hold (or None)."""
    try:
        with FileDevice(path, readonly=True) as dev:
            scan = media.scan_device(dev)
            if scan.label is None:
                return None, None
            try:
                return scan.label, media.choose_generation([scan]).pool
            except VVError:  # no readable configuration: only the label speaks
                return scan.label, None
    except DeviceIOError as exc:
        raise RefusedError(str(exc)) from None


@contextlib.contextmanager
def claiming(path: str, name: str, size: int, where: Placement, *, force: bool
             ) -> Iterator[Claim]:
    """Claim the device at *path* (checked by :func:`check_claimable`) as device *name*.

    Yields the :class:`Claim`; everything raised inside the ``with`` erases
    the labels and areas written (then propagates).  The device is closed
    on leaving.
    """
    claim = _write_claim(path, name, size, where, force)
    try:
        yield claim
    except BaseException:
        with contextlib.suppress(DeviceIOError):
            unclaim(claim.dev, claim.label)
        raise
    finally:
        claim.dev.close()


def _write_claim(path: str, name: str, size: int, where: Placement, force: bool) -> Claim:
    try:
        geometry = fmt.plan_geometry(size, where.extent_size, where.metadata_size)
    except fmt.GeometryError as exc:
        raise RefusedError(f"{path}: {exc}") from None
    if force:
        probe.wipe_signatures(path)
    label = fmt.Label(where.pool_uuid, new_uuid(), geometry, time.time())
    device = Device(
        uuid=DeviceUUID(label.device_uuid), name=name, size=geometry.device_size,
        data_start=geometry.data_start, extent_count=geometry.extent_count, tier=where.tier,
        protection=where.protection, cost=where.cost, paths=[os.path.abspath(path)],
    )
    dirtylog.carve(device, where.extent_size)  # the dirty log: the last extents
    checksums.carve(device)  # the block-checksum region at the end of the extents
    dev = FileDevice(path)
    try:
        media.initialize_device(dev, label)
        checksums.init_region(dev, device, where.extent_size)
        dirtylog.init_log(dev, device, where.extent_size, where.pool_uuid)
    except DeviceIOError:
        dev.close()
        raise
    return Claim(dev, label, device)


def unclaim(dev: FileDevice, label: fmt.Label) -> None:
    """Erase the labels and metadata areas written by a claim (undo)."""
    media.erase_metadata(dev, label)


def unclaim_scans(scans: list[media.DeviceScan], device: str | None = None) -> None:
    """Erase the labels of the scanned devices (of *device* only, if given); errors ignored."""
    for s in scans:
        if s.label is not None and (device is None or s.device_uuid == device):
            with contextlib.suppress(DeviceIOError):
                unclaim(s.dev, s.label)  # type: ignore[arg-type]
