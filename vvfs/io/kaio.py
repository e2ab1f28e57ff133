"""Linux native AIO for O_DIRECT device calls, without a thread per call.

A worker-thread round trip (``trio.to_thread.run_sync``) costs the node
about 50 us of CPU per device call -- a futex wake-up, two thread renames,
a wake-up of the event loop -- which is more than a 4 KiB O_DIRECT read
takes on an SSD.  The kernel's own asynchronous I/O (``io_submit``, the
``aio=native`` of qemu) does the same with no thread at all: the event loop
submits the call and goes on; the kernel signals the completion through an
``eventfd`` that trio watches, and one wake-up collects every call that has
completed since (so completions are batched under load).

``io_submit`` runs on the event loop thread, so every call is submitted
with ``RWF_NOWAIT``: the kernel refuses (EAGAIN, at submission or as the
call's result) instead of waiting for an inode lock, a block allocation or
a free request slot.  Anything this engine does not complete in full -- a
refusal, a short transfer, an error, no free slot -- is reported to the
caller as "not done" and the caller repeats the call the ordinary way (a
worker thread), which also gives the authoritative error.  Repeating is
safe: a read has no effect and a write writes the same bytes to the same
place.

Each call uses one :class:`_Slot`: an ``iocb`` and a page-aligned buffer
(an anonymous mmap) reused from call to call and grown on demand, so
O_DIRECT alignment holds whatever buffers the caller has and nothing is
allocated per call.  The engine belongs to one ``trio.run`` (a
:class:`trio.lowlevel.RunVar`), created on first use with a system task
that reaps completions; it is torn down when the run ends.

Cancellation: a call cannot be taken back once submitted (the kernel owns
the slot's buffer), so a task waiting in :meth:`Engine.run` is not
cancellable; it raises ``trio.Cancelled`` at its next checkpoint after the
call completed.

x86_64 only (the system call numbers); elsewhere, or when ``io_setup``
fails (``fs.aio-max-nr`` exhausted), :func:`engine` returns None and every
call goes to a worker thread.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import platform
from collections.abc import Sequence

import outcome
import trio

log = logging.getLogger(__name__)

#: x86_64 system call numbers of io_setup, io_destroy, io_getevents, io_submit
_SYSCALLS = {"x86_64": (206, 207, 208, 209)}
IOCB_CMD_PREAD = 0
IOCB_CMD_PWRITE = 1
IOCB_FLAG_RESFD = 1
RWF_NOWAIT = 0x8
#: Calls in flight at once per engine (slots); more go to worker threads.
DEPTH = 64
#: Largest call handled here (a FUSE request is at most 1 MiB).
MAX_CALL = 1 << 20


class _IOCB(ctypes.Structure):
    # struct iocb of <linux/aio_abi.h>, little-endian field order
    _fields_ = [("data", ctypes.c_uint64),     # 0: returned in the event
                ("key", ctypes.c_uint32),      # 8: kernel use
                ("rw_flags", ctypes.c_int32),  # 12: RWF_*
                ("opcode", ctypes.c_uint16),   # 16: IOCB_CMD_*
                ("reqprio", ctypes.c_int16),   # 18
                ("fildes", ctypes.c_uint32),   # 20
                ("buf", ctypes.c_uint64),      # 24
                ("nbytes", ctypes.c_uint64),   # 32
                ("offset", ctypes.c_int64),    # 40
                ("reserved2", ctypes.c_uint64),  # 48
                ("flags", ctypes.c_uint32),    # 56: IOCB_FLAG_*
                ("resfd", ctypes.c_uint32)]    # 60: eventfd for IOCB_FLAG_RESFD


class _Event(ctypes.Structure):
    # struct io_event
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64),
                ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]


assert ctypes.sizeof(_IOCB) == 64 and ctypes.sizeof(_Event) == 32


class _Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class _Slot:
    """One call's iocb and reusable page-aligned buffer."""

    __slots__ = ("anchor", "index", "iocb", "mem", "ptrs", "task", "view")

    def __init__(self, index: int, efd: int) -> None:
        self.index = index
        self.iocb = _IOCB(data=index, flags=IOCB_FLAG_RESFD, resfd=efd, rw_flags=RWF_NOWAIT)
        self.ptrs = (ctypes.c_void_p * 1)(ctypes.addressof(self.iocb))
        self.mem: mmap.mmap | None = None
        self.view = memoryview(b"")
        self.anchor: ctypes.Array[ctypes.c_char] | None = None
        self.task: trio.lowlevel.Task | None = None

    def buffer(self, size: int) -> memoryview:
        """The slot's buffer, at least *size* bytes (page-aligned)."""
        if self.mem is None or len(self.mem) < size:
            self.release()
            self.mem = mmap.mmap(-1, max(size, 64 << 10))
            self.anchor = (ctypes.c_char * len(self.mem)).from_buffer(self.mem)
            self.iocb.buf = ctypes.addressof(self.anchor)
            self.view = memoryview(self.mem)
        return self.view

    def release(self) -> None:
        self.view.release()
        self.anchor = None
        if self.mem is not None:
            self.mem.close()
            self.mem = None


class Engine:
    """One AIO context with an eventfd; see the module docstring."""

    def __init__(self, numbers: tuple[int, int, int, int], depth: int = DEPTH) -> None:
        self._setup, self._destroy, self._getevents, self._submit = numbers
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        ctx = ctypes.c_ulong(0)
        if self._syscall(self._setup, depth, ctypes.byref(ctx)) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"io_setup: {os.strerror(err)}")
        self._ctx = ctx  # a c_ulong: a bare int would go to syscall() as a 32-bit int
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._slots = [_Slot(i, self._efd) for i in range(depth)]
        self._free = list(reversed(self._slots))
        self._events = (_Event * depth)()
        self._zero = _Timespec(0, 0)
        self.submitted = self.completed = self.refused = 0

    async def run(self, fd: int, write: bool, bufs: Sequence[memoryview], offset: int,
                  total: int) -> bool:
        """Transfer *total* bytes between *bufs* and *fd* at *offset*.

        Return True if done in full; False if not done (the caller repeats
        the call in a worker thread).  *offset* and *total* must suit
        O_DIRECT on *fd*.
        """
        if total > MAX_CALL or not self._free:
            return False
        slot = self._free.pop()
        try:
            view = slot.buffer(total)
            if write:
                pos = 0
                for b in bufs:
                    n = len(b)
                    view[pos:pos + n] = b
                    pos += n
            cb = slot.iocb
            cb.opcode = IOCB_CMD_PWRITE if write else IOCB_CMD_PREAD
            cb.fildes = fd
            cb.nbytes = total
            cb.offset = offset
            if self._syscall(self._submit, self._ctx, 1, slot.ptrs) != 1:
                self.refused += 1
                return False
            self.submitted += 1
            slot.task = trio.lowlevel.current_task()
            res = await trio.lowlevel.wait_task_rescheduled(_not_abortable)
            if res != total:
                self.refused += 1
                return False
            if not write:
                pos = 0
                for b in bufs:
                    n = len(b)
                    b[:] = view[pos:pos + n]
                    pos += n
            return True
        finally:
            slot.task = None
            self._free.append(slot)

    async def reap(self) -> None:
        """Wake the tasks whose calls completed (the engine's system task)."""
        events = self._events
        depth = len(self._slots)
        slots = self._slots
        while True:
            await trio.lowlevel.wait_readable(self._efd)
            try:
                os.read(self._efd, 8)
            except BlockingIOError:
                continue
            while True:
                n = self._syscall(self._getevents, self._ctx, 0, depth, events,
                                  ctypes.byref(self._zero))
                for i in range(max(n, 0)):
                    ev = events[i]
                    slot = slots[ev.data]
                    self.completed += 1
                    if slot.task is not None:
                        trio.lowlevel.reschedule(slot.task, outcome.Value(ev.res))
                if n < depth:
                    break

    def close(self) -> None:
        """Destroy the context (waits for calls in flight) and free the buffers."""
        self._syscall(self._destroy, self._ctx)
        os.close(self._efd)
        for slot in self._slots:
            slot.release()

    def statistics(self) -> dict[str, int]:
        return {"submitted": self.submitted, "completed": self.completed,
                "refused": self.refused, "free": len(self._free)}


def _not_abortable(raise_cancel: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


_engine: trio.lowlevel.RunVar[Engine | None] = trio.lowlevel.RunVar("vvfs_kaio")
#: set to False to keep every call on worker threads (tests, comparisons)
enabled = os.environ.get("VVFS_KAIO", "1") != "0"


def engine() -> Engine | None:
    """This trio run's engine, started on first use; None if unavailable."""
    try:
        return _engine.get()
    except LookupError:
        pass
    eng = None
    numbers = _SYSCALLS.get(platform.machine())
    if enabled and numbers is not None:
        try:
            eng = Engine(numbers)
        except OSError as exc:
            log.warning("no kernel AIO (%s); device calls use worker threads", exc)
    _engine.set(eng)
    if eng is not None:
        trio.lowlevel.spawn_system_task(_serve, eng, name="vvfs-kaio-reaper")
    return eng


async def _serve(eng: Engine) -> None:
    try:
        await eng.reap()
    finally:
        eng.close()
