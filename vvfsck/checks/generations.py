"""Stage 1: the generations on the media.

A complete generation to open at, generations newer than it (interrupted
commits), devices missing, stale or split off, the slot copies and commit
records of every device, and devices the configuration no longer lists.
"""

from __future__ import annotations

import functools

from metadata import format as fmt
from metadata import media
from vvfsck.context import Ctx, Source
from vvfsck.findings import STAGE_CONFIG, Finding
from vvfsck.inspect import Member, RecordState, SlotState, copy_name
from vvfsck.repairs import erase_generation, write_generation


def check_generation(ctx: Ctx) -> None:
    """Some generation is complete, so the pool can open at all."""
    if ctx.choice is not None:
        return
    ctx.report(Finding(
        "generations", f"pool {ctx.name}", None,
        f"no complete generation of the configuration ({ctx.group.choice_error})",
        advice="see what is there with vvfsck --dump, then make a generation current with"
               " vvfsck --rollback GEN", stage=STAGE_CONFIG))


def check_interrupted_generations(ctx: Ctx) -> None:
    """Generations newer than the chosen one: interrupted commits left behind."""
    if ctx.choice is None:
        return
    chosen = ctx.choice.generation
    for gen in ctx.choice.rolled_back:
        committed = any(rs.record is not None and rs.record.generation == gen
                        for m in ctx.members for rs in m.records.values())
        for m in ctx.members:
            offs = [st.offset for st in m.slots.values()
                    if st.header is not None and st.header.generation == gen]
            if not offs:
                continue
            if committed:
                ctx.report(Finding(
                    "generations", m.name, min(offs),
                    f"generation {gen} was committed but cannot be used (unreadable or not"
                    f" understood by this vvfs); the pool opens at generation {chosen}",
                    advice=f"vvfsck --rollback {chosen} makes generation {chosen} current for"
                           f" good, or open the pool with a vvfs that understands it"))
                continue
            ctx.report(Finding(
                "generations", m.name, min(offs),
                f"generation {gen}: an interrupted commit (not on every device, never"
                f" committed), ignored; the pool opens at generation {chosen}",
                fix=f"erase generation {gen} from this device",
                repair=functools.partial(erase_generation, m, gen)))


def check_missing_devices(ctx: Ctx) -> None:
    """Devices the configuration lists that are not found."""
    for uuid in ctx.missing:
        d = ctx.entry(uuid)
        name = d.name if d else uuid
        seen = ctx.remembered.get(uuid) or (d.paths[0] if d and d.paths else None)
        where = f", last seen at {seen}" if seen else ""
        ctx.report(Finding(
            "missing", f"device {name} ({uuid})", None,
            f"missing: generation {ctx.pool.generation} lists it{where}",
            advice="connect it and run vvfsck again (other repairs wait for it); if it is"
                   " gone for good, take it out of the pool with vv", stage=STAGE_CONFIG))


def check_stale_devices(ctx: Ctx) -> None:
    """A device whose newest generation is older than the pool's (an old image)."""
    if ctx.choice is None:
        return
    stale = {id(s) for s in ctx.choice.stale}
    c = ctx.choice
    for m in ctx.current():
        if id(m.scan) not in stale:
            continue
        src = ctx.source(c.generation, c.digest)
        newest = max(m.scan.slots)
        f = Finding("stale", m.name, fmt.slot_offset(m.label.geometry, 0, c.generation),
                    f"stale: its newest generation is {newest}, the pool's is {c.generation}"
                    " (rolled back to an old image?)")
        if src is not None:
            f.fix = f"write generation {c.generation} to it (from {src.where})"
            f.repair = functools.partial(write_generation, m, src, ctx.commit_record(src))
        ctx.report(f)


def check_split_brain(ctx: Ctx) -> None:
    """A device that committed a generation the pool's lineage has with other contents."""
    if ctx.choice is None:
        return
    c = ctx.choice
    for s in c.scans:
        found = media.diverged(s, c)
        if found is None:
            continue
        entry = ctx.entry(s.device_uuid) if s.device_uuid else None
        name = entry.name if entry is not None else s.name
        ctx.report(Finding(
            "split-brain", s.name, None,
            f"device {name} was written apart from the pool: {found} (the pool was used in"
            f" two parts, each without the other); the pool opens at generation"
            f" {c.generation}, without what {name} holds since",
            advice=f"copy out what only {name} holds (open it alone), then: vv device online"
                   f" {ctx.name} {name} --discard-divergent", stage=STAGE_CONFIG))


def check_metadata_copies(ctx: Ctx) -> None:
    """Every up-to-date device holds the chosen generation: 2 slot copies, 2 commit records."""
    if ctx.choice is None:
        return
    c = ctx.choice
    stale = {id(s) for s in c.stale}
    src = ctx.source(c.generation, c.digest)
    for m in ctx.current():
        if id(m.scan) in stale:
            continue
        n = m.label.geometry.slot_count
        for copy in (0, 1):
            st = m.slots[(copy, c.generation % n)]
            if not st.holds(c.generation, c.digest):
                _report_copy(ctx, m, src, st.offset, copy, "slot", _state(st), (copy,), ())
        for copy in (0, 1):
            rs = m.records[(copy, c.generation % fmt.COMMIT_RECORDS)]
            if not rs.holds(c.generation, c.digest):
                state = f"damaged ({rs.problem})" if rs.problem else "missing"
                _report_copy(ctx, m, src, rs.offset, copy, "commit record", state, (), (copy,))


def _state(st: SlotState) -> str:
    if st.problem:
        return f"damaged ({st.problem})"
    if st.header is not None:
        return f"missing (the slot holds generation {st.header.generation})"
    return "missing"


def _report_copy(ctx: Ctx, m: Member, src: Source | None, offset: int, copy: int, what: str,
                 state: str, copies: tuple[int, ...], records: tuple[int, ...]) -> None:
    gen = ctx.choice.generation if ctx.choice else 0
    f = Finding("metadata", m.name, offset, f"generation {gen} {what} {copy_name(copy)}: {state}")
    if src is not None:
        f.fix = f"rewrite it from {src.where}" if copies else "write it"
        f.repair = functools.partial(write_generation, m, src, ctx.commit_record(src), copies,
                                     records)
    ctx.report(f)


def check_damaged_metadata(ctx: Ctx) -> None:
    """Any other damaged slot or commit record (older generations, garbage)."""
    chosen = ctx.choice.generation if ctx.choice else None
    current = {id(m) for m in ctx.current()}
    for m in ctx.members:
        covered_slots: set[tuple[int, int]] = set()
        covered_records: set[tuple[int, int]] = set()
        if chosen is not None and id(m) in current:
            n = m.label.geometry.slot_count
            covered_slots = {(c, chosen % n) for c in (0, 1)}
            covered_records = {(c, chosen % fmt.COMMIT_RECORDS) for c in (0, 1)}
        for key, st in sorted(m.slots.items()):
            if st.problem is None or key in covered_slots:
                continue
            if st.header is not None and chosen is not None and st.header.generation > chosen:
                continue  # check_interrupted_generations
            _report_damaged_slot(ctx, m, st)
        for key, rs in sorted(m.records.items()):
            if rs.problem is None or key in covered_records:
                continue
            _report_damaged_record(ctx, m, rs)


def _report_damaged_slot(ctx: Ctx, m: Member, st: SlotState) -> None:
    f = Finding("metadata", m.name, st.offset,
                f"slot {st.index} copy {copy_name(st.copy)}: {st.problem}")
    src = None
    if st.header is not None:
        src = ctx.source(st.header.generation, st.header.digest)
    else:
        other = m.slots[(1 - st.copy, st.index)]
        if other.ok and other.header is not None:
            src = ctx.source(other.header.generation, other.header.digest)
    if src is not None and src.generation % m.label.geometry.slot_count == st.index:
        f.fix = f"rewrite generation {src.generation} from {src.where}"
        f.repair = functools.partial(write_generation, m, src, ctx.commit_record(src),
                                     (st.copy,), ())
    else:
        f.fix = "erase the slot (no readable copy of what it held is left)"
        f.repair = functools.partial(media.erase_slot, m.dev, m.label, st.copy, st.index)
    ctx.report(f)


def _report_damaged_record(ctx: Ctx, m: Member, rs: RecordState) -> None:
    f = Finding("metadata", m.name, rs.offset,
                f"commit record {rs.index} copy {copy_name(rs.copy)}: {rs.problem}")
    other = m.records[(1 - rs.copy, rs.index)]
    if other.record is not None:
        f.fix = f"rewrite it from copy {copy_name(other.copy)}"
        f.repair = functools.partial(media.write_commit_record, m.dev, m.label, rs.copy,
                                     other.record)
    else:
        f.fix = "erase it (the other copy holds nothing either)"
        f.repair = functools.partial(media.erase_commit_record, m.dev, m.label, rs.copy,
                                     rs.index)
    ctx.report(f)


def check_orphan_devices(ctx: Ctx) -> None:
    """A device labelled for the pool that the configuration does not list: a leak."""
    if ctx.choice is None:
        return
    listed = {d.uuid for d in ctx.pool.devices}
    for m in ctx.members:
        if m.uuid in listed:
            continue
        ctx.report(Finding(
            "leak", m.name, fmt.LABEL_A_OFFSET,
            f"carries pool {ctx.name}'s label but generation {ctx.pool.generation} does not"
            " list it, so its capacity is lost (an interrupted device add or remove?)",
            fix="erase its vvfs labels and metadata areas, freeing it (data left alone)",
            repair=functools.partial(media.erase_metadata, m.dev, m.label)))
