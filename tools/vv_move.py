"""`vv volume move`, `vv device evacuate`, `vv volume scrub`: moving and checking data online.

The work runs in the node (vvfs/node/jobs.py, vvfs/node/scrub.py); these commands
start it and, with ``--wait`` (always for scrub), follow it by polling the
node: a progress bar on a terminal, a line every few seconds otherwise.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from mapper.units import human_size

from .common import SIZE, QuietError, json_option, pass_manager, print_json

POLL = 0.3
LOG_EVERY = 5.0


class _Progress:
    """One status line, redrawn in place on a terminal, printed now and then otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.drawn = False

    def show(self, fraction: float, text: str) -> None:
        now = time.monotonic()
        if self.tty:
            width = 30
            full = int(width * max(0.0, min(1.0, fraction)))
            line = f"[{'#' * full}{'.' * (width - full)}] {fraction * 100:5.1f}% {text}"
            click.echo(f"\r\x1b[K{line}", nl=False, err=True)
            self.drawn = True
        elif now - self.last >= LOG_EVERY:
            click.echo(f"{fraction * 100:5.1f}% {text}", err=True)
            self.last = now

    def end(self) -> None:
        if self.drawn:
            click.echo("\r\x1b[K", nl=False, err=True)
            self.drawn = False


def _rate(st: dict[str, Any]) -> str:
    parts = []
    if st.get("rate"):
        parts.append(f"{human_size(int(st['rate']))}/s")
    if st.get("eta") is not None:
        parts.append(f"ETA {int(st['eta'])}s")
    return "  ".join(parts)


def follow_move(mgr: Any, pool_name: str, first: dict[str, Any]) -> dict[str, Any]:
    """Poll the pool's move until it is done; raise QuietError if it fails or stops."""
    bar = _Progress()
    op_id, what, total = first.get("id"), first.get("what", "move"), first.get("total", 0)
    try:
        while True:
            st = mgr.move_status(pool_name)
            if not st or st.get("id") != op_id or st.get("state") == "done":
                return st or first
            state = st.get("state")
            if state in ("failed", "stopped"):
                raise QuietError(f"move of {what} {state}: {st.get('error') or 'stopped'};"
                                 f" the record stays: remount to resume, or abort with"
                                 f" vv volume move ... --abort")
            if state == "verifying":
                done, text = st.get("verified", 0), "verifying copied extents"
            else:
                done, text = st.get("copied", 0), f"{state}"
            if st.get("paused"):
                text += f" (paused: {st['paused']})"
            bar.show(done / total if total else 1.0,
                     f"{done}/{total} extents  {text}  {_rate(st)}".rstrip())
            time.sleep(POLL)
    finally:
        bar.end()


def _started(st: dict[str, Any]) -> str:
    esize = st.get("extent_size", 0)
    return (f"move {st.get('id')}: {st.get('what')}, {st.get('total')} extents"
            f" ({human_size(st.get('total', 0) * esize)})")


# ---------------------------------------------------------------------------
# commands


@click.command("move")
@click.argument("path", metavar="POOL/VOL")
@click.option("--to", "to", metavar="DEV", help="Device to move the extents to.")
@click.option("--from", "from_", metavar="DEV",
              help="Move only the extents on this device (needed for a mirror leg or a"
                   " stripe column).")
@click.option("--abort", is_flag=True,
              help="Stop the volume's move in progress; everything stays where it was.")
@click.option("--wait", is_flag=True, help="Follow the move until it is done, with progress.")
@click.option("--rate", type=SIZE, default="0", show_default=True,
              help="Copy at most this many bytes per second (0: no limit).")
@json_option
@pass_manager
def volume_move(mgr: Any, path: str, to: str | None, from_: str | None, abort: bool,
                wait: bool, rate: int, as_json: bool) -> None:
    """Move a volume's extents to another device, online.

    Writes go on during the move; the map switches to DEV in one commit when
    every extent is copied.  A move interrupted by a crash resumes from its
    last checkpoint when the pool is mounted again.  Without --wait the
    command returns once the move is recorded; run it again with only
    --wait to follow it.
    """
    pool_name = path.partition("/")[0]
    if abort:
        st = mgr.move_volume(path, abort=True)
        if as_json:
            return print_json(st)
        click.echo(f"aborted move {st.get('id')} ({st.get('what')}) at {st.get('copied')} of"
                   f" {st.get('total')} extents; the volume's map is unchanged")
        return
    if to is None:
        if not wait:
            raise click.UsageError("give --to DEV (or --abort, or --wait to follow a move)")
        st = mgr.move_status(pool_name)
        if not st:
            raise QuietError(f"no move in progress in pool {pool_name}")
    else:
        st = mgr.move_volume(path, to, from_, rate=rate)
        if not as_json:
            click.echo(_started(st))
    if wait:
        st = follow_move(mgr, pool_name, st)
        if not as_json:
            click.echo(f"move {st.get('id')} done: {st.get('what')}")
    if as_json:
        print_json(st)


@click.command("evacuate")
@click.argument("pool_name", metavar="POOL")
@click.argument("key", metavar="DEV")
@click.option("--wait", is_flag=True, help="Follow the evacuation until it is done.")
@click.option("--rate", type=SIZE, default="0", show_default=True,
              help="Copy at most this many bytes per second (0: no limit).")
@json_option
@pass_manager
def device_evacuate(mgr: Any, pool_name: str, key: str, wait: bool, rate: int,
                    as_json: bool) -> None:
    """Move every extent off DEV to the pool's other devices, online.

    Each area goes whole to a device that holds no other leg or stripe of
    its segment, the one with the most free space first.
    """
    st = mgr.evacuate_device(pool_name, key, rate=rate)
    if not as_json:
        click.echo(_started(st))
    if wait:
        st = follow_move(mgr, pool_name, st)
        if not as_json:
            click.echo(f"evacuated {key}: {st.get('what')} done")
    if as_json:
        print_json(st)


def evacuate_then(mgr: Any, pool_name: str, key: str) -> None:
    """For `vv device remove`: move DEV's extents off first (and wait), if it holds any."""
    pool, _paths, usage = mgr.list_devices(pool_name)
    dev = pool.device(key)
    if usage[dev.uuid].used == 0:
        return
    st = mgr.evacuate_device(pool_name, key)
    click.echo(f"{dev.name} holds data: " + _started(st), err=True)
    follow_move(mgr, pool_name, st)
    click.echo(f"evacuated {dev.name}", err=True)


def _finding(f: dict[str, Any]) -> str:
    what = {"data": "data differs", "checksum": "checksum entry is wrong",
            "read error": "cannot be read"}.get(f["problem"], f["problem"])
    right = ("" if f.get("right_leg") is None or f["problem"] == "checksum"
             else f"; right copy: leg {f['right_leg']}")
    done = "repaired" if f.get("repaired") else "not repaired"
    return (f"{f['volume']}: leg {f['leg']} on {f['device']} ({f.get('path') or '?'}):"
            f" {what} at volume byte {f['offset']} ({f['length']} bytes, device byte"
            f" {f['device_offset']}){right} ({f['reason']}) -- {done}")


@click.command("scrub")
@click.argument("path", metavar="POOL/VOL")
@click.option("--repair", is_flag=True,
              help="Rewrite bad copies from the right one and fix wrong checksum entries.")
@click.option("--no-wait", is_flag=True, help="Start the scrub and return.")
@json_option
@pass_manager
def volume_scrub(mgr: Any, path: str, repair: bool, no_wait: bool, as_json: bool) -> None:
    """Compare a volume's legs and checksums; say which copy is right.

    Reads every block of every leg of POOL/VOL and compares the legs with
    each other and with the stored block checksums; --repair rewrites bad
    copies from the right one.  Runs in the node, online.  Exit status 1 when problems are left
    unrepaired.
    """
    st = mgr.scrub_volume(path, repair=repair)
    if no_wait:
        if as_json:
            return print_json(st)
        click.echo(f"scrub of {path} started")
        return
    bar = _Progress()
    try:
        while st.get("state") in ("starting", "running"):
            total = st.get("total") or 1
            bar.show(st.get("done", 0) / total,
                     f"{human_size(st.get('done', 0))} of {human_size(total)}")
            time.sleep(POLL)
            st = mgr.scrub_status(path)
    finally:
        bar.end()
    if as_json:
        print_json(st)
    else:
        for f in st.get("findings", []):
            click.echo(_finding(f))
        problems = st["data_errors"] + st["checksum_errors"] + st["read_errors"]
        click.echo(f"scrub of {path} {st['state']}: {human_size(st['total'])} x {st['legs']}"
                   f" legs, checksums {'on' if st.get('checksums') else 'off'};"
                   f" {st['data_errors']} blocks of data differ, {st['checksum_errors']}"
                   f" checksum entries wrong, {st['read_errors']} read errors;"
                   f" {st['repaired']} repaired" + ("" if problems else " (clean)"))
    if st.get("state") != "done":
        raise QuietError(f"scrub of {path} {st.get('state')}: {st.get('error') or ''}".rstrip())
    left = st["data_errors"] + st["checksum_errors"] + st["read_errors"] - st["repaired"]
    if left > 0:
        sys.exit(1)
