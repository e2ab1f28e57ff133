"""Scrubs, management side: start one in the node, ask for its status (:mod:`vvfs.node.scrub`)."""

from __future__ import annotations

from typing import Any

from vvfs.control.moves import need_jobs
from vvfs.control.session import PoolSession, split_volume_path
from vvfs.errors import NotFoundError


def _ids(s: PoolSession, path: str) -> tuple[str, str]:
    pool_name, name = split_volume_path(path)
    with s.reading(pool_name) as op:
        return op.pool.uuid, op.pool.volume(name).uuid


def scrub_volume(s: PoolSession, path: str, repair: bool) -> dict[str, Any]:
    """Start scrubbing POOL/VOL in the node; returns its status at once."""
    jobs = need_jobs(s, "scrub")
    pool_uuid, vol_uuid = _ids(s, path)
    return jobs.start_scrub(pool_uuid, vol_uuid, repair)


def scrub_status(s: PoolSession, path: str) -> dict[str, Any]:
    """Progress and findings of the last scrub of POOL/VOL in the running node."""
    jobs = need_jobs(s, "scrub")
    pool_uuid, vol_uuid = _ids(s, path)
    status = jobs.scrub_status(pool_uuid, vol_uuid)
    if status is None:
        raise NotFoundError(f"no scrub of {path} since the node started")
    return status
