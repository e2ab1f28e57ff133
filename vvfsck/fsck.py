"""vvfsck: offline checks and repairs of a pool, from its media alone.

``tools/vvfsck.py`` only wires the command line to :class:`Checker`.

How a check runs
----------------
A *pass* opens the devices, scans them (:func:`metadata.media.scan_device`),
groups them by pool, picks the generation each pool opens at
(:func:`metadata.media.choose_generation`) and runs every ``check_*``
function below on each pool.  A check never prints: it hands each problem
to :meth:`Checker.report` as a :class:`Finding` naming the device and byte
offset, what is wrong, and either the repair (a closure) or what the
administrator must do instead.  Report-only is the default.

With ``--repair`` the checker repairs *stage by stage* and reads everything
again after each stage, because each stage is what the next one stands on:

0. labels and metadata area headers (where everything else is);
1. slots and commit records of existing generations, stale devices,
   interrupted generations, orphaned devices;
2. configuration changes, committed together as one new generation
   (interrupted operations rolled back, stale resync records dropped,
   leaked extents freed);
3. the catalog, re-synced from media (media wins).

While a device the configuration lists is missing, stages 1 and 2 are not
repaired: the missing device might hold what would prove another
generation complete.  Then a last pass reports whatever is left.

What a "leak" is here
---------------------
Free space is not recorded anywhere: an extent is free exactly when no
segment of any volume names it, so "allocated but unreferenced" extents
cannot exist.  What can hold space that nothing can use is

* an extent mapped past what its volume's size needs (an over-mapped
  volume: repair trims the map, as a shrink would have);
* extents reserved by an operation record (``Pool.operations``, e.g. the
  destination of a move) that no running node will ever finish: the
  interrupted-operation check rolls it back;
* a whole device that carries the pool's label but that the configuration
  does not list (an add or a remove interrupted between the claim or
  unclaim and the commit): repair erases its labels and metadata areas.

Interrupted operations are rolled *back*: the volume map still names the
data's old place until the final commit of a move, so dropping the record
loses nothing (a move then restarts from the beginning).  Rolling forward
is the node's job, when it starts and finds the record.

Resync records are the exception: a device brought back or replaced stays
``failed`` in the configuration, with a resync record, until a node has
resynced it (``vvfs/resync.py``).  Nothing is half done there, so a
well-formed record is a *pending* finding: printed, kept by ``--repair``,
and no problem for the exit status; the next mount finishes it.  Only a
record that names no device of the pool, or a device already ``ok``, is
dropped.

Exit status (see ``man/vvfsck.8``): :data:`EXIT_CLEAN`, :data:`EXIT_FOUND`,
:data:`EXIT_LEFT`, :data:`EXIT_OPERATIONAL`.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Protocol

import mapper
import mapper.move
from mapper.mirrors import RESYNC_KIND
from metadata import format as fmt
from metadata import media
from metadata.blockdev import BlockDevice, DeviceIOError
from metadata.catalog import Catalog, CatalogError
from metadata.errors import (
    ConfigError,
    MediaError,
    NoValidGenerationError,
    UnsupportedFeatureError,
    VVError,
)
from metadata.model import Area, Device, Pool, Segment, Volume
from vvfs.errors import FsckError
from vvfs.io.filedev import FileDevice

log = logging.getLogger(__name__)

EXIT_CLEAN = 0  #: nothing found
EXIT_FOUND = 1  #: errors found, all repaired (or all repairable, without --repair)
EXIT_LEFT = 2  #: errors left on the media
EXIT_OPERATIONAL = 4  #: usage or operational error (locked, no such pool, ...)

STAGE_LABELS = 0
STAGE_METADATA = 1
STAGE_CONFIG = 2
STAGE_CATALOG = 3
MAX_PASSES = 8
COPY = ("A", "B")
DEEP_CHUNK = 1 << 20


# ---------------------------------------------------------------------------
# Findings


@dataclass
class Finding:
    """One problem: where it is, what it is, and how it is (or is not) repaired."""

    check: str
    where: str
    offset: int | None
    message: str
    fix: str | None = None
    advice: str | None = None
    stage: int = STAGE_METADATA
    repair: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    edit: Callable[[Pool], None] | None = field(default=None, repr=False, compare=False)
    pool: str = ""
    #: not a problem but work the next mount finishes (a resync record): reported,
    #: never repaired, and left out of the exit status and of the finding counts
    pending: bool = False

    @property
    def repairable(self) -> bool:
        return self.repair is not None or self.edit is not None

    @property
    def key(self) -> tuple[str, str, int | None, str]:
        return (self.check, self.where, self.offset, self.message)

    def place(self) -> str:
        return self.where if self.offset is None else f"{self.where} at byte {self.offset}"

    def line(self) -> str:
        if self.repairable:
            tail = f" [repair: {self.fix}]"
        elif self.pending:
            tail = f" [nothing to repair: {self.advice}]"
        elif self.advice:
            tail = f" [no repair: {self.advice}]"
        else:
            tail = ""
        return f"{self.place()}: {self.message}{tail}"


# ---------------------------------------------------------------------------
# Where the devices come from


class DeviceSet(Protocol):
    """Opens the devices of one pass and closes them afterwards."""

    def open(self) -> list[BlockDevice]: ...

    def close(self, devs: list[BlockDevice]) -> None: ...

    def only(self, names: set[str], writable: bool) -> DeviceSet: ...


class PathDevices:
    """Devices by path, opened afresh for every pass.

    With *strict* (paths the user named), a path that cannot be opened is an
    operational error; otherwise (search paths) it is skipped.
    """

    def __init__(self, paths: Sequence[str], *, writable: bool = False,
                 strict: bool = True) -> None:
        self.paths = list(dict.fromkeys(paths))
        self.writable = writable
        self.strict = strict

    def open(self) -> list[BlockDevice]:
        devs: list[BlockDevice] = []
        seen: set[tuple[int, int]] = set()
        for p in self.paths:
            ident = _identity(p)
            if ident is not None and ident in seen:
                continue
            try:
                devs.append(FileDevice(p, readonly=not self.writable))
            except DeviceIOError as exc:
                if self.strict:
                    self.close(devs)
                    raise FsckError(str(exc)) from None
                log.debug("skipping %s: %s", p, exc)
                continue
            if ident is not None:
                seen.add(ident)
        return devs

    def close(self, devs: list[BlockDevice]) -> None:
        for d in devs:
            d.close()

    def only(self, names: set[str], writable: bool) -> PathDevices:
        return PathDevices([p for p in self.paths if p in names], writable=writable,
                           strict=self.strict)


class GivenDevices:
    """Device objects handed in by a program or a test; never closed here."""

    def __init__(self, devs: Sequence[BlockDevice]) -> None:
        self.devs = list(devs)

    def open(self) -> list[BlockDevice]:
        return list(self.devs)

    def close(self, devs: list[BlockDevice]) -> None:
        pass

    def only(self, names: set[str], writable: bool) -> GivenDevices:
        return GivenDevices([d for d in self.devs if d.name in names])


def _identity(path: str) -> tuple[int, int] | None:
    """The same file or block device reached by two paths is read once."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st.st_rdev == 0 else (-1, st.st_rdev)


# ---------------------------------------------------------------------------
# What a pass reads: one view per device


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
    uuid: str
    members: list[Member] = field(default_factory=list)
    #: (the member used, a second device carrying the same device uuid)
    clones: list[tuple[Member, Member]] = field(default_factory=list)
    choice: media.Choice | None = None
    choice_error: str | None = None
    #: structures written by a newer vvfs: the pool is reported, never touched
    unsupported: list[MediaError] = field(default_factory=list)


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
# The per-pool context the checks work on


@dataclass(frozen=True)
class Source:
    """A verified copy of one generation's payload, to rewrite other copies from."""

    generation: int
    digest: bytes
    encoding: int
    payload: bytes
    time: float
    where: str


@dataclass
class Ctx:
    """One pool in one pass: what was read, and where findings go."""

    group: PoolGroup
    report: Callable[[Finding], None]
    catalog: Catalog | None = None
    catalog_name: str = "catalog"
    host_id: str | None = None
    deep: bool = False
    remembered: dict[str, str] = field(default_factory=dict)
    #: the highest generation seen in this run: a new commit goes above it, even
    #: after a repair erased an interrupted generation (numbers are never reused)
    high_water: int = 0
    #: set once an extent check reported, so the catch-all config check stays quiet
    config_reported: bool = False
    _sources: dict[tuple[int, bytes], Source | None] = field(default_factory=dict)

    @property
    def choice(self) -> media.Choice | None:
        return self.group.choice

    @property
    def pool(self) -> Pool:
        if self.group.choice is None:  # checks test choice first; not data from media
            raise FsckError("no configuration")
        return self.group.choice.pool

    @property
    def name(self) -> str:
        return self.group.choice.pool.name if self.group.choice else self.group.uuid

    @property
    def missing(self) -> list[str]:
        return self.group.choice.missing if self.group.choice else []

    @property
    def members(self) -> list[Member]:
        return self.group.members

    def member(self, device_uuid: str) -> Member | None:
        return next((m for m in self.members if m.uuid == device_uuid), None)

    def entry(self, device_uuid: str) -> Device | None:
        if self.choice is None:
            return None
        return next((d for d in self.pool.devices if d.uuid == device_uuid), None)

    def where(self, device_uuid: str) -> str:
        m = self.member(device_uuid)
        if m is not None:
            return m.name
        d = self.entry(device_uuid)
        return f"device {d.name}" if d is not None else f"device {device_uuid}"

    def current(self) -> list[Member]:
        """Members the chosen generation lists as working: those kept up to date."""
        if self.choice is None:
            return []
        wanted = {d.uuid for d in self.pool.devices if d.state != "failed"}
        return [m for m in self.members if m.uuid in wanted]

    def source(self, generation: int, digest: bytes) -> Source | None:
        """A verified copy of (generation, digest) on any member, or None."""
        key = (generation, digest)
        if key not in self._sources:
            self._sources[key] = self._find_source(generation, digest)
        return self._sources[key]

    def _find_source(self, generation: int, digest: bytes) -> Source | None:
        for m in self.members:
            for st in m.slots.values():
                if not st.holds(generation, digest) or st.header is None:
                    continue
                try:
                    payload = m.dev.pread(st.header.length, st.offset + fmt.SLOT_HEADER_SIZE)
                except DeviceIOError:
                    continue
                if fmt.payload_digest(payload) == digest:
                    return Source(generation, digest, st.header.encoding, payload,
                                  st.header.time, f"{m.name} copy {COPY[st.copy]}")
        return None

    def commit_record(self, source: Source) -> fmt.CommitRecord:
        """The commit record of a generation as some member holds it (else a new one)."""
        for m in self.members:
            for st in m.records.values():
                if st.holds(source.generation, source.digest) and st.record is not None:
                    return st.record
        return fmt.CommitRecord(self.group.uuid, source.generation, source.time, source.digest)

    def paths(self) -> dict[str, str]:
        """Device uuid -> path, for the catalog: where found, else where remembered."""
        out = dict(self.remembered)
        for m in self.members:
            out[m.uuid] = os.path.abspath(m.name) if os.path.exists(m.name) else m.name
        return out


def _ab(copy: int) -> str:
    return COPY[copy]


def _device_offset(pool: Pool, dev: Device, extent: int) -> int:
    return dev.data_start + extent * pool.extent_size


# ---------------------------------------------------------------------------
# Repairs (closures handed out with findings)


def _rewrite_label(dev: BlockDevice, label: fmt.Label, offset: int) -> None:
    dev.pwrite(label.pack(), offset)
    dev.flush()


def _write_labels(dev: BlockDevice, label: fmt.Label) -> None:
    media.write_labels(dev, label)


def _write_generation(m: Member, src: Source, record: fmt.CommitRecord,
                      copies: Sequence[int] = (0, 1), records: Sequence[int] = (0, 1)) -> None:
    """Slots first, then commit records: the commit protocol on one device."""
    for copy in copies:
        media.write_slot(m.dev, m.label, copy, src.generation, src.encoding, src.payload,
                         src.time)
    for copy in records:
        media.write_commit_record(m.dev, m.label, copy, record)


def _erase_generation(m: Member, generation: int) -> None:
    for st in m.slots.values():
        if st.header is not None and st.header.generation == generation:
            media.erase_slot(m.dev, m.label, st.copy, st.index)
    for rs in m.records.values():
        if rs.record is not None and rs.record.generation == generation:
            media.erase_commit_record(m.dev, m.label, rs.copy, rs.index)


# ---------------------------------------------------------------------------
# The checks: labels and areas


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
            msg = what if "differs" in what else f"label {_ab(copy)}: {what}"
            off = good.geometry.label_offsets[copy]
            ctx.report(Finding(
                "labels", m.name, off, msg, fix=f"rewrite label {_ab(copy)} from label"
                f" {_ab(1 - copy)}", stage=STAGE_LABELS,
                repair=functools.partial(_rewrite_label, m.dev, good, off)))


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
            repair=functools.partial(_write_labels, m.dev, label)))


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
                f"metadata area header {_ab(copy)}: {what}", fix="rewrite it from the label",
                stage=STAGE_LABELS,
                repair=functools.partial(media.write_area_header, m.dev, m.label, copy)))


# ---------------------------------------------------------------------------
# The checks: generations


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
                repair=functools.partial(_erase_generation, m, gen)))


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
            f.repair = functools.partial(_write_generation, m, src, ctx.commit_record(src))
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
    f = Finding("metadata", m.name, offset, f"generation {gen} {what} {_ab(copy)}: {state}")
    if src is not None:
        f.fix = f"rewrite it from {src.where}" if copies else "write it"
        f.repair = functools.partial(_write_generation, m, src, ctx.commit_record(src), copies,
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
                f"slot {st.index} copy {_ab(st.copy)}: {st.problem}")
    src = None
    if st.header is not None:
        src = ctx.source(st.header.generation, st.header.digest)
    else:
        other = m.slots[(1 - st.copy, st.index)]
        if other.ok and other.header is not None:
            src = ctx.source(other.header.generation, other.header.digest)
    if src is not None and src.generation % m.label.geometry.slot_count == st.index:
        f.fix = f"rewrite generation {src.generation} from {src.where}"
        f.repair = functools.partial(_write_generation, m, src, ctx.commit_record(src),
                                     (st.copy,), ())
    else:
        f.fix = "erase the slot (no readable copy of what it held is left)"
        f.repair = functools.partial(media.erase_slot, m.dev, m.label, st.copy, st.index)
    ctx.report(f)


def _report_damaged_record(ctx: Ctx, m: Member, rs: RecordState) -> None:
    f = Finding("metadata", m.name, rs.offset,
                f"commit record {rs.index} copy {_ab(rs.copy)}: {rs.problem}")
    other = m.records[(1 - rs.copy, rs.index)]
    if other.record is not None:
        f.fix = f"rewrite it from copy {_ab(other.copy)}"
        f.repair = functools.partial(media.write_commit_record, m.dev, m.label, rs.copy,
                                     other.record)
    else:
        f.fix = "erase it (the other copy holds nothing either)"
        f.repair = functools.partial(media.erase_commit_record, m.dev, m.label, rs.copy,
                                     rs.index)
    ctx.report(f)


# ---------------------------------------------------------------------------
# The checks: the configuration


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


def check_extent_ranges(ctx: Ctx) -> None:
    """Every area on a known device and inside it (configuration and label agree)."""
    if ctx.choice is None:
        return
    pool = ctx.pool
    devs: dict[str, Device] = {d.uuid: d for d in pool.devices}
    for d in pool.devices:
        _check_device_geometry(ctx, d)
    for v, s, a in _areas(pool):
        dev = devs.get(a.device)
        if dev is None:
            _config_finding(ctx, f"pool {ctx.name}", None,
                            f"volume {v.name}: segment at extent {s.start} names unknown"
                            f" device {a.device}")
        elif a.start < 0 or a.start + s.area_length > dev.extent_count:
            _config_finding(ctx, ctx.where(dev.uuid), _device_offset(pool, dev, max(a.start, 0)),
                            f"volume {v.name}: extents {a.start}-{a.start + s.area_length - 1}"
                            f" lie outside device {dev.name} ({dev.extent_count} extents)")


def _areas(pool: Pool) -> Iterator[tuple[Volume, Segment, Area]]:
    """Every area of every segment of every volume."""
    for v in pool.volumes:
        for s in v.segments:
            for leg in s.areas:
                for a in leg:
                    yield v, s, a


def _check_device_geometry(ctx: Ctx, d: Device) -> None:
    m = ctx.member(d.uuid)
    if m is None or m.provisional:
        return
    g = m.label.geometry
    if d.data_start != g.data_start or d.extent_count + d.csum_extents + d.log_extents > g.extent_count:
        _config_finding(ctx, m.name, fmt.LABEL_A_OFFSET,
                        f"generation {ctx.pool.generation} gives device {d.name}"
                        f" {d.extent_count} extents from byte {d.data_start}; its label"
                        f" {g.extent_count} from byte {g.data_start}")


def _config_finding(ctx: Ctx, where: str, offset: int | None, message: str) -> None:
    ctx.config_reported = True
    ctx.report(Finding("extents", where, offset, message, advice=_rollback_advice(ctx),
                       stage=STAGE_CONFIG))


def _rollback_advice(ctx: Ctx) -> str:
    gen = _consistent_generation(ctx)
    if gen is not None:
        return (f"generation {gen} is consistent: vvfsck --rollback {gen}, or fix the volumes"
                " concerned with vv")
    return "fix or remove the volumes concerned with vv"


def _consistent_generation(ctx: Ctx) -> int | None:
    """The newest older generation whose configuration passes Pool.check."""
    if ctx.choice is None:
        return None
    seen: set[tuple[int, bytes]] = set()
    for m in ctx.members:
        for st in m.slots.values():
            if st.ok and st.header is not None and st.header.generation < ctx.choice.generation:
                seen.add((st.header.generation, st.header.digest))
    for gen, digest in sorted(seen, reverse=True):
        pool = _decode(ctx.source(gen, digest))
        if pool is None:
            continue
        try:
            pool.check()
        except ConfigError:
            continue
        return gen
    return None


def _decode(src: Source | None) -> Pool | None:
    if src is None:
        return None
    hdr = fmt.SlotHeader(src.encoding, "", "", src.generation, len(src.payload), src.time,
                         src.digest)
    try:
        return Pool.from_dict(fmt.decode_payload(hdr, src.payload, src.where, 0))
    except (MediaError, ConfigError):
        return None


def check_extent_overlaps(ctx: Ctx) -> None:
    """No physical extent used twice."""
    if ctx.choice is None:
        return
    pool = ctx.pool
    devs: dict[str, Device] = {d.uuid: d for d in pool.devices}
    runs: dict[str, list[tuple[int, int, str]]] = {}
    for v, s, a in _areas(pool):
        runs.setdefault(a.device, []).append((a.start, s.area_length, v.name))
    for uuid, dev_runs in runs.items():
        d = devs.get(uuid)
        if d is None:
            continue
        dev_runs.sort()
        reported: set[tuple[str, str]] = set()
        end, owner = -1, ""
        for start, n, name in dev_runs:
            if start < end and (owner, name) not in reported:
                reported.add((owner, name))
                _config_finding(ctx, ctx.where(uuid), _device_offset(pool, d, start),
                                f"extents {start}-{min(end, start + n) - 1} of device {d.name}"
                                f" are used by volume {owner} and volume {name}")
            if start + n > end:
                end, owner = start + n, name


def check_leg_devices(ctx: Ctx) -> None:
    """Mirror legs (and stripe columns) of a segment on distinct devices."""
    if ctx.choice is None:
        return
    pool = ctx.pool
    for v in pool.volumes:
        for s in v.segments:
            devs = [a.device for leg in s.areas for a in leg]
            for uuid in sorted({u for u in devs if devs.count(u) > 1}):
                d = ctx.entry(uuid)
                first = next(a for leg in s.areas for a in leg if a.device == uuid)
                off = _device_offset(pool, d, first.start) if d else None
                _config_finding(ctx, ctx.where(uuid), off,
                                f"volume {v.name}: the segment at extent {s.start} puts"
                                f" {devs.count(uuid)} of its legs or stripes on one device")


def check_leaked_extents(ctx: Ctx) -> None:
    """Extents mapped past what a volume's size needs (see "leak" in the module docstring)."""
    if ctx.choice is None:
        return
    pool = ctx.pool
    for v in pool.volumes:
        if not v.segments or any(s.stripes < 1 for s in v.segments):
            continue
        need = _logical_extents(v.size, pool.extent_size, v.stripes)
        kept = _trim(v.segments, need)
        excess = v.extents() - sum(s.length for s in kept)
        if excess <= 0:
            continue
        where, off = _first_excess(ctx, v.segments, kept)
        ctx.report(Finding(
            "leak", where, off,
            f"volume {v.name} maps {v.extents()} extents, its size needs {need}: {excess}"
            " extents are held but unreachable",
            fix=f"trim its map to {need} extents, freeing {excess} (a new generation)",
            stage=STAGE_CONFIG, edit=functools.partial(_trim_volume, v.uuid, need)))


def _logical_extents(size: int, extent_size: int, stripes: int) -> int:
    extents = -(-size // extent_size)
    return -(-extents // stripes) * stripes


def _trim(segments: list[Segment], need: int) -> list[Segment]:
    """The segments holding the first *need* logical extents, in whole stripe rows."""
    kept = []
    for s in segments:
        if s.start >= need:
            break
        length = min(s.length, -(-(need - s.start) // s.stripes) * s.stripes)
        kept.append(Segment(s.start, length, s.stripes, s.stripe_size,
                            [list(leg) for leg in s.areas]))
    return kept


def _first_excess(ctx: Ctx, segments: list[Segment], kept: list[Segment]) -> tuple[str, int | None]:
    for i, s in enumerate(segments):
        rows = kept[i].length // s.stripes if i < len(kept) else 0
        if i < len(kept) and kept[i].length == s.length:
            continue
        a = s.areas[0][0]
        d = ctx.entry(a.device)
        return ctx.where(a.device), (_device_offset(ctx.pool, d, a.start + rows) if d else None)
    return f"pool {ctx.name}", None


def _trim_volume(volume_uuid: str, need: int, pool: Pool) -> None:
    for v in pool.volumes:
        if v.uuid == volume_uuid:
            v.segments = _trim(v.segments, need)


def check_interrupted_operations(ctx: Ctx) -> None:
    """An operation record left in the configuration while no node runs: roll it back.

    Resync records are the exception (:func:`_check_resync`): a well-formed
    one is reported as pending and kept.
    """
    if ctx.choice is None:
        return
    for op in ctx.pool.operations:
        if isinstance(op, dict) and op.get("kind") == RESYNC_KIND:
            _check_resync(ctx, op)
            continue
        kind = str(op.get("kind", "an")) if isinstance(op, dict) else "an"
        resumable = _resumable_move(ctx.pool, op)
        if resumable is not None:
            ctx.report(Finding(
                "operations", f"pool {ctx.name}", None, resumable,
                fix="abort it: commit a generation without it (the volume map still names the"
                    " data's old place; the extents reserved for its destination become free)",
                stage=STAGE_CONFIG, edit=functools.partial(_drop_operation, op)))
            continue
        ctx.report(Finding(
            "operations", f"pool {ctx.name}", None,
            f"{kind} operation was interrupted ({_describe(op)}); generation"
            f" {ctx.pool.generation} still records it and no node runs to finish it",
            fix="roll it back: commit a generation without it (the volume map still names"
                " the data's old place; extents it reserved become free)",
            stage=STAGE_CONFIG, edit=functools.partial(_drop_operation, op)))


def _resumable_move(pool: Pool, op: Any) -> str | None:
    """The finding for a well-formed move record (mapper/move.py) that matches the maps."""
    if not mapper.move.is_move(op):
        return None
    try:
        rec = mapper.move.parse(op)
        mapper.move.validate(pool)
    except ConfigError:
        return None  # reported as an interrupted operation, rolled back
    return (f"move in progress, resumable: {rec.what} (move {rec.id}), {rec.copied} of"
            f" {rec.total} extents copied at the last checkpoint; mounting the pool resumes it")


def _check_resync(ctx: Ctx, op: dict[str, Any]) -> None:
    """A resync record (vvfs/resync.py): pending and kept, or malformed and dropped.

    A well-formed record names a device of the pool that the configuration
    still has ``failed``: a ``vv device online`` or ``replace`` (or the
    node's probe) committed it and the node stopped before its resync ended.
    Unlike a move, nothing was left half done: the device stays out of
    service until a node resyncs it, commits it ``ok`` and drops the record,
    which the next mount does by itself.  So the record is reported as
    pending, not as damage: ``--repair`` keeps it and it does not count in
    the exit status.  Dropping it would lose nothing either, but would leave
    the device failed (its mirrors degraded) until someone thinks of running
    ``vv device online``; keeping it is what the administrator who asked
    for the resync expects.

    A record no node can act on (it names no device, or a device the pool
    does not list) or that is stale (its device is ``ok`` already, so the
    resync ended or was never needed) is reported with the reason, and the
    repair drops it.
    """
    entry, problem = _resync_device(ctx.pool, op)
    if entry is None or problem is not None:
        ctx.report(Finding(
            "operations", f"pool {ctx.name}", None,
            f"resync record ({_describe(op)}) {problem}",
            fix="drop the record: commit a generation without it", stage=STAGE_CONFIG,
            edit=functools.partial(_drop_operation, op)))
        return
    ctx.report(Finding(
        "operations", f"pool {ctx.name}", None, _pending_resync(ctx, op, entry),
        advice=f"mounting the pool resumes it, or vv device resync {ctx.name} {entry.name}",
        stage=STAGE_CONFIG, pending=True))


def _resync_device(pool: Pool, op: dict[str, Any]) -> tuple[Device | None, str | None]:
    """The device of resync record *op*, and why the record is of no use (None: pending)."""
    device = op.get("device")
    if not isinstance(device, str) or not device:
        return None, "names no device: no node can finish it"
    entry = next((d for d in pool.devices if d.uuid == device), None)
    if entry is None:
        return None, (f"names device {device}, which generation {pool.generation} does not"
                      " list (removed or replaced since?)")
    if entry.state != "failed":
        return entry, (f"is stale: generation {pool.generation} has device {entry.name}"
                       f" {entry.state} already (its resync ended, or was never needed)")
    return entry, None


def _pending_resync(ctx: Ctx, op: dict[str, Any], entry: Device) -> str:
    why = [str(op.get("reason") or "returning")]
    started = _started(op)
    if started is not None:
        why.append(f"recorded {started}")
    found = "" if ctx.member(entry.uuid) is not None else (
        "; the device is not among those found: connect it first")
    return (f"resync of device {entry.name} pending ({', '.join(why)}): it stays failed"
            f" until the resync ends{found}")


def _started(op: dict[str, Any]) -> str | None:
    """When a resync record says it was made (None: it does not say, or not readably)."""
    started = op.get("started")
    if not isinstance(started, (int, float)) or isinstance(started, bool):
        return None
    try:
        return _when(started)
    except (OverflowError, ValueError, OSError):
        return None


def _describe(op: Any) -> str:
    if not isinstance(op, dict):
        return repr(op)[:80]
    return ", ".join(f"{k}={v!r}" for k, v in sorted(op.items()) if k != "kind")[:120] or "-"


def _drop_operation(op: Any, pool: Pool) -> None:
    pool.operations = [o for o in pool.operations if o != op]


def check_configuration(ctx: Ctx) -> None:
    """Everything else Pool.check demands (names, segment order, coverage)."""
    if ctx.choice is None or ctx.config_reported:
        return
    try:
        ctx.pool.check()
    except ConfigError as exc:
        _config_finding(ctx, f"pool {ctx.name}", None, f"generation {ctx.pool.generation}:"
                        f" {exc}")


# ---------------------------------------------------------------------------
# The checks: catalog and data


def check_catalog(ctx: Ctx) -> None:
    """The catalog mirrors the media (deleted, stale, ahead or different: re-sync)."""
    if ctx.catalog is None or ctx.choice is None:
        return
    pool, cat = ctx.pool, ctx.catalog
    where = f"catalog {ctx.catalog_name}"
    row = cat.find_pool(pool.uuid)
    if row is None:
        if pool.active_host is not None and pool.active_host == ctx.host_id:
            _catalog_finding(ctx, where, f"pool {pool.name} is imported on this host (media"
                             f" generation {pool.generation}) but not in the catalog", sync=True)
        return
    if pool.active_host != ctx.host_id:
        owner = f"host {pool.active_host}" if pool.active_host else "no host (exported)"
        _catalog_finding(ctx, where, f"pool {pool.name} is in the catalog but its media say it"
                         f" belongs to {owner}", sync=False)
        return
    try:
        mirrored = cat.load_pool(pool.uuid)
    except CatalogError as exc:
        _catalog_finding(ctx, where, f"pool {pool.name}: {exc}", sync=True)
        return
    if mirrored.generation < pool.generation:
        what = f"is stale: generation {mirrored.generation}, media {pool.generation}"
    elif mirrored.generation > pool.generation:
        what = (f"is ahead of the media: generation {mirrored.generation}, media"
                f" {pool.generation}")
    elif mirrored.to_dict() != pool.to_dict():
        what = f"differs from the media at generation {pool.generation}"
    else:
        return
    _catalog_finding(ctx, where, f"pool {pool.name} {what}", sync=True)


def _catalog_finding(ctx: Ctx, where: str, message: str, *, sync: bool) -> None:
    f = Finding("catalog", where, None, message, stage=STAGE_CATALOG)
    if sync:
        f.fix = "re-sync the catalog from the media"
        f.repair = functools.partial(_sync_catalog, ctx)
    else:
        f.fix = "forget the pool in this catalog (media win)"
        f.repair = functools.partial(ctx.catalog.drop_pool, ctx.pool.uuid)  # type: ignore[union-attr]
    ctx.report(f)


def _sync_catalog(ctx: Ctx) -> None:
    if ctx.catalog is not None:
        ctx.catalog.sync_pool(ctx.pool, ctx.paths())


def check_mirrors(ctx: Ctx) -> None:
    """With --deep: the legs of every mirrored piece of every volume hold the same bytes
    (legs on failed devices excepted: a resync brings them up to date)."""
    if not ctx.deep or ctx.choice is None:
        return
    for v in ctx.pool.volumes:
        if all(len(s.areas) < 2 for s in v.segments):
            continue
        try:
            vmap = mapper.VolumeMap(ctx.pool, v)
        except (ConfigError, IndexError):
            continue  # reported by the configuration checks
        _compare_legs(ctx, v.name, vmap)


def _compare_legs(ctx: Ctx, volume: str, vmap: mapper.VolumeMap) -> None:
    # [leg, first byte, end byte, where, device byte, reference leg, its place]
    run: list[Any] | None = None
    failed = {d.uuid for d in ctx.pool.devices if d.state == "failed"}
    for pos in range(0, vmap.size, DEEP_CHUNK):
        for piece in vmap.resolve(pos, min(DEEP_CHUNK, vmap.size - pos)):
            diff = _piece_diff(ctx, piece, failed)
            if diff is None:
                continue
            leg, skip, r = diff
            if run is not None and run[0] == leg and run[2] == piece.offset:
                run[2] = piece.offset + piece.length
                continue
            if run is not None:
                _report_mirror(ctx, volume, run)
            loc, ref = piece.legs[leg], piece.legs[r]
            ref_at = f"{ctx.where(ref.device)} at byte {ref.offset + skip}"
            run = [leg, piece.offset + skip, piece.offset + piece.length,
                   ctx.where(loc.device), loc.offset + skip, r, ref_at]
    if run is not None:
        _report_mirror(ctx, volume, run)


def _piece_diff(ctx: Ctx, piece: mapper.Piece, failed: AbstractSet[str]
                ) -> tuple[int, int, int] | None:
    """(leg, first differing byte rounded down to a sector, reference leg) of the first leg
    unlike the first leg compared.

    Legs on devices the configuration has ``failed`` are not compared: they
    are behind by design until a node resyncs them (a pending resync).
    """
    datas: list[bytes | None] = []
    for loc in piece.legs:
        m = ctx.member(loc.device) if loc.device not in failed else None
        datas.append(m.dev.pread(piece.length, loc.offset) if m is not None else None)
    r = next((i for i, d in enumerate(datas) if d is not None), None)
    if r is None:
        return None
    ref = datas[r]
    assert ref is not None  # chosen above as not None; not data from media
    for leg, data in enumerate(datas[r + 1:], r + 1):
        if data is not None and data != ref:
            first = next(i for i, (a, b) in enumerate(zip(ref, data)) if a != b)
            return leg, first - first % fmt.SECTOR, r
    return None


def _report_mirror(ctx: Ctx, volume: str, run: list[Any]) -> None:
    leg, start, end, where, offset, r, ref = run
    ctx.report(Finding(
        "mirrors", where, offset,
        f"volume {volume}: bytes {start}-{end - 1} of leg {leg} differ from leg {r} ({ref})",
        advice="vvfsck cannot tell which leg is right: copy the good one over the other"
               " (the node's scrub and resync do)", stage=STAGE_CONFIG))


CHECKS: tuple[Callable[[Ctx], None], ...] = (
    check_unsupported,
    check_duplicate_uuids,
    check_labels,
    check_lost_labels,
    check_area_headers,
    check_generation,
    check_interrupted_generations,
    check_missing_devices,
    check_stale_devices,
    check_split_brain,
    check_metadata_copies,
    check_damaged_metadata,
    check_orphan_devices,
    check_extent_ranges,
    check_extent_overlaps,
    check_leg_devices,
    check_leaked_extents,
    check_interrupted_operations,
    check_configuration,
    check_catalog,
    check_mirrors,
)


# ---------------------------------------------------------------------------
# The checker


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
            self._summary(found, lambda _pool, fs: _found_text(fs))
            if not problems:
                return EXIT_CLEAN
            return EXIT_FOUND if len(fixable) == len(problems) else EXIT_LEFT
        if not fixable or not confirm(f"repair {_n(len(fixable), 'finding')}?"):
            self._summary(found, lambda _pool, fs: f"{_n(len(fs), 'finding')}, not repaired"
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
            self.emit(f"repaired: {_place(key)} (by the repairs above)")
        problems = [f for f in left if not f.pending]
        for f in problems:
            self.emit(f"left: {f.line()}")
        had = {f.pool for f in found if not f.pending}
        self._summary(left, lambda pool, fs: f"{_n(len(fs), 'finding')} left" if fs else
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
            tail = f"; {_n(pending, 'operation')} pending" if pending else ""
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
        groups, strays = _group(devs, self.remembered)
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
            new, question = _rollback_plan(ctx, generation)
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
            return {"pools": [_dump_pool(ctx) for ctx in contexts],
                    "other devices": [d.name for d, _why in strays]}
        finally:
            self.devices.close(devs)


def _place(key: tuple[str, str, int | None, str]) -> str:
    _check, where, offset, message = key
    return f"{where}{'' if offset is None else f' at byte {offset}'}: {message}"


def _found_text(findings: list[Finding]) -> str:
    if not findings:
        return "clean"
    fixable = sum(f.repairable for f in findings)
    if fixable == len(findings):
        return f"{_n(len(findings), 'finding')}, all repairable: run vvfsck --repair"
    return (f"{_n(len(findings), 'finding')}, {fixable} repairable,"
            f" {len(findings) - fixable} for the administrator")


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _group(devs: list[BlockDevice], remembered: dict[str, str]
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
        _choose(g)
    return groups, strays


#: a device of no pool, and why (None: it carries nothing of vvfs)
Stray = tuple[BlockDevice, str | None]


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


def _choose(g: PoolGroup) -> None:
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


def _rollback_plan(ctx: Ctx, generation: int) -> tuple[Pool, str]:
    """The pool to commit for --rollback GEN and the question to confirm it with."""
    digests = {st.header.digest for m in ctx.members for st in m.slots.values()
               if st.ok and st.header is not None and st.header.generation == generation}
    old = next((p for p in (_decode(ctx.source(generation, d)) for d in sorted(digests))
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
                f" {generation} ({_when(_old_time(ctx, generation))}) current again"
                + (f" ({'; '.join(changes)})" if changes else "") + "?")
    return new, question


def _old_time(ctx: Ctx, generation: int) -> float:
    for m in ctx.members:
        for st in m.slots.values():
            if st.header is not None and st.header.generation == generation:
                return st.header.time
    return 0.0


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _dump_pool(ctx: Ctx) -> dict[str, Any]:
    out: dict[str, Any] = {"uuid": ctx.group.uuid, "name": ctx.name,
                           "opens at": ctx.choice.generation if ctx.choice else None}
    if ctx.choice is None:
        out["problem"] = ctx.group.choice_error
    else:
        out["operations"] = [_dump_operation(ctx.pool, op) for op in ctx.pool.operations]
    out["devices"] = [_dump_member(m) for m in ctx.members]
    if ctx.group.clones:
        out["duplicates"] = [{"uuid": c.uuid, "paths": [u.name, c.name]}
                             for u, c in ctx.group.clones]
    return out


def _dump_operation(pool: Pool, op: Any) -> dict[str, Any]:
    """An operation record of the generation the pool opens at; a resync one with its state."""
    if not isinstance(op, dict):
        return {"record": _describe(op)}
    if op.get("kind") != RESYNC_KIND:
        return {"kind": op.get("kind"), "record": _describe(op)}
    entry, problem = _resync_device(pool, op)
    out: dict[str, Any] = {"kind": RESYNC_KIND, "device": entry.name if entry else None,
                           "device uuid": op.get("device"), "reason": op.get("reason")}
    started = _started(op)
    if started is not None:
        out["started"] = started
    if op.get("rate"):
        out["rate"] = op["rate"]
    out["state"] = "pending" if problem is None else f"of no use: {problem}"
    return out


def _dump_member(m: Member) -> dict[str, Any]:
    labels = {}
    for copy, err in enumerate(m.scan.label_errors):
        labels[_ab(copy)] = "ok" if err is None else err.what
    gens: dict[tuple[int, bytes], dict[str, Any]] = {}
    for st in sorted(m.slots.values(), key=lambda s: (s.copy, s.index)):
        if st.header is None:
            continue
        h = st.header
        g = gens.setdefault((h.generation, h.digest), {
            "generation": h.generation, "time": _when(h.time), "digest": h.digest.hex(),
            "copies": [], "damaged copies": [], "committed": False})
        g["copies" if st.problem is None else "damaged copies"].append(_ab(st.copy))
    for rs in m.records.values():
        if rs.record is not None and (rs.record.generation, rs.record.digest) in gens:
            gens[(rs.record.generation, rs.record.digest)]["committed"] = True
    return {"path": m.name, "device uuid": m.uuid, "labels": labels,
            "generations": [gens[k] for k in sorted(gens, reverse=True)]}
