"""The region gate: the (device, region) keys writes are in, and those a resync holds alone.

Step 1 of a mirrored write (:mod:`.writes`): the regions it touches on every
live leg enter the :class:`RegionGate` (waiting while a resync holds one of
them), before their bits are set and the data goes out; they leave it once
the write's device calls have ended.  A resync holds a region and its copies
on the other legs (:meth:`RegionGate.holding`): new writes wait, writes in
flight are waited for, so no write is in flight there while it copies.

The cleaner (:mod:`.clean`) and resync (:mod:`.resync`) clear a bit only if
the region's ``seq`` did not move while its devices were flushed.

Concurrency: everything runs on the trio thread; statements between two
awaits are atomic.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

import trio

#: (device uuid, region index on that device)
Key = tuple[str, int]


class RegionGate:
    """Writes in flight per (device, region), and regions a resync holds alone.

    ``seq[key]`` numbers the last write that entered a region and
    ``last[key]`` is when one last left it: a bit is cleared only if the
    region's ``seq`` did not move while its devices were flushed.
    """

    def __init__(self) -> None:
        self.inflight: dict[Key, int] = {}
        self.seq: dict[Key, int] = {}
        self.last: dict[Key, float] = {}
        #: the region's device's completed-write count after the last write
        #: there: once the device's durable count reaches it, the data is flushed
        self.wseq: dict[Key, int] = {}
        self.locked: dict[Key, trio.Event] = {}
        self._counter = 0
        self._left = trio.Event()

    async def enter(self, keys: set[Key]) -> None:
        """Register a write in *keys*, after any resync holding one of them is done."""
        while self.locked:
            blocker = next((self.locked[k] for k in keys if k in self.locked), None)
            if blocker is None:
                break
            await blocker.wait()
        self._counter += 1
        n = self._counter
        inflight, seq = self.inflight, self.seq
        for k in keys:
            inflight[k] = inflight.get(k, 0) + 1
            seq[k] = n

    def leave(self, keys: set[Key]) -> None:
        now = trio.current_time()
        for k in keys:
            n = self.inflight[k] - 1
            if n:
                self.inflight[k] = n
            else:
                del self.inflight[k]
            self.last[k] = now
        if self.locked:
            self._left.set()
            self._left = trio.Event()

    @contextlib.asynccontextmanager
    async def holding(self, keys: set[Key]) -> AsyncIterator[None]:
        """Hold *keys* alone: new writes wait, writes in flight are waited for."""
        while True:
            other = next((self.locked[k] for k in keys if k in self.locked), None)
            if other is None:
                break
            await other.wait()
        mine = trio.Event()
        for k in keys:
            self.locked[k] = mine
        try:
            while any(k in self.inflight for k in keys):
                await self._left.wait()
            yield
        finally:
            for k in keys:
                if self.locked.get(k) is mine:
                    del self.locked[k]
            mine.set()

    def forget(self, keys: Iterable[Key]) -> None:
        for k in keys:
            if k not in self.inflight:
                self.seq.pop(k, None)
                self.last.pop(k, None)
                self.wseq.pop(k, None)
