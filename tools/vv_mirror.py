"""`vv events`, `vv device online|resync|replace|fail|paths`, `vv volume set`.

Failures, resyncs and replacements of mirrored devices (vvfs/control/mirrors.py, vvfs/node/mirrors.py).
With a running node the work runs there: these commands start it and, with
``--wait``, follow it by polling the node (a rich progress bar on a
terminal, a line every few seconds otherwise).  Without a node they do the
work themselves, under the state directory's lock, showing the same bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Self

import click

from mapper.units import human_size
from metadata.model import READ_POLICIES

from .common import SIZE, QuietError, json_option, pass_manager, print_json, print_table

POLL = 0.5
LOG_EVERY = 5.0
#: Seconds to wait for a queued resync to show up in the node before giving up.
QUEUE_TIMEOUT = 60.0


# ---------------------------------------------------------------------------
# progress


class ResyncBar:
    """A rich progress bar on a terminal (stderr), else a line every few seconds."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.tty = sys.stderr.isatty()
        self._progress: Any = None
        self._task: Any = None
        self._last = 0.0

    def __enter__(self) -> Self:
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      DownloadColumn(binary_units=True), TransferSpeedColumn(),
                                      TimeRemainingColumn(), console=Console(stderr=True),
                                      transient=False)
            self._progress.start()
            self._task = self._progress.add_task(self.what, total=None)
        return self

    def update(self, job: dict[str, Any]) -> None:
        total, done = int(job.get("bytes_total") or 0), int(job.get("bytes_done") or 0)
        if self._progress is not None:
            self._progress.update(self._task, total=total or None, completed=done,
                                  description=f"{self.what} ({job.get('state', '?')})")
        elif (total or job.get("state") == "done") and time.monotonic() - self._last >= LOG_EVERY:
            self._last = time.monotonic()
            pct = f"{100 * done / total:5.1f}%" if total else "  ...."
            click.echo(f"{pct} {self.what}: {human_size(done)} of {human_size(total)}",
                       err=True)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _is_proxy(mgr: Any) -> bool:
    return hasattr(mgr, "client")


@contextmanager
def _offline_bar(mgr: Any, what: str, wait: bool) -> Iterator[None]:
    """Offline, the call does the work: show its progress while it runs."""
    if _is_proxy(mgr) or not wait:
        yield
        return
    with ResyncBar(what) as bar:
        mgr.progress = bar.update
        try:
            yield
        finally:
            mgr.progress = None


def _follow(mgr: Any, pool_name: str, device: str | None, since: float, what: str
            ) -> dict[str, Any]:
    """Poll the node until the resync of *device* (or the pool's manual one) ends."""
    deadline = time.monotonic() + QUEUE_TIMEOUT
    with ResyncBar(what) as bar:
        while True:
            st = mgr.resync_status(pool_name)
            jobs = [j for j in st.get("jobs", []) if j.get("started", 0) >= since - 1
                    and (device is None or device in j.get("devices", []))]
            job = jobs[-1] if jobs else None
            if job is not None:
                bar.update(job)
                if job["state"] in ("done", "failed", "cancelled"):
                    return job
            elif time.monotonic() > deadline:
                raise QuietError(f"no resync of {what} started in {QUEUE_TIMEOUT:g}s;"
                                 " see 'vv events'")
            time.sleep(POLL)


def _report(job: dict[str, Any], what: str) -> None:
    if job.get("state") != "done":
        raise QuietError(f"resync of {what} {job.get('state', 'stopped')}:"
                         f" {job.get('error') or 'see vv events'}")
    click.echo(f"resynced {what}: {human_size(int(job.get('bytes_done', 0)))} copied"
               f" ({job.get('regions_total', 0)} regions) in {job.get('elapsed', 0):.1f}s")


# ---------------------------------------------------------------------------
# vv device ...


@click.command("online")
@click.argument("pool_name", metavar="POOL")
@click.argument("key", metavar="DEV")
@click.option("--rate", type=SIZE, default=None,
              help="Copy at most this many bytes per second (default: the node's resync_rate).")
@click.option("--wait", is_flag=True, help="Follow the resync to its end, with progress.")
@click.option("--discard-divergent", is_flag=True,
              help="DEV was written apart from the pool (split brain): rebuild it whole"
                   " from the other legs, losing what was written to it then.")
@json_option
@pass_manager
def device_online(mgr: Any, pool_name: str, key: str, rate: int | None, wait: bool,
                  discard_divergent: bool, as_json: bool) -> None:
    """Bring failed device DEV back: resync only the ranges written without it.

    The device must answer again at one of its paths.  Until its resync is
    done it is written but not read; then it is marked ok.  A device that
    was used apart from the pool (it committed configurations the pool does
    not have) is refused unless --discard-divergent.
    """
    since = time.time()
    with _offline_bar(mgr, f"resync {key}", wait):
        out = mgr.online_device(pool_name, key, rate=rate,
                                discard_divergent=discard_divergent)
    _finish(mgr, pool_name, out, since, wait, as_json)


@click.command("resync")
@click.argument("pool_name", metavar="POOL")
@click.argument("key", metavar="DEV", required=False)
@click.option("--rate", type=SIZE, default=None,
              help="Copy at most this many bytes per second (default: the node's resync_rate).")
@click.option("--wait", is_flag=True, help="Follow the resync to its end, with progress.")
@json_option
@pass_manager
def device_resync(mgr: Any, pool_name: str, key: str | None, rate: int | None, wait: bool,
                  as_json: bool) -> None:
    """Resync the dirty ranges of POOL now (or bring failed device DEV back).

    Only the regions the dirty logs name are copied, from the healthy
    legs to the others; where healthy legs differ, each block's stored
    checksum decides which is right.
    """
    since = time.time()
    with _offline_bar(mgr, f"resync {key or pool_name}", wait):
        out = mgr.resync_pool(pool_name, key, rate=rate)
    _finish(mgr, pool_name, out, since, wait, as_json)


@click.command("replace")
@click.argument("pool_name", metavar="POOL")
@click.argument("old", metavar="OLD")
@click.argument("new", metavar="NEW")
@click.option("--force", is_flag=True, help="Claim NEW even if it carries a foreign signature.")
@click.option("--rate", type=SIZE, default=None,
              help="Copy at most this many bytes per second (default: the node's resync_rate).")
@click.option("--wait", is_flag=True, help="Follow the rebuild to its end, with progress.")
@json_option
@pass_manager
def device_replace(mgr: Any, pool_name: str, old: str, new: str, force: bool,
                   rate: int | None, wait: bool, as_json: bool) -> None:
    """Replace device OLD by NEW: NEW takes OLD's place and is rebuilt from the mirrors.

    OLD is forgotten at once (its labels are erased if it can be written);
    NEW, under OLD's name, gets a full copy of OLD's areas from their other
    legs.  Refused when some data of OLD has no other copy.
    """
    since = time.time()
    with _offline_bar(mgr, f"rebuild {old}", wait):
        out = mgr.replace_device(pool_name, old, new, force=force, rate=rate)
    if not as_json:
        click.echo(f"{new} replaces {old} in {pool_name} as {out.get('device', old)}")
    _finish(mgr, pool_name, out, since, wait, as_json)


def _finish(mgr: Any, pool_name: str, out: dict[str, Any], since: float, wait: bool,
            as_json: bool) -> None:
    device = out.get("device")
    what = device or pool_name
    if _is_proxy(mgr) and wait and out.get("state") in ("queued", "running", "resyncing"):
        out = _follow(mgr, pool_name, device, since, what)
    if as_json:
        return print_json(out)
    state = out.get("state")
    if state in ("queued", "running", "resyncing"):
        click.echo(f"resync of {what} {state} in the node (follow: vv device resync"
                   f" {pool_name} --wait, or vv events --follow)")
    elif state == "done" or "bytes_done" in out:
        _report(out, what)
    else:
        click.echo(f"{what}: {state}")


@click.command("fail")
@click.argument("pool_name", metavar="POOL")
@click.argument("key", metavar="DEV")
@click.option("--reason", default="", help="Why (recorded in the event).")
@click.option("--yes", is_flag=True,
              help="Fail it even if it holds the only copy of some volume.")
@pass_manager
def device_fail(mgr: Any, pool_name: str, key: str, reason: str, yes: bool) -> None:
    """Take DEV out of service now, as if it had failed (mirrors go on degraded).

    Refused when DEV holds the only copy of a volume (linear, striped, or a
    mirror whose other legs failed): its data would be unreadable; --yes
    does it anyway.  Bring it back with 'vv device online'.
    """
    out = mgr.fail_device(pool_name, key, reason=reason or "by the administrator", yes=yes)
    click.echo(f"device {out['device']} is {out['state']}")


@click.command("paths")
@click.argument("pool_name", metavar="POOL")
@click.argument("key", metavar="DEV")
@click.option("--add", "add", metavar="PATH", default=None,
              help="Add PATH, another way to the same device (it must carry its label).")
@click.option("--remove", "remove", metavar="PATH", default=None, help="Forget PATH.")
@json_option
@pass_manager
def device_paths(mgr: Any, pool_name: str, key: str, add: str | None, remove: str | None,
                 as_json: bool) -> None:
    """Show DEV's paths (primary first, with their state in the node), or edit them.

    When the path in use fails, I/O goes on through the next working one;
    a failed path is used again once it works (the first working path in
    order is the one in use).
    """
    if add and remove:
        raise click.UsageError("give --add or --remove, not both")
    out = mgr.device_paths(pool_name, key, add=add, remove=remove)
    if as_json:
        return print_json(out)
    print_table(["PATH", "ROLE", "STATE"],
                [[p["path"], "primary" if p.get("primary") else "alternate", p["state"]]
                 for p in out["paths"]], f"device {out['device']}")


# ---------------------------------------------------------------------------
# vv volume set


@click.command("set")
@click.argument("path", metavar="POOL/NAME")
@click.option("--read-policy", type=click.Choice(READ_POLICIES), default=None,
              help="How a mirror is read: balanced (round-robin), primary (leg 0 unless it"
                   " failed), first (every leg, the first answer wins).")
@pass_manager
def volume_set(mgr: Any, path: str, read_policy: str | None) -> None:
    """Change settings of a volume (online)."""
    if read_policy is None:
        raise click.UsageError("nothing to set: give --read-policy")
    v = mgr.set_volume(path, read_policy=read_policy)
    click.echo(f"volume {path}: read policy {v.read_policy}")


# ---------------------------------------------------------------------------
# vv events


def _event_line(e: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(e["time"]).strftime("%Y-%m-%d %H:%M:%S")
    return f"{e['id']:>6}  {when}  {e.get('pool') or '-':<10} {e['severity']:<8} {e['kind']:<16} " \
           f"{e['message']}"


@click.command("events")
@click.argument("pool_name", metavar="[POOL]", required=False)
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing new events as they happen (Ctrl-C ends).")
@click.option("--since", type=int, default=0, metavar="ID", help="Only events after this id.")
@click.option("--limit", type=int, default=1000, show_default=True,
              help="At most this many past events.")
@json_option
@pass_manager
def events(mgr: Any, pool_name: str | None, follow: bool, since: int, limit: int,
           as_json: bool) -> None:
    """Show the event log: devices failed or returned, volumes degraded, resyncs, changes.

    Events are kept in the catalog.  With a running node --follow streams
    them as the node records them; without one it watches the catalog.
    """
    def out(e: dict[str, Any]) -> None:
        import json

        click.echo(json.dumps(e, sort_keys=True) if as_json else _event_line(e))

    past = mgr.list_events(pool_name, since, limit) if since or not follow else []
    if not follow:
        if as_json:
            return print_json(past)
        for e in past:
            click.echo(_event_line(e))
        return
    if not since:  # start from the last `limit` events
        recent = mgr.list_events(pool_name, 0, 1 << 30)
        past = recent[-limit:] if limit else []
        since = recent[-1]["id"] if recent else 0
    for e in past:
        out(e)
        since = max(since, e["id"])
    if _is_proxy(mgr):
        for e in mgr.client.events(since, pool_name, follow=True):
            out(e)
        return
    while True:
        for e in mgr.list_events(pool_name, since, 1000):
            out(e)
            since = e["id"]
        time.sleep(1.0)
