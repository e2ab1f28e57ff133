"""The repairs that write: closures handed out with findings, and new generations.

On one device the commit protocol is slots first, then commit records
(:func:`write_generation`); a new generation of the whole pool goes through
:func:`commit_pool` (stage 2's edits, ``--rollback``).  Checks also hand out
the primitives of :mod:`metadata.media` directly (erase a slot, rewrite a
commit record or an area header, erase a device's metadata).
"""

from __future__ import annotations

from collections.abc import Sequence

from metadata import format as fmt
from metadata import media
from metadata.blockdev import BlockDevice
from metadata.errors import ConfigError
from metadata.model import Pool
from vvfs.errors import FsckError
from vvfsck.context import Ctx, Source, decode
from vvfsck.findings import format_time
from vvfsck.inspect import Member


def rewrite_label(dev: BlockDevice, label: fmt.Label, offset: int) -> None:
    dev.pwrite(label.pack(), offset)
    dev.flush()


def write_labels(dev: BlockDevice, label: fmt.Label) -> None:
    media.write_labels(dev, label)


def write_generation(m: Member, src: Source, record: fmt.CommitRecord,
                     copies: Sequence[int] = (0, 1), records: Sequence[int] = (0, 1)) -> None:
    """Slots first, then commit records: the commit protocol on one device."""
    for copy in copies:
        media.write_slot(m.dev, m.label, copy, src.generation, src.encoding, src.payload,
                         src.time)
    for copy in records:
        media.write_commit_record(m.dev, m.label, copy, record)


def erase_generation(m: Member, generation: int) -> None:
    for st in m.slots.values():
        if st.header is not None and st.header.generation == generation:
            media.erase_slot(m.dev, m.label, st.copy, st.index)
    for rs in m.records.values():
        if rs.record is not None and rs.record.generation == generation:
            media.erase_commit_record(m.dev, m.label, rs.copy, rs.index)


def sync_catalog(ctx: Ctx) -> None:
    """Write the pool as the media have it into the catalog (media win)."""
    if ctx.catalog is not None:
        ctx.catalog.sync_pool(ctx.pool, ctx.paths())


def commit_pool(ctx: Ctx, new: Pool) -> None:
    """Commit *new* as the next generation on every working member, then the catalog."""
    max_seen = max([ctx.high_water, ctx.choice.max_seen if ctx.choice else 0]
                   + [max(m.scan.slots, default=0) for m in ctx.members])
    new.generation = max_seen + 1
    new.check()
    targets = []
    for d in new.devices:
        if d.state == "failed":
            continue
        m = ctx.member(d.uuid)
        if m is None or m.provisional:
            raise FsckError(f"device {d.name} of pool {new.name} is missing or unlabelled;"
                            " nothing committed")
        targets.append(media.Target(m.dev, m.label))
    media.commit_generation(targets, new)
    if ctx.catalog is not None and ctx.catalog.find_pool(new.uuid) is not None:
        paths = ctx.paths()
        ctx.catalog.sync_pool(new, {u: p for u, p in paths.items()
                                    if any(d.uuid == u for d in new.devices)})


def rollback_plan(ctx: Ctx, generation: int) -> tuple[Pool, str]:
    """The pool to commit for --rollback GEN and the question to confirm it with."""
    digests = {st.header.digest for m in ctx.members for st in m.slots.values()
               if st.ok and st.header is not None and st.header.generation == generation}
    old = next((p for p in (decode(ctx.source(generation, d)) for d in sorted(digests))
                if p is not None), None)
    if old is None:
        raise FsckError(f"pool {ctx.name}: no readable copy of generation {generation}"
                        " (see vvfsck --dump)")
    new = old.copy()
    if ctx.choice is not None:
        new.active_host = ctx.pool.active_host
    try:
        new.check()
    except ConfigError as exc:
        raise FsckError(f"generation {generation} is not consistent: {exc}") from None
    now = {v.name for v in ctx.pool.volumes} if ctx.choice else set()
    then = {v.name for v in old.volumes}
    changes = []
    if now - then:
        changes.append("drops volumes " + ", ".join(sorted(now - then)))
    if then - now:
        changes.append("brings back volumes " + ", ".join(sorted(then - now)))
    current = f"generation {ctx.choice.generation}" if ctx.choice else "no usable generation"
    question = (f"Pool {old.name} is at {current}; make the configuration of generation"
                f" {generation} ({format_time(_old_time(ctx, generation))}) current again"
                + (f" ({'; '.join(changes)})" if changes else "") + "?")
    return new, question


def _old_time(ctx: Ctx, generation: int) -> float:
    for m in ctx.members:
        for st in m.slots.values():
            if st.header is not None and st.header.generation == generation:
                return st.header.time
    return 0.0
