"""Tests of metadata.catalog: the SQL mirror of pool configurations.

Pools are built by hand with a tiny local allocator (the mapper package is
not used here) and checked with ``Pool.check()`` before they are synced, so
every round trip is of a valid pool.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select, text

from metadata import catalog as cat
from metadata.catalog import Catalog, CatalogError
from metadata.model import (
    Area,
    Device,
    DeviceUUID,
    Pool,
    PoolUUID,
    Segment,
    Volume,
    VolumeUUID,
    new_uuid,
)

log = logging.getLogger(__name__)

MiB = 1 << 20
EXTENT = 4 * MiB
DATA_START = 1 * MiB


# --------------------------------------------------------------------------
# Building pools by hand
# --------------------------------------------------------------------------


def pool_with_devices(name: str = "tank", devices: int = 4, extents: int = 1000) -> Pool:
    """A pool of *devices* devices with every device column set, and no volumes yet."""
    pool = Pool(uuid=PoolUUID(new_uuid()), name=name, extent_size=EXTENT, created=1700000000.5)
    for i in range(devices):
        pool.devices.append(
            Device(
                uuid=DeviceUUID(new_uuid()),
                name=f"d{i}",
                size=DATA_START + extents * EXTENT,
                data_start=DATA_START,
                extent_count=extents,
                tier=i % 3,
                protection=i % 2,
                cost=0.03 + i / 7,
                paths=[f"/dev/disk/by-id/{name}-d{i}"],
                added=1700000001.25 + i,
            )
        )
    return pool


class HandAllocator:
    """Hands out physical extents from the end of what each device has used."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.next_free = {d.uuid: 0 for d in pool.devices}
        for v in pool.volumes:
            for s in v.segments:
                for leg in s.areas:
                    for a in leg:
                        end = a.start + s.area_length
                        self.next_free[a.device] = max(self.next_free[a.device], end)

    def segment(
        self, start: int, length: int, stripes: int, mirrors: int, stripe_size: int
    ) -> Segment:
        per_area = length // stripes
        devices = self._devices_with_room(per_area, stripes * mirrors)
        areas: list[list[Area]] = []
        for m in range(mirrors):
            leg = []
            for s in range(stripes):
                dev = devices[m * stripes + s]
                leg.append(Area(dev, self.next_free[dev]))
                self.next_free[dev] += per_area
            areas.append(leg)
        return Segment(start, length, stripes, stripe_size, areas)

    def _devices_with_room(self, extents: int, count: int) -> list[DeviceUUID]:
        by_free = sorted(self.pool.devices, key=lambda d: self.next_free[d.uuid])
        chosen = [d.uuid for d in by_free if self.next_free[d.uuid] + extents <= d.extent_count]
        if len(chosen) < count:
            raise ValueError("test pool too small for this volume")
        return chosen[:count]


def add_volume(
    pool: Pool,
    name: str,
    extents: int,
    *,
    stripes: int = 1,
    mirrors: int = 1,
    segments: int = 1,
    hosts: Sequence[str] = (),
) -> Volume:
    """Append a volume of *extents* logical extents in *segments* equal segments."""
    alloc = HandAllocator(pool)
    per_segment = extents // segments
    volume = Volume(
        uuid=VolumeUUID(new_uuid()),
        name=name,
        size=extents * EXTENT - 512 * (extents % 3),
        stripes=stripes,
        mirrors=mirrors,
        owner=1000,
        group=4294967294,
        mode=0o640,
        hosts=list(hosts),
        read_policy="primary" if mirrors > 1 else "balanced",
        created=1700000100.125,
    )
    for i in range(segments):
        volume.segments.append(
            alloc.segment(i * per_segment, per_segment, stripes, mirrors, 65536 * (i + 1))
        )
    pool.volumes.append(volume)
    return volume


def paths_of(pool: Pool) -> dict[str, str]:
    return {d.uuid: f"/dev/sd{chr(ord('a') + i)}" for i, d in enumerate(pool.devices)}


def checked(pool: Pool) -> Pool:
    pool.check()
    return pool


def rows_in(catalog: Catalog, table: Any) -> int:
    with catalog.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.sqlite'}"


@pytest.fixture
def catalog(url: str) -> Iterator[Catalog]:
    c = Catalog(url)
    try:
        yield c
    finally:
        c.close()


def round_trip(catalog: Catalog, pool: Pool) -> Pool:
    catalog.sync_pool(checked(pool), paths_of(pool))
    return catalog.load_pool(pool.uuid)


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------


def test_linear_volume_round_trips(catalog: Catalog) -> None:
    pool = pool_with_devices()
    add_volume(pool, "root", 10)
    assert round_trip(catalog, pool).to_dict() == pool.to_dict()


def test_multi_segment_linear_volume_round_trips(catalog: Catalog) -> None:
    pool = pool_with_devices()
    add_volume(pool, "grown", 12, segments=3)
    assert round_trip(catalog, pool).to_dict() == pool.to_dict()


def test_striped_volume_round_trips(catalog: Catalog) -> None:
    pool = pool_with_devices()
    add_volume(pool, "fast", 12, stripes=3)
    assert round_trip(catalog, pool).to_dict() == pool.to_dict()


def test_mirrored_volume_round_trips(catalog: Catalog) -> None:
    pool = pool_with_devices()
    add_volume(pool, "safe", 8, mirrors=3, hosts=["h1"])
    assert round_trip(catalog, pool).to_dict() == pool.to_dict()


def test_striped_mirrored_volume_round_trips(catalog: Catalog) -> None:
    pool = pool_with_devices(devices=6)
    add_volume(pool, "both", 12, stripes=3, mirrors=2, segments=2, hosts=["h2", "h1"])
    assert round_trip(catalog, pool).to_dict() == pool.to_dict()


def test_several_volumes_keep_their_order(catalog: Catalog) -> None:
    pool = pool_with_devices()
    for name in ("zeta", "alpha", "mu"):
        add_volume(pool, name, 2)
    loaded = round_trip(catalog, pool)
    assert [v.name for v in loaded.volumes] == ["zeta", "alpha", "mu"]


def test_pool_level_fields_round_trip(catalog: Catalog) -> None:
    pool = pool_with_devices()
    pool.generation = 41
    pool.active_host = "host-a"
    pool.operations = [{"kind": "move", "volume": "v", "segment": 0, "done": [1, 2]}]
    pool.devices[1].state = "failed"
    pool.devices[2].paths = []
    assert round_trip(catalog, pool).to_dict() == pool.to_dict()


def test_empty_pool_round_trips(catalog: Catalog) -> None:
    pool = pool_with_devices(devices=0)
    assert round_trip(catalog, pool).to_dict() == pool.to_dict()


volume_specs = st.lists(
    st.tuples(
        st.integers(1, 3),  # stripes
        st.integers(1, 2),  # mirrors
        st.integers(1, 3),  # segments
        st.lists(st.sampled_from(["h1", "h2", "h3"]), unique=True, max_size=3),
    ),
    max_size=6,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=volume_specs,
    generation=st.integers(0, 2**40),
    active_host=st.none() | st.text("abcxyz-", min_size=1, max_size=8),
)
def test_any_hand_built_pool_round_trips(
    specs: list[tuple[int, int, int, list[str]]], generation: int, active_host: str | None
) -> None:
    pool = pool_with_devices(devices=6)
    pool.generation = generation
    pool.active_host = active_host
    for i, (stripes, mirrors, segments, hosts) in enumerate(specs):
        add_volume(
            pool,
            f"v{i}",
            stripes * segments * 2,
            stripes=stripes,
            mirrors=mirrors,
            segments=segments,
            hosts=hosts,
        )
    with Catalog("sqlite://") as catalog:
        assert round_trip(catalog, pool).to_dict() == pool.to_dict()


# --------------------------------------------------------------------------
# Re-sync replaces
# --------------------------------------------------------------------------


def test_resync_forgets_removed_volume(catalog: Catalog) -> None:
    pool = pool_with_devices()
    add_volume(pool, "keep", 4)
    add_volume(pool, "gone", 4, stripes=2, mirrors=2, hosts=["h1"])
    catalog.sync_pool(checked(pool), paths_of(pool))
    pool.volumes = [v for v in pool.volumes if v.name != "gone"]
    pool.generation += 1
    catalog.sync_pool(checked(pool), paths_of(pool))
    assert [v.name for v in catalog.volumes(pool.uuid)] == ["keep"]
    assert (rows_in(catalog, cat.SEGMENTS), rows_in(catalog, cat.AREAS)) == (1, 1)
    assert rows_in(catalog, cat.VOLUME_HOSTS) == 0


def test_resync_updates_renamed_volume(catalog: Catalog) -> None:
    pool = pool_with_devices()
    vol = add_volume(pool, "old", 4)
    catalog.sync_pool(checked(pool), paths_of(pool))
    vol.name = "new"
    catalog.sync_pool(checked(pool), paths_of(pool))
    rows = catalog.volumes(pool.uuid)
    assert [(r.uuid, r.name) for r in rows] == [(vol.uuid, "new")]


def test_resync_replaces_map_and_hosts(catalog: Catalog) -> None:
    pool = pool_with_devices()
    vol = add_volume(pool, "v", 4, hosts=["h1", "h2"])
    catalog.sync_pool(checked(pool), paths_of(pool))
    vol.segments.append(HandAllocator(pool).segment(4, 4, 2, 1, 65536))
    vol.hosts = ["h3"]
    assert round_trip(catalog, pool).to_dict() == pool.to_dict()


def test_resync_updates_generation(catalog: Catalog) -> None:
    pool = pool_with_devices()
    catalog.sync_pool(pool, {})
    pool.generation = 7
    catalog.sync_pool(pool, {})
    assert catalog.pool_generation(pool.uuid) == 7


def test_failed_sync_leaves_previous_copy(catalog: Catalog) -> None:
    a, b = pool_with_devices("a"), pool_with_devices("b")
    add_volume(a, "va", 2)
    vb = add_volume(b, "vb", 2)
    catalog.sync_pool(checked(a), paths_of(a))
    catalog.sync_pool(checked(b), paths_of(b))
    before = a.to_dict()
    a.generation += 1
    a.volumes[0].uuid = vb.uuid  # collides with pool b's volume
    with pytest.raises(CatalogError, match="cannot record pool a"):
        catalog.sync_pool(a, paths_of(a))
    assert catalog.load_pool(a.uuid).to_dict() == before


def test_duplicate_pool_name_refused(catalog: Catalog) -> None:
    catalog.sync_pool(pool_with_devices("tank"), {})
    with pytest.raises(CatalogError, match="cannot record pool tank"):
        catalog.sync_pool(pool_with_devices("tank"), {})


# --------------------------------------------------------------------------
# Several pools
# --------------------------------------------------------------------------


def test_resync_of_one_pool_leaves_the_other(catalog: Catalog) -> None:
    a, b = pool_with_devices("a"), pool_with_devices("b")
    add_volume(a, "v", 4, hosts=["h1"])
    add_volume(b, "v", 4, stripes=2, hosts=["h1"])
    catalog.sync_pool(checked(a), paths_of(a))
    catalog.sync_pool(checked(b), paths_of(b))
    a.volumes.clear()
    catalog.sync_pool(checked(a), {})
    assert catalog.load_pool(b.uuid).to_dict() == b.to_dict()
    assert catalog.device_paths(b.uuid) == paths_of(b)


def test_drop_pool_leaves_the_other(catalog: Catalog) -> None:
    a, b = pool_with_devices("a"), pool_with_devices("b")
    add_volume(a, "v", 4)
    add_volume(b, "v", 4)
    catalog.sync_pool(checked(a), paths_of(a))
    catalog.sync_pool(checked(b), paths_of(b))
    catalog.drop_pool(a.uuid)
    assert [p.name for p in catalog.pools()] == ["b"]
    assert catalog.load_pool(b.uuid).to_dict() == b.to_dict()


def test_drop_pool_removes_every_row(catalog: Catalog) -> None:
    pool = pool_with_devices()
    add_volume(pool, "v", 4, stripes=2, mirrors=2, hosts=["h"])
    catalog.sync_pool(checked(pool), paths_of(pool))
    catalog.drop_pool(pool.uuid)
    tables = (cat.POOLS, cat.DEVICES, cat.VOLUMES, cat.VOLUME_HOSTS, cat.SEGMENTS, cat.AREAS)
    assert [rows_in(catalog, t) for t in tables] == [0] * len(tables)


def test_drop_pool_keeps_its_events(catalog: Catalog) -> None:
    pool = pool_with_devices()
    catalog.sync_pool(pool, {})
    catalog.add_event(pool.uuid, "pool-imported", "info", pool.name, "imported")
    catalog.drop_pool(pool.uuid)
    assert [e.kind for e in catalog.events(pool.uuid)] == ["pool-imported"]


def test_drop_unknown_pool_is_harmless(catalog: Catalog) -> None:
    catalog.drop_pool(new_uuid())
    assert catalog.pools() == []


# --------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------


def test_pool_generation_of_unknown_pool_is_none(catalog: Catalog) -> None:
    assert catalog.pool_generation(new_uuid()) is None


def test_find_pool_by_name(catalog: Catalog) -> None:
    pool = pool_with_devices("tank")
    pool.active_host = "h1"
    catalog.sync_pool(pool, {})
    found = catalog.find_pool("tank")
    assert found == cat.PoolRow(pool.uuid, "tank", 0, EXTENT, pool.created, "h1", ())


def test_find_pool_by_uuid(catalog: Catalog) -> None:
    pool = pool_with_devices("tank")
    catalog.sync_pool(pool, {})
    found = catalog.find_pool(pool.uuid)
    assert found is not None and found.name == "tank"


def test_find_pool_unknown_is_none(catalog: Catalog) -> None:
    catalog.sync_pool(pool_with_devices("tank"), {})
    assert catalog.find_pool("other") is None


def test_pools_sorted_by_name(catalog: Catalog) -> None:
    for name in ("c", "a", "b"):
        catalog.sync_pool(pool_with_devices(name), {})
    assert [p.name for p in catalog.pools()] == ["a", "b", "c"]


def test_device_paths_leave_out_devices_not_found(catalog: Catalog) -> None:
    pool = pool_with_devices()
    found: dict[str, str] = {pool.devices[0].uuid: "/dev/sdx", pool.devices[2].uuid: "/dev/sdy"}
    catalog.sync_pool(pool, found)
    assert catalog.device_paths(pool.uuid) == found


def test_volume_rows_carry_fields_and_hosts(catalog: Catalog) -> None:
    pool = pool_with_devices()
    vol = add_volume(pool, "v", 4, stripes=2, mirrors=2, hosts=["h2", "h1"])
    catalog.sync_pool(checked(pool), {})
    assert catalog.volumes(pool.uuid) == [
        cat.VolumeRow(
            vol.uuid,
            pool.uuid,
            "v",
            vol.size,
            2,
            65536,
            2,
            1000,
            4294967294,
            0o640,
            "primary",
            vol.created,
            ("h2", "h1"),
        )
    ]


def test_load_unknown_pool_raises(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="not in the catalog"):
        catalog.load_pool(new_uuid())


def test_load_refuses_inconsistent_areas(catalog: Catalog) -> None:
    pool = pool_with_devices()
    add_volume(pool, "v", 4, stripes=2)
    catalog.sync_pool(checked(pool), {})
    with catalog.engine.begin() as conn:
        conn.execute(delete(cat.AREAS).where(cat.AREAS.c.stripe == 0))
    with pytest.raises(CatalogError, match="area 0/1 of segment 0 .* out of sequence"):
        catalog.load_pool(pool.uuid)


# --------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------


def test_event_ids_increase(catalog: Catalog) -> None:
    ids = [catalog.add_event(None, "k", "info", "", f"m{i}") for i in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_events_since_id_and_limit(catalog: Catalog) -> None:
    ids = [catalog.add_event(None, "k", "info", "", f"m{i}") for i in range(5)]
    assert [e.message for e in catalog.events(since_id=ids[1], limit=2)] == ["m2", "m3"]


def test_events_filtered_by_pool(catalog: Catalog) -> None:
    p1, p2 = new_uuid(), new_uuid()
    catalog.add_event(p1, "device-failed", "error", "tank/d0", "d0 failed")
    catalog.add_event(p2, "device-failed", "error", "dozer/d0", "d0 failed")
    catalog.add_event(None, "node-started", "info", "", "started")
    events = catalog.events(p1)
    assert [(e.pool_uuid, e.object) for e in events] == [(p1, "tank/d0")]


def test_event_row_fields(catalog: Catalog) -> None:
    before = time.time()
    eid = catalog.add_event(None, "node-started", "info", "node", "started")
    (event,) = catalog.events()
    assert (event.id, event.kind, event.severity, event.object, event.message) == (
        eid,
        "node-started",
        "info",
        "node",
        "started",
    )
    assert before <= event.time <= time.time()


# --------------------------------------------------------------------------
# Opening
# --------------------------------------------------------------------------


def test_file_catalog_persists_across_reopen(url: str) -> None:
    pool = pool_with_devices()
    add_volume(pool, "v", 6, stripes=2, mirrors=2, hosts=["h1"])
    with Catalog(url) as c:
        c.sync_pool(checked(pool), paths_of(pool))
    with Catalog(url) as c:
        assert c.load_pool(pool.uuid).to_dict() == pool.to_dict()


def test_file_catalog_uses_wal_and_foreign_keys(catalog: Catalog) -> None:
    with catalog.engine.connect() as conn:
        journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        fks = conn.exec_driver_sql("PRAGMA foreign_keys").scalar()
    assert (journal, fks) == ("wal", 1)


def test_read_transaction_sees_one_snapshot(catalog: Catalog, url: str) -> None:
    pool = pool_with_devices()
    catalog.sync_pool(pool, {})
    query = select(cat.POOLS.c.generation)
    with catalog.engine.begin() as conn, Catalog(url) as other:
        before = conn.execute(query).scalar()
        pool.generation = 1
        other.sync_pool(pool, {})
        assert conn.execute(query).scalar() == before == 0


def test_new_catalog_records_schema_version(catalog: Catalog) -> None:
    with catalog.engine.connect() as conn:
        query = select(cat.META.c.value).where(cat.META.c.key == "schema_version")
        assert conn.execute(query).scalar() == str(cat.SCHEMA_VERSION)


def test_newer_schema_version_refused(tmp_path: Path, url: str) -> None:
    Catalog(url).close()
    with sqlite3.connect(tmp_path / "catalog.sqlite") as db:
        db.execute("UPDATE catalog_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(CatalogError) as info:
        Catalog(url)
    message = str(info.value)
    assert "schema version 99" in message and "\n" not in message


def test_version_1_catalog_is_upgraded_in_place(tmp_path: Path, url: str) -> None:
    pool = _incremental_pool()
    with Catalog(url) as c:
        c.sync_pool(pool, {})
    with sqlite3.connect(tmp_path / "catalog.sqlite") as db:
        db.execute("ALTER TABLE devices DROP COLUMN extra")
        db.execute("ALTER TABLE volumes DROP COLUMN extra")
        db.execute("UPDATE catalog_meta SET value = '1' WHERE key = 'schema_version'")
    with Catalog(url) as c:
        assert c.load_pool(pool.uuid).to_dict() == pool.to_dict()
        newer = pool.copy()
        newer.generation += 1
        c.sync_pool(newer, {}, previous=pool)
        assert c.load_pool(pool.uuid).to_dict() == newer.to_dict()
        with c.engine.connect() as conn:
            query = select(cat.META.c.value).where(cat.META.c.key == "schema_version")
            assert conn.execute(query).scalar() == str(cat.SCHEMA_VERSION)


def test_unopenable_url_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot open catalog") as info:
        Catalog(f"sqlite:///{tmp_path / 'missing-dir' / 'catalog.sqlite'}")
    assert "\n" not in str(info.value)


def test_every_column_is_documented() -> None:
    undocumented = [
        f"{table.name}.{column.name}"
        for table in cat.Base.metadata.sorted_tables
        for column in table.columns
        if not column.comment
    ]
    assert undocumented == []


# --------------------------------------------------------------------------
# Scale
# --------------------------------------------------------------------------


def big_pool(volumes: int) -> Pool:
    """A pool of *volumes* volumes: mostly linear, every 5th striped, every 7th mirrored."""
    pool = pool_with_devices("big", devices=8, extents=4 * volumes)
    alloc = HandAllocator(pool)
    for i in range(volumes):
        stripes = 2 if i % 5 == 0 else 1
        mirrors = 2 if i % 7 == 0 else 1
        volume = Volume(
            uuid=VolumeUUID(new_uuid()),
            name=f"vol{i:05d}",
            size=2 * EXTENT,
            stripes=stripes,
            mirrors=mirrors,
            hosts=["h1"] if i % 2 else [],
            created=1700000000.0 + i,
        )
        volume.segments.append(alloc.segment(0, 2, stripes, mirrors, 65536))
        pool.volumes.append(volume)
    return pool


def test_ten_thousand_volumes_sync_and_load(catalog: Catalog) -> None:
    """Timings are logged (see them with --log-cli-level=INFO), not asserted."""
    pool = checked(big_pool(10_000))
    started = time.perf_counter()
    catalog.sync_pool(pool, paths_of(pool))
    synced = time.perf_counter()
    loaded = catalog.load_pool(pool.uuid)
    done = time.perf_counter()
    log.info("10,000 volumes: sync %.3f s, load %.3f s", synced - started, done - synced)
    assert loaded.to_dict() == pool.to_dict()


def test_ten_thousand_volumes_resync(catalog: Catalog) -> None:
    pool = checked(big_pool(10_000))
    catalog.sync_pool(pool, paths_of(pool))
    pool.generation += 1
    started = time.perf_counter()
    catalog.sync_pool(pool, paths_of(pool))
    log.info("10,000 volumes: re-sync %.3f s", time.perf_counter() - started)
    assert rows_in(catalog, cat.VOLUMES) == 10_000


def test_sqlite_in_memory_url_works() -> None:
    with Catalog("sqlite://") as c:
        c.sync_pool(pool_with_devices(), {})
        assert len(c.pools()) == 1


def test_raw_sql_sees_group_id_column(catalog: Catalog) -> None:
    pool = pool_with_devices()
    add_volume(pool, "v", 2)
    catalog.sync_pool(checked(pool), {})
    with catalog.engine.connect() as conn:
        assert conn.execute(text("SELECT group_id FROM volumes")).scalar() == 4294967294


def test_incremental_sync_equals_full_sync(tmp_path):
    """sync_pool(previous=...) rewrites only what changed, and ends where a full sync does."""
    import dataclasses as dc

    cat = Catalog(f"sqlite:///{tmp_path / 'inc.sqlite'}")
    pool = _incremental_pool()
    cat.sync_pool(pool, {})
    steps = []
    new = pool.copy()
    new.generation += 1
    new.volumes.pop(1)                                         # remove from the middle
    steps.append(new)
    new = new.copy()
    new.generation += 1
    new.volumes[0] = dc.replace(new.volumes[0], name="renamed", size=new.volumes[0].size)
    steps.append(new)
    new = new.copy()
    new.generation += 1
    extra = dc.replace(new.volumes[-1], uuid="11111111-2222-3333-4444-555555555555",
                       name="appended")
    new.volumes.append(extra)                                  # append at the end
    steps.append(new)
    prev = pool
    for step in steps:
        cat.sync_pool(step, {}, previous=prev)
        assert cat.load_pool(step.uuid).to_dict() == step.to_dict()
        prev = step


def test_incremental_sync_falls_back_when_catalog_is_elsewhere(tmp_path):
    cat = Catalog(f"sqlite:///{tmp_path / 'inc.sqlite'}")
    pool = _incremental_pool()
    cat.sync_pool(pool, {})
    wrong = pool.copy()
    wrong.generation = 99                  # not what the catalog holds
    new = pool.copy()
    new.generation = 100
    new.volumes.reverse()                  # an order a partial update could not keep
    cat.sync_pool(new, {}, previous=wrong)
    assert cat.load_pool(new.uuid).to_dict() == new.to_dict()


def _incremental_pool():
    from metadata.model import Area, Device, Pool, Segment, Volume, new_uuid

    devs = [Device(uuid=new_uuid(), name=f"d{i}", size=1 << 30, data_start=1 << 20,
                   extent_count=100) for i in range(2)]
    pool = Pool(uuid=new_uuid(), name="inc", extent_size=1 << 20, generation=1, devices=devs)
    for i in range(4):
        pool.volumes.append(Volume(uuid=new_uuid(), name=f"v{i}", size=1 << 20, segments=[
            Segment(0, 1, 1, 65536, [[Area(devs[i % 2].uuid, i)]])]))
    return pool
