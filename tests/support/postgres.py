"""A real PostgreSQL server for one test or module: initdb, pg_ctl start, stopped in finally.

The server lives in a fresh directory under /tmp (the cluster, its log and
its Unix socket directory), listens on that socket and on a free loopback
port, trusts local connections, and runs with fsync off (a test server).
``initdb`` refuses to run as root: as root the cluster is made and run by
the ``postgres`` user (``runuser``), which owns the directory.  Anything
missing -- the server programs, that user -- FAILS the test saying what,
never skips it.  On leaving, the server is stopped (immediate shutdown) and
the directory removed.

:attr:`PostgresServer.url` is a plain libpq URI, the form an administrator
writes in ``vvfs.yaml``'s ``catalog_url``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: Where Debian installs the server programs (postgresql-NN).
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SERVER_PACKAGE = "postgresql-15"
USER = "vvfs"
DATABASE = "vvfs"


@dataclass
class PostgresServer:
    bin_dir: str
    root: Path
    port: int
    run_as: list[str]

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def url(self) -> str:
        """``postgresql://vvfs@/vvfs?host=SOCKETDIR&port=N``: libpq's URI form."""
        return f"postgresql://{USER}@/{DATABASE}?host={self.socket_dir}&port={self.port}"

    def database(self, name: str) -> str:
        """Create database *name* (owned by ``vvfs``); its URL, in libpq's URI form."""
        self.program("createdb", "-h", str(self.socket_dir), "-p", str(self.port), "-U", USER,
                     name)
        return f"postgresql://{USER}@/{name}?host={self.socket_dir}&port={self.port}"

    def program(self, name: str, *args: str, timeout: float = 60) -> None:
        cmd = [*self.run_as, os.path.join(self.bin_dir, name), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if res.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            pytest.fail(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout}\n"
                        f"{res.stderr}\n{log[-2000:]}")


def server_bin_dir() -> str:
    """The directory of initdb and pg_ctl; fail the test naming the package if none."""
    for d in sorted(glob.glob(DEBIAN_BIN_GLOB), reverse=True):
        if all(os.access(os.path.join(d, p), os.X_OK) for p in ("initdb", "pg_ctl")):
            return d
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return os.path.dirname(found)
    pytest.fail(f"this test needs a PostgreSQL server: initdb and pg_ctl not found (Debian"
                f" package {SERVER_PACKAGE}; 'make deps' installs it)")


def _run_as() -> tuple[list[str], int | None, int | None]:
    """The command prefix, uid and gid the server runs as (root may not run it)."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(f"this test runs as root and needs the user 'postgres' to run the server"
                    f" (made by the Debian package {SERVER_PACKAGE})")
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return [runuser, "-u", "postgres", "--"], pw.pw_uid, pw.pw_gid


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A running server with database ``vvfs`` owned by superuser ``vvfs``; see the module."""
    bin_dir = server_bin_dir()
    run_as, uid, gid = _run_as()
    root = Path(tempfile.mkdtemp(prefix="vvfs-pg-", dir="/tmp"))
    server = PostgresServer(bin_dir, root, _free_port(), run_as)
    started = False
    try:
        server.socket_dir.mkdir()
        if uid is not None and gid is not None:
            for p in (root, server.socket_dir):
                os.chown(p, uid, gid)
        server.program("initdb", "-D", str(server.data), "-U", USER, "--auth=trust",
                       "-E", "UTF8", "--no-sync", "--no-instructions")
        options = (f"-k {server.socket_dir} -p {server.port} -c listen_addresses=127.0.0.1"
                   " -c fsync=off -c synchronous_commit=off")
        started = True
        server.program("pg_ctl", "-D", str(server.data), "-l", str(server.log), "-o", options,
                       "-w", "-t", "60", "start", timeout=90)
        server.database(DATABASE)
        yield server
    finally:
        if started:
            subprocess.run([*run_as, os.path.join(bin_dir, "pg_ctl"), "-D", str(server.data),
                            "-m", "immediate", "-w", "stop"], capture_output=True,
                           timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)
