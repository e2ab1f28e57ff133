"""I/O through a real mount: fio verification, mirrors, O_DIRECT, ENOSPC, fsync.

One node serves the module's pool (``io_node`` in conftest); the fsync test
builds its own pool on loop devices so that it can see the flushes reach
the block layer.
"""

from __future__ import annotations

import errno
import mmap
import os
import signal
import subprocess
from pathlib import Path

import pytest

from mapper.layout import VolumeMap

from ..support.mountutil import (
    MiB,
    MountedNode,
    TestPool,
    alive,
    fio,
    is_mounted,
    loop_device,
    mounted,
    require,
    wait_until,
)

pytestmark = pytest.mark.slow

VOLUME_SIZE = 96 * MiB


def _fio_verify(path: str, *extra: str) -> None:
    fio("--name=verify", f"--filename={path}", "--rw=randwrite", "--bsrange=4k-256k",
        "--size=64M", "--direct=1", "--ioengine=libaio", "--iodepth=16",
        "--verify=crc32c", "--verify_fatal=1", "--do_verify=1", *extra)


@pytest.mark.parametrize("name", ["lin", "str", "mir"])
def test_fio_verify_passes(io_node: MountedNode, name: str) -> None:
    require("fio")
    _fio_verify(io_node.pool.volume_path(name))


@pytest.mark.parametrize("name", ["lin", "mir"])
def test_fio_verify_passes_with_direct_backing(fresh_pool: TestPool, name: str) -> None:
    """``-o backing=direct``: device calls go through kernel AIO (vvfs.io.kaio).

    The first pass writes sparse files (AIO refuses to allocate on the loop
    thread: worker threads); the verify pass and the second run reread and
    overwrite allocated blocks, which AIO serves.
    """
    require("fio")
    fresh_pool.create_volume("lin", VOLUME_SIZE)
    fresh_pool.create_volume("mir", VOLUME_SIZE, mirrors=2)
    with mounted(fresh_pool, "backing=direct"):
        _fio_verify(fresh_pool.volume_path(name))
        _fio_verify(fresh_pool.volume_path(name), "--bsrange=4k-1m")


def _legs(pool: TestPool, name: str) -> tuple[VolumeMap, dict[str, str]]:
    with pool.manager() as mgr:
        shown = mgr.show_pool(pool.name)
    return VolumeMap(shown.pool, shown.pool.volume(name)), shown.paths


def test_mirror_legs_hold_identical_bytes(io_node: MountedNode) -> None:
    require("fio")
    pool = io_node.pool
    fio("--name=fill", f"--filename={pool.volume_path('mir')}", "--rw=write", "--bs=1M",
        f"--size={VOLUME_SIZE}", "--direct=1", "--ioengine=libaio", "--iodepth=8",
        "--verify=crc32c", "--verify_fatal=1", "--do_verify=1")
    vmap, paths = _legs(pool, "mir")
    files = {u: open(p, "rb") for u, p in paths.items()}  # noqa: SIM115
    try:
        for piece in vmap.resolve(0, VOLUME_SIZE):
            assert len(piece.legs) == 2
            for off in range(0, piece.length, 8 * MiB):
                n = min(8 * MiB, piece.length - off)
                a, b = (os.pread(files[loc.device].fileno(), n, loc.offset + off)
                        for loc in piece.legs)
                assert a == b, f"legs differ at volume byte {piece.offset + off}"
                assert a.count(0) < n, "no data was written"
    finally:
        for f in files.values():
            f.close()


def _aligned(n: int) -> mmap.mmap:
    return mmap.mmap(-1, n)


def test_o_direct_open_reads_and_writes(io_node: MountedNode) -> None:
    path = io_node.pool.volume_path("lin")
    data = os.urandom(1 * MiB)
    out, back = _aligned(1 * MiB), _aligned(1 * MiB)
    out.write(data)
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    try:
        assert os.pwrite(fd, out, 5 * MiB) == 1 * MiB
        assert os.preadv(fd, [back], 5 * MiB) == 1 * MiB
    finally:
        os.close(fd)
    assert bytes(back) == data


@pytest.mark.parametrize("flags", [0, os.O_DIRECT], ids=["buffered", "direct"])
def test_write_past_the_end_is_enospc(io_node: MountedNode, flags: int) -> None:
    buf = _aligned(4096)
    fd = os.open(io_node.pool.volume_path("lin"), os.O_WRONLY | flags)
    try:
        with pytest.raises(OSError) as e:
            os.pwrite(fd, buf, VOLUME_SIZE)
        assert e.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert os.stat(io_node.pool.volume_path("lin")).st_size == VOLUME_SIZE


def test_read_at_the_end_is_empty(io_node: MountedNode) -> None:
    with open(io_node.pool.volume_path("lin"), "rb") as f:
        assert os.pread(f.fileno(), 4096, VOLUME_SIZE) == b""
        assert len(os.pread(f.fileno(), 4096, VOLUME_SIZE - 100)) == 100


def test_truncate_is_refused(io_node: MountedNode) -> None:
    with pytest.raises(PermissionError):
        os.truncate(io_node.pool.volume_path("lin"), 1 * MiB)
    assert os.stat(io_node.pool.volume_path("lin")).st_size == VOLUME_SIZE


def test_volume_file_has_the_volume_attributes(io_node: MountedNode) -> None:
    st = os.stat(io_node.pool.volume_path("lin"))
    assert (st.st_size, st.st_mode & 0o7777, st.st_uid, st.st_nlink) == (
        VOLUME_SIZE, 0o600, 0, 1)
    names = sorted(os.listdir(Path(io_node.mnt) / io_node.pool.name))
    assert names == ["lin", "mir", "pub", "str"]


def _read_as_nobody(dir_fd: int, name: str) -> subprocess.CompletedProcess[str]:
    """head -c1 DIR/NAME as user nobody, through an inherited directory fd.

    (The test's own directories are 0700; the fd skips their search checks
    so that only the mount's own permissions are exercised.)
    """
    return subprocess.run(["head", "-c", "1", f"/proc/self/fd/{dir_fd}/{name}"],
                          pass_fds=[dir_fd], user=65534, group=65534, extra_groups=[],
                          capture_output=True, text=True, timeout=30, check=False)


def test_another_user_cannot_open_a_0600_volume(io_node: MountedNode) -> None:
    dir_fd = os.open(Path(io_node.mnt) / io_node.pool.name, os.O_RDONLY | os.O_DIRECTORY)
    try:
        denied = _read_as_nobody(dir_fd, "lin")
        allowed = _read_as_nobody(dir_fd, "pub")
    finally:
        os.close(dir_fd)
    assert allowed.returncode == 0, allowed.stderr
    assert denied.returncode != 0 and "Permission denied" in denied.stderr


# ---------------------------------------------------------------------------
# fsync reaches the backing devices


def _block_stat(dev: str) -> tuple[int, int]:
    """(sectors written, flush requests completed) of a block device."""
    with open(f"/sys/block/{os.path.basename(dev)}/stat") as f:
        fields = [int(x) for x in f.read().split()]
    return fields[6], fields[15]


def test_fsync_flushes_every_backing_device_of_a_mirror(tmp_path: Path) -> None:
    """After fsync returns, both legs' devices got the data and a cache flush.

    Writes through the mount land in the backing devices' page cache; only
    an fdatasync of the device writes them out and sends the flush request
    that the block layer counts.  A no-op fsync fails this test.
    """
    require("losetup")
    images = []
    for i in range(2):
        img = tmp_path / f"img{i}"
        with open(img, "wb") as f:
            f.truncate(512 * MiB)
        images.append(str(img))
    with loop_device(images[0], direct_io=False) as d0, \
            loop_device(images[1], direct_io=False) as d1:
        pool = TestPool(tmp_path, paths=[d0, d1])
        pool.create_volume("m", 32 * MiB, mirrors=2)
        with mounted(pool) as node:
            fd = os.open(pool.volume_path("m"), os.O_WRONLY)
            try:
                start = {d: _block_stat(d) for d in (d0, d1)}
                assert os.pwrite(fd, os.urandom(4 * MiB), 8 * MiB) == 4 * MiB
                before = {d: _block_stat(d) for d in (d0, d1)}
                os.fsync(fd)
                after = {d: _block_stat(d) for d in (d0, d1)}
            finally:
                os.close(fd)
            node.umount()
    for d in (d0, d1):
        assert after[d][1] > before[d][1], f"no flush request reached {d}"
        assert after[d][0] - start[d][0] >= 4 * MiB // 512, f"the data did not reach {d}"


# ---------------------------------------------------------------------------
# mounting and unmounting: vv mount / vv umount (mount(8) and fstab: test_mount_helper.py)

def test_vv_mount_of_an_unknown_pool_fails_with_one_line(fresh_pool: TestPool) -> None:
    res = fresh_pool.vv("mount", "nosuch", str(fresh_pool.mnt), check=False)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "nosuch" in res.stderr, res.stderr
    assert not is_mounted(fresh_pool.mnt)


def test_vv_umount_refuses_a_busy_mount(io_node: MountedNode) -> None:
    with open(io_node.pool.volume_path("lin"), "rb"):
        res = io_node.pool.vv("umount", io_node.mnt, check=False)
    assert res.returncode == 1 and "busy" in res.stderr, res.stderr
    assert is_mounted(io_node.mnt)


def test_a_second_node_on_the_state_dir_is_refused(io_node: MountedNode,
                                                   tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    res = io_node.pool.vv("mount", str(other), check=False)
    assert res.returncode != 0 and "locked" in res.stderr, res.stderr
    assert not is_mounted(other)


def test_sigterm_unmounts_and_stops_the_node(fresh_pool: TestPool) -> None:
    fresh_pool.create_volume("v", 8 * MiB)
    with mounted(fresh_pool) as node:
        with open(fresh_pool.volume_path("v"), "r+b") as f:
            f.write(b"kept")
        assert node.pid is not None
        pid = node.pid
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not alive(pid), 30, "the node to exit")
        assert not is_mounted(node.mnt)
        assert not os.path.exists(os.path.join(fresh_pool.state, "node.pid"))
    with mounted(fresh_pool), open(fresh_pool.volume_path("v"), "rb") as f:
        assert f.read(4) == b"kept"


def _volume_stats(node: MountedNode, name: str) -> dict:
    import json

    doc = json.loads(node.pool.vv("status", "--json").stdout)
    for p in doc["pools"]:
        for v in p["volumes"]:
            if v["name"] == name:
                return v["stats"]
    pytest.fail(f"vv status does not list volume {name}")


def test_a_mebibyte_is_one_fuse_request(io_node: MountedNode) -> None:
    """max_read/max_write: 4 MiB of O_DIRECT I/O arrive as four 1 MiB requests."""
    buf = _aligned(4 * MiB)
    before = _volume_stats(io_node, "lin")
    fd = os.open(io_node.pool.volume_path("lin"), os.O_RDWR | os.O_DIRECT)
    try:
        assert os.pwrite(fd, buf, 0) == 4 * MiB
        assert os.preadv(fd, [buf], 0) == 4 * MiB
    finally:
        os.close(fd)
    after = _volume_stats(io_node, "lin")
    assert after["writes"] - before["writes"] == 4
    assert after["reads"] - before["reads"] == 4
