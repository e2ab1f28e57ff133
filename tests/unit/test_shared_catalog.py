"""Two hosts on one PostgreSQL catalog: a pool is changed only by the host its media name.

A real PostgreSQL server (tests/support/postgres.py) holds one database per
test; two state directories (two host ids) point their ``catalog_url`` at it
as a plain libpq URI, and share the same backing files.  Host A creates the
pool (and so has it active); every change host B tries is refused naming
host A, and nothing A committed is lost.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import mapper
from metadata.catalog import engine_url
from vvfs.api import Manager
from vvfs.errors import RefusedError
from vvfs.state import StateDir

from ..support.postgres import PostgresServer, postgres_server
from ..support.util import sparse_file

pytestmark = pytest.mark.slow

MiB = 1 << 20
_names = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with postgres_server() as s:
        yield s


@dataclass
class Hosts:
    a: str
    b: str
    devs: list[str]
    spare: str

    def manager(self, which: str) -> Manager:
        return Manager(self.a if which == "a" else self.b)


def state_on(path: Path, url: str) -> str:
    """A state directory at *path* whose catalog is *url*."""
    state = StateDir(str(path))
    state.config.catalog_url = url
    state.save()
    return state.path


@pytest.fixture
def hosts(server: PostgresServer, tmp_path: Path) -> Hosts:
    """Host A has pool tank (volume a) active; host B shares its catalog and files."""
    url = server.database(f"t{next(_names)}")
    h = Hosts(state_on(tmp_path / "a", url), state_on(tmp_path / "b", url),
              [sparse_file(tmp_path / f"d{i}.img", 256 * MiB) for i in range(2)],
              sparse_file(tmp_path / "spare.img", 256 * MiB))
    with h.manager("a") as mgr:
        mgr.create_pool("tank", h.devs, metadata_size=MiB)
        mgr.create_volume("tank/a", mapper.VolumeSpec(name="", size=16 * MiB, mirrors=2))
    return h


CHANGES: dict[str, Callable[[Manager, Hosts], object]] = {
    "create-volume": lambda m, h: m.create_volume("tank/b", mapper.VolumeSpec(name="",
                                                                              size=8 * MiB)),
    "resize-volume": lambda m, h: m.resize_volume("tank/a", 32 * MiB),
    "rename-volume": lambda m, h: m.rename_volume("tank/a", "z"),
    "remove-volume": lambda m, h: m.remove_volume("tank/a"),
    "add-device": lambda m, h: m.add_device("tank", h.spare),
    "export-pool": lambda m, h: m.export_pool("tank"),
    "destroy-pool": lambda m, h: m.destroy_pool("tank", yes=True),
}


def media_state(h: Hosts) -> tuple[int, list[str]]:
    """(generation, volume names) of tank as host A opens it from its media."""
    with h.manager("a") as mgr:
        shown = mgr.show_pool("tank")
    return shown.pool.generation, [v.name for v in shown.pool.volumes]


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_host_b_may_not_change_a_pool_active_on_host_a(hosts: Hosts, change: str) -> None:
    with hosts.manager("a") as mgr:
        host_a = mgr.host_id
    before = media_state(hosts)
    with hosts.manager("b") as mgr, pytest.raises(RefusedError) as exc:
        CHANGES[change](mgr, hosts)
    assert f"pool tank is active on host {host_a}" in str(exc.value)
    assert media_state(hosts) == before


def test_host_a_commits_after_host_b_was_refused(hosts: Hosts) -> None:
    gen, _ = media_state(hosts)
    with hosts.manager("b") as mgr, pytest.raises(RefusedError):
        CHANGES["create-volume"](mgr, hosts)
    with hosts.manager("a") as mgr:
        mgr.create_volume("tank/c", mapper.VolumeSpec(name="", size=8 * MiB))
    assert media_state(hosts) == (gen + 1, ["a", "c"])
    with hosts.manager("b") as mgr:  # the shared catalog shows what A acknowledged
        assert [v.name for v in mgr.list_volumes("tank")] == ["a", "c"]


def test_a_libpq_uri_gets_the_psycopg_driver() -> None:
    url = engine_url("postgresql://vvfs@/db?host=/run/pg&port=5433")
    assert url.drivername == "postgresql+psycopg"
    assert url.query == {"host": "/run/pg", "port": "5433"}
