"""Rankings: trending campaigns and top ads.

The SQL of each ranking is built by one function (:func:`trending_sql`,
:func:`top_ads_sql`) that takes its variable parts as SQL text, so the query layer (bound
``?`` values) and the Grafana panels (dashboard variables and macros) run the same
statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

import polars as pl

from adpulse.metrics import (
    ATTRIBUTED_CONVERSIONS,
    CLICKS,
    CONVERSION_RATE,
    CTR,
    nonzero_sql,
)
from adpulse.serving.queries.filters import (
    INT64_MAX,
    FilterError,
    Filters,
    check_int,
    conditions,
    where,
)
from adpulse.serving.queries.sources import (
    NONZERO,
    ROLLUP_INPUTS,
    ROLLUP_SUMS,
    grouped,
    reader,
    rollup_source,
)
from adpulse.serving.queries.status import data_range
from adpulse.serving.store.base import ServingStore
from adpulse.storage.warehouse.base import Warehouse

TopAdsBy = Literal["revenue", "conversion_rate"]


@dataclass(frozen=True, slots=True)
class TrendingWindows:
    """The two windows :func:`trending` compares: ``[previous_start, latest_start)`` and
    ``[latest_start, end)``."""

    previous_start: datetime
    latest_start: datetime
    end: datetime


def trending_windows(
    warehouse: Warehouse, filters: Filters, window_minutes: int = 15
) -> TrendingWindows | None:
    """The windows of :func:`trending`; None when there is no data and no ``filters.end``.

    ``end`` is ``filters.end`` if given, else one minute after the latest minute with
    data (over all data, not just the filtered part, so "now" is the pipeline's).
    """
    check_int("window_minutes", window_minutes, 1, 7 * 24 * 60)
    end = filters.end
    if end is None:
        last = data_range(warehouse)["last_minute"]
        if last is None:
            return None
        end = last + timedelta(minutes=1)
    width = timedelta(minutes=window_minutes)
    return TrendingWindows(previous_start=end - 2 * width, latest_start=end - width, end=end)


def trending_sql(
    source: str,
    found: Sequence[str],
    *,
    previous: str,
    latest: str,
    min_clicks: str,
    limit: str,
) -> str:
    """Campaigns by the change of their conversion rate between two windows.

    ``source`` and its conditions ``found`` give the rows of both windows; ``previous``
    and ``latest`` are the conditions that pick each window's rows, ``min_clicks`` and
    ``limit`` SQL values.
    """
    rate, clicks, conversions = CONVERSION_RATE, CLICKS, ATTRIBUTED_CONVERSIONS
    return (
        "WITH windows AS (SELECT campaign,"
        f" {clicks.sum_sql(when=previous)} AS previous_clicks,"
        f" {conversions.sum_sql(when=previous)} AS previous_conversions,"
        f" {clicks.sum_sql(when=latest)} AS latest_clicks,"
        f" {conversions.sum_sql(when=latest)} AS latest_conversions"
        f" FROM {source}{where(found)} GROUP BY campaign"
        # campaigns with nothing (or only retracted data) in both windows are noise
        f" HAVING {nonzero_sql(rate.inputs)}),"
        " rates AS (SELECT campaign, previous_clicks, previous_conversions,"
        f" {rate.sql_over('previous_conversions', 'previous_clicks')} AS previous_rate,"
        " latest_clicks, latest_conversions,"
        f" {rate.sql_over('latest_conversions', 'latest_clicks')} AS latest_rate"
        f" FROM windows WHERE previous_clicks >= {min_clicks}"
        f" AND latest_clicks >= {min_clicks})"
        " SELECT *, latest_rate - previous_rate AS change FROM rates"
        f" ORDER BY change DESC NULLS LAST, campaign LIMIT {limit}"
    )


def trending(
    warehouse: Warehouse,
    filters: Filters,
    window_minutes: int = 15,
    min_clicks: int = 20,
    limit: int = 10,
    *,
    store: ServingStore | None = None,
) -> pl.DataFrame:
    """Campaigns ranked by the change of conversions per click between two windows.

    Windows: see :func:`trending_windows` (``filters.start`` is not used; the windows
    are the range). Only known campaigns with at least ``min_clicks`` clicks in both
    windows. Columns: ``campaign``, ``previous_clicks``, ``previous_conversions``,
    ``previous_rate``, ``latest_clicks``, ``latest_conversions``, ``latest_rate``,
    ``change`` (latest_rate - previous_rate; rates are attributed conversions per click,
    Float64). Ordered by ``change`` descending, then campaign; at most ``limit`` rows.
    """
    check_int("min_clicks", min_clicks, 0, INT64_MAX)
    check_int("limit", limit, 1, 10_000)
    windows = trending_windows(warehouse, filters, window_minutes)
    found, params = conditions(filters, "minute", with_time=False)
    if windows is None:
        found.append("1 = 0")  # no data at all: same columns, no rows
        bounds: list[Any] = [None, None, None]
    else:
        bounds = [windows.previous_start, windows.latest_start, windows.end]
    # the windows are the range: filters.start is not used
    source, source_params = rollup_source(filters, bounds[0], bounds[2], use_filter_range=False)
    found[:0] = ["campaign IS NOT NULL", "minute >= ?", "minute < ?"]
    sql = trending_sql(
        source, found, previous="minute < ?", latest="minute >= ?", min_clicks="?", limit="?"
    )
    latest_start = bounds[1]
    all_params = [
        latest_start,  # previous clicks
        latest_start,  # previous conversions
        latest_start,  # latest clicks
        latest_start,  # latest conversions
        *source_params,
        bounds[0],
        bounds[2],
        *params,
        min_clicks,
        min_clicks,
        limit,
    ]
    rows = reader(
        warehouse, store, filters, bounds[0], bounds[2], use_filter_range=False, keys=["campaign"]
    )
    return rows.query(sql, all_params)


def top_ads_sql(
    source: str, found: Sequence[str], by: TopAdsBy, *, min_clicks: str, limit: str
) -> str:
    """The best ads of ``source``'s rows matching ``found``; ``min_clicks`` and
    ``limit`` are SQL values."""
    ctes, _ = grouped(source, "minute", found, ROLLUP_SUMS, ROLLUP_INPUTS, "ad", NONZERO)
    ranked = (
        f"ranked AS (SELECT ad_id, campaign, {', '.join(ROLLUP_SUMS)},"
        f" {CTR.sql()} AS {CTR.name},"
        f" {CONVERSION_RATE.sql()} AS {CONVERSION_RATE.name} FROM totals)"
    )
    if by == "revenue":
        tail = f" ORDER BY revenue DESC, ad_id LIMIT {limit}"
    else:
        tail = (
            f" WHERE clicks >= {min_clicks}"
            f" ORDER BY conversion_rate DESC NULLS LAST, clicks DESC, ad_id LIMIT {limit}"
        )
    return f"WITH {ctes}, {ranked} SELECT * FROM ranked{tail}"


def top_ads(
    warehouse: Warehouse,
    filters: Filters,
    by: TopAdsBy = "revenue",
    min_clicks: int = 20,
    limit: int = 10,
    *,
    store: ServingStore | None = None,
) -> pl.DataFrame:
    """The best ads in the range, by revenue or by conversion rate.

    Columns: ``ad_id``, ``campaign`` (as of the ad's latest data), ``impressions``,
    ``clicks``, ``conversions``, ``attributed_conversions``, ``revenue``, ``ctr``,
    ``conversion_rate``. By ``"revenue"``: revenue descending; by
    ``"conversion_rate"``: only ads with at least ``min_clicks`` clicks, rate
    descending, then clicks descending. Ties by ad_id; at most ``limit`` rows.
    """
    if by not in get_args(TopAdsBy):
        raise FilterError(f"by must be 'revenue' or 'conversion_rate'; got {by!r}")
    check_int("min_clicks", min_clicks, 0, INT64_MAX)
    check_int("limit", limit, 1, 10_000)
    source, source_params = rollup_source(filters)
    found, params = conditions(filters, "minute")
    sql = top_ads_sql(source, found, by, min_clicks="?", limit="?")
    tail_params = [limit] if by == "revenue" else [min_clicks, limit]
    rows = reader(warehouse, store, filters, keys=["ad_id", "campaign"])
    return rows.query(sql, [*source_params, *params, *tail_params])
