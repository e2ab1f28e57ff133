"""The per-host state directory: ``vvfs.yaml``, the catalog and the lock.

``vvfs.yaml`` holds what belongs to this host, not to a pool::

    host_id: 6f1c...            # stamped on pools this host has imported
    search_paths: [/dev]        # where `vv scan` and `vv pool import` look
    socket: /var/lib/vvfs/vvfs.sock
    catalog_url: sqlite:////var/lib/vvfs/catalog.sqlite

The file is written once, atomically (temporary file, fsync, rename), when
the state directory is first used, and again only when search paths are
added.
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
                doc = yaml.safe_load(f) or {}
            if not isinstance(doc, dict) or not isinstance(doc.get("host_id"), str):
                raise StateError(f"{self.config_path}: no host_id")
            cfg = HostConfig(
                host_id=doc["host_id"],
                search_paths=[str(p) for p in doc.get("search_paths") or ["/dev"]],
                socket=str(doc.get("socket") or ""),
                catalog_url=str(doc.get("catalog_url") or ""),
            )
        except (OSError, yaml.YAMLError) as exc:
            raise StateError(f"cannot read {self.config_path}: {exc}") from None
        self._fill_defaults(cfg)
        return cfg

    def _fill_defaults(self, cfg: HostConfig) -> None:
        cfg.socket = cfg.socket or os.path.join(self.path, "vvfs.sock")
        cfg.catalog_url = cfg.catalog_url or "sqlite:///" + os.path.join(self.path,
                                                                         "catalog.sqlite")

    def save(self, cfg: HostConfig | None = None) -> None:
        cfg = cfg or self.config
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
        fd = os.open(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    raise LockedError(
                        f"state directory {self.path} is locked by {holder or 'another process'}"
                    ) from None
                raise
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{what} (pid {os.getpid()})\n".encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)
