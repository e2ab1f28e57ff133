"""The checker: passes over the devices, the stages of repair, the summary.

See the :mod:`vvfsck` package docstring for how a pass and the repair stages
run.  ``--rollback`` and ``--dump`` are here too: each reads once, like a
pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from metadata import format as fmt
from metadata.blockdev import BlockDevice, DeviceIOError
from metadata.catalog import Catalog, CatalogError
from metadata.errors import MediaError, VVError
from vvfs.errors import FsckError
from vvfsck.checks import CHECKS
from vvfsck.checks.labels import check_unsupported
from vvfsck.context import Ctx
from vvfsck.devices import DeviceSet
from vvfsck.dump import dump_pool
from vvfsck.findings import (
    EXIT_CLEAN,
    EXIT_FOUND,
    EXIT_LEFT,
    STAGE_CATALOG,
    STAGE_CONFIG,
    STAGE_LABELS,
    STAGE_METADATA,
    Finding,
    found_text,
    place_of,
    plural,
)
from vvfsck.inspect import PoolGroup, Stray, group_devices
from vvfsck.repairs import commit_pool, rollback_plan

MAX_PASSES = 8


class Checker:
    """Runs the checks over some devices, reports, and repairs on request.

    *emit* receives every line of output.  Select the pool with *pool_uuid*
    or *pool_name* (otherwise every pool found on the devices is checked,
    and devices of no pool are findings).  *catalog* (with *host_id*) is
    compared with the media.
    """

    def __init__(self, devices: DeviceSet, *, emit: Callable[[str], None],
                 pool_uuid: str | None = None, pool_name: str | None = None,
                 catalog: Catalog | None = None, catalog_name: str = "catalog",
                 host_id: str | None = None, deep: bool = False,
                 remembered: dict[str, str] | None = None) -> None:
        self.devices = devices
        self.emit = emit
        self.pool_uuid = pool_uuid
        self.pool_name = pool_name
        self.catalog = catalog
        self.catalog_name = catalog_name
        self.host_id = host_id
        self.deep = deep
        self.remembered = dict(remembered or {})
        self.quiet = False
        self._found: list[Finding] = []
        self._emitted: set[tuple[str, str, int | None, str]] = set()
        self._attempted: set[tuple[str, str, int | None, str]] = set()
        self._repaired: set[tuple[str, str, int | None, str]] = set()
        self._contexts: dict[str, Ctx] = {}
        self._names: set[str] = set()
        self._pools: dict[str, tuple[str, int | None]] = {}
        self._high_water: dict[str, int] = {}

    # -- the one way out -------------------------------------------------

    def report(self, finding: Finding) -> None:
        """Record a finding and print it (once per run)."""
        self._found.append(finding)
        if not self.quiet and finding.key not in self._emitted:
            self._emitted.add(finding.key)
            self.emit(finding.line())

    # -- running -----------------------------------------------------------

    def check(self) -> list[Finding]:
        """One report-only pass; returns the findings."""
        return self._pass(apply=False)[0]

    def run(self, *, repair: bool = False,
            confirm: Callable[[str], bool] = lambda question: False) -> int:
        """Check, repair if asked (and confirmed), and return the exit status.

        Pending findings (:attr:`Finding.pending`) are printed but are no
        problem: a pool with nothing else is clean.
        """
        found = self.check()
        problems = [f for f in found if not f.pending]
        fixable = [f for f in problems if f.repairable]
        if not problems or not repair:
            self._summary(found, lambda _pool, fs: found_text(fs))
            if not problems:
                return EXIT_CLEAN
            return EXIT_FOUND if len(fixable) == len(problems) else EXIT_LEFT
        if not fixable or not confirm(f"repair {plural(len(fixable), 'finding')}?"):
            self._summary(found, lambda _pool, fs: f"{plural(len(fs), 'finding')}, not repaired"
                          if fs else "clean")
            return EXIT_LEFT
        return self._repair_all(found)

    def _repair_all(self, found: list[Finding]) -> int:
        self.devices = self.devices.only(self._names, writable=True)
        for _ in range(MAX_PASSES):
            if not self._pass(apply=True)[1]:
                break
        self.quiet = True
        try:
            left = self.check()
        finally:
            self.quiet = False
        gone = {f.key for f in left}
        for key in sorted(self._emitted - self._repaired - gone, key=str):
            self.emit(f"repaired: {place_of(key)} (by the repairs above)")
        problems = [f for f in left if not f.pending]
        for f in problems:
            self.emit(f"left: {f.line()}")
        had = {f.pool for f in found if not f.pending}
        self._summary(left, lambda pool, fs: f"{plural(len(fs), 'finding')} left" if fs else
                      "repaired, clean now" if pool in had else "clean")
        return EXIT_LEFT if problems else EXIT_FOUND

    def _summary(self, findings: list[Finding],
                 text: Callable[[str, list[Finding]], str]) -> None:
        """One line per pool (and one for devices of no pool) saying how it stands.

        *text* says it from the problems; pending findings are counted after it.
        """
        for name, (uuid, gen) in sorted(self._pools.items()):
            at = f"generation {gen}" if gen is not None else "no complete generation"
            mine = [f for f in findings if f.pool == uuid]
            problems = [f for f in mine if not f.pending]
            pending = len(mine) - len(problems)
            tail = f"; {plural(pending, 'operation')} pending" if pending else ""
            self.emit(f"pool {name} ({uuid}) at {at}: {text(uuid, problems)}{tail}")
        others = [f for f in findings if not f.pool]
        if others or not self._pools:
            label = "other devices" if self._pools else "no pool"
            self.emit(f"{label}: {text('', others)}")

    def _pass(self, *, apply: bool) -> tuple[list[Finding], bool]:
        self._found = []
        devs = self.devices.open()
        try:
            contexts, strays = self._read(devs)
            for ctx in contexts:
                self._check_pool(ctx)
            for dev, why in strays:
                self._report_stray(dev, why)
            applied = self._apply(self._found) if apply else False
        finally:
            self.devices.close(devs)
        return self._found, applied

    def _report_stray(self, dev: BlockDevice, why: str | None) -> None:
        if why is None:
            self.report(Finding("devices", dev.name, fmt.LABEL_A_OFFSET,
                                "no vvfs label or metadata area header",
                                advice="not a vvfs device (or wiped): nothing to check",
                                stage=STAGE_LABELS))
        else:
            self.report(Finding("devices", dev.name, None, why,
                                advice="check the device and its connection",
                                stage=STAGE_LABELS))

    def _check_pool(self, ctx: Ctx) -> None:
        checks = (check_unsupported,) if ctx.group.unsupported else CHECKS
        for check in checks:
            try:
                check(ctx)
            except (DeviceIOError, MediaError) as exc:
                ctx.report(Finding(check.__name__.removeprefix("check_"), exc.device,
                                   exc.offset, f"cannot check: {exc}"))
            except CatalogError as exc:
                ctx.report(Finding("catalog", f"catalog {self.catalog_name}", None,
                                   f"cannot read: {exc}", advice="vv catalog rebuild",
                                   stage=STAGE_CATALOG))

    # -- reading -----------------------------------------------------------

    def _read(self, devs: list[BlockDevice]) -> tuple[list[Ctx], list[Stray]]:
        groups, strays = group_devices(devs, self.remembered)
        selected = self._select(groups)
        if self.pool_uuid is not None or self.pool_name is not None:
            strays = []
        self._contexts = {}
        self._pools = {}
        self._names = set()
        out = []
        for g in selected:
            seen = max([g.choice.max_seen if g.choice else 0]
                       + [max(m.scan.slots, default=0) for m in g.members])
            self._high_water[g.uuid] = max(seen, self._high_water.get(g.uuid, 0))
            ctx = Ctx(g, self._reporter(g), self.catalog, self.catalog_name, self.host_id,
                      self.deep, self.remembered, self._high_water[g.uuid])
            self._contexts[g.uuid] = ctx
            self._pools[ctx.name] = (g.uuid, g.choice.generation if g.choice else None)
            self._names |= {m.name for m in g.members} | {c.name for _u, c in g.clones}
            out.append(ctx)
        return out, strays

    def _select(self, groups: dict[str, PoolGroup]) -> list[PoolGroup]:
        if self.pool_uuid is not None:
            if self.pool_uuid not in groups:
                raise FsckError(f"no device of pool {self.pool_name or self.pool_uuid} found")
            return [groups[self.pool_uuid]]
        if self.pool_name is None:
            return list(groups.values())
        named = [g for g in groups.values() if g.choice and g.choice.pool.name == self.pool_name]
        mine = [g for g in named if g.choice and g.choice.pool.active_host == self.host_id]
        if len(named) > 1 and len(mine) == 1:
            named = mine
        if not named:
            raise FsckError(f"no pool {self.pool_name!r} in the catalog or on the search paths")
        if len(named) > 1:
            raise FsckError(f"several pools are named {self.pool_name!r}: "
                            + ", ".join(g.uuid for g in named) + "; name one by uuid")
        self.pool_uuid = named[0].uuid
        return named

    def _reporter(self, group: PoolGroup) -> Callable[[Finding], None]:
        """Tag findings with their pool; hold back risky repairs while devices are missing."""
        def report(f: Finding) -> None:
            f.pool = group.uuid
            held = f.stage in (STAGE_METADATA, STAGE_CONFIG)
            if group.choice and group.choice.missing and held and f.repairable:
                f.repair = f.edit = None
                f.advice = "not repaired while a device of the pool is missing"
            self.report(f)
        return report

    # -- repairing ---------------------------------------------------------

    def _apply(self, findings: list[Finding]) -> bool:
        """Repair the findings of the lowest stage present; True if anything was tried."""
        todo = [f for f in findings if f.repairable and f.key not in self._attempted]
        if not todo:
            return False
        stage = min(f.stage for f in todo)
        batch = [f for f in todo if f.stage == stage]
        self._attempted |= {f.key for f in batch}
        for f in batch:
            if f.repair is not None:
                self._attempt(f, f.repair)
        edits: dict[str, list[Finding]] = {}
        for f in batch:
            if f.edit is not None:
                edits.setdefault(f.pool, []).append(f)
        for pool_uuid, fs in edits.items():
            self._commit_edits(self._contexts[pool_uuid], fs)
        return True

    def _attempt(self, f: Finding, action: Callable[[], None]) -> bool:
        try:
            action()
        except (VVError, OSError) as exc:
            self.emit(f"repair failed: {f.place()}: {f.message}: {exc}")
            return False
        self._repaired.add(f.key)
        self.emit(f"repaired: {f.place()}: {f.message}")
        return True

    def _commit_edits(self, ctx: Ctx, findings: list[Finding]) -> None:
        def commit() -> None:
            new = ctx.pool.copy()
            for f in findings:
                if f.edit is not None:
                    f.edit(new)
            commit_pool(ctx, new)

        if self._attempt(findings[0], commit):
            for f in findings[1:]:
                self._repaired.add(f.key)
                self.emit(f"repaired: {f.place()}: {f.message}")

    # -- rollback and dump ---------------------------------------------------

    def rollback(self, generation: int, confirm: Callable[[str], bool]) -> int:
        """Commit the content of *generation* as a new generation, then check."""
        devs = self.devices.open()
        try:
            contexts, _strays = self._read(devs)
            if len(contexts) != 1:
                raise FsckError("--rollback needs the devices of exactly one pool")
            ctx = contexts[0]
            if ctx.group.unsupported:
                raise FsckError(f"pool {ctx.name}: {ctx.group.unsupported[0]}")
            new, question = rollback_plan(ctx, generation)
            if not confirm(question):
                raise FsckError(f"generation {generation} not restored: not confirmed")
            commit_pool(ctx, new)
            self.emit(f"pool {new.name}: the configuration of generation {generation} is"
                      f" now generation {new.generation}")
        finally:
            self.devices.close(devs)
        return self.run()

    def dump(self) -> dict[str, Any]:
        """Every generation on every device, and each pool's operations (--dump, as YAML)."""
        devs = self.devices.open()
        try:
            contexts, strays = self._read(devs)
            return {"pools": [dump_pool(ctx) for ctx in contexts],
                    "other devices": [d.name for d, _why in strays]}
        finally:
            self.devices.close(devs)
