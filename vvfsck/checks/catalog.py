"""Stage 3: the catalog against the media (media win: the catalog is re-synced)."""

from __future__ import annotations

import functools
import os

from metadata.catalog import CatalogError
from vvfsck.context import Ctx
from vvfsck.findings import STAGE_CATALOG, Finding
from vvfsck.repairs import sync_catalog


def check_catalog(ctx: Ctx) -> None:
    """The catalog mirrors the media (deleted, stale, ahead or different: re-sync)."""
    if ctx.catalog is None or ctx.choice is None:
        return
    pool, cat = ctx.pool, ctx.catalog
    where = f"catalog {ctx.catalog_name}"
    row = cat.find_pool(pool.uuid)
    if row is None:
        if pool.active_host is not None and pool.active_host == ctx.host_id:
            _catalog_finding(ctx, where, f"pool {pool.name} is imported on this host (media"
                             f" generation {pool.generation}) but not in the catalog", sync=True)
        return
    if pool.active_host != ctx.host_id:
        owner = f"host {pool.active_host}" if pool.active_host else "no host (exported)"
        _catalog_finding(ctx, where, f"pool {pool.name} is in the catalog but its media say it"
                         f" belongs to {owner}", sync=False)
        return
    try:
        mirrored = cat.load_pool(pool.uuid)
    except CatalogError as exc:
        _catalog_finding(ctx, where, f"pool {pool.name}: {exc}", sync=True)
        return
    if mirrored.generation < pool.generation:
        what = f"is stale: generation {mirrored.generation}, media {pool.generation}"
    elif mirrored.generation > pool.generation:
        what = (f"is ahead of the media: generation {mirrored.generation}, media"
                f" {pool.generation}")
    elif mirrored.to_dict() != pool.to_dict():
        what = f"differs from the media at generation {pool.generation}"
    else:
        return
    _catalog_finding(ctx, where, f"pool {pool.name} {what}", sync=True)


def check_catalog_paths(ctx: Ctx) -> None:
    """The catalog remembers where each device of the pool was found (media win).

    A device with no path there, or another one, is taken for missing by
    every command (changes are refused) while the media say it is present.
    """
    if ctx.catalog is None or ctx.choice is None:
        return
    pool, cat = ctx.pool, ctx.catalog
    if pool.active_host != ctx.host_id or cat.find_pool(pool.uuid) is None:
        return  # check_catalog reports these
    remembered = cat.device_paths(pool.uuid)
    for m in ctx.members:
        d = ctx.entry(m.uuid)
        if d is None or m.provisional:
            continue
        was = remembered.get(m.uuid)
        if was is not None and os.path.realpath(was) == os.path.realpath(m.name):
            continue
        what = "no path for it" if was is None else f"it at {was}"
        _catalog_finding(ctx, f"catalog {ctx.catalog_name}",
                         f"pool {pool.name}: device {d.name} is at {m.name}, but the catalog"
                         f" remembers {what} (commands take it for missing)", sync=True)


def _catalog_finding(ctx: Ctx, where: str, message: str, *, sync: bool) -> None:
    f = Finding("catalog", where, None, message, stage=STAGE_CATALOG)
    if sync:
        f.fix = "re-sync the catalog from the media"
        f.repair = functools.partial(sync_catalog, ctx)
    elif ctx.catalog is not None:  # check_catalog runs with a catalog only
        f.fix = "forget the pool in this catalog (media win)"
        f.repair = functools.partial(ctx.catalog.drop_pool, ctx.pool.uuid)
    ctx.report(f)
