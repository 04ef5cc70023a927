"""PostgresWarehouse against the real server: DDL, the atomic commit (COPY, MERGE, temp
staging), re-attribution, checkpoints, state reloads, read-only queries, concurrent
reads, and clear connection errors. Mirrors test_warehouse_duckdb.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from builders import (
    T0,
    at,
    clicks,
    committed_state,
    conversions,
    good_then_next,
    output,
    stats,
)
from pgtest import PG_URL, drop_schema, new_schema, postgres_warehouse, require_postgres
from pydantic import SecretStr

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.storage.warehouse import open_warehouse, schema
from adpulse.storage.warehouse.base import PartitionWatermark, WarehouseUnavailableError
from adpulse.storage.warehouse.postgres import PostgresWarehouse, redact_url, to_pyformat


@pytest.fixture
def warehouse() -> Iterator[PostgresWarehouse]:
    with postgres_warehouse() as wh:
        yield wh


def count(wh: PostgresWarehouse, table: str) -> int:
    return int(wh.query(f"SELECT COUNT(*) FROM {table}").item())


# --- pure helpers ----------------------------------------------------------------------------
def test_placeholders_become_pyformat_outside_quotes() -> None:
    assert to_pyformat("SELECT ? WHERE a = '?' AND \"?\" LIKE '%x' AND b = ?") == (
        "SELECT %s WHERE a = '?' AND \"?\" LIKE '%%x' AND b = %s"
    )


def test_urls_are_redacted() -> None:
    assert redact_url("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert (
        redact_url("postgresql://db/x?password=s3cret&a=1") == "postgresql://db/x?password=***&a=1"
    )
    assert redact_url("postgresql://bob@db/x") == "postgresql://bob@db/x"


# --- schema --------------------------------------------------------------------------------
def test_create_schema_is_idempotent_and_maps_types(warehouse: PostgresWarehouse) -> None:
    warehouse.create_schema()
    types = dict(
        warehouse.query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns"
            " WHERE table_name = ? AND table_schema = current_schema() ORDER BY ordinal_position",
            ["fact_conversions"],
        ).rows()
    )
    assert types["revenue"] == "numeric"
    assert types["event_time"] == "timestamp without time zone"
    assert types["latency_seconds"] == "double precision"
    assert types["partition"] == "integer"
    assert types["ad_id"] == "bigint"
    assert list(types) == list(schema.FACT_CONVERSIONS)
    tables = set(
        warehouse.query(
            "SELECT table_name::text AS t FROM information_schema.tables"
            " WHERE table_schema = current_schema()"
        )["t"]
    )
    assert tables == {*schema.ALL_TABLES, "meta", "api_keys", "partition_leases", "workers"}
    keys = warehouse.query(
        "SELECT tc.table_name::text, kcu.column_name::text FROM information_schema.table_constraints tc"
        " JOIN information_schema.key_column_usage kcu USING (constraint_schema, constraint_name)"
        " WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = current_schema()"
        " ORDER BY 1, kcu.ordinal_position"
    ).rows()
    assert keys == [
        ("api_keys", "key_id"),
        ("checkpoints", "stream"),
        ("checkpoints", "partition"),
        ("meta", "key"),
        ("partition_leases", "partition"),
        ("watermarks", "stream"),
        ("watermarks", "partition"),
        ("workers", "worker_id"),
    ]


# --- commit --------------------------------------------------------------------------------
def test_commit_writes_every_frame_and_round_trips_types(warehouse: PostgresWarehouse) -> None:
    rollup = schema.conform(
        pl.DataFrame(
            {
                "minute": [T0],
                "ad_id": [1001],
                "clicks": [2],
                "revenue": ["-12.3456"],
                "latency_sum_seconds": [1 / 3],
            },
            schema_overrides={"revenue": pl.String},
        ),
        schema.ROLLUP_MINUTE,
    )
    dead = schema.conform(
        pl.DataFrame(
            {
                "stream": ["clicks", "clicks"],
                "partition": [3, 4],
                "source_offset": ["17", ""],
                "record_index": [4, 5],
                "reason": ["invalid_json", "x"],
                "detail": ['line 1, "quoted",\nsecond line \\N', None],
                "payload": [b"\xff{\x00,\n", b""],
                "received_at": [T0, at(0.000001)],
            }
        ),
        schema.DEAD_LETTERS,
    )
    batch = output(
        1,
        clicks=clicks(("k1", 0, 0), ("k2", 30, 1)),
        conversions=conversions(("v1", 60, "k1", 60.0, "Web"), ("v2", 90, None, None, None)),
        rollups=rollup,
        dead_letters=dead,
        stats=stats(1, 5),
    )
    warehouse.commit(batch)
    assert count(warehouse, "fact_clicks") == 2
    assert count(warehouse, "fact_impressions") == 0
    stored = warehouse.query("SELECT * FROM fact_conversions ORDER BY event_id")
    assert stored.schema == pl.Schema(schema.FACT_CONVERSIONS)
    assert stored.equals(batch.conversions)
    assert warehouse.query("SELECT * FROM fact_clicks ORDER BY event_id").equals(batch.clicks)
    assert warehouse.query("SELECT * FROM rollup_minute").equals(rollup)
    assert warehouse.query("SELECT * FROM dead_letters ORDER BY record_index").equals(dead)
    assert warehouse.query("SELECT revenue FROM rollup_minute").item() == Decimal("-12.3456")
    assert warehouse.next_batch_id() == 2


def test_checkpoints_and_watermarks_upsert_and_reload() -> None:
    require_postgres()
    name = new_schema()
    try:
        with PostgresWarehouse(PG_URL, schema=name) as wh:
            wh.create_schema()
            assert wh.load_offsets() == {}
            assert wh.load_watermarks() == {}
            first = output(1)
            first.offsets = {(Stream.CLICKS, 0): "10", (Stream.IMPRESSIONS, 0): "4"}
            first.watermarks = {(Stream.CLICKS, 0): PartitionWatermark(at(0), at(5))}
            wh.commit(first)
            second = output(2)
            second.offsets = {(Stream.CLICKS, 0): "25", (Stream.CLICKS, 1): "3"}
            second.watermarks = {
                (Stream.CLICKS, 0): PartitionWatermark(at(10), at(20)),
                (Stream.CONVERSIONS, 2): PartitionWatermark(at(1), at(2)),
            }
            wh.commit(second)
        with PostgresWarehouse(PG_URL, schema=name) as wh:  # what a restarted processor sees
            assert wh.load_offsets() == {
                (Stream.CLICKS, 0): "25",
                (Stream.CLICKS, 1): "3",
                (Stream.IMPRESSIONS, 0): "4",
            }
            assert wh.load_watermarks() == {
                (Stream.CLICKS, 0): PartitionWatermark(at(10), at(20)),
                (Stream.CONVERSIONS, 2): PartitionWatermark(at(1), at(2)),
            }
            assert count(wh, "checkpoints") == 3
            assert count(wh, "watermarks") == 2
    finally:
        drop_schema(name)


def test_a_commit_failing_midway_rolls_back_everything(warehouse: PostgresWarehouse) -> None:
    nxt = good_then_next(warehouse)  # type: ignore[arg-type]
    before = committed_state(warehouse)  # type: ignore[arg-type]
    nxt.offsets[(Stream.CLICKS, 2**40)] = (
        "9"  # beyond INTEGER: the offsets step (inside the transaction) fails
    )
    with pytest.raises(Exception, match="Int32|out of range|overflows"):
        warehouse.commit(nxt)
    assert committed_state(warehouse) == before  # type: ignore[arg-type]
    del nxt.offsets[(Stream.CLICKS, 2**40)]
    warehouse.commit(nxt)  # the connection is usable again, no staging table left over
    assert count(warehouse, "fact_clicks") == 3
    assert warehouse.load_offsets() == {(Stream.CLICKS, 0): "3"}
    assert (
        warehouse.query("SELECT click_event_id FROM fact_conversions WHERE event_id = 'v1'").item()
        == "k9"
    )


def test_a_database_error_midway_rolls_back(
    warehouse: PostgresWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    nxt = good_then_next(warehouse)  # type: ignore[arg-type]
    before = committed_state(warehouse)  # type: ignore[arg-type]
    real_execute = warehouse._execute

    def failing(sql: str, params: Any = ()) -> None:
        if "watermarks" in sql:
            real_execute("SELECT * FROM no_such_table")
        real_execute(sql, params)

    monkeypatch.setattr(warehouse, "_execute", failing)
    with pytest.raises(Exception, match="no_such_table"):
        warehouse.commit(nxt)
    monkeypatch.undo()
    assert committed_state(warehouse) == before  # type: ignore[arg-type]
    warehouse.commit(nxt)
    assert count(warehouse, "fact_clicks") == 3


# --- state rebuild ------------------------------------------------------------------------------
def test_load_event_ids_and_facts_by_partition_and_time(warehouse: PostgresWarehouse) -> None:
    warehouse.commit(
        output(1, clicks=clicks(("a", 0, 0), ("b", 10, 1), ("c", 20, 2), ("d", 30, 1)))
    )
    ids = warehouse.load_event_ids("fact_clicks", [1, 2], at(10))
    assert ids.schema == pl.Schema(
        {"event_id": pl.String(), "event_time": pl.Datetime("us"), "partition": pl.Int32()}
    )
    assert sorted(ids.rows()) == [("b", at(10), 1), ("c", at(20), 2), ("d", at(30), 1)]
    empty_ids = warehouse.load_event_ids("fact_clicks", [0], at(1))
    assert empty_ids.is_empty() and empty_ids.schema == ids.schema
    facts = warehouse.load_facts("fact_clicks", [1], at(0), ["event_id", "user_id", "ad_id"])
    assert sorted(facts.rows()) == [("b", "U1234", 1001), ("d", "U1234", 1001)]
    assert facts.schema["ad_id"] == pl.Int64()
    with pytest.raises(ValueError, match="unknown fact table 'rollup_minute'"):
        warehouse.load_facts("rollup_minute", [0], T0, ["ad_id"])


# --- reads -------------------------------------------------------------------------------------


def test_reads_from_another_thread_while_committing(warehouse: PostgresWarehouse) -> None:
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def dashboard() -> None:
        try:
            while not stop.is_set():
                seen.append(count(warehouse, "fact_clicks"))
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=dashboard) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for batch in range(1, 21):
            ids = [(f"e{batch}-{i}", float(i), 0) for i in range(100)]
            warehouse.commit(output(batch, clicks=clicks(*ids), stats=stats(batch, 100)))
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=60)
    assert not errors
    assert all(n % 100 == 0 for n in seen)  # committed batches appear whole
    assert count(warehouse, "fact_clicks") == 2000


def test_close_is_idempotent() -> None:
    require_postgres()
    wh = PostgresWarehouse(PG_URL)
    wh.close()
    wh.close()
    with pytest.raises(WarehouseUnavailableError, match="closed"):
        wh.query("SELECT 1")


# --- configuration and errors --------------------------------------------------------------------
def test_unreachable_server_is_one_clear_error_without_the_password() -> None:
    with pytest.raises(WarehouseUnavailableError) as info:
        PostgresWarehouse("postgresql://bob:hunter2@127.0.0.1:1/test")
    message = str(info.value)
    assert "warehouse_url" in message and "ADPULSE_WAREHOUSE_URL" in message
    assert "hunter2" not in message and "bob:***@" in message
    with pytest.raises(WarehouseUnavailableError, match="warehouse_url"):
        PostgresWarehouse("postgresql://[bad", password=SecretStr("hunter2"))


def test_open_warehouse_accepts_postgres_urls(tmp_path: Path) -> None:
    require_postgres()
    name = new_schema()
    url = PG_URL.replace("postgresql://", "postgres://") + f"?options=-csearch_path%3D{name}"
    try:
        with PostgresWarehouse(PG_URL, schema=name) as wh:
            wh.create_schema()  # the schema must exist: the URL only selects it
        settings = Settings.model_validate(
            {"home": tmp_path, "warehouse_url": url, "warehouse_password": "unused-by-trust"}
        )
        opened = open_warehouse(settings)
        try:
            assert isinstance(opened, PostgresWarehouse) and opened.dialect == "postgres"
            assert opened.next_batch_id() == 1
            assert opened.query("SELECT current_schema() AS s").item() == name
        finally:
            opened.close()
    finally:
        drop_schema(name)
