"""The catalog: a SQL mirror of every imported pool's configuration.

The configuration of a pool lives on its devices (the metadata area, see
``man/vvfs.5``); that copy is the truth.  The catalog mirrors it in tables so
that the node, ``vv`` and the dashboard can answer questions ("which volumes
use device X", "what is presented to host H", "which pools are imported")
without reading media.  It is written only *after* a configuration has been
committed to media, by :meth:`Catalog.sync_pool`, which replaces everything
the catalog knows about that pool in one transaction.

**Media wins.**  When the catalog and media disagree, media is right:
``vv catalog rebuild`` and ``vvfsck`` compare ``load_pool(uuid).to_dict()``
with the configuration read from media and re-sync from media.  Nothing in the
catalog is ever the only copy of anything, except the event log (``events``),
which is history, not configuration.

The schema below is the one canonical description of every table and column
(``comment=`` on each), sentinel values included.  It is created on open; a
catalog written by a newer vvfs (a higher ``schema_version`` in
``catalog_meta``) is refused rather than misread.

Units are those of :mod:`metadata.model`: sizes and offsets in bytes unless a
column says extents; times are POSIX seconds (float).

Concurrency: every public method is one short transaction on its own
connection; none keeps a transaction open between calls.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .errors import VVError
from .model import (
    Area,
    Device,
    DeviceUUID,
    Pool,
    PoolUUID,
    Segment,
    Volume,
    VolumeUUID,
)

log = logging.getLogger(__name__)

#: Version of the schema below; stored in ``catalog_meta`` as ``schema_version``.
SCHEMA_VERSION = 2

#: Schema versions this code can read (older ones would need a migration).
SUPPORTED_SCHEMA_VERSIONS = frozenset({1, 2})


class CatalogError(VVError):
    """The catalog cannot be opened, read or written as asked."""


# --------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------

UUID = String(36)
NAME = String(64)


class Base(DeclarativeBase):
    metadata = MetaData()


class CatalogMeta(Base):
    __tablename__ = "catalog_meta"
    __table_args__ = ({"comment": "Facts about the catalog itself (not about any pool)."},)

    key: Mapped[str] = mapped_column(
        String(64),
        primary_key=True,
        comment="Name of the fact; 'schema_version' is the only one so far.",
    )
    value: Mapped[str] = mapped_column(
        Text,
        comment="Its value as text; for 'schema_version' a decimal integer.",
    )


class PoolTable(Base):
    __tablename__ = "pools"
    __table_args__ = (
        {
            "comment": "One row per pool imported on this host: the pool-level fields of the"
            " configuration generation last committed to its media."
        },
    )

    uuid: Mapped[str] = mapped_column(UUID, primary_key=True, comment="Pool UUID (from media).")
    name: Mapped[str] = mapped_column(
        NAME, unique=True, comment="Pool name; unique among pools in this catalog."
    )
    generation: Mapped[int] = mapped_column(
        BigInteger,
        comment="Configuration generation this mirror was taken from; compare with media.",
    )
    extent_size: Mapped[int] = mapped_column(
        BigInteger, comment="Bytes per extent (a power of two, >= 1 MiB)."
    )
    created: Mapped[float] = mapped_column(Float, comment="When the pool was created (POSIX s).")
    active_host: Mapped[str | None] = mapped_column(
        String(255),
        nullable=True,
        comment="Host id that has the pool imported; NULL = exported (active on no host).",
    )
    features: Mapped[str] = mapped_column(
        Text,
        comment="JSON list of incompatible feature names the pool uses; '[]' = none.",
    )
    operations: Mapped[str] = mapped_column(
        Text,
        comment="JSON list of operation records in progress (moves, resyncs); '[]' = none.",
    )


class DeviceTable(Base):
    __tablename__ = "devices"
    __table_args__ = (
        Index("ix_devices_pool", "pool_uuid", "position"),
        {"comment": "One row per device of a pool (failed and missing ones included)."},
    )

    uuid: Mapped[str] = mapped_column(UUID, primary_key=True, comment="Device UUID (its label).")
    pool_uuid: Mapped[str] = mapped_column(
        UUID,
        ForeignKey("pools.uuid", ondelete="CASCADE"),
        comment="Pool the device belongs to.",
    )
    position: Mapped[int] = mapped_column(
        Integer, comment="Index of the device in the pool's device list (keeps media order)."
    )
    name: Mapped[str] = mapped_column(NAME, comment="Device name, unique within its pool.")
    path: Mapped[str | None] = mapped_column(
        Text,
        nullable=True,
        comment="Last path where this host found the device; NULL = not found on this host.",
    )
    size: Mapped[int] = mapped_column(BigInteger, comment="Device size in bytes.")
    data_start: Mapped[int] = mapped_column(
        BigInteger, comment="Byte offset of physical extent 0 on the device."
    )
    extent_count: Mapped[int] = mapped_column(
        BigInteger, comment="Physical extents available for data on the device."
    )
    tier: Mapped[int] = mapped_column(
        Integer, comment="Performance tier (storage class); lower is faster."
    )
    protection: Mapped[int] = mapped_column(
        Integer, comment="Protection level (storage class); higher is safer."
    )
    cost: Mapped[float] = mapped_column(Float, comment="Cost per GiB (storage class).")
    state: Mapped[str] = mapped_column(
        String(16), comment="Device state: 'ok' or 'failed' (metadata.model.DEVICE_STATES)."
    )
    paths: Mapped[str] = mapped_column(
        Text, comment="JSON list of paths recorded on media for the device; '[]' = none."
    )
    added: Mapped[float] = mapped_column(
        Float, comment="When the device joined the pool (POSIX s)."
    )
    extra: Mapped[str] = mapped_column(
        Text,
        default="{}",
        comment="JSON object of the device's configuration fields that have no column of"
        " their own (fields added to the model later); '{}' = none.",
    )


class VolumeTable(Base):
    __tablename__ = "volumes"
    __table_args__ = (
        UniqueConstraint("pool_uuid", "name", name="uq_volumes_pool_name"),
        Index("ix_volumes_pool", "pool_uuid", "position"),
        {"comment": "One row per volume of a pool."},
    )

    uuid: Mapped[str] = mapped_column(UUID, primary_key=True, comment="Volume UUID.")
    pool_uuid: Mapped[str] = mapped_column(
        UUID,
        ForeignKey("pools.uuid", ondelete="CASCADE"),
        comment="Pool the volume belongs to.",
    )
    position: Mapped[int] = mapped_column(
        Integer, comment="Index of the volume in the pool's volume list (keeps media order)."
    )
    name: Mapped[str] = mapped_column(NAME, comment="Volume name, unique within its pool.")
    size: Mapped[int] = mapped_column(
        BigInteger, comment="Bytes visible to hosts (a multiple of 512)."
    )
    stripes: Mapped[int] = mapped_column(
        Integer, comment="Stripes requested for the volume (segments carry their own)."
    )
    stripe_size: Mapped[int] = mapped_column(
        BigInteger, comment="Stripe unit in bytes requested for the volume."
    )
    mirrors: Mapped[int] = mapped_column(
        Integer, comment="Mirror legs requested for the volume; 1 = not mirrored."
    )
    owner: Mapped[int] = mapped_column(BigInteger, comment="uid owning the volume's file.")
    group_: Mapped[int] = mapped_column(
        "group_id", BigInteger, comment="gid owning the volume's file."
    )
    mode: Mapped[int] = mapped_column(Integer, comment="Permission bits of the volume's file.")
    read_policy: Mapped[str] = mapped_column(
        String(16),
        comment="Mirror read policy: 'balanced', 'primary' or 'first' (model.READ_POLICIES).",
    )
    created: Mapped[float] = mapped_column(Float, comment="When the volume was created (POSIX s).")
    extra: Mapped[str] = mapped_column(
        Text,
        default="{}",
        comment="JSON object of the volume's configuration fields that have no column of"
        " their own (fields added to the model later); '{}' = none.",
    )


class VolumeHostTable(Base):
    __tablename__ = "volume_hosts"
    __table_args__ = (
        Index("ix_volume_hosts_host", "host"),
        {
            "comment": "Presentation (LUN masking): a volume is visible to exactly the hosts"
            " listed here; no row = presented to every host."
        },
    )

    volume_uuid: Mapped[str] = mapped_column(
        UUID,
        ForeignKey("volumes.uuid", ondelete="CASCADE"),
        primary_key=True,
        comment="Volume presented.",
    )
    seq: Mapped[int] = mapped_column(
        Integer, primary_key=True, comment="Index in the volume's host list (keeps media order)."
    )
    host: Mapped[str] = mapped_column(String(255), comment="Host id the volume is presented to.")


class SegmentTable(Base):
    __tablename__ = "segments"
    __table_args__ = (
        {"comment": "Level 2 map: runs of a volume's logical extents, each with one layout."},
    )

    volume_uuid: Mapped[str] = mapped_column(
        UUID,
        ForeignKey("volumes.uuid", ondelete="CASCADE"),
        primary_key=True,
        comment="Volume the segment maps.",
    )
    seq: Mapped[int] = mapped_column(
        Integer, primary_key=True, comment="Index of the segment in the volume (0, 1, ...)."
    )
    start: Mapped[int] = mapped_column(
        BigInteger, comment="First logical extent of the volume covered by the segment."
    )
    length: Mapped[int] = mapped_column(
        BigInteger, comment="Logical extents covered (a multiple of stripes)."
    )
    stripes: Mapped[int] = mapped_column(Integer, comment="Stripe columns; 1 = linear.")
    stripe_size: Mapped[int] = mapped_column(BigInteger, comment="Stripe unit in bytes.")


class AreaTable(Base):
    __tablename__ = "areas"
    __table_args__ = (
        ForeignKeyConstraint(
            ["volume_uuid", "seq"],
            ["segments.volume_uuid", "segments.seq"],
            ondelete="CASCADE",
        ),
        Index("ix_areas_device", "device_uuid", "start"),
        {
            "comment": "Level 3 map: where each stripe column of each mirror leg of a segment"
            " lies on a device. device_uuid is deliberately not a foreign key: the"
            " catalog mirrors media as it is, and vvfsck reports unknown devices."
        },
    )

    volume_uuid: Mapped[str] = mapped_column(
        UUID, primary_key=True, comment="Volume of the segment."
    )
    seq: Mapped[int] = mapped_column(
        Integer, primary_key=True, comment="Segment index (segments.seq)."
    )
    leg: Mapped[int] = mapped_column(
        Integer, primary_key=True, comment="Mirror leg, 0-based; 0 = the only leg if unmirrored."
    )
    stripe: Mapped[int] = mapped_column(
        Integer, primary_key=True, comment="Stripe column, 0-based."
    )
    device_uuid: Mapped[str] = mapped_column(UUID, comment="Device holding the extents.")
    start: Mapped[int] = mapped_column(BigInteger, comment="First physical extent on the device.")
    length: Mapped[int] = mapped_column(
        BigInteger,
        comment="Physical extents in the run (segment length / stripes; redundant, for queries).",
    )


class EventTable(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_pool", "pool_uuid", "id"),
        {"comment": "Event log of the node (device failed, resync done, ...); history only."},
    )

    id: Mapped[int] = mapped_column(
        Integer,
        primary_key=True,
        autoincrement=True,
        comment="Increasing event number; followers ask for ids above the last seen.",
    )
    pool_uuid: Mapped[str | None] = mapped_column(
        UUID,
        nullable=True,
        comment="Pool concerned; NULL = the host or node as a whole. Not a foreign key:"
        " events outlive a dropped pool.",
    )
    time: Mapped[float] = mapped_column(Float, comment="When it happened (POSIX s).")
    kind: Mapped[str] = mapped_column(
        String(64), comment="Event kind, e.g. 'device-failed', 'resync-done'."
    )
    severity: Mapped[str] = mapped_column(
        String(16), comment="'debug', 'info', 'warning', 'error' or 'critical'."
    )
    object: Mapped[str] = mapped_column(
        Text, comment="What it concerns, e.g. 'pool/volume' or a device name; '' = none."
    )
    message: Mapped[str] = mapped_column(Text, comment="One human-readable line.")


POOLS: Table = Base.metadata.tables["pools"]
DEVICES: Table = Base.metadata.tables["devices"]
VOLUMES: Table = Base.metadata.tables["volumes"]
VOLUME_HOSTS: Table = Base.metadata.tables["volume_hosts"]
SEGMENTS: Table = Base.metadata.tables["segments"]
AREAS: Table = Base.metadata.tables["areas"]
EVENTS: Table = Base.metadata.tables["events"]
META: Table = Base.metadata.tables["catalog_meta"]


# --------------------------------------------------------------------------
# Rows handed to callers
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolRow:
    uuid: PoolUUID
    name: str
    generation: int
    extent_size: int
    created: float
    active_host: str | None
    features: tuple[str, ...]


@dataclass(frozen=True)
class VolumeRow:
    uuid: VolumeUUID
    pool_uuid: PoolUUID
    name: str
    size: int
    stripes: int
    stripe_size: int
    mirrors: int
    owner: int
    group: int
    mode: int
    read_policy: str
    created: float
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class EventRow:
    id: int
    pool_uuid: PoolUUID | None
    time: float
    kind: str
    severity: str
    object: str
    message: str


# --------------------------------------------------------------------------
# The catalog
# --------------------------------------------------------------------------


class Catalog:
    """A SQL mirror of the configuration of the pools imported on this host.

    *url* is a SQLAlchemy URL, e.g. ``sqlite:////var/lib/vvfs/catalog.sqlite``,
    or a PostgreSQL one (``postgresql://`` or ``postgresql+psycopg://``, see
    :func:`engine_url`) for a catalog shared by several hosts.
    Tables are created on open; a catalog of a newer, unknown schema version
    raises :class:`CatalogError`.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self.engine = _open_engine(url)
        self._writer = self.engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        try:
            self._prepare_schema()
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Catalog({_safe_url(self._url)!r})"

    # -- schema ------------------------------------------------------------

    def _prepare_schema(self) -> None:
        with self._write(f"cannot open catalog {_safe_url(self._url)}") as conn:
            found = _stored_schema_version(conn)
            if found is not None and found not in SUPPORTED_SCHEMA_VERSIONS:
                raise CatalogError(
                    f"catalog {_safe_url(self._url)} has schema version {found}; this vvfs"
                    f" reads version {SCHEMA_VERSION} (upgrade vvfs or rebuild the catalog)"
                )
            Base.metadata.create_all(conn)
            if found is None:
                conn.execute(insert(META).values(key="schema_version", value=str(SCHEMA_VERSION)))
            elif found < SCHEMA_VERSION:
                _upgrade(conn, found)



    # -- writing -----------------------------------------------------------

    def sync_pool(
        self, pool: Pool, device_paths: Mapping[str, str], previous: Pool | None = None
    ) -> None:
        """Make the catalog's copy of *pool* exactly *pool*, in one transaction.

        *device_paths* maps device uuid to the path where this host last found
        the device; devices it does not name get a NULL ``path``.

        *previous*, when given, is the configuration the catalog is believed
        to hold: if the catalog's generation for the pool is indeed
        ``previous.generation``, only the volumes that differ are rewritten
        (a commit usually changes one volume of thousands).  Otherwise, or if
        the volume order cannot be kept that way, every row is rewritten.
        """
        started = time.monotonic()
        how = "rewrote"
        with self._write(f"cannot record pool {pool.name} in the catalog") as conn:
            if previous is not None and _sync_changes(conn, previous, pool, device_paths):
                how = "updated"
            else:
                _delete_pool_rows(conn, pool.uuid)
                _insert_pool_rows(conn, pool, device_paths)
        log.debug(
            "catalog: %s pool %s generation %d (%d volumes) in %.3f s",
            how,
            pool.name,
            pool.generation,
            len(pool.volumes),
            time.monotonic() - started,
        )

    def drop_pool(self, pool_uuid: str) -> None:
        """Forget everything about a pool (its events stay)."""
        with self._write(f"cannot drop pool {pool_uuid} from the catalog") as conn:
            _delete_pool_rows(conn, pool_uuid)

    def add_event(
        self, pool_uuid: str | None, kind: str, severity: str, obj: str, message: str
    ) -> int:
        """Append an event and return its id."""
        values = {
            "pool_uuid": pool_uuid,
            "time": time.time(),
            "kind": kind,
            "severity": severity,
            "object": obj,
            "message": message,
        }
        with self._write("cannot record an event in the catalog") as conn:
            result = conn.execute(insert(EVENTS).values(**values))
            key = result.inserted_primary_key
        if key is None or key[0] is None:
            raise CatalogError("catalog did not return the id of a new event")
        return int(key[0])

    # -- reading -----------------------------------------------------------

    def pool_generation(self, pool_uuid: str) -> int | None:
        """The generation last synced for the pool, or None if it is not here."""
        query = select(POOLS.c.generation).where(POOLS.c.uuid == pool_uuid)
        with self._read() as conn:
            gen = conn.execute(query).scalar_one_or_none()
        return None if gen is None else int(gen)

    def pools(self) -> list[PoolRow]:
        """Every pool in the catalog, by name."""
        with self._read() as conn:
            rows = conn.execute(select(POOLS).order_by(POOLS.c.name)).all()
        return [_pool_row(r) for r in rows]

    def find_pool(self, name_or_uuid: str) -> PoolRow | None:
        """The pool with this uuid, else with this name, else None."""
        with self._read() as conn:
            for column in (POOLS.c.uuid, POOLS.c.name):
                row = conn.execute(select(POOLS).where(column == name_or_uuid)).first()
                if row is not None:
                    return _pool_row(row)
        return None

    def device_paths(self, pool_uuid: str) -> dict[str, str]:
        """Device uuid -> last path found on this host (devices never found are left out)."""
        query = select(DEVICES.c.uuid, DEVICES.c.path).where(
            DEVICES.c.pool_uuid == pool_uuid, DEVICES.c.path.is_not(None)
        )
        with self._read() as conn:
            return {uuid: path for uuid, path in conn.execute(query)}

    def volumes(self, pool_uuid: str) -> list[VolumeRow]:
        """The volumes of a pool, in configuration order, with their hosts."""
        with self._read() as conn:
            rows = conn.execute(_volumes_query(pool_uuid)).all()
            hosts = _hosts_by_volume(conn, pool_uuid)
        return [_volume_row(r, hosts.get(r.uuid, [])) for r in rows]

    def load_pool(self, pool_uuid: str) -> Pool:
        """Rebuild the whole configuration of a pool from the catalog.

        After ``sync_pool(p, ...)``, ``load_pool(p.uuid).to_dict() == p.to_dict()``.
        Raises CatalogError if the pool is not in the catalog or its rows are
        inconsistent.
        """
        with self._read() as conn:
            row = conn.execute(select(POOLS).where(POOLS.c.uuid == pool_uuid)).first()
            if row is None:
                raise CatalogError(f"pool {pool_uuid} is not in the catalog")
            pool = _pool_from_row(row)
            pool.devices = _load_devices(conn, pool_uuid)
            pool.volumes = _load_volumes(conn, pool_uuid)
        return pool

    def events(
        self, pool_uuid: str | None = None, since_id: int = 0, limit: int = 1000
    ) -> list[EventRow]:
        """Events with id > *since_id*, oldest first, at most *limit*.

        With *pool_uuid*, only that pool's events; without, all events.
        """
        query = select(EVENTS).where(EVENTS.c.id > since_id).order_by(EVENTS.c.id).limit(limit)
        if pool_uuid is not None:
            query = query.where(EVENTS.c.pool_uuid == pool_uuid)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            EventRow(r.id, r.pool_uuid, r.time, r.kind, r.severity, r.object, r.message)
            for r in rows
        ]

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """One read transaction (one snapshot); database errors become CatalogError."""
        with _errors(f"cannot read catalog {_safe_url(self._url)}"), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _write(self, what: str) -> Iterator[Connection]:
        """One write transaction; database errors become CatalogError naming *what*."""
        with _errors(what), self._writer.begin() as conn:
            yield conn


# --------------------------------------------------------------------------
# Engine and errors
# --------------------------------------------------------------------------


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<malformed URL>"


#: URL schemes that name PostgreSQL without a driver (libpq's own, and
#: SQLAlchemy's, whose default driver is psycopg2): vvfs uses psycopg 3.
_POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})


def engine_url(url: str) -> URL:
    """The SQLAlchemy URL for a catalog URL of ``vvfs.yaml``.

    A PostgreSQL URL without a driver -- SQLAlchemy's ``postgresql://`` or a
    plain libpq URI such as ``postgresql://vvfs@/vvfs?host=/run/postgresql&port=5432``
    -- gets the psycopg 3 driver (``postgresql+psycopg``, installed with
    vvfs); libpq's ``host`` and ``port`` query parameters are passed on to it.
    Raises ArgumentError for a malformed URL.
    """
    parsed = make_url(url)
    if parsed.drivername in _POSTGRES_SCHEMES:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _open_engine(url: str) -> Engine:
    try:
        engine = create_engine(engine_url(url))
    except (ArgumentError, SQLAlchemyError, ImportError) as exc:
        raise CatalogError(f"cannot open catalog {_safe_url(url)}: {_one_line(exc)}") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings.

    WAL lets readers run while the node writes; synchronous=NORMAL is safe
    with WAL (a crash may lose the last sync, never corrupt the file, and
    the catalog can always be re-synced from media); foreign keys are off
    by default in SQLite.  The driver's own transaction handling is turned
    off (it would not BEGIN before a SELECT, so several SELECTs would not
    see one snapshot); :func:`_sqlite_on_begin` emits BEGIN instead.
    """
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    """BEGIN a read transaction, or BEGIN IMMEDIATE one that will write.

    Taking the write lock up front means a writer waits for another writer
    (the driver's busy timeout) instead of failing when it upgrades.
    """
    mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


#: Execution option naming the SQLite BEGIN mode of a transaction.
_BEGIN_OPTION = "vvfs_sqlite_begin"


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def _errors(what: str) -> Iterator[None]:
    """Turn database errors raised inside into one-line CatalogErrors."""
    try:
        yield
    except IntegrityError as exc:
        raise CatalogError(f"{what}: conflicts with the catalog: {_one_line(exc)}") from exc
    except SQLAlchemyError as exc:
        raise CatalogError(f"{what}: {_one_line(exc)}") from exc


def _upgrade(conn: Connection, found: int) -> None:
    """Bring an older catalog schema to SCHEMA_VERSION in place (same transaction)."""
    if found < 2:  # version 2 added the 'extra' columns
        for table in ("devices", "volumes"):
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN extra TEXT DEFAULT '{{}}'")
    conn.execute(update(META).where(META.c.key == "schema_version")
                 .values(value=str(SCHEMA_VERSION)))
    log.info("catalog: schema upgraded from version %d to %d", found, SCHEMA_VERSION)


def _stored_schema_version(conn: Connection) -> int | None:
    """The schema version recorded in the catalog, None for a new catalog."""
    if not inspect(conn).has_table(META.name):
        return None
    value = conn.execute(select(META.c.value).where(META.c.key == "schema_version")).scalar()
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise CatalogError(f"catalog schema version {value!r} is not a number") from None


# --------------------------------------------------------------------------
# Writing a pool
# --------------------------------------------------------------------------


def _delete_pool_rows(conn: Connection, pool_uuid: str) -> None:
    """Delete every row of a pool, children first (no reliance on CASCADE)."""
    volumes = select(VOLUMES.c.uuid).where(VOLUMES.c.pool_uuid == pool_uuid)
    for child in (AREAS, SEGMENTS, VOLUME_HOSTS):
        conn.execute(delete(child).where(child.c.volume_uuid.in_(volumes)))
    conn.execute(delete(VOLUMES).where(VOLUMES.c.pool_uuid == pool_uuid))
    conn.execute(delete(DEVICES).where(DEVICES.c.pool_uuid == pool_uuid))
    conn.execute(delete(POOLS).where(POOLS.c.uuid == pool_uuid))


def _sync_changes(
    conn: Connection, previous: Pool, pool: Pool, device_paths: Mapping[str, str]
) -> bool:
    """Rewrite only what differs from *previous*; False (nothing done) if that cannot be."""
    stored = conn.execute(
        select(POOLS.c.generation).where(POOLS.c.uuid == pool.uuid)
    ).scalar_one_or_none()
    if previous.uuid != pool.uuid or stored is None or stored != previous.generation:
        return False
    query = select(VOLUMES.c.uuid, VOLUMES.c.position).where(VOLUMES.c.pool_uuid == pool.uuid)
    positions = {uuid: pos for uuid, pos in conn.execute(query)}
    old = {v.uuid: v for v in previous.volumes}
    if set(old) != set(positions):
        return False
    plan: list[tuple[int, Volume, bool]] = []  # position, volume, rewrite?
    last = -1
    top = max(positions.values(), default=-1)
    for v in pool.volumes:
        if v.uuid in positions:
            pos = positions[v.uuid]
            rewrite = old[v.uuid] != v
        else:
            top += 1
            pos, rewrite = top, True
        if pos <= last:
            return False  # the order changed: a full rewrite keeps it
        last = pos
        plan.append((pos, v, rewrite))
    gone = set(old) - {v.uuid for v in pool.volumes}
    stale = list(gone | {v.uuid for _, v, rw in plan if rw and v.uuid in old})
    for chunk in range(0, len(stale), 500):
        _delete_volume_rows(conn, stale[chunk:chunk + 500])
    conn.execute(delete(DEVICES).where(DEVICES.c.pool_uuid == pool.uuid))
    conn.execute(update(POOLS).where(POOLS.c.uuid == pool.uuid).values(**_pool_values(pool)))
    _insert_rows(conn, [
        (DEVICES, [_device_values(pool, i, d, device_paths) for i, d in enumerate(pool.devices)]),
        *_volume_batches(pool, [(pos, v) for pos, v, rw in plan if rw]),
    ])
    return True


def _delete_volume_rows(conn: Connection, uuids: Sequence[str]) -> None:
    for child in (AREAS, SEGMENTS, VOLUME_HOSTS):
        conn.execute(delete(child).where(child.c.volume_uuid.in_(uuids)))
    conn.execute(delete(VOLUMES).where(VOLUMES.c.uuid.in_(uuids)))


def _volume_batches(
    pool: Pool, placed: Sequence[tuple[int, Volume]]
) -> list[tuple[Any, list[dict[str, Any]]]]:
    volumes = [v for _, v in placed]
    return [
        (VOLUMES, [_volume_values(pool, pos, v) for pos, v in placed]),
        (VOLUME_HOSTS, list(_host_values(volumes))),
        (SEGMENTS, list(_segment_values(volumes))),
        (AREAS, list(_area_values(volumes))),
    ]


def _insert_rows(conn: Connection, batches: Sequence[tuple[Any, list[dict[str, Any]]]]) -> None:
    for table, rows in batches:
        if rows:
            conn.execute(insert(table), rows)


def _insert_pool_rows(conn: Connection, pool: Pool, device_paths: Mapping[str, str]) -> None:
    """Bulk-insert a pool's rows, parents first (executemany per table)."""
    conn.execute(insert(POOLS), [_pool_values(pool)])
    _insert_rows(conn, [
        (DEVICES, [_device_values(pool, i, d, device_paths) for i, d in enumerate(pool.devices)]),
        *_volume_batches(pool, list(enumerate(pool.volumes))),
    ])


def _pool_values(pool: Pool) -> dict[str, Any]:
    return {
        "uuid": pool.uuid,
        "name": pool.name,
        "generation": pool.generation,
        "extent_size": pool.extent_size,
        "created": pool.created,
        "active_host": pool.active_host,
        "features": json.dumps(pool.features),
        "operations": json.dumps(pool.operations),
    }


def _device_values(
    pool: Pool, position: int, d: Device, device_paths: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "uuid": d.uuid,
        "pool_uuid": pool.uuid,
        "position": position,
        "name": d.name,
        "path": device_paths.get(d.uuid),
        "size": d.size,
        "data_start": d.data_start,
        "extent_count": d.extent_count,
        "tier": d.tier,
        "protection": d.protection,
        "cost": d.cost,
        "state": d.state,
        "paths": json.dumps(d.paths),
        "added": d.added,
        "extra": _extra(d, _DEVICE_COLUMNS),
    }


def _volume_values(pool: Pool, position: int, v: Volume) -> dict[str, Any]:
    return {
        "uuid": v.uuid,
        "pool_uuid": pool.uuid,
        "position": position,
        "name": v.name,
        "size": v.size,
        "stripes": v.stripes,
        "stripe_size": v.stripe_size,
        "mirrors": v.mirrors,
        "owner": v.owner,
        "group_id": v.group,
        "mode": v.mode,
        "read_policy": v.read_policy,
        "created": v.created,
        "extra": _extra(v, _VOLUME_COLUMNS),
    }


def _host_values(volumes: Iterable[Volume]) -> Iterable[dict[str, Any]]:
    for v in volumes:
        for seq, host in enumerate(v.hosts):
            yield {"volume_uuid": v.uuid, "seq": seq, "host": host}


def _segment_values(volumes: Iterable[Volume]) -> Iterable[dict[str, Any]]:
    for v in volumes:
        for seq, s in enumerate(v.segments):
            yield {
                "volume_uuid": v.uuid,
                "seq": seq,
                "start": s.start,
                "length": s.length,
                "stripes": s.stripes,
                "stripe_size": s.stripe_size,
            }


def _area_values(volumes: Iterable[Volume]) -> Iterable[dict[str, Any]]:
    for v in volumes:
        for seq, s in enumerate(v.segments):
            length = s.area_length if s.stripes > 0 else 0
            for leg, areas in enumerate(s.areas):
                for stripe, a in enumerate(areas):
                    yield {
                        "volume_uuid": v.uuid,
                        "seq": seq,
                        "leg": leg,
                        "stripe": stripe,
                        "device_uuid": a.device,
                        "start": a.start,
                        "length": length,
                    }


# --------------------------------------------------------------------------
# Reading a pool
# --------------------------------------------------------------------------


#: Model fields stored in columns of their own; the others go to ``extra``.
_DEVICE_COLUMNS = frozenset({"uuid", "name", "size", "data_start", "extent_count", "tier",
                             "protection", "cost", "state", "paths", "added"})
_VOLUME_COLUMNS = frozenset({"uuid", "name", "size", "stripes", "stripe_size", "mirrors",
                             "owner", "group", "mode", "hosts", "read_policy", "segments",
                             "created"})


def _extra(obj: Device | Volume, columns: frozenset[str]) -> str:
    """JSON of *obj*'s model fields that have no column (see ``extra``)."""
    fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
              if f.name not in columns}
    return json.dumps(fields, sort_keys=True)


def _extra_fields(cls: type, text: str | None, what: str) -> dict[str, Any]:
    """The ``extra`` column's fields that *cls* knows (unknown ones are ignored)."""
    if not text:
        return {}
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CatalogError(f"catalog: extra fields of {what} are not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CatalogError(f"catalog: extra fields of {what} are not a JSON object")
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in doc.items() if k in names}


def _json_list(text: str, what: str) -> list[Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        raise CatalogError(f"catalog {what} is not valid JSON: {text!r:.80}") from None
    if not isinstance(value, list):
        raise CatalogError(f"catalog {what} is not a JSON list: {text!r:.80}")
    return value


def _pool_row(r: Any) -> PoolRow:
    features = _json_list(r.features, f"features of pool {r.name}")
    return PoolRow(
        uuid=PoolUUID(r.uuid),
        name=r.name,
        generation=r.generation,
        extent_size=r.extent_size,
        created=r.created,
        active_host=r.active_host,
        features=tuple(features),
    )


def _pool_from_row(r: Any) -> Pool:
    return Pool(
        uuid=PoolUUID(r.uuid),
        name=r.name,
        extent_size=r.extent_size,
        generation=r.generation,
        created=r.created,
        active_host=r.active_host,
        features=_json_list(r.features, f"features of pool {r.name}"),
        operations=_json_list(r.operations, f"operations of pool {r.name}"),
    )


def _load_devices(conn: Connection, pool_uuid: str) -> list[Device]:
    query = select(DEVICES).where(DEVICES.c.pool_uuid == pool_uuid).order_by(DEVICES.c.position)
    return [
        Device(
            uuid=DeviceUUID(r.uuid),
            name=r.name,
            size=r.size,
            data_start=r.data_start,
            extent_count=r.extent_count,
            tier=r.tier,
            protection=r.protection,
            cost=r.cost,
            state=r.state,
            paths=_json_list(r.paths, f"paths of device {r.name}"),
            added=r.added,
            **_extra_fields(Device, r.extra, f"device {r.name}"),
        )
        for r in conn.execute(query)
    ]


def _volumes_query(pool_uuid: str) -> Any:
    return select(VOLUMES).where(VOLUMES.c.pool_uuid == pool_uuid).order_by(VOLUMES.c.position)


def _of_pool(table: Any, pool_uuid: str) -> Any:
    """Rows of a per-volume child *table* for the volumes of one pool."""
    return (
        select(table)
        .join(VOLUMES, VOLUMES.c.uuid == table.c.volume_uuid)
        .where(VOLUMES.c.pool_uuid == pool_uuid)
    )


def _hosts_by_volume(conn: Connection, pool_uuid: str) -> dict[str, list[str]]:
    query = _of_pool(VOLUME_HOSTS, pool_uuid).order_by(
        VOLUME_HOSTS.c.volume_uuid, VOLUME_HOSTS.c.seq
    )
    hosts: dict[str, list[str]] = defaultdict(list)
    for r in conn.execute(query):
        _expect_index(hosts[r.volume_uuid], r.seq, f"host list of volume {r.volume_uuid}")
        hosts[r.volume_uuid].append(r.host)
    return hosts


def _volume_row(r: Any, hosts: Sequence[str]) -> VolumeRow:
    return VolumeRow(
        uuid=VolumeUUID(r.uuid),
        pool_uuid=PoolUUID(r.pool_uuid),
        name=r.name,
        size=r.size,
        stripes=r.stripes,
        stripe_size=r.stripe_size,
        mirrors=r.mirrors,
        owner=r.owner,
        group=r.group_id,
        mode=r.mode,
        read_policy=r.read_policy,
        created=r.created,
        hosts=tuple(hosts),
    )


def _load_volumes(conn: Connection, pool_uuid: str) -> list[Volume]:
    hosts = _hosts_by_volume(conn, pool_uuid)
    segments = _segments_by_volume(conn, pool_uuid)
    return [
        Volume(
            uuid=VolumeUUID(r.uuid),
            name=r.name,
            size=r.size,
            stripes=r.stripes,
            stripe_size=r.stripe_size,
            mirrors=r.mirrors,
            owner=r.owner,
            group=r.group_id,
            mode=r.mode,
            hosts=hosts.get(r.uuid, []),
            read_policy=r.read_policy,
            segments=segments.get(r.uuid, []),
            created=r.created,
            **_extra_fields(Volume, r.extra, f"volume {r.name}"),
        )
        for r in conn.execute(_volumes_query(pool_uuid))
    ]


def _segments_by_volume(conn: Connection, pool_uuid: str) -> dict[str, list[Segment]]:
    """Segments of every volume of a pool, their areas filled in."""
    segments: dict[str, list[Segment]] = defaultdict(list)
    query = _of_pool(SEGMENTS, pool_uuid).order_by(SEGMENTS.c.volume_uuid, SEGMENTS.c.seq)
    for r in conn.execute(query):
        _expect_index(segments[r.volume_uuid], r.seq, f"segments of volume {r.volume_uuid}")
        segments[r.volume_uuid].append(Segment(r.start, r.length, r.stripes, r.stripe_size, []))
    _fill_areas(conn, pool_uuid, segments)
    return segments


def _fill_areas(conn: Connection, pool_uuid: str, segments: dict[str, list[Segment]]) -> None:
    query = _of_pool(AREAS, pool_uuid).order_by(
        AREAS.c.volume_uuid, AREAS.c.seq, AREAS.c.leg, AREAS.c.stripe
    )
    for r in conn.execute(query):
        where = f"area {r.leg}/{r.stripe} of segment {r.seq} of volume {r.volume_uuid}"
        segs = segments.get(r.volume_uuid, [])
        if r.seq >= len(segs):
            raise CatalogError(f"catalog {where} has no segment")
        legs = segs[r.seq].areas
        if r.stripe == 0:
            _expect_index(legs, r.leg, where)
            legs.append([])
        elif not legs or r.leg != len(legs) - 1:
            raise CatalogError(f"catalog {where} is out of sequence")
        _expect_index(legs[-1], r.stripe, where)
        legs[-1].append(Area(DeviceUUID(r.device_uuid), r.start))


def _expect_index(items: Sequence[Any], index: int, what: str) -> None:
    """Raise CatalogError unless *index* is the next position in *items*."""
    if index != len(items):
        raise CatalogError(f"catalog {what}: index {index} where {len(items)} was expected")
