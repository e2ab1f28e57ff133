"""What a pass reads: one view per device, the devices grouped by pool.

Each labelled device is scanned (:func:`metadata.media.scan_device`) and
every slot copy and commit record of it classified (:class:`Member`); a
device whose labels are both lost is recognised by a metadata area header.
The devices are grouped by pool (:class:`PoolGroup`), one member kept per
device uuid, and the generation each pool opens at is chosen
(:func:`metadata.media.choose_generation`).  Nothing here reports or
writes: the checks judge what was read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from metadata import format as fmt
from metadata import media
from metadata.blockdev import BlockDevice, DeviceIOError
from metadata.errors import MediaError, NoValidGenerationError, UnsupportedFeatureError
from vvfs.errors import FsckError

#: the names of the two copies of every on-media structure
COPY = ("A", "B")


@dataclass
class SlotState:
    """One slot copy: its valid header, or what is wrong with it (both None: empty)."""

    copy: int
    index: int
    offset: int
    header: fmt.SlotHeader | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.header is not None and self.problem is None

    @property
    def empty(self) -> bool:
        return self.header is None and self.problem is None

    def holds(self, generation: int, digest: bytes) -> bool:
        return (self.ok and self.header is not None and self.header.generation == generation
                and self.header.digest == digest)


@dataclass
class RecordState:
    """One commit record: valid, damaged (problem) or empty (both None)."""

    copy: int
    index: int
    offset: int
    record: fmt.CommitRecord | None = None
    problem: str | None = None

    def holds(self, generation: int, digest: bytes) -> bool:
        return (self.record is not None and self.record.generation == generation
                and self.record.digest == digest)


@dataclass
class Member:
    """A device of a pool as one pass saw it."""

    scan: media.DeviceScan
    #: the label was rebuilt from a metadata area header (both copies lost)
    provisional: bool = False
    header_offset: int | None = None
    slots: dict[tuple[int, int], SlotState] = field(default_factory=dict)
    records: dict[tuple[int, int], RecordState] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.scan.name

    @property
    def dev(self) -> BlockDevice:
        return self.scan.dev

    @property
    def label(self) -> fmt.Label:
        if self.scan.label is None:  # members always have one; not data from media
            raise FsckError(f"{self.name}: no label")
        return self.scan.label

    @property
    def uuid(self) -> str:
        return self.label.device_uuid


@dataclass
class PoolGroup:
    """The devices of one pool found in a pass, and the generation the pool opens at."""

    uuid: str
    members: list[Member] = field(default_factory=list)
    #: (the member used, a second device carrying the same device uuid)
    clones: list[tuple[Member, Member]] = field(default_factory=list)
    choice: media.Choice | None = None
    choice_error: str | None = None
    #: structures written by a newer vvfs: the pool is reported, never touched
    unsupported: list[MediaError] = field(default_factory=list)


def copy_name(copy: int) -> str:
    """Copy 0 or 1 of a label, area, slot or commit record, as findings name it: A or B."""
    return COPY[copy]


# ---------------------------------------------------------------------------
# Reading a device


def _inspect(scan: media.DeviceScan) -> Member:
    """Classify every slot copy and commit record of a labelled device."""
    m = Member(scan)
    g = m.label.geometry
    valid = {sc.offset: sc.header for copies in scan.slots.values() for sc in copies}
    problems = {f.offset: f.what.removeprefix("metadata slot: ") for f in scan.findings}
    for copy, area in enumerate(g.area_offsets):
        for i in range(g.slot_count):
            off = area + fmt.SLOTS_OFFSET + i * g.slot_size
            st = SlotState(copy, i, off, valid.get(off), problems.get(off))
            if st.header is not None:
                st.problem = _payload_problem(scan.dev, st)
            m.slots[(copy, i)] = st
        _inspect_ring(m, copy, area)
    return m


def _payload_problem(dev: BlockDevice, st: SlotState) -> str | None:
    if st.header is None:
        return None
    try:
        payload = dev.pread(st.header.length, st.offset + fmt.SLOT_HEADER_SIZE)
    except DeviceIOError as exc:
        return str(exc)
    if fmt.payload_digest(payload) != st.header.digest:
        return f"generation {st.header.generation}: payload checksum mismatch"
    return None


def _inspect_ring(m: Member, copy: int, area: int) -> None:
    ring_off = area + fmt.COMMIT_RING_OFFSET
    try:
        ring = m.dev.pread(fmt.COMMIT_RECORDS * fmt.SECTOR, ring_off)
    except DeviceIOError as exc:
        for i in range(fmt.COMMIT_RECORDS):
            m.records[(copy, i)] = RecordState(copy, i, ring_off + i * fmt.SECTOR,
                                               problem=str(exc))
        return
    for i in range(fmt.COMMIT_RECORDS):
        off = ring_off + i * fmt.SECTOR
        raw = ring[i * fmt.SECTOR:(i + 1) * fmt.SECTOR]
        st = RecordState(copy, i, off)
        m.records[(copy, i)] = st
        if raw == bytes(fmt.SECTOR):
            continue
        try:
            rec = fmt.unpack_commit(raw, m.name, off)
        except MediaError as exc:
            st.problem = exc.what.removeprefix("commit record: ")
            continue
        if rec.pool_uuid != m.label.pool_uuid:
            st.problem = "commit record of another pool"
        elif rec.generation % fmt.COMMIT_RECORDS != i:
            st.problem = f"commit record of generation {rec.generation} in the wrong place"
        else:
            st.record = rec


# ---------------------------------------------------------------------------
# A device whose labels are both lost


def _recover(dev: BlockDevice, area_sizes: set[int]) -> Member | None:
    """A member for a device whose labels are both lost, found by an area header."""
    found = _identify(dev, area_sizes)
    if found is None:
        return None
    hdr, off = found
    label = _provisional_label(dev, hdr)
    if label is None:
        return None
    member = _inspect(media.scan_device(dev, label))
    member.provisional = True
    member.header_offset = off
    return member


def _identify(dev: BlockDevice, area_sizes: Iterable[int]) -> tuple[fmt.AreaHeader, int] | None:
    """Find a label-less device's metadata area header: at byte 8192, or copy B near the end."""
    try:
        size = dev.size()
    except DeviceIOError:
        return None
    end = size - size % fmt.BLOCK - fmt.LABEL_SIZE
    for off in [fmt.MDA_A_OFFSET] + [end - a for a in sorted(set(area_sizes))]:
        if off < fmt.MDA_A_OFFSET:
            continue
        try:
            hdr = fmt.AreaHeader.unpack(dev.pread(fmt.AREA_HEADER_SIZE, off), dev.name, off)
        except (MediaError, DeviceIOError):
            continue
        if hdr.offset == off and hdr.copy == (0 if off == fmt.MDA_A_OFFSET else 1):
            return hdr, off
    return None


def _provisional_label(dev: BlockDevice, hdr: fmt.AreaHeader) -> fmt.Label | None:
    """A label that locates the areas only (extents unknown): enough to read the slots."""
    size = dev.size()
    size -= size % fmt.BLOCK
    label_b = size - fmt.LABEL_SIZE
    area_b = label_b - hdr.size if hdr.copy == 0 else hdr.offset
    data_start = -(-(fmt.MDA_A_OFFSET + hdr.size) // fmt.DATA_ALIGN) * fmt.DATA_ALIGN
    slots_fit = fmt.SLOTS_OFFSET + hdr.slot_count * hdr.slot_size <= hdr.size
    if (area_b < data_start or hdr.slot_count < 1 or hdr.slot_size < 2 * fmt.SLOT_HEADER_SIZE
            or not slots_fit):
        return None
    g = fmt.Geometry(size, fmt.DATA_ALIGN, label_b, fmt.MDA_A_OFFSET, area_b, hdr.size,
                     hdr.slot_count, hdr.slot_size, data_start, 0)
    return fmt.Label(hdr.pool_uuid, hdr.device_uuid, g, 0.0)


# ---------------------------------------------------------------------------
# Grouping the devices by pool


#: a device of no pool, and why (None: it carries nothing of vvfs)
Stray = tuple[BlockDevice, str | None]


def group_devices(devs: list[BlockDevice], remembered: dict[str, str]
                  ) -> tuple[dict[str, PoolGroup], list[Stray]]:
    """Scan *devs* and group them by pool; return the groups and the devices of none."""
    groups: dict[str, PoolGroup] = {}
    unlabelled: list[media.DeviceScan] = []
    strays: list[Stray] = []
    for dev in devs:
        try:
            scan = media.scan_device(dev)
        except DeviceIOError as exc:
            strays.append((dev, f"cannot be read: {exc}"))
            continue
        if scan.label is None:
            unlabelled.append(scan)
            continue
        groups.setdefault(scan.label.pool_uuid, PoolGroup(scan.label.pool_uuid)).members.append(
            _inspect(scan))
    sizes = {m.label.geometry.area_size for g in groups.values() for m in g.members}
    for scan in unlabelled:
        member = _recover(scan.dev, sizes)
        if member is None:
            strays.append((scan.dev, None))
            continue
        groups.setdefault(member.label.pool_uuid, PoolGroup(member.label.pool_uuid)
                          ).members.append(member)
    for g in groups.values():
        _dedupe(g, remembered)
        _choose(g, remembered)
    return groups, strays


def _dedupe(g: PoolGroup, remembered: dict[str, str]) -> None:
    """Keep one member per device uuid: the remembered path, else the most recent."""
    by_uuid: dict[str, list[Member]] = {}
    for m in g.members:
        by_uuid.setdefault(m.uuid, []).append(m)
    keep: list[Member] = []
    for uuid, ms in by_uuid.items():
        ms.sort(key=lambda m: (remembered.get(uuid) != m.name, m.provisional,
                               -max(m.scan.slots, default=-1)))
        keep.append(ms[0])
        g.clones.extend((ms[0], other) for other in ms[1:])
    g.members = [m for m in g.members if m in keep]


def _choose(g: PoolGroup, remembered: dict[str, str]) -> None:
    scans = [m.scan for m in g.members]
    g.unsupported = [e for s in scans for e in s.unsupported]
    try:
        g.choice = media.choose_generation(scans) if scans else None
        if g.choice is None:
            g.choice_error = "no device with a readable metadata area"
    except NoValidGenerationError as exc:
        g.choice_error = str(exc)
    except UnsupportedFeatureError as exc:
        g.choice_error = str(exc)
        if not g.unsupported:
            g.unsupported = [exc]
    if g.choice is not None:
        g.choice = _as_this_host_opens(g, remembered, g.choice)


def _as_this_host_opens(g: PoolGroup, remembered: dict[str, str], choice: media.Choice
                        ) -> media.Choice:
    """*choice*, or the generation this host opens *g* at when that disowns its devices.

    The host opens a pool from the paths its catalog remembers.  When the highest generation has failed a
    device this host goes on with, the pool was used in two parts: the half
    this host kept is the one its remembered devices hold, and the others
    were written apart from it (:func:`media.diverged`).
    """
    mine = [m.scan for m in g.members if remembered.get(m.uuid) == m.name]
    failed = {d.uuid for d in choice.pool.devices if d.state == "failed"}
    if not mine or not any(s.device_uuid in failed for s in mine):
        return choice
    try:
        return media.choose_generation(choice.scans, among=mine)
    except (NoValidGenerationError, UnsupportedFeatureError):
        return choice
