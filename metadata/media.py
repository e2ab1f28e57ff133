"""Reading and committing a pool's configuration on its devices.

The commit protocol (two phases, see man/vvfs.5 "Commit")
---------------------------------------------------------
To commit generation *g* (always one more than the highest generation seen
on any device, so an abandoned attempt is never reused):

1. *Prepare*: on each device, write slot ``g % N`` in area A and area B,
   then flush that device.  No existing generation is touched: the slot
   overwritten held ``g - N``.
2. *Commit*: only once every device is prepared, write commit record
   ``g % 8`` in area A and area B of each device, then flush it.

Opening (:func:`choose_generation`) takes the highest generation *g* found in
a valid slot such that either some device has a valid commit record for *g*
(so every device was prepared) or every working device that *g*'s own
configuration lists holds a valid slot for *g* (prepared everywhere, commit
records not yet written).  Anything higher was interrupted in phase 1 and is
rolled back simply by being ignored.  A crash at any point therefore leaves
the pool opening at the old or the new generation on every device, never a
mix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from . import format as fmt
from .blockdev import BlockDevice, DeviceIOError
from .errors import (
    ChecksumError,
    MediaError,
    NoValidGenerationError,
    UnsupportedFeatureError,
    VVError,
)
from .model import Pool, UnsupportedConfigError

log = logging.getLogger(__name__)


class CommitError(VVError):
    """A generation could not be prepared on every device; the old one stands."""


@dataclass
class SlotCopy:
    copy: int
    offset: int
    header: fmt.SlotHeader


@dataclass
class DeviceScan:
    """Everything read off one device's labels and metadata areas."""

    dev: BlockDevice
    label: fmt.Label | None = None
    #: per label copy: None when valid, else the error
    label_errors: list[MediaError | None] = field(default_factory=lambda: [None, None])
    area_errors: list[MediaError | None] = field(default_factory=lambda: [None, None])
    #: generation -> valid slot headers (one per area copy holding it)
    slots: dict[int, list[SlotCopy]] = field(default_factory=dict)
    #: generation -> valid commit record
    commits: dict[int, fmt.CommitRecord] = field(default_factory=dict)
    #: every problem seen on this device (bad checksums, torn slots, ...)
    findings: list[MediaError] = field(default_factory=list)
    #: structures written by a newer vvfs (unknown version, encoding or
    #: feature): the pool must not be opened, let alone changed, by this one
    unsupported: list[MediaError] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.dev.name

    @property
    def device_uuid(self) -> str | None:
        return self.label.device_uuid if self.label else None

    @property
    def pool_uuid(self) -> str | None:
        return self.label.pool_uuid if self.label else None

    def newest_committed(self) -> int | None:
        return max(self.commits, default=None)

    def newest_slot(self) -> int | None:
        return max(self.slots, default=None)


def read_label(dev: BlockDevice) -> tuple[fmt.Label | None, list[MediaError | None]]:
    """Read both label copies; return the first valid one and each copy's error."""
    errors: list[MediaError | None] = [None, None]
    label_a = label_b = None
    try:
        label_a = fmt.Label.unpack(dev.pread(fmt.LABEL_SIZE, fmt.LABEL_A_OFFSET), dev.name,
                                   fmt.LABEL_A_OFFSET)
    except (MediaError, DeviceIOError) as exc:
        errors[0] = _as_media(exc, dev, fmt.LABEL_A_OFFSET)
    if label_a is not None:
        off_b = label_a.geometry.label_b
    else:
        size = dev.size()
        off_b = size - size % fmt.BLOCK - fmt.LABEL_SIZE
    try:
        if off_b < fmt.LABEL_A_OFFSET + fmt.LABEL_SIZE:
            raise MediaError(dev.name, off_b, "device too small for a label B")
        label_b = fmt.Label.unpack(dev.pread(fmt.LABEL_SIZE, off_b), dev.name, off_b)
    except (MediaError, DeviceIOError) as exc:
        errors[1] = _as_media(exc, dev, off_b)
    if label_a is not None and label_b is not None and label_a != label_b:
        errors[1] = MediaError(dev.name, off_b, "label B differs from label A")
    return label_a or label_b, errors


def _as_media(exc: VVError, dev: BlockDevice, offset: int) -> MediaError:
    if isinstance(exc, MediaError):
        return exc
    return MediaError(dev.name, offset, str(exc))


def scan_device(dev: BlockDevice, label: fmt.Label | None = None) -> DeviceScan:
    """Read labels, area headers, commit rings and slot headers of one device.

    Never raises for bad media: every problem lands in ``findings``.  Only a
    device that cannot be read at all raises DeviceIOError.

    *label* is used only when neither label copy is valid: a checker passes
    a label it rebuilt (from a metadata area header) so that the areas of a
    device whose labels are both lost can still be read.
    """
    scan = DeviceScan(dev)
    scan.label, scan.label_errors = read_label(dev)
    for e in scan.label_errors:
        if isinstance(e, UnsupportedFeatureError):
            scan.unsupported.append(e)
        elif e is not None:
            scan.findings.append(e)
    if scan.label is None:
        if label is None:
            return scan
        scan.label = label
    g = scan.label.geometry
    for copy, area in enumerate(g.area_offsets):
        _scan_area(scan, copy, area)
    return scan


def _scan_area(scan: DeviceScan, copy: int, area: int) -> None:
    dev, label = scan.dev, scan.label
    assert label is not None  # caller checked; not data from media
    g = label.geometry
    try:
        hdr = fmt.AreaHeader.unpack(dev.pread(fmt.AREA_HEADER_SIZE, area), dev.name, area)
        if (hdr.copy, hdr.pool_uuid, hdr.device_uuid, hdr.offset, hdr.size, hdr.slot_count,
                hdr.slot_size) != (copy, label.pool_uuid, label.device_uuid, area, g.area_size,
                                   g.slot_count, g.slot_size):
            raise MediaError(dev.name, area, "metadata area header does not match the label")
    except (MediaError, DeviceIOError) as exc:
        scan.area_errors[copy] = _as_media(exc, dev, area)
        scan.findings.append(scan.area_errors[copy])  # type: ignore[arg-type]
    ring_off = area + fmt.COMMIT_RING_OFFSET
    try:
        ring = dev.pread(fmt.COMMIT_RECORDS * fmt.SECTOR, ring_off)
    except DeviceIOError as exc:
        scan.findings.append(_as_media(exc, dev, ring_off))
        ring = b""
    for i in range(len(ring) // fmt.SECTOR):
        raw = ring[i * fmt.SECTOR:(i + 1) * fmt.SECTOR]
        if raw == bytes(fmt.SECTOR):
            continue
        off = ring_off + i * fmt.SECTOR
        try:
            rec = fmt.unpack_commit(raw, dev.name, off)
        except UnsupportedFeatureError as exc:
            scan.unsupported.append(exc)
            continue
        except MediaError as exc:
            scan.findings.append(exc)
            continue
        if rec.pool_uuid != label.pool_uuid or rec.generation % fmt.COMMIT_RECORDS != i:
            scan.findings.append(MediaError(dev.name, off, "commit record of another pool or slot"))
            continue
        scan.commits.setdefault(rec.generation, rec)
    for i in range(g.slot_count):
        off = area + fmt.SLOTS_OFFSET + i * g.slot_size
        try:
            raw = dev.pread(fmt.SLOT_HEADER_SIZE, off)
        except DeviceIOError as exc:
            scan.findings.append(_as_media(exc, dev, off))
            continue
        if raw == bytes(fmt.SLOT_HEADER_SIZE):
            continue
        try:
            hdr_s = fmt.unpack_slot_header(raw, dev.name, off)
        except UnsupportedFeatureError as exc:
            scan.unsupported.append(exc)
            continue
        except MediaError as exc:
            scan.findings.append(exc)
            continue
        if (hdr_s.pool_uuid, hdr_s.device_uuid) != (label.pool_uuid, label.device_uuid):
            scan.findings.append(MediaError(dev.name, off, "metadata slot of another device"))
            continue
        if hdr_s.generation % g.slot_count != i or hdr_s.length > g.max_payload:
            scan.findings.append(MediaError(dev.name, off, "metadata slot in the wrong place"))
            continue
        scan.slots.setdefault(hdr_s.generation, []).append(SlotCopy(copy, off, hdr_s))


def read_config(scan: DeviceScan, generation: int, digest: bytes | None = None,
                *, decode: bool = True) -> dict | None:
    """Read generation *generation* from the device, verifying every copy.

    Returns the document of the first copy that verifies (or None when
    *decode* is false: then the copies are only checked against their
    digest); a damaged copy is recorded in ``scan.findings`` so that it is
    noticed while the other copy is still good.  Raises MediaError when no
    copy verifies.
    """
    doc: dict | None = None
    good = False
    last: MediaError | None = None
    for sc in scan.slots.get(generation, []):
        if digest is not None and sc.header.digest != digest:
            continue
        off = sc.offset + fmt.SLOT_HEADER_SIZE
        try:
            payload = scan.dev.pread(sc.header.length, off)
            if decode and doc is None:
                doc = fmt.decode_payload(sc.header, payload, scan.name, off)
            elif fmt.payload_digest(payload) != sc.header.digest:
                raise ChecksumError(scan.name, off, f"generation {generation}: payload checksum"
                                    " mismatch")
            good = True
        except (MediaError, DeviceIOError) as exc:
            last = _as_media(exc, scan.dev, off)
            if last not in scan.findings:
                scan.findings.append(last)
    if not good:
        raise last or MediaError(scan.name, 0, f"generation {generation} not on this device")
    return doc


@dataclass
class Choice:
    """The generation a pool opens at, and what the scans said about it."""

    pool: Pool
    generation: int
    digest: bytes
    #: highest generation seen in any slot (a new commit uses one more)
    max_seen: int
    #: generations newer than the chosen one, ignored as interrupted
    rolled_back: list[int]
    #: device uuids the configuration lists (and not failed) with no scan
    missing: list[str]
    #: scans of devices whose newest generation is older than the chosen one
    stale: list[DeviceScan]
    #: scans lacking a valid slot or commit record for the chosen generation
    behind: list[DeviceScan]
    scans: list[DeviceScan]


def diverged(scan: DeviceScan, choice: Choice) -> str | None:
    """Did *scan*'s device commit configurations that the chosen lineage does not have?

    Says how it shows (a phrase), or None.  Either sign is a split brain --
    the pool was used in two parts, each without the other, and what
    *scan*'s part wrote since is not in the chosen configuration's data:

    * the chosen configuration has the device failed since generation F
      (``Device.failed_at``; commits never reach a failed device) and the
      device holds a commit record of generation F or later;
    * it holds a commit record of a generation that a device holding the
      chosen generation committed with other contents (generation numbers
      are never reused), as long as both rings still hold that generation.

    A device that holds the chosen generation's commit record is in the
    pool, whatever older records it keeps: the pool committed to it (after
    ``vv device online --discard-divergent`` rebuilt it, say).
    """
    if _holds_chosen(scan, choice):
        return None
    entry = next((d for d in choice.pool.devices if d.uuid == scan.device_uuid), None)
    newest = scan.newest_committed()
    if entry is not None and entry.state == "failed" and entry.failed_at and newest is not None \
            and newest >= entry.failed_at:
        return (f"it committed generation {newest}, while the pool has had it failed since"
                f" generation {entry.failed_at}")
    for gen in sorted(scan.commits, reverse=True):
        other = _contradicted(scan, choice, gen, scan.commits[gen].digest)
        if other is not None:
            return f"its generation {gen} is not the generation {gen} on {other.name}"
    return None


def _holds_chosen(scan: DeviceScan, choice: Choice) -> bool:
    rec = scan.commits.get(choice.generation)
    return rec is not None and rec.digest == choice.digest


def _contradicted(scan: DeviceScan, choice: Choice, gen: int, digest: bytes
                  ) -> DeviceScan | None:
    """A device of the chosen lineage that committed *gen* with contents other than *digest*."""
    for s in choice.scans:
        if s is scan or not _holds_chosen(s, choice):
            continue
        other = s.commits.get(gen)
        if other is not None and other.digest != digest:
            return s
    return None


def apart_generations(scan: DeviceScan, choice: Choice) -> list[int]:
    """The generations on *scan*'s device written apart from the pool (see :func:`diverged`).

    Those from the failure on (``Device.failed_at``) and those the chosen
    lineage committed with other contents, slots and commit records alike;
    the history the device shares with the pool is left out.
    """
    entry = next((d for d in choice.pool.devices if d.uuid == scan.device_uuid), None)
    since = entry.failed_at if entry is not None and entry.state == "failed" else 0
    out = []
    for gen in sorted(set(scan.slots) | set(scan.commits)):
        digests = {c.header.digest for c in scan.slots.get(gen, [])}
        if gen in scan.commits:
            digests.add(scan.commits[gen].digest)
        if (since and gen >= since) or any(_contradicted(scan, choice, gen, d) is not None
                                           for d in digests):
            out.append(gen)
    return out


def erase_generations(dev: BlockDevice, label: fmt.Label, generations: list[int]) -> None:
    """Erase the slots (both areas) and commit records of *generations* on *dev*."""
    n = label.geometry.slot_count
    for gen in generations:
        for copy in (0, 1):
            _erase_slot_of(dev, label, copy, gen % n, gen)
            _erase_record_of(dev, label, copy, gen)
    dev.flush()


def _erase_slot_of(dev: BlockDevice, label: fmt.Label, copy: int, index: int, gen: int) -> None:
    off = label.geometry.area_offsets[copy] + fmt.SLOTS_OFFSET + index * label.geometry.slot_size
    raw = dev.pread(fmt.SLOT_HEADER_SIZE, off)
    try:
        hdr = fmt.unpack_slot_header(raw, dev.name, off)
    except MediaError:
        return  # empty or damaged: no longer a generation of anything
    if hdr.generation == gen:
        dev.pwrite(bytes(fmt.SLOT_HEADER_SIZE), off)


def _erase_record_of(dev: BlockDevice, label: fmt.Label, copy: int, gen: int) -> None:
    off = (label.geometry.area_offsets[copy] + fmt.COMMIT_RING_OFFSET
           + gen % fmt.COMMIT_RECORDS * fmt.SECTOR)
    try:
        rec = fmt.unpack_commit(dev.pread(fmt.SECTOR, off), dev.name, off)
    except MediaError:
        return
    if rec.generation == gen:
        dev.pwrite(bytes(fmt.SECTOR), off)


def _candidates(scans: list[DeviceScan]) -> dict[tuple[int, bytes], list[DeviceScan]]:
    """(generation, digest) -> the scans holding a slot of it, in scan order."""
    candidates: dict[tuple[int, bytes], list[DeviceScan]] = {}
    for s in scans:
        for gen, copies in s.slots.items():
            for digest in {c.header.digest for c in copies}:
                holders = candidates.setdefault((gen, digest), [])
                if s not in holders:
                    holders.append(s)
    return candidates


def choose_generation(scans: list[DeviceScan], among: list[DeviceScan] | None = None
                      ) -> Choice:
    """Pick the generation the pool opens at (see module docstring).

    *scans*: the present devices of one pool.  Only generations that
    *among* (some of *scans*; default all) hold are candidates, the rest is
    judged over all.  Raises NoValidGenerationError if none qualifies.
    """
    newer = [e for s in scans for e in s.unsupported]
    if newer:
        raise UnsupportedFeatureError(newer[0].device, newer[0].offset,
                                      newer[0].what + "; refusing to open the pool")
    candidates = _candidates(scans)
    eligible = candidates if among is None else _candidates(among)
    if not eligible:
        raise NoValidGenerationError(
            "no valid configuration generation on " + ", ".join(s.name for s in scans)
        )
    max_seen = max(g for g, _ in candidates)
    rolled_back: list[int] = []
    for gen, digest in sorted(eligible, reverse=True):
        holders = candidates[(gen, digest)]
        committed = any(
            (rec := s.commits.get(gen)) is not None and rec.digest == digest for s in scans
        )
        doc, holders = _verified_holders(holders, gen, digest)
        if doc is None:
            rolled_back.append(gen)
            continue
        try:
            pool = Pool.from_dict(doc)
        except UnsupportedConfigError as exc:
            where = holders[0].slots[gen][0].offset
            raise UnsupportedFeatureError(holders[0].name, where, f"generation {gen}: {exc};"
                                          " refusing to open the pool") from None
        except VVError as exc:
            holders[0].findings.append(MediaError(holders[0].name, 0,
                                                  f"generation {gen}: {exc}"))
            rolled_back.append(gen)
            continue
        wanted = {d.uuid for d in pool.devices if d.state != "failed"}
        have = {s.device_uuid for s in holders}
        if not committed and not wanted <= have:
            rolled_back.append(gen)
            continue
        present = {s.device_uuid for s in scans}
        return Choice(
            pool=pool, generation=gen, digest=digest, max_seen=max_seen,
            rolled_back=sorted(set(rolled_back)),
            missing=sorted(wanted - present),
            stale=[s for s in scans if s.device_uuid in wanted and s.newest_slot() is not None
                   and max(s.slots) < gen],
            behind=[s for s in scans if s.device_uuid in wanted
                    and (s not in holders or s.commits.get(gen) is None)],
            scans=scans,
        )
    raise NoValidGenerationError(
        "no complete configuration generation on " + ", ".join(s.name for s in scans)
        + f" (interrupted: {', '.join(map(str, sorted(set(rolled_back))))})"
    )


def _verified_holders(
    holders: list[DeviceScan], gen: int, digest: bytes
) -> tuple[dict | None, list[DeviceScan]]:
    """Check generation *gen* on every holder; decode it once, from the first good one."""
    doc: dict | None = None
    verified = []
    for s in holders:
        try:
            d = read_config(s, gen, digest, decode=doc is None)
        except MediaError:
            continue
        verified.append(s)
        if doc is None:
            doc = d
    return doc, verified


# ---------------------------------------------------------------------------
# Writing


def initialize_device(dev: BlockDevice, label: fmt.Label) -> None:
    """Write a fresh label and empty metadata areas (both copies), then flush."""
    g = label.geometry
    dev.pwrite(bytes(fmt.LABEL_A_OFFSET), 0)
    for copy, area in enumerate(g.area_offsets):
        hdr = fmt.AreaHeader(copy, label.pool_uuid, label.device_uuid, area, g.area_size,
                             g.slot_count, g.slot_size)
        dev.pwrite(hdr.pack().ljust(fmt.SLOTS_OFFSET, b"\0"), area)
        for i in range(g.slot_count):
            dev.pwrite(bytes(fmt.SLOT_HEADER_SIZE), area + fmt.SLOTS_OFFSET + i * g.slot_size)
    raw = label.pack()
    for off in g.label_offsets:
        dev.pwrite(raw, off)
    dev.flush()


def write_labels(dev: BlockDevice, label: fmt.Label) -> None:
    """Rewrite both label copies (repair), A then B, flushing after each."""
    raw = label.pack()
    for off in label.geometry.label_offsets:
        dev.pwrite(raw, off)
        dev.flush()


# ---------------------------------------------------------------------------
# Repairs (vvfsck): rewrite or erase one structure, then flush


def write_area_header(dev: BlockDevice, label: fmt.Label, copy: int) -> None:
    """Rewrite the header of area *copy* from the label (the rings are left alone)."""
    g = label.geometry
    area = g.area_offsets[copy]
    hdr = fmt.AreaHeader(copy, label.pool_uuid, label.device_uuid, area, g.area_size,
                         g.slot_count, g.slot_size)
    dev.pwrite(hdr.pack(), area)
    dev.flush()


def write_slot(dev: BlockDevice, label: fmt.Label, copy: int, generation: int, encoding: int,
               payload: bytes, when: float) -> None:
    """Write generation *generation* (its payload bytes as committed) into one slot copy."""
    data = fmt.pack_slot(label.pool_uuid, label.device_uuid, generation, encoding, payload,
                         label.geometry.max_payload, when)
    dev.pwrite(data, fmt.slot_offset(label.geometry, copy, generation))
    dev.flush()


def write_commit_record(dev: BlockDevice, label: fmt.Label, copy: int,
                        record: fmt.CommitRecord) -> None:
    """Write *record* into its place in the commit ring of area *copy*."""
    raw = fmt.pack_commit(record.pool_uuid, record.generation, record.digest, record.time)
    dev.pwrite(raw, fmt.commit_offset(label.geometry, copy, record.generation))
    dev.flush()


def erase_slot(dev: BlockDevice, label: fmt.Label, copy: int, index: int) -> None:
    """Zero the header of slot *index* of area *copy*: the slot is empty again."""
    g = label.geometry
    dev.pwrite(bytes(fmt.SLOT_HEADER_SIZE), g.area_offsets[copy] + fmt.SLOTS_OFFSET
               + index * g.slot_size)
    dev.flush()


def erase_commit_record(dev: BlockDevice, label: fmt.Label, copy: int, index: int) -> None:
    """Zero record *index* of the commit ring of area *copy*."""
    off = label.geometry.area_offsets[copy] + fmt.COMMIT_RING_OFFSET + index * fmt.SECTOR
    dev.pwrite(bytes(fmt.SECTOR), off)
    dev.flush()


def erase_metadata(dev: BlockDevice, label: fmt.Label) -> None:
    """Erase both labels, area headers, commit rings and slot headers (data untouched)."""
    g = label.geometry
    for off in g.label_offsets:
        dev.pwrite(bytes(fmt.LABEL_SIZE), off)
    for area in g.area_offsets:
        dev.pwrite(bytes(fmt.SLOTS_OFFSET), area)
        for i in range(g.slot_count):
            dev.pwrite(bytes(fmt.SLOT_HEADER_SIZE), area + fmt.SLOTS_OFFSET + i * g.slot_size)
    dev.flush()


@dataclass
class Target:
    """A device to commit to, with the label that says where its areas are."""

    dev: BlockDevice
    label: fmt.Label


def commit_generation(targets: list[Target], pool: Pool, *, compress: bool = True) -> bytes:
    """Commit *pool* (whose ``generation`` is already the new one) to *targets*.

    Raises CommitError if any device fails while preparing: nothing is then
    committed anywhere and the previous generation stands.  A device failing
    while writing its commit record does not undo the commit (every device
    is prepared by then); it is logged and returned to the caller through
    the exception-free path as a finding on the next open.
    """
    encoding, payload = fmt.encode_payload(pool.to_dict(), compress)
    digest = fmt.payload_digest(payload)
    gen = pool.generation
    prepared: list[Target] = []
    for t in targets:
        try:
            for copy in (0, 1):
                data = fmt.pack_slot(pool.uuid, t.label.device_uuid, gen, encoding, payload,
                                     t.label.geometry.max_payload)
                prepared.append(t)
                t.dev.pwrite(data, fmt.slot_offset(t.label.geometry, copy, gen))
            t.dev.flush()
        except (DeviceIOError, MediaError) as exc:
            _abort(prepared, gen)
            raise CommitError(f"generation {gen} not committed: {exc}") from exc
    record = fmt.pack_commit(pool.uuid, gen, digest)
    for t in targets:
        try:
            for copy in (0, 1):
                t.dev.pwrite(record, fmt.commit_offset(t.label.geometry, copy, gen))
            t.dev.flush()
        except DeviceIOError as exc:
            log.warning("generation %d committed, but %s could not record it: %s",
                        gen, t.dev.name, exc)
    return digest


def _abort(prepared: list[Target], gen: int) -> None:
    """Best effort: erase generation *gen*'s slots where phase 1 wrote them.

    Not needed for safety (an incomplete generation is ignored on open) but
    it keeps a failed commit from opening as the new generation should the
    failing device later hold a copy after all.  Errors here are ignored:
    they leave the same state as a crash.
    """
    for t in {id(t): t for t in prepared}.values():
        try:
            for copy in (0, 1):
                t.dev.pwrite(bytes(fmt.SLOT_HEADER_SIZE), fmt.slot_offset(t.label.geometry, copy,
                                                                           gen))
            t.dev.flush()
        except DeviceIOError:
            continue
