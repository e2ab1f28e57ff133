"""Talking to a running node over its admin socket (see :mod:`vvfs.node.admin`).

:func:`open_manager` is what ``vv`` uses: a :class:`ManagerProxy` when a
node answers on the state directory's socket, else a real
:class:`vvfs.api.Manager` that works on the media directly (the node holds
the state directory's lock for its whole life, so the two never change a
pool at the same time).  The proxy has the Manager's methods, with the same
signatures, and returns the same values; a refusal by the node is raised
here as the same :class:`VVError` subclass with the same one-line message,
so a command prints and exits exactly as it would offline.

Everything here is synchronous (httpx).  A management call has no read
timeout -- some take long, and cutting one off would not stop it in the
node -- so a hung node is interrupted with Ctrl-C; connecting and the
health and status requests time out after a few seconds.  httpx is
imported only when a socket is there to talk to: offline ``vv`` commands
start faster without it.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import stat
from collections.abc import Callable, Iterator
from typing import Any, Self

from vvfs.api import Manager
from vvfs.errors import EXIT_FAILED, NodeConnectionError, RemoteError, VVError
from vvfs.node import codec
from vvfs.state import StateDir

SHORT_TIMEOUT = 5.0


def _error_classes() -> dict[str, type[VVError]]:
    """Every VVError subclass that the node may raise, by class name."""
    # the modules defining error classes that codec's imports do not reach
    import metadata.catalog
    import metadata.media  # noqa: F401
    import vvfs.io.probe  # noqa: F401

    found: dict[str, type[VVError]] = {}
    todo: list[type[VVError]] = [VVError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    return found


def remote_error(type_name: str, message: str, exit_code: int) -> VVError:
    """The exception to raise for a node's error document.

    It is of the class named *type_name* when that is a known VVError (else
    :class:`RemoteError`), says *message*, and carries ``exit_code``.
    """
    cls = _error_classes().get(type_name, RemoteError)
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.exit_code = exit_code  # type: ignore[attr-defined]
    return exc


class NodeClient:
    """An HTTP client of one node's admin socket."""

    def __init__(self, socket_path: str) -> None:
        import httpx

        self._httpx = httpx
        self.socket_path = socket_path
        self._http = httpx.Client(transport=httpx.HTTPTransport(uds=socket_path),
                                  base_url="http://vvfs.node",
                                  timeout=httpx.Timeout(SHORT_TIMEOUT))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/v1/health")

    def status(self) -> dict[str, Any]:
        """The node's pools, devices, volumes and open volumes (``node.status()``)."""
        return self._request("GET", "/v1/status")

    def events(self, since: int = 0, pool: str | None = None, *, follow: bool = False
               ) -> Iterator[dict[str, Any]]:
        """Event documents with id > *since* (``GET /v1/events``), oldest first.

        With *follow* the iterator blocks for new events until the node
        stops or the caller stops iterating (or presses Ctrl-C).
        """
        params: dict[str, Any] = {"since": since, "follow": int(follow)}
        if pool is not None:
            params["pool"] = pool
        try:
            with self._http.stream("GET", "/v1/events", params=params,
                                   timeout=self._httpx.Timeout(SHORT_TIMEOUT, read=None)) as r:
                if r.status_code != 200:
                    r.read()
                    try:
                        doc = r.json()
                    except ValueError:
                        doc = None
                    raise _error_from(doc, r.status_code)
                for line in r.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except self._httpx.TransportError as exc:
            raise NodeConnectionError(f"cannot talk to the node at {self.socket_path}: {exc}"
                                      ) from None

    def call(self, method: str, **kwargs: Any) -> Any:
        """Run Manager method *method* in the node and return its result.

        Raises the node's refusal as the same VVError class (see
        :func:`remote_error`) and :class:`NodeConnectionError` when the node cannot be
        reached or its answer cannot be read.
        """
        doc = self._request("POST", f"/v1/call/{method}", json=codec.encode(kwargs),
                            timeout=self._httpx.Timeout(SHORT_TIMEOUT, read=None))
        if not isinstance(doc, dict) or "result" not in doc:
            raise NodeConnectionError(f"node at {self.socket_path}: answer without a result")
        try:
            return codec.decode(doc["result"])
        except codec.CodecError as exc:
            raise NodeConnectionError(f"node at {self.socket_path}: {exc}") from None

    def _request(self, verb: str, url: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(verb, url, **kwargs)
        except self._httpx.TransportError as exc:
            raise NodeConnectionError(f"cannot talk to the node at {self.socket_path}: {exc}") from None
        try:
            doc = response.json()
        except ValueError:
            raise NodeConnectionError(f"node at {self.socket_path}: HTTP {response.status_code}"
                            " answer that is not JSON") from None
        if response.status_code != 200:
            raise _error_from(doc, response.status_code)
        return doc


def _error_from(doc: Any, status: int) -> VVError:
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        return NodeConnectionError(f"node answered HTTP {status} without an error message")
    code = doc.get("exit_code")
    return remote_error(str(doc.get("type", "")), doc["error"],
                        code if isinstance(code, int) else EXIT_FAILED)


#: Method -> its parameters that name files (a path, or a list of them).  The
#: node runs in another directory: they are made absolute here, against the
#: caller's working directory, before they are sent.
PATH_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "create_pool": ("paths",), "import_pool": ("search",), "scan": ("paths",),
    "rebuild_catalog": ("search",), "add_device": ("path",),
    "device_paths": ("add", "remove"), "replace_device": ("new",),
}
#: Method -> its parameters that name a device by name, uuid or path: those
#: holding a "/" are paths (names and uuids never do) and are made absolute.
DEVICE_KEY_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "remove_device": ("key",), "evacuate_device": ("key",), "device_paths": ("key",),
    "fail_device": ("key",), "online_device": ("key",), "resync_pool": ("key",),
    "replace_device": ("old",), "move_volume": ("to", "from_"),
}


def absolute_arguments(method: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """*arguments* of *method* with every file path made absolute (see PATH_ARGUMENTS)."""
    out = dict(arguments)
    for name in PATH_ARGUMENTS.get(method, ()):
        value = out.get(name)
        if isinstance(value, str):
            out[name] = os.path.abspath(value)
        elif isinstance(value, (list, tuple)):
            out[name] = [os.path.abspath(v) if isinstance(v, str) else v for v in value]
    for name in DEVICE_KEY_ARGUMENTS.get(method, ()):
        value = out.get(name)
        if isinstance(value, str) and "/" in value:
            out[name] = os.path.abspath(value)
    return out


def _remote_method(name: str) -> Callable[..., Any]:
    real = getattr(Manager, name)
    signature = inspect.signature(real)

    @functools.wraps(real)
    def method(self: ManagerProxy, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        del arguments[next(iter(signature.parameters))]
        return self.client.call(name, **absolute_arguments(name, arguments))

    return method


class ManagerProxy:
    """A :class:`vvfs.api.Manager` whose calls run in the node.

    Has every method of :data:`vvfs.node.codec.API_METHODS` with the Manager's
    signature; a wrong argument raises ``TypeError`` here, before any
    request.  File paths are made absolute here (:func:`absolute_arguments`):
    ``vv device add tank disk.img`` means the caller's ``./disk.img``.
    """

    def __init__(self, client: NodeClient, host_id: str = "") -> None:
        self.client = client
        #: this host's id (vvfs.yaml), as Manager.host_id
        self.host_id = host_id

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


for _name in sorted(codec.API_METHODS):
    setattr(ManagerProxy, _name, _remote_method(_name))
del _name


def node_socket(state_dir: str | None = None) -> str | None:
    """The admin socket of the node running on *state_dir*, or None if none answers."""
    path = StateDir(state_dir).config.socket
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return None
    except OSError:
        return None
    try:
        with NodeClient(path) as client:
            doc = client.health()
    except VVError:
        return None
    return path if isinstance(doc, dict) and doc.get("ok") is True else None


def open_manager(state_dir: str | None = None) -> Manager | ManagerProxy:
    """A proxy of the running node's Manager, or a Manager when no node runs."""
    path = node_socket(state_dir)
    if path is None:
        return Manager(state_dir)
    return ManagerProxy(NodeClient(path), StateDir(state_dir).config.host_id)
