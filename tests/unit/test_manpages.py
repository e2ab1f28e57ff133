"""The man pages in man/: they exist, render cleanly and keep up with the code.

Rendering uses groff (Debian package groff-base); without it these tests
fail, naming the package, rather than skip.  The content checks compare
each page with the code it documents: every `vv` command and option (from
click, recursively), and every structure and constant of the on-media
format (from metadata/format.py), so that neither page can silently fall
behind.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import click
import pytest

from metadata import format as fmt

MAN = Path(__file__).resolve().parents[2] / "man"
#: The pages that must exist; any other page in man/ is checked for rendering too.
REQUIRED = ["vvfs.5", "vv.8", "mount.vvfs.8"]
PAGES = sorted(set(REQUIRED) | {p.name for p in MAN.glob("*.[1-8]")})
#: Widest rendered line allowed: examples must fit an 80-column terminal.
MAX_WIDTH = 80

# -- helpers -------------------------------------------------------------------


def groff() -> str:
    path = shutil.which("groff")
    if path is None:
        pytest.fail("groff not found: install the Debian package groff-base")
    return path


def preprocessors(page: Path) -> list[str]:
    """groff flags for the preprocessors a page asks for in its first line ('\\" t)."""
    first = page.read_text(encoding="utf-8").split("\n", 1)[0]
    match = re.match(r"""^'\\" ([a-z]+)""", first)
    flags = {"t": "-t", "e": "-e", "p": "-p", "r": "-R", "g": "-g"}
    return [flags[c] for c in match.group(1) if c in flags] if match else []


def render(page: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [groff(), "-man", "-Tutf8", *preprocessors(page), *extra, str(page)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def plain(page: Path) -> str:
    """The page's source with roff markup stripped, one source line per line.

    ``\\fBvv pool create\\fR`` and ``.SS "vv pool create"`` both become
    ``vv pool create``; ``\\-\\-size`` becomes ``--size``; tbl's ``|``
    separators are kept.
    """
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"\\f(\[[^\]]*\]|\(..|.)", "", text)  # font changes
    text = text.replace("\\-", "-").replace("\\&", "").replace("\\e", "\\")
    text = re.sub(r"\\\(..", " ", text)  # special characters: \(em, \(mu ...
    text = re.sub(r"^[.'][A-Za-z]+[ \t]*", "", text, flags=re.MULTILINE)  # macro names
    return text.replace('"', "")


def mentions(text: str, word: str) -> bool:
    """True when *word* appears in *text* not as part of a longer name."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def commands(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
    """Every command that `PREFIX --help` shows, recursively: [("vv pool create", cmd), ...]."""
    out: list[tuple[str, click.Command]] = [(prefix, group)]
    ctx = click.Context(group, info_name=prefix.rsplit(" ", 1)[-1])
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        path = f"{prefix} {name}"
        if isinstance(cmd, click.Group):
            out.extend(commands(cmd, path))
        else:
            out.append((path, cmd))
    return out


def vv_commands() -> list[tuple[str, click.Command]]:
    from tools.vv import cli

    return commands(cli, "vv")


def field_offsets(st: struct.Struct) -> list[int]:
    """Byte offset of every field of a little-endian, unpadded struct."""
    offsets, at = [], 0
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", st.format.lstrip("<")):
        if code in "sp":
            size, n = int(count or 1), 1
        else:
            size, n = struct.calcsize("<" + code), int(count or 1)
        for _ in range(n):
            offsets.append(at)
            at += size
    return offsets


def table_offsets(page: Path, magic: bytes) -> list[int]:
    """The Off column of the page's tbl table whose first row is *magic*."""
    text = page.read_text(encoding="utf-8")
    for table in re.findall(r"^\.TS\n(.*?)^\.TE$", text, flags=re.MULTILINE | re.DOTALL):
        if f"{magic.decode()} (ASCII)" in table:
            return [int(row.split("|", 1)[0]) for row in table.splitlines()
                    if re.match(r"^\d+\|", row)]
    pytest.fail(f"man/vvfs.5: no field table for {magic.decode()}")


# -- every page ----------------------------------------------------------------


@pytest.mark.parametrize("name", REQUIRED)
def test_page_exists(name: str) -> None:
    assert (MAN / name).is_file(), f"man/{name} is missing"


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_without_warnings(name: str) -> None:
    result = render(MAN / name, "-ww", "-z")
    assert result.returncode == 0 and result.stderr == "", (
        f"groff -man -ww on man/{name}:\n{result.stderr}"
    )


@pytest.mark.parametrize("name", PAGES)
def test_page_fits_80_columns(name: str) -> None:
    result = render(MAN / name, "-P-cbou")
    assert result.returncode == 0, result.stderr
    wide = [line for line in result.stdout.splitlines() if len(line.expandtabs()) > MAX_WIDTH]
    assert not wide, (
        f"man/{name}: rendered lines wider than {MAX_WIDTH} columns (shorten them, or drop the"
        " .RS around an .EX block):\n" + "\n".join(wide)
    )


@pytest.mark.parametrize("name", PAGES)
def test_page_has_name_and_see_also(name: str) -> None:
    text = (MAN / name).read_text(encoding="utf-8")
    for section in (".SH NAME", ".SH SEE ALSO"):
        assert section in text, f"man/{name}: no {section[4:]} section"


@pytest.mark.parametrize("name", [p for p in PAGES if p.endswith(".8")])
def test_tool_page_has_exit_status(name: str) -> None:
    text = (MAN / name).read_text(encoding="utf-8")
    assert re.search(r'^\.SH "?EXIT STATUS"?$', text, flags=re.MULTILINE), (
        f"man/{name}: no EXIT STATUS section (STYLE.md item 12)"
    )


# -- vv.8 against tools.vv.cli ---------------------------------------------------


def test_vv_page_names_every_command() -> None:
    text = plain(MAN / "vv.8")
    missing = [path for path, _cmd in vv_commands() if not mentions(text, path)]
    assert not missing, "man/vv.8 does not mention: " + ", ".join(missing)


def test_vv_page_names_every_option() -> None:
    """Every long option (or the short one, when it has no long one)."""
    text = plain(MAN / "vv.8")
    missing = []
    for path, cmd in vv_commands():
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden:
                names = [o for o in param.opts if o.startswith("--")] or param.opts
                missing.extend(f"{path} {o}" for o in names if not mentions(text, o))
    assert not missing, "man/vv.8 does not mention: " + ", ".join(missing)


def test_vv_page_documents_every_exit_status() -> None:
    from tools import common

    raw = (MAN / "vv.8").read_text(encoding="utf-8")
    section = re.split(r'^\.SH "?EXIT STATUS"?$', raw, flags=re.MULTILINE)[-1]
    section = section.split("\n.SH ", 1)[0]
    section = re.sub(r"^\.B ", "", section, flags=re.MULTILINE)
    codes = {name: value for name, value in vars(common).items()
             if name.startswith("EXIT_") and isinstance(value, int)}
    missing = [f"{name} = {value}" for name, value in codes.items()
               if not re.search(rf"^{value}\b", section, flags=re.MULTILINE)]
    assert not missing, "man/vv.8 EXIT STATUS lacks: " + ", ".join(missing)


# -- mount.vvfs.8 against tools/mount_vvfs.py and its options (tools/vv_mount.py) --


def test_mount_page_carries_usage() -> None:
    """The helper's real usage line (what -h prints) is on the page."""
    from tools.mount_vvfs import USAGE

    text = " ".join(plain(MAN / "mount.vvfs.8").split())
    assert " ".join(USAGE.split()) in text, f"man/mount.vvfs.8 lacks the usage: {USAGE}"


def test_mount_page_options_are_accepted() -> None:
    """Every -o option the page's OPTIONS list gives is one the parser takes."""
    from tools.vv_mount import parse_options

    text = (MAN / "mount.vvfs.8").read_text(encoding="utf-8")
    section = text.split(".SH OPTIONS", 1)[1].split(".SH ", 1)[0]
    items = re.findall(r"^\.TP.*\n\.BI? (\S+)(?: (\S+))?$", section, flags=re.MULTILINE)
    words = [(key + arg.replace("N", "4").replace("DIR", "/tmp")).replace("\\-", "-")
             for key, arg in items if not key.startswith("\\-")]  # not the -f, -v flags
    assert len(words) >= 5, f"mount.vvfs.8 OPTIONS lists only {words}"
    for word in words:
        parse_options(word)  # raises QuietError on an option it does not take


def test_mount_page_names_every_ignored_option() -> None:
    from tools.vv_mount import IGNORED_OPTIONS, IGNORED_PREFIXES

    text = plain(MAN / "mount.vvfs.8")
    missing = [o for o in sorted(IGNORED_OPTIONS) if not mentions(text, o)]
    missing += [p for p in IGNORED_PREFIXES if p not in text]
    assert not missing, "man/mount.vvfs.8 does not mention: " + ", ".join(missing)


# -- vvfs.5 against metadata/format.py ---------------------------------------------


@pytest.mark.parametrize("magic", [fmt.LABEL_MAGIC, fmt.AREA_MAGIC, fmt.SLOT_MAGIC,
                                   fmt.COMMIT_MAGIC])
def test_vvfs5_names_magic(magic: bytes) -> None:
    assert mentions(plain(MAN / "vvfs.5"), magic.decode()), f"man/vvfs.5 lacks {magic!r}"


@pytest.mark.parametrize("name", ["LABEL_A_OFFSET", "MDA_A_OFFSET", "COMMIT_RING_OFFSET",
                                  "SLOTS_OFFSET"])
def test_vvfs5_gives_offset(name: str) -> None:
    value = getattr(fmt, name)
    rows = [r for r in plain(MAN / "vvfs.5").splitlines() if r.startswith(f"{name}|")]
    assert rows and rows[0].split("|")[1] == str(value), (
        f"man/vvfs.5 CONSTANTS must list {name}|{value}"
    )


def test_vvfs5_lists_every_format_constant() -> None:
    """A constant added to metadata/format.py must be added to CONSTANTS in vvfs.5."""
    rows = {r.split("|")[0]: r.split("|")[1] for r in plain(MAN / "vvfs.5").splitlines()
            if re.match(r"^[A-Z][A-Z0-9_]*\|", r)}
    wrong = []
    for name, value in vars(fmt).items():
        if not re.match(r"^[A-Z][A-Z0-9_]*$", name) or not isinstance(value, (int, bytes)):
            continue
        shown = value.decode() if isinstance(value, bytes) else str(value)
        if rows.get(name) != shown:
            wrong.append(f"{name}|{shown} (page: {rows.get(name)})")
    assert not wrong, "man/vvfs.5 CONSTANTS table is out of date: " + ", ".join(wrong)


@pytest.mark.parametrize(
    ("st", "magic", "size"),
    [(fmt.LABEL, fmt.LABEL_MAGIC, fmt.LABEL_SIZE),
     (fmt.AREA_HEADER, fmt.AREA_MAGIC, fmt.AREA_HEADER_SIZE),
     (fmt.SLOT_HEADER, fmt.SLOT_MAGIC, fmt.SLOT_HEADER_SIZE),
     (fmt.COMMIT, fmt.COMMIT_MAGIC, fmt.SECTOR)],
    ids=["label", "area-header", "slot-header", "commit-record"],
)
def test_vvfs5_field_offsets_match_struct(st: struct.Struct, magic: bytes, size: int) -> None:
    """Each field table lists the struct's fields, the zero fill, then the SHA-256."""
    expected = field_offsets(st) + [st.size, size - 32]
    assert table_offsets(MAN / "vvfs.5", magic) == expected
