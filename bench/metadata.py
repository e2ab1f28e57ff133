"""Metadata benchmark: 10,000 volumes in a 16-device pool.

Measures, on sparse files under a temporary directory:

* creating 10,000 volumes in ONE commit (``Manager.create_volumes``);
* the cost of one single-volume commit (``Manager.create_volume``, what one
  ``vv volume create`` does) at several pool sizes, and from those the time
  to create all 10,000 one commit each (trapezoid sum; ``--full`` runs them
  all instead);
* ``vv volume list`` (a real subprocess) and opening the pool from media;
* the size of the configuration document against the metadata slot.

Usage: ``python -m bench.metadata [--volumes N] [--devices N] [--full]``.
Prints a markdown table and writes JSON next to it with ``--json FILE``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import mapper
from metadata import format as fmt
from vvfs.api import Manager


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t, result


def make_pool(root: str, devices: int, size: int) -> Manager:
    paths = []
    for i in range(devices):
        p = os.path.join(root, f"dev{i:02}.img")
        with open(p, "wb") as f:
            f.truncate(size)
        paths.append(p)
    mgr = Manager(os.path.join(root, "state"))
    mgr.create_pool("bench", paths)
    return mgr


def spec(name: str) -> mapper.VolumeSpec:
    return mapper.VolumeSpec(name=name, size=4 << 20)


def single_commit_cost(mgr: Manager, tag: str, samples: int) -> float:
    t = time.perf_counter()
    for i in range(samples):
        mgr.create_volume(f"bench/{tag}-{i}", spec(""))
    per = (time.perf_counter() - t) / samples
    for i in range(samples):
        mgr.remove_volume(f"bench/{tag}-{i}")
    return per


def run(volumes: int, devices: int, full: bool, samples: int) -> dict:
    out: dict = {"volumes": volumes, "devices": devices}
    with tempfile.TemporaryDirectory(prefix="vvfs-bench-") as root:
        mgr = make_pool(root, devices, 64 << 30)
        if full:
            t = time.perf_counter()
            for i in range(volumes):
                mgr.create_volume(f"bench/v{i:05}", spec(""))
            out["one_commit_each_s"] = time.perf_counter() - t
            out["one_commit_each_measured"] = True
        else:
            points = {}
            step = max(volumes // 4, 1)
            made = 0
            # every step, and the full count even when step does not divide it
            for target in sorted({*range(0, volumes, step), volumes}):
                if target > made:
                    mgr.create_volumes("bench", [spec(f"v{i:05}")
                                                 for i in range(made, target)])
                    made = target
                points[target] = single_commit_cost(mgr, f"s{target}", samples)
            sizes = sorted(points)
            total = sum((points[a] + points[b]) / 2 * (b - a) for a, b in itertools.pairwise(sizes))
            out["single_commit_s_at"] = {str(k): round(v, 4) for k, v in points.items()}
            out["one_commit_each_s"] = total
            out["one_commit_each_measured"] = False
            # a fresh pool for the batch measurement
            mgr.close()
            for name in os.listdir(root):
                if name.endswith(".img"):
                    os.unlink(os.path.join(root, name))
            shutil.rmtree(os.path.join(root, "state"))
            mgr = make_pool(root, devices, 64 << 30)
        if not full:
            dt, _ = timed(mgr.create_volumes, "bench", [spec(f"v{i:05}") for i in range(volumes)])
            out["batch_commit_s"] = dt
        dt, op = timed(mgr.session.open, "bench")
        out["open_s"] = dt
        pool = op.pool
        op.close()
        _enc, payload = fmt.encode_payload(pool.to_dict())
        out["config_bytes_compressed"] = len(payload)
        out["config_bytes_json"] = len(json.dumps(pool.to_dict(), separators=(",", ":")))
        out["slot_capacity_bytes"] = fmt.plan_geometry(64 << 30, pool.extent_size).max_payload
        env = dict(os.environ, VVFS_STATE_DIR=os.path.join(root, "state"))
        vv = os.path.join(os.path.dirname(sys.executable), "vv")
        t = time.perf_counter()
        subprocess.run([vv, "volume", "list", "bench"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        out["vv_volume_list_s"] = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run([vv, "volume", "list", "bench", "--json"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        out["vv_volume_list_json_s"] = time.perf_counter() - t
        mgr.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=10000)
    ap.add_argument("--devices", type=int, default=16)
    ap.add_argument("--samples", type=int, default=10,
                    help="single commits timed at each pool size")
    ap.add_argument("--full", action="store_true",
                    help="really create every volume with its own commit (slow)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args()
    res = run(args.volumes, args.devices, args.full, args.samples)
    print(f"| metadata, {res['volumes']} volumes on {res['devices']} devices | value |")
    print("|---|---|")
    for k, v in res.items():
        if k in ("volumes", "devices"):
            continue
        print(f"| {k} | {v if not isinstance(v, float) else round(v, 3)} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
