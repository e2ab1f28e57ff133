"""vvfs beside its peers: fio and an ext4 copy on every target, in one run.

``python -m bench.run [--quick] [--out DIR]`` (``make bench``) prepares
pre-filled backing files on disk, serves them through every target (the raw
file, vvfs linear / mirrored (reads verified, and not) / striped volumes,
qemu-storage-daemon's FUSE
export, nbdfuse over nbdkit), runs every workload on every target --
workload by workload, the targets side by side, so that drift of the
machine hits all of them alike -- then the metadata benchmark, and writes
``results.json``, ``results.md`` and ``chart.png`` to the output directory
(default ``bench/results/<timestamp>/``).  See ``bench/README.md``.

Everything it starts (servers, mounts, loop devices) is stopped in
``finally`` blocks; the work directory is removed only when nothing is
mounted under it any more.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass

from . import chart, peers, report
from .peers import Target
from .workloads import (
    ALL_WORKLOADS,
    EXT4_COPY,
    BenchError,
    MiB,
    Result,
    Workload,
    check_data,
    fill_file,
    make_tree,
    require_fio,
    run_ext4_copy,
    run_fio,
)

log = logging.getLogger("bench.run")

HERE = os.path.dirname(os.path.abspath(__file__))
#: vvfs devices hold a linear volume, a leg of each of the two mirrors and half a
#: stripe (3.5 volume sizes) plus labels, metadata areas and extent rounding.
DEVICE_SLACK = 64 * MiB


@dataclass(frozen=True)
class Config:
    mode: str
    size: int
    runtime: float
    ramp: float
    tree_bytes: int
    meta_volumes: int
    meta_devices: int
    meta_samples: int
    check_bytes: int
    repeat: int = 1


FULL = Config("full", 1024 * MiB, 15.0, 3.0, 200 * MiB, 10000, 16, 10, 16 * MiB)
QUICK = Config("quick", 64 * MiB, 0.8, 0.2, 16 * MiB, 500, 4, 3, 4 * MiB)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="about a minute: 64 MiB files, 1 s runs, a 16 MiB tree, 500 volumes")
    ap.add_argument("--out", metavar="DIR", help="output directory "
                    "[default bench/results/<timestamp>]")
    ap.add_argument("--dir", metavar="DIR", default="/var/tmp",
                    help="where the work directory with the backing files goes "
                         "(on disk, not tmpfs) [default /var/tmp]")
    ap.add_argument("--dir-b", metavar="DIR",
                    help="directory for vvfs's second backing file, ideally on other "
                         "storage [default: a second directory beside the first]")
    ap.add_argument("--size", metavar="MIB", type=int, help="file and volume size in MiB")
    ap.add_argument("--runtime", type=float, help="seconds per fio run (after the ramp)")
    ap.add_argument("--ramp", type=float, help="seconds of fio ramp before measuring")
    ap.add_argument("--tree", metavar="MIB", type=int, help="size of the ext4 copy tree")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="run every workload N times on every target (interleaved) and keep "
                         "the median by throughput [default 1]")
    ap.add_argument("--targets", help="comma-separated subset of: raw, vvfs (or vvfs-linear, "
                    "vvfs-mirror, vvfs-mirror-nv, vvfs-stripe, vvfs-linear-python), qsd, "
                    "nbdfuse")
    ap.add_argument("--workloads", help="comma-separated subset of: "
                    + ", ".join(wl.name for wl in ALL_WORKLOADS))
    ap.add_argument("--vvfs-opts", default="backing=direct,engine=native",
                    help="vv mount -o options (vvfs-linear-python: the same with "
                         "engine=python) [default backing=direct,engine=native]")
    ap.add_argument("--no-metadata", action="store_true", help="skip the metadata benchmark")
    ap.add_argument("--profile", action="store_true",
                    help="after measuring, rerun each fio workload on the vvfs targets under "
                         "py-spy and write profile-<target>-<workload>.svg (not measured)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap.parse_args(argv)


def config(args: argparse.Namespace) -> Config:
    base = QUICK if args.quick else FULL
    return Config(
        base.mode,
        args.size * MiB if args.size else base.size,
        args.runtime if args.runtime is not None else base.runtime,
        args.ramp if args.ramp is not None else base.ramp,
        args.tree * MiB if args.tree else base.tree_bytes,
        base.meta_volumes, base.meta_devices, base.meta_samples, base.check_bytes,
        args.repeat,
    )


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- facts about the run


def storage_of(path: str) -> str:
    """'ext4 on vda' style description of the file system holding *path*."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    fstype = "?"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[2] == dev:
                fstype = parts[parts.index("-") + 1]
    name = dev
    link = f"/sys/dev/block/{dev}"
    if os.path.exists(link):
        name = os.path.basename(os.path.realpath(link))
    return f"{fstype} on {name}"


def versions() -> dict[str, str]:
    out = {}
    for key, cmd in (("fio", ["fio", "--version"]),
                     ("qemu-storage-daemon", ["qemu-storage-daemon", "--version"]),
                     ("nbdkit", ["nbdkit", "--version"]),
                     ("nbdfuse", ["nbdfuse", "--version"])):
        v = peers.version(cmd)
        out[key] = v if v else "not installed"
    rev = subprocess.run(["git", "-C", HERE, "describe", "--always", "--dirty"],
                         capture_output=True, text=True, check=False).stdout.strip()
    out["vvfs"] = rev or "?"
    out["python"] = platform.python_version()
    return out


# ---------------------------------------------------------------- the run


def wanted(args: argparse.Namespace) -> tuple[set[str], list[Workload]]:
    names = {"raw", *peers.VVFS_TITLES, "qsd", "nbdfuse"}
    if args.targets:
        asked = {t.strip() for t in args.targets.split(",") if t.strip()}
        if "vvfs" in asked:
            asked |= set(peers.VVFS_TITLES)
            asked.discard("vvfs")
        unknown = asked - names
        if unknown:
            raise BenchError(f"unknown target(s): {', '.join(sorted(unknown))}")
        names = asked
    wls = list(ALL_WORKLOADS)
    if args.workloads:
        order = [w.strip() for w in args.workloads.split(",") if w.strip()]
        known = {wl.name: wl for wl in ALL_WORKLOADS}
        bad = [w for w in order if w not in known]
        if bad:
            raise BenchError(f"unknown workload(s): {', '.join(bad)}")
        wls = [known[w] for w in order]
    return names, wls


def measure(target: Target, wl: Workload, cfg: Config, tree: str, tree_bytes: int,
            workdir: str) -> Result:
    """One workload on one target, with the CPU its servers used meanwhile and
    (vvfs) how many of its requests the native driver served."""
    assert target.path is not None
    target.ready()
    served = target.requests() if target.requests else None
    before = {pid: peers.cpu_seconds(pid) for pid in target.pids}
    t = time.monotonic()
    if wl is EXT4_COPY:
        res = run_ext4_copy(target.name, target.path, tree, tree_bytes, workdir)
    else:
        res = run_fio(target.name, target.path, wl, size=cfg.size, runtime=cfg.runtime,
                      ramp=cfg.ramp, workdir=workdir)
    wall = time.monotonic() - t
    used = 0.0
    for pid, start in before.items():
        end = peers.cpu_seconds(pid)
        if start is not None and end is not None:
            used += end - start
    if target.pids and wall > 0:
        res.extra["server_cpu_pct"] = 100.0 * used / wall
        res.extra["server_cpu_s"] = used
        if wl.is_fio and res.iops:
            # requests ~ iops over ramp + runtime: fio's start and exit, when the
            # server idles, are left out of the denominator and cost it nothing
            res.extra["server_cpu_us"] = used / (res.iops * ((res.seconds or 0) + cfg.ramp)) * 1e6
    after = target.requests() if target.requests and served else None
    if served and after:
        res.extra["native_requests"] = after[0] - served[0]
        res.extra["python_requests"] = after[1] - served[1]
    return res


def progress(res: Result) -> str:
    if res.error:
        return f"  {res.workload:16} {res.target:18} ERROR {res.error}"
    lat = ""
    if res.lat_p50_us is not None:
        lat = f"  p50 {res.lat_p50_us:8.1f} µs  p99 {res.lat_p99_us:8.1f} µs"
    iops = f"  {res.iops:9.0f} IOPS" if res.iops is not None else f"  {res.seconds:7.2f} s"
    cpu = res.extra.get("server_cpu_pct")
    cpu_s = f"  server cpu {cpu:4.0f}%" if cpu is not None else ""
    return f"  {res.workload:16} {res.target:18} {res.mib_s:9.1f} MiB/s{iops}{lat}{cpu_s}"


def prepare(cfg: Config, dir_a: str, dir_b: str) -> tuple[str, str, str]:
    """The peers' backing file and vvfs's two device files, every byte written."""
    peer = os.path.join(dir_a, "peer.img")
    dev_a = os.path.join(dir_a, "vvfs-dev0.img")
    dev_b = os.path.join(dir_b, "vvfs-dev1.img")
    dev_size = cfg.size * 7 // 2 + DEVICE_SLACK
    for path, size in ((peer, cfg.size), (dev_a, dev_size), (dev_b, dev_size)):
        fill_file(path, size)
    return peer, dev_a, dev_b


def start_targets(stack: contextlib.ExitStack, names: set[str], cfg: Config, args,
                  workdir: str, peer: str, dev_a: str, dev_b: str) -> list[Target]:
    targets: list[Target] = []
    if "raw" in names:
        targets.append(peers.raw_target(peer))
    if names & set(peers.VVFS_TITLES):
        vv = stack.enter_context(peers.vvfs_targets(
            dev_a, dev_b, os.path.join(workdir, "vvfs-state"), os.path.join(workdir, "mnt-vvfs"),
            cfg.size, args.vvfs_opts))
        targets += [t for t in vv if t.name in names]
    if "qsd" in names:
        targets.append(stack.enter_context(peers.qsd_target(
            peer, os.path.join(workdir, "mnt-qsd.img"), os.path.join(workdir, "qsd.log"))))
    if "nbdfuse" in names:
        targets.append(stack.enter_context(peers.nbdfuse_target(
            peer, os.path.join(workdir, "mnt-nbd"), os.path.join(workdir, "nbdkit.sock"),
            os.path.join(workdir, "nbd.log"))))
    return targets


def check_targets(targets: list[Target], cfg: Config) -> None:
    """Does each target keep concurrent writes apart?  (Not measured; said loudly.)"""
    say("data check: concurrent 4 KiB and 1 MiB writes read back and verified")
    for t in targets:
        if t.skipped or t.path is None:
            continue
        t.ready()
        bad = check_data(t.path, cfg.size, cfg.check_bytes)
        t.data_check = "ok" if bad is None else f"FAILED: {bad}"
        say(f"  {t.name:18} {t.data_check}")


def run_all(targets: list[Target], wls: list[Workload], cfg: Config, tree: str,
            tree_bytes: int, workdir: str) -> list[Result]:
    """Every workload on every target; the order of the targets is reversed on
    every other pass (drift hits both ends alike, and the vvfs targets that need
    a remount follow each other: one remount per pass)."""
    results = []
    live = [t for t in targets if not t.skipped]
    passes = 0
    for wl in wls:
        say(f"{wl.name}: {wl.title}")
        runs: dict[str, list[Result]] = {t.name: [] for t in live}
        for _ in range(cfg.repeat):
            order = live if passes % 2 == 0 else live[::-1]
            passes += 1
            for t in order:
                res = measure(t, wl, cfg, tree, tree_bytes, workdir)
                say(progress(res))
                runs[t.name].append(res)
        results += [median(rs) for rs in runs.values()]
    return results


def median(runs: list[Result]) -> Result:
    """The run with the median throughput (the first error if every run failed)."""
    good = sorted((r for r in runs if r.error is None), key=lambda r: r.mib_s or 0.0)
    if not good:
        return runs[0]
    pick = good[(len(good) - 1) // 2]
    if len(runs) > 1:
        pick.extra["runs_mib_s"] = [r.mib_s for r in runs]
    return pick


def profile_vvfs(targets: list[Target], wls: list[Workload], cfg: Config, workdir: str,
                 out_dir: str) -> None:
    """Rerun fio workloads on the vvfs targets under py-spy (flame graphs, not measured)."""
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.access(spy, os.X_OK):
        spy = shutil.which("py-spy") or ""
    if not spy:
        say("bench: NO PROFILE: py-spy is not installed (pip install py-spy)")
        return
    for t in targets:
        if t.skipped or not t.name.startswith("vvfs") or not t.pids:
            continue
        for wl in wls:
            if not wl.is_fio:
                continue
            t.ready()
            svg = os.path.join(out_dir, f"profile-{t.name}-{wl.name}.svg")
            spy_proc = subprocess.Popen(
                [spy, "record", "--nonblocking", "--rate", "250", "--pid", str(t.pids[0]),
                 "--duration", str(int(cfg.runtime + cfg.ramp) + 1), "--output", svg],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                run_fio(t.name, t.path or "", wl, size=cfg.size, runtime=cfg.runtime,
                        ramp=cfg.ramp, workdir=workdir)
            finally:
                try:
                    spy_proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    spy_proc.terminate()
                    spy_proc.wait()
            say(f"  profile {svg}")


def run_metadata(cfg: Config) -> dict:
    """bench.metadata.run at this mode's scale; a failure is recorded, not raised."""
    from . import metadata

    say(f"metadata: {cfg.meta_volumes} volumes on {cfg.meta_devices} devices")
    try:
        return metadata.run(cfg.meta_volumes, cfg.meta_devices, False, cfg.meta_samples)
    except Exception as e:  # noqa: BLE001 -- keep the I/O results of a long run
        traceback.print_exc()
        say(f"bench: METADATA BENCHMARK FAILED: {e}")
        return {"volumes": cfg.meta_volumes, "devices": cfg.meta_devices,
                "error": f"{type(e).__name__}: {e}"}


def cleanup_workdir(workdir: str, keep: bool) -> None:
    left = peers.mounts_under(workdir)
    if left:
        say(f"bench: NOT removing {workdir}: still mounted: {', '.join(left)}")
    elif keep:
        say(f"bench: kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    cfg = config(args)
    try:
        require_fio()
        names, wls = wanted(args)
    except BenchError as e:
        say(f"bench: {e}")
        return 2
    if os.geteuid() != 0:
        say("bench: run as root (FUSE mounts, loop devices, mkfs)")
        return 2
    started = datetime.datetime.now().replace(microsecond=0)
    out_dir = args.out or os.path.join(HERE, "results", started.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out_dir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="vvfs-bench-", dir=args.dir)
    dir_a = os.path.join(workdir, "a")
    dir_b = tempfile.mkdtemp(prefix="vvfs-bench-b-", dir=args.dir_b) if args.dir_b \
        else os.path.join(workdir, "b")
    os.makedirs(dir_a)
    os.makedirs(dir_b, exist_ok=True)
    t0 = time.monotonic()
    meta = {
        "started": started.isoformat(sep=" "), "mode": cfg.mode,
        "size_mib": cfg.size // MiB, "runtime_s": cfg.runtime, "ramp_s": cfg.ramp,
        "tree_mib": cfg.tree_bytes // MiB, "host": platform.node(), "cpus": os.cpu_count(),
        "kernel": platform.release(), "versions": versions(), "vvfs_mount_opts": args.vvfs_opts,
        "repeat": cfg.repeat, "loadavg_start": os.getloadavg(),
    }
    sa, sb = storage_of(dir_a), storage_of(dir_b)
    meta["storage"] = (f"backing files in {dir_a} ({sa}); vvfs's second device in {dir_b} "
                       f"({sb})" + ("; both on the SAME disk: striping and mirroring are "
                                    "over two files on one device" if sa == sb else ""))
    say(f"bench: {cfg.mode} run -> {out_dir}; storage: {meta['storage']}")
    results: list[Result] = []
    targets: list[Target] = []
    try:
        say(f"preparing files ({cfg.size // MiB} MiB per target) and a "
            f"{cfg.tree_bytes // MiB} MiB tree")
        peer, dev_a, dev_b = prepare(cfg, dir_a, dir_b)
        tree = os.path.join(workdir, "tree")
        _, tree_bytes = make_tree(tree, cfg.tree_bytes)
        with contextlib.ExitStack() as stack:
            targets = start_targets(stack, names, cfg, args, workdir, peer, dev_a, dev_b)
            check_targets(targets, cfg)
            results = run_all(targets, wls, cfg, tree, tree_bytes, workdir)
            if args.profile:
                profile_vvfs(targets, wls, cfg, workdir, out_dir)
    except BenchError as e:
        say(f"bench: {e}")
        return 1
    finally:
        cleanup_workdir(workdir, args.keep)
        if args.dir_b:
            cleanup_workdir(dir_b, args.keep)
    metadata = None if args.no_metadata else run_metadata(cfg)
    meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    meta["loadavg_end"] = os.getloadavg()
    doc = report.document(meta, [t.to_dict() for t in targets], results, metadata)
    _js, md = report.write(doc, out_dir)
    why = chart.available()
    if why:
        say(f"bench: NO CHART: {why}")
    else:
        chart.render(doc, os.path.join(out_dir, "chart.png"))
    with open(md) as f:
        print(f.read())
    for t in targets:
        if t.skipped:
            say(f"bench: {t.name} was SKIPPED: {t.skipped}")
    say(f"bench: done in {meta['elapsed_s']} s: {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
