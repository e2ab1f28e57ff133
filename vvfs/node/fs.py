"""The FUSE file system of a node: ``MNT/POOL/VOLUME``.

The root directory holds one directory per pool; a pool directory holds one
regular file per volume presented to this host (the rule is level 1 of
resolution, :mod:`mapper.namespace`: a volume with an empty host list is
presented to every host).  A volume file has the volume's size, owner, group
and mode and one link; it cannot be created, removed, renamed or truncated
through the mount -- that is what ``vv`` is for.  Root may chown and chmod
it: the node commits the new owner, group or mode to the pool's
configuration (``vv volume set``, through :attr:`VolumeFS.change_attributes`)
before it answers.  An owner, group or mode read from media that is not
valid is shown as root-owned 0600 and logged (:func:`mapper.namespace.attributes`).
fallocate PUNCH_HOLE and ZERO_RANGE zero a range of it (so a loop device over it
passes discard and write-zeroes on); the handler needs a pyfuse3 that has it (the
Makefile builds pyfuse3 with ``tools/patches/pyfuse3.patch``), and
:func:`check_fallocate` says at mount time when the installed one has not.

Handlers are thin: they log at debug level, translate arguments, delegate to
:mod:`vvfs.data.volio` and turn domain errors into ``FUSEError`` (only here).
Anything unexpected propagates, and pyfuse3 ends the main loop with it.

Inode numbers are given out once per pool or volume uuid and never reused
while mounted, so a renamed volume keeps its inode and a removed one's
number is never seen again.

Live changes (see :meth:`VolumeFS.apply_pool`) update the namespace between
two awaits, then tell the kernel: an entry that went away or was renamed is
invalidated, a resized or re-owned volume's attributes are invalidated.
The notifications run in worker threads because the kernel may make them
wait for a request that the event loop must still answer.

Fences: while the node carries out a management call that asked which
volumes are open (removal, shrinking), :meth:`VolumeFS.fence` holds back new
opens of that pool's volumes, so that a volume cannot be opened between the
check and the commit; :meth:`VolumeFS.unfence_all` lets them through.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import cast

import pyfuse3
import trio
from pyfuse3 import FUSEError

from mapper import namespace
from metadata.blockdev import DeviceIOError
from metadata.errors import ConfigError, VVError
from metadata.model import PoolUUID, Volume, VolumeUUID
from vvfs.data.volio import PoolChange, PoolIO, VolumeIO
from vvfs.errors import NoSpaceError

log = logging.getLogger(__name__)

InodeT = pyfuse3.InodeT
ROOT = pyfuse3.ROOT_INODE
#: Seconds the kernel may cache entries and attributes; changes made through
#: vv are pushed by invalidation, so this only bounds a lost notification.
CACHE_TIMEOUT = 10.0
BLOCK = 4096
DIR_MODE = stat.S_IFDIR | 0o755
#: ``change_attributes(POOL/VOL, owner, group, mode)``: commit new values
#: (``None``: unchanged) and make them live before returning; raises VVError.
ChangeAttributes = Callable[[str, int | None, int | None, int | None], Awaitable[None]]
# <linux/falloc.h>
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


class VolumeFS(pyfuse3.Operations):
    """pyfuse3 operations serving the volumes of the node's pools."""

    enable_writeback_cache = False
    supports_dot_lookup = False

    def __init__(self, *, host_ids: Iterable[str] = (), readonly: bool = False) -> None:
        super().__init__()
        self.host_ids = frozenset(host_ids)
        self.readonly = readonly
        #: set by the node once pyfuse3 has mounted us (kernel notifications allowed)
        self.mounted = False
        self.pools: dict[PoolUUID, PoolIO] = {}
        self._inode_of: dict[str, InodeT] = {}
        #: inode -> (pool uuid, volume uuid or None for the pool's directory)
        self._nodes: dict[InodeT, tuple[PoolUUID, VolumeUUID | None]] = {}
        self._next_inode = ROOT + 1
        self._handles: dict[int, VolumeIO] = {}
        self._next_fh = 1
        self._fences: dict[PoolUUID, trio.Event] = {}
        self._started = time.time_ns()
        self._initialized = trio.Event()
        #: called once INIT is answered (the node's native engine stops pyfuse3 there)
        self.on_init: Callable[[], None] | None = None
        #: set by the node: how root's chown and chmod are committed (None: refused)
        self.change_attributes: ChangeAttributes | None = None
        #: (volume uuid, attributes) already logged as not valid on media
        self._warned: set[tuple[str, tuple[str, ...]]] = set()

    # ------------------------------------------------------------------
    # session

    def init(self) -> None:
        """The kernel's INIT has been answered: the mount is usable."""
        log.debug("FUSE session initialized")
        check_fallocate()
        self._initialized.set()
        if self.on_init is not None:  # the native engine: pyfuse3 stops reading here
            self.on_init()

    def volume_of(self, fh: int) -> VolumeIO:
        """The volume open as file handle *fh* (for the native driver's tables)."""
        return self._handles[fh]

    @property
    def initialized(self) -> bool:
        return self._initialized.is_set()

    async def wait_initialized(self) -> None:
        """Return once the kernel has completed the FUSE handshake."""
        await self._initialized.wait()

    # ------------------------------------------------------------------
    # namespace

    def _inode(self, uuid: str, what: tuple[PoolUUID, VolumeUUID | None]) -> InodeT:
        ino = self._inode_of.get(uuid)
        if ino is None:
            ino = cast(InodeT, self._next_inode)
            self._next_inode += 1
            self._inode_of[uuid] = ino
        self._nodes[ino] = what
        return ino

    def _forget_inode(self, uuid: str) -> InodeT | None:
        ino = self._inode_of.get(uuid)
        if ino is not None:
            self._nodes.pop(ino, None)
        return ino

    def visible(self, volume: Volume) -> bool:
        """Is *volume* presented to this host? (:func:`mapper.namespace.visible`)"""
        return namespace.visible(volume, self.host_ids)

    def _resolve(self, inode: InodeT) -> tuple[PoolIO | None, VolumeIO | None]:
        """(pool, volume) of *inode*: (None, None) for the root; ENOENT if gone."""
        if inode == ROOT:
            return None, None
        what = self._nodes.get(inode)
        pio = self.pools.get(what[0]) if what else None
        if what is None or pio is None:
            raise FUSEError(errno.ENOENT)
        if what[1] is None:
            return pio, None
        vio = pio.volumes.get(what[1])
        if vio is None or not self.visible(vio.volume):
            raise FUSEError(errno.ENOENT)
        return pio, vio

    def _volume(self, inode: InodeT) -> VolumeIO:
        _, vio = self._resolve(inode)
        if vio is None:
            raise FUSEError(errno.EISDIR)
        return vio

    def _entry(self, inode: InodeT) -> pyfuse3.EntryAttributes:
        pio, vio = self._resolve(inode)
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode
        e.entry_timeout = e.attr_timeout = CACHE_TIMEOUT
        e.st_blksize = BLOCK
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = self._started
        if vio is not None:
            v = vio.volume
            attrs = self._attributes(vio)
            e.st_mode = stat.S_IFREG | attrs.mode
            e.st_nlink = 1
            e.st_uid, e.st_gid = attrs.owner, attrs.group
            e.st_size = vio.size
            e.st_blocks = (vio.size + 511) // 512
            e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = int(v.created * 1e9)
        else:
            e.st_mode = DIR_MODE
            e.st_nlink = 2 + (len(self.pools) if pio is None else 0)
            e.st_uid = e.st_gid = 0
        return e

    def _attributes(self, vio: VolumeIO) -> namespace.Attributes:
        """The volume's owner, group and mode, made safe; what is not valid is logged once."""
        attrs = namespace.attributes(vio.volume)
        if attrs.bad and (vio.uuid, attrs.bad) not in self._warned:
            self._warned.add((vio.uuid, attrs.bad))
            v = vio.volume
            log.error("volume %s: %s not valid in the configuration (owner %r, group %r,"
                      " mode %r); shown as root-owned %04o until 'vv volume set' fixes it",
                      v.name, ", ".join(attrs.bad), v.owner, v.group, v.mode, attrs.mode)
        return attrs

    def _children(self, inode: InodeT) -> list[tuple[InodeT, str]]:
        pio, vio = self._resolve(inode)
        if vio is not None:
            raise FUSEError(errno.ENOTDIR)
        if pio is None:
            out = [(self._inode(p.uuid, (p.uuid, None)), p.name) for p in self.pools.values()]
        else:
            out = [(self._inode(v.uuid, (pio.uuid, v.uuid)), v.name)
                   for v in namespace.visible_volumes(pio.pool, self.host_ids)]
        return sorted(out)

    # ------------------------------------------------------------------
    # handlers: names and attributes

    async def lookup(self, parent_inode: InodeT, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        log.debug("lookup %d %r", parent_inode, name)
        key = name.decode(errors="replace")
        pio, vio = self._resolve(parent_inode)
        if vio is not None:
            raise FUSEError(errno.ENOTDIR)
        if pio is None:
            for p in self.pools.values():
                if p.name == key:
                    return self._entry(self._inode(p.uuid, (p.uuid, None)))
            raise FUSEError(errno.ENOENT)
        child = pio.by_name.get(key)
        if child is None or not self.visible(child.volume):
            raise FUSEError(errno.ENOENT)
        return self._entry(self._inode(child.uuid, (pio.uuid, child.uuid)))

    async def getattr(self, inode: InodeT,
                      ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        log.debug("getattr %d", inode)
        return self._entry(inode)

    async def setattr(self, inode: InodeT, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """Times are ignored; root's chown and chmod are committed; a size change is EPERM.

        Volumes are resized with ``vv volume resize``.  chown and chmod by
        anyone but root are EPERM, on a read-only mount EROFS; a value the
        pool refuses is EINVAL, a commit that fails EIO (logged).
        """
        log.debug("setattr %d", inode)
        cur = self._entry(inode)
        if fields.update_size and attr.st_size != cur.st_size:
            log.info("refused truncate of inode %d to %d bytes: use 'vv volume resize'",
                     inode, attr.st_size)
            raise FUSEError(errno.EPERM)
        owner = attr.st_uid if fields.update_uid and attr.st_uid != cur.st_uid else None
        group = attr.st_gid if fields.update_gid and attr.st_gid != cur.st_gid else None
        mode = stat.S_IMODE(attr.st_mode) if (
            fields.update_mode and stat.S_IMODE(attr.st_mode) != stat.S_IMODE(cur.st_mode)
        ) else None
        if (owner, group, mode) == (None, None, None):
            return cur
        await self._change_attributes(inode, ctx, owner, group, mode)
        return self._entry(inode)

    async def _change_attributes(self, inode: InodeT, ctx: pyfuse3.RequestContext,
                                 owner: int | None, group: int | None, mode: int | None) -> None:
        pio, vio = self._resolve(inode)
        if pio is None or vio is None:
            raise FUSEError(errno.EPERM)  # the root and pool directories are fixed
        if ctx.uid != 0 or self.change_attributes is None:
            raise FUSEError(errno.EPERM)
        if self.readonly:
            raise FUSEError(errno.EROFS)
        path = f"{pio.name}/{vio.name}"
        log.info("chown/chmod of %s by root: owner %s, group %s, mode %s", path, owner, group,
                 None if mode is None else f"{mode:04o}")
        try:
            await self.change_attributes(path, owner, group, mode)
        except ConfigError as exc:  # PlacementError: a value the pool refuses
            log.error("chown/chmod of %s refused: %s", path, exc)
            raise FUSEError(errno.EINVAL) from None
        except VVError as exc:
            log.error("chown/chmod of %s failed: %s", path, exc)
            raise FUSEError(errno.EIO) from None

    async def forget(self, inode_list: Sequence[tuple[InodeT, int]]) -> None:
        pass  # inode numbers live as long as the mount

    # ------------------------------------------------------------------
    # handlers: directories

    async def opendir(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> int:
        log.debug("opendir %d", inode)
        self._children(inode)  # ENOENT / ENOTDIR
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        log.debug("readdir %d from %d", fh, start_id)
        for name, attr, next_id in self.entries(fh, start_id):
            if not pyfuse3.readdir_reply(token, name, attr, next_id):
                break

    def entries(self, fh: int, start_id: int) -> list[tuple[bytes, pyfuse3.EntryAttributes, int]]:
        """A directory's entries after *start_id*: (name, attributes, id to resume after).

        What :meth:`readdir` replies, for the native driver's protocol too
        (:mod:`vvfs.driver.protocol`).  Ids are inode numbers, in order.
        """
        return [(name.encode(), self._entry(ino), ino)
                for ino, name in self._children(cast(InodeT, fh)) if ino > start_id]

    async def releasedir(self, fh: int) -> None:
        pass

    # ------------------------------------------------------------------
    # handlers: volume files

    async def open(self, inode: InodeT, flags: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """Open a volume; O_DIRECT bypasses the kernel's page cache.

        O_TRUNC is ignored, as a block device ignores it (``cp`` or ``dd``
        without ``conv=notrunc`` onto a volume work); ``truncate`` is refused.
        """
        log.debug("open %d flags %#o pid %d", inode, flags, ctx.pid)
        vio = self._volume(inode)
        while (fence := self._fences.get(vio.pool_uuid)) is not None:
            await fence.wait()
        vio = self._volume(inode)  # it may have gone while we waited
        if self.readonly and flags & os.O_ACCMODE != os.O_RDONLY:
            raise FUSEError(errno.EROFS)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = vio
        vio.handles[fh] = ctx.pid
        return pyfuse3.FileInfo(fh=fh, direct_io=bool(flags & os.O_DIRECT), keep_cache=False)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        log.debug("read fh %d %d+%d", fh, off, size)
        with _READ_ERRORS:
            # a bytearray serves as well as bytes (pyfuse3 takes any buffer)
            return await self._handles[fh].read(off, size)  # type: ignore[return-value]

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        log.debug("write fh %d %d+%d", fh, off, len(buf))
        if self.readonly:
            raise FUSEError(errno.EROFS)
        with _WRITE_ERRORS:  # guard or plain: VolumeIO.write decides
            return await self._handles[fh].write(off, buf)

    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2) of a volume file: zero a range, or allocate (a no-op).

        ``PUNCH_HOLE|KEEP_SIZE`` (a loop device's discard) and ``ZERO_RANGE``
        (its write-zeroes) zero the range on every layout
        (:meth:`VolumeIO.zero`; ZERO_RANGE keeps the backing allocation).
        Mode 0 allocates: a volume is always allocated, so only the size is
        checked.  A volume's size changes only through ``vv volume resize``,
        so a range past the end without KEEP_SIZE is EFBIG; other modes
        (COLLAPSE_RANGE, INSERT_RANGE, UNSHARE_RANGE) are EOPNOTSUPP.
        """
        log.debug("fallocate fh %d mode %#x %d+%d", fh, mode, offset, length)
        if self.readonly:
            raise FUSEError(errno.EROFS)
        vio = self._handles[fh]
        keep = bool(mode & FALLOC_FL_KEEP_SIZE)
        op = mode & ~FALLOC_FL_KEEP_SIZE
        if op not in (0, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE) or (
                op == FALLOC_FL_PUNCH_HOLE and not keep):
            raise FUSEError(errno.EOPNOTSUPP)
        if offset < 0 or length <= 0:
            raise FUSEError(errno.EINVAL)
        if not keep and offset + length > vio.size:
            raise FUSEError(errno.EFBIG)
        if op == 0:
            return
        with _ZERO_ERRORS:
            await vio.zero(offset, length, keep_allocation=op == FALLOC_FL_ZERO_RANGE)

    async def flush(self, fh: int) -> None:
        log.debug("flush fh %d", fh)  # close(): writes are already on the devices

    async def fsync(self, fh: int, datasync: bool) -> None:
        log.debug("fsync fh %d datasync %s", fh, datasync)
        with _FSYNC_ERRORS:
            await self._handles[fh].flush()

    async def release(self, fh: int) -> None:
        log.debug("release fh %d", fh)
        vio = self._handles.pop(fh)
        vio.handles.pop(fh, None)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        total = free = files = 0
        for pio in self.pools.values():
            pool_total, pool_free = pio.capacity()
            total += pool_total
            free += pool_free
            files += len(pio.pool.volumes)
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK
        s.f_blocks = total // BLOCK
        s.f_bfree = s.f_bavail = free // BLOCK
        s.f_files, s.f_ffree, s.f_favail = files, 0, 0
        s.f_namemax = 64
        return s

    # Namespace changes go through vv, never through the mount.
    async def create(self, *args: object) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise FUSEError(errno.EPERM)

    async def mknod(self, *args: object) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.EPERM)

    async def mkdir(self, *args: object) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.EPERM)

    async def unlink(self, *args: object) -> None:
        raise FUSEError(errno.EPERM)

    async def rmdir(self, *args: object) -> None:
        raise FUSEError(errno.EPERM)

    async def rename(self, *args: object) -> None:
        raise FUSEError(errno.EPERM)

    async def link(self, *args: object) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.EPERM)

    async def symlink(self, *args: object) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.EPERM)

    # ------------------------------------------------------------------
    # live configuration (called by the node on the trio thread)

    def open_volumes(self, pool_uuid: str) -> set[str]:
        """Names of the pool's volumes with open file handles."""
        pio = self.pools.get(PoolUUID(pool_uuid))
        return pio.open_names() if pio else set()

    def fence(self, pool_uuid: str) -> set[str]:
        """Hold back opens in the pool until :meth:`unfence_all`; return open volumes."""
        self._fences.setdefault(PoolUUID(pool_uuid), trio.Event())
        return self.open_volumes(pool_uuid)

    def unfence_all(self) -> None:
        for ev in self._fences.values():
            ev.set()
        self._fences.clear()

    def add_pool(self, pio: PoolIO) -> None:
        """Show pool *pio* and its volumes."""
        log.info("pool %s appears", pio.name)
        self.pools[pio.uuid] = pio
        self._inode(pio.uuid, (pio.uuid, None))
        for vio in pio.volumes.values():
            self._inode(vio.uuid, (pio.uuid, vio.uuid))

    async def remove_pool(self, pool_uuid: str) -> PoolIO | None:
        """Stop showing a pool (it was exported or destroyed); return it."""
        pio = self.pools.pop(PoolUUID(pool_uuid), None)
        if pio is None:
            return None
        log.info("pool %s disappears", pio.name)
        for vio in pio.volumes.values():
            self._forget_inode(vio.uuid)
        ino = self._forget_inode(pio.uuid)
        await self._invalidate_entry(ROOT, pio.name, ino)
        return pio

    async def apply_pool(self, pio: PoolIO, change: PoolChange) -> None:
        """Show what *change* (from ``PoolIO.apply``) did to pool *pio*."""
        if change.renamed_from is not None:
            await self._invalidate_entry(ROOT, change.renamed_from, None)
        for vio in change.removed:
            await self.remove_volume(pio, vio)
        for vio in change.added:
            await self.add_volume(pio, vio)
        for old, vio in change.changed:
            await self.update_volume(old, vio)

    async def add_volume(self, pio: PoolIO, vio: VolumeIO) -> None:
        log.info("volume %s/%s appears", pio.name, vio.name)
        self._inode(vio.uuid, (pio.uuid, vio.uuid))
        await self._invalidate_entry(self._inode_of[pio.uuid], vio.name, None)

    async def remove_volume(self, pio: PoolIO, vio: VolumeIO) -> None:
        log.info("volume %s/%s disappears", pio.name, vio.name)
        ino = self._forget_inode(vio.uuid)
        await self._invalidate_entry(self._inode_of[pio.uuid], vio.name, ino)

    async def update_volume(self, old: Volume, vio: VolumeIO) -> None:
        """Tell the kernel that a volume was renamed, resized, re-owned or re-presented."""
        new = vio.volume
        log.info("volume %s changes: %s", old.name, _describe(old, new))
        parent = self._inode_of[vio.pool_uuid]
        if old.name != new.name or self.visible(old) != self.visible(new):
            await self._invalidate_entry(parent, old.name, None)
            await self._invalidate_entry(parent, new.name, None)
        ino = self._inode_of.get(vio.uuid)
        if ino is not None:
            await self._invalidate_inode(ino, attr_only=new.size >= old.size)

    async def _invalidate_entry(self, parent: InodeT, name: str, ino: InodeT | None) -> None:
        if not self.mounted:
            return
        await trio.to_thread.run_sync(_notify_entry, parent, name.encode(), ino or 0)

    async def _invalidate_inode(self, ino: InodeT, attr_only: bool) -> None:
        if not self.mounted:
            return
        await trio.to_thread.run_sync(_notify_inode, ino, attr_only)

    def statistics(self) -> dict[str, object]:
        return {"pools": len(self.pools), "handles": len(self._handles),
                "inodes": len(self._nodes)}


def _notify_entry(parent: InodeT, name: bytes, deleted: int) -> None:
    try:
        pyfuse3.invalidate_entry(parent, name, deleted)
    except OSError as exc:
        if exc.errno != errno.ENOENT:  # the kernel did not know the entry: nothing to do
            log.warning("cannot invalidate entry %r: %s", name, exc)


def _notify_inode(ino: InodeT, attr_only: bool) -> None:
    try:
        pyfuse3.invalidate_inode(ino, attr_only)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("cannot invalidate inode %d: %s", ino, exc)


def _describe(old: Volume, new: Volume) -> str:
    parts = []
    for attr in ("name", "size", "owner", "group", "mode", "hosts"):
        a, b = getattr(old, attr), getattr(new, attr)
        if a != b:
            parts.append(f"{attr} {a} -> {b}")
    return ", ".join(parts) or "nothing visible"


def check_fallocate() -> bool:
    """Can this pyfuse3 pass fallocate on to :meth:`VolumeFS.fallocate`? Warn once if not.

    Released pyfuse3 (3.5.0) has no fallocate handler: libfuse answers
    ENOSYS, the kernel stops asking, and a loop device over a volume file
    can neither discard nor write zeroes (the kernel logs "operation not
    supported" and writes zeros itself).  ``make`` builds pyfuse3 with
    ``tools/patches/pyfuse3.patch``, which adds it.
    """
    if hasattr(pyfuse3.Operations, "fallocate"):
        return True
    log.warning("pyfuse3 %s has no fallocate handler: fallocate, discard and write-zeroes"
                " of volume files will fail (build pyfuse3 with"
                " tools/patches/pyfuse3.patch: make venv)", pyfuse3.__version__)
    return False


class _Translate:
    """Turn volume I/O errors into FUSEError (the only place this happens).

    A class, not a ``contextlib.contextmanager``: it is entered on every
    read and write, and one shared instance per operation costs nothing.
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        pass

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if isinstance(exc, NoSpaceError):
            log.debug("%s: %s", self.what, exc)
            raise FUSEError(errno.ENOSPC) from None
        if isinstance(exc, DeviceIOError):
            log.error("%s failed: %s", self.what, exc)
            raise FUSEError(errno.EIO) from None


_READ_ERRORS, _WRITE_ERRORS, _FSYNC_ERRORS, _ZERO_ERRORS = (
    _Translate(w) for w in ("read", "write", "fsync", "fallocate"))
