"""Device holds (vvfs/io/hold.py) and what the claim's probe says of a device in use.

Real files, real processes holding them, real loop devices; nothing faked.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from metadata.blockdev import DeviceIOError
from vvfs.io import hold
from vvfs.io.probe import in_use

from .test_probe import MiB, loop_device, sparse

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def holder(image: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding *image* with hold.take(), until the block ends."""
    code = ("import sys, time; from vvfs.io import hold; h = hold.take(sys.argv[1]);"
            " print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(image)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "held":
            pytest.fail("the holding process did not take its hold")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_file_open_in_another_process_is_in_use_and_named(tmp_path: Path) -> None:
    image = sparse(tmp_path, "open.img", MiB)
    with open(image, "rb") as f:
        proc = subprocess.Popen(["sleep", "120"], stdin=f)
    try:
        assert in_use(str(image)) == f"{image} is open by pid {proc.pid} (sleep)"
    finally:
        proc.kill()
        proc.wait()


def test_file_held_by_a_vvfs_process_is_in_use(tmp_path: Path) -> None:
    image = sparse(tmp_path, "held.img", MiB)
    with holder(image) as proc:
        reason = in_use(str(image))
    assert reason is not None
    assert reason.startswith(f"{image} is in use by vvfs: pid {proc.pid} (")
    assert reason.endswith("holds its device lock")


def test_hold_of_this_process_is_seen_by_its_own_probe(tmp_path: Path) -> None:
    image = sparse(tmp_path, "mine.img", MiB)
    h = hold.take(str(image))
    try:
        assert hold.is_locked(str(image))
    finally:
        h.release()


def test_a_file_held_by_another_process_cannot_be_held(tmp_path: Path) -> None:
    image = sparse(tmp_path, "taken.img", MiB)
    with holder(image) as proc, pytest.raises(DeviceIOError) as exc:
        hold.take(str(image))
    assert exc.value.errno == errno.EBUSY
    assert f"in use by another process (pid {proc.pid} (" in str(exc.value)


def test_holds_of_one_process_share_one_lock(tmp_path: Path) -> None:
    image = sparse(tmp_path, "shared.img", MiB)
    first = hold.take(str(image))
    second = hold.take(str(image))
    first.release()
    try:
        assert hold.is_locked(str(image))
    finally:
        second.release()
    assert not hold.is_locked(str(image))


@pytest.mark.slow
def test_a_held_block_device_cannot_be_opened_exclusively(tmp_path: Path) -> None:
    image = sparse(tmp_path, "block.img", 64 * MiB)
    with loop_device(image) as dev:
        h = hold.take(dev)
        try:
            with pytest.raises(OSError) as exc:
                os.close(os.open(dev, os.O_RDONLY | os.O_EXCL))
            reason = in_use(dev)
        finally:
            h.release()
    assert exc.value.errno == errno.EBUSY
    assert reason is not None and reason.startswith(f"{dev} is busy")
    assert f"pid {os.getpid()} (" in reason
