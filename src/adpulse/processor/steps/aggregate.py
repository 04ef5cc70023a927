"""Step 6, aggregate: this batch's minute rollup rows (partial sums, appended).

Keys: minute of event time, ad, campaign, platform and location (audience columns are
left to the facts). A conversion's platform and location are those of its attributed click.
Re-attributions contribute a negative row for the old attribution and a positive one
for the new, so rollups always equal an aggregation over the current facts.
"""

from __future__ import annotations

import polars as pl

from adpulse.storage.warehouse.schema import REVENUE_SUM, ROLLUP_KEY, ROLLUP_MINUTE, conform

_KEY = list(ROLLUP_KEY)
_ZERO_DEC = pl.lit(0).cast(REVENUE_SUM)


def _keyed(rows: pl.DataFrame) -> pl.DataFrame:
    return rows.with_columns(minute=pl.col("event_time").dt.truncate("1m"))


def engagement_rollup(rows: pl.DataFrame, measure: str) -> pl.DataFrame:
    """Count impressions or clicks per rollup key."""
    if rows.height == 0:
        return pl.DataFrame(schema=ROLLUP_MINUTE)
    return conform(
        _keyed(rows).group_by(_KEY).agg(pl.len().cast(pl.Int64).alias(measure)), ROLLUP_MINUTE
    )


def conversion_rollup(rows: pl.DataFrame, sign: int = 1) -> pl.DataFrame:
    """Conversions, attributed conversions, revenue and latency sum per rollup key."""
    if rows.height == 0:
        return pl.DataFrame(schema=ROLLUP_MINUTE)
    s = pl.lit(sign, dtype=pl.Int64)
    return conform(
        _keyed(rows)
        .group_by(_KEY)
        .agg(
            conversions=pl.len().cast(pl.Int64) * s,
            attributed_conversions=pl.col("click_time").is_not_null().sum().cast(pl.Int64) * s,
            # summed as REVENUE_SUM: wide enough for any number of accepted records
            revenue=pl.col("revenue").cast(REVENUE_SUM).sum() * s,
            latency_sum_seconds=pl.col("latency_seconds").sum() * sign,
        ),
        ROLLUP_MINUTE,
    )


def combine(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Sum partial rollups of one batch into one row per key."""
    parts = [p for p in parts if p.height]
    if not parts:
        return pl.DataFrame(schema=ROLLUP_MINUTE)
    merged = (
        parts[0]
        if len(parts) == 1
        else (
            pl.concat(parts)
            .group_by(_KEY)
            .agg(
                pl.col("impressions").sum(),
                pl.col("clicks").sum(),
                pl.col("conversions").sum(),
                pl.col("attributed_conversions").sum(),
                pl.col("revenue").sum(),
                pl.col("latency_sum_seconds").sum(),
            )
        )
    )
    # Every measure is a number (0, not NULL), whatever the batch held: a rollup row then
    # reads the same however the records were cut into batches.
    return conform(merged, ROLLUP_MINUTE).with_columns(
        *(
            pl.col(c).fill_null(0)
            for c in ("impressions", "clicks", "conversions", "attributed_conversions")
        ),
        pl.col("revenue").fill_null(_ZERO_DEC),
        pl.col("latency_sum_seconds").fill_null(0.0),
    )
