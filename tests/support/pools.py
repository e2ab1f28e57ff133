"""Pools built in memory for the pure mapper tests (no media, no catalog)."""

from __future__ import annotations

from metadata.model import Device, Pool, PoolUUID


def mapper_pool(*devices: Device, extent_size: int) -> Pool:
    """Pool ``p`` (uuid ``pool-1``) of *devices* and no volumes, with extents of *extent_size*.

    Each test module binds its own extent size once (``functools.partial``):
    64 KiB keeps the sector-by-sector references of the layout tests small,
    4 MiB is the product's default.
    """
    return Pool(uuid=PoolUUID("pool-1"), name="p", extent_size=extent_size,
                devices=list(devices))
