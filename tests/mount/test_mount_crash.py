"""SIGKILL the node during fio writes; after a remount nothing fsynced is lost.

fio writes a mirrored volume sequentially with a crc32c verify header in
every block and an fsync every 4 writes.  Once it has written at least
``MIN_WRITTEN`` bytes the node is killed with SIGKILL (its FUSE mount is
then dead and is lazily unmounted), fio fails on its next write and saves
its verify state: how many writes had completed.  The pool is mounted again
and ``fio --verify_only --verify_state_load=1`` re-reads every block whose
write completed -- a superset of the fsynced ones -- and checks its header
and checksum.  The test fails if the node acknowledged a write that it had
not handed to the backing devices, if the pool does not open after the
kill, or if a block landed in the wrong place.  A control run shows that
the same verification does fail on blocks that were never written.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from ..support.mountutil import MiB, MountedNode, TestPool, fio, require

pytestmark = pytest.mark.slow

SIZE = 96 * MiB
MIN_WRITTEN = 16 * MiB


def _job(path: str) -> list[str]:
    return ["--name=crash", f"--filename={path}", "--rw=write", "--bs=64k", f"--size={SIZE}",
            "--direct=1", "--ioengine=psync", "--thread", "--verify=crc32c",
            "--verify_fatal=1"]


def _written(pid: int) -> int:
    """Bytes fio has passed to write(2) so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _verified(output: str) -> int:
    """Bytes read by a verify run, from fio's READ summary line."""
    m = re.search(r"READ: .*?io=([\d.]+)([KMG]i?B)", output)
    if not m:
        return 0
    unit = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}.get(m.group(2), 1)
    return int(float(m.group(1)) * unit)


def _kill_during_writes(node: MountedNode, path: str, cwd: Path) -> None:
    proc = subprocess.Popen(["fio", *_job(path), "--fsync=4", "--do_verify=0",
                             "--verify_state_save=1", "--rate=32m"],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while _written(proc.pid) < MIN_WRITTEN:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"fio did not get {MIN_WRITTEN} bytes written before the kill:\n"
                            f"{proc.communicate()[0]}")
            time.sleep(0.02)
        node.kill()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, f"fio finished before the node died:\n{out}"


def test_sigkill_loses_no_completed_write(fresh_pool: TestPool, tmp_path: Path) -> None:
    require("fio")
    fresh_pool.create_volume("c", SIZE, mirrors=2)
    path = fresh_pool.volume_path("c")
    node = MountedNode(fresh_pool)
    try:
        node.start()
        _kill_during_writes(node, path, tmp_path)
        assert list(tmp_path.glob("*verify.state")), "fio saved no verify state"
        node.start()
        res = fio(*_job(path), "--verify_only", "--verify_state_load=1", cwd=str(tmp_path),
                  check=False)
        assert res.returncode == 0, f"data lost after SIGKILL:\n{res.stdout}{res.stderr}"
        assert _verified(res.stdout) >= MIN_WRITTEN, res.stdout
        control = fio(*_job(path), "--verify_only", cwd=str(tmp_path), check=False)
        assert control.returncode != 0, "verifying never-written blocks passed: no real check"
        node.umount()
    finally:
        node.cleanup()
