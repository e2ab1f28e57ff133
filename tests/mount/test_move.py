"""Online moves through a real mount, under fio --verify.

Each test builds its own pool (three 1 GiB sparse files) and node.  Moves
are rate-limited (``--rate``) so that a test can act while one is running.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

import vvfsck as fsck
from tools import common
from vvfs.node.client import open_manager

from ..support.mountutil import BIN, MiB, TestPool, mounted, require, run, wait_until

pytestmark = pytest.mark.slow

VVFSCK = str(BIN / "vvfsck")

VOLUME = 128 * MiB


def _fio_args(path: str, size: int = VOLUME) -> list[str]:
    return ["fio", "--output-format=normal", "--name=mv", f"--filename={path}",
            "--rw=randwrite", "--bs=64k", f"--size={size}", "--direct=1", "--ioengine=libaio",
            "--iodepth=16", "--verify=crc32c", "--verify_fatal=1", "--randrepeat=1"]


def _fio_write(path: str, size: int = VOLUME) -> None:
    run(*_fio_args(path, size), "--do_verify=1", timeout=180)


def _fio_verify_only(path: str, size: int = VOLUME) -> None:
    run(*_fio_args(path, size), "--verify_only=1", timeout=180)


def _status(pool: TestPool) -> dict[str, Any]:
    with open_manager(pool.state) as mgr:
        return mgr.move_status(pool.name)  # type: ignore[no-any-return]


def _wait_progress(pool: TestPool, key: str, at_least: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        st = _status(pool)
        if st.get(key, 0) >= at_least:
            return st
        if time.monotonic() > deadline or st.get("state") in ("failed", "done", None):
            pytest.fail(f"move did not reach {key} >= {at_least}: {st}")
        time.sleep(0.05)


def _wait_done(pool: TestPool) -> None:
    wait_until(lambda: not _status(pool), 120, "the move to finish")


def _show(pool: TestPool, name: str) -> dict[str, Any]:
    return json.loads(pool.vv("volume", "show", f"{pool.name}/{name}", "--json").stdout)


def _devices(pool: TestPool) -> dict[str, dict[str, Any]]:
    rows = json.loads(pool.vv("device", "list", pool.name, "--json").stdout)
    return {r["name"]: r for r in rows}


def _on(pool: TestPool, name: str) -> set[str]:
    """Names of the devices holding volume *name*."""
    names = {r["uuid"]: n for n, r in _devices(pool).items()}
    doc = _show(pool, name)
    return {names[a["device"]] for s in doc["segments"] for leg in s["areas"] for a in leg}


def test_move_under_fio_verify(fresh_pool: TestPool) -> None:
    require("fio")
    pool = fresh_pool
    pool.create_volume("v", VOLUME, on=[("d0", None)])
    with mounted(pool):
        path = pool.volume_path("v")
        load = subprocess.Popen([*_fio_args(path), "--do_verify=1", "--rate=24m"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(1.0)
            moved = pool.vv("volume", "move", "tank/v", "--to", "d1", "--rate", "48M", "--wait",
                            timeout=120)
            assert "done" in moved.stdout, moved.stdout
            out, _ = load.communicate(timeout=120)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
        assert load.returncode == 0, out
        jobs = json.loads(pool.vv("status", "--json").stdout)["jobs"]
        [guard] = jobs["guards"].values()
        assert guard["shadow_writes"] > 0, "no write reached the move's destination"
        assert _on(pool, "v") == {"d1"}
        devs = _devices(pool)
        assert devs["d0"]["used"] == 0 and devs["d1"]["used"] == VOLUME
        _fio_verify_only(path)


def test_sigkill_mid_move_resumes_on_mount(fresh_pool: TestPool) -> None:
    require("fio")
    pool = fresh_pool
    pool.create_volume("v", VOLUME, on=[("d0", None)])
    with mounted(pool) as node:
        _fio_write(pool.volume_path("v"))
        pool.vv("volume", "move", "tank/v", "--to", "d2", "--rate", "16M")
        _wait_progress(pool, "checkpoint", 1)
        node.kill()
    with pool.manager() as mgr:
        recorded = mgr.show_pool(pool.name).pool.operations
    assert len(recorded) == 1 and 0 < recorded[0]["copied"] < recorded[0]["total"]
    check = run(VVFSCK, "--state-dir", pool.state, "--pool", pool.name, check=False)
    assert check.returncode == fsck.EXIT_FOUND, check.stdout + check.stderr
    assert "move in progress, resumable" in check.stdout, check.stdout
    with mounted(pool):
        st = _status(pool)
        assert st.get("resumed") is True, st
        _wait_done(pool)
        assert _on(pool, "v") == {"d2"}
        assert _devices(pool)["d0"]["used"] == 0
        _fio_verify_only(pool.volume_path("v"))
        wait_until(lambda: "move-done" in pool.vv("events").stdout, 10, "a move-done event")
        assert "move-resumed" in pool.vv("events").stdout


def test_abort_leaves_everything_as_it_was(fresh_pool: TestPool) -> None:
    require("fio")
    pool = fresh_pool
    pool.create_volume("v", VOLUME, on=[("d0", None)])
    with mounted(pool):
        _fio_write(pool.volume_path("v"))
        before = _show(pool, "v")
        pool.vv("volume", "move", "tank/v", "--to", "d1", "--rate", "16M")
        _wait_progress(pool, "copied", 2)
        aborted = pool.vv("volume", "move", "tank/v", "--abort")
        assert "aborted move" in aborted.stdout, aborted.stdout
        assert _show(pool, "v") == before
        assert _devices(pool)["d1"]["used"] == 0
        assert not _status(pool)
        _fio_verify_only(pool.volume_path("v"))
    with pool.manager() as mgr:
        assert mgr.show_pool(pool.name).pool.operations == []


def test_evacuate_then_remove_a_device(fresh_pool: TestPool) -> None:
    require("fio")
    pool = fresh_pool
    pool.create_volume("mir", 64 * MiB, mirrors=2, on=[("d0", None), ("d1", None)])
    pool.create_volume("lin", 64 * MiB, on=[("d0", None)])
    with mounted(pool):
        for name in ("mir", "lin"):
            _fio_write(pool.volume_path(name), 64 * MiB)
        removed = pool.vv("device", "remove", "tank", "d0", timeout=120)
        assert "removed d0" in removed.stdout and "evacuated d0" in removed.stderr, removed
        assert "d0" not in _devices(pool)
        assert _on(pool, "mir") == {"d1", "d2"}
        assert "d0" not in _on(pool, "lin")
        for name in ("mir", "lin"):
            _fio_verify_only(pool.volume_path(name), 64 * MiB)


def test_move_needs_a_node(fresh_pool: TestPool) -> None:
    pool = fresh_pool
    pool.create_volume("v", 8 * MiB, on=[("d0", None)])
    res = pool.vv("volume", "move", "tank/v", "--to", "d1", check=False)
    assert res.returncode == common.EXIT_FAILED
    assert res.stderr.strip() == ("vv: moving data runs in the node: mount the pool (vv mount)"
                                  " and run it again"), res.stderr


def test_abort_works_offline(fresh_pool: TestPool) -> None:
    """A move left by a dead node is dropped without one: the map stays, the space is free."""
    from mapper import move

    pool = fresh_pool
    pool.create_volume("v", 8 * MiB, on=[("d0", None)])
    with pool.manager() as mgr, mgr.session.changing(pool.name) as op:
        before = op.pool.volume("v")
        mgr.session.commit(op, move.plan_move(op.pool, "v", "d1"))
    res = pool.vv("volume", "move", "tank/v", "--abort")
    assert "aborted move" in res.stdout and "0 of 2 extents" in res.stdout, res.stdout
    with pool.manager() as mgr:
        after = mgr.show_pool(pool.name).pool
    assert after.operations == [] and after.volume("v") == before
    assert _devices(pool)["d1"]["used"] == 0
