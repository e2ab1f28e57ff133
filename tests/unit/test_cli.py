"""`vv` end to end on sparse files: pools, devices, volumes, errors, portability."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import vv as vv_tool

from .test_probe import md_superblock, require, write_zfs_labels

DEV = 512 << 20


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def vv(tmp_path, capsys, monkeypatch):
    """Run `vv ARGS...` in-process against a state directory under tmp_path."""
    state = tmp_path / "state"

    def run(*args: str, state_dir: Path | None = None) -> Result:
        monkeypatch.setenv("VVFS_STATE_DIR", str(state_dir or state))
        monkeypatch.setattr(sys, "argv", ["vv", *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            vv_tool.main()
        out, err = capsys.readouterr()
        return Result(exc.value.code or 0, out, err)

    return run


def devices(tmp_path: Path, n: int = 3, size: int = DEV, prefix: str = "dev") -> list[str]:
    out = []
    for i in range(n):
        p = tmp_path / f"{prefix}{i}.img"
        with open(p, "wb") as f:
            f.truncate(size)
        out.append(str(p))
    return out


def digest(path: str) -> str:
    """SHA-256 of a sparse file's content: every non-zero 64 KiB block and its offset.

    Holes are skipped (SEEK_DATA), so a 512 MiB mostly-empty image hashes fast,
    and the result does not depend on which zero ranges are holes.
    """
    block = 64 << 10
    zero = bytes(block)
    blocks: dict[int, bytes] = {}
    with open(path, "rb") as f:
        fd, end, pos = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            for off in range(data - data % block, hole, block):
                chunk = os.pread(fd, block, off)
                if chunk != zero:
                    blocks[off] = chunk
            pos = max(hole, data - data % block + block)
    h = hashlib.sha256()
    for off in sorted(blocks):
        h.update(off.to_bytes(8, "little") + blocks[off])
    return h.hexdigest()


def copy_sparse(src: str | Path, dst: str | Path) -> None:
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)


@pytest.fixture
def tank(tmp_path, vv):
    devs = devices(tmp_path)
    r = vv("pool", "create", "tank", *devs, "--extent-size", "4M", "--metadata-size", "1M")
    assert r.code == 0, r.err
    return devs


def generation(vv) -> int:
    return vv("pool", "show", "tank", "--json").json()["generation"]


# ---------------------------------------------------------------------------
# pools


def test_create_and_list_pool(tank, vv):
    rows = vv("pool", "list", "--json").json()
    assert [(r["name"], r["devices"], r["volumes"]) for r in rows] == [("tank", 3, 0)]
    assert rows[0]["free"] == rows[0]["size"] > 0


def _make_ext4(p): subprocess.run([require("mkfs.ext4", "e2fsprogs"), "-q", "-F", p], check=True)
def _make_xfs(p): subprocess.run([require("mkfs.xfs", "xfsprogs"), "-q", "-f", p], check=True)
def _make_btrfs(p): subprocess.run([require("mkfs.btrfs", "btrfs-progs"), "-q", "-f", p],
                                   check=True)
def _make_swap(p): subprocess.run([require("mkswap", "util-linux"), "-q", p], check=True,
                                  capture_output=True)
def _make_gpt(p): subprocess.run([require("sgdisk", "gdisk"), "-n", "1:2048:+1M", p], check=True,
                                 capture_output=True)
def _make_mbr(p): subprocess.run([require("sfdisk", "fdisk"), "-q", p], input="2048,2048,83\n",
                                 text=True, check=True)


def _make_md(p):
    with open(p, "r+b") as f:
        f.seek(4096)
        f.write(md_superblock(DEV, b"vvtest:0"))


def _make_zfs(p):
    write_zfs_labels(Path(p), DEV)


def _make_lvm(p):
    pvcreate = require("pvcreate", "lvm2")
    loop = subprocess.run(["losetup", "-f", "--show", p], check=True, capture_output=True,
                          text=True).stdout.strip()
    try:
        subprocess.run([pvcreate, "-q", "--devices", loop, loop], check=True,
                       capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


SIGNATURES = {
    "ext4": _make_ext4, "xfs": _make_xfs, "btrfs": _make_btrfs, "swap": _make_swap,
    "gpt": _make_gpt, "dos": _make_mbr, "linux_raid_member": _make_md,
    "zfs_member": _make_zfs, "LVM2_member": _make_lvm,
}
#: LVM's pvcreate needs a loop device: a slow test, like every one that attaches one
KINDS = [pytest.param(k, marks=pytest.mark.slow) if k == "LVM2_member" else k
         for k in sorted(SIGNATURES)]


@pytest.mark.parametrize("kind", KINDS)
def test_foreign_signature_refused_by_name_and_offset(tmp_path, vv, kind):
    devs = devices(tmp_path, 2)
    SIGNATURES[kind](devs[1])
    before = digest(devs[1])
    r = vv("pool", "create", "tank", *devs)
    assert r.code == 1
    assert f"{devs[1]}: {kind} signature at byte " in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert digest(devs[1]) == before
    assert vv("pool", "list", "--json").json() == []


def test_other_vvfs_pool_refused(tmp_path, vv):
    devs = devices(tmp_path, 2)
    assert vv("pool", "create", "one", devs[0]).code == 0
    assert vv("pool", "export", "one").code == 0
    r = vv("pool", "create", "two", devs[0], devs[1])
    assert r.code == 1 and "vvfs signature" in r.err and "byte 4096" in r.err


def test_device_of_an_imported_pool_refused_even_with_force(tmp_path, vv):
    devs = devices(tmp_path, 2)
    assert vv("pool", "create", "one", devs[0]).code == 0
    r = vv("pool", "create", "two", devs[0], devs[1], "--force")
    assert r.code == 1 and "belongs to imported pool one" in r.err


def test_force_overrides_a_signature_and_erases_it(tmp_path, vv):
    devs = devices(tmp_path, 1)
    _make_ext4(devs[0])
    assert vv("pool", "create", "tank", devs[0], "--force").code == 0
    out = subprocess.run(["wipefs", "--no-act", "--json", devs[0]], capture_output=True,
                         text=True, check=True).stdout
    assert "ext4" not in out


@pytest.mark.slow
def test_device_in_use_refused_even_with_force(tmp_path, vv):
    devs = devices(tmp_path, 1)
    loop = subprocess.run(["losetup", "-f", "--show", devs[0]], check=True, capture_output=True,
                          text=True).stdout.strip()
    try:
        r = vv("pool", "create", "tank", devs[0], "--force")
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
    assert r.code == 1 and "backing file of " + loop in r.err


def test_device_of_a_pool_active_on_another_host_refused_even_with_force(tmp_path, vv):
    devs = devices(tmp_path, 2)
    assert vv("pool", "create", "one", devs[0]).code == 0
    host = vv("pool", "show", "one", "--json").json()["active_host"]
    before = digest(devs[0])
    r = vv("pool", "create", "two", devs[0], devs[1], "--force", state_dir=tmp_path / "h2")
    assert r.code == 1, r.err
    assert "a device of pool one" in r.err and f"active on host {host}" in r.err
    assert digest(devs[0]) == before


def test_device_of_an_exported_pool_taken_with_force(tmp_path, vv):
    devs = devices(tmp_path, 1)
    assert vv("pool", "create", "one", devs[0]).code == 0
    assert vv("pool", "export", "one").code == 0
    r = vv("pool", "create", "two", devs[0], "--force", state_dir=tmp_path / "h2")
    assert r.code == 0, r.err


def test_file_open_in_another_process_refused_even_with_force(tmp_path, vv):
    devs = devices(tmp_path, 1)
    with open(devs[0], "rb") as f:
        proc = subprocess.Popen(["sleep", "120"], stdin=f)
    try:
        r = vv("pool", "create", "tank", devs[0], "--force")
    finally:
        proc.kill()
        proc.wait()
    assert r.code == 1 and f"is open by pid {proc.pid} (sleep)" in r.err, r.err
    assert vv("pool", "list", "--json").json() == []


def test_export_copy_import_elsewhere(tmp_path, tank, vv):
    assert vv("volume", "create", "tank/lin", "--size", "100M").code == 0
    assert vv("volume", "create", "tank/mir", "--size", "64M", "--mirrors", "2").code == 0
    assert vv("volume", "create", "tank/str", "--size", "96M", "--stripes", "3").code == 0
    before = vv("pool", "show", "tank", "--json").json()
    assert vv("pool", "export", "tank").code == 0
    assert vv("pool", "list", "--json").json() == []
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for i, d in enumerate(tank):  # new names, new order
        copy_sparse(d, moved / f"disk-{len(tank) - i}.raw")
    other = tmp_path / "other-host"
    r = vv("pool", "import", "tank", "--search", str(moved), state_dir=other)
    assert r.code == 0, r.err
    after = vv("pool", "show", "tank", "--json", state_dir=other).json()
    assert after["volumes"] == before["volumes"]
    assert [d["uuid"] for d in after["devices"]] == [d["uuid"] for d in before["devices"]]
    assert after["active_host"] != before["active_host"]
    assert set(after["paths"].values()) == {str(p) for p in moved.iterdir()}


def test_import_of_a_pool_active_elsewhere_needs_force(tmp_path, tank, vv):
    other = tmp_path / "other-host"
    r = vv("pool", "import", "tank", "--search", str(tmp_path), state_dir=other)
    assert r.code == 1 and "is active on host" in r.err
    r = vv("pool", "import", "tank", "--search", str(tmp_path), "--force", state_dir=other)
    assert r.code == 0, r.err


def test_import_of_an_incomplete_pool_names_missing_devices(tmp_path, tank, vv):
    assert vv("pool", "export", "tank").code == 0
    os.unlink(tank[1])
    r = vv("pool", "import", "tank", "--search", str(tmp_path), state_dir=tmp_path / "h2")
    assert r.code == 1 and "incomplete" in r.err and "d1" in r.err


def test_destroy_needs_yes_and_erases_labels(tmp_path, tank, vv):
    assert vv("pool", "destroy", "tank").code == 1
    assert vv("pool", "destroy", "tank", "--yes").code == 0
    reports = vv("scan", str(tmp_path), "--json").json()
    assert reports["pools"] == []
    assert vv("pool", "create", "again", *tank).code == 0


# ---------------------------------------------------------------------------
# scan


def test_scan_reports_complete_pool(tmp_path, tank, vv):
    pools = vv("scan", str(tmp_path), "--json").json()["pools"]
    assert [(p["name"], p["status"], p["imported_here"]) for p in pools] == [
        ("tank", "complete", True)]


def test_scan_reports_missing_device(tmp_path, tank, vv):
    os.rename(tank[2], tmp_path / "hidden")
    pools = vv("scan", str(tmp_path), "--json").json()["pools"]
    hidden_scan = [p for p in pools if p["name"] == "tank"]
    # the renamed file is still in tmp_path: move it out of sight instead
    os.rename(tmp_path / "hidden", tmp_path / "state" / "hidden")
    pools = vv("scan", str(tmp_path), "--json").json()["pools"]
    assert hidden_scan and pools[0]["status"] == "incomplete"
    assert pools[0]["missing"] == ["d2"]


def test_scan_reports_duplicate_uuids(tmp_path, tank, vv):
    copy_sparse(tank[0], tmp_path / "clone.img")
    dups = vv("scan", str(tmp_path), "--json").json()["duplicates"]
    assert len(dups) == 1
    assert sorted(next(iter(dups.values()))) == sorted([tank[0], str(tmp_path / "clone.img")])


def test_scan_reports_stale_device(tmp_path, tank, vv):
    old = tmp_path / "old-image"
    copy_sparse(tank[1], old)
    assert vv("volume", "create", "tank/a", "--size", "8M").code == 0
    copy_sparse(old, tank[1])
    old.unlink()
    pools = vv("scan", str(tmp_path), "--json").json()["pools"]
    assert pools[0]["stale"] == [tank[1]]


# ---------------------------------------------------------------------------
# devices and classes


def test_device_add_list_remove(tmp_path, tank, vv):
    new = devices(tmp_path, 1, prefix="extra")[0]
    r = vv("device", "add", "tank", new, "--tier", "1", "--cost", "0.5")
    assert r.code == 0, r.err
    rows = vv("device", "list", "tank", "--json").json()
    assert [r["name"] for r in rows] == ["d0", "d1", "d2", "d3"]
    assert rows[3]["tier"] == 1 and rows[3]["path"] == new
    classes = vv("class", "list", "tank", "--json").json()
    assert sorted((c["tier"], c["devices"]) for c in classes) == [(1, 1), (2, 3)]
    assert vv("device", "remove", "tank", "d3").code == 0
    assert len(vv("device", "list", "tank", "--json").json()) == 3
    assert vv("scan", new, "--json").json()["pools"] == []


def test_device_in_use_by_a_volume_cannot_be_removed(tank, vv):
    assert vv("volume", "create", "tank/a", "--size", "8M", "--on", "d1").code == 0
    gen = generation(vv)
    r = vv("device", "remove", "tank", "d1")
    assert r.code == 1 and "a" in r.err
    assert generation(vv) == gen


# ---------------------------------------------------------------------------
# volumes


def test_volume_layouts(tank, vv):
    assert vv("volume", "create", "tank/m", "--size", "40M", "--mirrors", "3").code == 0
    assert vv("volume", "create", "tank/s", "--size", "48M", "--stripes", "3",
              "--stripe-size", "128K").code == 0
    m = vv("volume", "show", "tank/m", "--json").json()
    legs = m["segments"][0]["areas"]
    assert len(legs) == 3 and len({leg[0]["device"] for leg in legs}) == 3
    s = vv("volume", "show", "tank/s", "--json").json()
    assert s["stripe_size"] == 128 << 10
    assert len({a["device"] for a in s["segments"][0]["areas"][0]}) == 3


def test_volume_resize_rename_remove(tank, vv):
    assert vv("volume", "create", "tank/a", "--size", "20M").code == 0
    assert vv("volume", "resize", "tank/a", "--size", "60M").code == 0
    assert vv("volume", "show", "tank/a", "--json").json()["size"] == 60 << 20
    r = vv("volume", "resize", "tank/a", "--size", "10M")
    assert r.code == 1 and "--yes" in r.err
    assert vv("volume", "resize", "tank/a", "--size", "10M", "--yes").code == 0
    assert vv("volume", "rename", "tank/a", "b").code == 0
    assert [v["name"] for v in vv("volume", "list", "tank", "--json").json()] == ["b"]
    assert vv("volume", "remove", "tank/b").code == 0
    rows = vv("pool", "list", "--json").json()
    assert rows[0]["free"] == rows[0]["size"]


def test_volume_owner_group_mode(tank, vv):
    assert vv("volume", "create", "tank/a", "--size", "4M", "--owner", "1000", "--group", "100",
              "--mode", "0640").code == 0
    v = vv("volume", "show", "tank/a", "--json").json()
    assert (v["owner"], v["group"], v["mode"]) == (1000, 100, "0640")


@pytest.mark.parametrize("args, code, words", [
    (("volume", "create", "tank/a", "--size", "12Q"), 2, "invalid size"),
    (("volume", "create", "tank/a", "--size", "0"), 1, "size"),
    (("volume", "create", "tank/a", "--size", "-5M"), 2, "invalid size"),
    (("volume", "create", "nosuch/a", "--size", "1M"), 1, "no imported pool 'nosuch'"),
    (("volume", "create", "tank", "--size", "1M"), 1, "POOL/VOLUME"),
    (("volume", "create", "tank/bad name", "--size", "1M"), 1, "invalid volume name"),
    (("volume", "create", "tank/a", "--size", "10T"), 1, "not enough space"),
    (("volume", "create", "tank/a", "--size", "1M", "--mirrors", "4"), 1, "distinct devices"),
    (("volume", "create", "tank/a", "--size", "1M", "--stripe-size", "3K"), 1, "stripe size"),
    (("volume", "create", "tank/a", "--size", "1M", "--mode", "999"), 2, "octal"),
    (("volume", "show", "tank/nosuch"), 1, "no volume 'nosuch'"),
    (("volume", "remove", "tank/nosuch"), 1, "no volume 'nosuch'"),
    (("device", "remove", "tank", "d9"), 1, "no device 'd9'"),
    (("pool", "show", "nosuch"), 1, "no imported pool"),
    (("pool", "create", "tank2"), 2, "Missing argument"),
])
def test_bad_input_is_one_line_and_changes_nothing(tank, vv, args, code, words):
    gen = generation(vv)
    r = vv(*args)
    assert r.code == code, (r.code, r.err)
    assert words in r.err
    assert "Traceback" not in r.err
    if code == 1:
        assert len(r.err.strip().splitlines()) == 1
    assert generation(vv) == gen


def test_duplicate_volume_name_refused(tank, vv):
    assert vv("volume", "create", "tank/a", "--size", "1M").code == 0
    gen = generation(vv)
    r = vv("volume", "create", "tank/a", "--size", "1M")
    assert r.code == 1 and "already has a volume 'a'" in r.err
    assert generation(vv) == gen


def test_duplicate_pool_name_refused(tmp_path, tank, vv):
    other = devices(tmp_path, 1, prefix="other")
    r = vv("pool", "create", "tank", *other)
    assert r.code == 1 and "already imported" in r.err
    assert vv("scan", other[0], "--json").json()["pools"] == []


def test_not_enough_space_explains_where_space_is(tank, vv):
    r = vv("volume", "create", "tank/big", "--size", "2G", "--mirrors", "2")
    assert r.code == 1
    for name in ("d0", "d1", "d2"):
        assert name in r.err


# ---------------------------------------------------------------------------
# catalog


def test_catalog_rebuild_from_media(tmp_path, tank, vv):
    assert vv("volume", "create", "tank/a", "--size", "8M").code == 0
    os.unlink(tmp_path / "state" / "catalog.sqlite")
    assert vv("pool", "list", "--json").json() == []
    r = vv("catalog", "rebuild")
    assert r.code == 0 and "tank" in r.out
    assert [v["name"] for v in vv("volume", "list", "tank", "--json").json()] == ["a"]


def test_media_wins_over_a_stale_catalog(tmp_path, tank, vv):
    state = tmp_path / "state"
    snapshot = tmp_path / "catalog-old"
    copy_sparse(state / "catalog.sqlite", snapshot)
    assert vv("volume", "create", "tank/a", "--size", "8M").code == 0
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(state / "catalog.sqlite") + suffix)
        if p.exists():
            p.unlink()
    copy_sparse(snapshot, state / "catalog.sqlite")
    assert [v["name"] for v in vv("volume", "list", "tank", "--json").json()] == ["a"]


def test_tables_are_printed(tank, vv):
    assert vv("volume", "create", "tank/a", "--size", "8M", "--mirrors", "2").code == 0
    for args, words in [
        (("pool", "list"), ["POOL", "tank"]),
        (("pool", "show", "tank"), ["DEVICE", "VOLUME", "a"]),
        (("volume", "list", "tank"), ["VOLUME", "a", "2 mirrors"]),
        (("volume", "show", "tank/a"), ["SEG", "LEG", "d0"]),
        (("device", "list", "tank"), ["DEVICE", "d2"]),
        (("class", "list", "tank"), ["TIER", "PROTECTION"]),
    ]:
        r = vv(*args)
        assert r.code == 0, (args, r.err)
        for w in words:
            assert w in r.out, (args, w, r.out)


def test_device_with_a_newer_label_feature_is_named_not_ignored(tmp_path, tank, vv):
    from metadata import format as fmt
    from metadata.media import read_label
    from vvfs.io.filedev import FileDevice

    with FileDevice(tank[1]) as dev:
        label, _ = read_label(dev)
        newer = fmt.Label(label.pool_uuid, label.device_uuid, label.geometry, label.created,
                          frozenset({"thin-volumes"}))
        for off in label.geometry.label_offsets:
            dev.pwrite(newer.pack(), off)
    pools = vv("scan", str(tmp_path), "--json").json()["pools"]
    assert any("thin-volumes" in " ".join(p["problems"]) for p in pools)
    r = vv("volume", "create", "tank/a", "--size", "4M")
    assert r.code == 1 and "thin-volumes" in r.err


# ---------------------------------------------------------------------------
# messages that say what is wrong (issue 11, item 18)


def test_a_rename_to_a_path_says_the_name_is_invalid(tank, vv):
    assert vv("volume", "create", "tank/a", "--size", "4M").code == 0
    before = generation(vv)
    r = vv("volume", "rename", "tank/a", "../x")
    assert r.code == 1
    assert "invalid volume name '../x'" in r.err and "another pool" not in r.err
    assert generation(vv) == before


def test_a_rename_into_another_pool_names_that_pool(tank, vv):
    assert vv("volume", "create", "tank/a", "--size", "4M").code == 0
    r = vv("volume", "rename", "tank/a", "other/a")
    assert r.code == 1 and "cannot be renamed into another pool (other)" in r.err


def test_a_device_named_twice_is_named(tmp_path, vv):
    dev = devices(tmp_path, 1)[0]
    alias = tmp_path / "alias.img"
    alias.symlink_to(dev)
    r = vv("pool", "create", "tank", dev, str(alias))
    assert r.code == 1
    assert f"a device is named twice: {dev} and {alias} (both {dev})" in r.err
    r = vv("pool", "create", "tank", dev, dev)
    assert r.code == 1 and f"a device is named twice: {dev}" in r.err


def test_an_empty_catalog_says_what_the_search_paths_hold(tank, vv, tmp_path):
    for name in os.listdir(tmp_path / "state"):
        if name.startswith("catalog.sqlite"):
            os.unlink(tmp_path / "state" / name)
    r = vv("pool", "list")
    assert r.code == 0
    assert "the search paths hold tank of this host: run 'vv catalog rebuild'" in r.err
    assert vv("catalog", "rebuild").code == 0
    r = vv("pool", "list")
    assert "tank" in r.out and r.err == ""


def test_failing_the_only_copy_of_a_volume_asks_for_yes(tank, vv):
    assert vv("volume", "create", "tank/lin", "--size", "4M", "--on", "d0").code == 0
    before = generation(vv)
    r = vv("device", "fail", "tank", "d0")
    assert r.code == 1
    assert "device d0 holds the only copy of volumes lin" in r.err and "--yes" in r.err
    assert generation(vv) == before
    r = vv("device", "fail", "tank", "d0", "--yes")
    assert r.code == 0 and "failed" in r.out


def test_failing_one_leg_of_a_mirror_needs_no_yes(tank, vv):
    assert vv("volume", "create", "tank/m", "--size", "4M", "--mirrors", "2").code == 0
    leg = vv("volume", "show", "tank/m", "--json").json()["segments"][0]["areas"][0][0]["device"]
    name = next(d["name"] for d in vv("pool", "show", "tank", "--json").json()["devices"]
                if d["uuid"] == leg)
    r = vv("device", "fail", "tank", name)
    assert r.code == 0, r.err
