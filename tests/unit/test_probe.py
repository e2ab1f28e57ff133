"""Tests of vvfs.io.probe on real signatures made by real tools.

Every image is a sparse file under pytest's ``tmp_path``. Signatures come
from the real mkfs, partitioning and LVM tools; the md and ZFS ones, whose
tools need kernel drivers (or packages) this machine lacks, are written by
hand as libblkid checks them, and the md one is checked by mdadm --examine. A test whose tool is missing fails naming the program
and the Debian package that provides it. Loop devices and mounts are made
only by these tests and removed in ``finally`` blocks, by their own name.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest

from vvfs.errors import ProbeError
from vvfs.io import probe
from vvfs.io.probe import (
    Signature,
    device_size,
    foreign_signatures,
    in_use,
    is_block_device,
    wipe_signatures,
)

MiB = 1024 * 1024


# --------------------------------------------------------------------------
# Helpers


def require(program: str, package: str) -> str:
    """The path of *program*; fail the test naming its Debian package if missing."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(program, path=search)
    if found is None:
        pytest.fail(f"{program} not found: install the Debian package {package}", pytrace=False)
    return found


def run(program: str, package: str, *args: str, stdin: str | None = None) -> str:
    """Run a system program with *args*; its stdout. Fails the test on error."""
    cmd = [require(program, package), *args]
    env = {**os.environ, "LC_ALL": "C", "LVM_SUPPRESS_FD_WARNINGS": "1"}
    try:
        proc = subprocess.run(cmd, check=True, input=stdin, capture_output=True, text=True, env=env)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{' '.join(cmd)} failed: {exc.stderr.strip()}", pytrace=False)
    return proc.stdout


def sparse(tmp_path: Path, name: str, size: int) -> Path:
    """A sparse file of *size* bytes, all zeros."""
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@contextmanager
def loop_device(image: Path, *, partscan: bool = False) -> Iterator[str]:
    """Attach *image* to a free loop device; detach exactly that device afterwards."""
    losetup = require("losetup", "mount")
    options = ["--partscan"] if partscan else []
    dev = run("losetup", "mount", *options, "--find", "--show", str(image)).strip()
    try:
        yield dev
    finally:
        subprocess.run([losetup, "--detach", dev], check=True, capture_output=True)


@contextmanager
def mounted(dev: str, mount_point: Path) -> Iterator[Path]:
    """Mount *dev* on *mount_point*; unmount it afterwards."""
    umount = require("umount", "mount")
    mount_point.mkdir()
    run("mount", "mount", dev, str(mount_point))
    try:
        yield mount_point
    finally:
        subprocess.run([umount, str(mount_point)], check=True, capture_output=True)


def types(path: Path | str) -> list[str]:
    """The signature types found on *path*."""
    return [s.type for s in foreign_signatures(str(path))]


# --------------------------------------------------------------------------
# Hand-written headers

# md superblock version 1.2 (struct mdp_superblock_1, <linux/raid/md_p.h>),
# at 4 KiB from the start of the device. Little-endian throughout.
MD_SB = struct.Struct(
    "<"
    "I"  # 0   magic
    "I"  # 4   major_version = 1
    "I"  # 8   feature_map
    "4x"  # 12  pad0
    "16s"  # 16  set_uuid
    "32s"  # 32  set_name
    "Q"  # 64  ctime
    "i"  # 72  level
    "I"  # 76  layout
    "Q"  # 80  size (sectors)
    "I"  # 88  chunksize
    "I"  # 92  raid_disks
    "I"  # 96  bitmap_offset
    "I"  # 100 new_level
    "Q"  # 104 reshape_position
    "I"  # 112 delta_disks
    "I"  # 116 new_layout
    "I"  # 120 new_chunk
    "I"  # 124 new_offset
    "Q"  # 128 data_offset (sectors)
    "Q"  # 136 data_size (sectors)
    "Q"  # 144 super_offset (sectors) — libblkid requires it to be 8 for v1.2
    "Q"  # 152 recovery_offset
    "I"  # 160 dev_number
    "I"  # 164 cnt_corrected_read
    "16s"  # 168 device_uuid
    "B"  # 184 devflags
    "B"  # 185 bblog_shift
    "H"  # 186 bblog_size
    "I"  # 188 bblog_offset
    "Q"  # 192 utime
    "Q"  # 200 events
    "Q"  # 208 resync_offset
    "I"  # 216 sb_csum
    "I"  # 220 max_dev (number of dev_roles entries that follow)
    "32x"  # 224 pad3
)
assert MD_SB.size == 256


class MdSuperblock(NamedTuple):
    """The fields of MD_SB, in order; zero unless given."""

    magic: int = 0xA92B4EFC
    major_version: int = 1
    feature_map: int = 0
    set_uuid: bytes = bytes(16)
    set_name: bytes = b""
    ctime: int = 0
    level: int = 0
    layout: int = 0
    size: int = 0
    chunksize: int = 0
    raid_disks: int = 0
    bitmap_offset: int = 0
    new_level: int = 0
    reshape_position: int = 0
    delta_disks: int = 0
    new_layout: int = 0
    new_chunk: int = 0
    new_offset: int = 0
    data_offset: int = 0
    data_size: int = 0
    super_offset: int = 0
    recovery_offset: int = 0
    dev_number: int = 0
    cnt_corrected_read: int = 0
    device_uuid: bytes = bytes(16)
    devflags: int = 0
    bblog_shift: int = 0
    bblog_size: int = 0
    bblog_offset: int = 0
    utime: int = 0
    events: int = 0
    resync_offset: int = 0
    sb_csum: int = 0
    max_dev: int = 0


MD_SB_OFFSET = 4096
MD_CSUM_OFFSET = 216


def md_checksum(sb: bytes) -> int:
    """md's sb_csum: the 32-bit words of the superblock (csum field zero) summed
    into 64 bits, then the carry folded in once (mdadm calc_sb_1_csum)."""
    total: int = sum(struct.unpack(f"<{len(sb) // 4}I", sb))
    return ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF


def md_superblock(device_size: int, name: bytes) -> bytes:
    """A v1.2 superblock of device 0 of a two-disk RAID1, with a valid sb_csum."""
    max_dev = 2
    data_offset = 2048
    data_size = device_size // 512 - data_offset
    head = MD_SB.pack(
        *MdSuperblock(
            set_uuid=uuid.uuid4().bytes,
            set_name=name,
            level=1,
            size=data_size,
            raid_disks=2,
            data_offset=data_offset,
            data_size=data_size,
            super_offset=MD_SB_OFFSET // 512,
            device_uuid=uuid.uuid4().bytes,
            events=1,
            resync_offset=2**64 - 1,  # MaxSector: in sync
            max_dev=max_dev,
        )
    )
    roles = struct.pack("<2H", 0, 1)  # dev_roles: this device is role 0, the other role 1
    sb = bytearray(head + roles)
    struct.pack_into("<I", sb, MD_CSUM_OFFSET, md_checksum(bytes(sb)))
    return bytes(sb)


# ZFS: four 256 KiB vdev labels, two at the start of the device and two at the
# end; each holds an uberblock ring of 1 KiB slots from 128 KiB in. libblkid's
# zfs probe counts uberblocks whose ub_magic is 0x00bab10c (either byte
# order) over the four labels and wants at least four.
ZFS_LABEL_SIZE = 256 * 1024
ZFS_UBERBLOCK_RING = 128 * 1024
ZFS_UBERBLOCK_SLOT = 1024
ZFS_UBERBLOCK = struct.Struct(
    "<"
    "Q"  # 0  ub_magic 0x00bab10c
    "Q"  # 8  ub_version (SPA version; 5000 = feature flags)
    "Q"  # 16 ub_txg
    "Q"  # 24 ub_guid_sum
    "Q"  # 32 ub_timestamp
)
assert ZFS_UBERBLOCK.size == 40


def write_zfs_labels(path: Path, size: int) -> None:
    """One uberblock (txg 4, in ring slot 4 as ZFS puts it) in each of the four labels."""
    txg = 4
    ub = ZFS_UBERBLOCK.pack(0x00BAB10C, 5000, txg, 0x1234_5678_9ABC_DEF0, 1_700_000_000)
    labels = (0, ZFS_LABEL_SIZE, size - 2 * ZFS_LABEL_SIZE, size - ZFS_LABEL_SIZE)
    with open(path, "r+b") as f:
        for label in labels:
            f.seek(label + ZFS_UBERBLOCK_RING + txg * ZFS_UBERBLOCK_SLOT)
            f.write(ub)


# --------------------------------------------------------------------------
# foreign_signatures


def test_clean_sparse_file_has_no_signatures(tmp_path: Path) -> None:
    assert foreign_signatures(str(sparse(tmp_path, "clean.img", 64 * MiB))) == []


MKFS_CASES = [
    # (program, package, arguments before the image, size, type, offset)
    ("mkfs.ext2", "e2fsprogs", ["-F", "-q"], 64 * MiB, "ext2", 0x438),
    ("mkfs.ext3", "e2fsprogs", ["-F", "-q"], 64 * MiB, "ext3", 0x438),
    ("mkfs.ext4", "e2fsprogs", ["-F", "-q"], 64 * MiB, "ext4", 0x438),
    ("mkfs.xfs", "xfsprogs", ["-f", "-q"], 512 * MiB, "xfs", 0),
    ("mkfs.btrfs", "btrfs-progs", ["-f", "-q"], 256 * MiB, "btrfs", 0x10040),
    ("mkswap", "util-linux", [], 64 * MiB, "swap", 0xFF6),
]


@pytest.mark.parametrize(
    ("program", "package", "args", "size", "sig_type", "offset"),
    MKFS_CASES,
    ids=[case[4] for case in MKFS_CASES],
)
def test_detects_filesystem_made_by_mkfs(
    tmp_path: Path,
    program: str,
    package: str,
    args: list[str],
    size: int,
    sig_type: str,
    offset: int,
) -> None:
    image = sparse(tmp_path, "fs.img", size)
    run(program, package, *args, str(image))
    assert [(s.type, s.offset) for s in foreign_signatures(str(image))] == [(sig_type, offset)]


def test_detects_gpt_and_protective_mbr(tmp_path: Path) -> None:
    image = sparse(tmp_path, "gpt.img", 64 * MiB)
    run("sgdisk", "gdisk", "--clear", "--new=1:0:0", str(image))
    found = {(s.type, s.offset) for s in foreign_signatures(str(image))}
    assert {("gpt", 0x200), ("gpt", 64 * MiB - 512), ("PMBR", 0x1FE)} == found


def test_detects_mbr(tmp_path: Path) -> None:
    image = sparse(tmp_path, "mbr.img", 64 * MiB)
    run("sfdisk", "fdisk", "--quiet", str(image), stdin="label: dos\n,,L\n")
    assert [(s.type, s.offset) for s in foreign_signatures(str(image))] == [("dos", 0x1FE)]


@pytest.mark.slow
def test_detects_lvm2_physical_volume(tmp_path: Path) -> None:
    image = sparse(tmp_path, "pv.img", 64 * MiB)
    require("pvcreate", "lvm2")
    with loop_device(image) as dev:
        # --devices keeps LVM from scanning (or touching) any other device.
        run("pvcreate", "lvm2", "--devices", dev, "--yes", dev)
        found = foreign_signatures(dev)
    assert [(s.type, s.offset) for s in found] == [("LVM2_member", 0x218)]
    assert found[0].uuid != ""


def test_detects_md_superblock_v1_2(tmp_path: Path) -> None:
    image = sparse(tmp_path, "md.img", 64 * MiB)
    with open(image, "r+b") as f:
        f.seek(MD_SB_OFFSET)
        f.write(md_superblock(64 * MiB, b"host:vvtest"))
    found = foreign_signatures(str(image))
    assert [(s.type, s.offset, s.label) for s in found] == [
        ("linux_raid_member", MD_SB_OFFSET, "host:vvtest")
    ]


def test_hand_made_md_superblock_is_valid_for_mdadm(tmp_path: Path) -> None:
    # libblkid 2.38 does not check sb_csum (and wipefs accepts a bad one
    # anyway), so mdadm is the witness that the header above is a real one.
    image = sparse(tmp_path, "md.img", 64 * MiB)
    with open(image, "r+b") as f:
        f.seek(MD_SB_OFFSET)
        f.write(md_superblock(64 * MiB, b"host:vvtest"))
    report = run("mdadm", "mdadm", "--examine", str(image))
    assert "Version : 1.2" in report
    assert "- correct" in report.split("Checksum :", 1)[1].splitlines()[0]


def test_md_superblock_with_bad_checksum_is_still_reported(tmp_path: Path) -> None:
    # A damaged md member is still somebody's disk: it must be refused too.
    image = sparse(tmp_path, "md.img", 64 * MiB)
    sb = bytearray(md_superblock(64 * MiB, b"host:vvtest"))
    sb[MD_CSUM_OFFSET] ^= 0xFF
    with open(image, "r+b") as f:
        f.seek(MD_SB_OFFSET)
        f.write(sb)
    assert types(image) == ["linux_raid_member"]


def test_detects_zfs_label(tmp_path: Path) -> None:
    size = 64 * MiB
    image = sparse(tmp_path, "zfs.img", size)
    write_zfs_labels(image, size)
    assert "zfs_member" in types(image)


@pytest.mark.slow
def test_signatures_of_a_loop_device_match_its_file(tmp_path: Path) -> None:
    image = sparse(tmp_path, "fs.img", 64 * MiB)
    run("mkfs.ext4", "e2fsprogs", "-F", "-q", str(image))
    with loop_device(image) as dev:
        assert foreign_signatures(dev) == foreign_signatures(str(image))


def test_symlink_is_followed(tmp_path: Path) -> None:
    image = sparse(tmp_path, "fs.img", 64 * MiB)
    run("mkfs.ext4", "e2fsprogs", "-F", "-q", str(image))
    link = tmp_path / "link"
    link.symlink_to(image)
    assert types(link) == ["ext4"]


def test_describe_names_type_and_offset() -> None:
    sig = Signature(type="ext4", offset=1080, uuid="", label="")
    assert sig.describe() == "ext4 signature at byte 1080 (0x438)"


def test_foreign_signatures_of_a_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match="is a directory"):
        foreign_signatures(str(tmp_path))


def test_missing_wipefs_names_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = sparse(tmp_path, "clean.img", MiB)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(probe, "_SBIN_DIRS", ())
    with pytest.raises(ProbeError, match=r"^wipefs not found: .*util-linux$"):
        foreign_signatures(str(image))


# --------------------------------------------------------------------------
# wipe_signatures


def test_wipe_signatures_removes_ext4(tmp_path: Path) -> None:
    image = sparse(tmp_path, "fs.img", 64 * MiB)
    run("mkfs.ext4", "e2fsprogs", "-F", "-q", str(image))
    wipe_signatures(str(image))
    assert foreign_signatures(str(image)) == []


@pytest.mark.slow
def test_wipe_signatures_refuses_a_file_in_use(tmp_path: Path) -> None:
    image = sparse(tmp_path, "fs.img", 64 * MiB)
    run("mkfs.ext4", "e2fsprogs", "-F", "-q", str(image))
    with loop_device(image), pytest.raises(ProbeError, match="backing file of /dev/loop"):
        wipe_signatures(str(image))
    assert types(image) == ["ext4"]


# --------------------------------------------------------------------------
# in_use


def test_unused_file_is_not_in_use(tmp_path: Path) -> None:
    assert in_use(str(sparse(tmp_path, "free.img", MiB))) is None


@pytest.mark.slow
def test_file_attached_to_a_loop_device_is_in_use(tmp_path: Path) -> None:
    image = sparse(tmp_path, "attached.img", 64 * MiB)
    with loop_device(image) as dev:
        assert in_use(str(image)) == f"{image} is the backing file of {dev}"


@pytest.mark.slow
def test_file_attached_through_a_symlink_is_in_use(tmp_path: Path) -> None:
    image = sparse(tmp_path, "attached.img", 64 * MiB)
    link = tmp_path / "link"
    link.symlink_to(image)
    with loop_device(link) as dev:
        assert in_use(str(image)) == f"{image} is the backing file of {dev}"


@pytest.mark.slow
def test_file_whose_loop_device_is_mounted_is_in_use(tmp_path: Path) -> None:
    image = sparse(tmp_path, "fs.img", 64 * MiB)
    run("mkfs.ext4", "e2fsprogs", "-F", "-q", str(image))
    with loop_device(image) as dev, mounted(dev, tmp_path / "mnt") as mnt:
        assert in_use(str(image)) == f"{image} is attached to {dev}, which is mounted on {mnt}"


@pytest.mark.slow
def test_mounted_loop_device_is_in_use(tmp_path: Path) -> None:
    image = sparse(tmp_path, "fs.img", 64 * MiB)
    run("mkfs.ext4", "e2fsprogs", "-F", "-q", str(image))
    with loop_device(image) as dev, mounted(dev, tmp_path / "mnt") as mnt:
        assert in_use(dev) == f"{dev} is mounted on {mnt}"


@pytest.mark.slow
def test_loop_device_with_a_mounted_partition_is_in_use(tmp_path: Path) -> None:
    image = sparse(tmp_path, "disk.img", 64 * MiB)
    run("sfdisk", "fdisk", "--quiet", str(image), stdin="label: dos\n,,L\n")
    with loop_device(image, partscan=True) as dev:
        # This kernel may lack partition-table parsers: partx adds the
        # partition by BLKPG (allowed only with --partscan) unless the kernel
        # already did. Detaching the loop device removes it again.
        if not os.path.exists(f"/sys/class/block/{os.path.basename(dev)}p1"):
            run("partx", "util-linux", "--add", dev)
        run("mkfs.ext4", "e2fsprogs", "-F", "-q", f"{dev}p1")
        with mounted(f"{dev}p1", tmp_path / "mnt") as mnt:
            assert in_use(dev) == f"{dev} has partition {dev}p1 mounted on {mnt}"


@pytest.mark.slow
def test_mounted_btrfs_is_found_by_its_source_device(tmp_path: Path) -> None:
    # btrfs reports an anonymous device number in mountinfo, not the loop's.
    image = sparse(tmp_path, "fs.img", 256 * MiB)
    run("mkfs.btrfs", "btrfs-progs", "-f", "-q", str(image))
    with loop_device(image) as dev:
        try:
            with mounted(dev, tmp_path / "mnt") as mnt:
                assert in_use(dev) == f"{dev} is mounted on {mnt}"
        finally:
            run("btrfs", "btrfs-progs", "device", "scan", "--forget", dev)


@pytest.mark.slow
def test_bind_mounted_file_is_in_use(tmp_path: Path) -> None:
    image = sparse(tmp_path, "f.img", MiB)
    target = tmp_path / "target"
    target.touch()
    run("mount", "mount", "--bind", str(image), str(target))
    try:
        assert in_use(str(image)) == f"{image} is mounted on {target}"
    finally:
        subprocess.run([require("umount", "mount"), str(target)], check=True, capture_output=True)


@pytest.mark.slow
def test_unmounted_loop_device_is_not_in_use(tmp_path: Path) -> None:
    image = sparse(tmp_path, "free.img", 64 * MiB)
    with loop_device(image) as dev:
        assert in_use(dev) is None


def test_in_use_of_a_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match="no such file or block device"):
        in_use(str(tmp_path / "missing.img"))


# --------------------------------------------------------------------------
# device_size and is_block_device


def test_device_size_of_a_file(tmp_path: Path) -> None:
    assert device_size(str(sparse(tmp_path, "f.img", 5 * MiB + 512))) == 5 * MiB + 512


@pytest.mark.slow
def test_device_size_of_a_loop_device(tmp_path: Path) -> None:
    image = sparse(tmp_path, "f.img", 24 * MiB)
    with loop_device(image) as dev:
        assert device_size(dev) == 24 * MiB


def test_device_size_of_a_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match="is a directory, not a block device or regular file"):
        device_size(str(tmp_path))


def test_device_size_of_a_character_device_is_an_error() -> None:
    with pytest.raises(ProbeError, match="is a character device"):
        device_size("/dev/null")


def test_device_size_of_a_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match="no such file or block device"):
        device_size(str(tmp_path / "missing.img"))


@pytest.mark.slow
def test_loop_device_is_a_block_device(tmp_path: Path) -> None:
    with loop_device(sparse(tmp_path, "f.img", MiB)) as dev:
        assert is_block_device(dev)


def test_file_is_not_a_block_device(tmp_path: Path) -> None:
    assert not is_block_device(str(sparse(tmp_path, "f.img", MiB)))
