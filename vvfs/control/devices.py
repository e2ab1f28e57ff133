"""Devices of a pool: add (claim), remove, list, and free space per storage class."""

from __future__ import annotations

import os

import mapper
from mapper import move as moves
from metadata.model import Device, Pool
from vvfs.control import claim
from vvfs.control.session import PoolSession
from vvfs.errors import RefusedError


def add_device(s: PoolSession, pool_name: str, path: str, *, tier: int = 2,
               protection: int = 0, cost: float = 0.0, force: bool = False) -> Device:
    with s.changing(pool_name) as op:
        size = claim.check_claimable(s.catalog, path, force)
        ref = next(sc.label for sc in op.choice.scans if sc.label is not None)
        taken = {d.name for d in op.pool.devices}
        name = next(f"d{i}" for i in range(len(taken) + 1) if f"d{i}" not in taken)
        where = claim.Placement(op.pool.uuid, op.pool.extent_size, ref.geometry.area_size,
                                tier, protection, cost)
        with claim.claiming(path, name, size, where, force=force) as c:
            try:
                new = mapper.add_device(op.pool, c.device)
                op.paths[c.device.uuid] = os.path.abspath(path)
                s.commit(op, new, [c.target])
            except BaseException:
                op.paths.pop(c.device.uuid, None)
                raise
        s.remember_dir(path)
        return c.device


def remove_device(s: PoolSession, pool_name: str, key: str) -> Device:
    with s.changing(pool_name) as op:
        device = op.pool.device(key)
        if device.uuid in moves.busy_devices(op.pool):
            raise RefusedError(f"device {device.name} takes part in a move in progress;"
                               " wait for it or abort it (vv volume move --abort)")
        new = mapper.remove_device(op.pool, device.uuid)
        if not new.devices:
            raise RefusedError("cannot remove the last device; destroy the pool instead")
        s.commit(op, new)
        claim.unclaim_scans(op.choice.scans, device.uuid)
        return device


def list_devices(s: PoolSession, pool_name: str) -> tuple[Pool, dict[str, str], dict]:
    with s.reading(pool_name) as op:
        return op.pool, dict(op.paths), mapper.usage(op.pool)


def list_classes(s: PoolSession, pool_name: str) -> list:
    with s.reading(pool_name) as op:
        return mapper.class_usage(op.pool)
