"""The per-pool context the checks work on, and verified copies to repair from."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from metadata import format as fmt
from metadata import media
from metadata.blockdev import DeviceIOError
from metadata.catalog import Catalog
from metadata.errors import ConfigError, MediaError
from metadata.model import Device, Pool
from vvfs.errors import FsckError
from vvfsck.findings import Finding
from vvfsck.inspect import Member, PoolGroup, copy_name


@dataclass(frozen=True)
class Source:
    """A verified copy of one generation's payload, to rewrite other copies from."""

    generation: int
    digest: bytes
    encoding: int
    payload: bytes
    time: float
    where: str


def decode(src: Source | None) -> Pool | None:
    """The configuration a verified copy holds (None: no copy, or not a usable one)."""
    if src is None:
        return None
    hdr = fmt.SlotHeader(src.encoding, "", "", src.generation, len(src.payload), src.time,
                         src.digest)
    try:
        return Pool.from_dict(fmt.decode_payload(hdr, src.payload, src.where, 0))
    except (MediaError, ConfigError):
        return None


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
                                  st.header.time, f"{m.name} copy {copy_name(st.copy)}")
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
