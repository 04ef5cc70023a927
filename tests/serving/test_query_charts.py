"""Query-layer functions behind the charts: buckets, latency histogram, breakdowns."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from query_dataset import minute

from adpulse.serving import queries
from adpulse.serving.queries import FilterError, Filters
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse


def test_bucketed_timeseries(warehouse: DuckDBWarehouse) -> None:
    minutes = queries.bucketed_timeseries(warehouse, Filters())
    assert minutes.rows() == [
        (
            minute(0),
            140,
            18,
            5,
            5,
            D("175.2500"),
            18 / 140,
            5 / 18,
            35.05,
            400.0,
            pytest.approx(740.0),
        ),
        (minute(1), 50, 5, 1, 1, D("30.5000"), 0.1, 0.2, 30.5, 300.0, 300.0),
        (minute(2), 30, 0, 0, 0, D("0.0000"), 0.0, None, None, None, None),
        (minute(3), 10, 1, 1, 0, D("5.0000"), 0.1, 0.0, 5.0, None, None),
    ]
    # the first columns agree with timeseries()
    plain = queries.timeseries(warehouse, Filters())
    assert minutes.drop("revenue_per_conversion", "latency_p50", "latency_p90").rows() == (
        plain.rows()
    )
    hours = queries.bucketed_timeseries(warehouse, Filters(gender="Female"), "hour")
    assert hours.rows() == [
        (
            minute(0),
            90,
            13,
            4,
            4,
            D("105.7500"),
            13 / 90,
            4 / 13,
            105.75 / 4,
            400.0,
            pytest.approx(470.0),
        )
    ]
    with pytest.raises(FilterError):
        queries.bucketed_timeseries(warehouse, Filters(), "day")  # type: ignore[arg-type]


def test_latency_histogram(warehouse: DuckDBWarehouse, empty_warehouse: DuckDBWarehouse) -> None:
    frame = queries.latency_histogram(warehouse, Filters())
    assert frame["low_seconds"].to_list() == [0, *queries.LATENCY_EDGES]
    assert frame["high_seconds"].to_list() == [*queries.LATENCY_EDGES, None]
    counts = dict(zip(frame["low_seconds"], frame["conversions"], strict=True))
    assert counts[300] == 5 and counts[900] == 1 and sum(counts.values()) == 6
    mobile = queries.latency_histogram(warehouse, Filters(platform="Mobile"))
    assert mobile["conversions"].sum() == 3  # c3, x, y
    assert queries.latency_histogram(empty_warehouse, Filters())["conversions"].sum() == 0


def test_breakdowns(warehouse: DuckDBWarehouse) -> None:
    platform = queries.breakdown(warehouse, Filters(), "platform")
    assert platform.select("value", "impressions", "conversions", "revenue").rows() == [
        ("Mobile", 90, 3, D("80.7500")),
        ("Tablet", 30, 0, D("0.0000")),
        ("Web", 110, 3, D("125.0000")),
        (None, 0, 1, D("5.0000")),
    ]
    gender = queries.breakdown(warehouse, Filters(), "gender")
    assert gender.select("value", "impressions", "clicks", "conversions").rows() == [
        ("Female", 90, 13, 4),
        ("Male", 130, 10, 2),
        (None, 10, 1, 1),
    ]
    interest = queries.breakdown(warehouse, Filters(campaign="Back-to-School"), "interest")
    assert interest.select("value", "impressions", "revenue").rows() == [
        ("Music", 100, D("100.0000")),
        ("Photography", 50, D("30.5000")),
        ("Reading", 50, D("30.5000")),
        ("Travel", 100, D("100.0000")),
    ]
    assert interest.schema["revenue"] == platform.schema["revenue"]
    age = queries.breakdown(warehouse, Filters(), "age_band")
    assert age["value"].to_list() == ["18-24", "25-34", None]
    # rates follow the metric definitions
    web = platform.row(2, named=True)
    assert web["ctr"] == 11 / 110 and web["revenue_per_conversion"] == 125 / 3
    with pytest.raises(FilterError):
        queries.breakdown(warehouse, Filters(), "campaign; DROP TABLE x")  # type: ignore[arg-type]


def test_dimension_values(warehouse: DuckDBWarehouse) -> None:
    values = queries.dimension_values(warehouse)
    assert values["platforms"] == ["Mobile", "Tablet", "Web"]
    assert values["locations"][0] == "Boston"
    assert values["age_bands"] == list(queries.AGE_BAND_LABELS)
    assert queries.dimension_values(warehouse, limit=2)["ad_ids"] == [1001, 1002]
