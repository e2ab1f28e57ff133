"""The vvfsck command line: usage, exit status, locking, --dump, --rollback, the man page."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import yaml

import mapper
import vvfsck as fsck
from metadata import format as fmt
from vvfs.state import StateDir

from ..support.fsck_support import (
    copy_sparse,
    label_of,
    media_choice,
    sparse,
    vvfsck,
)
from ..support.util import flip

MAN = Path(__file__).resolve().parents[2] / "man" / "vvfsck.8"


@pytest.mark.parametrize("args", [
    [],                                   # neither DEVICEs nor --pool
    ["--pool", "tank", "/dev/null"],      # both
    ["--yes", "/dev/null"],               # --yes without --repair
    ["--dump", "--repair", "/dev/null"],
    ["--rollback", "x", "/dev/null"],     # not a number
    ["--no-such-option"],
])
def test_usage_errors_exit_4(args):
    run = vvfsck(*args)
    assert run.rc == fsck.EXIT_OPERATIONAL
    assert "Error:" in run.err
    assert "Traceback" not in run.err


def test_help_exits_0():
    run = vvfsck("--help")
    assert run.rc == 0 and "--rollback GEN" in run.out


def test_device_that_cannot_be_opened_exits_4(tmp_path):
    run = vvfsck(tmp_path / "nope")
    assert run.rc == fsck.EXIT_OPERATIONAL
    assert run.err.startswith(f"vvfsck: {tmp_path / 'nope'} at byte 0: cannot open")


def test_unknown_pool_exits_4(env):
    run = vvfsck("--pool", "nosuch", "--state-dir", env.state)
    assert run.rc == fsck.EXIT_OPERATIONAL
    assert "no pool 'nosuch'" in run.err


def test_pool_mode_needs_a_state_directory(tmp_path):
    run = vvfsck("--pool", "tank", "--state-dir", tmp_path / "none")
    assert run.rc == fsck.EXIT_OPERATIONAL
    assert "no vvfs state directory" in run.err
    assert not (tmp_path / "none").exists()


def test_refuses_a_pool_a_node_has_open(env):
    with StateDir(env.state).locked("vv mount"):
        run = env.check()
    assert run.rc == fsck.EXIT_OPERATIONAL
    assert "locked by vv mount" in run.err
    assert "a running node (or a vv command) has the pool open" in run.err


def test_devices_by_path(env):
    run = vvfsck(*env.paths)
    assert run.rc == fsck.EXIT_CLEAN


def test_devices_by_directory(env):
    assert vvfsck(env.root / "devs").rc == fsck.EXIT_CLEAN


def test_a_file_that_is_no_vvfs_device_is_a_finding(env):
    other = sparse(env.root / "plain", 1 << 20)
    run = vvfsck(*env.paths, other)
    assert run.rc == fsck.EXIT_LEFT
    assert f"{other} at byte 4096: no vvfs label or metadata area header" in run.out


def test_repair_without_terminal_or_yes_changes_nothing(env):
    flip(env.paths[0], fmt.LABEL_A_OFFSET + 100)
    run = env.check("--repair")
    assert run.rc == fsck.EXIT_LEFT
    assert "not repairing: no terminal to ask on (add --yes)" in run.err
    assert env.check().rc == fsck.EXIT_FOUND


def test_exit_1_when_all_repairable_2_when_not(env):
    flip(env.paths[0], fmt.LABEL_A_OFFSET + 100)
    assert env.check().rc == fsck.EXIT_FOUND
    clone = str(env.root / "devs" / "clone")
    copy_sparse(env.paths[1], clone)
    run = env.check()
    assert run.rc == fsck.EXIT_LEFT
    assert "2 findings, 1 repairable, 1 for the administrator" in run.out


def test_dump_lists_every_generation_of_every_device(env):
    run = env.check("--dump")
    assert run.rc == 0
    doc = yaml.safe_load(run.out)
    [pool] = doc["pools"]
    assert pool["name"] == "tank" and pool["opens at"] == 3
    assert [d["path"] for d in pool["devices"]] == env.paths
    gens = pool["devices"][0]["generations"]
    assert [g["generation"] for g in gens] == [3, 2, 1]
    assert gens[0]["copies"] == ["A", "B"] and gens[0]["committed"] is True
    assert re.fullmatch(r"[0-9a-f]{64}", gens[0]["digest"])
    assert gens[0]["time"].endswith("UTC")


def test_dump_shows_damaged_copies(env):
    g = label_of(env.paths[0]).geometry
    flip(env.paths[0], fmt.slot_offset(g, 1, 3) + fmt.SLOT_HEADER_SIZE + 1)
    doc = yaml.safe_load(vvfsck("--dump", *env.paths).out)
    top = doc["pools"][0]["devices"][0]["generations"][0]
    assert top["copies"] == ["A"] and top["damaged copies"] == ["B"]


def test_rollback_restores_an_older_generation(env):
    run = env.check("--rollback", "1", "--yes")
    assert run.rc == fsck.EXIT_CLEAN, run.out + run.err
    assert "the configuration of generation 1 is now generation 4" in run.out
    pool = env.media_pool()
    assert pool.generation == 4 and pool.volumes == []
    with env.manager() as mgr:
        assert mgr.list_volumes("tank") == []


def test_rollback_needs_confirmation(env):
    run = env.check("--rollback", "1")
    assert run.rc == fsck.EXIT_OPERATIONAL
    assert "not confirmed" in run.err
    assert env.media_pool().generation == 3


def test_rollback_of_an_unknown_generation(env):
    run = env.check("--rollback", "42", "--yes")
    assert run.rc == fsck.EXIT_OPERATIONAL
    assert "no readable copy of generation 42" in run.err


def test_rollback_makes_a_pool_without_complete_generation_open(env):
    with env.manager() as mgr:
        mgr.create_volume("tank/more", mapper.VolumeSpec(name="", size=1 << 20))
    for p in env.paths:  # generation 4 damaged on every device
        g = label_of(p).geometry
        for copy in (0, 1):
            flip(p, fmt.slot_offset(g, copy, 4) + fmt.SLOT_HEADER_SIZE + 1)
    assert media_choice(env.paths).generation == 3
    run = env.check("--rollback", "3", "--yes")
    assert run.rc == fsck.EXIT_FOUND  # the damaged copies of 4 are reported afterwards
    assert media_choice(env.paths).generation == 5


# -- the man page ------------------------------------------------------------


def test_man_page_carries_the_real_help_text():
    page = MAN.read_text()
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "CHECKS", "EXIT STATUS",
                    "EXAMPLES"):
        assert f".SH {section}" in page
    help_text = vvfsck("--help").out
    flat = " ".join(page.replace("\\-", "-").split())
    for line in help_text.splitlines():
        assert " ".join(line.split()) in flat, line


def test_man_page_documents_every_check():
    page = MAN.read_text().replace("\\-", "-").replace("\\_", "_")
    for check in fsck.CHECKS:
        assert check.__name__ in page, check.__name__


class Terminal(io.StringIO):
    """A standard input that says it is a terminal, with the answers typed in advance."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("answer", "rc"), [("y\n", fsck.EXIT_FOUND), ("n\n", fsck.EXIT_LEFT)])
def test_repair_asks_on_a_terminal(env, monkeypatch, answer, rc):
    flip(env.paths[0], fmt.LABEL_A_OFFSET + 100)
    monkeypatch.setattr("sys.stdin", Terminal(answer))
    run = env.check("--repair")
    assert run.rc == rc
    assert "repair 1 finding? [y/N]" in run.out
    assert env.check().rc == (fsck.EXIT_CLEAN if rc == fsck.EXIT_FOUND else fsck.EXIT_FOUND)
