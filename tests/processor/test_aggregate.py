"""Aggregate step alone: partial minute rollups per minute x ad x campaign x platform x
location, exact revenue sums, and the negative rows that retract a re-attribution."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import polars as pl

from adpulse.processor.steps.aggregate import combine, conversion_rollup, engagement_rollup
from adpulse.storage.warehouse.schema import REVENUE, REVENUE_SUM, ROLLUP_MINUTE

M0 = datetime(2024, 1, 1, 10, 0)
M1 = M0 + timedelta(minutes=1)
LAST_US = M0 + timedelta(seconds=59, microseconds=999_999)  # 10:00:59.999999

Key = tuple[datetime, int | None, str | None, str | None, str | None]


def engagements(*rows: tuple[datetime, int, str | None, str, str]) -> pl.DataFrame:
    """Impressions or clicks ``(event_time, ad_id, campaign, platform, location)``."""
    return pl.DataFrame(
        rows,
        schema={
            "event_time": pl.Datetime("us"),
            "ad_id": pl.Int64,
            "campaign": pl.String,
            "platform": pl.String,
            "location": pl.String,
        },
        orient="row",
    )


def conversions(
    *rows: tuple[datetime, str, datetime | None, float | None, str | None, str | None],
) -> pl.DataFrame:
    """Attributed conversions of ad 1, campaign "C":
    ``(event_time, revenue, click_time, latency_seconds, platform, location)``."""
    return pl.DataFrame(
        {
            "event_time": [r[0] for r in rows],
            "ad_id": [1] * len(rows),
            "campaign": ["C"] * len(rows),
            "revenue": pl.Series([Decimal(r[1]) for r in rows], dtype=REVENUE),
            "click_time": [r[2] for r in rows],
            "latency_seconds": [r[3] for r in rows],
            "platform": [r[4] for r in rows],
            "location": [r[5] for r in rows],
        },
        schema_overrides={
            "event_time": pl.Datetime("us"),
            "click_time": pl.Datetime("us"),
            "latency_seconds": pl.Float64,
            "platform": pl.String,
            "location": pl.String,
        },
    )


def by_key(rollup: pl.DataFrame, *measures: str) -> dict[Key, tuple[object, ...]]:
    """{(minute, ad, campaign, platform, location): measures}; rollup rows have no order."""
    assert rollup.schema == pl.Schema(ROLLUP_MINUTE)
    key = ("minute", "ad_id", "campaign", "platform", "location")
    out: dict[Key, tuple[object, ...]] = {
        (r[0], r[1], r[2], r[3], r[4]): r[5:] for r in rollup.select(*key, *measures).iter_rows()
    }
    assert len(out) == rollup.height, "one row per key"
    return out


def test_events_fall_in_the_minute_of_their_event_time() -> None:
    rows = engagements(
        (M0, 1, "C", "Web", "X"),
        (LAST_US, 1, "C", "Web", "X"),  # still 10:00
        (M1, 1, "C", "Web", "X"),  # the next minute
        (M0 - timedelta(microseconds=1), 1, "C", "Web", "X"),  # 09:59
    )
    assert by_key(engagement_rollup(rows, "impressions"), "impressions", "clicks") == {
        (M0 - timedelta(minutes=1), 1, "C", "Web", "X"): (1, None),
        (M0, 1, "C", "Web", "X"): (2, None),
        (M1, 1, "C", "Web", "X"): (1, None),
    }


def test_one_row_per_minute_ad_campaign_platform_and_location() -> None:
    rows = engagements(
        (M0, 1, "C", "Web", "X"),
        (M0, 1, "C", "Web", "X"),
        (M0, 2, "C", "Web", "X"),  # another ad
        (M0, 1, "D", "Web", "X"),  # another campaign (a new version of ad 1)
        (M0, 1, "C", "iOS", "X"),  # another platform
        (M0, 1, "C", "Web", "Y"),  # another location
        (M0, 3, None, "Web", "X"),  # unknown ad: no campaign, still counted
        (M0, 3, None, "Web", "X"),
    )
    assert by_key(engagement_rollup(rows, "clicks"), "clicks") == {
        (M0, 1, "C", "Web", "X"): (2,),
        (M0, 2, "C", "Web", "X"): (1,),
        (M0, 1, "D", "Web", "X"): (1,),
        (M0, 1, "C", "iOS", "X"): (1,),
        (M0, 1, "C", "Web", "Y"): (1,),
        (M0, 3, None, "Web", "X"): (2,),
    }


def test_conversion_sums_under_the_attributed_clicks_platform_and_location() -> None:
    click = M0 - timedelta(minutes=5)
    rows = conversions(
        (M0, "10.5", click, 300.0, "Web", "X"),
        (LAST_US, "4.25", click, 359.999999, "Web", "X"),
        (M0 + timedelta(seconds=1), "1", None, None, None, None),  # unattributed
        (M0 + timedelta(seconds=2), "2", None, None, None, None),
        (M1, "7", M1 - timedelta(seconds=30), 30.0, "iOS", "Y"),
    )
    measures = ("conversions", "attributed_conversions", "revenue", "latency_sum_seconds")
    assert by_key(conversion_rollup(rows), *measures) == {
        # 10.5 + 4.25 = 14.75; 300 + 359.999999 = 659.999999
        (M0, 1, "C", "Web", "X"): (2, 2, Decimal("14.7500"), 659.999999),
        # unattributed: no platform or location, and no latency to add
        (M0, 1, "C", None, None): (2, 0, Decimal("3.0000"), 0.0),
        (M1, 1, "C", "iOS", "Y"): (1, 1, Decimal("7.0000"), 30.0),
    }


def test_revenue_sums_are_exact_decimals() -> None:
    # Floats would give 0.1 + 0.2 = 0.30000000000000004, and past ~16 significant digits
    # lose the last cents: 1,000 x 999,999,999.9999 + 3 x 0.0001 = 999,999,999,999.9003
    # exactly, which a float sum ends as ...9002. DECIMAL(38,4) keeps both exactly.
    small = conversions(*((M0, r, None, None, None, None) for r in ("0.1", "0.1", "0.2")))
    top = "999999999.9999"  # the largest revenue validate accepts, to the cent
    big = conversions(*((M1, r, None, None, None, None) for r in [top] * 1000 + ["0.0001"] * 3))
    rollup = combine([conversion_rollup(small), conversion_rollup(big)])
    assert rollup.schema["revenue"] == REVENUE_SUM
    assert by_key(rollup, "revenue") == {
        (M0, 1, "C", None, None): (Decimal("0.4000"),),
        (M1, 1, "C", None, None): (Decimal("999999999999.9003"),),
    }


def test_combine_sums_the_parts_of_a_key_and_fills_every_measure() -> None:
    impressions = engagement_rollup(
        engagements((M0, 1, "C", "Web", "X"), (M0, 1, "C", "Web", "X"), (M1, 2, "C", "Web", "X")),
        "impressions",
    )
    clicks = engagement_rollup(engagements((M0, 1, "C", "Web", "X")), "clicks")
    convs = conversion_rollup(conversions((LAST_US, "3.5", M0, 59.999999, "Web", "X")))
    rollup = combine([impressions, clicks, convs, pl.DataFrame(schema=ROLLUP_MINUTE)])
    measures = tuple(
        c for c in ROLLUP_MINUTE if c not in ("minute", "ad_id", "campaign", "platform", "location")
    )
    assert by_key(rollup, *measures) == {
        (M0, 1, "C", "Web", "X"): (2, 1, 1, 1, Decimal("3.5000"), 59.999999),
        # a key with impressions only: zeros, not NULLs
        (M1, 2, "C", "Web", "X"): (1, 0, 0, 0, Decimal("0.0000"), 0.0),
    }


def test_a_single_part_is_filled_too() -> None:
    rollup = combine([engagement_rollup(engagements((M0, 1, "C", "Web", "X")), "clicks")])
    assert rollup.row(0) == (M0, 1, "C", "Web", "X", 0, 1, 0, 0, Decimal("0.0000"), 0.0)


def test_empty_batches() -> None:
    empty = engagements()
    assert engagement_rollup(empty, "impressions").schema == pl.Schema(ROLLUP_MINUTE)
    assert conversion_rollup(conversions()).height == 0
    assert combine([]).schema == pl.Schema(ROLLUP_MINUTE)
    assert combine([engagement_rollup(empty, "clicks")]).height == 0


def test_a_reattribution_retracts_the_old_contribution_and_adds_the_new() -> None:
    # Batch 1: the conversion is attributed to a Web click 30 min before (1800 s).
    # Batch 2: a later iOS click arrives late (5 min before, 300 s): the step emits -1 for
    # the old attribution and +1 for the new. Summed over both batches, the rollup equals
    # the rollup of the conversion as it now stands.
    old = conversions((M0, "12.34", M0 - timedelta(minutes=30), 1800.0, "Web", "X"))
    new = conversions((M0, "12.34", M0 - timedelta(minutes=5), 300.0, "iOS", "Y"))
    batch1 = combine([conversion_rollup(old)])
    batch2 = combine([conversion_rollup(old, sign=-1), conversion_rollup(new, sign=1)])
    measures = ("conversions", "attributed_conversions", "revenue", "latency_sum_seconds")
    assert by_key(batch2, *measures) == {
        (M0, 1, "C", "Web", "X"): (-1, -1, Decimal("-12.3400"), -1800.0),
        (M0, 1, "C", "iOS", "Y"): (1, 1, Decimal("12.3400"), 300.0),
    }
    total = combine([batch1, batch2])
    assert by_key(total, *measures) == {
        (M0, 1, "C", "Web", "X"): (0, 0, Decimal("0.0000"), 0.0),
        (M0, 1, "C", "iOS", "Y"): (1, 1, Decimal("12.3400"), 300.0),
    }
    current = combine([conversion_rollup(new)])
    assert by_key(total.filter(pl.col("conversions") != 0), *measures) == by_key(current, *measures)


def test_retracting_an_unattributed_conversion() -> None:
    # unattributed -> attributed: the row without platform loses its conversion, the
    # click's row gains an attributed one
    old = conversions((M0, "5", None, None, None, None))
    new = conversions((M0, "5", M0 - timedelta(seconds=90), 90.0, "Web", "X"))
    rollup = combine([conversion_rollup(old, sign=-1), conversion_rollup(new)])
    measures = ("conversions", "attributed_conversions", "revenue", "latency_sum_seconds")
    assert by_key(rollup, *measures) == {
        (M0, 1, "C", None, None): (-1, 0, Decimal("-5.0000"), 0.0),
        (M0, 1, "C", "Web", "X"): (1, 1, Decimal("5.0000"), 90.0),
    }
