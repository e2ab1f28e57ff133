"""`vvfsck`: offline check and repair of vvfs pools (see man/vvfsck.8).

Only the command line lives here: it builds a :class:`vvfsck.Checker` (the checks are in
:mod:`vvfsck.checks`, the package docstring of :mod:`vvfsck` says how a run goes).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import click
import yaml

import vvfsck
from metadata.catalog import Catalog, CatalogError
from metadata.errors import VVError
from vvfs.errors import FsckError, LockedError
from vvfs.io.discovery import candidate_paths
from vvfs.state import CONFIG_NAME, StateDir, resolve_state_dir

from .common import setup_logging, state_dir_option

EXIT_HELP = """
Exit status: 0 clean; 1 errors found, all repaired (without --repair: all
repairable); 2 errors left; 4 usage or operational error (a node has the
pool open, no such pool, a device cannot be opened).
"""


@click.command(epilog=EXIT_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("devices", nargs=-1, metavar="[DEVICE]...")
@click.option("--pool", "pool_name", metavar="NAME",
              help="Check pool NAME (name or uuid) from the devices the catalog remembers"
                   " and those on the search paths, instead of naming DEVICEs.")
@state_dir_option
@click.option("--repair", is_flag=True,
              help="Repair what can be repaired (asks first; see --yes).")
@click.option("-y", "--yes", is_flag=True,
              help="Do not ask: answer yes to --repair and --rollback (for scripts).")
@click.option("--dump", is_flag=True,
              help="Print every generation found on each device, and the operations each"
                   " pool records, as YAML; nothing else.")
@click.option("--rollback", type=int, metavar="GEN",
              help="Make the configuration of generation GEN current again by committing"
                   " it as a new generation (asks first).")
@click.option("--deep", is_flag=True,
              help="Also compare the data of mirror legs (reads every mirrored extent).")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.version_option(package_name="vvfs")
def cli(devices: tuple[str, ...], pool_name: str | None, state_dir: str | None, repair: bool,
        yes: bool, dump: bool, rollback: int | None, deep: bool, verbose: int) -> int:
    """Check vvfs pools offline, from their media alone; repair with --repair.

    Name the pool's DEVICEs (block devices, image files or directories of
    them), or --pool NAME to check a pool imported on this host.  Each
    finding is one line naming the device and byte offset, followed by the
    repair --repair would make or what to do instead.  vvfsck refuses to run
    while a node or a vv command holds the state directory (the pool is
    open).
    """
    setup_logging(verbose)
    _check_usage(devices, pool_name, repair, yes, dump, rollback)
    state = _state_dir(state_dir, required=pool_name is not None)
    with _locked(state), _catalog(state) as catalog:
        checker = _checker(devices, pool_name, state, catalog, deep,
                           writable=rollback is not None)
        if dump:
            click.echo(yaml.safe_dump(checker.dump(), sort_keys=False, default_flow_style=None),
                       nl=False)
            return vvfsck.EXIT_CLEAN
        if rollback is not None:
            return checker.rollback(rollback, _confirmer(yes))
        return checker.run(repair=repair, confirm=_confirmer(yes))


def _check_usage(devices: tuple[str, ...], pool_name: str | None, repair: bool, yes: bool,
                 dump: bool, rollback: int | None) -> None:
    if bool(devices) == bool(pool_name):
        raise click.UsageError("name the DEVICEs of a pool, or --pool NAME (not both)")
    if dump and (repair or rollback is not None):
        raise click.UsageError("--dump only reads: it goes with neither --repair nor --rollback")
    if repair and rollback is not None:
        raise click.UsageError("--rollback and --repair are separate runs")
    if yes and not (repair or rollback is not None):
        raise click.UsageError("--yes answers the questions of --repair or --rollback;"
                               " give one of them")


def _state_dir(path: str | None, *, required: bool) -> StateDir | None:
    """The host state directory, if there is one (never created by vvfsck)."""
    real = resolve_state_dir(path)
    if not os.path.exists(os.path.join(real, CONFIG_NAME)):
        if required:
            raise FsckError(f"no vvfs state directory at {real}: --pool needs the host"
                            " that imported the pool (or name its DEVICEs)")
        return None
    return StateDir(real)


@contextlib.contextmanager
def _locked(state: StateDir | None) -> Iterator[None]:
    if state is None:
        yield
        return
    try:
        lock = state.locked("vvfsck")
        lock.__enter__()
    except LockedError as exc:
        raise FsckError(f"{exc}: a running node (or a vv command) has the pool open;"
                        " stop it (umount) before running vvfsck") from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


@contextlib.contextmanager
def _catalog(state: StateDir | None) -> Iterator[Catalog | None]:
    if state is None:
        yield None
        return
    try:
        catalog = Catalog(state.config.catalog_url)
    except CatalogError as exc:
        click.echo(f"vvfsck: catalog not compared: {exc} (see vv catalog rebuild)", err=True)
        yield None
        return
    try:
        yield catalog
    finally:
        catalog.close()


def _checker(devices: tuple[str, ...], pool_name: str | None, state: StateDir | None,
             catalog: Catalog | None, deep: bool, writable: bool) -> vvfsck.Checker:
    host_id = state.config.host_id if state else None
    catalog_name = state.config.catalog_url if state else "catalog"
    if pool_name is None:
        paths = [p for arg in devices
                 for p in (candidate_paths([arg]) if os.path.isdir(arg) else [arg])]
        return vvfsck.Checker(vvfsck.PathDevices(paths, writable=writable), emit=click.echo,
                              catalog=catalog, catalog_name=catalog_name, host_id=host_id,
                              deep=deep)
    if state is None:
        raise FsckError("--pool needs a state directory")
    row = catalog.find_pool(pool_name) if catalog is not None else None
    remembered = catalog.device_paths(row.uuid) if row is not None and catalog else {}
    paths = list(remembered.values()) + candidate_paths(state.config.search_paths)
    return vvfsck.Checker(vvfsck.PathDevices(paths, writable=writable, strict=False),
                          emit=click.echo, catalog=catalog, catalog_name=catalog_name,
                          host_id=host_id, deep=deep, pool_uuid=row.uuid if row else None,
                          pool_name=pool_name, remembered=remembered)


def _confirmer(yes: bool) -> Callable[[str], bool]:
    if yes:
        return lambda question: True
    if sys.stdin.isatty():
        return lambda question: click.confirm(question, default=False)

    def refuse(question: str) -> bool:
        click.echo("vvfsck: not repairing: no terminal to ask on (add --yes)", err=True)
        return False

    return refuse


def main(argv: list[str] | None = None) -> None:
    """Run vvfsck; every error is one line and exit status 4 (usage errors included)."""
    try:
        status = cli.main(args=argv, prog_name="vvfsck", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("vvfsck: aborted", err=True)
        sys.exit(vvfsck.EXIT_OPERATIONAL)
    except click.ClickException as exc:
        exc.show()
        sys.exit(vvfsck.EXIT_OPERATIONAL)
    except VVError as exc:
        click.echo(f"vvfsck: {exc}", err=True)
        sys.exit(vvfsck.EXIT_OPERATIONAL)
    except KeyboardInterrupt:
        click.echo("vvfsck: interrupted", err=True)
        sys.exit(vvfsck.EXIT_OPERATIONAL)
    sys.exit(status if isinstance(status, int) else vvfsck.EXIT_CLEAN)


if __name__ == "__main__":
    main()
