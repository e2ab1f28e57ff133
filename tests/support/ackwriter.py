"""Concurrent O_DIRECT writer that logs each write only once it is acknowledged.

Run as ``python -m tests.support.ackwriter PATH LOG --size S --bs B --depth D``.
*depth* threads take the offsets of a seeded permutation of the file's blocks
(every block is written at most once, so an acknowledged block has exactly one
right content) and ``pwrite`` each block with bytes derived from the seed and
its offset.  A line ``offset`` is appended to *LOG* only after the write
returned the full length; every fourth write of a thread is followed by
``fsync``.  When the node under the file dies the writes fail and the writer
exits non-zero, leaving in *LOG* exactly the writes the node acknowledged.

fio's saved verify state cannot be used for this: fio 3.33 counts an
asynchronous write that completed with an error (ECONNABORTED once the node
is gone) as written, and its ``--verify_only`` run then reports that never
acknowledged block as lost.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import sys
import threading
import time


def block(seed: int, offset: int, bs: int) -> bytes:
    """The bytes the writer puts at *offset*."""
    return random.Random(seed * 1_000_003 + offset).randbytes(bs)


def offsets(seed: int, size: int, bs: int) -> list[int]:
    """The order the writer issues its blocks in."""
    order = list(range(0, size, bs))
    random.Random(seed).shuffle(order)
    return order


def acknowledged(log: str) -> list[int]:
    """The offsets the writer logged as acknowledged."""
    with open(log) as f:
        return [int(line) for line in f if line.strip()]


def _run(path: str, log: str, size: int, bs: int, depth: int, seed: int, pause: float) -> int:
    todo = iter(offsets(seed, size, bs))
    lock = threading.Lock()
    failures: list[str] = []
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    logfd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def worker() -> None:
        buf = mmap.mmap(-1, bs)  # page aligned, as O_DIRECT wants
        done = 0
        while not failures:
            with lock:
                offset = next(todo, None)
            if offset is None:
                return
            buf[:] = block(seed, offset, bs)
            try:
                if os.pwrite(fd, buf, offset) != bs:
                    raise OSError(f"short write at {offset}")
                done += 1
                if done % 4 == 0:
                    os.fsync(fd)
            except OSError as exc:
                failures.append(f"offset {offset}: {exc}")
                return
            os.write(logfd, f"{offset}\n".encode())
            time.sleep(pause)

    threads = [threading.Thread(target=worker) for _ in range(depth)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        print(f"ackwriter: {failures[0]}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("log")
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--bs", type=int, default=65536)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between a thread's writes")
    a = ap.parse_args()
    return _run(a.path, a.log, a.size, a.bs, a.depth, a.seed, a.pause)


if __name__ == "__main__":
    sys.exit(main())
