"""With ``--deep``: the legs of mirrored volumes compared byte by byte.

Reported, never repaired: vvfsck cannot tell which leg is right.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any

import mapper
from metadata import format as fmt
from metadata.errors import ConfigError
from vvfsck.context import Ctx
from vvfsck.findings import STAGE_CONFIG, Finding

DEEP_CHUNK = 1 << 20


def check_mirrors(ctx: Ctx) -> None:
    """With --deep: the legs of every mirrored piece of every volume hold the same bytes
    (legs on failed devices excepted: a resync brings them up to date)."""
    if not ctx.deep or ctx.choice is None:
        return
    for v in ctx.pool.volumes:
        if all(len(s.areas) < 2 for s in v.segments):
            continue
        try:
            vmap = mapper.VolumeMap(ctx.pool, v)
        except (ConfigError, IndexError):
            continue  # reported by the configuration checks
        _compare_legs(ctx, v.name, vmap)


def _compare_legs(ctx: Ctx, volume: str, vmap: mapper.VolumeMap) -> None:
    # [leg, first byte, end byte, where, device byte, reference leg, its place]
    run: list[Any] | None = None
    failed = {d.uuid for d in ctx.pool.devices if d.state == "failed"}
    for pos in range(0, vmap.size, DEEP_CHUNK):
        for piece in vmap.resolve(pos, min(DEEP_CHUNK, vmap.size - pos)):
            diff = _piece_diff(ctx, piece, failed)
            if diff is None:
                continue
            leg, skip, r = diff
            if run is not None and run[0] == leg and run[2] == piece.offset:
                run[2] = piece.offset + piece.length
                continue
            if run is not None:
                _report_mirror(ctx, volume, run)
            loc, ref = piece.legs[leg], piece.legs[r]
            ref_at = f"{ctx.where(ref.device)} at byte {ref.offset + skip}"
            run = [leg, piece.offset + skip, piece.offset + piece.length,
                   ctx.where(loc.device), loc.offset + skip, r, ref_at]
    if run is not None:
        _report_mirror(ctx, volume, run)


def _piece_diff(ctx: Ctx, piece: mapper.Piece, failed: AbstractSet[str]
                ) -> tuple[int, int, int] | None:
    """(leg, first differing byte rounded down to a sector, reference leg) of the first leg
    unlike the first leg compared.

    Legs on devices the configuration has ``failed`` are not compared: they
    are behind by design until a node resyncs them (a pending resync).
    """
    datas: list[bytes | None] = []
    for loc in piece.legs:
        m = ctx.member(loc.device) if loc.device not in failed else None
        datas.append(m.dev.pread(piece.length, loc.offset) if m is not None else None)
    r = next((i for i, d in enumerate(datas) if d is not None), None)
    if r is None:
        return None
    ref = datas[r]
    assert ref is not None  # chosen above as not None; not data from media
    for leg, data in enumerate(datas[r + 1:], r + 1):
        if data is not None and data != ref:
            first = next(i for i, (a, b) in enumerate(zip(ref, data)) if a != b)
            return leg, first - first % fmt.SECTOR, r
    return None


def _report_mirror(ctx: Ctx, volume: str, run: list[Any]) -> None:
    leg, start, end, where, offset, r, ref = run
    ctx.report(Finding(
        "mirrors", where, offset,
        f"volume {volume}: bytes {start}-{end - 1} of leg {leg} differ from leg {r} ({ref})",
        advice="vvfsck cannot tell which leg is right: copy the good one over the other"
               " (the node's scrub and resync do)", stage=STAGE_CONFIG))
