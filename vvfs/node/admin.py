"""The node's admin API: HTTP/JSON on a Unix socket of mode 0600 (SPEC F7.1).

The running node serves this so that ``vv`` (through :mod:`vvfs.node.client`)
changes pools while they are mounted.  Endpoints -- and nothing else:

``GET /v1/health``
    200 ``{"ok": true, "pid": PID}``.
``GET /v1/status``
    200 with ``node.status()``: the node's pools, devices, volumes and who
    has the volumes open (see :data:`STATUS_SCHEMA`).
``GET /v1/events?since=ID&pool=POOL&follow=1``
    200, a stream of newline-delimited JSON: one event document per line
    (as ``Manager.list_events`` returns them), every event with an id above
    ID (of POOL only, if given).  Without ``follow`` the stream ends after
    the events recorded so far; with ``follow=1`` it stays open and carries
    each new event as it is recorded, until the client goes away or the
    node stops.
``POST /v1/call/METHOD``
    Body: a JSON object of keyword arguments, encoded by :mod:`vvfs.node.codec`.
    Runs the :class:`vvfs.control.manager.Manager` method METHOD (only those in
    :data:`vvfs.node.codec.API_METHODS`) through ``node.call`` and answers 200
    ``{"result": ENCODED}``.

Every failure answers ``{"error": ONE_LINE, "type": CLASS, "exit_code": N}``
with N the exit status ``vv`` gives offline (1 refused or failed, 3 device
I/O or media, 4 locked): 400 a body that is not a JSON object within the
bounds of :func:`vvfs.node.codec.loads` (numbers within 64 bits, nesting at
most ``codec.MAX_DEPTH`` deep) or arguments the method does not take, lacks,
or gets of other types than its signature declares
(:mod:`vvfs.node.arguments`) -- one line naming the method and the
argument --, 404 an unknown path or method or ``NotFoundError``,
405 the wrong HTTP method, 409 a refusal (any other ``VVError``), 413 a body
over 1 MiB, 423 ``LockedError``, 500 a device I/O or media error, or a bug
(type ``InternalError``; the traceback goes to the log).

The HTTP stack is hypercorn's trio worker (the node runs on trio) with the
small ASGI application below: three routes do not need a web framework.

The socket is bound under a fresh 0700 directory beside the final path,
made 0600, then hard-linked into place, so it is never reachable with a
looser mode and no process-wide umask is touched while the node's other
threads create files.  A socket file already at the path is removed only
when nothing accepts connections on it.

Cancellation: cancelling :func:`serve` stops accepting, cancels requests in
flight -- but a Manager call already running in the node's worker thread
finishes first (``node.call`` is not abandoned on cancel), so a commit is
never cut in half -- and removes the socket file if it is still ours.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol
from urllib.parse import parse_qs

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from metadata.errors import VVError
from vvfs.errors import AdminError, ArgumentError
from vvfs.node import arguments, codec

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
BACKLOG = 64
#: Events sent per catalog query, and seconds between looks while following.
EVENTS_BATCH = 500
EVENTS_POLL = 1.0

#: What ``node.status()`` returns (what ``vv status`` prints); fields a node
#: does not know may be left out.
STATUS_SCHEMA = """
{"pid": int, "mountpoint": str, "host_id": str,
 "pools": [{"name": str, "uuid": str, "generation": int,
            "devices": [{"name": str, "path": str | null, "state": str}],
            "volumes": [{"name": str, "size": int, "open": int, "pids": [int],
                         "state": str}],
            "mirror": {"jobs": [...], "failed": {...}, "logs": {...}}}]}
"""

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Node(Protocol):
    """What the admin API needs of the node."""

    async def call(self, method: str, args: dict[str, Any]) -> Any: ...

    def status(self) -> dict[str, Any]: ...

    async def events(self, pool: str | None, since: int, limit: int) -> list[dict[str, Any]]: ...

    async def wait_events(self, timeout: float) -> None: ...


class HTTPError(Exception):
    """A request answered with an error document instead of a result."""

    def __init__(self, status: int, message: str, type_: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.doc = {"error": message, "type": type_, "exit_code": exit_code}


# ---------------------------------------------------------------------------
# the ASGI application


class AdminApp:
    """The ASGI application of the admin API (see the module docstring)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http" and scope["path"] == "/v1/events":
            await self._events(scope, receive, send)
        elif scope["type"] == "http":
            try:
                status, doc = await self._route(scope, receive)
            except HTTPError as exc:
                status, doc = exc.status, exc.doc
            await _respond(send, status, doc)

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, Any]:
        path, verb = scope["path"], scope["method"]
        if path == "/v1/health":
            _want(verb, "GET")
            return 200, {"ok": True, "pid": os.getpid()}
        if path == "/v1/status":
            _want(verb, "GET")
            return 200, self._status()
        if path.startswith("/v1/call/"):
            _want(verb, "POST")
            method = path.removeprefix("/v1/call/")
            return 200, {"result": await self._call(method, await _read_body(receive))}
        raise HTTPError(404, f"no such endpoint {path}", "NotFound")

    async def _events(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream events as newline-delimited JSON (see the module docstring)."""
        try:
            _want(scope["method"], "GET")
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            since = codec.bounded_int(query.get("since", ["0"])[0])
            pool = query.get("pool", [None])[0] or None
            follow = query.get("follow", ["0"])[0] not in ("0", "", "false")
            first = await self.node.events(pool, since, EVENTS_BATCH)
        except HTTPError as exc:
            await _respond(send, exc.status, exc.doc)
            return
        except ValueError:
            await _respond(send, 400, {"error": "since must be an integer",
                                       "type": "BadRequest", "exit_code": 1})
            return
        except codec.CodecError as exc:
            await _respond(send, 400, {"error": f"since: {exc}", "type": "BadRequest",
                                       "exit_code": 1})
            return
        except VVError as exc:
            await _respond(send, exc.http_status, {"error": _one_line(exc),
                                                     "type": type(exc).__name__,
                                                     "exit_code": exc.exit_code})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-ndjson")]})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_disconnect, receive, nursery.cancel_scope)
            rows = first
            while True:
                if rows:
                    since = rows[-1]["id"]
                    body = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                if len(rows) == EVENTS_BATCH:
                    rows = await self.node.events(pool, since, EVENTS_BATCH)
                    continue
                if not follow:
                    break
                await self.node.wait_events(EVENTS_POLL)
                rows = await self.node.events(pool, since, EVENTS_BATCH)
            nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True), contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _status(self) -> Any:
        try:
            return self.node.status()
        except Exception as exc:
            log.exception("node status failed")
            raise HTTPError(500, f"internal error in the node: {_one_line(exc)}",
                            "InternalError") from None

    async def _call(self, method: str, body: bytes) -> Any:
        if method not in codec.API_METHODS:
            raise HTTPError(404, f"no API method {method!r}", "NotFound")
        kwargs = _arguments(method, body)
        log.debug("admin call %s(%s)", method, ", ".join(kwargs))
        try:
            result = await self.node.call(method, kwargs)
            return codec.encode(result)
        except VVError as exc:
            raise HTTPError(exc.http_status, _one_line(exc), type(exc).__name__,
                            exc.exit_code) from None
        except Exception as exc:
            log.exception("admin call %s failed", method)
            raise HTTPError(500, f"internal error in the node: {_one_line(exc)}",
                            "InternalError") from None


async def _until_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def _want(verb: str, expected: str) -> None:
    if verb != expected:
        raise HTTPError(405, f"use {expected} here, not {verb}", "MethodNotAllowed")


def _arguments(method: str, body: bytes) -> dict[str, Any]:
    """Parse and decode the keyword arguments of *method*; check them against its type hints.

    Every mistake is an HTTPError 400 whose one line names the method (and
    the argument, where there is one).
    """
    try:
        doc = codec.loads(body or b"{}")
        if not isinstance(doc, dict):
            raise HTTPError(400, f"{method}: the request body must be a JSON object of"
                                 " arguments", "BadRequest")
        return arguments.check(method, codec.decode(doc))
    except codec.CodecError as exc:
        raise HTTPError(400, f"{method}: {_one_line(exc)}", "BadRequest") from None
    except ArgumentError as exc:
        raise HTTPError(400, _one_line(exc), "BadRequest") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).splitlines()) or type(exc).__name__


async def _read_body(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPError(400, "client went away", "BadRequest")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPError(413, f"request body over {MAX_BODY} bytes", "BadRequest")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _respond(send: Send, status: int, doc: Any) -> None:
    body = json.dumps(doc).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# ---------------------------------------------------------------------------
# the socket


def _answers(path: str) -> bool:
    """Whether something accepts connections on the socket at *path*."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        raise AdminError(f"cannot check admin socket {path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    return True


def _clear_stale(path: str) -> None:
    """Remove a socket file left by a dead node; refuse anything else at *path*."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AdminError(f"{path} exists and is not a socket; not replacing it")
    if _answers(path):
        raise AdminError(f"something already answers on the admin socket {path}"
                         " (is a node running?)")
    log.info("removing stale admin socket %s", path)
    os.unlink(path)


def bind_socket(path: str) -> tuple[socket.socket, tuple[int, int]]:
    """Listen on a new 0600 Unix socket at *path*; return it and its (st_dev, st_ino)."""
    _clear_stale(path)
    try:
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, mode=0o700, exist_ok=True)
        private = tempfile.mkdtemp(prefix=".vvs", dir=parent)
    except OSError as exc:
        raise AdminError(f"cannot create admin socket {path}: {exc.strerror or exc}") from None
    tmp = os.path.join(private, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(tmp)
        os.chmod(tmp, 0o600)
        sock.listen(BACKLOG)
        os.link(tmp, path)
        st = os.lstat(path)
    except OSError as exc:
        sock.close()
        raise AdminError(f"cannot create admin socket {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.rmdir(private)
    sock.setblocking(False)
    return sock, (st.st_dev, st.st_ino)


def _remove_if_ours(path: str, ident: tuple[int, int]) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if (st.st_dev, st.st_ino) == ident:
        os.unlink(path)


def _not_running_on(record: logging.LogRecord) -> bool:
    """Drop hypercorn's "Running on <temporary bind path>"; serve() logs the real one."""
    return not str(record.msg).startswith("Running on ")


_http_log = logging.getLogger(__name__ + ".http")
_http_log.addFilter(_not_running_on)


def _config() -> Config:
    config = Config()
    config.errorlog = _http_log
    config.accesslog = None
    config.include_server_header = False
    return config


async def serve(node: Node, socket_path: str, *,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the admin API of *node* on *socket_path* until cancelled.

    Calls ``task_status.started()`` once the socket accepts connections.
    Raises :class:`AdminError` when the socket cannot be created (another
    node serves it, or a non-socket file is in the way).  Creating the socket
    is synchronous (at most a one-second connect to a socket file found in
    the way).  See the module docstring for what cancellation does.
    """
    sock, ident = bind_socket(socket_path)
    try:
        config = _config()
        # AdminApp speaks ASGI with plain dicts, not hypercorn's TypedDicts
        app = wrap_app(AdminApp(node), config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(worker_serve, app, config,
                                        sockets=Sockets([], [sock], [])))
            log.info("admin API listening on %s", socket_path)
            task_status.started()
    finally:
        _remove_if_ours(socket_path, ident)
        sock.close()
