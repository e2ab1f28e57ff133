"""Helpers of the vvfsck, crash and corruption tests: small pools, the CLI, crash images.

Pools are built on 64 MiB sparse files with 1 MiB extents and the smallest
metadata areas the format allows, through the real :class:`vvfs.api.Manager`
(or straight through :mod:`metadata.media` on memory devices, for speed).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

import mapper
import mapper.mirrors
import vvfs.control.claim
import vvfs.io.discovery
from metadata import format as fmt
from metadata import media
from metadata.model import Device, Pool, new_uuid
from tools.vvfsck import main as vvfsck_main
from vvfs.api import Manager
from vvfs.io.filedev import FileDevice
from vvfs.testing.faultdev import MemoryDevice, Recorder

from .util import sparse_file

SUMMARY = re.compile(r"^(pool \S+ \([0-9a-f-]+\) at |no pool: |other devices: )")
DEV_SIZE = 64 << 20
EXTENT = 1 << 20
MDA = fmt.MIN_METADATA_SIZE


@dataclass
class Run:
    """What one vvfsck run printed and returned."""

    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def findings(self) -> list[str]:
        """The finding lines (not the per-pool summary, not repair notes)."""
        return [ln for ln in self.lines if not SUMMARY.match(ln)
                and not ln.startswith(("repaired: ", "left: ", "repair failed: "))]


def vvfsck(*args: str) -> Run:
    """Run the vvfsck command line in this process."""
    out, err = io.StringIO(), io.StringIO()
    rc = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            vvfsck_main([str(a) for a in args])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    return Run(rc, out.getvalue(), err.getvalue())


def sparse(path: Path | str, size: int = DEV_SIZE) -> str:
    return sparse_file(path, size)


def state_dir(path: Path, search: list[str], host_id: str = "host-1") -> str:
    """A state directory whose search paths are only *search* (never /dev)."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "vvfs.yaml", "w") as f:
        yaml.safe_dump({"host_id": host_id, "search_paths": search}, f)
    return os.fspath(path)


@dataclass
class Env:
    """A pool made by the Manager on sparse files in *root*."""

    root: Path
    state: str
    paths: list[str]
    name: str = "tank"

    def manager(self) -> Manager:
        return Manager(self.state)

    def media_pool(self) -> Pool:
        return media_choice(self.paths).pool

    def check(self, *extra: str) -> Run:
        return vvfsck("--pool", self.name, "--state-dir", self.state, *extra)

    def repair(self) -> Run:
        return self.check("--repair", "--yes")


def make_env(root: Path, n: int = 3, *, volumes: int = 2, mirrors: int = 1,
             spare: int = 0) -> Env:
    """A pool "tank" of *n* devices with *volumes* small volumes (and *spare* unclaimed files)."""
    devdir = root / "devs"
    devdir.mkdir(parents=True, exist_ok=True)
    paths = [sparse(devdir / f"disk{i}") for i in range(n + spare)]
    env = Env(root, state_dir(root / "state", [os.fspath(devdir)]), paths)
    with env.manager() as mgr:
        mgr.create_pool("tank", paths[:n], extent_size=EXTENT, metadata_size=MDA)
        for i in range(volumes):
            mgr.create_volume(f"tank/v{i}", mapper.VolumeSpec(name="", size=(3 + i) << 20,
                                                              mirrors=mirrors))
    return env


def media_choice(paths: list[str]) -> media.Choice:
    """Open the pool on *paths* the way a node does (read-only), and close the files."""
    devs = [FileDevice(p, readonly=True) for p in paths]
    try:
        scans = []
        for d in devs:
            s = media.scan_device(d)
            if s.label is not None:
                scans.append(s)
        return media.choose_generation(scans)
    finally:
        for d in devs:
            d.close()


def zero(path: str, offset: int, length: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(length))


def label_of(path: str) -> fmt.Label:
    with FileDevice(path, readonly=True) as dev:
        label, _ = media.read_label(dev)
    if label is None:
        raise AssertionError(f"{path}: no label")
    return label


def copy_sparse(src: str | Path, dst: str | Path) -> None:
    """Copy a device file, leaving holes where it reads zeros (tmpfs stays small)."""
    chunk = 1 << 20
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        for off in range(0, size, chunk):
            data = fin.read(chunk)
            if data.count(0) != len(data):
                fout.seek(off)
                fout.write(data)
        fout.truncate(size)


@contextlib.contextmanager
def scratch(fallback: Path) -> Iterator[Path]:
    """A scratch directory on tmpfs (fsync is free there), else *fallback*."""
    if not os.access("/dev/shm", os.W_OK):
        yield fallback
        return
    path = Path(tempfile.mkdtemp(prefix="vvfs-test-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------
# Crash images of Manager operations


@contextlib.contextmanager
def recording(recorder: Recorder) -> Iterator[Recorder]:
    """Route every device the Manager opens through *recorder*."""
    real = FileDevice

    def opener(path: str, *, readonly: bool = False) -> object:
        return recorder.device(real(path, readonly=readonly), os.path.realpath(path))

    saved = (vvfs.io.discovery.FileDevice, vvfs.control.claim.FileDevice)
    vvfs.io.discovery.FileDevice = opener  # type: ignore[assignment,misc]
    vvfs.control.claim.FileDevice = opener  # type: ignore[assignment,misc]
    try:
        yield recorder
    finally:
        vvfs.io.discovery.FileDevice, vvfs.control.claim.FileDevice = saved  # type: ignore[misc]


def open_plain(key: str) -> FileDevice:
    return FileDevice(key)


# ---------------------------------------------------------------------------
# Pools on memory devices (fast corruption tests)


@dataclass
class MemPool:
    pool: Pool
    devs: list[MemoryDevice]
    labels: list[fmt.Label]

    def targets(self) -> list[media.Target]:
        return [media.Target(d, lb) for d, lb in zip(self.devs, self.labels)]

    def commit(self, new: Pool) -> Pool:
        new.generation = self.pool.generation + 1
        media.commit_generation(self.targets(), new)
        self.pool = new
        return new

    def snapshot(self) -> list[dict[int, bytes]]:
        return [d.snapshot() for d in self.devs]

    def restore(self, snap: list[dict[int, bytes]]) -> None:
        for d, s in zip(self.devs, snap):
            d.restore(s)


def mem_pool(n: int = 3, *, size: int = DEV_SIZE, generations: int = 10) -> MemPool:
    """A pool on *n* memory devices with a few volumes, committed *generations* times."""
    pool = Pool(uuid=new_uuid(), name="tank", extent_size=EXTENT, generation=1,
                active_host="host-1")
    devs, labels = [], []
    for i in range(n):
        dev = MemoryDevice(size, name=f"mem{i}")
        geom = fmt.plan_geometry(size, EXTENT, MDA)
        label = fmt.Label(pool.uuid, new_uuid(), geom, 1.0)
        media.initialize_device(dev, label)
        pool.devices.append(Device(uuid=label.device_uuid, name=f"d{i}", size=geom.device_size,
                                   data_start=geom.data_start,
                                   extent_count=geom.extent_count))
        devs.append(dev)
        labels.append(label)
    mp = MemPool(pool, devs, labels)
    media.commit_generation(mp.targets(), pool)
    for g in range(2, generations + 1):
        spec = mapper.VolumeSpec(name=f"v{g}", size=(g % 4 + 1) << 20, mirrors=1 + g % 2)
        mp.commit(mapper.create_volume(mp.pool, spec))
    return mp


# ---------------------------------------------------------------------------
# Committing hand-made configurations (what no Manager call would write)


def commit_raw(env: Env, new: Pool, *, sync_catalog: bool = True) -> Pool:
    """Commit *new* as the next generation on the pool's files, bypassing every check."""
    choice = media_choice(env.paths)
    new.generation = choice.max_seen + 1
    devs = {}
    try:
        for p in env.paths:
            dev = FileDevice(p)
            label, _ = media.read_label(dev)
            if label is None or label.pool_uuid != new.uuid:
                dev.close()
                continue
            devs[label.device_uuid] = (dev, label)
        targets = [media.Target(*devs[d.uuid]) for d in new.devices if d.uuid in devs]
        media.commit_generation(targets, new)
    finally:
        for dev, _ in devs.values():
            dev.close()
    if sync_catalog:
        with env.manager() as mgr:
            mgr.catalog.sync_pool(new, {d.uuid: d.paths[0] for d in new.devices if d.paths})
    return new


def pending_resync(env: Env, device: str = "d1", *, fail: bool = True) -> Pool:
    """Commit a resync record of *device* as ``vv device online`` does, and stop there.

    What a node killed before the resync ended leaves behind: the device
    failed (by the real :meth:`Manager.fail_device`) and a record made by
    :func:`mapper.mirrors.resync_record`, committed through the Manager's own
    session (``changing``/``commit``) as :func:`vvfs.control.mirrors.online_device` does.
    With *fail* false the device stays ok (a stale record).
    """
    with env.manager() as mgr:
        if fail:
            mgr.fail_device(env.name, device, reason="test")
        with mgr.session.changing(env.name, allow_missing=True) as op:
            new = op.pool.copy()
            new.operations.append(mapper.mirrors.resync_record(
                op.pool.device(device).uuid, None, "returning", time.time()))
            return mgr.session.commit(op, new)


def catalog_pool(env: Env) -> Pool | None:
    with env.manager() as mgr:
        row = mgr.catalog.find_pool(env.name)
        return mgr.catalog.load_pool(row.uuid) if row else None


# ---------------------------------------------------------------------------
# Crashing a Manager operation


@dataclass
class Recorded:
    """A Manager operation run under a Recorder, and the catalog as it was before it."""

    recorder: Recorder
    before: Pool
    after: Pool | None
    paths: dict[str, str]

    def crash(self, env: Env, surviving: dict) -> None:
        """Make the devices the crash image *surviving* and the catalog what it was before.

        The catalog is written only after the media commit returned, so at any
        crash point inside the commit it still holds the old generation.
        """
        self.recorder.apply(surviving, open_plain)
        with env.manager() as mgr:
            mgr.catalog.sync_pool(self.before, self.paths)


def record_op(env: Env, op) -> Recorded:
    """Run ``op(manager)`` with every device write recorded."""
    with env.manager() as mgr:
        row = mgr.catalog.find_pool(env.name)
        before = mgr.catalog.load_pool(row.uuid)
        paths = mgr.catalog.device_paths(row.uuid)
    rec = Recorder()
    with recording(rec), env.manager() as mgr:
        op(mgr)
    rec.recording = False
    after = media_choice(env.paths).pool
    return Recorded(rec, before, after, paths)


def metadata_regions(path: str) -> list[tuple[int, bytes]]:
    """The labels and metadata areas of a device file, to put back later."""
    g = label_of(path).geometry
    spans = [(0, g.area_a + g.area_size), (g.area_b, g.device_size - g.area_b)]
    with FileDevice(path, readonly=True) as dev:
        return [(off, dev.pread(n, off)) for off, n in spans]


def put_back(path: str, regions: list[tuple[int, bytes]]) -> None:
    with FileDevice(path) as dev:
        for off, data in regions:
            dev.pwrite(data, off)


# ---------------------------------------------------------------------------
# Assertions shared by the vvfsck test modules (their fixtures, ``root`` and
# ``env``, are in tests/conftest.py)


def assert_repaired_clean(env: Env) -> None:
    """--repair fixes everything (exit 1), then a new run is clean (exit 0)."""
    import vvfsck as fsck

    fixed = env.repair()
    assert fixed.rc == fsck.EXIT_FOUND, fixed.out + fixed.err
    again = env.check()
    assert again.rc == fsck.EXIT_CLEAN, again.out + again.err
    assert catalog_pool(env).to_dict() == env.media_pool().to_dict()

