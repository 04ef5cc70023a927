"""``adpulse reprocess`` on the oracle's data set (duplicates, out-of-order, late and
malformed records): the Spark job's facts, rollups and dead letters equal the streaming
pipeline's, loaded into DuckDB or PostgreSQL every metric equals the independent oracle's,
and a rule change (lookback 1 day instead of 7) recomputed by Spark equals a fresh
streaming run with that rule, also when only a range is replaced."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import oracle
import polars as pl
import pytest
from pgtest import PG_URL, drop_schema, new_schema, require_postgres
from sparktest import (
    DAY,
    FACT_COLUMNS,
    NOW,
    WEEK,
    Streamed,
    dims_warehouse,
    facts_sql,
    requires_spark,
    rules,
)

from adpulse.contracts import Stream
from adpulse.reprocess import run
from adpulse.serving import queries
from adpulse.storage.warehouse.base import Warehouse
from adpulse.storage.warehouse.postgres import PostgresWarehouse

pytestmark = requires_spark

ROLLUP = (
    "SELECT minute, ad_id, campaign, platform, location, sum(impressions) AS i,"
    " sum(clicks) AS c, sum(conversions) AS v, sum(attributed_conversions) AS a,"
    " sum(revenue) AS r, round(sum(latency_sum_seconds), 3) AS l FROM {} GROUP BY ALL"
    " HAVING i <> 0 OR c <> 0 OR v <> 0 OR a <> 0 OR r <> 0 ORDER BY ALL"
)


def parquet(result: run.ReprocessResult, table: str) -> pl.DataFrame:
    return pl.read_parquet(f"{result.out_dir}/{table}/*.parquet")


def spark_rows(result: run.ReprocessResult, table: str, sql: str) -> list[tuple[Any, ...]]:
    return parquet(result, table).sql(sql.replace(table, "self")).rows()


@pytest.mark.parametrize("table", list(FACT_COLUMNS))
@pytest.mark.parametrize("rule", ["week-log", "day-jsonl"])
def test_facts_equal_streaming(request: pytest.FixtureRequest, rule: str, table: str) -> None:
    """Every fact column (is_late and partition included) equals the stream's: derived
    ids, SCD2 enrichment, attribution, lateness in arrival order, per partition."""
    streamed: Streamed = request.getfixturevalue(
        "streamed_week" if rule.startswith("week") else "streamed_day"
    )
    result: run.ReprocessResult = request.getfixturevalue(
        "spark_week" if rule.startswith("week") else "spark_day"
    )
    want = streamed.warehouse.query(facts_sql(table)).rows()
    got = spark_rows(result, table, facts_sql(table))
    assert len(got) == len(want) > 500
    assert got == want
    if table != "fact_impressions":
        assert sum(row[-2] for row in want) == 4  # the late records of the data set


@pytest.mark.parametrize("rule", ["week-log", "day-jsonl"])
def test_rollups_and_dead_letters_equal_streaming(
    request: pytest.FixtureRequest, rule: str
) -> None:
    streamed: Streamed = request.getfixturevalue(
        "streamed_week" if rule.startswith("week") else "streamed_day"
    )
    result: run.ReprocessResult = request.getfixturevalue(
        "spark_week" if rule.startswith("week") else "spark_day"
    )
    want = streamed.warehouse.query(ROLLUP.format("rollup_minute")).rows()
    got = parquet(result, "rollup_minute").sql(ROLLUP.format("self")).rows()
    assert got == want
    reasons = "SELECT stream, reason, count(*) AS n FROM {} GROUP BY ALL ORDER BY ALL"
    want_dead = streamed.warehouse.query(reasons.format("dead_letters")).rows()
    assert parquet(result, "dead_letters").sql(reasons.format("self")).rows() == want_dead
    stats = streamed.warehouse.query(
        "SELECT stream, sum(received), sum(rejected), sum(duplicates), sum(late)"
        " FROM ingest_stats GROUP BY 1"
    ).rows()
    for stream, received, rejected, duplicates, late in stats:
        got_counts = result.streams[stream]
        assert (
            got_counts["received"],
            got_counts["rejected"],
            got_counts["duplicates"],
            got_counts["late"],
        ) == (received, rejected, duplicates, late)
        # nothing lost: every record is a fact, a counted duplicate or a dead letter
        assert got_counts["unique"] + got_counts["duplicates"] + got_counts["rejected"] == received


def _close(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))  # type: ignore[arg-type]


FILTERS: list[dict[str, Any]] = [
    {},
    {"platform": "Mobile"},
    {"gender": "Female", "age_band": "25-34"},
    {"start": datetime(2023, 9, 8, 12, 0), "end": datetime(2023, 9, 9, 6, 30)},
]


def assert_metrics_equal_oracle(warehouse: Warehouse, truth: Any) -> None:
    con, _ = truth
    for filters in FILTERS:
        for group in (None, "campaign"):
            want = oracle.metrics(con, group, **filters)
            f = queries.Filters(**filters)
            for name, columns in {
                "ctr": ("impressions", "clicks", "ctr"),
                "conversion_rate": ("clicks", "attributed_conversions", "conversion_rate"),
                "revenue_per_conversion": ("conversions", "revenue", "revenue_per_conversion"),
                "conversion_latency": ("latency_mean", "latency_p50", "latency_p90"),
            }.items():
                frame = getattr(queries, name)(warehouse, f, group)
                got = {(r[group] if group else None): r for r in frame.to_dicts()}
                relevant = {
                    g: w
                    for g, w in want.items()
                    if (name != "conversion_latency" or w["latency_mean"] is not None)
                    and any(w[c] not in (None, 0) for c in columns)
                }
                assert set(got) == set(relevant), (name, filters, group)
                for g, w in relevant.items():
                    for c in columns:
                        assert _close(got[g][c], w[c]), (name, filters, g, c, got[g][c], w[c])


def assert_facts_equal_oracle(warehouse: Warehouse, truth: Any) -> None:
    con, _ = truth
    for stream in Stream:
        got = warehouse.query(
            f"SELECT event_id, event_time, campaign, gender FROM fact_{stream.value} ORDER BY 1"
        ).rows()
        want = con.execute(
            f"SELECT given_id, event_time, campaign, gender FROM o_{stream.value} ORDER BY 1"
        ).fetchall()
        assert got == want, stream
    got_conv = warehouse.query(
        "SELECT event_id, click_time, platform, age_band FROM fact_conversions ORDER BY 1"
    ).rows()
    want_conv = con.execute(
        "SELECT given_id, click_time, platform, age_band FROM o_conversions ORDER BY 1"
    ).fetchall()
    assert got_conv == want_conv


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
def test_loaded_warehouse_equals_oracle(
    backend: str, spark_week: run.ReprocessResult, truth_week: Any, dataset: Path, tmp_path: Path
) -> None:
    """Loaded into a new warehouse, the job's outputs answer every metric as the
    independent oracle does."""
    schema = None
    if backend == "postgres":
        require_postgres()
        schema = new_schema()
        warehouse: Warehouse = PostgresWarehouse(PG_URL, schema=schema)
        warehouse.create_schema()
        from builders import load_dimensions

        load_dimensions(warehouse, dataset)
    else:
        warehouse = dims_warehouse(tmp_path / "w.duckdb", dataset)
    try:
        loaded = run.load_outputs(warehouse, spark_week.out_dir, None, None)
        assert loaded["fact_conversions"] == spark_week.rows["fact_conversions"]
        assert_facts_equal_oracle(warehouse, truth_week)
        assert_metrics_equal_oracle(warehouse, truth_week)
    finally:
        warehouse.close()
        if schema is not None:
            drop_schema(schema)


def _attributed(warehouse: Warehouse) -> int:
    return int(warehouse.query("SELECT count(click_time) FROM fact_conversions").item())


def _copy_warehouse(streamed: Streamed, path: Path) -> Any:
    """A copy of a streaming run's DuckDB warehouse (file and segments), opened."""
    import shutil

    from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

    source = streamed.home / "warehouse.duckdb"
    checkpoint = streamed.warehouse.cursor()
    checkpoint.execute("CHECKPOINT")  # the file then holds every commit
    checkpoint.close()
    shutil.copy(source, path)
    segments = source.parent / "warehouse.duckdb.segments"
    if segments.exists():
        shutil.copytree(segments, path.parent / f"{path.name}.segments")
    wh = DuckDBWarehouse(path)
    wh.create_schema()
    return wh


def test_rule_change_equals_fresh_stream(
    spark_day: run.ReprocessResult,
    streamed_week: Streamed,
    streamed_day: Streamed,
    truth_day: Any,
    tmp_path: Path,
) -> None:
    """A warehouse filled by the stream with a 7-day lookback, whose whole history is
    replaced by Spark's 1-day recomputation, equals a fresh stream with 1 day, and the
    oracle with 1 day."""
    week = _copy_warehouse(streamed_week, tmp_path / "week.duckdb")
    try:
        before = _attributed(week)
        run.load_outputs(week, spark_day.out_dir, None, None)
        assert _attributed(week) == _attributed(streamed_day.warehouse) < before
        for table in FACT_COLUMNS:
            assert (
                week.query(facts_sql(table)).rows()
                == streamed_day.warehouse.query(facts_sql(table)).rows()
            )
        assert week.query(ROLLUP.format("rollup_minute")).rows() == (
            streamed_day.warehouse.query(ROLLUP.format("rollup_minute")).rows()
        )
        assert_facts_equal_oracle(week, truth_day)
        assert_metrics_equal_oracle(week, truth_day)
    finally:
        week.close()


def test_partial_range_replacement(
    spark_day: run.ReprocessResult,
    streamed_week: Streamed,
    streamed_day: Streamed,
    tmp_path: Path,
) -> None:
    """Only [start, end) changes: facts and rollups inside it are the 1-day ones,
    outside it the 7-day ones; a failed load changes nothing."""
    start, end = datetime(2023, 9, 9, 6, 0), datetime(2023, 9, 9, 18, 0)
    week = _copy_warehouse(streamed_week, tmp_path / "week.duckdb")
    try:
        run.load_outputs(week, spark_day.out_dir, start, end)
        for table in FACT_COLUMNS:
            for inside, source in ((True, streamed_day), (False, streamed_week)):
                cond = "event_time >= ? AND event_time < ?"
                if not inside:
                    cond = f"NOT ({cond})"
                sql = facts_sql(table).replace(" ORDER BY", f" WHERE {cond} ORDER BY")
                assert week.query(sql, [start, end]).rows() == (
                    source.warehouse.query(sql, [start, end]).rows()
                ), (table, inside)
        # the range held a conversion the rule change unattributes
        long_conv = "SELECT click_time FROM fact_conversions WHERE event_id = 'long-conv-0'"
        assert week.query(long_conv).item() is None
        assert streamed_week.warehouse.query(long_conv).item() is not None
        totals = (
            "SELECT sum(impressions), sum(clicks), sum(attributed_conversions) FROM rollup_minute"
        )
        assert week.query(totals).rows() != streamed_week.warehouse.query(totals).rows()
        with pytest.raises(ValueError, match="whole minutes"):
            run.load_outputs(week, spark_day.out_dir, datetime(2023, 9, 9, 6, 0, 30), None)
    finally:
        week.close()


def test_rules_are_the_settings() -> None:
    r = rules(WEEK)
    assert (r.lookback.total_seconds(), r.lateness.total_seconds()) == (WEEK, 600)
    assert r.now == NOW and rules(DAY).lookback.total_seconds() == DAY
