"""The warehouse contract, run against every backend (DuckDB file, PostgreSQL server, the
Redshift backend on PostgreSQL with its staging on a local S3, see redshifttest.py):
what must hold whatever the database. Backend-specific behaviour (type mapping, locking,
connection errors) is tested in test_warehouse_duckdb.py and test_warehouse_postgres.py."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from builders import (
    at,
    clicks,
    committed_state,
    conversions,
    count,
    fresh_warehouse,
    good_then_next,
    output,
    stats,
)

from adpulse.contracts import Stream
from adpulse.storage.warehouse import schema
from adpulse.storage.warehouse.base import Warehouse
from adpulse.storage.warehouse.sql import SchemaMismatchError


@pytest.fixture(params=["duckdb", "postgres", "redshift"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    with fresh_warehouse(request.param, tmp_path / "w.duckdb") as wh:
        yield wh


def test_empty_frames_are_skipped(warehouse: Warehouse) -> None:
    # Even frames without columns: nothing to write means nothing to check.
    batch = output(1, impressions=pl.DataFrame(), stats=stats(1, 0))
    batch.offsets = {(Stream.CLICKS, 0): "0"}
    warehouse.commit(batch)
    assert count(warehouse, "ingest_stats") == 1
    assert warehouse.load_offsets() == {(Stream.CLICKS, 0): "0"}


def test_reattribution_updates_committed_conversions(warehouse: Warehouse) -> None:
    warehouse.commit(
        output(
            1,
            conversions=conversions(
                ("v1", 600, "k-old", 500.0, "Mobile"),
                ("v2", 600, None, None, None),
                ("v3", 700, "k-3", 10.0, "Web"),
            ),
        )
    )
    moves = schema.conform(
        pl.DataFrame(
            {
                "event_id": ["v1", "v2", "missing"],
                "click_event_id": ["k-new", "k-2", "k-x"],
                "click_time": [at(500), at(590), at(0)],
                "latency_seconds": [100.0, 10.0, 1.0],
                "platform": ["Web", "Tablet", "Web"],
                "location": ["Boston", "Chicago", "Boston"],
            }
        ),
        schema.CONVERSION_REATTRIBUTIONS,
    )
    warehouse.commit(output(2, reattributions=moves))
    rows = warehouse.query(
        "SELECT event_id, click_event_id, click_time, latency_seconds, platform, location,"
        " revenue FROM fact_conversions ORDER BY event_id"
    ).rows()
    assert rows == [
        ("v1", "k-new", at(500), 100.0, "Web", "Boston", Decimal("50.0000")),
        ("v2", "k-2", at(590), 10.0, "Tablet", "Chicago", Decimal("50.0000")),
        ("v3", "k-3", at(690), 10.0, "Web", "New York", Decimal("50.0000")),
    ]
    assert count(warehouse, "fact_conversions") == 3  # an unknown event_id adds nothing


def test_a_frame_with_a_wrong_type_writes_nothing(warehouse: Warehouse) -> None:
    nxt = good_then_next(warehouse)
    before = committed_state(warehouse)
    nxt.stats = nxt.stats.with_columns(pl.col("received").cast(pl.String))
    with pytest.raises(SchemaMismatchError, match=r"'ingest_stats'.*received: String"):
        warehouse.commit(nxt)
    assert committed_state(warehouse) == before


def test_query_binds_parameters_and_runs_only_selects(warehouse: Warehouse) -> None:
    warehouse.commit(output(1, clicks=clicks(("a", 0, 0), ("b", 10, 1))))
    frame = warehouse.query("SELECT event_id FROM fact_clicks WHERE event_id = ?", ["a' OR '1'='1"])
    assert frame.is_empty()
    assert (
        warehouse.query("SELECT event_id FROM fact_clicks WHERE event_id = ?", ["b"]).item() == "b"
    )
    for sql in (
        "DELETE FROM fact_clicks",
        "SELECT 1; DROP TABLE fact_clicks",
        "CREATE TABLE x (a INT)",
    ):
        with pytest.raises(ValueError, match="exactly one SELECT"):
            warehouse.query(sql)
    assert count(warehouse, "fact_clicks") == 2
