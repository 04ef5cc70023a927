"""Every query-layer function against hand-computed results on known data.

The data is described in ``query_dataset``; every expected number below was worked out
by hand from that table (the comments show the sums), not by running the queries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import polars as pl
import pytest
from query_dataset import M0, empty_output, minute, rollups

from adpulse.serving import queries
from adpulse.serving.queries import Filters
from adpulse.storage.warehouse import schema
from adpulse.storage.warehouse.base import Warehouse

D = Decimal
COUNT_COLUMNS = ["impressions", "clicks", "conversions", "attributed_conversions", "revenue"]


def assert_rows(frame: pl.DataFrame, expected: Sequence[Sequence[Any]]) -> None:
    """Rows equal, floats to 12 significant digits (SQL and Python round differently)."""
    actual = frame.rows()
    assert len(actual) == len(expected), actual
    for got_row, want_row in zip(actual, expected, strict=True):
        assert len(got_row) == len(want_row), got_row
        for got, want in zip(got_row, want_row, strict=True):
            if isinstance(want, float):
                assert isinstance(got, float) and math.isclose(got, want, rel_tol=1e-12), (
                    got_row,
                    want_row,
                )
            else:
                assert got == want and type(got) is type(want), (got_row, want_row)


# --- counts ------------------------------------------------------------------------------
def test_counts_total_sums_partial_and_negative_rows(warehouse: Warehouse) -> None:
    frame = queries.counts(warehouse, Filters())
    assert frame.columns == COUNT_COLUMNS
    assert frame.schema["revenue"] == pl.Decimal(38, 4)
    # impressions 100+50+40+30+10+5-5, clicks 10+5+8+1, conversions 2+1+3-1+1+1,
    # attributed 2+1+3-1+1, revenue 100+30.5+75.25-25+25+5
    assert_rows(frame, [(230, 24, 7, 6, D("210.7500"))])


def test_counts_by_campaign_drops_all_zero_groups_and_puts_unknown_last(
    warehouse: Warehouse,
) -> None:
    frame = queries.counts(warehouse, Filters(), "campaign")
    assert frame.columns == ["campaign", *COUNT_COLUMNS]
    assert_rows(
        frame,
        [
            ("Back-to-School", 150, 15, 3, 3, D("130.5000")),
            ("Fall Fashion", 30, 0, 0, 0, D("0.0000")),
            ("Summer Sale", 40, 8, 3, 3, D("75.2500")),  # C + D + E
            (None, 10, 1, 1, 0, D("5.0000")),  # unknown ad 9999
        ],  # Winter: +5 and -5 impressions, dropped
    )


def test_counts_by_ad(warehouse: Warehouse) -> None:
    frame = queries.counts(warehouse, Filters(), "ad")
    assert frame.columns == ["ad_id", "campaign", *COUNT_COLUMNS]
    assert_rows(
        frame,
        [
            (1001, "Back-to-School", 150, 15, 3, 3, D("130.5000")),
            (1002, "Summer Sale", 40, 8, 3, 3, D("75.2500")),
            (1003, "Fall Fashion", 30, 0, 0, 0, D("0.0000")),
            (9999, None, 10, 1, 1, 0, D("5.0000")),
        ],
    )


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(platform="Web"), (110, 11, 3, 3, D("125.0000"))),  # A E G1 H I
        (Filters(platform="Mobile"), (90, 13, 3, 3, D("80.7500"))),  # B C D
        (Filters(platform="Tablet"), (30, 0, 0, 0, D("0.0000"))),  # F
        (Filters(location="Los Angeles"), (90, 13, 4, 4, D("105.7500"))),  # B C D E
        (Filters(gender="Female"), (90, 13, 4, 4, D("105.7500"))),  # B C D E
        (Filters(gender="Male"), (130, 10, 2, 2, D("100.0000"))),  # A F H I
        (Filters(age_band="25-34"), (120, 13, 4, 4, D("105.7500"))),  # B C D E F
        (Filters(age_band="18-24"), (100, 10, 2, 2, D("100.0000"))),  # A
        (Filters(interest="Travel"), (100, 10, 2, 2, D("100.0000"))),  # A
        (Filters(interest="Music"), (100, 10, 2, 2, D("100.0000"))),  # A, H + I cancel
        (Filters(interest="Photography"), (90, 13, 4, 4, D("105.7500"))),
        (Filters(campaign="Summer Sale"), (40, 8, 3, 3, D("75.2500"))),
        (Filters(ad_id=1001), (150, 15, 3, 3, D("130.5000"))),
        (Filters(ad_id=9999), (10, 1, 1, 0, D("5.0000"))),
        (Filters(start=minute(1), end=minute(3)), (80, 5, 1, 1, D("30.5000"))),  # B F
        (Filters(start=minute(0), end=minute(1)), (140, 18, 5, 5, D("175.2500"))),  # A C D E
        (Filters(start=minute(3)), (10, 1, 1, 0, D("5.0000"))),  # G1 G2 (H + I = 0)
        (Filters(end=minute(1)), (140, 18, 5, 5, D("175.2500"))),
        (
            Filters(campaign="Summer Sale", platform="Web", start=minute(0), end=minute(1)),
            (0, 0, 1, 1, D("25.0000")),  # E only: the re-attributed conversion
        ),
        (Filters(platform="Web", gender="Female", interest="Reading"), (0, 0, 1, 1, D("25.0000"))),
        (  # audience filters read the facts, with the same minute buckets: B only
            Filters(
                age_band="25-34",
                start=M0 + timedelta(seconds=30),
                end=minute(1) + timedelta(seconds=30),
            ),
            (50, 5, 1, 1, D("30.5000")),
        ),
    ],
)
def test_counts_filters(warehouse: Warehouse, filters: Filters, expected: tuple[Any, ...]) -> None:
    assert_rows(queries.counts(warehouse, filters), [expected])


@pytest.mark.parametrize(
    "filters",
    [
        Filters(interest="Trav"),  # a prefix of an interest is not the interest
        Filters(interest="usic"),  # nor is a part of one
        Filters(campaign="Winter"),  # only retracted data: sums to zero
        Filters(start=datetime(2023, 9, 10)),  # after all data
        Filters(end=M0),  # before all data
        Filters(start=M0 + timedelta(seconds=30), end=minute(1)),  # no minute bucket inside
        Filters(platform="web"),  # values are case-sensitive
        Filters(ad_id=1003, platform="Web"),
    ],
)
def test_counts_empty_results(warehouse: Warehouse, filters: Filters) -> None:
    frame = queries.counts(warehouse, filters)
    assert frame.columns == COUNT_COLUMNS
    assert frame.height == 0
    assert queries.counts(warehouse, filters, "campaign").height == 0
    assert queries.counts(warehouse, filters, "ad").height == 0


def test_minute_buckets_are_counted_by_their_start(warehouse: Warehouse) -> None:
    # [10:00:30, 10:01:30) holds the 10:01 bucket (B) but not the 10:00 one.
    filters = Filters(start=M0 + timedelta(seconds=30), end=minute(1) + timedelta(seconds=30))
    assert_rows(queries.counts(warehouse, filters), [(50, 5, 1, 1, D("30.5000"))])


def test_aware_datetimes_are_converted_to_utc(warehouse: Warehouse) -> None:
    plus_two = timezone(timedelta(hours=2))
    filters = Filters(start=datetime(2023, 9, 9, 12, 1, tzinfo=plus_two), end=minute(3))
    assert filters.start == minute(1)
    assert_rows(queries.counts(warehouse, filters), [(80, 5, 1, 1, D("30.5000"))])
    assert Filters(end=datetime(2023, 9, 9, 10, 1, tzinfo=UTC)).end == minute(1)


def test_empty_warehouse_returns_typed_empty_frames(empty_warehouse: Warehouse) -> None:
    for group_by in (None, "campaign", "ad"):
        frame = queries.counts(empty_warehouse, Filters(), group_by)  # type: ignore[arg-type]
        assert frame.height == 0
        assert frame.schema["revenue"] == pl.Decimal(38, 4)
    assert queries.conversion_latency(empty_warehouse, Filters()).height == 0
    assert queries.timeseries(empty_warehouse, Filters()).height == 0


# --- rates ----------------------------------------------------------------------------------
def test_ctr(warehouse: Warehouse) -> None:
    frame = queries.ctr(warehouse, Filters())
    assert frame.columns == ["impressions", "clicks", "ctr"]
    assert_rows(frame, [(230, 24, 24 / 230)])
    assert_rows(
        queries.ctr(warehouse, Filters(), "campaign"),
        [
            ("Back-to-School", 150, 15, 0.1),
            ("Fall Fashion", 30, 0, 0.0),
            ("Summer Sale", 40, 8, 0.2),
            (None, 10, 1, 0.1),
        ],
    )


def test_ctr_leaves_out_groups_without_impressions_and_clicks(
    warehouse: Warehouse, empty_warehouse: Warehouse
) -> None:
    # Web + ad 1002 is the re-attributed conversion only: nothing for a CTR.
    frame = queries.ctr(warehouse, Filters(platform="Web"), "ad")
    assert frame.columns == ["ad_id", "campaign", "impressions", "clicks", "ctr"]
    assert_rows(frame, [(1001, "Back-to-School", 100, 10, 0.1), (9999, None, 10, 1, 0.1)])
    assert queries.counts(warehouse, Filters(platform="Web"), "ad")["ad_id"].to_list() == [
        1001,
        1002,
        9999,
    ]
    clicks_only = empty_output(1)
    clicks_only.rollups = schema.conform(
        pl.DataFrame({"minute": [M0], "ad_id": [1], "clicks": [3], "impressions": [0]}),
        schema.ROLLUP_MINUTE,
    )
    empty_warehouse.commit(clicks_only)
    assert_rows(queries.ctr(empty_warehouse, Filters()), [(0, 3, None)])


def test_conversion_rate(warehouse: Warehouse) -> None:
    frame = queries.conversion_rate(warehouse, Filters())
    assert frame.columns == ["clicks", "attributed_conversions", "conversion_rate"]
    assert_rows(frame, [(24, 6, 0.25)])
    assert_rows(
        queries.conversion_rate(warehouse, Filters(), "ad"),
        [
            (1001, "Back-to-School", 15, 3, 0.2),
            (1002, "Summer Sale", 8, 3, 0.375),
            (9999, None, 1, 0, 0.0),
        ],  # 1003 has neither clicks nor conversions
    )
    assert_rows(
        queries.conversion_rate(warehouse, Filters(platform="Mobile"), "campaign"),
        [("Back-to-School", 5, 1, 0.2), ("Summer Sale", 8, 2, 0.25)],  # B; C + D
    )


def test_revenue_per_conversion_counts_all_conversions(warehouse: Warehouse) -> None:
    frame = queries.revenue_per_conversion(warehouse, Filters())
    assert frame.columns == ["conversions", "revenue", "revenue_per_conversion"]
    assert_rows(frame, [(7, D("210.7500"), 210.75 / 7)])
    assert_rows(
        queries.revenue_per_conversion(warehouse, Filters(), "campaign"),
        [
            ("Back-to-School", 3, D("130.5000"), 43.5),
            ("Summer Sale", 3, D("75.2500"), 75.25 / 3),  # Fall Fashion: no conversions
            (None, 1, D("5.0000"), 5.0),  # unattributed, still a conversion
        ],
    )


# --- latency --------------------------------------------------------------------------------
LATENCY_COLUMNS = [
    "conversions",
    "latency_mean",
    "latency_p50",
    "latency_p90",
]


def test_conversion_latency_continuous_percentiles(warehouse: Warehouse) -> None:
    frame = queries.conversion_latency(warehouse, Filters())
    assert frame.columns == LATENCY_COLUMNS
    # [300, 300, 400, 400, 500, 900]: p50 at rank 2.5 -> 400, p90 at 4.5 -> 500 + 0.5*400
    assert_rows(frame, [(6, 2800 / 6, 400.0, 700.0)])


def test_conversion_latency_grouped(warehouse: Warehouse) -> None:
    assert_rows(
        queries.conversion_latency(warehouse, Filters(), "campaign"),
        [
            ("Back-to-School", 3, 500.0, 300.0, 780.0),  # [300, 300, 900]: 300 + 0.8*600
            ("Summer Sale", 3, 1300 / 3, 400.0, 480.0),  # [400, 400, 500]: 400 + 0.8*100
        ],  # the unknown ad's conversion has no click: not in latency
    )
    frame = queries.conversion_latency(warehouse, Filters(), "ad")
    assert frame.columns == ["ad_id", "campaign", *LATENCY_COLUMNS]
    assert_rows(
        frame,
        [
            (1001, "Back-to-School", 3, 500.0, 300.0, 780.0),
            (1002, "Summer Sale", 3, 1300 / 3, 400.0, 480.0),
        ],
    )


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        # platform is the attributed click's: z moved from Mobile (600 s) to Web (400 s)
        (Filters(platform="Web"), [(3, 1600 / 3, 400.0, 800.0)]),  # c1 c2 z
        (Filters(platform="Mobile"), [(3, 400.0, 400.0, 480.0)]),  # c3 x y
        (Filters(location="New York"), [(2, 600.0, 600.0, 840.0)]),  # c1 c2
        (Filters(gender="Female", age_band="25-34"), [(4, 400.0, 400.0, 470.0)]),  # c3 x y z
        (Filters(interest="Travel"), [(2, 600.0, 600.0, 840.0)]),
        (Filters(campaign="Summer Sale", ad_id=1002), [(3, 1300 / 3, 400.0, 480.0)]),
        # event time of the conversion: [10:00:00, 10:00:35) holds c1 c2 x
        (Filters(end=M0 + timedelta(seconds=35)), [(3, 1700 / 3, 500.0, 820.0)]),
        (Filters(start=minute(1)), [(1, 300.0, 300.0, 300.0)]),  # c3
        (Filters(start=minute(2)), []),
        (Filters(ad_id=9999), []),  # unattributed only
    ],
)
def test_conversion_latency_filters(
    warehouse: Warehouse, filters: Filters, expected: list[tuple[Any, ...]]
) -> None:
    assert_rows(queries.conversion_latency(warehouse, filters), expected)


# --- summary, series, ranges ------------------------------------------------------------------
SUMMARY_COLUMNS = [
    *COUNT_COLUMNS,
    "ctr",
    "conversion_rate",
    "revenue_per_conversion",
    "latency_mean",
    "latency_p50",
    "latency_p90",
]


def test_summary(warehouse: Warehouse) -> None:
    frame = queries.summary(warehouse, Filters())
    assert frame.columns == SUMMARY_COLUMNS
    assert_rows(
        frame,
        [(230, 24, 7, 6, D("210.7500"), 24 / 230, 0.25, 210.75 / 7, 2800 / 6, 400.0, 700.0)],
    )
    assert_rows(
        queries.summary(warehouse, Filters(platform="Mobile")),
        [(90, 13, 3, 3, D("80.7500"), 13 / 90, 3 / 13, 80.75 / 3, 400.0, 400.0, 480.0)],
    )


def test_summary_is_one_row_even_when_empty(
    warehouse: Warehouse, empty_warehouse: Warehouse
) -> None:
    nothing = (0, 0, 0, 0, D("0.0000"), None, None, None, None, None, None)
    assert_rows(queries.summary(empty_warehouse, Filters()), [nothing])
    assert_rows(queries.summary(warehouse, Filters(campaign="nope")), [nothing])


def test_timeseries(warehouse: Warehouse) -> None:
    frame = queries.timeseries(warehouse, Filters())
    assert frame.columns == ["minute", *COUNT_COLUMNS, "ctr", "conversion_rate"]
    assert_rows(
        frame,
        [
            (minute(0), 140, 18, 5, 5, D("175.2500"), 18 / 140, 5 / 18),  # A C D E
            (minute(1), 50, 5, 1, 1, D("30.5000"), 0.1, 0.2),
            (minute(2), 30, 0, 0, 0, D("0.0000"), 0.0, None),
            (minute(3), 10, 1, 1, 0, D("5.0000"), 0.1, 0.0),
        ],  # 10:04 holds only H and its retraction I
    )
    assert_rows(
        queries.timeseries(warehouse, Filters(campaign="Back-to-School", start=minute(1))),
        [(minute(1), 50, 5, 1, 1, D("30.5000"), 0.1, 0.2)],
    )


def test_data_range(warehouse: Warehouse, empty_warehouse: Warehouse) -> None:
    assert queries.data_range(warehouse) == {"first_minute": M0, "last_minute": minute(4)}
    assert queries.data_range(empty_warehouse) == {"first_minute": None, "last_minute": None}


# --- top ads --------------------------------------------------------------------------------------
TOP_COLUMNS = ["ad_id", "campaign", *COUNT_COLUMNS, "ctr", "conversion_rate"]


def test_top_ads_by_revenue(warehouse: Warehouse) -> None:
    frame = queries.top_ads(warehouse, Filters())
    assert frame.columns == TOP_COLUMNS
    assert_rows(
        frame,
        [
            (1001, "Back-to-School", 150, 15, 3, 3, D("130.5000"), 0.1, 0.2),
            (1002, "Summer Sale", 40, 8, 3, 3, D("75.2500"), 0.2, 0.375),
            (9999, None, 10, 1, 1, 0, D("5.0000"), 0.1, 0.0),
            (1003, "Fall Fashion", 30, 0, 0, 0, D("0.0000"), 0.0, None),
        ],
    )
    assert queries.top_ads(warehouse, Filters(), limit=2)["ad_id"].to_list() == [1001, 1002]
    assert queries.top_ads(warehouse, Filters(platform="Mobile"))["ad_id"].to_list() == [
        1002,  # 75.25 - 25
        1001,  # 30.5
    ]


def test_top_ads_by_conversion_rate_has_a_min_clicks_guard(warehouse: Warehouse) -> None:
    def ranked(min_clicks: int, limit: int = 10) -> list[int]:
        frame = queries.top_ads(
            warehouse, Filters(), by="conversion_rate", min_clicks=min_clicks, limit=limit
        )
        return frame["ad_id"].to_list()

    assert ranked(5) == [1002, 1001]  # 3/8 before 3/15; 9999 (1 click) and 1003 guarded
    assert ranked(10) == [1001]
    assert ranked(16) == []
    assert ranked(0) == [1002, 1001, 9999, 1003]  # no clicks: NULL rate last
    assert ranked(0, limit=1) == [1002]


def test_group_by_ad_names_the_campaign_of_the_latest_data(
    empty_warehouse: Warehouse,
) -> None:
    # Ad 1001 was renamed (a new campaign version) at 10:02.
    renamed = rollups("A", "B").vstack(
        rollups("A").with_columns(
            pl.lit(minute(2)).alias("minute"), pl.lit("Back-to-School 2").alias("campaign")
        )
    )
    output = empty_output(1)
    output.rollups = schema.conform(renamed, schema.ROLLUP_MINUTE)
    empty_warehouse.commit(output)
    assert_rows(
        queries.counts(empty_warehouse, Filters(), "ad"),
        [(1001, "Back-to-School 2", 250, 25, 5, 5, D("230.5000"))],
    )
    assert_rows(
        queries.counts(empty_warehouse, Filters(end=minute(2)), "ad"),
        [(1001, "Back-to-School", 150, 15, 3, 3, D("130.5000"))],
    )
    assert queries.counts(empty_warehouse, Filters(), "campaign")["campaign"].to_list() == [
        "Back-to-School",
        "Back-to-School 2",
    ]


# --- trending --------------------------------------------------------------------------------
def trending_rollups() -> pl.DataFrame:
    """Campaign clicks/attributed conversions per minute, 10:00 .. 10:03."""
    rows = [
        # campaign, minute, clicks, attributed
        ("X", 0, 10, 1), ("X", 1, 10, 1), ("X", 2, 10, 3), ("X", 3, 10, 3),
        ("Y", 0, 30, 9), ("Y", 3, 25, 5),
        ("Z", 1, 10, 1), ("Z", 2, 40, 20),
        ("W", -10, 100, 50),  # long before both windows
        (None, 0, 50, 1), (None, 3, 50, 40),  # unknown ads are not a campaign
        ("Q", 0, 30, 3), ("Q", 0, -30, -3),  # retracted: nothing left
    ]  # fmt: skip
    frame = pl.DataFrame(
        {
            "minute": [minute(m) for _, m, _, _ in rows],
            "ad_id": [1] * len(rows),
            "campaign": [c for c, _, _, _ in rows],
            "clicks": [k for _, _, k, _ in rows],
            "attributed_conversions": [a for _, _, _, a in rows],
            "conversions": [a for _, _, _, a in rows],
            "impressions": [0] * len(rows),
            "revenue": [0.0] * len(rows),
        }
    )
    return schema.conform(frame, schema.ROLLUP_MINUTE)


@pytest.fixture
def trending_warehouse(empty_warehouse: Warehouse) -> Warehouse:
    output = empty_output(1)
    output.rollups = trending_rollups()
    empty_warehouse.commit(output)
    return empty_warehouse


TRENDING_COLUMNS = [
    "campaign",
    "previous_clicks",
    "previous_conversions",
    "previous_rate",
    "latest_clicks",
    "latest_conversions",
    "latest_rate",
    "change",
]


def test_trending_windows_end_after_the_latest_minute(
    trending_warehouse: Warehouse, empty_warehouse: Warehouse
) -> None:
    windows = queries.trending_windows(trending_warehouse, Filters(), window_minutes=2)
    assert windows == queries.TrendingWindows(minute(0), minute(2), minute(4))
    explicit = queries.trending_windows(trending_warehouse, Filters(end=minute(9)), 3)
    assert explicit == queries.TrendingWindows(minute(3), minute(6), minute(9))


def test_trending_ranks_by_change_with_min_clicks(trending_warehouse: Warehouse) -> None:
    # previous [10:00, 10:02), latest [10:02, 10:04)
    frame = queries.trending(trending_warehouse, Filters(), window_minutes=2, min_clicks=20)
    assert frame.columns == TRENDING_COLUMNS
    assert_rows(
        frame,
        [
            ("X", 20, 2, 0.1, 20, 6, 0.3, 0.3 - 0.1),
            ("Y", 30, 9, 0.3, 25, 5, 0.2, 0.2 - 0.3),
        ],  # Z has 10 clicks before: guarded
    )
    frame = queries.trending(trending_warehouse, Filters(), window_minutes=2, min_clicks=10)
    assert frame["campaign"].to_list() == ["Z", "X", "Y"]
    assert_rows(frame.head(1), [("Z", 10, 1, 0.1, 40, 20, 0.5, 0.5 - 0.1)])
    top = queries.trending(trending_warehouse, Filters(), window_minutes=2, min_clicks=10, limit=1)
    assert top["campaign"].to_list() == ["Z"]


def test_trending_with_explicit_end_and_filters(trending_warehouse: Warehouse) -> None:
    # end 10:02: previous [09:58, 10:00) is empty, latest [10:00, 10:02)
    frame = queries.trending(
        trending_warehouse, Filters(end=minute(2)), window_minutes=2, min_clicks=0
    )
    assert_rows(
        frame,
        [
            ("X", 0, 0, None, 20, 2, 0.1, None),
            ("Y", 0, 0, None, 30, 9, 0.3, None),
            ("Z", 0, 0, None, 10, 1, 0.1, None),
        ],
    )
    assert queries.trending(
        trending_warehouse, Filters(end=minute(2)), window_minutes=2, min_clicks=1
    ).is_empty()
    only_y = queries.trending(
        trending_warehouse, Filters(campaign="Y"), window_minutes=2, min_clicks=20
    )
    assert_rows(only_y, [("Y", 30, 9, 0.3, 25, 5, 0.2, 0.2 - 0.3)])
    wide = queries.trending(trending_warehouse, Filters(), window_minutes=15, min_clicks=20)
    # previous [09:34, 09:49) holds nothing; W at 09:50 sits in the latest window
    assert wide.is_empty()


def test_trending_on_empty_warehouse(empty_warehouse: Warehouse) -> None:
    assert queries.trending_windows(empty_warehouse, Filters()) is None
    frame = queries.trending(empty_warehouse, Filters())
    assert frame.columns == TRENDING_COLUMNS
    assert frame.is_empty()


# --- pipeline status ---------------------------------------------------------------------------
def test_pipeline_status(warehouse: Warehouse) -> None:
    status = queries.pipeline_status(warehouse)
    assert set(status) == {"streams", "dead_letters", "watermarks", "last_commit"}
    streams = status["streams"]
    assert streams.columns == [
        "stream",
        "received",
        "accepted",
        "rejected",
        "duplicates",
        "late",
        "unknown_ad",
        "unknown_user",
        "min_event_time",
        "max_event_time",
        "last_committed_at",
    ]
    batch1, batch2 = datetime(2023, 9, 9, 10, 6), datetime(2023, 9, 9, 10, 7)
    assert streams.rows() == [
        ("impressions", 240, 239, 1, 0, 1, 10, 10, minute(0), minute(4), batch2),
        ("clicks", 25, 25, 0, 1, 2, 1, 0, minute(0), minute(3), batch2),
        ("conversions", 9, 7, 2, 0, 0, 1, 1, minute(0), minute(3), batch1),
    ]
    assert status["dead_letters"].rows() == [
        ("conversions", "negative_revenue", 2),
        ("impressions", "invalid_json", 1),
    ]
    marks = status["watermarks"]
    assert marks.columns == ["stream", "partition", "watermark", "max_event_time", "updated_at"]
    assert marks.select("stream", "partition", "watermark", "max_event_time").rows() == [
        ("clicks", 0, minute(3), minute(4)),
        ("clicks", 1, minute(1), minute(2)),
    ]
    assert status["last_commit"] == batch2


def test_pipeline_status_when_empty(empty_warehouse: Warehouse) -> None:
    status = queries.pipeline_status(empty_warehouse)
    assert status["streams"].select("stream", "received", "rejected").rows() == [
        ("impressions", 0, 0),
        ("clicks", 0, 0),
        ("conversions", 0, 0),
    ]
    assert status["dead_letters"].is_empty()
    assert status["watermarks"].is_empty()
    assert status["last_commit"] is None
