"""DuckDBWarehouse: DDL, the atomic commit, re-attribution, checkpoints, state reloads,
read-only and multi-process behaviour, concurrent reads."""

from __future__ import annotations

import subprocess
import sys
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
    count,
    good_then_next,
    output,
    stats,
)

from adpulse.contracts import Stream
from adpulse.storage.warehouse import schema
from adpulse.storage.warehouse.base import PartitionWatermark
from adpulse.storage.warehouse.duckdb import (
    UPSERT_VALUES_MAX_ROWS,
    DuckDBWarehouse,
    WarehouseLockedError,
    WarehouseUnavailableError,
)
from adpulse.storage.warehouse.sql import SchemaMismatchError


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[DuckDBWarehouse]:
    with DuckDBWarehouse(tmp_path / "w.duckdb") as wh:
        wh.create_schema()
        yield wh


def test_create_schema_is_idempotent_and_maps_types(warehouse: DuckDBWarehouse) -> None:
    warehouse.create_schema()
    types = dict(
        warehouse.query(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_name = ? ORDER BY ordinal_position",
            ["fact_conversions"],
        ).rows()
    )
    assert types == {
        "event_id": "VARCHAR",
        "event_time": "TIMESTAMP",
        "ad_id": "BIGINT",
        "user_id": "VARCHAR",
        "product_id": "VARCHAR",
        "revenue": "DECIMAL(18,4)",
        "click_event_id": "VARCHAR",
        "click_time": "TIMESTAMP",
        "latency_seconds": "DOUBLE",
        "platform": "VARCHAR",
        "location": "VARCHAR",
        "campaign": "VARCHAR",
        "product": "VARCHAR",
        "gender": "VARCHAR",
        "age": "INTEGER",
        "age_band": "VARCHAR",
        "interests": "VARCHAR",
        "is_late": "BOOLEAN",
        "partition": "INTEGER",
        "processed_at": "TIMESTAMP",
    }
    tables = set(warehouse.query("SELECT table_name FROM information_schema.tables")["table_name"])
    # fact_impressions is a view over fact_impressions_rows and the Parquet segments
    # listed in fact_segments (see storage/warehouse/duckdb.py)
    assert tables == {
        *schema.ALL_TABLES,
        "meta",
        "api_keys",
        "fact_impressions_rows",
        "fact_segments",
    }
    blob = warehouse.query(
        "SELECT data_type FROM information_schema.columns"
        " WHERE table_name = 'dead_letters' AND column_name = 'payload'"
    )
    assert blob.item() == "BLOB"
    keys = warehouse.query(
        "SELECT table_name, constraint_column_names FROM duckdb_constraints()"
        " WHERE constraint_type = 'PRIMARY KEY' ORDER BY table_name"
    ).rows()
    assert keys == [
        ("api_keys", ["key_id"]),
        ("checkpoints", ["stream", "partition"]),
        ("meta", ["key"]),
        ("watermarks", ["stream", "partition"]),
    ]


# --- commit --------------------------------------------------------------------------------
def test_commit_writes_every_frame_and_round_trips_types(warehouse: DuckDBWarehouse) -> None:
    rollup = schema.conform(
        pl.DataFrame(
            {
                "minute": [T0],
                "ad_id": [1001],
                "clicks": [2],
                "revenue": ["-12.3456"],
                "latency_sum_seconds": [1.5],
            },
            schema_overrides={"revenue": pl.String},
        ),
        schema.ROLLUP_MINUTE,
    )
    dead = schema.conform(
        pl.DataFrame(
            {
                "stream": ["clicks"],
                "partition": [3],
                "source_offset": ["17"],
                "record_index": [4],
                "reason": ["invalid_json"],
                "detail": ["line 1"],
                "payload": [b"\xff{"],
                "received_at": [T0],
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
    assert warehouse.query("SELECT * FROM rollup_minute").equals(rollup)
    assert warehouse.query("SELECT * FROM dead_letters").equals(dead)
    assert warehouse.query("SELECT revenue FROM rollup_minute").item() == Decimal("-12.3456")
    assert warehouse.next_batch_id() == 2


def test_next_batch_id_follows_ingest_stats(warehouse: DuckDBWarehouse) -> None:
    assert warehouse.next_batch_id() == 1
    warehouse.commit(output(7, stats=stats(7, 1)))
    assert warehouse.next_batch_id() == 8


def test_checkpoints_and_watermarks_upsert_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    with DuckDBWarehouse(path) as wh:
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
    with DuckDBWarehouse(path) as wh:  # reopened: what a restarted processor sees
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


def test_upserts_of_many_partitions_are_staged_and_update_in_place(tmp_path: Path) -> None:
    # More rows than UPSERT_VALUES_MAX_ROWS take the staged statement: same result.
    many = UPSERT_VALUES_MAX_ROWS + 6
    path = tmp_path / "w.duckdb"
    with DuckDBWarehouse(path) as wh:
        wh.create_schema()
        first = output(1)
        first.offsets = {(Stream.CLICKS, p): f"{p}" for p in range(many)}
        first.watermarks = {
            (Stream.IMPRESSIONS, p): PartitionWatermark(at(p), at(p + 1)) for p in range(many)
        }
        wh.commit(first)
        second = output(2)  # the staged path updates, the values path inserts one more
        second.offsets = {(Stream.CLICKS, p): f"{p}-b" for p in range(many)}
        second.watermarks = {(Stream.CONVERSIONS, 0): PartitionWatermark(at(7), at(8))}
        wh.commit(second)
        third = output(3)  # and the values path updates
        third.offsets = {(Stream.CLICKS, 5): "5-c"}
        third.watermarks = {
            (Stream.IMPRESSIONS, p): PartitionWatermark(at(2 * p), at(2 * p + 1))
            for p in range(many)
        }
        wh.commit(third)
    with DuckDBWarehouse(path) as wh:
        assert wh.load_offsets() == {
            (Stream.CLICKS, p): "5-c" if p == 5 else f"{p}-b" for p in range(many)
        }
        assert wh.load_watermarks() == {
            **{
                (Stream.IMPRESSIONS, p): PartitionWatermark(at(2 * p), at(2 * p + 1))
                for p in range(many)
            },
            (Stream.CONVERSIONS, 0): PartitionWatermark(at(7), at(8)),
        }
        assert count(wh, "checkpoints") == many
        assert count(wh, "watermarks") == many + 1


def test_a_frame_with_wrong_columns_names_them(warehouse: DuckDBWarehouse) -> None:
    bad = clicks(("k1", 0, 0)).drop("campaign").with_columns(pl.lit(1).alias("extra"))
    with pytest.raises(
        SchemaMismatchError, match=r"missing \['campaign'\], unexpected \['extra'\]"
    ):
        warehouse.commit(output(1, clicks=bad))
    reordered = clicks(("k1", 0, 0)).select(["ad_id", *schema.FACT_CLICKS.keys() - {"ad_id"}])
    with pytest.raises(SchemaMismatchError, match="column order"):
        warehouse.commit(output(1, clicks=reordered))
    assert count(warehouse, "fact_clicks") == 0


def test_a_commit_failing_midway_rolls_back_everything(warehouse: DuckDBWarehouse) -> None:
    nxt = good_then_next(warehouse)
    before = committed_state(warehouse)
    # Facts, re-attribution, rollups and stats are written before the offsets fail:
    # a partition number beyond INTEGER cannot be stored.
    nxt.offsets[(Stream.CLICKS, 2**40)] = "9"
    with pytest.raises(Exception, match="Int32|INT32|out of range|overflow"):
        warehouse.commit(nxt)
    assert committed_state(warehouse) == before
    # and the connection is usable again: the same batch commits once fixed
    del nxt.offsets[(Stream.CLICKS, 2**40)]
    warehouse.commit(nxt)
    assert count(warehouse, "fact_clicks") == 3
    assert warehouse.load_offsets() == {(Stream.CLICKS, 0): "3"}
    assert (
        warehouse.query("SELECT click_event_id FROM fact_conversions WHERE event_id = 'v1'").item()
        == "k9"
    )


def test_a_database_error_midway_rolls_back(
    warehouse: DuckDBWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    nxt = good_then_next(warehouse)
    before = committed_state(warehouse)
    real_execute = warehouse._execute

    def failing(sql: str, params: Any = ()) -> None:
        if "watermarks" in sql:
            real_execute("SELECT * FROM no_such_table")  # a genuine DuckDB error
        real_execute(sql, params)

    monkeypatch.setattr(warehouse, "_execute", failing)
    with pytest.raises(Exception, match="no_such_table"):
        warehouse.commit(nxt)
    monkeypatch.undo()
    assert committed_state(warehouse) == before
    assert not warehouse._staged  # no view left holding a frame
    warehouse.commit(nxt)
    assert count(warehouse, "fact_clicks") == 3


# --- state rebuild ------------------------------------------------------------------------------
def test_load_event_ids_and_facts_by_partition_and_time(warehouse: DuckDBWarehouse) -> None:
    warehouse.commit(
        output(1, clicks=clicks(("a", 0, 0), ("b", 10, 1), ("c", 20, 2), ("d", 30, 1)))
    )
    ids = warehouse.load_event_ids("fact_clicks", [1, 2], at(10))
    assert ids.schema == pl.Schema(
        {"event_id": pl.String(), "event_time": pl.Datetime("us"), "partition": pl.Int32()}
    )
    assert sorted(ids.rows()) == [("b", at(10), 1), ("c", at(20), 2), ("d", at(30), 1)]
    assert warehouse.load_event_ids("fact_clicks", [0], at(1)).is_empty()
    assert warehouse.load_event_ids("fact_clicks", [], at(0)).columns == [
        "event_id",
        "event_time",
        "partition",
    ]
    facts = warehouse.load_facts("fact_clicks", [1], at(0), ["event_id", "user_id", "ad_id"])
    assert sorted(facts.rows()) == [("b", "U1234", 1001), ("d", "U1234", 1001)]
    empty = warehouse.load_facts("fact_conversions", [], at(0), ["event_id", "latency_seconds"])
    assert empty.schema == pl.Schema({"event_id": pl.String(), "latency_seconds": pl.Float64()})


def test_load_facts_refuses_unknown_names(warehouse: DuckDBWarehouse) -> None:
    with pytest.raises(ValueError, match="unknown fact table 'rollup_minute'"):
        warehouse.load_facts("rollup_minute", [0], T0, ["ad_id"])
    with pytest.raises(ValueError, match=r"no columns \['x; DROP TABLE fact_clicks'\]"):
        warehouse.load_facts("fact_clicks", [0], T0, ["x; DROP TABLE fact_clicks"])


# --- reads, modes, processes ---------------------------------------------------------------------


def test_read_only_reads_and_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    with DuckDBWarehouse(path) as wh:
        wh.create_schema()
        wh.commit(output(1, clicks=clicks(("a", 0, 0))))
    with DuckDBWarehouse(path, read_only=True) as ro:
        ro.create_schema()  # a no-op, not an error
        assert count(ro, "fact_clicks") == 1
        with pytest.raises(WarehouseUnavailableError, match="read-only"):
            ro.commit(output(2, clicks=clicks(("b", 0, 0))))
    with pytest.raises(WarehouseUnavailableError, match="no warehouse at .*missing.duckdb"):
        DuckDBWarehouse(tmp_path / "missing.duckdb", read_only=True)


_OPEN_IN_CHILD = """
import sys
from pathlib import Path
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse, WarehouseLockedError
try:
    DuckDBWarehouse(Path(sys.argv[1]), read_only=sys.argv[2] == "ro")
except WarehouseLockedError as exc:
    print(exc)
    sys.exit(3)
"""


@pytest.mark.parametrize("mode", ["rw", "ro"])
def test_a_second_process_gets_a_clear_error(warehouse: DuckDBWarehouse, mode: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _OPEN_IN_CHILD, str(warehouse.path), mode],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 3, child.stderr
    assert f"warehouse {warehouse.path} is in use by process" in child.stdout
    assert "stop the other adpulse process" in child.stdout
    assert "query through it" in child.stdout


def test_same_process_other_mode_is_a_clear_error(warehouse: DuckDBWarehouse) -> None:
    with pytest.raises(WarehouseUnavailableError, match="already open in this process"):
        DuckDBWarehouse(warehouse.path, read_only=True)


def test_locked_error_is_unavailable_error() -> None:
    assert issubclass(WarehouseLockedError, WarehouseUnavailableError)


def test_reads_from_another_thread_while_committing(warehouse: DuckDBWarehouse) -> None:
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def dashboard() -> None:
        try:
            while not stop.is_set():
                seen.append(count(warehouse, "fact_clicks"))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    reader = threading.Thread(target=dashboard)
    reader.start()
    try:
        for batch in range(1, 31):
            ids = [(f"e{batch}-{i}", float(i), 0) for i in range(100)]
            warehouse.commit(output(batch, clicks=clicks(*ids), stats=stats(batch, 100)))
    finally:
        stop.set()
        reader.join(timeout=60)
    assert not errors
    assert seen == sorted(seen)  # committed batches appear whole, in order
    assert all(n % 100 == 0 for n in seen)
    assert count(warehouse, "fact_clicks") == 3000


def test_close_is_idempotent(tmp_path: Path) -> None:
    wh = DuckDBWarehouse(tmp_path / "w.duckdb")
    wh.close()
    wh.close()
    with DuckDBWarehouse(tmp_path / "w.duckdb", read_only=True) as again:
        assert again.read_only
