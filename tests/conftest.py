"""Shared fixtures: a pool on sparse files, and the same pool mounted by a node.

Mount fixtures always clean up in ``finally``: the FUSE mount is lazily
unmounted if still there, then the node is terminated, then killed (see
``tests/mountutil.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .mountutil import MiB, MountedNode, TestPool, mounted, require

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
