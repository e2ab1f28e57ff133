"""`vv`: the vvfs admin command line.  A thin layer over :mod:`vvfs.api`."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

import mapper
from mapper.units import human_size
from metadata.model import Pool, Volume

from .common import (
    ID,
    MODE,
    SIZE,
    json_option,
    pass_manager,
    print_json,
    print_table,
    run_cli,
    setup_logging,
    state_dir_option,
)

EXIT_STATUS_HELP = """
Exit status: 0 success; 1 request refused or failed (nothing changed);
2 usage error; 3 device I/O or media error; 4 state directory locked.
"""


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    """Print an aligned table (plain text: fast for 10,000 rows, easy to grep)."""
    print_table(columns, rows, title)


@click.group(epilog=EXIT_STATUS_HELP)
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.version_option(package_name="vvfs")
def cli(verbose: int) -> None:
    """Manage vvfs pools, devices and volumes."""
    setup_logging(verbose)


# ---------------------------------------------------------------------------
# pools


@cli.group()
def pool() -> None:
    """Create, list, show, export, import and destroy pools."""


@pool.command("create")
@click.argument("name")
@click.argument("devices", nargs=-1, required=True)
@click.option("--extent-size", type=SIZE, default="4M", show_default=True,
              help="Allocation unit on every device (power of two, 1M-1G).")
@click.option("--metadata-size", type=SIZE, default="16M", show_default=True,
              help="Size of each of the two metadata areas per device.")
@click.option("--tier", type=int, default=2, show_default=True,
              help="Performance tier of these devices (1 = fastest).")
@click.option("--protection", type=int, default=0, show_default=True,
              help="Failures each device survives on its own (0 = a bare disk).")
@click.option("--cost", type=float, default=0.0, show_default=True, help="Cost per GiB.")
@click.option("--force", is_flag=True,
              help="Claim devices that carry a foreign signature (erases it). Never"
                   " overrides a device that is mounted or in use.")
@pass_manager
def pool_create(mgr, name: str, devices: tuple[str, ...], extent_size: int, metadata_size: int,
                tier: int, protection: int, cost: float, force: bool) -> None:
    """Claim DEVICES (block devices or files) and create pool NAME on them."""
    p = mgr.create_pool(name, list(devices), extent_size=extent_size,
                        metadata_size=metadata_size, force=force, tier=tier,
                        protection=protection, cost=cost)
    size = sum(d.extent_count for d in p.devices) * p.extent_size
    click.echo(f"created pool {p.name} ({p.uuid}): {len(p.devices)} devices,"
               f" {human_size(size)}")


@pool.command("list")
@json_option
@pass_manager
def pool_list(mgr, as_json: bool) -> None:
    """List the pools imported on this host.

    With none imported, says which pools the search paths hold: those stamped
    with this host's id come back with 'vv catalog rebuild', others with 'vv
    pool import'.
    """
    rows = mgr.list_pools()
    if not rows:
        _hint_when_empty(mgr)
    if as_json:
        return print_json(rows)
    table(None, ["POOL", "UUID", "GEN", "DEVICES", "VOLUMES", "SIZE", "FREE"],
          [[r["name"], r["uuid"], r["generation"], r["devices"], r["volumes"],
            human_size(r["size"]), human_size(r["free"])] for r in rows])


def _hint_when_empty(mgr: Any) -> None:
    """On stderr: the pools on the search paths that an empty catalog does not list."""
    reports, _dups = mgr.scan()
    ours = sorted({r.name for r in reports if r.active_host == mgr.host_id})
    others = sorted({r.name for r in reports if r.active_host is None and r.name != "?"})
    if ours:
        click.echo(f"vv: no pools imported, but the search paths hold {', '.join(ours)} of this"
                   " host: run 'vv catalog rebuild' to list them again", err=True)
    if others:
        click.echo(f"vv: the search paths also hold exported pools {', '.join(others)}: 'vv pool import NAME'"
                   " takes one on this host", err=True)


@pool.command("show")
@click.argument("name")
@json_option
@pass_manager
def pool_show(mgr, name: str, as_json: bool) -> None:
    """Show a pool: its devices, volumes and state on media."""
    shown = mgr.show_pool(name)
    p, paths = shown.pool, shown.paths
    usage = mapper.usage(p)
    if as_json:
        doc = p.to_dict()
        doc["paths"] = paths
        doc["missing"] = shown.missing
        doc["stale"] = shown.stale
        return print_json(doc)
    total = sum(d.extent_count for d in p.devices) * p.extent_size
    free = sum(u.free for u in usage.values()) * p.extent_size
    click.echo(f"pool {p.name}  uuid {p.uuid}  generation {p.generation}")
    click.echo(f"extent size {human_size(p.extent_size)}  size {human_size(total)}"
               f"  free {human_size(free)}  host {p.active_host or '-'}")
    if shown.missing:
        click.echo("MISSING devices: " + ", ".join(p.device(u).name for u in shown.missing))
    _devices_table(p, paths, usage)
    _volumes_table(p.volumes)


@pool.command("export")
@click.argument("name")
@pass_manager
def pool_export(mgr, name: str) -> None:
    """Release pool NAME so that another host can import it from its media."""
    p = mgr.export_pool(name)
    click.echo(f"exported pool {p.name} ({p.uuid}) at generation {p.generation}")


@pool.command("import")
@click.argument("key", metavar="NAME|UUID")
@click.option("--search", multiple=True, metavar="PATH",
              help="Also look here (file, block device or directory); repeatable.")
@click.option("--force", is_flag=True,
              help="Import a pool stamped active by another host, or with devices missing.")
@pass_manager
def pool_import(mgr, key: str, search: tuple[str, ...], force: bool) -> None:
    """Import a pool from its media alone."""
    p = mgr.import_pool(key, search=list(search), force=force)
    click.echo(f"imported pool {p.name} ({p.uuid}): {len(p.devices)} devices,"
               f" {len(p.volumes)} volumes, generation {p.generation}")


@pool.command("destroy")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Really erase the pool and all its volumes.")
@pass_manager
def pool_destroy(mgr, name: str, yes: bool) -> None:
    """Erase pool NAME's labels and metadata from all its devices."""
    mgr.destroy_pool(name, yes=yes)
    click.echo(f"destroyed pool {name}")


@cli.command("scan")
@click.argument("paths", nargs=-1)
@json_option
@pass_manager
def scan(mgr, paths: tuple[str, ...], as_json: bool) -> None:
    """Find vvfs devices on PATHS (default: the search paths) and report pools."""
    reports, dups = mgr.scan(list(paths) or None)
    if as_json:
        return print_json({"pools": [dataclasses.asdict(r) for r in reports],
                           "duplicates": dups})
    rows = []
    for r in reports:
        where = "here" if r.imported_here else (
            f"host {r.active_host[:8]}" if r.active_host else "exported")
        rows.append([r.name, r.uuid, r.generation if r.generation is not None else "-",
                     r.status, where, len(r.devices), ", ".join(r.missing) or "-",
                     ", ".join(r.stale) or "-"])
    table(None, ["POOL", "UUID", "GEN", "STATUS", "IMPORTED", "FOUND", "MISSING", "STALE"], rows)
    for uuid, where in dups.items():
        click.echo(f"duplicate device uuid {uuid} (cloned media?): {', '.join(where)}")
    for r in reports:
        for prob in r.problems:
            click.echo(f"{r.name}: {prob}")


# ---------------------------------------------------------------------------
# devices and classes


@cli.group()
def device() -> None:
    """Add, remove and list a pool's devices."""


@device.command("add")
@click.argument("pool_name", metavar="POOL")
@click.argument("path", metavar="DEV")
@click.option("--tier", type=int, default=2, show_default=True,
              help="Performance tier (1 = fastest).")
@click.option("--protection", type=int, default=0, show_default=True,
              help="Failures the device survives on its own.")
@click.option("--cost", type=float, default=0.0, show_default=True, help="Cost per GiB.")
@click.option("--force", is_flag=True,
              help="Claim a device with a foreign signature (erases it). Never overrides"
                   " a device that is mounted or in use.")
@pass_manager
def device_add(mgr, pool_name: str, path: str, tier: int, protection: int, cost: float,
               force: bool) -> None:
    """Claim DEV and add it to POOL."""
    d = mgr.add_device(pool_name, path, tier=tier, protection=protection, cost=cost, force=force)
    click.echo(f"added {path} to {pool_name} as {d.name}: {d.extent_count} extents")


@device.command("remove")
@click.argument("pool_name", metavar="POOL")
@click.argument("key", metavar="DEV")
@pass_manager
def device_remove(mgr, pool_name: str, key: str) -> None:
    """Remove a device (by name, uuid or path) from POOL.

    A device that holds extents is evacuated first (online, with progress;
    see 'vv device evacuate'), then removed.
    """
    evacuate_then(mgr, pool_name, key)
    d = mgr.remove_device(pool_name, key)
    click.echo(f"removed {d.name} from {pool_name}")


@device.command("list")
@click.argument("pool_name", metavar="POOL")
@json_option
@pass_manager
def device_list(mgr, pool_name: str, as_json: bool) -> None:
    """List POOL's devices with size, used, free and class."""
    p, paths, usage = mgr.list_devices(pool_name)
    if as_json:
        return print_json([_device_doc(p, d, paths, usage) for d in p.devices])
    _devices_table(p, paths, usage)


def _device_doc(p: Pool, d: Any, paths: dict[str, str], usage: dict) -> dict:
    u = usage[d.uuid]
    return {"name": d.name, "uuid": d.uuid, "path": paths.get(d.uuid),
            "size": u.total * p.extent_size, "used": u.used * p.extent_size,
            "free": u.free * p.extent_size, "tier": d.tier, "protection": d.protection,
            "cost": d.cost, "state": d.state if d.uuid in paths else "missing"}


def _devices_table(p: Pool, paths: dict[str, str], usage: dict) -> None:
    rows = []
    for d in p.devices:
        doc = _device_doc(p, d, paths, usage)
        rows.append([doc["name"], doc["path"] or "-", human_size(doc["size"]),
                     human_size(doc["used"]), human_size(doc["free"]), d.tier, d.protection,
                     f"{d.cost:g}", doc["state"]])
    table(None, ["DEVICE", "PATH", "SIZE", "USED", "FREE", "TIER", "PROT", "COST", "STATE"], rows)


@cli.group("class")
def class_() -> None:
    """Storage classes: devices grouped by tier, protection and cost."""


@class_.command("list")
@click.argument("pool_name", metavar="POOL")
@json_option
@pass_manager
def class_list(mgr, pool_name: str, as_json: bool) -> None:
    """Show free space per storage class in POOL."""
    rows = mgr.list_classes(pool_name)
    if as_json:
        return print_json([r._asdict() for r in rows])
    table(None, ["TIER", "PROTECTION", "COST/GiB", "DEVICES", "SIZE", "FREE"],
          [[r.tier, r.protection, f"{r.cost:g}", r.devices, human_size(r.total_bytes),
            human_size(r.free_bytes)] for r in rows])


# ---------------------------------------------------------------------------
# volumes


@cli.group()
def volume() -> None:
    """Create, list, show, remove, resize and rename volumes."""


def _parse_on(values: tuple[str, ...]) -> list[tuple[str, int | None]]:
    out: list[tuple[str, int | None]] = []
    for v in values:
        dev, sep, amount = v.rpartition(":")
        if not sep or "/" in amount:
            out.append((v, None))
        else:
            out.append((dev, SIZE.convert(amount, None, None)))
    return out


@volume.command("create")
@click.argument("path", metavar="POOL/NAME")
@click.option("--size", type=SIZE, required=True, help="Size, e.g. 10G.")
@click.option("--stripes", type=int, default=1, show_default=True)
@click.option("--stripe-size", type=SIZE, default="64K", show_default=True)
@click.option("--mirrors", type=int, default=1, show_default=True,
              help="Copies of every byte, each on a different device.")
@click.option("--class", "tier", type=int, default=None, help="Only devices of this tier.")
@click.option("--min-protection", type=int, default=None)
@click.option("--max-cost", type=float, default=None, help="Highest cost per GiB to use.")
@click.option("--fit", type=click.Choice(["spread", "cheapest", "fastest"]), default="spread",
              show_default=True, help="Which eligible devices to fill first.")
@click.option("--on", "on", multiple=True, metavar="DEV[:SIZE]",
              help="Place on these devices (with amounts for a linear volume); repeatable.")
@click.option("--owner", type=ID, default=0, show_default=True, help="Owner uid in the mount.")
@click.option("--group", type=ID, default=0, show_default=True, help="Group gid in the mount.")
@click.option("--mode", type=MODE, default="0600", show_default=True,
              help="Octal file mode in the mount.")
@click.option("--special-bits", is_flag=True,
              help="Allow setuid, setgid and sticky bits in --mode.")
@click.option("--read-policy", type=click.Choice(["balanced", "primary", "first"]),
              default="balanced", show_default=True,
              help="How a mirror is read: round-robin, leg 0 unless failed, or every leg"
                   " with the first answer winning.")
@pass_manager
def volume_create(mgr, path: str, size: int, stripes: int, stripe_size: int, mirrors: int,
                  tier: int | None, min_protection: int | None, max_cost: float | None, fit: str,
                  on: tuple[str, ...], owner: int, group: int, mode: int, special_bits: bool,
                  read_policy: str) -> None:
    """Create volume NAME in POOL."""
    spec = mapper.VolumeSpec(name="", size=size, stripes=stripes, stripe_size=stripe_size,
                             mirrors=mirrors, tier=tier, min_protection=min_protection,
                             max_cost=max_cost, fit=fit, on=_parse_on(on), owner=owner,
                             group=group, mode=mode, special_bits=special_bits,
                             read_policy=read_policy)
    v = mgr.create_volume(path, spec)
    click.echo(f"created volume {path}: {human_size(v.size)}, {_layout(v)}")


def _layout(v: Volume) -> str:
    parts = []
    if v.stripes > 1:
        parts.append(f"{v.stripes} stripes of {human_size(v.stripe_size)}")
    if v.mirrors > 1:
        parts.append(f"{v.mirrors} mirrors")
    return " x ".join(parts) or "linear"


@volume.command("list")
@click.argument("pool_name", metavar="POOL")
@json_option
@pass_manager
def volume_list(mgr, pool_name: str, as_json: bool) -> None:
    """List POOL's volumes."""
    vols = mgr.list_volumes(pool_name)
    if as_json:
        return print_json([_volume_doc(v, segments=False) for v in vols])
    _volumes_table(vols)


def _volumes_table(vols: list[Volume]) -> None:
    table(None, ["VOLUME", "SIZE", "LAYOUT", "OWNER", "GROUP", "MODE", "HOSTS"],
          [[v.name, human_size(v.size), _layout(v), v.owner, v.group, f"{v.mode:04o}",
            ",".join(v.hosts) or "all"] for v in vols])


def _volume_doc(v: Volume, segments: bool = True) -> dict:
    d = dataclasses.asdict(v)
    d["mode"] = f"{v.mode:04o}"
    if not segments:
        d.pop("segments")
    return d


@volume.command("show")
@click.argument("path", metavar="POOL/NAME")
@json_option
@pass_manager
def volume_show(mgr, path: str, as_json: bool) -> None:
    """Show a volume with its segments and extents."""
    p, v = mgr.show_volume(path)
    if as_json:
        return print_json(_volume_doc(v))
    click.echo(f"volume {path}  uuid {v.uuid}")
    click.echo(f"size {human_size(v.size)} ({v.size} bytes)  layout {_layout(v)}"
               f"  owner {v.owner}:{v.group} mode {v.mode:04o}"
               f"  hosts {','.join(v.hosts) or 'all'}")
    names = {d.uuid: d.name for d in p.devices}
    rows = []
    for i, s in enumerate(v.segments):
        for m, leg in enumerate(s.areas):
            for st, a in enumerate(leg):
                rows.append([i, s.start, s.length, m, st, names.get(a.device, a.device),
                             f"{a.start}-{a.start + s.area_length - 1}"])
    table(None, ["SEG", "START", "EXTENTS", "LEG", "STRIPE", "DEVICE", "PHYSICAL EXTENTS"], rows)


@volume.command("remove")
@click.argument("path", metavar="POOL/NAME")
@pass_manager
def volume_remove(mgr, path: str) -> None:
    """Remove a volume and free its space."""
    mgr.remove_volume(path)
    click.echo(f"removed volume {path}")


@volume.command("resize")
@click.argument("path", metavar="POOL/NAME")
@click.option("--size", type=SIZE, required=True, help="New size, e.g. 20G.")
@click.option("--yes", is_flag=True, help="Allow shrinking (the end of the volume is lost).")
@pass_manager
def volume_resize(mgr, path: str, size: int, yes: bool) -> None:
    """Grow a volume, or shrink it with --yes."""
    v = mgr.resize_volume(path, size, allow_shrink=yes)
    click.echo(f"resized volume {path} to {human_size(v.size)}")


@volume.command("rename")
@click.argument("path", metavar="POOL/NAME")
@click.argument("new_name", metavar="NEWNAME")
@pass_manager
def volume_rename(mgr, path: str, new_name: str) -> None:
    """Rename a volume within its pool."""
    v = mgr.rename_volume(path, new_name)
    click.echo(f"renamed volume {path} to {v.name}")


# ---------------------------------------------------------------------------
# status


@cli.command("status")
@json_option
@state_dir_option
def status(as_json: bool, state_dir: str | None) -> None:
    """Show the running node: pools, devices, volumes and who has them open.

    With no node running, say so and list the pools imported on this host.
    """
    from vvfs.api import Manager
    from vvfs.node.client import NodeClient, node_socket

    sock = node_socket(state_dir)
    if sock is None:
        with Manager(state_dir) as mgr:
            return _offline_status(mgr.state.path, mgr.list_pools(), as_json)
    with NodeClient(sock) as client:
        doc = client.status()
    if as_json:
        return print_json({"running": True, "socket": sock, **doc})
    click.echo(f"node pid {doc.get('pid', '?')}  socket {sock}"
               + (f"  mounted at {doc['mountpoint']}" if doc.get("mountpoint") else ""))
    eng = doc.get("engine") or {}
    if eng:
        click.echo(f"engine {eng.get('engine', '?')}"
                   + (f" ({eng['threads']} driver threads; {eng.get('served_natively', 0)}"
                      f" requests served natively, {eng.get('handed_to_python', 0)} handed to"
                      f" Python)" if "threads" in eng else ""))
    for p in doc.get("pools", []):
        _pool_status(p, eng.get("volumes") or {})


def _offline_status(state_dir: str, pools: list[dict], as_json: bool) -> None:
    if as_json:
        return print_json({"running": False, "state_dir": state_dir, "pools": pools})
    click.echo(f"no node is running (state directory {state_dir});"
               + (" imported pools:" if pools else " no pools are imported"))
    if pools:
        table(None, ["POOL", "UUID", "GEN", "DEVICES", "VOLUMES", "SIZE", "FREE"],
              [[r["name"], r["uuid"], r["generation"], r["devices"], r["volumes"],
                human_size(r["size"]), human_size(r["free"])] for r in pools])
    for r in pools:
        if r.get("failed_devices"):
            click.echo(f"pool {r['name']}: FAILED devices {', '.join(r['failed_devices'])};"
                       f" degraded volumes {', '.join(r.get('degraded_volumes') or []) or '-'}")


def _entries(value: Any) -> list[dict]:
    """A status list of entries, also when given as a mapping of name -> entry."""
    if isinstance(value, dict):
        return [{"name": k, **(v if isinstance(v, dict) else {"state": v})}
                for k, v in value.items()]
    return list(value or [])


def _pool_status(p: dict, engine: dict) -> None:
    click.echo("")
    click.echo(f"pool {p.get('name', '?')}  uuid {p.get('uuid', '?')}"
               f"  generation {p.get('generation', '?')}")
    table(None, ["DEVICE", "PATH", "STATE"],
          [[d.get("name", "?"), d.get("path") or "-", d.get("state", "?")]
           for d in _entries(p.get("devices"))])
    def served(name: str) -> str:
        e = engine.get(f"{p.get('name')}/{name}") or {}
        by = e.get("served_by", "-")
        return by + (f" ({e['why']})" if e.get("why") and by == "python" else "")

    def requests(name: str) -> str:
        e = engine.get(f"{p.get('name')}/{name}") or {}
        return f"{e.get('native_requests', 0)}/{e.get('python_requests', 0)}"

    table(None, ["VOLUME", "SIZE", "OPEN", "PIDS", "STATE", "SERVED BY", "NATIVE/PYTHON"],
          [[v.get("name", "?"), human_size(v["size"]) if "size" in v else "?",
            v.get("open", 0), ",".join(str(x) for x in v.get("pids") or []) or "-",
            v.get("state", "ok"), served(v.get("name", "?")), requests(v.get("name", "?"))]
           for v in _entries(p.get("volumes"))])
    move = p.get("move")
    if move:
        click.echo(f"move {move.get('id')} ({move.get('what')}): {move.get('state')},"
                   f" {move.get('copied')} of {move.get('total')} extents"
                   + (f"; paused: {move['paused']}" if move.get("paused") else ""))
    for job in (p.get("mirror") or {}).get("jobs", []):
        if job.get("state") in ("queued", "running"):
            total, done = job.get("bytes_total") or 0, job.get("bytes_done") or 0
            pct = f"{100 * done // total}%" if total else "..."
            click.echo(f"resync {job.get('id')} ({job.get('kind')})"
                       f" {','.join(job.get('devices') or []) or ''}: {pct},"
                       f" {human_size(done)} of {human_size(total)}")


# ---------------------------------------------------------------------------
# catalog


@cli.group()
def catalog() -> None:
    """The host's catalog (a mirror of the media for queries)."""


@catalog.command("rebuild")
@click.option("--search", multiple=True, metavar="PATH", help="Also look here; repeatable.")
@pass_manager
def catalog_rebuild(mgr, search: tuple[str, ...]) -> None:
    """Recreate the catalog from the media of this host's pools."""
    names = mgr.rebuild_catalog(list(search))
    click.echo(f"catalog rebuilt: {len(names)} pools" + (f" ({', '.join(names)})" if names else ""))


from .vv_mirror import (
    device_fail,
    device_online,
    device_paths,
    device_replace,
    device_resync,
    events,
    volume_set,
)
from .vv_mount import mount as _mount_cmd
from .vv_mount import umount as _umount_cmd
from .vv_move import device_evacuate, evacuate_then, volume_move, volume_scrub

cli.add_command(_mount_cmd)
cli.add_command(_umount_cmd)
volume.add_command(volume_move)
volume.add_command(volume_scrub)
device.add_command(device_evacuate)
for _cmd in (device_online, device_resync, device_replace, device_fail, device_paths):
    device.add_command(_cmd)
volume.add_command(volume_set)
cli.add_command(events)


def main() -> None:
    run_cli(cli, "vv")


if __name__ == "__main__":
    main()
