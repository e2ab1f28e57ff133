"""The pool configuration: the one model that media, catalog and mapper share.

A :class:`Pool` is the *whole* configuration of a pool -- devices, volumes,
their maps and presentation -- exactly what one generation of the metadata
area holds.  It is plain data: it serialises to a JSON document
(:func:`Pool.to_dict` / :func:`Pool.from_dict`) and never touches a device.

Units
-----
* ``Pool.extent_size``: bytes per extent (a power of two, >= 1 MiB).
* ``Device.data_start``: byte offset of physical extent 0 on the device.
* ``Area.start``: physical extent number on ``Area.device``.
* ``Segment.start`` / ``Segment.length``: *logical* extents of the volume's
  address space.  A segment of ``length`` logical extents with ``stripes``
  stripes uses ``length // stripes`` physical extents in each of its areas.
* ``Volume.size``: bytes visible to hosts (a multiple of 512).

Layout of a segment
-------------------
``areas[m][s]`` is the run of physical extents that holds stripe column *s*
of mirror leg *m*.  Every leg holds the whole segment; legs never share a
device (checked by :func:`Pool.check`).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any, NewType

from .errors import ConfigError

PoolUUID = NewType("PoolUUID", str)
DeviceUUID = NewType("DeviceUUID", str)
VolumeUUID = NewType("VolumeUUID", str)

#: Version of the JSON document inside a metadata slot.
CONFIG_VERSION = 1

#: Incompatible features this reader understands (see man/vvfs.5).
#: ``block-checksums``: devices carry a block-checksum region (``Device.csum_extents``)
#: that every write of a mirrored volume must keep up to date (metadata/checksums.py).
#: ``dirty-log``: devices carry a write-intent bitmap (``Device.log_extents``) that
#: every mirrored write must set first (metadata/dirtylog.py).
KNOWN_FEATURES: frozenset[str] = frozenset({"block-checksums", "dirty-log"})

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")

DEVICE_STATES = ("ok", "failed")
#: Why a device is ``failed`` (``Device.failure``): it went away (a node looks
#: for it and brings it back by itself), it gave I/O errors, or an
#: administrator took it out (both wait for ``vv device online``).
FAILURES = ("vanished", "error", "admin")
READ_POLICIES = ("balanced", "primary", "first")


class UnsupportedConfigError(ConfigError):
    """A configuration written by a newer vvfs (unknown version or feature).

    Never treated as damage: a reader that meets one refuses to open the
    pool, so that it cannot roll back what a newer vvfs committed.
    """


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def check_name(kind: str, name: str) -> None:
    """Raise ConfigError unless *name* is a valid pool/volume/device name."""
    if not NAME_RE.match(name):
        raise ConfigError(
            f"invalid {kind} name {name!r}: use 1-64 letters, digits, '_', '.', '+', '-',"
            " starting with a letter or digit"
        )


@dataclass(frozen=True)
class Area:
    """A run of physical extents on one device."""

    device: DeviceUUID
    start: int


@dataclass
class Segment:
    start: int
    length: int
    stripes: int
    stripe_size: int
    areas: list[list[Area]]

    @property
    def mirrors(self) -> int:
        return len(self.areas)

    @property
    def area_length(self) -> int:
        """Physical extents in each area of this segment."""
        return self.length // self.stripes


@dataclass
class Device:
    uuid: DeviceUUID
    name: str
    size: int
    data_start: int
    extent_count: int
    tier: int = 2
    protection: int = 0
    cost: float = 0.0
    state: str = "ok"
    paths: list[str] = field(default_factory=list)
    added: float = field(default_factory=time.time)
    #: extents right after the ``extent_count`` data extents that hold the
    #: block-checksum region (metadata/checksums.py, man/vvfs.5); 0 = none
    csum_extents: int = 0
    #: extents after those (and after ``csum_extents``) holding the device's
    #: dirty log, and bytes of data per log bit (metadata/dirtylog.py); 0 = none
    log_extents: int = 0
    log_region: int = 0
    #: why a failed device failed (one of FAILURES); "" when ok or not recorded
    failure: str = ""
    #: the generation that first had it failed (0: ok, or not recorded); a
    #: device holding a commit of this generation or later was used apart
    failed_at: int = 0


@dataclass
class Volume:
    uuid: VolumeUUID
    name: str
    size: int
    stripes: int = 1
    stripe_size: int = 65536
    mirrors: int = 1
    owner: int = 0
    group: int = 0
    mode: int = 0o600
    hosts: list[str] = field(default_factory=list)
    read_policy: str = "balanced"
    segments: list[Segment] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    def extents(self) -> int:
        """Logical extents mapped by this volume's segments."""
        return sum(s.length for s in self.segments)


@dataclass
class Pool:
    uuid: PoolUUID
    name: str
    extent_size: int
    generation: int = 0
    created: float = field(default_factory=time.time)
    #: host id of the host that has the pool imported; None when exported.
    active_host: str | None = None
    features: list[str] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)
    #: free-form record of an operation in progress (moves, resyncs) so that a
    #: crash can be rolled forward or back; empty when none is in progress.
    operations: list[dict[str, Any]] = field(default_factory=list)

    # -- lookups -----------------------------------------------------------

    def device(self, key: str) -> Device:
        """Find a device by uuid, name or one of its recorded paths."""
        for d in self.devices:
            if key in (d.uuid, d.name) or key in d.paths:
                return d
        raise ConfigError(f"pool {self.name}: no device {key!r}")

    def volume(self, name: str) -> Volume:
        for v in self.volumes:
            if v.name == name or v.uuid == name:
                return v
        raise ConfigError(f"pool {self.name}: no volume {name!r}")

    def has_volume(self, name: str) -> bool:
        return any(v.name == name for v in self.volumes)

    def copy(self) -> Pool:
        """A deep copy (Areas are frozen and shared)."""
        return dataclasses.replace(
            self,
            features=list(self.features),
            devices=[dataclasses.replace(d, paths=list(d.paths)) for d in self.devices],
            volumes=[
                dataclasses.replace(
                    v, hosts=list(v.hosts),
                    segments=[dataclasses.replace(s, areas=[list(leg) for leg in s.areas])
                              for s in v.segments],
                )
                for v in self.volumes
            ],
            operations=[dict(op) for op in self.operations],
        )

    # -- serialisation -----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of this configuration (see man/vvfs.5)."""
        return {
            "version": CONFIG_VERSION,
            "uuid": self.uuid,
            "name": self.name,
            "extent_size": self.extent_size,
            "generation": self.generation,
            "created": self.created,
            "active_host": self.active_host,
            "features": list(self.features),
            "devices": [_device_dict(d) for d in self.devices],
            "volumes": [_volume_dict(v) for v in self.volumes],
            "operations": [dict(op) for op in self.operations],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Pool:
        try:
            version = d.get("version")
            if version != CONFIG_VERSION:
                raise UnsupportedConfigError(
                    f"configuration version {version!r} is not supported by this vvfs"
                    f" (it reads version {CONFIG_VERSION})")
            unknown = sorted(set(d.get("features", [])) - KNOWN_FEATURES)
            if unknown:
                raise UnsupportedConfigError(
                    "configuration needs features this vvfs does not know: " + ", ".join(unknown)
                )
            # Keys this reader does not know are compatible additions: ignored.
            devices = [Device(**_known(Device, dev)) for dev in d["devices"]]
            volumes = []
            for v in d["volumes"]:
                v = _known(Volume, v)
                segs = []
                for s in v.pop("segments"):
                    s = _known(Segment, s)
                    areas = [
                        [Area(DeviceUUID(str(dev)), int(start)) for dev, start in leg]
                        for leg in s.pop("areas")
                    ]
                    segs.append(Segment(areas=areas, **s))
                volumes.append(Volume(segments=segs, **v))
            return cls(
                uuid=d["uuid"],
                name=d["name"],
                extent_size=d["extent_size"],
                generation=d["generation"],
                created=d["created"],
                active_host=d["active_host"],
                features=list(d["features"]),
                devices=devices,
                volumes=volumes,
                operations=list(d.get("operations", [])),
            )
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"malformed pool configuration: {exc!r}") from exc

    # -- invariants ----------------------------------------------------------

    def check(self) -> None:
        """Raise ConfigError on the first broken invariant.

        Checked: names unique and valid; every area on a known device and
        inside it; no physical extent used twice; legs of a segment on
        distinct devices; segments contiguous and covering the volume.
        """
        check_name("pool", self.name)
        if self.extent_size <= 0 or self.extent_size & (self.extent_size - 1):
            raise ConfigError(f"extent size {self.extent_size} is not a power of two")
        devs: dict[str, Device] = {}
        for d in self.devices:
            if d.uuid in devs:
                raise ConfigError(f"device uuid {d.uuid} listed twice")
            devs[d.uuid] = d
        if len({d.name for d in self.devices}) != len(self.devices):
            raise ConfigError("device names are not unique")
        names: set[str] = set()
        runs: dict[str, list[tuple[int, int, str]]] = {}
        for v in self.volumes:
            check_name("volume", v.name)
            if v.name in names:
                raise ConfigError(f"volume name {v.name!r} used twice")
            names.add(v.name)
            expect = 0
            for s in v.segments:
                if s.start != expect:
                    raise ConfigError(f"volume {v.name}: segment at {s.start}, expected {expect}")
                expect += s.length
                _check_segment(v, s, devs, runs)
            if expect * self.extent_size < v.size:
                raise ConfigError(f"volume {v.name}: maps {expect} extents, too few for its size")
        for dev_uuid, start, count, what in reserved_runs(self):
            dev = devs.get(dev_uuid)
            if dev is None or start < 0 or count <= 0 or start + count > dev.extent_count:
                raise ConfigError(f"{what}: reserves extents {start}+{count} outside its device")
            runs.setdefault(dev_uuid, []).append((start, count, what))
        for dev_uuid, dev_runs in runs.items():
            dev_runs.sort()
            for (s1, n1, v1), (s2, _n2, v2) in itertools.pairwise(dev_runs):
                if s1 + n1 > s2:
                    raise ConfigError(
                        f"extent {s2} of device {devs[dev_uuid].name} used by {v1} and {v2}"
                    )



def _check_segment(v: Volume, s: Segment, devs: dict[str, Device],
                   runs: dict[str, list[tuple[int, int, str]]]) -> None:
    """ConfigError unless segment *s* of *v* is well formed; add its extents to *runs*."""
    if s.stripes < 1 or s.length <= 0 or s.length % s.stripes:
        raise ConfigError(f"volume {v.name}: segment length not a multiple of stripes")
    if not s.areas or any(len(leg) != s.stripes for leg in s.areas):
        raise ConfigError(f"volume {v.name}: segment areas do not match stripes")
    seg_devs = [a.device for leg in s.areas for a in leg]
    if len(set(seg_devs)) != len(seg_devs):
        raise ConfigError(f"volume {v.name}: segment at {s.start} uses a device twice")
    for leg in s.areas:
        for a in leg:
            dev = devs.get(a.device)
            if dev is None:
                raise ConfigError(f"volume {v.name}: unknown device {a.device}")
            if a.start < 0 or a.start + s.area_length > dev.extent_count:
                raise ConfigError(
                    f"volume {v.name}: extents {a.start}+{s.area_length}"
                    f" outside device {dev.name}"
                )
            runs.setdefault(a.device, []).append((a.start, s.area_length, v.name))


def reserved_runs(pool: Pool, strict: bool = True) -> list[tuple[str, int, int, str]]:
    """Extents held by operation records: ``(device, first extent, count, owner)``.

    An operation that needs extents outside every volume's map (the
    destination of a move) lists them as ``"reserved": [[device uuid, first
    extent, count], ...]``; allocation never hands them out and
    :meth:`Pool.check` treats them like a volume's areas.  A malformed run
    raises ConfigError, or is skipped when *strict* is false.
    """
    out = []
    for op in pool.operations:
        if not isinstance(op, dict) or not isinstance(op.get("reserved"), list):
            continue
        what = f"{op.get('kind', 'an')} operation {op.get('id', '')}".rstrip()
        for run in op["reserved"]:
            try:
                dev, start, count = run
                out.append((str(dev), int(start), int(count), what))
            except (TypeError, ValueError):
                if strict:
                    raise ConfigError(f"{what}: malformed reserved run {run!r}") from None
    return out


_DEVICE_FIELDS = [f.name for f in dataclasses.fields(Device)]
_VOLUME_FIELDS = [f.name for f in dataclasses.fields(Volume) if f.name != "segments"]


def _device_dict(d: Device) -> dict[str, Any]:
    out = {name: getattr(d, name) for name in _DEVICE_FIELDS}
    out["paths"] = list(d.paths)
    return out


def _volume_dict(v: Volume) -> dict[str, Any]:
    out = {name: getattr(v, name) for name in _VOLUME_FIELDS}
    out["hosts"] = list(v.hosts)
    out["segments"] = [
        {"start": s.start, "length": s.length, "stripes": s.stripes,
         "stripe_size": s.stripe_size,
         "areas": [[[a.device, a.start] for a in leg] for leg in s.areas]}
        for s in v.segments
    ]
    return out
