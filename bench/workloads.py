"""The workloads of ``python -m bench.run``: fio jobs and a loop-attached ext4 copy.

Every fio job opens its file with ``O_DIRECT`` (``--direct=1``) through
``libaio``, runs ``time_based`` for a runtime after a ramp, and is parsed
from fio's JSON into one :class:`Result`.  The ext4 workload loop-attaches
the target file with ``--direct-io=on``, makes an ext4 file system on it,
mounts it, copies a fixed generated tree of files into it and syncs; the
time of the copy and the sync is the result.

Latency percentiles are fio's *total* latency (``lat_ns``: submission to
completion, ``--lat_percentiles=1``), in microseconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)

MiB = 1 << 20
KiB = 1 << 10


class BenchError(Exception):
    """A benchmark step failed in a way the user should see as one line."""


@dataclass(frozen=True)
class Workload:
    """One measured workload; ``rw`` is fio's ``--rw`` (None for the ext4 copy)."""

    name: str
    title: str
    rw: str | None
    bs: int
    iodepth: int

    @property
    def is_write(self) -> bool:
        return self.rw is None or "write" in self.rw

    @property
    def is_fio(self) -> bool:
        return self.rw is not None


FIO_WORKLOADS: tuple[Workload, ...] = (
    Workload("seq-read", "1 MiB sequential read, QD4", "read", MiB, 4),
    Workload("seq-write", "1 MiB sequential write, QD4", "write", MiB, 4),
    Workload("rand-read-qd1", "4 KiB random read, QD1", "randread", 4 * KiB, 1),
    Workload("rand-read-qd16", "4 KiB random read, QD16", "randread", 4 * KiB, 16),
    Workload("rand-write-qd1", "4 KiB random write, QD1", "randwrite", 4 * KiB, 1),
    Workload("rand-write-qd16", "4 KiB random write, QD16", "randwrite", 4 * KiB, 16),
)
EXT4_COPY = Workload("ext4-copy", "ext4 on loop (direct-io): copy a tree, sync", None, 0, 0)
ALL_WORKLOADS: tuple[Workload, ...] = FIO_WORKLOADS + (EXT4_COPY,)


@dataclass
class Result:
    """One (target, workload) measurement.  ``None`` means not measured."""

    target: str
    workload: str
    mib_s: float | None = None
    iops: float | None = None
    lat_p50_us: float | None = None
    lat_p99_us: float | None = None
    #: wall time of the measured part (fio: runtime; ext4: copy + sync)
    seconds: float | None = None
    error: str | None = None
    #: workload-specific details (server CPU use, loop dio flag, mkfs time ...)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- fio


def fio_version() -> str | None:
    """fio's version string, or None when fio is not installed."""
    if shutil.which("fio") is None:
        return None
    out = subprocess.run(["fio", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


def require_fio() -> str:
    """fio's version; raise BenchError naming the Debian package when it is missing."""
    version = fio_version()
    if version is None:
        raise BenchError("fio is not installed: apt-get install fio (Debian package 'fio')")
    return version


def fio_command(path: str, wl: Workload, *, size: int, runtime: float, ramp: float,
                output: str) -> list[str]:
    """The fio command line of workload *wl* on file *path* (which must exist)."""
    if not wl.is_fio:
        raise ValueError(f"{wl.name} is not a fio workload")
    return [
        "fio", f"--name={wl.name}", f"--filename={path}", f"--size={size}",
        f"--rw={wl.rw}", f"--bs={wl.bs}", f"--iodepth={wl.iodepth}",
        "--direct=1", "--ioengine=libaio", "--numjobs=1", "--thread",
        "--time_based", f"--runtime={_msec(runtime)}", f"--ramp_time={_msec(ramp)}",
        "--norandommap", "--randrepeat=0", "--lat_percentiles=1",
        # never create, lay out or preallocate: a file missing under a dead
        # mount must fail, not be written into the mount point's directory
        "--allow_file_create=0", "--fallocate=none", "--create_on_open=0",
        "--output-format=json", f"--output={output}",
    ]


def _msec(seconds: float) -> str:
    return f"{max(int(seconds * 1000), 1)}ms"


def run_fio(target: str, path: str, wl: Workload, *, size: int, runtime: float,
            ramp: float, workdir: str) -> Result:
    """Run one fio job; a failure becomes a Result with ``error`` set."""
    fd, output = tempfile.mkstemp(prefix=f"fio-{wl.name}-", suffix=".json", dir=workdir)
    os.close(fd)
    cmd = fio_command(path, wl, size=size, runtime=runtime, ramp=ramp, output=output)
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              timeout=runtime + ramp + 120)
        if proc.returncode != 0:
            msg = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}")
            return Result(target, wl.name, error=f"fio failed: {msg.splitlines()[-1]}")
        with open(output) as f:
            return parse_fio(f.read(), target, wl)
    except subprocess.TimeoutExpired:
        return Result(target, wl.name, error="fio timed out")
    finally:
        os.unlink(output)


def parse_fio(text: str, target: str, wl: Workload) -> Result:
    """One Result from fio's JSON output (a single job, read or write side)."""
    start = text.find("{")  # fio may print warnings before the JSON document
    if start < 0:
        raise BenchError(f"fio printed no JSON for {target}/{wl.name}")
    doc = json.loads(text[start:])
    job = doc["jobs"][0]
    if job.get("error"):
        return Result(target, wl.name, error=f"fio job error {job['error']}")
    side = job["write"] if wl.is_write else job["read"]
    lat = side.get("lat_ns") or {}
    pct = lat.get("percentile") or side.get("clat_ns", {}).get("percentile") or {}
    return Result(
        target, wl.name,
        mib_s=side["bw_bytes"] / MiB,
        iops=side["iops"],
        lat_p50_us=_pct_us(pct, "50.000000"),
        lat_p99_us=_pct_us(pct, "99.000000"),
        seconds=side["runtime"] / 1000.0,
        extra={"io_bytes": side["io_bytes"], "lat_mean_us": lat.get("mean", 0) / 1000.0,
               # fio's own user + system CPU, percent of one core over its run
               "fio_cpu_pct": job.get("usr_cpu", 0.0) + job.get("sys_cpu", 0.0)},
    )


def _pct_us(pct: dict, key: str) -> float | None:
    value = pct.get(key)
    return None if value is None else value / 1000.0


#: (name, fio --rw, block size, queue depth) of the data check; every block
#: written is read back and its checksum and offset header verified.
DATA_CHECKS = (("check-rand-4k-qd16", "randwrite", 4 * KiB, 16),
               ("check-seq-1m-qd4", "write", MiB, 4))
DATA_CHECK_BYTES = 16 * MiB


def check_data(path: str, size: int, region: int = DATA_CHECK_BYTES) -> str | None:
    """Write verifiable blocks into *path* concurrently and read them back.

    Returns None when every block came back as written, else fio's first
    complaint.  Destroys the first ``DATA_CHECK_BYTES`` of the file.  Not a
    measurement: it says whether a target's numbers come from a data path that
    keeps concurrent writes apart.
    """
    region = min(size, region)
    for name, rw, bs, depth in DATA_CHECKS:
        proc = subprocess.run(
            ["fio", f"--name={name}", f"--filename={path}", f"--size={region}", f"--rw={rw}",
             f"--bs={bs}", f"--iodepth={depth}", "--direct=1", "--ioengine=libaio",
             "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
             "--allow_file_create=0", "--fallocate=none", "--output-format=terse"],
            capture_output=True, text=True, check=False, timeout=300)
        if proc.returncode != 0:
            lines = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}")
            return f"{name}: {lines.splitlines()[0]}"
    return None


def fill_file(path: str, size: int) -> None:
    """Create (or extend) *path* to *size* bytes, every byte written (fio, direct I/O)."""
    proc = subprocess.run(
        ["fio", "--name=fill", f"--filename={path}", f"--size={size}", "--rw=write",
         "--bs=1M", "--iodepth=8", "--direct=1", "--ioengine=libaio", "--fallocate=none",
         "--output-format=terse"],
        capture_output=True, text=True, check=False)
    if proc.returncode != 0 or os.path.getsize(path) != size:
        raise BenchError(f"could not fill {path}: {proc.stderr.strip() or proc.stdout.strip()}")


# ---------------------------------------------------------------- ext4 copy


def make_tree(root: str, total: int, seed: int = 6) -> tuple[int, int]:
    """Write a fixed tree of files under *root* (sizes in a fixed mix, seeded
    contents); return (files, bytes).  Same *total* and *seed*, same tree."""
    rng = random.Random(seed)
    mix = ((4 * KiB, 0.05), (64 * KiB, 0.30), (MiB, 0.65))  # file size, share of bytes
    files = written = 0
    for size, share in mix:
        count = max(int(total * share) // size, 1)
        for i in range(count):
            d = os.path.join(root, f"d{size // KiB}k", f"{i // 100:03}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"f{i:05}"), "wb") as f:
                f.write(rng.randbytes(size))
            files += 1
            written += size
    return files, written


def _run(cmd: list[str], what: str, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    if proc.returncode != 0:
        err = [line.strip() for line in (proc.stderr + proc.stdout).splitlines()
               if line.strip() and "dmesg(1) may have more" not in line]
        raise BenchError(f"{what} failed: {' '.join(err) if err else f'exit {proc.returncode}'}")
    return proc.stdout


@contextlib.contextmanager
def loop_device(path: str) -> Iterator[str]:
    """Attach *path* to a new loop device with direct I/O; detach it afterwards."""
    dev = _run(["losetup", "--direct-io=on", "-f", "--show", path], f"losetup {path}").strip()
    try:
        yield dev
    finally:
        proc = subprocess.run(["losetup", "-d", dev], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log.warning("losetup -d %s: %s", dev, proc.stderr.strip())


@contextlib.contextmanager
def mounted(dev: str, mnt: str) -> Iterator[str]:
    """Mount *dev* on *mnt*; unmount afterwards (lazily if a plain umount fails)."""
    _run(["mount", "-t", "ext4", dev, mnt], f"mount {dev}")
    try:
        yield mnt
    finally:
        proc = subprocess.run(["umount", mnt], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log.warning("umount %s failed (%s); lazy unmount", mnt, proc.stderr.strip())
            subprocess.run(["umount", "-l", mnt], check=False)


def loop_dio(dev: str) -> bool | None:
    """Whether the kernel really uses direct I/O on loop device *dev*."""
    try:
        with open(f"/sys/block/{os.path.basename(dev)}/loop/dio") as f:
            return f.read().strip() == "1"
    except OSError:
        return None


def run_ext4_copy(target: str, path: str, tree: str, tree_bytes: int, workdir: str) -> Result:
    """The ext4 copy workload on file *path*; errors become a Result with ``error``."""
    mnt = tempfile.mkdtemp(prefix="ext4-", dir=workdir)
    try:
        with loop_device(path) as dev:
            dio = loop_dio(dev)
            t = time.perf_counter()
            _run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                  dev], f"mkfs.ext4 {dev}")
            mkfs_s = time.perf_counter() - t
            with mounted(dev, mnt):
                t = time.perf_counter()
                _run(["cp", "-a", tree, os.path.join(mnt, "tree")], "cp")
                cp_s = time.perf_counter() - t
                _run(["sync", "-f", mnt], "sync")
                seconds = time.perf_counter() - t
        return Result(target, EXT4_COPY.name, mib_s=tree_bytes / MiB / seconds, seconds=seconds,
                      extra={"mkfs_s": mkfs_s, "cp_s": cp_s, "sync_s": seconds - cp_s,
                             "loop_dio": dio, "tree_bytes": tree_bytes})
    except (BenchError, subprocess.TimeoutExpired) as e:
        return Result(target, EXT4_COPY.name, error=str(e))
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(mnt)
