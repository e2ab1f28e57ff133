"""Finding vvfs devices: open paths, read their labels, group them by pool."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from metadata import format as fmt
from metadata.blockdev import DeviceIOError
from metadata.media import DeviceScan, read_label, scan_device
from vvfs.errors import ResyncError, StaleDeviceError, WrongDeviceError
from vvfs.io.filedev import FileDevice

log = logging.getLogger(__name__)


@dataclass
class Found:
    """All vvfs devices found on some paths, by pool uuid."""

    pools: dict[str, list[DeviceScan]] = field(default_factory=dict)
    #: device uuid -> paths of every device carrying it, where more than one
    duplicates: dict[str, list[str]] = field(default_factory=dict)
    #: path -> why a device written by a newer vvfs cannot be read here
    unsupported: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        for scans in self.pools.values():
            for s in scans:
                s.dev.close()


def vvfs_mountpoints() -> list[str]:
    """Mount points of every vvfs FUSE mount on this host."""
    points = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2].startswith("fuse.vvfs"):
                    points.append(fields[1].replace("\\040", " "))
    except OSError:
        pass
    return points


def _backed_by_vvfs(path: str, points: list[str]) -> bool:
    """True for a path under a vvfs mount, or a loop device backed by a file there.

    Reading such a device from the node would send the node a request it is
    itself waiting on (SPEC F3.7): discovery never touches them.
    """
    real = os.path.realpath(path)
    targets = [real]
    name = os.path.basename(real)
    if name.startswith("loop"):
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                targets.append(f.read().strip())
        except OSError:
            pass
    return any(t == p or t.startswith(p.rstrip("/") + "/") for t in targets for p in points)


def candidate_paths(paths: Iterable[str]) -> list[str]:
    """Expand directories into the block devices and regular files inside them.

    Devices served by a vvfs mount (see :func:`_backed_by_vvfs`) are left out.
    """
    points = vvfs_mountpoints()
    return [p for p in _expand(paths) if not points or not _backed_by_vvfs(p, points)]


def _expand(paths: Iterable[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            try:
                names = sorted(os.listdir(p))
            except OSError:
                continue
            for name in names:
                full = os.path.join(p, name)
                try:
                    est = os.stat(full)
                except OSError:
                    continue
                if stat.S_ISBLK(est.st_mode) or stat.S_ISREG(est.st_mode):
                    out.append(full)
        elif stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode):
            out.append(p)
    return out


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    if stat.S_ISBLK(st.st_mode):
        return (-1, st.st_rdev)
    return (st.st_dev, st.st_ino)


def discover(paths: Iterable[str], *, readonly: bool = True,
             skip: Iterable[str] = ()) -> Found:
    """Scan *paths* (files, block devices, directories) for vvfs labels.

    The same file reached twice (a symlink, a second search path) is read
    once; two *different* files carrying the same device uuid (cloned media)
    are reported in ``duplicates`` and only the first is kept.
    """
    found = Found()
    seen: set[tuple[int, int]] = set()
    skip_ids = set()
    for p in skip:
        try:
            skip_ids.add(_identity(p))
        except OSError:
            pass
    by_uuid: dict[str, DeviceScan] = {}
    for path in candidate_paths(paths):
        try:
            ident = _identity(path)
        except OSError:
            continue
        if ident in seen or ident in skip_ids:
            continue
        seen.add(ident)
        try:
            dev = FileDevice(path, readonly=readonly)
        except DeviceIOError as exc:
            log.debug("skipping %s: %s", path, exc)
            continue
        try:
            scan = scan_device(dev)
        except DeviceIOError as exc:
            log.debug("skipping %s: %s", path, exc)
            dev.close()
            continue
        if scan.unsupported:
            found.unsupported[path] = str(scan.unsupported[0])
        if scan.label is None:
            dev.close()
            continue
        duuid = scan.label.device_uuid
        if duuid in by_uuid:
            found.duplicates.setdefault(duuid, [by_uuid[duuid].name]).append(path)
            dev.close()
            continue
        by_uuid[duuid] = scan
        found.pools.setdefault(scan.label.pool_uuid, []).append(scan)
    return found


class _Borrowed:
    """Reads through a descriptor someone else owns (a BlockDevice for reading labels)."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name

    def pread(self, length: int, offset: int) -> bytes:
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as exc:
            raise DeviceIOError(self.name, offset, f"read failed: {exc.strerror}",
                                exc.errno) from None
        if len(data) != length:
            raise DeviceIOError(self.name, offset, f"short read: {len(data)} of {length} bytes")
        return data

    def pwrite(self, data: bytes, offset: int) -> None:
        raise DeviceIOError(self.name, offset, "read-only here")

    def flush(self) -> None:
        return None

    def size(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_END)

    def close(self) -> None:
        return None


def verify_identity(fd: int, path: str, pool_uuid: str, device: str, generation: int = 0
                    ) -> int:
    """The newest generation on open *fd* (of *path*), once it proved to be the device expected.

    Raises :class:`WrongDeviceError` unless its label names device *device*
    of pool *pool_uuid*, and :class:`StaleDeviceError` if it holds no
    generation *generation* or newer (0: any).  Read through *fd* itself,
    so that what is checked is what will be read and written.
    """
    dev = _Borrowed(fd, path)
    label, _errors = read_label(dev)
    if label is None:
        raise WrongDeviceError(path, "no readable vvfs label: not the device expected")
    if (label.pool_uuid, label.device_uuid) != (pool_uuid, device):
        raise WrongDeviceError(path, f"carries device {label.device_uuid} of pool"
                                     f" {label.pool_uuid}, not device {device} of pool"
                                     f" {pool_uuid}")
    newest = scan_device(dev).newest_slot()
    if generation and (newest is None or newest < generation):
        raise StaleDeviceError(path, newest, generation)
    return newest or 0


def identity(pool_uuid: str, device: str) -> Callable[[int, str, int], int]:
    """A ``verify`` for :class:`vvfs.io.devio.DataDevice`: :func:`verify_identity` of *device*."""
    def verify(fd: int, path: str, generation: int) -> int:
        return verify_identity(fd, path, pool_uuid, device, generation)
    return verify


def check_label(path: str, pool_uuid: str, device: str) -> fmt.Label:
    """The label at *path*; ResyncError unless it is device *device* of pool *pool_uuid*."""
    try:
        with FileDevice(path, readonly=True) as f:
            label, _errors = read_label(f)
    except DeviceIOError as exc:
        raise ResyncError(f"{path}: {exc}") from None
    if label is None:
        raise ResyncError(f"{path}: no readable vvfs label")
    if (label.pool_uuid, label.device_uuid) != (pool_uuid, device):
        raise ResyncError(f"{path}: carries device {label.device_uuid} of pool"
                          f" {label.pool_uuid}, not the device expected")
    return label
