"""The per-host state directory: ``vvfs.yaml``, the catalog and the lock.

``vvfs.yaml`` holds what belongs to this host, not to a pool::

    host_id: 6f1c...            # stamped on pools this host has imported
    search_paths: [/dev]        # where `vv scan` and `vv pool import` look
    socket: /var/lib/vvfs/vvfs.sock
    catalog_url: sqlite:////var/lib/vvfs/catalog.sqlite

The file is written once, atomically (temporary file, fsync, rename), when
the state directory is first used, and again only when search paths are
added.  It is checked whole when read (:func:`parse_config`): a key vvfs
does not know, a value of the wrong type, a socket that is not a Unix
socket path or a catalog URL of an unsupported kind is refused with one
line naming the file and the key, and nothing is started.

A state directory that cannot be created, written or locked is a
:class:`~vvfs.errors.StateError` (one line, exit status 1), never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import yaml

from vvfs.errors import LockedError, StateError

DEFAULT_STATE_DIR = "/var/lib/vvfs"
CONFIG_NAME = "vvfs.yaml"
#: The keys of vvfs.yaml; any other is refused.
CONFIG_KEYS = ("host_id", "search_paths", "socket", "catalog_url")
#: Catalog URL schemes vvfs can open (metadata.catalog.engine_url).
CATALOG_SCHEMES = ("sqlite", "postgresql", "postgres", "postgresql+psycopg")


@dataclass
class HostConfig:
    host_id: str
    search_paths: list[str] = field(default_factory=lambda: ["/dev"])
    socket: str = ""
    catalog_url: str = ""


def resolve_state_dir(path: str | None) -> str:
    return os.path.abspath(path or os.environ.get("VVFS_STATE_DIR") or DEFAULT_STATE_DIR)


class StateDir:
    def __init__(self, path: str | None = None) -> None:
        self.path = resolve_state_dir(path)
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create state directory {self.path}: {exc.strerror}") from None
        self.config_path = os.path.join(self.path, CONFIG_NAME)
        self.config = self._load()

    def _load(self) -> HostConfig:
        if not os.path.exists(self.config_path):
            cfg = HostConfig(host_id=str(uuid.uuid4()))
            self._fill_defaults(cfg)
            self.save(cfg)
            return cfg
        try:
            with open(self.config_path) as f:
                doc = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as exc:
            raise StateError(f"cannot read {self.config_path}: {_one_line(exc)}") from None
        cfg = parse_config(self.config_path, doc)
        self._fill_defaults(cfg)
        return cfg

    def _fill_defaults(self, cfg: HostConfig) -> None:
        cfg.socket = cfg.socket or os.path.join(self.path, "vvfs.sock")
        cfg.catalog_url = cfg.catalog_url or "sqlite:///" + os.path.join(self.path,
                                                                         "catalog.sqlite")

    def save(self, cfg: HostConfig | None = None) -> None:
        """Write vvfs.yaml atomically; StateError if the directory cannot be written."""
        cfg = cfg or self.config
        try:
            self._write(cfg)
        except OSError as exc:
            raise StateError(f"cannot write {self.config_path}: {exc.strerror}") from None

    def _write(self, cfg: HostConfig) -> None:
        doc = {"host_id": cfg.host_id, "search_paths": cfg.search_paths,
               "socket": cfg.socket, "catalog_url": cfg.catalog_url}
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.config_path)
        dfd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def add_search_path(self, path: str) -> None:
        """Remember *path* (a directory holding device files) for scans."""
        path = os.path.abspath(path)
        for p in self.config.search_paths:
            if path == p or path.startswith(p.rstrip("/") + "/"):
                return
        self.config.search_paths.append(path)
        self.save()

    @contextlib.contextmanager
    def locked(self, what: str = "vv") -> Iterator[None]:
        """Hold the exclusive lock of this state directory (non-blocking)."""
        lock = os.path.join(self.path, "lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"cannot lock state directory {self.path}: {exc.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    raise LockedError(
                        f"state directory {self.path} is locked by {holder or 'another process'}"
                    ) from None
                raise StateError(f"cannot lock state directory {self.path}:"
                                 f" {exc.strerror}") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{what} (pid {os.getpid()})\n".encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)


def parse_config(where: str, doc: object) -> HostConfig:
    """The HostConfig that the vvfs.yaml document *doc* (read from *where*) says.

    StateError, naming the file and the key, for anything vvfs does not
    support; defaults are filled in afterwards by the state directory.
    """
    if not isinstance(doc, dict):
        raise StateError(f"{where}: not a mapping of settings (see vv(8), FILES)")
    unknown = sorted(str(k) for k in doc if k not in CONFIG_KEYS)
    if unknown:
        raise StateError(f"{where}: unknown setting {', '.join(unknown)} (known:"
                         f" {', '.join(CONFIG_KEYS)})")
    host_id = doc.get("host_id")
    if not isinstance(host_id, str) or not host_id.strip():
        raise StateError(f"{where}: host_id must be a non-empty string")
    return HostConfig(host_id=host_id, search_paths=_search_paths(where, doc),
                      socket=_socket(where, doc.get("socket")),
                      catalog_url=_catalog_url(where, doc.get("catalog_url")))


def _search_paths(where: str, doc: dict) -> list[str]:
    paths = doc.get("search_paths")
    if paths is None:
        return ["/dev"]
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise StateError(f"{where}: search_paths must be a list of paths")
    relative = [p for p in paths if not os.path.isabs(p)]
    if relative:
        raise StateError(f"{where}: search_paths must be absolute: {relative[0]}")
    return list(paths)


def _socket(where: str, value: object) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise StateError(f"{where}: socket must be a path")
    if "://" in value or not os.path.isabs(value):
        raise StateError(f"{where}: socket {value!r} is not supported: the admin API is served"
                         " on a Unix socket, give its absolute path")
    return value


def _catalog_url(where: str, value: object) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise StateError(f"{where}: catalog_url must be a URL")
    scheme = value.partition("://")[0]
    if "://" not in value or scheme not in CATALOG_SCHEMES:
        raise StateError(f"{where}: catalog_url {value!r} is not supported (use sqlite:///PATH"
                         " or postgresql://...)")
    return value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
