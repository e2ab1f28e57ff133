"""The host state directory and vvfs.yaml: checked whole, and every failure one line.

Issue 11, items 13 (an unusable or locked state directory) and 15 (what
vvfs.yaml may say).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from vvfs.errors import StateError
from vvfs.state import StateDir, parse_config

from ..support.mountutil import VV, require, run

GOOD = {"host_id": "h1", "search_paths": ["/srv"], "socket": "/run/vvfs.sock",
        "catalog_url": "sqlite:////var/lib/vvfs/catalog.sqlite"}


def test_a_full_configuration_is_read_as_written():
    cfg = parse_config("vvfs.yaml", dict(GOOD))
    assert (cfg.host_id, cfg.search_paths, cfg.socket, cfg.catalog_url) == (
        "h1", ["/srv"], "/run/vvfs.sock", "sqlite:////var/lib/vvfs/catalog.sqlite")


@pytest.mark.parametrize(("change", "says"), [
    ({"socket": "tcp://0.0.0.0:8080"}, "socket 'tcp://0.0.0.0:8080' is not supported"),
    ({"socket": "vvfs.sock"}, "give its absolute path"),
    ({"socket": 8080}, "socket must be a path"),
    ({"catalog_url": "mysql://db/vvfs"}, "catalog_url 'mysql://db/vvfs' is not supported"),
    ({"catalog_url": ["sqlite://"]}, "catalog_url must be a URL"),
    ({"search_paths": "/dev"}, "search_paths must be a list of paths"),
    ({"search_paths": ["dev"]}, "search_paths must be absolute: dev"),
    ({"host_id": ""}, "host_id must be a non-empty string"),
    ({"host_id": 7}, "host_id must be a non-empty string"),
    ({"listen": "tcp://x"}, "unknown setting listen"),
])
def test_what_vvfs_does_not_support_is_refused_naming_the_key(change, says):
    with pytest.raises(StateError, match="^vvfs.yaml: ") as err:
        parse_config("vvfs.yaml", {**GOOD, **change})
    assert says in str(err.value)


def test_a_document_that_is_no_mapping_is_refused():
    with pytest.raises(StateError, match="not a mapping"):
        parse_config("vvfs.yaml", ["host_id", "h1"])


def write_config(state: Path, **settings: object) -> None:
    state.mkdir(parents=True, exist_ok=True)
    (state / "vvfs.yaml").write_text(yaml.safe_dump({"host_id": "h1", **settings}))


def test_vv_refuses_a_tcp_socket_in_one_line_and_makes_nothing(tmp_path):
    state = tmp_path / "state"
    write_config(state, socket="tcp://127.0.0.1:7000")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    before = set(os.listdir(tmp_path)), os.path.exists("/tcp:")
    for args in (("pool", "list"), ("mount", str(mnt))):
        res = run(VV, *args, "--state-dir", str(state), check=False)
        assert res.returncode == 1, res.stderr
        assert res.stderr.count("\n") == 1 and "is not supported" in res.stderr
    assert (set(os.listdir(tmp_path)), os.path.exists("/tcp:")) == before
    assert sorted(os.listdir(state)) == ["vvfs.yaml"]


@contextlib.contextmanager
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a tmpfs mounted read-only (root writes anywhere else)."""
    require("mount", "umount")
    where = tmp_path / "ro"
    where.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where))
    try:
        (where / "state").mkdir()
        run("mount", "-o", "remount,ro", str(where))
        yield where / "state"
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("args", [("pool", "list"), ("scan",), ("volume", "list", "tank")])
def test_an_unwritable_state_directory_is_one_line_and_exit_1(tmp_path, args):
    with read_only_dir(tmp_path) as state:
        res = run(VV, *args, "--state-dir", str(state), check=False)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1
    assert "Read-only file system" in res.stderr


def test_vv_mount_on_an_unwritable_state_directory_is_one_line(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with read_only_dir(tmp_path) as state:
        res = run(VV, "mount", str(mnt), "--state-dir", str(state), check=False)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1


@pytest.mark.parametrize("foreground", [False, True])
def test_vv_mount_on_a_locked_state_directory_exits_4(tmp_path, foreground):
    state = StateDir(str(tmp_path / "state"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with state.locked("another vv command"):
        res = run(VV, "mount", str(mnt), "--state-dir", state.path,
                  *(["--foreground"] if foreground else []), check=False, timeout=60)
    assert res.returncode == 4, res.stderr
    assert "locked by another vv command" in res.stderr
    assert not os.path.ismount(mnt)
