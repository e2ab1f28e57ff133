"""Handler-level tests: VolumeFS operations called directly, without mounting.

The pool lives on sparse files under ``tmp_path``; the handlers run in
``trio.run`` over real DataDevices, so reads and writes reach the files.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import trio

from mapper.layout import VolumeMap
from metadata.blockdev import DeviceIOError
from metadata.model import Pool
from vvfs.data.checksums import ChecksumStore
from vvfs.data.guard import PoolGuard
from vvfs.data.volio import PoolIO
from vvfs.io.devio import DataDevice, io_limiter
from vvfs.node.fs import ROOT, VolumeFS

from ..support.fsck_support import commit_raw
from ..support.mountutil import MiB, TestPool, read_dev

KiB = 1024


@pytest.fixture
def pool(tmp_path: Path) -> TestPool:
    p = TestPool(tmp_path, devices=3, device_size=256 * MiB)
    p.create_volume("lin", 8 * MiB, owner=1000, group=100, mode=0o640)
    p.create_volume("str", 8 * MiB, stripes=2, stripe_size=64 * KiB)
    p.create_volume("mir", 8 * MiB, mirrors=2)
    return p


class Harness:
    """A VolumeFS serving one pool read from its media, plus handy calls."""

    def __init__(self, config: Pool, paths: dict[str, str],
                 device_class: type[DataDevice] = DataDevice) -> None:
        limiter = io_limiter(8)
        self.devices = {u: device_class(p, u, limiter) for u, p in paths.items()}
        self.pio = PoolIO(config, self.devices)  # type: ignore[arg-type]
        self.fs = VolumeFS(host_ids={"this-host"})
        self.fs.add_pool(self.pio)
        self.paths = paths
        self.pool_inode = 0

    async def start(self) -> None:
        """Look the pool's directory up once, as the kernel does before using it."""
        entry = await self.fs.lookup(ROOT, self.pio.name.encode(), ctx())
        self.pool_inode = entry.st_ino

    async def inode(self, name: str) -> int:
        entry = await self.fs.lookup(self.pool_inode, name.encode(), ctx())
        return entry.st_ino

    async def open(self, name: str, flags: int = os.O_RDWR, pid: int = 4242) -> int:
        info = await self.fs.open(await self.inode(name), flags, ctx(pid))
        return info.fh

    def close(self) -> None:
        for d in self.devices.values():
            d.close()


def ctx(pid: int = 4242) -> Any:
    return SimpleNamespace(uid=0, gid=0, pid=pid, umask=0o022)


def serve(pool: TestPool, body: Callable[[Harness], Awaitable[None]],
          device_class: type[DataDevice] = DataDevice) -> None:
    """Run *body* in trio against a harness over *pool*'s media."""
    with pool.manager() as mgr:
        op = mgr.session.open(pool.name)
        config, paths = op.pool, dict(op.paths)
        op.close()

    async def main() -> None:
        h = Harness(config, paths, device_class)
        try:
            await h.start()
            await body(h)
        finally:
            h.close()

    trio.run(main)


def fuse_errno(exc_info: pytest.ExceptionInfo[pyfuse3.FUSEError]) -> int:
    return exc_info.value.errno


# ---------------------------------------------------------------------------
# names and attributes


def test_volume_attributes_come_from_the_volume(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        attr = await h.fs.getattr(await h.inode("lin"), ctx())
        assert stat.S_ISREG(attr.st_mode)
        assert stat.S_IMODE(attr.st_mode) == 0o640
        assert (attr.st_uid, attr.st_gid, attr.st_nlink) == (1000, 100, 1)
        assert attr.st_size == 8 * MiB

    serve(pool, body)


def test_root_and_pool_are_directories(pool: TestPool,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    listed: list[tuple[bytes, int]] = []

    def reply(token: object, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        listed.append((name, attr.st_ino))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)

    async def body(h: Harness) -> None:
        assert stat.S_ISDIR((await h.fs.getattr(ROOT, ctx())).st_mode)
        entry = await h.fs.lookup(ROOT, b"tank", ctx())
        assert stat.S_ISDIR(entry.st_mode)
        # the pool's directory has one inode, however it is reached
        assert entry.st_ino == h.pool_inode
        await h.fs.readdir(await h.fs.opendir(ROOT, ctx()), 0, None)  # type: ignore[arg-type]
        assert listed == [(b"tank", entry.st_ino)]
        assert stat.S_ISDIR((await h.fs.getattr(entry.st_ino, ctx())).st_mode)

    serve(pool, body)


def test_lookup_of_unknown_name_is_enoent(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        with pytest.raises(pyfuse3.FUSEError) as e:
            await h.fs.lookup(h.pool_inode, b"nope", ctx())
        assert fuse_errno(e) == errno.ENOENT
        with pytest.raises(pyfuse3.FUSEError) as e:
            await h.fs.lookup(ROOT, b"lin", ctx())
        assert fuse_errno(e) == errno.ENOENT

    serve(pool, body)


def test_readdir_lists_pools_and_volumes(pool: TestPool,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, int]] = []

    def reply(token: object, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        seen.append((name, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)

    async def body(h: Harness) -> None:
        fh = await h.fs.opendir(ROOT, ctx())
        await h.fs.readdir(fh, 0, None)  # type: ignore[arg-type]
        assert [n for n, _ in seen] == [b"tank"]
        seen.clear()
        fh = await h.fs.opendir(h.pool_inode, ctx())
        await h.fs.readdir(fh, 0, None)  # type: ignore[arg-type]
        assert sorted(n for n, _ in seen) == [b"lin", b"mir", b"str"]
        # resuming after the first entry gives the rest
        first_id = seen[0][1]
        seen.clear()
        await h.fs.readdir(fh, first_id, None)  # type: ignore[arg-type]
        assert len(seen) == 2

    serve(pool, body)


def test_volume_hidden_from_this_host_is_not_listed(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        config = h.pio.pool.copy()
        config.volume("lin").hosts = ["another-host"]
        h.pio.apply(config)
        with pytest.raises(pyfuse3.FUSEError) as e:
            await h.fs.lookup(h.pool_inode, b"lin", ctx())
        assert fuse_errno(e) == errno.ENOENT

    serve(pool, body)


def _fields(**set_: bool) -> Any:
    names = ("update_atime", "update_mtime", "update_ctime", "update_mode", "update_uid",
             "update_gid", "update_size")
    return SimpleNamespace(**{n: set_.get(n, False) for n in names})


def test_setattr_refuses_a_size_change(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        ino = await h.inode("lin")
        attr = pyfuse3.EntryAttributes()
        attr.st_size = 4 * MiB
        with pytest.raises(pyfuse3.FUSEError) as e:
            await h.fs.setattr(ino, attr, _fields(update_size=True), None, ctx())
        assert fuse_errno(e) == errno.EPERM
        assert (await h.fs.getattr(ino, ctx())).st_size == 8 * MiB

    serve(pool, body)


def test_setattr_refuses_chmod_and_chown_without_a_node(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        ino = await h.inode("lin")
        attr = pyfuse3.EntryAttributes()
        attr.st_mode = stat.S_IFREG | 0o666
        attr.st_uid = 0
        for fields in (_fields(update_mode=True), _fields(update_uid=True)):
            with pytest.raises(pyfuse3.FUSEError) as e:
                await h.fs.setattr(ino, attr, fields, None, ctx())
            assert fuse_errno(e) == errno.EPERM

    serve(pool, body)


def test_setattr_refuses_chmod_and_chown_by_anyone_but_root(pool: TestPool) -> None:
    changes: list[tuple[str, int | None, int | None, int | None]] = []

    async def change(path: str, owner: int | None, group: int | None,
                     mode: int | None) -> None:
        changes.append((path, owner, group, mode))

    async def body(h: Harness) -> None:
        h.fs.change_attributes = change
        ino = await h.inode("lin")
        attr = pyfuse3.EntryAttributes()
        attr.st_mode = stat.S_IFREG | 0o666
        attr.st_uid = 1000
        user = SimpleNamespace(uid=1000, gid=100, pid=4242, umask=0o022)
        for fields in (_fields(update_mode=True), _fields(update_gid=True)):
            with pytest.raises(pyfuse3.FUSEError) as e:
                await h.fs.setattr(ino, attr, fields, None, user)
            assert fuse_errno(e) == errno.EPERM
        assert changes == []

    serve(pool, body)


def bad_on_media(pool: TestPool, name: str, **values: object) -> None:
    """Commit volume values that no Manager call takes, straight to media and catalog."""
    with pool.manager() as mgr:
        op = mgr.session.open(pool.name)
        config = op.pool.copy()
        op.close()
    for field, value in values.items():
        setattr(config.volume(name), field, value)
    commit_raw(pool, config)  # type: ignore[arg-type]  # a TestPool has paths and manager()


def test_owner_not_valid_on_media_shows_root_owned(pool: TestPool) -> None:
    bad_on_media(pool, "lin", owner=1 << 32, group=-5)

    async def body(h: Harness) -> None:
        attr = await h.fs.lookup(h.pool_inode, b"lin", ctx())
        assert (attr.st_uid, attr.st_gid, stat.S_IMODE(attr.st_mode)) == (0, 0, 0o640)
        attr = await h.fs.getattr(attr.st_ino, ctx())
        assert (attr.st_uid, attr.st_gid) == (0, 0)

    serve(pool, body)


def test_mode_not_valid_on_media_shows_0600(pool: TestPool) -> None:
    bad_on_media(pool, "lin", mode=0o170777)

    async def body(h: Harness) -> None:
        attr = await h.fs.getattr(await h.inode("lin"), ctx())
        assert attr.st_mode == stat.S_IFREG | 0o600
        assert (attr.st_uid, attr.st_gid) == (1000, 100)

    serve(pool, body)


def test_owner_not_valid_on_media_is_logged_once(pool: TestPool,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    bad_on_media(pool, "lin", owner=1 << 32)

    async def body(h: Harness) -> None:
        ino = await h.inode("lin")
        for _ in range(3):
            await h.fs.getattr(ino, ctx())

    with caplog.at_level("ERROR", logger="vvfs.node.fs"):
        serve(pool, body)
    lines = [r.getMessage() for r in caplog.records if r.name == "vvfs.node.fs"]
    assert len(lines) == 1
    assert "volume lin: owner not valid" in lines[0] and "4294967296" in lines[0]


def test_setattr_allows_times_and_same_size(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        ino = await h.inode("lin")
        attr = pyfuse3.EntryAttributes()
        attr.st_size = 8 * MiB
        out = await h.fs.setattr(ino, attr, _fields(update_size=True, update_atime=True,
                                                    update_mtime=True), None, ctx())
        assert out.st_size == 8 * MiB

    serve(pool, body)


def test_namespace_changes_through_the_mount_are_refused(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        for call in (h.fs.unlink(h.pool_inode, b"lin", ctx()),
                     h.fs.mknod(h.pool_inode, b"x", 0o100600, 0, ctx()),
                     h.fs.rename(h.pool_inode, b"lin", h.pool_inode, b"y", 0, ctx())):
            with pytest.raises(pyfuse3.FUSEError) as e:
                await call
            assert fuse_errno(e) == errno.EPERM

    serve(pool, body)


# ---------------------------------------------------------------------------
# reads and writes


def test_write_past_the_end_is_enospc(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        fh = await h.open("lin")
        with pytest.raises(pyfuse3.FUSEError) as e:
            await h.fs.write(fh, 8 * MiB, b"x" * 4096)
        assert fuse_errno(e) == errno.ENOSPC

    serve(pool, body)


def test_write_across_the_end_is_cut_short(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        fh = await h.open("lin")
        assert await h.fs.write(fh, 8 * MiB - 512, b"y" * 4096) == 512

    serve(pool, body)


def test_a_write_goes_through_the_volumes_guard_once(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        vio = h.pio.by_name["lin"]
        guard = vio.guard = PoolGuard(ChecksumStore(h.pio.pool, h.devices))  # type: ignore[arg-type]
        fh = await h.open("lin")
        done = trio.Event()

        async def write() -> None:
            assert await h.fs.write(fh, 0, b"g" * 4096) == 4096
            done.set()

        async with trio.open_nursery() as nursery:
            async with guard.lock(vio.uuid).exclusive(0, 4096):  # what a move's copy holds
                nursery.start_soon(write)
                await trio.sleep(0.05)
                assert not done.is_set(), "the write did not wait for the guard's range"
            with trio.fail_after(5):
                await done.wait()
        assert guard.stats.guarded_writes == 1
        assert bytes(await h.fs.read(fh, 0, 4096)) == b"g" * 4096

    serve(pool, body)


def test_read_past_the_end_is_short_or_empty(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        fh = await h.open("lin")
        assert len(await h.fs.read(fh, 8 * MiB - 100, 4096)) == 100
        assert len(await h.fs.read(fh, 8 * MiB, 4096)) == 0
        assert len(await h.fs.read(fh, 9 * MiB, 4096)) == 0

    serve(pool, body)


@pytest.mark.parametrize("name", ["lin", "str", "mir"])
def test_written_bytes_read_back(pool: TestPool, name: str) -> None:
    data = os.urandom(3 * MiB + 1234)

    async def body(h: Harness) -> None:
        fh = await h.open(name)
        assert await h.fs.write(fh, 777, data) == len(data)
        assert bytes(await h.fs.read(fh, 777, len(data))) == data

    serve(pool, body)


def test_writes_land_where_the_map_says(pool: TestPool) -> None:
    data = os.urandom(1 * MiB)

    async def body(h: Harness) -> None:
        fh = await h.open("str")
        await h.fs.write(fh, 2 * MiB, data)
        await h.fs.fsync(fh, False)
        vmap = h.pio.by_name["str"].vmap
        got = b"".join(read_dev(h.paths[p.legs[0].device], p.legs[0].offset, p.length)
                       for p in vmap.resolve(2 * MiB, len(data)))
        assert got == data

    serve(pool, body)


def test_mirrored_write_reaches_every_leg(pool: TestPool) -> None:
    data = os.urandom(2 * MiB)

    async def body(h: Harness) -> None:
        fh = await h.open("mir")
        await h.fs.write(fh, 1 * MiB, data)
        vmap: VolumeMap = h.pio.by_name["mir"].vmap
        pieces = vmap.resolve(1 * MiB, len(data))
        assert all(len(p.legs) == 2 for p in pieces)
        for leg in (0, 1):
            got = b"".join(read_dev(h.paths[p.legs[leg].device], p.legs[leg].offset, p.length)
                           for p in pieces)
            assert got == data, f"leg {leg} differs"

    serve(pool, body)


def test_mirrored_reads_use_both_legs(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        fh = await h.open("mir")
        vmap = h.pio.by_name["mir"].vmap
        legs = {loc.device for p in vmap.resolve(0, 4096) for loc in p.legs}
        before = {u: h.devices[u].stats.reads for u in legs}
        for i in range(10):
            await h.fs.read(fh, i * 4096, 4096)
        used = [u for u in legs if h.devices[u].stats.reads > before[u]]
        assert len(used) == 2

    serve(pool, body)


def test_fsync_flushes_the_devices_written(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        fh = await h.open("mir")
        await h.fs.write(fh, 0, b"z" * 4096)
        legs = h.pio.by_name["mir"].vmap.devices()
        before = {u: h.devices[u].stats.flushes for u in legs}
        await h.fs.fsync(fh, True)
        assert all(h.devices[u].stats.flushes == before[u] + 1 for u in legs)
        assert not any(h.devices[u].statistics()["dirty"] for u in legs)
        await h.fs.fsync(fh, False)  # nothing written since: no second fdatasync
        assert all(h.devices[u].stats.flushes == before[u] + 1 for u in legs)

    serve(pool, body)


class FailingWrites(DataDevice):
    """A real DataDevice whose writes fail with EIO once ``fail`` is set."""

    fail = False

    def _pwritev_sync(self, bufs: Any, offset: int, total: int) -> None:
        if FailingWrites.fail and self.uuid == FailingWrites.victim:
            raise DeviceIOError(self.name, offset, "write failed: injected", errno.EIO)
        super()._pwritev_sync(bufs, offset, total)

    victim = ""


def test_a_failing_mirror_leg_fails_the_write(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        fh = await h.open("mir")
        FailingWrites.victim = next(iter(h.pio.by_name["mir"].vmap.devices()))
        FailingWrites.fail = True
        try:
            with pytest.raises(pyfuse3.FUSEError) as e:
                await h.fs.write(fh, 0, b"q" * 8192)
            assert fuse_errno(e) == errno.EIO
        finally:
            FailingWrites.fail = False

    serve(pool, body, device_class=FailingWrites)


# ---------------------------------------------------------------------------
# opens, handles and fences


def test_o_direct_open_bypasses_the_page_cache(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        ino = await h.inode("lin")
        assert (await h.fs.open(ino, os.O_RDWR | os.O_DIRECT, ctx())).direct_io
        assert not (await h.fs.open(ino, os.O_RDWR, ctx())).direct_io

    serve(pool, body)


def test_open_volumes_tracks_handles(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        fh = await h.open("lin", pid=77)
        assert h.fs.open_volumes(h.pio.uuid) == {"lin"}
        assert h.pio.by_name["lin"].statistics()["pids"] == [77]
        await h.fs.release(fh)
        assert h.fs.open_volumes(h.pio.uuid) == set()

    serve(pool, body)


def test_a_fence_holds_opens_back(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        ino = await h.inode("lin")
        opened: list[int] = []

        async def opener() -> None:
            opened.append((await h.fs.open(ino, os.O_RDONLY, ctx())).fh)

        assert h.fs.fence(h.pio.uuid) == set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(opener)
            await trio.sleep(0.05)
            assert opened == []
            h.fs.unfence_all()
        assert len(opened) == 1

    serve(pool, body)


# ---------------------------------------------------------------------------
# live configuration


def test_applied_resize_rename_and_removal_show(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        ino_lin = await h.inode("lin")
        ino_str = await h.inode("str")
        config = h.pio.pool.copy()
        config.volume("lin").size = 4 * MiB
        config.volume("str").name = "striped"
        config.volumes = [v for v in config.volumes if v.name != "mir"]
        await h.fs.apply_pool(h.pio, h.pio.apply(config))
        assert (await h.fs.getattr(ino_lin, ctx())).st_size == 4 * MiB
        assert await h.inode("striped") == ino_str
        for gone in (b"str", b"mir"):
            with pytest.raises(pyfuse3.FUSEError):
                await h.fs.lookup(h.pool_inode, gone, ctx())

    serve(pool, body)


def test_removed_pool_disappears(pool: TestPool) -> None:
    async def body(h: Harness) -> None:
        ino = await h.inode("lin")
        await h.fs.remove_pool(h.pio.uuid)
        with pytest.raises(pyfuse3.FUSEError) as e:
            await h.fs.getattr(ino, ctx())
        assert fuse_errno(e) == errno.ENOENT
        with pytest.raises(pyfuse3.FUSEError):
            await h.fs.lookup(ROOT, b"tank", ctx())

    serve(pool, body)
