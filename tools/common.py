"""What every vvfs command line shares: exit codes, errors, options, output.

A user mistake or a refused request prints ONE line on stderr, prefixed by
the program name, and exits with a documented status; no traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from mapper.units import SizeError, parse_size
from vvfs.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, VVError  # noqa: F401 (EXIT_USAGE for tools)

F = TypeVar("F", bound=Callable[..., Any])


class QuietError(Exception):
    """An error to show as one line, with an exit status."""

    def __init__(self, msg: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(msg)
        self.exit_code = exit_code


def exit_code_for(exc: BaseException) -> int:
    """The exit status for *exc*: its class says it (see :mod:`vvfs.errors`)."""
    return exc.exit_code if isinstance(exc, VVError) else EXIT_FAILED


def run_cli(group: click.Group, prog: str) -> None:
    """Run a click group, turning vvfs errors into one line and an exit status."""
    try:
        group.main(prog_name=prog, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo(f"{prog}: aborted", err=True)
        sys.exit(EXIT_FAILED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except QuietError as exc:
        click.echo(f"{prog}: {exc}", err=True)
        sys.exit(exc.exit_code)
    except VVError as exc:
        click.echo(f"{prog}: {exc}", err=True)
        sys.exit(exit_code_for(exc))
    except KeyboardInterrupt:
        click.echo(f"{prog}: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(EXIT_OK)
    sys.exit(EXIT_OK)


class SizeParam(click.ParamType):
    """A size with an optional K/M/G/T suffix (binary multiples)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except SizeError as exc:
            self.fail(str(exc), param, ctx)


SIZE = SizeParam()


class ModeParam(click.ParamType):
    """An octal file mode from 0 to 7777 (setuid, setgid, sticky need --special-bits)."""

    name = "mode"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            mode = int(str(value), 8)
        except ValueError:
            self.fail(f"{value!r} is not an octal mode", param, ctx)
        if not 0 <= mode <= 0o7777:
            self.fail(f"{value!r} is not a file mode (0 to 7777)", param, ctx)
        return mode


MODE = ModeParam()
#: uids and gids a volume file may have (2**32 - 1 means "unchanged" to chown).
ID = click.IntRange(0, (1 << 32) - 2)


def state_dir_option(f: F) -> F:
    return click.option(
        "--state-dir", envvar="VVFS_STATE_DIR", default=None, metavar="DIR",
        help="Host state directory [env VVFS_STATE_DIR; default /var/lib/vvfs].",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def print_table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    """Columns padded to their widest cell; the header bold on a terminal."""
    cells = [[str(x) for x in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = []
    if title:
        lines.append(title)
    header = "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()
    lines.append(click.style(header, bold=True) if sys.stdout.isatty() else header)
    lines.extend("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in cells)
    click.echo("\n".join(lines))


def setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def pass_manager(f: F) -> F:
    """Give the command a Manager for --state-dir, closed afterwards.

    When a node runs on the state directory this is a vvfs.node.client.ManagerProxy
    whose calls go through the node's admin socket; else a vvfs.api.Manager
    working on the media directly.
    """

    @state_dir_option
    @functools.wraps(f)
    def wrapper(*args: Any, state_dir: str | None, **kwargs: Any) -> Any:
        from vvfs.node.client import open_manager

        with open_manager(state_dir) as mgr:
            return f(mgr, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
