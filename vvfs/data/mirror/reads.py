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

Every read is verified by the block checksums, whatever its policy
(:mod:`.verify`): widened to whole 4 KiB blocks, read from the legs the
policy chose, checked, and healed from another leg where a block fails its
checksum.  ``verify=False`` reads without (the write guard's read-back of
blocks it is rewriting).

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
from vvfs.data.mirror.verify import ReadVerifier

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
        self.verifier = ReadVerifier(core, resync)

    async def read(self, vio: Any, offset: int, view: memoryview, *, all_legs: bool = False,
                   verify: bool = True) -> None:
        """Fill *view* from volume byte *offset* of mirrored volume *vio* (module docstring).

        Verified unless *verify* is False.  *all_legs*: every leg's copy of
        each whole block is judged (and healed), not only the one read; the
        caller holds the range exclusively in the volume's range lock (the
        write guard, before a partial write keeps a block's other bytes).
        """
        verifier = self.verifier
        if not verify or not verifier.applies(vio):
            await self._read(vio, offset, view)
            return
        start, end = verifier.span(vio, offset, len(view))
        if start == offset and end == offset + len(view):
            buf = view
        else:  # a block read in part: read (and check) the whole block
            buf = memoryview(bytearray(end - start))
        chosen = await self._read(vio, start, buf)
        if all_legs:
            await verifier.check_all_legs(vio, start, buf)
        else:
            await verifier.check(vio, start, buf, chosen)
        if buf is not view:
            view[:] = buf[offset - start:offset - start + len(view)]

    async def _read(self, vio: Any, offset: int, view: memoryview) -> list[tuple[Piece, Loc]]:
        """Fill *view* by the read policy; return each piece with the leg that answered."""
        core = self.core
        pieces = vio.vmap.resolve(offset, len(view))
        policy = "primary" if self.resync.source_only else vio.volume.read_policy
        if policy == "first" and core.spawn is not None:
            m = await self._read_first(pieces, offset, view)
            if m is not None:
                return [(p, p.legs[m]) for p in pieces]
        tried: list[set[str]] = [set() for _ in pieces]
        answered: list[Loc] = [p.legs[0] for p in pieces]
        pending = list(range(len(pieces)))
        while pending:
            chosen = []
            for i in pending:
                loc = self._choose(vio, pieces[i], tried[i], policy)
                tried[i].add(loc.device)
                answered[i] = loc
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
        return list(zip(pieces, answered, strict=True))

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

    async def _read_first(self, pieces: list[Piece], base: int, view: memoryview
                          ) -> int | None:
        """``first``: race the readable legs; the winner once *view* holds its bytes."""
        core = self.core
        n = min((len(p.legs) for p in pieces), default=0)
        candidates = [m for m in range(n) if all(core.readable(p.legs[m].device) for p in pieces)]
        if len(candidates) < 2:
            return None
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
            return None
        m, buf = winner
        view[:] = buf
        core.stats.first_wins[m] = core.stats.first_wins.get(m, 0) + 1
        return int(m)

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
