"""fio on a vvfs linear volume beside the raw backing file (direct I/O).

Usage (as root)::

    .venv/bin/python -m bench.fio_basic [--dir DIR] [--size 1G] [--runtime 5]
                                         [--backing buffered,direct]

Builds a pool on one sparse image in DIR, creates a linear volume of SIZE,
mounts it (once per backing cache mode of the node), and runs the six
workloads -- 1 MiB sequential write and read, 4 KiB random write and read,
each at iodepth 1 and 16, libaio, ``--direct=1`` -- on the volume file and on
a raw file of the same size in DIR.  Prints MiB/s and IOPS per workload.
Everything it makes (mount, node, files) is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

VV = str(Path(sys.executable).parent / "vv")
WORKLOADS = [  # (label, rw, bs)
    ("seq write 1M", "write", "1M"),
    ("seq read 1M", "read", "1M"),
    ("rand write 4K", "randwrite", "4k"),
    ("rand read 4K", "randread", "4k"),
]
DEPTHS = (1, 16)


def fio(path: str, rw: str, bs: str, depth: int, size: str, runtime: int) -> dict:
    args = ["fio", "--name=b", f"--filename={path}", f"--rw={rw}", f"--bs={bs}",
            f"--iodepth={depth}", "--ioengine=libaio", "--direct=1", f"--size={size}",
            f"--runtime={runtime}", "--time_based", "--group_reporting",
            "--output-format=json", "--randrepeat=0"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return {"MiB/s": side["bw_bytes"] / (1 << 20), "IOPS": side["iops"],
            "lat_us": side["lat_ns"]["mean"] / 1000}


def run_set(path: str, size: str, runtime: int) -> dict[str, dict]:
    # fill the whole target once so that reads and writes see allocated blocks
    subprocess.run(["fio", "--name=fill", f"--filename={path}", "--rw=write", "--bs=1M",
                    "--direct=1", f"--size={size}", "--ioengine=libaio", "--iodepth=8",
                    "--output-format=terse"], capture_output=True, check=True)
    results = {}
    for label, rw, bs in WORKLOADS:
        for depth in DEPTHS:
            results[f"{label} qd{depth}"] = fio(path, rw, bs, depth, size, runtime)
    return results


def vv(state: str, *args: str, check: bool = True) -> int:
    env = {**os.environ, "VVFS_STATE_DIR": state}
    return subprocess.run([VV, *args], check=check, capture_output=True, env=env).returncode


def bench_vvfs(work: Path, size: str, runtime: int, backing: str) -> dict[str, dict]:
    state, mnt = str(work / f"state-{backing}"), work / f"mnt-{backing}"
    image = work / f"pool-{backing}.img"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(_bytes(size) + (256 << 20))
    vv(state, "pool", "create", "bench", str(image))
    vv(state, "volume", "create", "bench/lin", "--size", size)
    vv(state, "mount", "bench", str(mnt), "-o", f"backing={backing}")
    try:
        return run_set(str(mnt / "bench" / "lin"), size, runtime)
    finally:
        if vv(state, "umount", str(mnt), check=False):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def _bytes(size: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(size[:-1]) * units[size[-1].upper()] if size[-1].upper() in units else int(size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runtime", type=int, default=5)
    ap.add_argument("--backing", default="buffered,direct")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vvfs-bench-", dir=args.dir))
    try:
        columns = {"raw file": run_set(str(work / "raw.img"), args.size, args.runtime)}
        for backing in args.backing.split(","):
            columns[f"vvfs {backing}"] = bench_vvfs(work, args.size, args.runtime, backing)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    names = list(columns)
    print(f"{'workload':18}" + "".join(f"{n:>26}" for n in names))
    for row in columns[names[0]]:
        cells = []
        for n in names:
            r = columns[n][row]
            cells.append(f"{r['MiB/s']:9.1f} MiB/s {r['IOPS']:8.0f} IOPS")
        print(f"{row:18}" + "".join(f"{c:>26}" for c in cells))


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("bench.fio_basic: run as root (FUSE mount with allow_other)")
    main()
