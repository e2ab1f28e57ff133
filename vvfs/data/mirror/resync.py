"""The resync engine: making the legs of dirty regions agree again.

Resync
------
:meth:`ResyncEngine.resync` walks the set bits of every live log; for each
region it locks the region and its copies on the other legs in the gate
(new writes wait, writes in flight are waited for), reads it from every
leg on a device that is ok (not resyncing, not a target) -- where those
differ, each block is judged by its stored checksums
(:func:`vvfs.data.checksums.judge`; without checksums the first leg wins) --
writes the result to the live legs that do not hold it (and to a running
move's destination, see :meth:`ResyncEngine._forward`), refreshes the block
checksums of every leg, and -- after the targets were flushed and if no
write entered the region since -- clears the bits on every leg.
Throttled by a token bucket (:class:`Throttle`).  A job holds
:attr:`ResyncEngine.copy_lock` from start to end; a move holds it around
each extent it copies, so a move never copies bytes a resync is changing
(and waits while a resync runs).

While a crash resync runs, reads use its first source leg
(:attr:`ResyncEngine.source_only`, :mod:`.reads`); a block that the resync
then judges by its checksums may read differently afterwards (it was torn
or damaged on that leg, and never acknowledged in that state).

Concurrency: everything runs on the trio thread; statements between two
awaits are atomic.  Cancellation: device calls are never abandoned; a
cancelled resync leaves bits set and is simply run again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from mapper.layout import Loc
from mapper.mirrors import Span
from metadata.blockdev import DeviceIOError
from metadata.dirtylog import LogGeometry
from metadata.model import DeviceUUID
from vvfs.data.checksums import BLOCK, ENTRY, block_crcs, judge, pack
from vvfs.data.mirror.calls import Call, run_calls
from vvfs.data.mirror.core import MirrorCore, is_failure
from vvfs.data.mirror.gate import Key

log = logging.getLogger(__name__)

#: Resync: flush targets and clear bits after this many bytes copied.
RESYNC_BATCH = 16 << 20
#: Seconds between resync-progress events.
PROGRESS_EVERY = 5.0
#: Seconds between looks at the pool while a move or a scrub waits (:meth:`ResyncEngine.quiet`).
QUIET_POLL = 0.5


class Throttle:
    """A byte rate limit (None or 0: none); the rate may change while in use."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self._t0: float | None = None
        self._bytes = 0

    async def consume(self, n: int) -> None:
        if not self.rate:
            return
        now = trio.current_time()
        if self._t0 is None or now - self._t0 > 10 and self._t0 + self._bytes / self.rate < now:
            self._t0, self._bytes = now, 0
        self._bytes += n
        ahead = self._t0 + self._bytes / self.rate - now
        if ahead > 0:
            await trio.sleep(ahead)


@dataclass
class ResyncJob:
    """One resync of a pool: after a crash, of returning devices, or of a replacement."""

    id: int
    kind: str
    targets: set[DeviceUUID] = field(default_factory=set)
    rate: int | None = None
    state: str = "queued"
    total: int = 0
    done: int = 0
    regions: int = 0
    regions_done: int = 0
    #: regions not copied to every leg (one missing or failed): their bits stay set
    regions_left: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None
    throttle: Throttle = field(default_factory=lambda: Throttle(None))

    def progress(self, names: dict[str, str]) -> dict[str, Any]:
        elapsed = (self.finished or time.time()) - self.started
        return {"id": self.id, "kind": self.kind, "state": self.state,
                "devices": sorted(names.get(t, t) for t in self.targets),
                "bytes_total": self.total, "bytes_done": self.done,
                "regions_total": self.regions, "regions_done": self.regions_done,
                "regions_left": self.regions_left,
                "rate_limit": self.rate, "started": self.started, "finished": self.finished,
                "elapsed": elapsed, "error": self.error}


@dataclass
class _Pass:
    """What one run of a job did so far (:meth:`ResyncEngine._resync`)."""

    #: regions copied to every leg and not yet settled: (keys, gate seqs when copied)
    pending: list[tuple[set[Key], dict[Key, int]]] = field(default_factory=list)
    #: regions done in this job (a copy's other legs included)
    copied: set[Key] = field(default_factory=set)
    #: per target, regions of this job that could not be copied to every leg
    left: dict[str, int] = field(default_factory=dict)
    #: bytes copied since the last settle
    batch: int = 0
    last_event: float = field(default_factory=time.monotonic)


class ResyncEngine:
    """The resync jobs of one pool's mirror (see the module docstring).

    Works on *core*'s logs, gate and devices.  Owns the jobs and the locks
    and counters that others look at: :attr:`copy_lock` (moves, scrubs),
    :attr:`source_only` (reads), :attr:`needs_resync` (the cleaner).
    """

    def __init__(self, core: MirrorCore) -> None:
        self.core = core
        #: resyncs after a crash running: reads use the source leg only
        self.source_only = 0
        #: set while bits found at start wait for their resync (the cleaner waits too)
        self.needs_resync = False
        self.jobs: list[ResyncJob] = []
        self._job_ids = 0
        #: held by a resync job from start to end, and by a move around each
        #: extent it copies: the two never write the same bytes at once
        self.copy_lock = trio.Lock()

    def new_job(self, kind: str, targets: Iterable[DeviceUUID] = (), rate: int | None = None
                ) -> ResyncJob:
        self._job_ids += 1
        job = ResyncJob(self._job_ids, kind, set(targets), rate, throttle=Throttle(rate))
        live = [j for j in self.jobs if j.state in ("queued", "running")]
        ended = [j for j in self.jobs if j not in live]
        self.jobs = sorted(live + ended[-8:], key=lambda j: j.id) + [job]
        return job

    def running_job(self) -> ResyncJob | None:
        return next((j for j in self.jobs if j.state in ("queued", "running")), None)

    def resyncing_now(self) -> str | None:
        """Why a move or a scrub must wait now (the pool resyncs), or None."""
        if self.needs_resync:
            return "the pool resyncs the regions a crash left dirty"
        job = self.running_job()
        return f"resync {job.id} ({job.kind}) runs" if job is not None else None

    @contextlib.asynccontextmanager
    async def quiet(self, blocked: Callable[[], str | None], waiting: Callable[[str], None]
                    ) -> AsyncIterator[None]:
        """Hold :attr:`copy_lock` once no resync runs and *blocked()* says None.

        For a move's extent copy or a scrub's chunk: both are checked again
        under the lock (a queued resync goes first); while they say why not,
        *waiting(why)* is called and the pool looked at every
        :data:`QUIET_POLL` seconds.
        """
        while True:
            why = self.resyncing_now() or blocked()
            if why is None:
                async with self.copy_lock:
                    if (self.resyncing_now() or blocked()) is None:
                        yield
                        return
                continue
            waiting(why)
            await trio.sleep(QUIET_POLL)

    async def repair_suspect(self) -> None:
        """Resync the regions of writes that ended part-way (unless a resync runs already)."""
        if self.core.suspect and self.running_job() is None:
            await self.resync(self.new_job("repair"))

    def _work(self) -> list[Key]:
        """Every (device, region) whose bit is set on a live log, in device order."""
        core = self.core
        out: list[Key] = []
        for uuid, lg in core.logs.items():
            if uuid in core.devices:
                out += [(uuid, r) for r in sorted(lg.set_regions)]
        return out

    async def resync(self, job: ResyncJob) -> None:
        """Run *job* (see the module docstring); its state says how it ended."""
        async with self.copy_lock:
            job.state = "running"
            job.started = time.time()
            if job.kind == "crash":
                self.source_only += 1
            try:
                await self._resync(job)
                job.state = "done" if job.error is None else "failed"
            except DeviceIOError as exc:
                job.state, job.error = "failed", str(exc)
            except trio.Cancelled:
                job.state, job.error = "cancelled", "cancelled"
                raise
            finally:
                job.finished = time.time()
                if job.kind == "crash":
                    self.source_only -= 1
                if job.state == "done":  # else the bits found at start stay uncleared
                    self.needs_resync = False

    async def _resync(self, job: ResyncJob) -> None:
        """Resync every region of the plan, then say how the job ended (in *job*)."""
        work = self._plan(job)
        run = _Pass()
        for uuid, r in work:
            if self._target_failed(job):
                return
            await self._region(job, run, uuid, r)
        await self._settle(run.pending)
        self._result(job, run.left)

    def _plan(self, job: ResyncJob) -> list[Key]:
        """The (device, region) keys to resync, in device order; counts them in *job*.

        A region counts once with its copies on the other legs (which are
        keys of the plan too, but done with it).  Emits the start event.
        """
        core = self.core
        work = self._work()
        job.regions = job.total = 0
        seen: set[Key] = set()
        for u, r in work:  # each region once, with its copies on the other legs
            if (u, r) in seen:
                continue
            job.regions += 1
            spans = core.index.spans(u, core.geos[u].region_start(r), core.geos[u].region)
            seen |= self._copies(spans)
            job.total += sum(s.length for s in spans)
        names = core.names
        to = ", ".join(sorted(names.get(t, t) for t in job.targets))
        core.emit("resync-progress", "info", self.job_object(job),
                  f"resync {job.id} ({job.kind}) started: {job.regions} dirty regions,"
                  f" {job.total} bytes to copy" + (f" to {to}" if job.targets else ""))
        return work

    def _copies(self, spans: list[Span]) -> set[Key]:
        """The keys of every leg of *spans*: a region and its copies on the other legs."""
        geos = self.core.geos
        return {(loc.device, geos[loc.device].region_of(loc.offset))
                for s in spans for loc in s.legs if loc.device in geos}

    def _target_failed(self, job: ResyncJob) -> bool:
        """Did a target of *job* fail? (then the job says so and ends)"""
        for t in job.targets:
            if t not in self.core.devices:
                job.error = f"device {self.core.name_of(t)} failed during its resync"
                return True
        return False

    async def _region(self, job: ResyncJob, run: _Pass, uuid: str, r: int) -> None:
        """Resync region *r* of *uuid* with its copies, unless its bit is clear or it is done."""
        core = self.core
        lg = core.logs.get(uuid)
        if lg is None or not lg.is_set(r) or uuid not in core.devices \
                or (uuid, r) in run.copied:
            return
        geo = core.geos[uuid]
        spans = core.index.spans(uuid, geo.region_start(r), geo.region)
        if not spans:
            lg.clear([r])
            job.regions_done += 1
            return
        keys = self._copies(spans)
        whole, n, spans, seqs = await self._copy_region(job, uuid, geo, r, keys)
        if whole:
            run.pending.append((keys, seqs))
            run.copied |= keys
        else:
            job.regions_left += 1
            for t in job.targets & {loc.device for s in spans for loc in s.legs}:
                run.left[t] = run.left.get(t, 0) + 1
        await self._account(job, run, n)

    async def _copy_region(self, job: ResyncJob, uuid: str, geo: LogGeometry, r: int,
                           keys: set[Key]) -> tuple[bool, int, list[Span], dict[Key, int]]:
        """Copy region *r* of *uuid* holding *keys* in the gate.

        Returns (every leg holds it now, bytes copied, the region's spans as
        copied, the gate's seq of each key while held).
        """
        core = self.core
        async with core.gate.holding(keys):
            # the configuration may have changed while this waited: use the
            # current map, and leave the region to a later pass if it grew
            spans = core.index.spans(uuid, geo.region_start(r), geo.region)
            stale_map = not self._copies(spans) <= keys
            whole = not stale_map
            n = 0
            for s in [] if stale_map else spans:
                done, copied_bytes = await self._copy_span(s, job)
                whole &= done
                n += copied_bytes
            seqs: dict[Key, int] = {k: core.gate.seq.get(k, 0) for k in keys}
            if whole:  # the legs agree again (no write is in flight here)
                core.suspect -= keys
        return whole, n, spans, seqs

    async def _account(self, job: ResyncJob, run: _Pass, n: int) -> None:
        """Count a region of *n* bytes done: throttle, settle a full batch, report progress."""
        job.done += n
        job.regions_done += 1
        run.batch += n
        self.core.stats.resync_bytes += n
        await job.throttle.consume(n)
        if run.batch >= RESYNC_BATCH:
            await self._settle(run.pending)
            run.pending, run.batch = [], 0
        if time.monotonic() - run.last_event > PROGRESS_EVERY:
            run.last_event = time.monotonic()
            pct = 100 * job.done // job.total if job.total else 100
            self.core.emit("resync-progress", "info", self.job_object(job),
                           f"resync {job.id}: {job.done} of {job.total} bytes ({pct}%)")

    def _result(self, job: ResyncJob, left: dict[str, int]) -> None:
        """After the last region: a target that failed, or regions it did not get, fail *job*."""
        for t in job.targets:
            if t not in self.core.devices:
                job.error = f"device {self.core.name_of(t)} failed during its resync"
                return
            # only what this job could not copy: bits that host writes set after
            # a region was copied name bytes the target got too (it is written)
            if left.get(t):
                job.error = (f"{left[t]} regions of device {self.core.name_of(t)} could not be"
                             " resynced (no working copy)")

    def job_object(self, job: ResyncJob) -> str:
        """The object of *job*'s events: the names of its targets, else the pool's."""
        core = self.core
        names = core.names
        return ",".join(sorted(names.get(t, t) for t in job.targets)) or core.pool.name

    async def _copy_span(self, s: Span, job: ResyncJob) -> tuple[bool, int]:
        """Make every live leg of span *s* hold the same, right bytes.

        Reads every readable leg that is not a target; where they agree,
        that is the data, where they differ each block is judged by its
        stored checksums (:func:`vvfs.data.checksums.judge`).  Writes the data
        to every live leg that does not hold it yet, and to a move's
        destination where such a leg is being moved (:meth:`_forward`).
        Returns (every leg holds it now, bytes copied: 0 when there was
        no other live leg to copy to).
        """
        core = self.core
        while True:
            sources = [loc for loc in s.legs if core.readable(loc.device)
                       and loc.device not in job.targets]
            if not sources or sum(loc.device in core.devices for loc in s.legs) < 2:
                return False, 0  # nothing to copy from, or to
            datas = await self._read_legs(sources, s.length)
            if datas is not None:
                break
        data = datas[0] if all(d == datas[0] for d in datas[1:]) \
            else await self._judge(sources, datas)
        holding = {loc for loc, d in zip(sources, datas) if d == data}
        targets = [loc for loc in s.legs if loc.device in core.devices and loc not in holding]
        if not targets:
            written: list[Loc] = []
            errors: list[tuple[Call, DeviceIOError]] = []
        else:
            calls = []
            for loc in targets:
                call = Call(loc.device, loc.offset)
                call.bufs = [memoryview(data)]
                call.length = len(data)
                call.pieces = [0]
                calls.append(call)
            errors = await run_calls(core.devices, calls, read=False, ok=[0])
            for call, err in errors:
                if not is_failure(err):
                    raise err
                core.fail(call.device, err)
            failed = {call.device for call, _ in errors}
            written = [loc for loc in targets if loc.device not in failed]
        forwarded = await self._forward(written, data)
        if core.checksums is not None and not len(data) % BLOCK:
            values = pack(block_crcs(memoryview(data)))
            entries = [(loc.device, loc.offset, values) for loc in s.legs
                       if loc.device in core.devices]
            entries += [(dest, at, values[skip // BLOCK * ENTRY:(skip + n) // BLOCK * ENTRY])
                        for dest, at, skip, n in forwarded]
            try:
                await core.checksums.update(entries)
            except DeviceIOError as exc:
                log.warning("resync: checksum entries not refreshed: %s", exc)
        copied = len(data) if len(targets) + len(holding) >= 2 else 0
        return not errors and all(loc.device in core.devices for loc in s.legs), copied

    async def _read_legs(self, sources: list[Loc], length: int
                         ) -> list[bytes | bytearray] | None:
        """The bytes of every source leg, or None after failing a leg that could not be read."""
        core = self.core
        datas: list[bytes | bytearray] = [b""] * len(sources)
        failed: list[tuple[DeviceUUID, DeviceIOError]] = []

        async def one(i: int, loc: Loc) -> None:
            try:
                dev = core.devices.get(loc.device)
                if dev is None:
                    raise DeviceIOError(core.name_of(loc.device), loc.offset,
                                        "device is not open", errno.ENODEV)
                datas[i] = await dev.pread(length, loc.offset)
            except DeviceIOError as exc:
                if not is_failure(exc):
                    raise
                failed.append((loc.device, exc))

        if len(sources) == 1:
            await one(0, sources[0])
        else:
            async with trio.open_nursery() as nursery:
                for i, loc in enumerate(sources):
                    nursery.start_soon(one, i, loc)
        for device, exc in failed:
            core.fail(device, exc)
        return None if failed else datas

    async def _judge(self, sources: list[Loc], datas: list[bytes | bytearray]
                     ) -> bytes | bytearray:
        """The right bytes of legs that differ: block by block, by the stored checksums.

        Without checksums (or for a length that is not whole blocks) the
        first source in leg order is right, as it always was.
        """
        core = self.core
        n = len(datas[0])
        if core.checksums is None or n % BLOCK:
            return datas[0]
        stored: list[list[int] | None] = []
        for loc in sources:
            try:
                stored.append(await core.checksums.read(loc.device, loc.offset, n // BLOCK))
            except DeviceIOError as exc:
                log.warning("resync: checksum entries not read: %s", exc)
                stored.append(None)
        out = bytearray(datas[0])
        for b in range(0, n, BLOCK):
            blocks = [bytes(d[b:b + BLOCK]) for d in datas]
            if all(x == blocks[0] for x in blocks[1:]):
                continue
            core.stats.resync_judged += 1
            entries = [vals[b // BLOCK] if vals is not None else None for vals in stored]
            verdict = judge(list(blocks), entries)
            if verdict.right:
                core.stats.resync_judged_other += 1
                out[b:b + BLOCK] = datas[verdict.right][b:b + BLOCK]
                right = sources[verdict.right]
                log.info("resync: device %s byte %d: %s", core.name_of(right.device),
                         right.offset + b, verdict.reason)
        return bytes(out)

    async def _forward(self, written: list[Loc], data: bytes | bytearray
                       ) -> list[tuple[DeviceUUID, int, int, int]]:
        """Write *data*, just written to legs *written*, to a move's destination of those legs.

        While a move is recorded, bytes that land on a moving run must reach
        its destination too, like a host write's (:mod:`vvfs.data.guard`); the
        move copies no extent meanwhile (it holds :attr:`copy_lock`, as
        resync does).  A destination that fails fails the move, not the
        resync.  Returns (device, byte, offset in *data*, length) of each
        write made, for the checksums.
        """
        core = self.core
        shadow = core.guard.move if core.guard is not None else None
        if shadow is None or not written:
            return []
        view = memoryview(data)
        out: list[tuple[DeviceUUID, int, int, int]] = []
        try:
            for loc in written:
                for skip, dest, at, n in shadow.map(loc.device, loc.offset, len(view)):
                    dev = core.devices.get(dest)
                    if dev is None:
                        raise DeviceIOError(dest, at, "move destination is not open")
                    await dev.pwrite(view[skip:skip + n], at)
                    out.append((dest, at, skip, n))
                    core.guard.stats.shadow_writes += 1
        except DeviceIOError as exc:
            core.guard.stats.shadow_errors += 1
            if shadow.failed is None:
                shadow.failed = exc
            log.error("move %s: a resync write could not reach the destination: %s",
                      shadow.record.id, exc)
        return out

    async def _settle(self, pending: list[tuple[set[Key], dict[Key, int]]]) -> None:
        """Flush what was copied, then clear the bits of regions no write entered since."""
        core = self.core
        if not pending:
            return
        devs = {k[0] for keys, _ in pending for k in keys}
        await core.flush_devices(devs)
        by_dev: dict[DeviceUUID, list[int]] = {}
        for keys, seqs in pending:
            if any(k[0] not in core.devices for k in keys):
                continue
            for k in keys:
                if core.gate.seq.get(k, 0) == seqs[k] and k not in core.gate.inflight:
                    by_dev.setdefault(DeviceUUID(k[0]), []).append(k[1])
        for uuid, regions in by_dev.items():
            lg = core.logs.get(uuid)
            if lg is not None:
                lg.clear(regions)
        await core.sync_logs()
