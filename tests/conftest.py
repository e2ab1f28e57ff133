"""Shared fixtures: a pool on sparse files, the same pool mounted by a node, and the
small Manager-made pools of the vvfsck tests.

Helpers live in :mod:`tests.support`; fixtures live here, so that test modules
never import a fixture by name.  Mount fixtures always clean up in ``finally``:
the FUSE mount is lazily unmounted if still there, then the node is terminated,
then killed (see ``tests/support/mountutil.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .support.fsck_support import Env, make_env, scratch
from .support.mountutil import MiB, MountedNode, TestPool, mounted, require

KiB = 1024


@pytest.fixture(scope="module")
def io_pool(tmp_path_factory: pytest.TempPathFactory) -> TestPool:
    """Three 1 GiB sparse files; linear, striped and mirrored volumes, and a 0644 one."""
    require()
    pool = TestPool(tmp_path_factory.mktemp("io"))
    pool.create_volume("lin", 96 * MiB)
    pool.create_volume("str", 96 * MiB, stripes=2, stripe_size=64 * KiB)
    pool.create_volume("mir", 96 * MiB, mirrors=2)
    pool.create_volume("pub", 8 * MiB, mode=0o644)
    return pool


@pytest.fixture(scope="module")
def io_node(io_pool: TestPool) -> Iterator[MountedNode]:
    """``io_pool`` mounted for the whole module."""
    with mounted(io_pool) as node:
        yield node


@pytest.fixture
def fresh_pool(tmp_path: Path) -> TestPool:
    """An empty pool of three 1 GiB sparse files, for one test."""
    require()
    return TestPool(tmp_path)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """Devices and state directory on tmpfs when there is one (fsync is free there)."""
    with scratch(tmp_path) as path:
        yield path


@pytest.fixture
def env(root: Path) -> Env:
    """Pool "tank" made by the Manager on three 64 MiB sparse files, with two volumes."""
    return make_env(root)
