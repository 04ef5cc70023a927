"""The metric catalog: each entry rendered as SQL (run on DuckDB and on PostgreSQL) and
as Polars gives the same, hand-computed values; and every target (query layer, CLI, API,
Grafana) renders the catalog rather than its own copy."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import psycopg
import pytest
from pgtest import PG_URL, require_postgres

from adpulse import metrics
from adpulse.metrics import (
    CONVERSION_RATE,
    CTR,
    LATENCY,
    MEASURE,
    MEASURES,
    RATIOS,
    REVENUE_PER_CONVERSION,
    Measure,
    Ratio,
)
from adpulse.serving import queries
from adpulse.storage.warehouse.duckdb import DUCKDB, DuckDBWarehouse
from adpulse.storage.warehouse.postgres import POSTGRES
from adpulse.storage.warehouse.schema import ROLLUP_MEASURES
from adpulse.storage.warehouse.sql import Dialect

sys.path.insert(0, str(Path(__file__).parent / "serving"))  # the query-layer data set
from query_dataset import build  # noqa: E402

# --- a small frame of summed measures, and its hand-computed ratios ------------------------
SUMS = pl.DataFrame(
    {
        "id": [1, 2, 3, 4, 5],
        "impressions": [100, 0, 40, 0, 50],
        "clicks": [10, 0, 8, 3, 0],
        "conversions": [2, 0, 3, 1, 0],
        "attributed_conversions": [2, 0, 3, 0, 0],
        "revenue": [Decimal("100"), Decimal("0"), Decimal("75.25"), Decimal("5"), Decimal("0")],
    },
    schema={"id": pl.Int64, **{m.name: m.dtype for m in MEASURES}},
)
#: By ratio, one value per row of SUMS: NULL wherever the denominator is 0.
EXPECTED_RATIOS: dict[str, list[float | None]] = {
    "ctr": [0.1, None, 0.2, None, 0.0],
    "conversion_rate": [0.2, None, 0.375, 0.0, None],
    "revenue_per_conversion": [50.0, None, 75.25 / 3, 5.0, None],
}

#: Group "a" holds only an impression and its retraction, "b" clicks without
#: impressions, "c" a bit of everything.
ROWS = pl.DataFrame(
    {
        "g": ["a", "a", "b", "c", "c"],
        "impressions": [5, -5, 0, 10, 30],
        "clicks": [0, 0, 2, 1, 2],
        "conversions": [0, 0, 0, 1, 0],
        "attributed_conversions": [0, 0, 0, 1, 0],
        "revenue": [Decimal("0"), Decimal("0"), Decimal("0"), Decimal("12.5"), Decimal("0")],
    },
    schema={"g": pl.String, **{m.name: m.dtype for m in MEASURES}},
)

#: Attributed conversions (click_time set) with latencies 0, 100, ... 1000 s, shuffled,
#: and one unattributed conversion, which no statistic may read.
CLICK = datetime(2023, 9, 9, 10, 0)
CONVERSIONS = pl.DataFrame(
    {
        "click_time": [CLICK] * 11 + [None],
        "latency_seconds": [
            float(v) for v in (300, 0, 1000, 500, 100, 900, 200, 700, 400, 800, 600)
        ]
        + [None],
    },
    schema={"click_time": pl.Datetime("us"), "latency_seconds": pl.Float64},
)


class Engine:
    """One SQL database holding the test frames as tables, typed by its :class:`Dialect`."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def load(self, name: str, frame: pl.DataFrame) -> None:
        raise NotImplementedError

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class DuckDBEngine(Engine):
    def __init__(self) -> None:
        super().__init__(DUCKDB)
        self.conn = duckdb.connect(":memory:")

    def load(self, name: str, frame: pl.DataFrame) -> None:
        self.conn.execute(self.dialect.create_table(name, frame.schema))
        self.conn.register("staged", frame.to_arrow())
        self.conn.execute(f"INSERT INTO {name} SELECT * FROM staged")
        self.conn.unregister("staged")

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql).fetchall()

    def close(self) -> None:
        self.conn.close()


class PostgresEngine(Engine):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__(POSTGRES)
        self.conn = conn

    def load(self, name: str, frame: pl.DataFrame) -> None:
        self.conn.execute(
            self.dialect.create_table(name, frame.schema).replace("TABLE", "TEMP TABLE", 1)
        )
        marks = ", ".join("%s" for _ in frame.columns)
        with self.conn.cursor() as cursor:
            cursor.executemany(f"INSERT INTO {name} VALUES ({marks})", frame.rows())

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.conn.execute(sql).fetchall()]

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(params=["duckdb", "postgres"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """Each backend's engine holding SUMS, ROWS and CONVERSIONS as tables."""
    found: Engine
    if request.param == "duckdb":
        found = DuckDBEngine()
    else:
        require_postgres()
        found = PostgresEngine(psycopg.connect(PG_URL, autocommit=True))
    for name, frame in (("sums", SUMS), ("rollup_rows", ROWS), ("conversions", CONVERSIONS)):
        found.load(name, frame)
    yield found
    found.close()


# --- ratios ------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", RATIOS, ids=lambda r: r.name)
def test_ratio_sql_and_polars_give_the_hand_computed_values(engine: Engine, ratio: Ratio) -> None:
    sql_values = [row[0] for row in engine.rows(f"SELECT {ratio.sql()} FROM sums ORDER BY id")]
    polars_values = SUMS.sort("id").select(ratio.expr())[ratio.name].to_list()
    assert sql_values == EXPECTED_RATIOS[ratio.name]
    assert polars_values == EXPECTED_RATIOS[ratio.name]


def test_ratio_over_a_qualified_table_and_other_columns() -> None:
    assert CTR.sql("r") == "CAST(r.clicks AS DOUBLE PRECISION) / NULLIF(r.impressions, 0)"
    assert CONVERSION_RATE.sql_over("latest_conversions", "latest_clicks") == (
        "CAST(latest_conversions AS DOUBLE PRECISION) / NULLIF(latest_clicks, 0)"
    )
    assert REVENUE_PER_CONVERSION.columns == ("conversions", "revenue", "revenue_per_conversion")


# --- measures and the zero-group rule ----------------------------------------------------
def test_sums_and_the_zero_group_rule_agree_in_sql_and_polars(engine: Engine) -> None:
    names = tuple(m.name for m in MEASURES)
    sums = ", ".join(f"{m.sum_sql()} AS {m.name}" for m in MEASURES)
    sql = (
        f"SELECT g, {sums} FROM rollup_rows GROUP BY g"
        f" HAVING {metrics.nonzero_sql(names)} ORDER BY g"
    )
    expected = [
        ("b", 0, 2, 0, 0, Decimal("0.0000")),
        ("c", 40, 3, 1, 1, Decimal("12.5000")),
    ]
    assert engine.rows(sql) == expected  # "a" only held retracted data
    frame = (
        ROWS.group_by("g")
        .agg(m.sum_expr() for m in MEASURES)
        .filter(metrics.nonzero_expr(names))
        .sort("g")
    )
    assert frame.rows() == expected
    assert dict(frame.select(names).schema) == dict(
        (name, dtype) for name, dtype in ROLLUP_MEASURES.items() if name in names
    )
    # a ratio's rule reads only its inputs: "b" has clicks, "c" too; nothing is dropped
    # for CTR that has impressions or clicks
    ctr_sql = (
        f"SELECT g, {CTR.sql_over('SUM(clicks)', 'SUM(impressions)')} FROM rollup_rows"
        f" GROUP BY g HAVING {metrics.nonzero_sql(CTR.inputs)} ORDER BY g"
    )
    assert engine.rows(ctr_sql) == [("b", None), ("c", 3 / 40)]


def test_sums_of_an_empty_range_are_zero_not_null(engine: Engine) -> None:
    sums = ", ".join(m.sum_sql() for m in MEASURES)
    assert engine.rows(f"SELECT {sums} FROM sums WHERE id < 0") == [(0, 0, 0, 0, Decimal("0"))]
    clicks_before = MEASURE["clicks"].sum_sql(when="id < 3")
    assert engine.rows(f"SELECT {clicks_before} FROM sums") == [(10,)]


def test_each_fact_row_counts_towards_its_measures(engine: Engine) -> None:
    attributed = MEASURE["attributed_conversions"].fact_sql("fact_conversions")
    assert engine.rows(f"SELECT SUM({attributed}) FROM conversions") == [(11,)]
    assert MEASURE["impressions"].fact_sql("fact_impressions") == "1"
    assert MEASURE["impressions"].fact_sql("fact_clicks") == "0"
    assert MEASURE["revenue"].fact_sql("fact_conversions") == "revenue"
    with pytest.raises(ValueError, match="unknown fact table 'facts'"):
        MEASURE["clicks"].fact_sql("facts")


# --- distributions -----------------------------------------------------------------------
def test_latency_statistics_agree_in_sql_and_polars(engine: Engine) -> None:
    columns = ", ".join(f"{expr} AS {name}" for name, expr in LATENCY.aggregates().items())
    sql = f"SELECT {columns} FROM conversions WHERE {LATENCY.condition}"
    expected = [(11, 500.0, 500.0, 900.0)]
    assert engine.rows(sql) == expected
    polars = CONVERSIONS.filter(pl.col(LATENCY.requires).is_not_null()).select(LATENCY.exprs())
    assert polars.rows() == expected
    assert polars.columns == list(LATENCY.columns)
    empty = f"SELECT {columns} FROM conversions WHERE {LATENCY.condition} AND 1 = 0"
    assert engine.rows(empty) == [(0, None, None, None)]
    assert LATENCY.statistic("latency_p90").percentile == 0.9
    with pytest.raises(KeyError, match="no statistic 'latency_p99'; it has latency_mean,"):
        LATENCY.statistic("latency_p99")


# --- every target renders the catalog ----------------------------------------------------
def _summary_columns() -> list[str]:
    return [
        *(m.name for m in MEASURES),
        *(r.name for r in RATIOS),
        *(s.name for s in LATENCY.statistics),
    ]


def test_the_query_layer_cli_api_and_grafana_render_the_catalog(tmp_path: Path) -> None:
    from adpulse.cli.query_commands import METRICS as CLI_METRICS
    from adpulse.operations import grafana
    from adpulse.serving.api import METRICS as API_METRICS

    assert metrics.GROUPED_NAMES == (
        "ctr",
        "conversion-rate",
        "revenue-per-conversion",
        "conversion-latency",
    )
    assert API_METRICS == metrics.GROUPED_NAMES
    assert (*metrics.GROUPED_NAMES, "trending", "top-ads", "summary") == CLI_METRICS
    assert [title for title, _, _ in grafana.HEADLINES] == [
        "Impressions",
        "Clicks",
        "Conversions",
        "Revenue",
        "CTR",
        "Conversion rate",
        "Revenue per conversion",
        "Latency mean",
        "Latency p50",
        "Latency p90",
    ]
    assert [column for _, column, _ in grafana.HEADLINES] == [
        c for c in _summary_columns() if c != "attributed_conversions"
    ]
    with DuckDBWarehouse(tmp_path / "w.duckdb") as wh:
        wh.create_schema()
        assert queries.summary(wh, queries.Filters()).columns == _summary_columns()
        for name, metric in metrics.GROUPED.items():
            frame = queries.grouped_metric(wh, name, queries.Filters(), "campaign")
            assert frame.columns == ["campaign", *metric.columns], name
        with pytest.raises(queries.FilterError, match="unknown metric 'cpc'; choose one of: ctr,"):
            queries.grouped_metric(wh, "cpc", queries.Filters())


def test_a_new_ratio_needs_no_query_code(tmp_path: Path) -> None:
    """The worked example of docs/metrics.md: attribution rate, a catalog entry away."""
    attribution_rate = Ratio(
        "attribution_rate",
        numerator="attributed_conversions",
        denominator="conversions",
        title="Attribution rate",
        unit="percentunit",
        description="Attributed conversions / conversions.",
    )
    with DuckDBWarehouse(tmp_path / "w.duckdb") as wh:
        wh.create_schema()
        build(wh)
        frame = queries.ratio(wh, attribution_rate, queries.Filters(), "campaign")
        # Fall Fashion and Winter have no conversions at all: left out by the zero-group rule
        assert frame.rows() == [
            ("Back-to-School", 3, 3, 1.0),
            ("Summer Sale", 3, 3, 1.0),
            (None, 1, 0, 0.0),  # ad 9999's conversion has no click
        ]
        total = queries.ratio(wh, attribution_rate, queries.Filters())
        assert total.rows() == [(7, 6, 6 / 7)]
        # the Polars rendering over the summed counts (Fall Fashion: no conversions)
        counts = queries.counts(wh, queries.Filters(), "campaign")
        assert counts.select("campaign", attribution_rate.expr()).rows() == [
            ("Back-to-School", 1.0),
            ("Fall Fashion", None),
            ("Summer Sale", 1.0),
            (None, 0.0),
        ]


def _names(entries: Sequence[Measure | Ratio]) -> list[str]:
    return [e.name for e in entries]


def test_catalog_names_are_unique_and_ratios_read_known_measures() -> None:
    names = [*_names(MEASURES), *_names(RATIOS), *(s.name for s in LATENCY.statistics)]
    assert len(names) == len(set(names))
    assert all(m in MEASURE for r in RATIOS for m in r.inputs)
    assert _names(MEASURES) == [n for n in ROLLUP_MEASURES if n != "latency_sum_seconds"]
