"""Step 5, attribute: each conversion to the last click by the same user on the same ad at
or before the conversion, within the lookback. Latency = conversion time - click time.

Out of order data is handled both ways:
- a conversion is attributed on arrival against every click seen so far;
- a click arriving after a conversion it precedes re-attributes that conversion if it
  is a later click than the current one, as long as the conversion is *open* (a click
  at or before it can still arrive within the allowed lateness). Re-attributions become
  a warehouse UPDATE and rollup corrections (minus the old, plus the new contribution).

Ties between clicks at the same time are broken by the larger click ``event_id``, so the
result does not depend on arrival order.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from adpulse.processor.state import FrameState

_ATTRIBUTED = ("click_event_id", "click_time", "latency_seconds", "platform", "location")


def _best_clicks(
    conversions: pl.DataFrame, clicks: pl.DataFrame, lookback: timedelta
) -> pl.DataFrame:
    """Per conversion ``event_id``: the best click among ``clicks`` (may be absent)."""
    if conversions.height == 0 or clicks.height == 0:
        return pl.DataFrame(
            schema={
                "event_id": pl.String,
                "click_event_id": pl.String,
                "click_time": pl.Datetime("us"),
                "platform": pl.String,
                "location": pl.String,
            }
        )
    candidates = clicks.filter(pl.col("user_id").is_in(conversions["user_id"].implode()))
    return (
        conversions.select("event_id", "user_id", "ad_id", conv_time="event_time")
        .join(
            candidates.select(
                "user_id",
                "ad_id",
                "platform",
                "location",
                click_time="event_time",
                click_event_id="event_id",
            ),
            on=["user_id", "ad_id"],
        )
        .filter(
            (pl.col("click_time") <= pl.col("conv_time"))
            & (pl.col("click_time") >= pl.col("conv_time") - lookback)
        )
        .sort("click_time", "click_event_id")
        .group_by("event_id")
        .last()
        .select("event_id", "click_event_id", "click_time", "platform", "location")
    )


def attribute_conversions(
    conversions: pl.DataFrame, clicks: FrameState, lookback: timedelta
) -> pl.DataFrame:
    """Add the attributed click columns to new conversions (NULL when none)."""
    state = clicks.frame()
    best = _best_clicks(conversions, state if state is not None else pl.DataFrame(), lookback)
    base = conversions.drop([c for c in ("platform", "location") if c in conversions.columns])
    return base.join(best, on="event_id", how="left", maintain_order="left").with_columns(
        latency_seconds=(pl.col("event_time") - pl.col("click_time")).dt.total_microseconds() / 1e6
    )


def reattribute(
    new_clicks: pl.DataFrame, open_conversions: FrameState, lookback: timedelta
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Re-attribute open conversions that a newly arrived click beats.

    Returns ``(old, new)``: the changed conversions with their previous and their new
    attribution (same rows, same order).
    """
    opened = open_conversions.frame()
    if opened is None or new_clicks.height == 0:
        empty = pl.DataFrame(schema=dict.fromkeys(open_conversions.columns, pl.Null))
        return empty, empty
    affected = opened.filter(
        pl.struct("user_id", "ad_id").is_in(
            new_clicks.select(pl.struct("user_id", "ad_id")).to_series().implode()
        )
    )
    if affected.height == 0:
        return affected, affected
    best = _best_clicks(affected, new_clicks, lookback)
    better = affected.join(best, on="event_id", suffix="_new").filter(
        pl.col("click_time").is_null()
        | (pl.col("click_time_new") > pl.col("click_time"))
        | (
            (pl.col("click_time_new") == pl.col("click_time"))
            & (pl.col("click_event_id_new") > pl.col("click_event_id"))
        )
    )
    if better.height == 0:
        return better.select(affected.columns), better.select(affected.columns)
    old = better.select(affected.columns)
    new = better.with_columns(
        click_event_id=pl.col("click_event_id_new"),
        click_time=pl.col("click_time_new"),
        platform=pl.col("platform_new"),
        location=pl.col("location_new"),
        latency_seconds=(pl.col("event_time") - pl.col("click_time_new")).dt.total_microseconds()
        / 1e6,
    ).select(affected.columns)
    rest = opened.filter(~pl.col("event_id").is_in(new["event_id"].implode()))
    open_conversions.replace(pl.concat([rest, new]))
    return old, new
