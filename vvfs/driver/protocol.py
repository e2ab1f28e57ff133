"""The FUSE kernel protocol in Python: requests the native threads hand up, answered.

Once the native engine runs, pyfuse3 reads no more requests; a driver
thread that reads one it does not serve in C hands its bytes and the clone
descriptor it came in on to :func:`serve`, which decodes it, calls the
pyfuse3 operations object (:class:`vvfs.node.fs.VolumeFS`, duck-typed: this
module does not import the node) with the arguments pyfuse3 would give, and
writes the reply to that descriptor in one ``writev`` (a reply on another
clone would not find its request).  Layouts: ``<linux/fuse.h>``, protocol
7.38, what libfuse 3.14 negotiates with this kernel (pyfuse3 answered INIT).

=============================  ============================================
opcode                         answered with
=============================  ============================================
LOOKUP                         ops.lookup -> fuse_entry_out
FORGET, BATCH_FORGET           ops.forget; no reply (the protocol has none)
GETATTR                        ops.getattr -> fuse_attr_out
SETATTR                        ops.setattr -> fuse_attr_out
OPEN                           ops.open -> fuse_open_out; ``hooks.opened``
READ                           ops.read -> the bytes
WRITE                          ops.write -> fuse_write_out
FLUSH, FSYNC                   ops.flush, ops.fsync
RELEASE                        ops.release; ``hooks.released``
OPENDIR, RELEASEDIR, FSYNCDIR  ops.opendir -> fuse_open_out; ops.releasedir; 0
READDIRPLUS, READDIR           ops.entries -> fuse_direntplus / fuse_dirent
STATFS                         ops.statfs -> fuse_kstatfs
FALLOCATE                      ops.fallocate
CREATE MKNOD MKDIR UNLINK
RMDIR RENAME RENAME2 LINK
SYMLINK READLINK               the ops method, which refuses them
INTERRUPT                      nothing: the request it names is still
                               answered when it completes
INIT                           EIO (pyfuse3 answered it; a second is a bug)
anything else                  ENOSYS (the kernel stops sending most of them)
=============================  ============================================

A pyfuse3.FUSEError is answered with its errno; any other exception is
answered with EIO first -- the kernel is never left waiting -- and then
raised, as pyfuse3.main does.  A request too short for its header raises
:class:`vvfs.errors.DriverProtocolError` (there is nothing to answer to).
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import pyfuse3

from vvfs.errors import DriverProtocolError

log = logging.getLogger(__name__)

IN_HEADER = struct.Struct("<IIQQIIIHH")  # fuse_in_header
OUT_HEADER = struct.Struct("<IiQ")  # fuse_out_header
ATTR = struct.Struct("<6Q10I")  # fuse_attr
ENTRY_OUT = struct.Struct("<4Q2I")  # fuse_entry_out, before its fuse_attr
ATTR_OUT = struct.Struct("<QII")  # fuse_attr_out, before its fuse_attr
GETATTR_IN = struct.Struct("<IIQ")
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
OPEN_IN = struct.Struct("<II")
OPEN_OUT = struct.Struct("<QII")
READ_IN = struct.Struct("<QQIIQII")  # fuse_read_in, and fuse_write_in
WRITE_OUT = struct.Struct("<II")
RELEASE_IN = struct.Struct("<QIIQ")
FLUSH_IN = struct.Struct("<QIIQ")
FSYNC_IN = struct.Struct("<QII")
FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
KSTATFS = struct.Struct("<5Q4I6I")
FALLOCATE_IN = struct.Struct("<QQQII")
DIRENT = struct.Struct("<QQII")

(LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK) = (1, 2, 3, 4, 5, 6)
(MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE, STATFS, RELEASE) = range(8, 19)
FSYNC, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR, FSYNCDIR = 20, 25, 26, 27, 28, 29, 30
CREATE, INTERRUPT, BATCH_FORGET, FALLOCATE, READDIRPLUS, RENAME2 = 35, 36, 42, 43, 44, 45
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE, FATTR_ATIME, FATTR_MTIME = 1, 2, 4, 8, 16, 32
FATTR_FH, FATTR_CTIME = 64, 1024
FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE = 1, 2
FUSE_GETATTR_FH = 1


class Hooks(Protocol):
    """What the engine learns from the requests served here."""

    def opened(self, fh: int) -> None: ...

    def released(self, fh: int) -> None: ...


class NoHooks:
    """:class:`Hooks` that do nothing (tests)."""

    def opened(self, fh: int) -> None:
        pass

    def released(self, fh: int) -> None:
        pass


class Context:
    """The caller of a request, with what pyfuse3.RequestContext has."""

    __slots__ = ("gid", "pid", "uid", "umask")

    def __init__(self, uid: int, gid: int, pid: int) -> None:
        self.uid, self.gid, self.pid, self.umask = uid, gid, pid, 0


class SetattrFields:
    """Which attributes a SETATTR changes, named as pyfuse3.SetattrFields names them."""

    def __init__(self, valid: int) -> None:
        self.update_mode = bool(valid & FATTR_MODE)
        self.update_uid = bool(valid & FATTR_UID)
        self.update_gid = bool(valid & FATTR_GID)
        self.update_size = bool(valid & FATTR_SIZE)
        self.update_atime = bool(valid & FATTR_ATIME)
        self.update_mtime = bool(valid & FATTR_MTIME)
        self.update_ctime = bool(valid & FATTR_CTIME)


class Request:
    """One decoded request header and its body."""

    __slots__ = ("body", "ctx", "fd", "nodeid", "opcode", "unique")

    def __init__(self, fd: int, raw: bytes | memoryview) -> None:
        if len(raw) < IN_HEADER.size:
            raise DriverProtocolError(f"FUSE request of {len(raw)} bytes on descriptor {fd}:"
                                      f" shorter than its header")
        (length, self.opcode, self.unique, self.nodeid, uid, gid, pid,
         _ext, _pad) = IN_HEADER.unpack_from(raw)
        self.fd = fd
        self.ctx = Context(uid, gid, pid)
        self.body = memoryview(raw)[IN_HEADER.size:length]
        if length != len(raw):
            raise _Malformed(f"says {length} bytes, has {len(raw)}")

    def take(self, layout: struct.Struct) -> tuple[Any, ...]:
        if len(self.body) < layout.size:
            raise _Malformed(f"opcode {self.opcode}: body of {len(self.body)} bytes")
        return layout.unpack_from(self.body)

    def name(self, skip: int = 0) -> bytes:
        raw = bytes(self.body[skip:])
        end = raw.find(b"\0")
        if end < 0:
            raise _Malformed(f"opcode {self.opcode}: name without its NUL")
        return raw[:end]


class _Malformed(Exception):
    """A request whose header can be read but whose body cannot: answered with EIO."""


def reply(req: Request, error: int = 0, *parts: bytes) -> None:
    """Write the reply to *req* on its descriptor, in one call (error: an errno, 0 for none)."""
    body = b"".join(parts) if not error else b""
    os.writev(req.fd, [OUT_HEADER.pack(OUT_HEADER.size + len(body), -error, req.unique), body])


def attr_bytes(a: Any) -> bytes:
    """A fuse_attr from pyfuse3.EntryAttributes."""
    def sec(ns: int) -> tuple[int, int]:
        return ns // 1_000_000_000, ns % 1_000_000_000

    (at, atn), (mt, mtn), (ct, ctn) = sec(a.st_atime_ns), sec(a.st_mtime_ns), sec(a.st_ctime_ns)
    return ATTR.pack(a.st_ino, a.st_size, a.st_blocks, at, mt, ct, atn, mtn, ctn, a.st_mode,
                     a.st_nlink, a.st_uid, a.st_gid, a.st_rdev, a.st_blksize, 0)


def _valid(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)


def entry_bytes(a: Any) -> bytes:
    ev, evn = _valid(a.entry_timeout)
    av, avn = _valid(a.attr_timeout)
    return ENTRY_OUT.pack(a.st_ino, a.generation, ev, av, evn, avn) + attr_bytes(a)


def attr_out_bytes(a: Any) -> bytes:
    av, avn = _valid(a.attr_timeout)
    return ATTR_OUT.pack(av, avn, 0) + attr_bytes(a)


# -- the handlers: each answers one opcode ------------------------------------

Handler = Callable[[Any, Request, Hooks], Awaitable[None]]


async def _lookup(ops: Any, req: Request, hooks: Hooks) -> None:
    reply(req, 0, entry_bytes(await ops.lookup(req.nodeid, req.name(), req.ctx)))


async def _forget(ops: Any, req: Request, hooks: Hooks) -> None:
    await ops.forget([(req.nodeid, req.take(FORGET_IN)[0])])


async def _batch_forget(ops: Any, req: Request, hooks: Hooks) -> None:
    count = req.take(BATCH_FORGET_IN)[0]
    start, todo = BATCH_FORGET_IN.size, []
    for i in range(count):
        at = start + i * FORGET_ONE.size
        if at + FORGET_ONE.size > len(req.body):
            raise _Malformed(f"batch forget of {count} entries in {len(req.body)} bytes")
        todo.append(FORGET_ONE.unpack_from(req.body, at))
    await ops.forget(todo)


async def _getattr(ops: Any, req: Request, hooks: Hooks) -> None:
    reply(req, 0, attr_out_bytes(await ops.getattr(req.nodeid, req.ctx)))


async def _setattr(ops: Any, req: Request, hooks: Hooks) -> None:
    (valid, _p, fh, size, _lo, atime, mtime, ctime, atn, mtn, ctn, mode, _u4, uid, gid,
     _u5) = req.take(SETATTR_IN)
    attr = pyfuse3.EntryAttributes()
    attr.st_mode, attr.st_uid, attr.st_gid, attr.st_size = mode, uid, gid, size
    attr.st_atime_ns = atime * 1_000_000_000 + atn
    attr.st_mtime_ns = mtime * 1_000_000_000 + mtn
    attr.st_ctime_ns = ctime * 1_000_000_000 + ctn
    got = await ops.setattr(req.nodeid, attr, SetattrFields(valid),
                            fh if valid & FATTR_FH else None, req.ctx)
    reply(req, 0, attr_out_bytes(got))


async def _open(ops: Any, req: Request, hooks: Hooks) -> None:
    info = await ops.open(req.nodeid, req.take(OPEN_IN)[0], req.ctx)
    flags = (FOPEN_DIRECT_IO if info.direct_io else 0) | (FOPEN_KEEP_CACHE if info.keep_cache
                                                           else 0)
    hooks.opened(info.fh)  # before the reply: the first READ may come at once
    reply(req, 0, OPEN_OUT.pack(info.fh, flags, 0))


async def _read(ops: Any, req: Request, hooks: Hooks) -> None:
    fh, offset, size, *_ = req.take(READ_IN)
    reply(req, 0, bytes(await ops.read(fh, offset, size)))


async def _write(ops: Any, req: Request, hooks: Hooks) -> None:
    fh, offset, size, *_ = req.take(READ_IN)
    data = req.body[READ_IN.size:READ_IN.size + size]
    if len(data) != size:
        raise _Malformed(f"write of {size} bytes carries {len(data)}")
    reply(req, 0, WRITE_OUT.pack(await ops.write(fh, offset, bytes(data)), 0))


async def _flush(ops: Any, req: Request, hooks: Hooks) -> None:
    await ops.flush(req.take(FLUSH_IN)[0])
    reply(req)


async def _fsync(ops: Any, req: Request, hooks: Hooks) -> None:
    fh, flags, _ = req.take(FSYNC_IN)
    await ops.fsync(fh, bool(flags & 1))
    reply(req)


async def _release(ops: Any, req: Request, hooks: Hooks) -> None:
    fh = req.take(RELEASE_IN)[0]
    await ops.release(fh)
    hooks.released(fh)
    reply(req)


async def _opendir(ops: Any, req: Request, hooks: Hooks) -> None:
    reply(req, 0, OPEN_OUT.pack(await ops.opendir(req.nodeid, req.ctx), 0, 0))


async def _releasedir(ops: Any, req: Request, hooks: Hooks) -> None:
    await ops.releasedir(req.take(RELEASE_IN)[0])
    reply(req)


async def _ok(ops: Any, req: Request, hooks: Hooks) -> None:
    reply(req)


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 8)


async def _readdir(ops: Any, req: Request, hooks: Hooks, plus: bool = False) -> None:
    fh, offset, size, *_ = req.take(READ_IN)
    out, used = [], 0
    for name, attr, next_id in ops.entries(fh, offset):
        dirent = DIRENT.pack(attr.st_ino, next_id, len(name), (attr.st_mode >> 12) & 0o17)
        one = _pad((entry_bytes(attr) if plus else b"") + dirent + name)
        if used + len(one) > size:
            break
        out.append(one)
        used += len(one)
    reply(req, 0, *out)


async def _readdirplus(ops: Any, req: Request, hooks: Hooks) -> None:
    await _readdir(ops, req, hooks, plus=True)


async def _statfs(ops: Any, req: Request, hooks: Hooks) -> None:
    s = await ops.statfs(req.ctx)
    reply(req, 0, KSTATFS.pack(s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree,
                               s.f_bsize, s.f_namemax, s.f_frsize, 0, 0, 0, 0, 0, 0, 0))


async def _fallocate(ops: Any, req: Request, hooks: Hooks) -> None:
    fh, offset, length, mode, _ = req.take(FALLOCATE_IN)
    await ops.fallocate(fh, mode, offset, length)
    reply(req)


async def _refused(ops: Any, req: Request, hooks: Hooks) -> None:
    method = getattr(ops, _REFUSED[req.opcode], None)
    if method is None:
        raise pyfuse3.FUSEError(errno.ENOSYS)
    await method()  # VolumeFS refuses every change of the namespace
    raise pyfuse3.FUSEError(errno.EPERM)


async def _interrupt(ops: Any, req: Request, hooks: Hooks) -> None:
    pass  # the interrupted request runs to its end and is answered then


async def _init(ops: Any, req: Request, hooks: Hooks) -> None:
    log.error("FUSE INIT on a driver thread: the session was initialized already")
    raise pyfuse3.FUSEError(errno.EIO)


_REFUSED = {CREATE: "create", MKNOD: "mknod", MKDIR: "mkdir", UNLINK: "unlink",
            RMDIR: "rmdir", RENAME: "rename", RENAME2: "rename", LINK: "link",
            SYMLINK: "symlink", READLINK: "readlink"}

HANDLERS: dict[int, Handler] = {
    LOOKUP: _lookup, FORGET: _forget, BATCH_FORGET: _batch_forget, GETATTR: _getattr,
    SETATTR: _setattr, OPEN: _open, READ: _read, WRITE: _write, FLUSH: _flush,
    FSYNC: _fsync, RELEASE: _release, OPENDIR: _opendir, READDIR: _readdir,
    READDIRPLUS: _readdirplus, RELEASEDIR: _releasedir, FSYNCDIR: _ok, STATFS: _statfs,
    FALLOCATE: _fallocate, INTERRUPT: _interrupt, INIT: _init,
    **{op: _refused for op in _REFUSED},
}
#: opcodes that have no reply
SILENT = frozenset({FORGET, BATCH_FORGET, INTERRUPT})


async def serve(ops: Any, fd: int, raw: bytes | memoryview, hooks: Hooks) -> None:
    """Answer one raw request read from descriptor *fd* (the module docstring)."""
    req = Request.__new__(Request)
    try:
        req.__init__(fd, raw)  # type: ignore[misc]
        handler = HANDLERS.get(req.opcode)
        if handler is None:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        await handler(ops, req, hooks)
    except pyfuse3.FUSEError as exc:
        if req.opcode not in SILENT:
            reply(req, exc.errno)
    except _Malformed as exc:
        log.error("malformed FUSE request %d on descriptor %d: %s", req.unique, fd, exc)
        if req.opcode not in SILENT:
            reply(req, errno.EIO)
    except DriverProtocolError:
        raise
    except BaseException:
        if getattr(req, "opcode", None) not in SILENT and hasattr(req, "unique"):
            reply(req, errno.EIO)
        raise
