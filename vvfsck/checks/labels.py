"""Stage 0: labels and metadata area headers, where everything else is.

Also the two findings that stop or narrow the check before anything is read
further: media of a newer vvfs, and one device uuid on two devices.
"""

from __future__ import annotations

import functools

from metadata import format as fmt
from metadata import media
from metadata.model import Device
from vvfsck.context import Ctx
from vvfsck.findings import STAGE_LABELS, Finding
from vvfsck.inspect import Member, copy_name
from vvfsck.repairs import rewrite_label, write_labels


def check_unsupported(ctx: Ctx) -> None:
    """Media written by a newer vvfs: reported, and nothing else is checked or changed."""
    for err in ctx.group.unsupported:
        ctx.report(Finding(
            "unsupported", err.device, err.offset, err.what,
            advice="written by a newer vvfs: check the pool with that vvfs; this one reads no"
                   " further and changes nothing", stage=STAGE_LABELS))


def check_duplicate_uuids(ctx: Ctx) -> None:
    """Two devices carrying one device uuid (cloned media): report both, repair neither."""
    for used, clone in ctx.group.clones:
        ctx.report(Finding(
            "duplicate-uuid", clone.name, fmt.LABEL_A_OFFSET,
            f"device uuid {clone.uuid} is also on {used.name} (cloned media?);"
            f" only {used.name} is checked",
            advice="vvfsck cannot tell the original from the copy: detach the device that"
                   " must not be in the pool, or erase its labels (bytes 4096-8191 and its"
                   " last 4 KiB), then run vvfsck again",
            stage=STAGE_LABELS))


def check_labels(ctx: Ctx) -> None:
    """Each label copy: checksum, magic, version, and both copies alike."""
    for m in ctx.members:
        if m.provisional:
            continue
        good = m.label
        for copy, err in enumerate(m.scan.label_errors):
            if err is None:
                continue
            what = err.what.removeprefix("label: ")
            msg = what if "differs" in what else f"label {copy_name(copy)}: {what}"
            off = good.geometry.label_offsets[copy]
            ctx.report(Finding(
                "labels", m.name, off, msg, fix=f"rewrite label {copy_name(copy)} from label"
                f" {copy_name(1 - copy)}", stage=STAGE_LABELS,
                repair=functools.partial(rewrite_label, m.dev, good, off)))


def check_lost_labels(ctx: Ctx) -> None:
    """Both label copies lost: rebuild from the area header and the configuration."""
    for m in ctx.members:
        if not m.provisional:
            continue
        msg = (f"both labels lost; found by its metadata area header at byte"
               f" {m.header_offset}")
        entry = ctx.entry(m.uuid)
        if ctx.choice is None:
            ctx.report(Finding("labels", m.name, fmt.LABEL_A_OFFSET, msg,
                               advice="no readable configuration to rebuild the label from",
                               stage=STAGE_LABELS))
            continue
        if entry is None:
            continue  # not in the configuration: check_orphan_devices reports it
        label, why = _rebuilt_label(ctx, m, entry)
        if label is None:
            ctx.report(Finding("labels", m.name, fmt.LABEL_A_OFFSET, msg, advice=why,
                               stage=STAGE_LABELS))
            continue
        ctx.report(Finding(
            "labels", m.name, fmt.LABEL_A_OFFSET, msg,
            fix=f"rebuild both labels from the area header and device {entry.name} of"
                f" generation {ctx.pool.generation}", stage=STAGE_LABELS,
            repair=functools.partial(write_labels, m.dev, label)))


def _rebuilt_label(ctx: Ctx, m: Member, entry: Device) -> tuple[fmt.Label | None, str]:
    prov = m.label.geometry
    try:
        g = fmt.plan_geometry(entry.size, ctx.pool.extent_size, prov.area_size,
                              prov.slot_count)
    except fmt.GeometryError as exc:
        return None, f"the configuration's geometry of device {entry.name} is unusable: {exc}"
    labelled = entry.extent_count + entry.csum_extents + entry.log_extents  # + carved regions
    if (g.slot_size, g.data_start, g.extent_count) != (
        prov.slot_size, entry.data_start, labelled
    ) or (m.header_offset != fmt.MDA_A_OFFSET and m.header_offset != g.area_b):
        return None, (f"the configuration's geometry of device {entry.name} does not match its"
                      " metadata area; restore the label from a backup")
    ref = next((o.label for o in ctx.members if not o.provisional), None)
    incompat = ref.incompat if ref else frozenset()
    compat = ref.compat if ref else frozenset()
    return fmt.Label(ctx.group.uuid, m.uuid, g, entry.added, incompat, compat), ""


def check_area_headers(ctx: Ctx) -> None:
    """Each metadata area header: valid and matching the label."""
    for m in ctx.members:
        if m.provisional:
            continue
        for copy, err in enumerate(m.scan.area_errors):
            if err is None:
                continue
            what = err.what.removeprefix("metadata area header: ")
            ctx.report(Finding(
                "labels", m.name, m.label.geometry.area_offsets[copy],
                f"metadata area header {copy_name(copy)}: {what}", fix="rewrite it from the label",
                stage=STAGE_LABELS,
                repair=functools.partial(media.write_area_header, m.dev, m.label, copy)))
