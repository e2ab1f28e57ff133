"""The admin API (vvfs.node.admin) and its client (vvfs.node.client) against a stand-in node.

The stand-in node is a real object: a real Manager on a real state directory
and a pool on sparse files, holding the state directory's lock like the real
node, with ``call`` and ``status`` as the node contract says.  The server
runs on trio in a thread of the test process; ``vv`` runs as a subprocess.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import mapper
from metadata.errors import ConfigError, VVError
from metadata.model import Pool
from tools.common import exit_code_for
from vvfs.api import Manager, PoolReport, PoolShow, Ports
from vvfs.errors import LockedError, RefusedError, RemoteError
from vvfs.node import admin, codec
from vvfs.node.client import ManagerProxy, NodeClient, node_socket, open_manager, remote_error

from ..support.util import sparse_file

ROOT = Path(__file__).resolve().parents[2]
DEV = 256 << 20


class StandInNode:
    """The node's side of the admin contract over a real Manager."""

    def __init__(self, state_dir: str) -> None:
        self.manager = Manager(state_dir, ports=Ports(host=self))
        self.pools = {row.uuid: self.manager.catalog.load_pool(row.uuid)
                      for row in self.manager.catalog.pools()}
        self.opened: dict[str, dict[str, list[int]]] = {}
        self._lock = trio.Lock()

    # the node's host port (vvfs.control.ports.HostPort)
    def open_volumes(self, uuid: str) -> set[str]:
        return set(self.opened.get(uuid, {}))

    def mounted_at(self, uuid: str) -> str | None:
        return None  # a stand-in serves the admin API, not a mount

    def changed(self, uuid: str, pool: Pool | None) -> None:
        if pool is None:
            self.pools.pop(uuid, None)
        else:
            self.pools[uuid] = pool

    async def call(self, method: str, args: dict[str, Any]) -> Any:
        async with self._lock:
            return await trio.to_thread.run_sync(
                functools.partial(getattr(self.manager, method), **args))

    def status(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "pools": [self._pool_status(p) for p in self.pools.values()]}

    def _pool_status(self, p: Pool) -> dict[str, Any]:
        opened = self.opened.get(p.uuid, {})
        return {"name": p.name, "uuid": p.uuid, "generation": p.generation,
                "devices": [{"name": d.name, "path": d.paths[0] if d.paths else None,
                             "state": d.state} for d in p.devices],
                "volumes": [{"name": v.name, "size": v.size, "open": len(opened.get(v.name, [])),
                             "pids": opened.get(v.name, [])} for v in p.volumes]}


class ServerThread:
    """`admin.serve` for a node on its own trio loop in a thread; stop() cancels it."""

    def __init__(self, node: Any, path: str) -> None:
        self.node, self.path = node, path
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(30)
        if self.error is not None:
            raise self.error
        return self

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(admin.serve, self.node, self.path)
                self._ready.set()

    def stop(self) -> None:
        if self._thread.is_alive():
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
            self._thread.join(30)


def state_with_pool(root: Path) -> str:
    """A state directory under *root* with pool tank on three sparse files."""
    state = root / "state"
    devs = [sparse_file(root / f"dev{i}.img", DEV) for i in range(3)]
    with Manager(str(state)) as mgr:
        mgr.create_pool("tank", devs, metadata_size=1 << 20)
    return str(state)


@pytest.fixture
def state(tmp_path: Path) -> str:
    return state_with_pool(tmp_path)


@pytest.fixture
def node(state: str) -> Iterator[StandInNode]:
    n = StandInNode(state)
    try:
        with n.manager.holding_lock("test node"):
            yield n
    finally:
        n.manager.close()


@pytest.fixture
def server(node: StandInNode) -> Iterator[ServerThread]:
    srv = ServerThread(node, node.manager.state.config.socket).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=server.path),
                      base_url="http://node") as c:
        yield c


def vv(state: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VVFS_STATE_DIR=state, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "tools.vv", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


# ---------------------------------------------------------------------------
# the socket


def test_socket_is_mode_0600(server):
    assert os.stat(server.path).st_mode & 0o7777 == 0o600


def test_socket_mode_does_not_depend_on_the_umask(node):
    old = os.umask(0)
    try:
        srv = ServerThread(node, node.manager.state.config.socket).start()
    finally:
        os.umask(old)
    try:
        assert os.stat(srv.path).st_mode & 0o7777 == 0o600
    finally:
        srv.stop()


def test_health_answers_with_the_pid(http):
    assert http.get("/v1/health").json() == {"ok": True, "pid": os.getpid()}


def test_node_socket_finds_the_running_node(server, state):
    assert node_socket(state) == server.path


def test_no_node_socket_without_a_node(state):
    assert node_socket(state) is None


def test_cancellation_removes_the_socket(node):
    srv = ServerThread(node, node.manager.state.config.socket).start()
    srv.stop()
    assert not os.path.lexists(srv.path)


def test_stale_socket_is_replaced(node):
    path = node.manager.state.config.socket
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()
    srv = ServerThread(node, path).start()
    try:
        assert NodeClient(path).health()["ok"] is True
    finally:
        srv.stop()


def test_live_socket_is_not_taken_over(server, node):
    with pytest.raises(admin.AdminError, match="already answers"):
        ServerThread(node, server.path).start()
    assert node_socket(node.manager.state.path) == server.path


def test_a_file_in_the_way_is_left_alone(node):
    path = node.manager.state.config.socket
    Path(path).write_text("not a socket")
    with pytest.raises(admin.AdminError, match="not a socket"):
        ServerThread(node, path).start()
    assert Path(path).read_text() == "not a socket"


# ---------------------------------------------------------------------------
# requests


def test_method_outside_the_allow_list_is_rejected(http):
    for method in ("close", "_commit", "holding_lock", "__init__"):
        r = http.post(f"/v1/call/{method}", json={})
        assert r.status_code == 404
        assert r.json()["type"] == "NotFound"


def test_non_json_body_is_400(http):
    r = http.post("/v1/call/list_pools", content=b"{not json")
    assert r.status_code == 400
    assert r.json() == {"error": "the request body is not JSON", "type": "BadRequest",
                        "exit_code": 1}


def test_body_must_be_an_object(http):
    assert http.post("/v1/call/list_pools", json=[1, 2]).status_code == 400


def test_unknown_argument_is_400(http):
    r = http.post("/v1/call/list_volumes", json={"pool": "tank"})
    assert r.status_code == 400 and "pool" in r.json()["error"]


def test_unknown_value_type_is_400(http):
    r = http.post("/v1/call/list_volumes", json={"pool_name": {"$type": "os.system"}})
    assert r.status_code == 400 and "unknown value type" in r.json()["error"]


def test_wrong_http_method_is_405(http):
    assert http.get("/v1/call/list_pools").status_code == 405
    assert http.post("/v1/status").status_code == 405


def test_unknown_path_is_404(http):
    assert http.get("/v2/anything").status_code == 404


def test_call_returns_an_encoded_result(http):
    r = http.post("/v1/call/list_pools", json={})
    assert r.status_code == 200
    assert [p["name"] for p in r.json()["result"]] == ["tank"]


def test_refusal_is_a_one_line_error_with_exit_code(http, node):
    node.manager.create_volume("tank/a", mapper.VolumeSpec(name="", size=8 << 20))
    node.opened[node.manager.catalog.find_pool("tank").uuid] = {"a": [4242]}
    r = http.post("/v1/call/remove_volume", json={"path": "tank/a"})
    assert r.status_code == 409
    assert r.json() == {"error": "volume tank/a is open; close it before it can be removed",
                        "type": "RefusedError", "exit_code": 1}


def test_status_is_the_nodes(http, node):
    assert http.get("/v1/status").json() == json.loads(json.dumps(node.status()))


# ---------------------------------------------------------------------------
# client and proxy


def test_proxy_has_the_managers_signatures():
    import inspect

    for name in codec.API_METHODS:
        assert inspect.signature(getattr(ManagerProxy, name)) == \
            inspect.signature(getattr(Manager, name))


def test_proxy_refuses_wrong_arguments_before_asking(server):
    proxy = ManagerProxy(NodeClient(server.path))
    with pytest.raises(TypeError):
        proxy.list_volumes("tank", "extra")


def test_open_manager_gives_the_proxy_while_a_node_runs(server, state):
    with open_manager(state) as mgr:
        assert isinstance(mgr, ManagerProxy)
        assert isinstance(mgr.show_pool("tank"), PoolShow)


def test_open_manager_gives_a_manager_offline(state):
    with open_manager(state) as mgr:
        assert isinstance(mgr, Manager)


def test_refusal_is_raised_as_the_same_class(server):
    proxy = ManagerProxy(NodeClient(server.path))
    with pytest.raises(ConfigError, match=r"^pool tank: no volume 'nope'$"):
        proxy.remove_volume("tank/nope")


def test_results_keep_their_types(server):
    proxy = ManagerProxy(NodeClient(server.path))
    v = proxy.create_volume("tank/m", mapper.VolumeSpec(name="", size=8 << 20, mirrors=2))
    pool, paths, usage = proxy.list_devices("tank")
    reports, dups = proxy.scan([os.path.dirname(paths[pool.devices[0].uuid])])
    assert v.mirrors == 2 and pool.volume("m") == v
    assert isinstance(usage[pool.devices[0].uuid], mapper.DeviceUsage)
    assert isinstance(reports[0], PoolReport) and dups == {}
    assert all(isinstance(c, mapper.ClassUsage) for c in proxy.list_classes("tank"))


def test_remote_error_of_known_and_unknown_class():
    locked = remote_error("LockedError", "state directory x is locked by y", 4)
    assert isinstance(locked, LockedError) and str(locked) == "state directory x is locked by y"
    odd = remote_error("SomethingNew", "it broke", 3)
    assert isinstance(odd, RemoteError) and exit_code_for(odd) == 3


def test_exit_codes_agree_with_the_cli():
    from metadata.blockdev import DeviceIOError
    from metadata.errors import ChecksumError

    # the node answers exc.exit_code (vvfs.errors); the command line exits with the same
    for exc, code in ((LockedError("x"), 4), (DeviceIOError("d", 0, "x"), 3),
                      (ChecksumError("d", 0, "x"), 3), (RefusedError("x"), 1),
                      (ConfigError("x"), 1), (VVError("x"), 1)):
        assert exc.exit_code == exit_code_for(exc) == code


# ---------------------------------------------------------------------------
# codec


def _roundtrip(value: Any) -> Any:
    return codec.decode(json.loads(json.dumps(codec.encode(value))))


def test_codec_roundtrips_api_values(node):
    pool = next(iter(node.pools.values()))
    spec = mapper.VolumeSpec(name="v", size=1 << 20, on=[("d0", 4 << 20), ("d1", None)])
    values = [pool, pool.devices[0], spec, (1, [2, (3,)]), {"$type": "x", "k": (1,)},
              PoolReport("u", "n", 1, "complete", None, True),
              mapper.usage(pool), mapper.class_usage(pool)]
    for value in values:
        assert _roundtrip(value) == value


def test_codec_roundtrips_a_volume(node):
    mgr = node.manager
    v = mgr.create_volume("tank/s", mapper.VolumeSpec(name="", size=64 << 20, stripes=3,
                                                      mirrors=1))
    assert _roundtrip(v) == v


def test_codec_refuses_other_types():
    with pytest.raises(codec.CodecError):
        codec.encode(object())
    with pytest.raises(codec.CodecError):
        codec.decode({"$type": "Pool", "value": {"version": 99}})


# ---------------------------------------------------------------------------
# vv through the socket: the same output and exit status as offline


def scenario(root: Path) -> list[tuple[str, list[str]]]:
    """(name, vv arguments) run in order, offline on one pool and online on another."""
    spare, other = str(root / "spare.img"), str(root / "other.img")
    return [
        ("create", ["volume", "create", "tank/a", "--size", "64M"]),
        ("create-mirror", ["volume", "create", "tank/b", "--size", "32M", "--mirrors", "2"]),
        ("create-stripe", ["volume", "create", "tank/c", "--size", "48M", "--stripes", "2"]),
        ("create-too-big", ["volume", "create", "tank/big", "--size", "100G"]),
        ("create-exists", ["volume", "create", "tank/a", "--size", "4M"]),
        ("list", ["volume", "list", "tank"]),
        ("list-json", ["volume", "list", "tank", "--json"]),
        ("show", ["volume", "show", "tank/a"]),
        ("show-json", ["volume", "show", "tank/b", "--json"]),
        ("resize", ["volume", "resize", "tank/a", "--size", "96M"]),
        ("shrink-refused", ["volume", "resize", "tank/a", "--size", "32M"]),
        ("shrink", ["volume", "resize", "tank/a", "--size", "32M", "--yes"]),
        ("rename", ["volume", "rename", "tank/c", "cc"]),
        ("remove", ["volume", "remove", "tank/b"]),
        ("remove-missing", ["volume", "remove", "tank/nope"]),
        ("bad-path", ["volume", "remove", "nope"]),
        ("no-pool", ["volume", "list", "nope"]),
        ("pool-show", ["pool", "show", "tank"]),
        ("pool-show-json", ["pool", "show", "tank", "--json"]),
        ("pool-list", ["pool", "list"]),
        ("device-add", ["device", "add", "tank", spare, "--tier", "1"]),
        ("device-list", ["device", "list", "tank"]),
        ("device-list-json", ["device", "list", "tank", "--json"]),
        ("class-list", ["class", "list", "tank"]),
        ("device-remove", ["device", "remove", "tank", "d3"]),
        ("device-remove-used", ["device", "remove", "tank", "d0"]),
        ("scan", ["scan", str(root)]),
        ("scan-json", ["scan", str(root), "--json"]),
        ("pool-create", ["pool", "create", "two", other, "--metadata-size", "1M"]),
        ("pool-create-again", ["pool", "create", "three", other]),
        ("pool-export", ["pool", "export", "two"]),
        ("pool-import", ["pool", "import", "two", "--search", other]),
        ("pool-destroy-no", ["pool", "destroy", "two"]),
        ("pool-destroy", ["pool", "destroy", "two", "--yes"]),
        ("catalog-rebuild", ["catalog", "rebuild", "--search", str(root)]),
        ("pool-list-after", ["pool", "list", "--json"]),
    ]


STEP_NAMES = [name for name, _ in scenario(Path("/root"))]

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _object(pairs: list[tuple[str, Any]]) -> list[Any]:
    """A JSON object as a sorted list of pairs, without timestamps (keys may repeat)."""
    return sorted((list(p) for p in pairs if p[0] not in ("created", "added")), key=json.dumps)


def normalize(text: str, root: Path) -> str:
    """*text* without what differs between two pools: uuids, paths, timestamps, key order."""
    text = UUID_RE.sub("<uuid>", text.replace(str(root), "<root>"))
    try:
        return json.dumps(json.loads(text, object_pairs_hook=_object))
    except ValueError:
        return text


def run_scenario(root: Path, state: str) -> dict[str, tuple[int, str, str]]:
    sparse_file(root / "spare.img", DEV)
    sparse_file(root / "other.img", DEV)
    out = {}
    for name, args in scenario(root):
        r = vv(state, *args)
        out[name] = (r.returncode, normalize(r.stdout, root), normalize(r.stderr, root))
    return out


@pytest.fixture(scope="module")
def both_ways(tmp_path_factory) -> dict[str, dict[str, tuple[int, str, str]]]:
    """The scenario's results offline (pool in a/) and through a node (pool in b/).

    The two runs are independent and go side by side, to halve the wait.
    """
    base = tmp_path_factory.mktemp("scenario")
    (base / "a").mkdir()
    (base / "b").mkdir()
    offline_state = state_with_pool(base / "a")
    node = StandInNode(state_with_pool(base / "b"))
    try:
        with node.manager.holding_lock("test node"):
            srv = ServerThread(node, node.manager.state.config.socket).start()
            try:
                with ThreadPoolExecutor(2) as pool:
                    offline = pool.submit(run_scenario, base / "a", offline_state)
                    online = pool.submit(run_scenario, base / "b", node.manager.state.path)
                    return {"offline": offline.result(), "online": online.result()}
            finally:
                srv.stop()
    finally:
        node.manager.close()


@pytest.mark.parametrize("step", STEP_NAMES)
def test_vv_through_the_node_is_the_same_as_offline(both_ways, step):
    code, out, err = both_ways["online"][step]
    assert (code, out, err) == both_ways["offline"][step]
    assert len(err.splitlines()) <= 1
    assert "locked" not in err


def test_scenario_exit_codes(both_ways):
    codes = {step: r[0] for step, r in both_ways["online"].items()}
    refused = {"create-too-big", "create-exists", "shrink-refused", "remove-missing",
               "bad-path", "no-pool", "device-remove-used", "pool-create-again",
               "pool-destroy-no"}
    assert {s for s, c in codes.items() if c != 0} == refused
    assert all(codes[s] == 1 for s in refused)


def test_vv_refusal_through_the_node_exits_1_with_one_line(server, node, state):
    node.manager.create_volume("tank/busy", mapper.VolumeSpec(name="", size=8 << 20))
    node.opened[node.manager.catalog.find_pool("tank").uuid] = {"busy": [4242]}
    r = vv(state, "volume", "remove", "tank/busy")
    assert r.returncode == 1
    assert r.stderr == "vv: volume tank/busy is open; close it before it can be removed\n"


def test_vv_is_refused_by_the_lock_without_a_socket(node, state):
    r = vv(state, "volume", "create", "tank/x", "--size", "4M")
    assert r.returncode == 4 and "locked by test node" in r.stderr


# ---------------------------------------------------------------------------
# vv status


def test_vv_status_with_a_node(server, node, state):
    node.manager.create_volume("tank/busy", mapper.VolumeSpec(name="", size=8 << 20))
    node.opened[node.manager.catalog.find_pool("tank").uuid] = {"busy": [4242, 4343]}
    r = vv(state, "status")
    assert r.returncode == 0, r.stderr
    assert f"node pid {os.getpid()}" in r.stdout
    assert re.search(r"busy\s+8\.0 MiB\s+2\s+4242,4343", r.stdout)
    assert re.search(r"d0\s+\S+dev0\.img\s+ok", r.stdout)


def test_vv_status_json_with_a_node(server, node, state):
    r = vv(state, "status", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["running"] is True and doc["socket"] == server.path
    assert doc["pools"][0]["name"] == "tank"


def test_vv_status_without_a_node(state):
    r = vv(state, "status")
    assert r.returncode == 0
    assert r.stdout.startswith(f"no node is running (state directory {state}); imported pools:")
    assert re.search(r"^tank\s", r.stdout, re.MULTILINE)


def test_vv_status_json_without_a_node(state):
    r = vv(state, "status", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["running"] is False and [p["name"] for p in doc["pools"]] == ["tank"]
