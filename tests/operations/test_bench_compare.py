"""`adpulse bench --compare` compares like with like: its plain DuckDB batch query gives
the same per-ad answers as adpulse's committed results and as the independent oracle
(tests/oracle.py) on the same files."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import oracle
import polars as pl
import pytest
from rich.console import Console

from adpulse.config import Settings
from adpulse.operations.bench import (
    WORKLOAD_START,
    adpulse_per_ad,
    duckdb_per_ad,
    per_ad_equal,
    replay_per_ad,
    run_compare,
)
from adpulse.sources.files import write_dataset
from adpulse.sources.generator import EventGenerator, GeneratorConfig
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

#: One xdist worker runs this module: its module-scoped fixtures are built once, not
#: once on each worker.
pytestmark = pytest.mark.xdist_group("bench-compare")

LOOKBACK = timedelta(days=7)
# a shorter lookback than most conversion delays: attribution within it is tested too
SHORT_LOOKBACK = timedelta(minutes=20)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("files")
    gen = EventGenerator(
        GeneratorConfig(seed=5, ads=40, users=2_000, ctr_mean=0.2, malformed_rate=0.0)
    )
    write_dataset(data, gen, 30_000, WORKLOAD_START, WORKLOAD_START + timedelta(days=2))
    return data


def oracle_per_ad(files: Path, lookback: timedelta) -> pl.DataFrame:
    con = duckdb.connect()
    oracle.build(con, files, datetime(2026, 1, 1), lookback=lookback)
    frame: pl.DataFrame = con.sql(
        """
        WITH i AS (SELECT ad_id, count(*) AS impressions FROM o_impressions GROUP BY ad_id),
             c AS (SELECT ad_id, count(*) AS clicks FROM o_clicks GROUP BY ad_id),
             v AS (SELECT ad_id, count(*) AS conversions,
                          count(latency_seconds) AS attributed_conversions,
                          sum(revenue) AS revenue,
                          coalesce(sum(latency_seconds), 0) AS latency_sum_seconds
                   FROM o_conversions GROUP BY ad_id)
        SELECT ad_id, coalesce(impressions, 0) AS impressions, coalesce(clicks, 0) AS clicks,
               coalesce(conversions, 0) AS conversions,
               coalesce(attributed_conversions, 0) AS attributed_conversions,
               coalesce(revenue, 0) AS revenue,
               coalesce(latency_sum_seconds, 0) AS latency_sum_seconds
        FROM i FULL JOIN c USING (ad_id) FULL JOIN v USING (ad_id) ORDER BY ad_id
        """
    ).pl()
    con.close()
    return frame


@pytest.mark.parametrize("lookback", [LOOKBACK, SHORT_LOOKBACK])
def test_duckdb_batch_query_equals_the_oracle(files: Path, lookback: timedelta) -> None:
    batch = duckdb_per_ad(files, lookback)
    truth = oracle_per_ad(files, lookback)
    assert per_ad_equal(batch, truth)
    assert batch["impressions"].sum() == truth["impressions"].sum() > 20_000
    assert 0 < truth["attributed_conversions"].sum() < truth["conversions"].sum()


@pytest.mark.parametrize("lookback", [LOOKBACK, SHORT_LOOKBACK])
def test_replay_equals_the_duckdb_batch_query(
    files: Path, tmp_path: Path, lookback: timedelta
) -> None:
    settings = Settings(
        home=tmp_path,
        partitions=3,
        attribution_lookback_seconds=int(lookback.total_seconds()),
        batch_max_bytes=256 * 1024,  # several batches
    )
    ours = replay_per_ad(files, settings)
    batch = duckdb_per_ad(files, lookback)
    assert per_ad_equal(ours, batch)
    assert ours["conversions"].sum() == batch["conversions"].sum()
    assert ours["attributed_conversions"].sum() == batch["attributed_conversions"].sum()
    with DuckDBWarehouse(tmp_path / "warehouse.duckdb") as warehouse:
        assert per_ad_equal(adpulse_per_ad(warehouse), batch)


def test_a_changed_answer_is_not_equal(files: Path) -> None:
    batch = duckdb_per_ad(files, LOOKBACK)
    off_by_one = batch.with_columns(
        pl.when(pl.col("ad_id") == batch["ad_id"][0])
        .then(pl.col("clicks") + 1)
        .otherwise(pl.col("clicks"))
        .alias("clicks")
    )
    assert not per_ad_equal(off_by_one, batch)
    later = batch.with_columns(pl.col("latency_sum_seconds") + 1)
    assert not per_ad_equal(later, batch)


def test_compare_reports_times_and_equal_answers(tmp_path: Path) -> None:
    result = run_compare(
        events=20_000, partitions=2, seed=3, workdir=tmp_path / "w", console=Console(quiet=True)
    )
    assert result["answers_equal"] is True
    assert result["events"] >= 20_000
    for key in ("decode_ceiling_seconds", "duckdb_batch_seconds", "replay_seconds"):
        assert result[key] > 0
    ratio = result["duckdb_batch_seconds"] / result["replay_seconds"]
    assert result["replay_vs_duckdb"] == pytest.approx(ratio, abs=0.002)
