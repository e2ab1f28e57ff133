"""The node's client resolves every file path against the caller's directory (vvfs/node/client.py).

The node runs in another working directory, so ``vv device add tank
disk.img`` must send ``$PWD/disk.img``.  A recording client stands where the
admin socket would be and keeps what the proxy would send.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from vvfs.api import Manager
from vvfs.node import codec
from vvfs.node.client import DEVICE_KEY_ARGUMENTS, PATH_ARGUMENTS, ManagerProxy


class Recorder:
    """Stands for NodeClient: keeps each call instead of sending it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call(self, method: str, **kwargs: Any) -> Any:
        self.calls.append((method, kwargs))

    def close(self) -> None:
        pass


def sent(call: Any) -> dict[str, Any]:
    rec = Recorder()
    call(ManagerProxy(rec))  # type: ignore[arg-type]
    return rec.calls[-1][1]


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_device_add_sends_an_absolute_path(cwd: Path) -> None:
    assert sent(lambda m: m.add_device("tank", "disk.img"))["path"] == str(cwd / "disk.img")


def test_pool_create_sends_absolute_paths(cwd: Path) -> None:
    args = sent(lambda m: m.create_pool("tank", ["a.img", "../b.img", "/dev/sdx"]))
    assert args["paths"] == [str(cwd / "a.img"), str(cwd.parent / "b.img"), "/dev/sdx"]


def test_scan_and_import_send_absolute_search_paths(cwd: Path) -> None:
    assert sent(lambda m: m.scan(["disks"]))["paths"] == [str(cwd / "disks")]
    assert sent(lambda m: m.import_pool("tank", search=["disks"]))["search"] == [
        str(cwd / "disks")]


def test_a_device_named_by_a_relative_path_is_sent_absolute(cwd: Path) -> None:
    assert sent(lambda m: m.remove_device("tank", "./d1.img"))["key"] == str(cwd / "d1.img")


def test_a_device_named_by_name_or_uuid_is_sent_as_it_is(cwd: Path) -> None:
    assert sent(lambda m: m.remove_device("tank", "d1"))["key"] == "d1"


def test_a_volume_path_is_not_a_file_path(cwd: Path) -> None:
    assert sent(lambda m: m.remove_volume("tank/v"))["path"] == "tank/v"


def test_every_file_parameter_of_the_api_is_resolved() -> None:
    """Each name in the tables is a parameter of that Manager method, and no file one is missed."""
    file_words = ("path", "search", "new", "add", "remove")
    not_files = {"new_name"}  # and "path" of the volume calls: POOL/VOL
    for method in sorted(codec.API_METHODS):
        params = set(inspect.signature(getattr(Manager, method)).parameters) - {"self"}
        listed = set(PATH_ARGUMENTS.get(method, ())) | set(DEVICE_KEY_ARGUMENTS.get(method, ()))
        assert listed <= params, method
        unlisted = {p for p in params - listed - not_files if any(w in p for w in file_words)}
        if "volume" in method or method == "scrub_status":
            unlisted.discard("path")
        assert not unlisted, f"{method}: {sorted(unlisted)} not resolved in the client"
