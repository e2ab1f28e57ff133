"""Read policies of mirrored volumes: which leg serves each piece.

``balanced`` takes the legs round-robin per piece, ``primary`` the first
readable leg, ``first`` issues the request to every readable leg whose
device has fewer than :data:`FIRST_MAX_IN_FLIGHT` calls in flight and
answers with the first to complete (the others finish in the background;
their bytes are dropped).  Resyncing and failed devices are never read.  A
leg that fails a read is failed and the piece is read again from another
leg.  While a resync after a crash runs
(:attr:`~vvfs.data.mirror.resync.ResyncEngine.source_only`) every read
uses the resync's source leg, so that a region whose legs may still differ
reads the same bytes each time.

Concurrency: everything runs on the trio thread; statements between two
awaits are atomic.  Cancellation: device calls are never abandoned; the
legs a cancelled ``first`` read raced go on in the background.
"""

from __future__ import annotations

import errno
from typing import Any

import trio

from mapper.layout import Loc, Piece
from metadata.blockdev import DeviceIOError
from vvfs.data.mirror.calls import Call, plan_calls, run_calls
from vvfs.data.mirror.core import MirrorCore, is_failure
from vvfs.data.mirror.resync import ResyncEngine

#: ``first`` read policy: legs whose device has this many calls in flight are skipped.
FIRST_MAX_IN_FLIGHT = 8


class ReadPolicies:
    """Reads of one pool's mirrored volumes (see the module docstring).

    Reads *core*'s live devices; while *resync* runs a crash resync, every
    read takes the source leg.
    """

    def __init__(self, core: MirrorCore, resync: ResyncEngine) -> None:
        self.core = core
        self.resync = resync

    async def read(self, vio: Any, offset: int, view: memoryview) -> None:
        """Fill *view* from volume byte *offset* of mirrored volume *vio* (module docstring)."""
        core = self.core
        pieces = vio.vmap.resolve(offset, len(view))
        policy = "primary" if self.resync.source_only else vio.volume.read_policy
        if policy == "first" and core.spawn is not None and await self._read_first(
                pieces, offset, view):
            return
        tried: list[set[str]] = [set() for _ in pieces]
        pending = list(range(len(pieces)))
        while pending:
            chosen = []
            for i in pending:
                loc = self._choose(vio, pieces[i], tried[i], policy)
                tried[i].add(loc.device)
                chosen.append((i, pieces[i], loc))
            calls = plan_calls(chosen, offset, view)
            ok = [0] * len(pieces)
            errors = await run_calls(core.devices, calls, read=True, ok=ok)
            pending = []
            for call, exc in errors:
                if not is_failure(exc):
                    raise exc
                core.fail(call.device, exc)
                pending += call.pieces
            if pending:
                core.stats.read_retries += 1

    def _choose(self, vio: Any, p: Piece, tried: set[str], policy: str) -> Loc:
        legs = [loc for loc in p.legs if self.core.readable(loc.device)
                and loc.device not in tried]
        if not legs:
            raise DeviceIOError(p.legs[0].device, p.legs[0].offset,
                                f"no working leg holds volume bytes {p.offset}+{p.length}",
                                errno.EIO)
        if policy != "balanced" or len(legs) == 1:
            return legs[0]
        vio._rr += 1
        return legs[vio._rr % len(legs)]

    async def _read_first(self, pieces: list[Piece], base: int, view: memoryview) -> bool:
        """``first``: race the readable legs; True once *view* holds the winner's bytes."""
        core = self.core
        n = min((len(p.legs) for p in pieces), default=0)
        candidates = [m for m in range(n) if all(core.readable(p.legs[m].device) for p in pieces)]
        if len(candidates) < 2:
            return False
        load = {m: max(core.devices[p.legs[m].device].stats.in_flight for p in pieces)
                for m in candidates}
        chosen = [m for m in candidates if load[m] < FIRST_MAX_IN_FLIGHT]
        if not chosen:
            chosen = [min(candidates, key=lambda m: load[m])]
        done = trio.Event()
        state: dict[str, Any] = {"winner": None, "left": len(chosen)}
        for m in chosen:
            buf = bytearray(len(view))
            calls = plan_calls(((i, p, p.legs[m]) for i, p in enumerate(pieces)), base,
                               memoryview(buf))
            assert core.spawn is not None
            core.spawn(self._race, m, calls, buf, state, done)
        await done.wait()
        winner = state["winner"]
        if winner is None:
            return False
        m, buf = winner
        view[:] = buf
        core.stats.first_wins[m] = core.stats.first_wins.get(m, 0) + 1
        return True

    async def _race(self, m: int, calls: list[Call], buf: bytearray, state: dict[str, Any],
                    done: trio.Event) -> None:
        try:
            errors = await run_calls(self.core.devices, calls, read=True, ok=[0] * (1 + max(
                (i for c in calls for i in c.pieces), default=0)))
            for call, exc in errors:
                if is_failure(exc):
                    self.core.fail(call.device, exc)
            if not errors and state["winner"] is None:
                state["winner"] = (m, buf)
                done.set()
        finally:
            state["left"] -= 1
            if not state["left"]:
                done.set()
