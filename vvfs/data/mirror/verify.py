"""Verified reads of mirrored volumes: every block checked by its crc32c, a bad copy healed.

ZFS's self-healing read on the block checksums of :mod:`vvfs.data.checksums`
(which blocks have one, and the rules that judge legs by them).

The check (every read, every read policy)
-----------------------------------------
:mod:`.reads` widens a read to whole 4 KiB blocks (a read that covers a
block in part reads the whole block, so that no byte is returned whose
block was not checked), reads it from the legs its policy chose, and hands
the bytes to :meth:`ReadVerifier.check`: for each run of blocks that lie
one after the other on one leg, the run's entries are looked up in the
pool's :class:`~vvfs.data.checksums.ChecksumStore` at once (one call per
run; one cached page holds the entries of 4 MiB, a page not cached is read
from the device) and compared with the crc32c of the bytes read.  Entry 0
("no checksum") is never judged; the trailing part of a volume whose size
is not a multiple of 4 KiB has no checksum.  A volume served without a write
guard (no entries are kept then: ``VVFS_BENCH_NO_GUARD``, rigs without one)
is not checked, nor are the volumes that :data:`BENCH_UNVERIFIED` names.

Healing
-------
When some blocks do not match, the range from the first to the last of
them is locked as a mirrored write locks it -- exclusively in the volume's
range lock (:class:`vvfs.data.guard.RangeLock`: writes in flight there are
waited for, new ones wait; a scrub's or a move's range is waited for), and
in the region gate (:mod:`.gate`: a resync is not changing it) -- and, with
nothing in flight there, every readable leg's bytes and entries are read
again and each block is judged by :func:`cure`:

* legs differ and one version of the block matches a stored entry: that
  copy is served, written over the legs that differ
  (``PoolGuard.write_leg``: a running move's destination gets it too), and
  wrong entries are rewritten; an event ``checksum-repaired`` (warning)
  names the volume, the leg, its device, the volume and device bytes and
  the length, and ``checksum_repaired`` counts the blocks;
* all legs agree and one leg's entry matches them: the data is right; the
  other legs' entries are wrong and are rewritten (event too);
* no leg matches a stored entry (also where all legs agree): the read fails
  with EIO (:class:`~vvfs.errors.BlockChecksumError`), an event
  ``checksum-error`` (error) names the block and every leg, nothing is
  written -- unless the block may have been torn by a write that never
  completed (the pool has a crash's dirty regions to resync, or the block
  lies in a *suspect* region, see :mod:`.writes`): then it is served as the
  resync will keep it (the judge's leg, leg 0 first) and the resync repairs
  it;
* legs match different entries (an interrupted write): the judge's leg is
  served, nothing is written (resync and scrub decide).

A block that matches once nothing is in flight was racing a write (its
bytes or its entry were one version ahead of the other): it is served as it
is now, nothing is written.  A repair write that fails fails its leg as a
write would (the device leaves the live table, its failure is recorded in
the survivors' logs before the reply); the reader still gets the good
copy.  Repaired devices are flushed before the reply.

Concurrency: everything runs on the trio thread; statements between two
awaits are atomic.  The check takes no lock (a mismatch is only acted on
under the locks above, so a read racing a write of the same block never
repairs a leg with stale bytes nor reports a false error); the write guard,
before a partial write, holds the range itself and asks for every leg's copy
to be judged (``all_legs``).  Locks are taken range lock first,
gate second, as writes take them.  Cancellation: locks are released in
``finally``; a cancelled repair may have rewritten some legs and not
others, each block whole or not, like a crash (the good copy is untouched).

What it costs
-------------
The crc32c of every block read (0.3 us per 4 KiB block) and one look-up per
run of blocks (a cached page: no I/O, no await); bench/README.md has the
measured ratio against the same reads without verification.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from mapper.layout import Loc, Piece
from metadata.blockdev import DeviceIOError
from metadata.model import DeviceUUID
from vvfs.data.checksums import BLOCK, Entry, block_crcs, crc, judge, pack
from vvfs.data.guard import shadowed
from vvfs.data.mirror.core import MirrorCore, is_failure
from vvfs.data.mirror.gate import Key
from vvfs.data.mirror.resync import ResyncEngine
from vvfs.errors import BlockChecksumError

if TYPE_CHECKING:
    from vvfs.data.volio import VolumeIO

log = logging.getLogger(__name__)

#: For bench/ only: ``VVFS_BENCH_NO_VERIFY=POOL/VOL[,POOL/VOL...]`` in the
#: node's environment serves those volumes' reads unverified, so that one run
#: measures what verification costs (bench/README.md).
BENCH_UNVERIFIED = frozenset(
    v for v in os.environ.get("VVFS_BENCH_NO_VERIFY", "").split(",") if v)


@dataclass(frozen=True)
class Cure:
    """What :func:`cure` says of one block read again under the locks."""

    serve: int | None  #: the leg whose bytes the read returns (None: EIO)
    data: tuple[int, ...]  #: legs rewritten with those bytes
    entries: tuple[int, ...]  #: legs whose entry is rewritten to :attr:`value`
    value: int  #: crc32c of the served bytes
    reason: str


def cure(datas: list[bytes | None], stored: list[int | None], doubt: bool) -> Cure:
    """Judge one block for a read: *datas* per leg (None: not read), *stored* entries.

    The cases are those of "Healing" in the module docstring; *doubt* says
    the block may have been torn by a write that never completed.
    """
    v = judge(datas, stored)
    if v.right is None:
        return Cure(None, (), (), 0, v.reason)
    readable = {i: d for i, d in enumerate(datas) if d is not None}
    known = {s for s in stored if s}
    good = datas[v.right]
    matching = [i for i, d in readable.items() if crc(d) in known]
    agree = all(d == good for d in readable.values())
    if not known:
        return Cure(v.right, (), (), v.value, "no stored checksum")
    if agree and matching:
        return Cure(v.right, (), v.bad_entry, v.value, "the legs agree")
    if not agree and len({datas[i] for i in matching}) == 1:
        data = tuple(i for i in v.bad_data if datas[i] is not None)
        return Cure(v.right, data, v.bad_entry, v.value, v.reason)
    if matching or doubt:
        return Cure(v.right, (), (), v.value,
                    f"{v.reason}; an interrupted write? left to resync and scrub")
    return Cure(None, (), (), v.value, "no copy matches its stored checksum")


@dataclass
class _Fixes:
    """The repairs judged in one piece: per leg, the blocks to rewrite (data, entries)."""

    data: dict[int, list[tuple[int, bytes, int]]] = field(default_factory=dict)
    entries: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)
    failed: list[int] = field(default_factory=list)

    def add(self, b: int, c: Cure, right: int, good: bytes) -> None:
        for m in c.data:
            self.data.setdefault(m, []).append((b, good, right))
        for m in c.entries:
            self.entries.setdefault(m, []).append((b, c.value, right))


class ReadVerifier:
    """Checks the reads of one pool's mirrored volumes and heals them (module docstring)."""

    def __init__(self, core: MirrorCore, resync: ResyncEngine) -> None:
        self.core = core
        self.resync = resync

    def applies(self, vio: VolumeIO) -> bool:
        """Are *vio*'s reads verified? (a store, a write guard, not excluded for bench/)"""
        return (self.core.checksums is not None and vio.guard is not None
                and (not BENCH_UNVERIFIED
                     or f"{self.core.pool.name}/{vio.name}" not in BENCH_UNVERIFIED))

    @staticmethod
    def span(vio: VolumeIO, offset: int, length: int) -> tuple[int, int]:
        """``[offset, offset + length)`` widened to whole blocks (and cut at the volume's end)."""
        return offset - offset % BLOCK, min(-(-(offset + length) // BLOCK) * BLOCK, vio.size)

    async def check(self, vio: VolumeIO, base: int, view: memoryview,
                    chosen: list[tuple[Piece, Loc]]) -> None:
        """Check *view* (volume bytes from *base*, read from the legs *chosen*); heal it.

        On return *view* holds bytes that match their checksums; raises
        BlockChecksumError for a block that no leg holds right.
        """
        store = self.core.checksums
        limit = vio.size - vio.size % BLOCK
        bad: list[int] = []
        for device, at, first, n in _runs(chosen, limit):
            try:
                stored = await store.read(device, at, n)
            except DeviceIOError as exc:  # the entries are judged again, per leg, below
                log.warning("checksum entries of %s unreadable: %s", device, exc)
                bad += range(first, first + n * BLOCK, BLOCK)
                continue
            if stored is None:
                continue
            self.core.stats.verified += n
            crcs = block_crcs(view[first - base:first - base + n * BLOCK])
            if crcs != stored:
                bad += [first + i * BLOCK for i, (s, c) in enumerate(zip(stored, crcs, strict=True))
                        if s and s != c]
        if bad:
            self.core.stats.checksum_mismatches += len(bad)
            await self._heal(vio, base, view, bad, locked=False)

    async def check_all_legs(self, vio: VolumeIO, base: int, view: memoryview) -> None:
        """Judge every leg's copy of each whole block of *view* (its range is held); heal.

        For the write guard before a partial write (whose range it holds
        exclusively): *view* gets the right bytes, every leg the right copy.
        """
        limit = vio.size - vio.size % BLOCK
        first = -(-base // BLOCK) * BLOCK
        end = min(base + len(view), limit)
        if end > first:
            await self._heal(vio, base, view, list(range(first, end - BLOCK + 1, BLOCK)),
                             locked=True)

    async def _heal(self, vio: VolumeIO, base: int, view: memoryview, bad: list[int], *,
                    locked: bool) -> None:
        """Judge blocks ``bad[0] .. bad[-1]`` again with nothing in flight; serve, repair."""
        core = self.core
        lo, hi = min(bad), max(bad) + BLOCK
        assert vio.guard is not None  # applies() said so
        held: AbstractAsyncContextManager[None] = (
            contextlib.nullcontext() if locked else vio.guard.lock(vio.uuid).exclusive(lo, hi))
        failed: list[tuple[str, int, str]] = []
        async with held:
            pieces = vio.vmap.resolve(lo, hi - lo)
            keys = self._keys(pieces)
            await core.gate.enter(keys)
            try:
                for p in pieces:
                    out = view[p.offset - base:p.offset - base + p.length]
                    failed += await self._heal_piece(vio, p, out)
            finally:
                core.gate.leave(keys)
        if failed:
            device, offset, what = failed[0]
            raise BlockChecksumError(device, offset, f"volume {core.pool.name}/{vio.name}: {what}")

    def _keys(self, pieces: Iterable[Piece]) -> set[Key]:
        """The gate keys (device, region) of every live leg of *pieces*."""
        keys: set[Key] = set()
        for p in pieces:
            for dev, off in p.legs:
                geo = self.core.geos.get(dev)
                if geo is not None and dev in self.core.devices:
                    keys.update((dev, r) for r in geo.regions_of(off, p.length))
        return keys

    def _doubt(self, p: Piece) -> bool:
        """May *p*'s blocks have been torn by a write that never completed?"""
        r = self.resync
        return bool(r.needs_resync or r.source_only
                    or (self.core.suspect and self._keys([p]) & self.core.suspect))

    async def _heal_piece(self, vio: VolumeIO, p: Piece, out: memoryview
                          ) -> list[tuple[str, int, str]]:
        """Judge each block of piece *p* on every leg; fill *out*; return what failed."""
        datas = await self._read_legs(p)
        n = p.length // BLOCK
        stored = [await self._entries(loc, n) if datas[m] is not None else None
                  for m, loc in enumerate(p.legs)]
        doubt = self._doubt(p)
        fixes = _Fixes()
        for b in range(n):
            lo = b * BLOCK
            blocks = [d[lo:lo + BLOCK] if d is not None else None for d in datas]
            c = cure(blocks, [s[b] if s is not None else None for s in stored], doubt)
            good = blocks[c.serve] if c.serve is not None else None
            if c.serve is None or good is None:
                fixes.failed.append(b)
                continue
            out[lo:lo + BLOCK] = good
            fixes.add(b, c, c.serve, good)
        await self._repair(vio, p, fixes)
        return [self._report_failed(vio, p, b, datas) for b in fixes.failed]

    async def _read_legs(self, p: Piece) -> list[bytes | None]:
        """The bytes of *p* on every readable leg (None: not readable, or failed now)."""
        core = self.core
        datas: list[bytes | None] = [None] * len(p.legs)
        errors: list[tuple[str, DeviceIOError]] = []

        async def one(m: int, loc: Loc) -> None:
            dev = core.devices.get(loc.device)
            if dev is None:
                return
            try:
                datas[m] = bytes(await dev.pread(p.length, loc.offset))
            except DeviceIOError as exc:
                errors.append((loc.device, exc))

        async with trio.open_nursery() as nursery:
            for m, loc in enumerate(p.legs):
                if core.readable(loc.device):
                    nursery.start_soon(one, m, loc)
        for device, exc in errors:
            if not is_failure(exc):
                raise exc
            core.fail(device, exc)
        await core.record_all(DeviceUUID(d) for d, _ in errors)
        return datas

    async def _entries(self, loc: Loc, n: int) -> list[int] | None:
        try:
            return await self.core.checksums.read(loc.device, loc.offset, n)  # type: ignore[no-any-return]
        except DeviceIOError as exc:
            log.warning("checksum entries of %s unreadable: %s", self.core.name_of(loc.device),
                        exc)
            return None

    async def _repair(self, vio: VolumeIO, p: Piece, fixes: _Fixes) -> None:
        """Rewrite the bad copies and entries of *p* (its range is held); events; flush."""
        core = self.core
        assert vio.guard is not None
        guard = vio.guard
        failed: set[DeviceUUID] = set()
        touched: set[DeviceUUID] = set()
        for m, blocks in fixes.data.items():
            loc = p.legs[m]
            for first, data, right in _merge(blocks):
                try:
                    await guard.write_leg(core.devices, loc.device, loc.offset + first * BLOCK,
                                          data)
                except DeviceIOError as exc:
                    if is_failure(exc):
                        core.fail(loc.device, exc)
                        failed.add(loc.device)
                    log.error("repair of %s not written: %s", core.name_of(loc.device), exc)
                    break
                touched.add(loc.device)
                core.stats.checksum_repaired += len(data) // BLOCK
                self._event(vio, p, m, first, len(data), f"failed its checksum; rewritten"
                            f" from leg {right}")
        await self._repair_entries(vio, p, fixes, failed)
        await self._flush(touched - failed, failed)
        await core.record_all(failed)

    async def _repair_entries(self, vio: VolumeIO, p: Piece, fixes: _Fixes,
                              failed: set[DeviceUUID]) -> None:
        """Rewrite the wrong entries of *p* (and of a move's destination of its legs)."""
        core = self.core
        shadow = vio.guard.move if vio.guard is not None else None
        runs: list[Entry] = []
        for m, blocks in fixes.entries.items():
            loc = p.legs[m]
            if loc.device in failed:
                continue
            for b, value, _right in blocks:
                runs += shadowed(shadow, loc.device, loc.offset + b * BLOCK, pack([value]))
            rewritten = {b for b, _data, _right in fixes.data.get(m, ())}
            for first, n, right in _merge_entries([e for e in blocks if e[0] not in rewritten]):
                core.stats.checksum_entries_repaired += n
                self._event(vio, p, m, first, n * BLOCK, "had a wrong checksum entry (the"
                            f" legs agree); the entry is rewritten from leg {right}")
        try:
            await core.checksums.update(runs)
        except DeviceIOError as exc:  # like a write's entries: resync and scrub repair them
            log.warning("checksum entries not rewritten: %s", exc)

    async def _flush(self, touched: set[DeviceUUID], failed: set[DeviceUUID]) -> None:
        for u in touched:
            dev = self.core.devices.get(u)
            if dev is None:
                continue
            try:
                await dev.flush()
            except DeviceIOError as exc:
                if not is_failure(exc):
                    raise
                self.core.fail(u, exc)
                failed.add(u)

    def _event(self, vio: VolumeIO, p: Piece, m: int, first: int, length: int,
               what: str) -> None:
        core = self.core
        loc = p.legs[m]
        name = f"{core.pool.name}/{vio.name}"
        core.emit("checksum-repaired", "warning", name,
                  f"volume {name}: leg {m} on device {core.name_of(loc.device)} at volume byte"
                  f" {p.offset + first * BLOCK} ({length} bytes, device byte"
                  f" {loc.offset + first * BLOCK}) {what}")

    def _report_failed(self, vio: VolumeIO, p: Piece, b: int, datas: list[bytes | None]
                       ) -> tuple[str, int, str]:
        """Count and report block *b* of *p* that no leg holds right.

        Returns the error's device (the first leg's), device byte and text.
        """
        core = self.core
        core.stats.checksum_errors += 1
        name = f"{core.pool.name}/{vio.name}"
        legs = ", ".join(f"leg {m} on {core.name_of(loc.device)} at device byte"
                         f" {loc.offset + b * BLOCK}"
                         + ("" if datas[m] is not None else " (not readable)")
                         for m, loc in enumerate(p.legs))
        what = (f"no copy of volume bytes {p.offset + b * BLOCK}+{BLOCK} matches its"
                f" checksum ({legs}); read failed with EIO, nothing written")
        core.emit("checksum-error", "error", name, f"volume {name}: {what}")
        first = p.legs[0]
        return core.name_of(first.device), first.offset + b * BLOCK, what


def _runs(chosen: list[tuple[Piece, Loc]], limit: int
          ) -> list[tuple[DeviceUUID, int, int, int]]:
    """(device, device byte, volume byte, blocks) of the whole blocks read, per run on a leg.

    Pieces that follow each other on the volume and on one device make one
    run; blocks at or past *limit* (the volume's last whole block) are left out.
    """
    out: list[tuple[DeviceUUID, int, int, int]] = []
    for p, loc in chosen:
        first = -(-p.offset // BLOCK) * BLOCK
        end = min(p.offset + p.length, limit)
        n = (end - first) // BLOCK
        if n <= 0:
            continue
        at = loc.offset + first - p.offset
        if out:
            dev, dat, vol, k = out[-1]
            if dev == loc.device and dat + k * BLOCK == at and vol + k * BLOCK == first:
                out[-1] = (dev, dat, vol, k + n)
                continue
        out.append((DeviceUUID(loc.device), at, first, n))
    return out


def _merge(blocks: list[tuple[int, bytes, int]]) -> list[tuple[int, bytes, int]]:
    """Consecutive blocks ``(index, bytes, right leg)`` as runs ``(first, bytes, right leg)``."""
    out: list[tuple[int, bytes, int]] = []
    for b, data, right in blocks:
        if out and out[-1][0] + len(out[-1][1]) // BLOCK == b and out[-1][2] == right:
            out[-1] = (out[-1][0], out[-1][1] + data, right)
        else:
            out.append((b, data, right))
    return out


def _merge_entries(blocks: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Consecutive blocks ``(index, value, right leg)`` as runs ``(first, count, right leg)``."""
    out: list[tuple[int, int, int]] = []
    for b, _value, right in blocks:
        if out and out[-1][0] + out[-1][1] == b and out[-1][2] == right:
            out[-1] = (out[-1][0], out[-1][1] + 1, right)
        else:
            out.append((b, 1, right))
    return out
