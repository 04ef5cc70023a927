"""Chart data: totals per time bucket, the latency histogram, breakdowns by one
dimension, and the values of the filter pickers."""

from __future__ import annotations

from typing import Any, Final, Literal, TypedDict, get_args

import polars as pl

from adpulse.metrics import LATENCY, MEASURES, RATIOS
from adpulse.serving.queries.filters import (
    AGE_BAND_LABELS,
    FilterError,
    Filters,
    KnownValues,
    check_int,
    conditions,
    where,
)
from adpulse.serving.queries.sources import NONZERO, ROLLUP_SUMS, reader, rollup_source
from adpulse.serving.store.base import ServingStore
from adpulse.storage.warehouse.base import Warehouse

Bucket = Literal["minute", "hour"]
BreakdownDimension = Literal["platform", "location", "gender", "age_band", "interest"]

#: Upper edges (seconds, exclusive) of the conversion-latency histogram buckets; the last
#: bucket is open-ended: [0, 30), [30, 60), ... [86400, inf).
LATENCY_EDGES: Final = (30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
#: The latency statistics of each time bucket.
BUCKET_STATISTICS: Final = tuple(LATENCY.statistic(n) for n in ("latency_p50", "latency_p90"))


def bucketed_timeseries(
    warehouse: Warehouse,
    filters: Filters,
    bucket: Bucket = "minute",
    *,
    store: ServingStore | None = None,
) -> pl.DataFrame:
    """Totals per minute or hour bucket, for trend charts.

    Columns: ``bucket`` (Datetime, the bucket's start), ``impressions``, ``clicks``,
    ``conversions``, ``attributed_conversions`` (Int64), ``revenue`` (Decimal 38,4),
    ``ctr``, ``conversion_rate``, ``revenue_per_conversion`` (Float64, as in the metric
    functions), ``latency_p50``, ``latency_p90`` (Float64 seconds over the attributed
    conversions with event time in the bucket; NULL when there are none). Only buckets
    with non-zero counts, in time order. Same range rules as
    :func:`~adpulse.serving.queries.timeseries`.
    """
    if bucket not in get_args(Bucket):
        raise FilterError(f"bucket must be 'minute' or 'hour'; got {bucket!r}")
    source, source_params = rollup_source(filters)
    found, params = conditions(filters, "minute")
    l_conditions, l_params = conditions(filters, LATENCY.time_column)
    l_conditions.insert(0, LATENCY.condition)
    aggregates = ", ".join(f"{expr} AS {name}" for name, expr in ROLLUP_SUMS.items())
    statistics = ", ".join(f"{s.sql(LATENCY.value)} AS {s.name}" for s in BUCKET_STATISTICS)
    columns = ", ".join(
        [
            *(f"totals.{m.name}" for m in MEASURES),
            *(f"{r.sql('totals')} AS {r.name}" for r in RATIOS),
            *(f"lat.{s.name}" for s in BUCKET_STATISTICS),
        ]
    )
    # bucket is one of two literals checked above: safe to write into the text
    sql = (
        f"WITH totals AS (SELECT date_trunc('{bucket}', minute) AS bucket, {aggregates}"
        f" FROM {source}{where(found)}"
        f" GROUP BY date_trunc('{bucket}', minute) HAVING {NONZERO}),"
        f" lat AS (SELECT date_trunc('{bucket}', event_time) AS bucket, {statistics}"
        f" FROM {LATENCY.table}{where(l_conditions)}"
        f" GROUP BY date_trunc('{bucket}', event_time))"
        f" SELECT totals.bucket, {columns}"
        " FROM totals LEFT JOIN lat ON lat.bucket = totals.bucket ORDER BY totals.bucket"
    )
    return reader(warehouse, store, filters, conversions=True).query(
        sql, [*source_params, *params, *l_params]
    )


def latency_histogram(
    warehouse: Warehouse, filters: Filters, *, store: ServingStore | None = None
) -> pl.DataFrame:
    """Conversion latency histogram over :data:`LATENCY_EDGES` (attributed conversions
    with event time in range, as :func:`~adpulse.serving.queries.conversion_latency`).

    Columns: ``low_seconds`` (Int64, inclusive), ``high_seconds`` (Int64, exclusive;
    NULL for the last, open-ended bucket), ``conversions`` (Int64). Every bucket, zeros
    included, in order.
    """
    found, params = conditions(filters, LATENCY.time_column)
    found.insert(0, LATENCY.condition)
    cases = " ".join(
        f"WHEN {LATENCY.value} < {edge} THEN {i}" for i, edge in enumerate(LATENCY_EDGES)
    )
    sql = (
        f"SELECT CASE {cases} ELSE {len(LATENCY_EDGES)} END AS bucket,"
        " CAST(COUNT(*) AS BIGINT) AS conversions"
        f" FROM {LATENCY.table}{where(found)} GROUP BY 1"
    )
    rows = reader(warehouse, store, filters, conversions=True).query(sql, params)
    found_rows = dict(rows.iter_rows())
    lows = (0, *LATENCY_EDGES)
    highs: tuple[int | None, ...] = (*LATENCY_EDGES, None)
    return pl.DataFrame(
        {
            "low_seconds": list(lows),
            "high_seconds": list(highs),
            "conversions": [int(found_rows.get(i, 0)) for i in range(len(lows))],
        },
        schema={"low_seconds": pl.Int64, "high_seconds": pl.Int64, "conversions": pl.Int64},
    )


_BREAKDOWN_COLUMNS: Final = {
    "platform": "platform",
    "location": "location",
    "gender": "gender",
    "age_band": "age_band",
    "interest": "interests",
}


def breakdown(
    warehouse: Warehouse,
    filters: Filters,
    dimension: BreakdownDimension,
    *,
    store: ServingStore | None = None,
) -> pl.DataFrame:
    """Counts and rates by one dimension value.

    Columns: ``value`` (String; NULL for unknown), ``impressions``, ``clicks``,
    ``conversions``, ``attributed_conversions``, ``revenue``, ``ctr``,
    ``conversion_rate``, ``revenue_per_conversion`` (same definitions as the metric
    functions). A conversion's platform and location are its attributed click's. For
    ``"interest"`` an event counts once under each of its user's interests (the ``;``
    list exploded), so the rows may sum to more than the total. Groups with all
    measures zero are left out; ordered by value, NULL last.
    """
    if dimension not in _BREAKDOWN_COLUMNS:
        raise FilterError(
            f"dimension must be one of {', '.join(_BREAKDOWN_COLUMNS)}; got {dimension!r}"
        )
    column = _BREAKDOWN_COLUMNS[dimension]
    audience = dimension in ("gender", "age_band", "interest")
    source, source_params = rollup_source(filters, facts=audience)
    found, params = conditions(filters, "minute")
    sums = ", ".join(f"{expr} AS {name}" for name, expr in ROLLUP_SUMS.items())
    # column comes from the fixed mapping above, never from the caller
    sql = (
        f"SELECT {column} AS value, {sums} FROM {source}{where(found)}"
        f" GROUP BY {column} HAVING {NONZERO}"
    )
    rows = reader(warehouse, store, filters, facts=audience, keys=[column])
    frame = rows.query(sql, [*source_params, *params])
    types = frame.schema
    if dimension == "interest":
        # an event counts under each of its interests: sum again per single interest
        frame = (
            frame.with_columns(pl.col("value").str.split(";"))
            .explode("value")
            .with_columns(pl.col("value").str.strip_chars())
            .with_columns(
                pl.when(pl.col("value") == "").then(None).otherwise(pl.col("value")).alias("value")
            )
            .group_by("value")
            .agg(m.sum_expr() for m in MEASURES)
        )
    frame = frame.with_columns(pl.col(m.name).cast(types[m.name]) for m in MEASURES)
    frame = frame.with_columns(r.expr() for r in RATIOS)
    if dimension == "age_band":  # youngest first ("<18" sorts after "65+" as text)
        order = {label: i for i, label in enumerate(AGE_BAND_LABELS)}
        rank = pl.col("value").replace_strict(order, default=None, return_dtype=pl.Int32)
        return frame.sort(rank, nulls_last=True)
    return frame.sort("value", nulls_last=True)


class DimensionValues(TypedDict):
    """Distinct values for filter pickers, each sorted."""

    campaigns: list[str]
    ad_ids: list[int]
    platforms: list[str]
    locations: list[str]
    genders: list[str]
    age_bands: list[str]
    interests: list[str]


def dimension_values(warehouse: Warehouse, limit: int = 10_000) -> DimensionValues:
    """Distinct campaign, ad, platform and location values with data (``rollup_minute``),
    genders and interests of the user dimension (all versions), and the age band labels; at most
    ``limit`` of each."""
    check_int("limit", limit, 1, 1_000_000)

    def distinct(column: str, table: str) -> list[Any]:
        sql = (
            f"SELECT DISTINCT {column} AS v FROM {table}"
            f" WHERE {column} IS NOT NULL ORDER BY v LIMIT ?"
        )
        return warehouse.query(sql, [limit])["v"].to_list()

    interests: set[str] = set()
    for text in distinct("interests", "dim_users"):
        interests.update(item.strip() for item in str(text).split(";") if item.strip())
    return DimensionValues(
        campaigns=distinct("campaign", "rollup_minute"),
        ad_ids=distinct("ad_id", "rollup_minute"),
        platforms=distinct("platform", "rollup_minute"),
        locations=distinct("location", "rollup_minute"),
        genders=distinct("gender", "dim_users"),
        age_bands=list(AGE_BAND_LABELS),
        interests=sorted(interests)[:limit],
    )


def known_values(warehouse: Warehouse) -> KnownValues:
    """The values the checked filters may take (:class:`KnownValues`): campaigns and ads
    with data or in the campaign dimension, platforms and locations with data, genders
    and single interests of the user dimension (all versions)."""

    def distinct(column: str, *tables: str) -> list[Any]:
        found: set[Any] = set()
        for table in tables:
            sql = f"SELECT DISTINCT {column} AS v FROM {table} WHERE {column} IS NOT NULL"
            found.update(warehouse.query(sql)["v"].to_list())
        return list(found)

    interests = {
        item.strip()
        for text in distinct("interests", "dim_users")
        for item in str(text).split(";")
        if item.strip()
    }
    return KnownValues(
        {
            "campaign": distinct("campaign", "rollup_minute", "dim_campaigns"),
            "ad_id": distinct("ad_id", "rollup_minute", "dim_campaigns"),
            "platform": distinct("platform", "rollup_minute"),
            "location": distinct("location", "rollup_minute"),
            "gender": distinct("gender", "dim_users"),
            "interest": interests,
        }
    )
