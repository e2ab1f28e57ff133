"""Volumes of a pool: create, list, show, remove, resize, rename, and their settings."""

from __future__ import annotations

import mapper
from mapper import mirrors as mmirrors
from metadata.model import NAME_RE, Pool, Volume, check_name
from vvfs.control.session import PoolSession, split_volume_path
from vvfs.errors import ApiError


def create_volume(s: PoolSession, path: str, spec: mapper.VolumeSpec) -> Volume:
    pool_name, spec.name = split_volume_path(path)
    with s.changing(pool_name) as op:
        new = s.commit_zeroed(op, mapper.create_volume(op.pool, spec))
        return new.volume(spec.name)


def create_volumes(s: PoolSession, pool_name: str, specs: list[mapper.VolumeSpec]
                   ) -> list[Volume]:
    """Create several volumes of one pool in a single commit (all or nothing)."""
    with s.changing(pool_name) as op:
        new = s.commit_zeroed(op, mapper.create_volumes(op.pool, specs))
        names = {sp.name for sp in specs}
        return [v for v in new.volumes if v.name in names]


def list_volumes(s: PoolSession, pool_name: str) -> list[Volume]:
    with s.reading(pool_name) as op:
        return list(op.pool.volumes)


def show_volume(s: PoolSession, path: str) -> tuple[Pool, Volume]:
    pool_name, name = split_volume_path(path)
    with s.reading(pool_name) as op:
        return op.pool, op.pool.volume(name)


def remove_volume(s: PoolSession, path: str) -> None:
    pool_name, name = split_volume_path(path)
    with s.changing(pool_name) as op:
        op.pool.volume(name)
        s.refuse_if_open(op.pool, name, "removed")
        s.commit(op, mapper.remove_volume(op.pool, name))


def resize_volume(s: PoolSession, path: str, size: int, *, allow_shrink: bool = False
                  ) -> Volume:
    pool_name, name = split_volume_path(path)
    with s.changing(pool_name) as op:
        if size < op.pool.volume(name).size:
            s.refuse_if_open(op.pool, name, "shrunk")
        new = s.commit_zeroed(op, mapper.resize_volume(op.pool, name, size, allow_shrink))
        return new.volume(name)


def rename_volume(s: PoolSession, path: str, new_name: str) -> Volume:
    pool_name, name = split_volume_path(path)
    if "/" in new_name:
        p2, _, rest = new_name.partition("/")
        if not NAME_RE.match(p2) or "/" in rest:
            check_name("volume", new_name)  # raises: the name, and what a name may be
        if p2 != pool_name:
            raise ApiError(f"volume {path} cannot be renamed into another pool ({p2});"
                           " name the new volume without a pool, or POOL/NAME of its own pool")
        new_name = rest
    with s.changing(pool_name) as op:
        op.pool.volume(name)
        s.refuse_if_open(op.pool, name, "renamed")
        new = s.commit(op, mapper.rename_volume(op.pool, name, new_name))
        return new.volume(new_name)


def set_volume(s: PoolSession, path: str, read_policy: str | None) -> Volume:
    """Change settings of POOL/VOL: its read policy (balanced, primary, first)."""
    pool_name, name = split_volume_path(path)
    with s.changing(pool_name, allow_missing=True) as op:
        new = op.pool
        if read_policy is not None:
            new = mmirrors.set_read_policy(new, name, read_policy)
        if new is not op.pool:
            new = s.commit(op, new)
        return new.volume(name)
