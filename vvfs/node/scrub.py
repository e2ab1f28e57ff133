"""Scrub: read every block of every leg, compare, and decide which copy is right.

``vv volume scrub POOL/VOL [--repair]`` starts a :class:`ScrubTask` in the
node (``Manager.scrub_volume``) and follows it (``Manager.scrub_status``);
the management call returns at once, so a scrub never holds up other
management calls, and it runs on the trio thread only between device calls.

How a chunk is scrubbed
-----------------------
The volume is read in chunks of :data:`CHUNK` bytes.  Each chunk's volume
range is locked exclusively (``vvfs/data/guard.py``: new writes to it wait, writes
in flight there are waited for), then every leg's bytes and every leg's
stored checksum entries (read from the device, not the node's cache) are
read, and each 4 KiB block is judged by :func:`judge`:

* all legs equal: the data is right; an entry that disagrees with it is a
  *checksum* finding (stale or damaged entry), repaired by rewriting the
  entry;
* legs differ: the leg whose data matches a stored entry is right (a bit
  flip in the other leg); if legs match different entries, or none matches,
  leg 0 is taken (the resync rule; see :mod:`vvfs.data.checksums`, "Across a
  crash") and the finding says so;
* a leg that cannot be read is a *read error*, repaired from a leg that can;
* a leg on a device that is failed or being resynced is not compared (it is
  behind by design; resync brings it up to date): a piece with fewer than
  two other legs is counted as ``skipped``.

A scrub never runs beside a resync: it waits while the pool resyncs (or has
a crash's dirty regions to resync) and holds the pool's
``PoolMirror.copy_lock`` around each chunk, as a move does around each
extent; so a resync never changes a chunk that a scrub is judging.

With ``repair`` the bad legs are rewritten from the right one and every
leg's entry is set to the right data's crc32c, still under the chunk's lock;
the repaired devices are flushed at the end.  Findings name the volume
byte, the leg, its device and the device byte; consecutive blocks with the
same verdict are reported as one run.

Cancellation: a cancelled scrub (unmount, pool dropped) stops between device
calls; a repair in progress is finished or not, per block, like a crash.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from metadata.blockdev import DeviceIOError
from metadata.errors import VVError
from metadata.model import DeviceUUID
from vvfs.data import checksums
from vvfs.data.checksums import BLOCK, Verdict, judge
from vvfs.data.guard import shadowed
from vvfs.data.mirror import PoolMirror

if TYPE_CHECKING:
    from vvfs.data.volio import PoolIO, VolumeIO
    from vvfs.node.jobs import Jobs

log = logging.getLogger(__name__)

#: Bytes of volume locked, read and judged at a time.
CHUNK = 1 << 20
#: Findings kept in detail (the counters count all of them).
MAX_FINDINGS = 1000


@dataclass
class ScrubStats:
    blocks: int = 0
    bytes_read: int = 0
    data_errors: int = 0
    checksum_errors: int = 0
    read_errors: int = 0
    repaired: int = 0
    #: volume bytes not compared: fewer than two legs on readable devices
    skipped: int = 0


@dataclass
class _Run:
    problem: str
    leg: int
    right: int | None
    reason: str
    offset: int
    length: int
    device: DeviceUUID
    device_offset: int
    repaired: bool


class ScrubTask:
    """Scrubs one volume in the node (see the module docstring)."""

    def __init__(self, jobs: Jobs, pio: PoolIO, vio: VolumeIO, repair: bool) -> None:
        self.jobs = jobs
        self.pio = pio
        self.vio = vio
        self.repair = repair
        self.state = "starting"
        self.done = 0
        self.total = vio.size
        self.error: str | None = None
        self.stats = ScrubStats()
        self.findings: list[dict[str, Any]] = []
        self.started = time.time()
        self.ended: float | None = None
        self.scope = trio.CancelScope()
        self.finished = trio.Event()
        self._run: _Run | None = None
        self._touched: set[DeviceUUID] = set()

    def status(self) -> dict[str, Any]:
        s = self.stats
        return {"pool": self.pio.name, "volume": self.vio.name, "state": self.state,
                "repair": self.repair, "done": self.done, "total": self.total,
                "legs": self.vio.vmap.mirrors,
                "checksums": self.jobs.guards[self.pio.uuid].checksummed(self.vio)
                if self.pio.uuid in self.jobs.guards else False,
                "blocks": s.blocks, "bytes_read": s.bytes_read, "data_errors": s.data_errors,
                "checksum_errors": s.checksum_errors, "read_errors": s.read_errors,
                "repaired": s.repaired, "skipped": s.skipped, "findings": list(self.findings),
                "started": self.started, "ended": self.ended, "error": self.error}

    async def run(self) -> None:
        try:
            with self.scope:
                self.state = "running"
                await self._scrub()
                self.state = "done"
        except (DeviceIOError, VVError) as exc:
            self.state, self.error = "failed", str(exc)
            log.error("scrub of %s/%s failed: %s", self.pio.name, self.vio.name, exc)
        finally:
            self._flush_run()
            if self.state not in ("done", "failed"):
                self.state = "stopped"
            self.ended = time.time()
            self.finished.set()
        st = self.stats
        problems = st.data_errors + st.checksum_errors + st.read_errors
        self.jobs.node.mirrors.emit(
            self.pio.uuid, "scrub-done", "warning" if problems > st.repaired else "info", f"{self.pio.name}/{self.vio.name}",
             f"scrub of {self.pio.name}/{self.vio.name} {self.state}: {st.data_errors} data,"
             f" {st.checksum_errors} checksum, {st.read_errors} read errors, {st.repaired}"
             " repaired")

    def _mirror(self) -> PoolMirror | None:
        return self.jobs.node.mirrors.pools.get(self.pio.uuid)

    @contextlib.asynccontextmanager
    async def _quiet(self) -> AsyncIterator[None]:
        """Wait while the pool resyncs, then hold its copy lock (no resync starts meanwhile)."""
        pm = self._mirror()
        if pm is None:
            yield
            return
        async with pm.quiet(lambda: None, self._waiting):
            yield

    def _waiting(self, why: str) -> None:
        self.state = "waiting for resync"

    async def _scrub(self) -> None:
        guard = self.jobs.guards[self.pio.uuid]
        lock = guard.lock(self.vio.uuid)
        for off in range(0, self.vio.size, CHUNK):
            n = min(CHUNK, self.vio.size - off)
            async with self._quiet(), lock.exclusive(off, off + n):
                self.state = "running"
                for piece in self.vio.vmap.resolve(off, n):
                    await self._piece(piece)
            self.done = off + n
        with trio.CancelScope(shield=True):
            for uuid in self._touched:
                dev = self.pio.devices.get(uuid)
                if dev is not None:
                    await dev.flush()

    async def _read(self, device: DeviceUUID, offset: int, length: int) -> bytes | None:
        dev = self.pio.devices.get(device)
        if dev is None:
            return None
        try:
            return bytes(await dev.pread(length, offset))
        except DeviceIOError as exc:
            log.warning("scrub: %s", exc)
            return None

    async def _piece(self, piece: Any) -> None:
        guard = self.jobs.guards[self.pio.uuid]
        store = guard.store
        use_csum = guard.checksummed(self.vio)
        pm = self._mirror()
        # legs on failed or resyncing devices are behind by design: not compared
        absent = {i for i, loc in enumerate(piece.legs)
                  if pm is not None and not pm.readable(loc.device)}
        if len(piece.legs) - len(absent) < 2:
            self.stats.skipped += piece.length
            return
        datas = [await self._read(loc.device, loc.offset, piece.length) if i not in absent
                 else None for i, loc in enumerate(piece.legs)]
        self.stats.bytes_read += sum(len(d) for d in datas if d is not None)
        whole = piece.length // BLOCK
        stored: list[list[int] | None] = []
        for i, loc in enumerate(piece.legs):
            entries = None
            if use_csum and whole and i not in absent:
                try:
                    entries = await store.read_media(loc.device, loc.offset, whole)
                except DeviceIOError as exc:
                    log.warning("scrub: checksums: %s", exc)
            stored.append(entries)
        for i in range(-(-piece.length // BLOCK)):
            lo, hi = i * BLOCK, min((i + 1) * BLOCK, piece.length)
            blocks = [d[lo:hi] if d is not None else None for d in datas]
            marks: list[int | None] = [s[i] if s is not None and i < whole else None
                                       for s in stored]
            self.stats.blocks += 1
            if (all(b is not None for b in blocks) and all(b == blocks[0] for b in blocks)
                    and not any(marks)):
                self._flush_run()
                continue
            verdict = judge(blocks, marks)
            await self._block(piece, i, lo, hi, blocks, verdict, use_csum and i < whole, absent)

    async def _block(self, piece: Any, i: int, lo: int, hi: int, blocks: list[bytes | None],
                     v: Verdict, csum: bool, absent: set[int]) -> None:
        store = self.jobs.guards[self.pio.uuid].store
        problems: list[tuple[str, int]] = []
        for leg in v.bad_data:
            if leg not in absent:
                problems.append(("read error" if blocks[leg] is None else "data", leg))
        for leg in v.bad_entry:
            if leg not in v.bad_data and leg not in absent:
                problems.append(("checksum", leg))
        if not problems:
            self._flush_run()
            return
        repaired = False
        if self.repair and v.right is not None:
            good = blocks[v.right]
            assert good is not None  # judge() picks a readable leg
            guard = self.jobs.guards[self.pio.uuid]
            shadow = guard.move
            try:
                for leg in v.bad_data:
                    loc = piece.legs[leg]
                    if leg not in absent and loc.device in self.pio.devices:
                        await guard.write_leg(self.pio.devices, loc.device, loc.offset + lo, good)
                        self._touched.add(loc.device)
                if csum:
                    value = checksums.pack([v.value])
                    runs = [e for m, loc in enumerate(piece.legs) if m not in absent
                            for e in shadowed(shadow, loc.device, loc.offset + lo, value)]
                    await store.update(runs)
                    self._touched |= {loc.device for m, loc in enumerate(piece.legs)
                                      if m not in absent}
                repaired = True
            except DeviceIOError as exc:
                log.error("scrub: repair failed: %s", exc)
        for problem, leg in problems:
            if problem == "data":
                self.stats.data_errors += 1
            elif problem == "checksum":
                self.stats.checksum_errors += 1
            else:
                self.stats.read_errors += 1
            if repaired:
                self.stats.repaired += 1
            loc = piece.legs[leg]
            self._note(problem, leg, v, piece.offset + lo, hi - lo, loc.device,
                       loc.offset + lo, repaired)

    def _note(self, problem: str, leg: int, v: Verdict, offset: int, length: int,
              device: DeviceUUID, device_offset: int, repaired: bool) -> None:
        run = self._run
        if (run is not None and (run.problem, run.leg, run.right, run.device, run.repaired) ==
                (problem, leg, v.right, device, repaired) and run.offset + run.length == offset
                and run.device_offset + run.length == device_offset):
            run.length += length
            return
        self._flush_run()
        self._run = _Run(problem, leg, v.right, v.reason, offset, length, device, device_offset,
                         repaired)

    def _flush_run(self) -> None:
        run, self._run = self._run, None
        if run is None or len(self.findings) >= MAX_FINDINGS:
            return
        devs = {d.uuid: d for d in self.pio.pool.devices}
        dev = self.pio.devices.get(run.device)
        self.findings.append({
            "problem": run.problem, "volume": self.vio.name, "offset": run.offset,
            "length": run.length, "leg": run.leg,
            "device": devs[run.device].name if run.device in devs else run.device,
            "path": dev.path if dev is not None else None,
            "device_offset": run.device_offset, "right_leg": run.right, "reason": run.reason,
            "repaired": run.repaired})
