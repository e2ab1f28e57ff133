"""What a check hands to :meth:`vvfsck.checker.Checker.report`, and how it reads.

A :class:`Finding` names the device and byte offset, what is wrong, and
either the repair (a closure, or an edit of the pool committed with the other
edits of its stage) or what the administrator must do instead.  The stage
numbers order the repairs (see the :mod:`vvfsck` package docstring); the exit
statuses are those of ``man/vvfsck.8``.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field

from metadata.model import Pool

EXIT_CLEAN = 0  #: nothing found
EXIT_FOUND = 1  #: errors found, all repaired (or all repairable, without --repair)
EXIT_LEFT = 2  #: errors left on the media
EXIT_OPERATIONAL = 4  #: usage or operational error (locked, no such pool, ...)

#: the stage a finding is repaired at (lowest first, everything read again between)
STAGE_LABELS = 0
STAGE_METADATA = 1
STAGE_CONFIG = 2
STAGE_CATALOG = 3


@dataclass
class Finding:
    """One problem: where it is, what it is, and how it is (or is not) repaired."""

    check: str
    where: str
    offset: int | None
    message: str
    fix: str | None = None
    advice: str | None = None
    stage: int = STAGE_METADATA
    repair: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    edit: Callable[[Pool], None] | None = field(default=None, repr=False, compare=False)
    pool: str = ""
    #: not a problem but work the next mount finishes (a resync record): reported,
    #: never repaired, and left out of the exit status and of the finding counts
    pending: bool = False

    @property
    def repairable(self) -> bool:
        return self.repair is not None or self.edit is not None

    @property
    def key(self) -> tuple[str, str, int | None, str]:
        return (self.check, self.where, self.offset, self.message)

    def place(self) -> str:
        return self.where if self.offset is None else f"{self.where} at byte {self.offset}"

    def line(self) -> str:
        if self.repairable:
            tail = f" [repair: {self.fix}]"
        elif self.pending:
            tail = f" [nothing to repair: {self.advice}]"
        elif self.advice:
            tail = f" [no repair: {self.advice}]"
        else:
            tail = ""
        return f"{self.place()}: {self.message}{tail}"


def place_of(key: tuple[str, str, int | None, str]) -> str:
    """:meth:`Finding.place` and message of a finding known by its key only."""
    _check, where, offset, message = key
    return f"{where}{'' if offset is None else f' at byte {offset}'}: {message}"


def found_text(findings: list[Finding]) -> str:
    """How a pool stands after a report-only run, from its problems."""
    if not findings:
        return "clean"
    fixable = sum(f.repairable for f in findings)
    if fixable == len(findings):
        return f"{plural(len(findings), 'finding')}, all repairable: run vvfsck --repair"
    return (f"{plural(len(findings), 'finding')}, {fixable} repairable,"
            f" {len(findings) - fixable} for the administrator")


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def format_time(t: float) -> str:
    """A time of the media (seconds since the epoch) as findings and --dump print it."""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
