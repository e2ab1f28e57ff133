"""Devices for testing what the format and the checker do when storage misbehaves.

Everything here implements the :class:`metadata.blockdev.BlockDevice`
protocol with real behaviour (fakes, not mocks), so the code under test runs
unchanged on top of it:

:class:`MemoryDevice`
    A sparse in-memory device (4 KiB blocks in a dict) with cheap
    :meth:`~MemoryDevice.snapshot` / :meth:`~MemoryDevice.restore`.

:class:`FaultyDevice`
    Wraps another device and injects faults: EIO on a byte range or on the
    Nth call, write-only errors, delays, vanishing and coming back, silently
    dropped writes, torn writes (only a prefix of a write lands, at 512-byte
    granularity) and bit flips on read.

:class:`Recorder` and :class:`RecordingDevice`
    Record every write (with the bytes it overwrote) and every flush of any
    number of devices on one global clock, and rebuild *crash images*.

Crash images
------------
A flush closes an *epoch* of one device: every write issued before it is on
stable storage once it returns; writes of the epoch still open at a crash
may land in any subset, and the last of them may be torn.  A flush on one
device orders nothing on another, so each device's open epoch is cut
independently (:class:`Cut`).  What *does* order devices is causality: a
write issued after a flush on another device *returned* (the commit
protocol's phase 2 after every phase-1 flush) cannot be durable unless
that flush's epoch is.  :meth:`Recorder.crash_writes` therefore takes a
global time *at* (the sequence number of the last event that happened
before the crash): on each device every epoch whose flush returned by then
is whole, the epoch open at that time is cut as its :class:`Cut` says, and
nothing later exists.  :meth:`Recorder.epoch_writes` gives the plain
per-device view (every epoch before *k*, plus a cut of epoch *k*).

Images are applied in place (:meth:`Recorder.apply`): every recorded range
is first put back as it was before recording began, then the surviving
writes are replayed -- so a 64 MiB sparse device costs only the bytes that
were written.
"""

from __future__ import annotations

import errno as errnos
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Self

from metadata.blockdev import BlockDevice, DeviceIOError

__all__ = [
    "Cut",
    "FaultyDevice",
    "FlushRecord",
    "MemoryDevice",
    "Recorder",
    "RecordingDevice",
    "WriteRecord",
]

SECTOR = 512
_BLOCK = 4096
_OPS = frozenset({"read", "write", "flush"})
Op = Literal["read", "write", "flush"]


# ---------------------------------------------------------------------------
# A sparse device in memory


class MemoryDevice:
    """A sparse device of *size* bytes held in memory (unwritten blocks read as zeros)."""

    def __init__(self, size: int, name: str = "mem") -> None:
        self.name = name
        self._size = size
        self._blocks: dict[int, bytearray] = {}

    def _check(self, length: int, offset: int, what: str) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise DeviceIOError(self.name, offset, f"{what} beyond the end of the device",
                                errnos.EINVAL)

    def pread(self, length: int, offset: int) -> bytes:
        self._check(length, offset, "read")
        out = bytearray()
        pos, end = offset, offset + length
        while pos < end:
            block, within = divmod(pos, _BLOCK)
            n = min(_BLOCK - within, end - pos)
            data = self._blocks.get(block)
            out += data[within:within + n] if data is not None else bytes(n)
            pos += n
        return bytes(out)

    def pwrite(self, data: bytes, offset: int) -> None:
        self._check(len(data), offset, "write")
        pos, view = offset, memoryview(data)
        while view:
            block, within = divmod(pos, _BLOCK)
            n = min(_BLOCK - within, len(view))
            buf = self._blocks.setdefault(block, bytearray(_BLOCK))
            buf[within:within + n] = view[:n]
            view, pos = view[n:], pos + n

    def flush(self) -> None:
        pass

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        pass

    def snapshot(self) -> dict[int, bytes]:
        """The device's content, to :meth:`restore` later."""
        return {k: bytes(v) for k, v in self._blocks.items()}

    def restore(self, snap: dict[int, bytes]) -> None:
        self._blocks = {k: bytearray(v) for k, v in snap.items()}

    def flip_bit(self, offset: int, bit: int) -> None:
        """Invert one bit of the stored content (a corruption at rest)."""
        byte = self.pread(1, offset)[0] ^ (1 << bit)
        self.pwrite(bytes([byte]), offset)


# ---------------------------------------------------------------------------
# Fault injection


@dataclass
class _Rule:
    """One injected fault: which calls it matches and what it does to them."""

    kind: Literal["error", "delay", "drop", "tear"]
    ops: frozenset[str]
    start: int = 0
    end: int | None = None
    #: match only the nth matching call (1-based), counted per rule
    nth: int | None = None
    #: stop matching after this many hits
    times: int | None = None
    #: let this many matching calls through first
    skip: int = 0
    errno: int = errnos.EIO
    seconds: float = 0.0
    keep_sectors: int = 0
    silent: bool = False
    seen: int = 0
    hits: int = 0

    def matches(self, op: str, offset: int, length: int) -> bool:
        if op not in self.ops:
            return False
        if op != "flush":
            end = self.end if self.end is not None else offset + length + 1
            if offset + max(length, 1) <= self.start or offset >= end:
                return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.seen += 1
        if self.seen <= self.skip:
            return False
        if self.nth is not None and self.seen != self.nth:
            return False
        self.hits += 1
        return True


class FaultyDevice:
    """A device that misbehaves on purpose, wrapping a real one.

    Faults are added with the methods below (each returns ``self`` so they
    chain) and removed with :meth:`heal`.  An injected error is a
    :class:`DeviceIOError` naming this device, the byte offset and
    "(injected)".  ``calls`` counts every call by operation.
    """

    def __init__(self, inner: BlockDevice, name: str | None = None) -> None:
        self.inner = inner
        self.name = name or inner.name
        self.rules: list[_Rule] = []
        self.vanished = False
        self.calls: dict[str, int] = {"read": 0, "write": 0, "flush": 0}
        self._flips: dict[int, int] = {}
        self._flip_rate = 0.0
        self._rng = random.Random(0)
        self._lock = threading.Lock()

    # -- configuring faults ----------------------------------------------

    def fail_range(self, start: int, end: int, *, ops: Iterable[Op] = ("read", "write"),
                   errno: int = errnos.EIO, times: int | None = None) -> FaultyDevice:
        """Calls touching bytes ``[start, end)`` fail with *errno*."""
        self.rules.append(_Rule("error", _ops(ops), start, end, errno=errno, times=times))
        return self

    def fail_call(self, nth: int, *, ops: Iterable[Op] = ("read", "write", "flush"),
                  errno: int = errnos.EIO) -> FaultyDevice:
        """The *nth* call (1-based, counted from now) of *ops* fails."""
        self.rules.append(_Rule("error", _ops(ops), nth=nth, errno=errno))
        return self

    def fail_writes(self, *, after: int = 0, errno: int = errnos.EIO) -> FaultyDevice:
        """Writes and flushes fail (once *after* more of them succeeded); reads work."""
        self.rules.append(_Rule("error", frozenset({"write", "flush"}), skip=after, errno=errno))
        return self

    def delay(self, seconds: float, *, ops: Iterable[Op] = ("read", "write", "flush"),
              start: int = 0, end: int | None = None, times: int | None = None
              ) -> FaultyDevice:
        """Calls of *ops* (touching ``[start, end)``) sleep *seconds* first (the first *times*)."""
        self.rules.append(_Rule("delay", _ops(ops), start, end, seconds=seconds, times=times))
        return self

    def drop_writes(self, start: int = 0, end: int | None = None,
                    times: int | None = None) -> FaultyDevice:
        """Writes touching ``[start, end)`` report success but change nothing."""
        self.rules.append(_Rule("drop", frozenset({"write"}), start, end, times=times))
        return self

    def tear_write(self, keep_sectors: int, *, nth: int | None = 1, start: int = 0,
                   end: int | None = None, silent: bool = False) -> FaultyDevice:
        """Let only the first *keep_sectors* 512-byte sectors of a write land.

        The *nth* write touching ``[start, end)`` (every one with ``nth=None``)
        is torn; unless *silent*, the writer then gets an EIO, as a machine
        losing power mid-write would never report success.
        """
        self.rules.append(_Rule("tear", frozenset({"write"}), start, end, nth=nth,
                                keep_sectors=keep_sectors, silent=silent))
        return self

    def flip_bit_on_read(self, offset: int, bit: int = 0) -> FaultyDevice:
        """Every read covering byte *offset* returns it with *bit* inverted."""
        self._flips[offset] = self._flips.get(offset, 0) ^ (1 << bit)
        return self

    def flip_random_bits(self, per_read: float, seed: int = 0) -> FaultyDevice:
        """Each read flips one random bit of its result with probability *per_read*."""
        self._flip_rate = per_read
        self._rng = random.Random(seed)
        return self

    def vanish(self) -> FaultyDevice:
        """Every call fails with ENODEV until :meth:`come_back`."""
        self.vanished = True
        return self

    def come_back(self) -> FaultyDevice:
        self.vanished = False
        return self

    def heal(self) -> FaultyDevice:
        """Remove every fault."""
        self.rules.clear()
        self._flips.clear()
        self._flip_rate = 0.0
        self.vanished = False
        return self

    # -- the BlockDevice protocol -------------------------------------------

    def _fault(self, op: str, offset: int, length: int) -> _Rule | None:
        """Apply delays; return the first error/drop/tear rule matching this call."""
        pause = 0.0
        with self._lock:
            self.calls[op] += 1
            if self.vanished:
                raise DeviceIOError(self.name, offset, f"{op} failed: device vanished (injected)",
                                    errnos.ENODEV)
            hit: _Rule | None = None
            for rule in self.rules:
                if rule.kind == "delay":
                    if rule.matches(op, offset, length):
                        pause += rule.seconds
                elif hit is None and rule.matches(op, offset, length):
                    hit = rule
        if pause:
            time.sleep(pause)
        if hit is not None and hit.kind == "error":
            raise DeviceIOError(self.name, offset,
                                f"{op} failed: {_strerror(hit.errno)} (injected)", hit.errno)
        return hit

    def pread(self, length: int, offset: int) -> bytes:
        self._fault("read", offset, length)
        data = self.inner.pread(length, offset)
        return self._flipped(data, offset)

    def _flipped(self, data: bytes, offset: int) -> bytes:
        hits = {o: m for o, m in self._flips.items() if offset <= o < offset + len(data)}
        random_flip = self._flip_rate and data and self._rng.random() < self._flip_rate
        if not hits and not random_flip:
            return data
        buf = bytearray(data)
        for o, mask in hits.items():
            buf[o - offset] ^= mask
        if random_flip:
            i = self._rng.randrange(len(buf) * 8)
            buf[i // 8] ^= 1 << (i % 8)
        return bytes(buf)

    def pwrite(self, data: bytes, offset: int) -> None:
        rule = self._fault("write", offset, len(data))
        if rule is None:
            self.inner.pwrite(data, offset)
        elif rule.kind == "tear":
            keep = min(len(data), rule.keep_sectors * SECTOR)
            if keep:
                self.inner.pwrite(data[:keep], offset)
            if not rule.silent:
                raise DeviceIOError(self.name, offset + keep,
                                    "write failed: torn after"
                                    f" {keep // SECTOR} sectors (injected)", errnos.EIO)

    def flush(self) -> None:
        self._fault("flush", 0, 0)
        self.inner.flush()

    def size(self) -> int:
        if self.vanished:
            raise DeviceIOError(self.name, 0, "device vanished (injected)", errnos.ENODEV)
        return self.inner.size()

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ops(ops: Iterable[str]) -> frozenset[str]:
    out = frozenset(ops)
    if not out <= _OPS:
        raise ValueError(f"unknown operations {sorted(out - _OPS)}")
    return out


def _strerror(code: int) -> str:
    return os.strerror(code)


# ---------------------------------------------------------------------------
# Recording writes and cutting crash images


@dataclass(frozen=True)
class WriteRecord:
    """One write: when (global sequence number), where, what, and what it replaced."""

    seq: int
    offset: int
    data: bytes
    before: bytes


@dataclass(frozen=True)
class FlushRecord:
    """A flush of one device that *returned* at sequence number *seq*."""

    seq: int


@dataclass(frozen=True)
class Cut:
    """Which writes of a device's open (unflushed) epoch survive a crash.

    ``none``: none of them; ``all``: all of them; ``prefix``: the first
    *count*; ``subset``: a random subset drawn with *seed*.  With *torn*
    set, the last surviving write keeps only its first *torn* sectors
    (0 = nothing of it lands) -- a torn write.
    """

    kind: Literal["none", "all", "prefix", "subset"] = "none"
    count: int = 0
    seed: int = 0
    torn: int | None = None

    def select(self, writes: list[WriteRecord]) -> list[tuple[WriteRecord, int]]:
        """The surviving writes, in order, each with how many bytes of it land."""
        if self.kind == "none":
            chosen: list[WriteRecord] = []
        elif self.kind == "all":
            chosen = list(writes)
        elif self.kind == "prefix":
            chosen = writes[:self.count]
        else:
            rng = random.Random(self.seed)
            chosen = [w for w in writes if rng.random() < 0.5]
        out = [(w, len(w.data)) for w in chosen]
        if out and self.torn is not None:
            w, _n = out[-1]
            out[-1] = (w, min(len(w.data), self.torn * SECTOR))
        return out


@dataclass
class _Log:
    events: list[WriteRecord | FlushRecord] = field(default_factory=list)


class Recorder:
    """Records writes and flushes of several devices on one clock (see module docstring).

    Devices are identified by a *key* (by default the device's name, i.e.
    its path), so several opens of the same file share one log.
    """

    def __init__(self) -> None:
        self.clock = 0
        self.logs: dict[str, _Log] = {}
        self.recording = True
        self._lock = threading.Lock()

    def device(self, inner: BlockDevice, key: str | None = None) -> RecordingDevice:
        """Wrap *inner* so that its writes and flushes are recorded."""
        return RecordingDevice(inner, self, key or inner.name)

    def tick(self) -> int:
        with self._lock:
            self.clock += 1
            return self.clock

    def _add(self, key: str, event: WriteRecord | FlushRecord) -> None:
        with self._lock:
            self.logs.setdefault(key, _Log()).events.append(event)

    # -- looking at what was recorded -------------------------------------

    def device_keys(self) -> list[str]:
        return sorted(self.logs)

    def writes(self, key: str | None = None) -> list[tuple[str, WriteRecord]]:
        """Every recorded write (of one device, or of all), in global order."""
        out = [(k, e) for k, log in self.logs.items() if key in (None, k)
               for e in log.events if isinstance(e, WriteRecord)]
        return sorted(out, key=lambda kv: kv[1].seq)

    def epochs(self, key: str) -> list[list[WriteRecord]]:
        """The writes of one device grouped into epochs; the last may be open (unflushed)."""
        out: list[list[WriteRecord]] = [[]]
        for e in self.logs[key].events:
            if isinstance(e, FlushRecord):
                out.append([])
            else:
                out[-1].append(e)
        if not out[-1] and len(out) > 1:
            out.pop()
        return out

    # -- cutting crash images ---------------------------------------------

    def crash_writes(self, at: int, cuts: dict[str, Cut] | Cut) -> dict[str, list[tuple[WriteRecord, int]]]:
        """The writes that survive a crash right after global event *at*, per device."""
        out = {}
        for key, log in self.logs.items():
            cut = cuts.get(key, Cut()) if isinstance(cuts, dict) else cuts
            durable: list[WriteRecord] = []
            open_epoch: list[WriteRecord] = []
            for e in log.events:
                if e.seq > at:
                    break
                if isinstance(e, FlushRecord):
                    durable.extend(open_epoch)
                    open_epoch = []
                else:
                    open_epoch.append(e)
            out[key] = [(w, len(w.data)) for w in durable] + cut.select(open_epoch)
        return out

    def epoch_writes(self, key: str, k: int, cut: Cut) -> list[tuple[WriteRecord, int]]:
        """One device alone: every epoch before *k* whole, plus *cut* of epoch *k*."""
        epochs = self.epochs(key)
        whole = [w for ep in epochs[:k] for w in ep]
        tail = epochs[k] if k < len(epochs) else []
        return [(w, len(w.data)) for w in whole] + cut.select(tail)

    def apply(self, surviving: dict[str, list[tuple[WriteRecord, int]]],
              open_device: Callable[[str], BlockDevice]) -> None:
        """Turn each recorded device into the crash image *surviving* describes.

        *open_device(key)* opens a plain (not recorded) device for the key;
        it is closed afterwards.
        """
        for key, log in self.logs.items():
            dev = open_device(key)
            try:
                writes = [e for e in log.events if isinstance(e, WriteRecord)]
                for w in reversed(writes):
                    dev.pwrite(w.before, w.offset)
                for w, n in surviving.get(key, []):
                    if n:
                        dev.pwrite(w.data[:n], w.offset)
                dev.flush()
            finally:
                dev.close()

    def crash_points(self) -> list[int]:
        """Every global time at which a write was issued (a crash right after it)."""
        return [w.seq for _k, w in self.writes()]


class RecordingDevice:
    """A device whose writes and flushes are logged in a :class:`Recorder`.

    Writes go through to the wrapped device; what each overwrote is read
    first and kept, so the recorder can put the device back.
    """

    def __init__(self, inner: BlockDevice, recorder: Recorder, key: str) -> None:
        self.inner = inner
        self.name = inner.name
        self.recorder = recorder
        self.key = key

    def pread(self, length: int, offset: int) -> bytes:
        return self.inner.pread(length, offset)

    def pwrite(self, data: bytes, offset: int) -> None:
        if not self.recorder.recording:
            self.inner.pwrite(data, offset)
            return
        try:
            before = self.inner.pread(len(data), offset)
        except DeviceIOError:
            before = bytes(len(data))
        self.inner.pwrite(data, offset)
        self.recorder._add(self.key, WriteRecord(self.recorder.tick(), offset, bytes(data),
                                                 before))

    def flush(self) -> None:
        self.inner.flush()
        if self.recorder.recording:
            self.recorder._add(self.key, FlushRecord(self.recorder.tick()))

    def size(self) -> int:
        return self.inner.size()

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
