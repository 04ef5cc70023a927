"""Where the query layer's rows come from, and how they are grouped.

- :func:`rollup_source`: ``rollup_minute``, or the facts read as one rollup-shaped row
  per event when an audience filter is set;
- :func:`reader`: the warehouse, or the serving store when it holds the range;
- :func:`grouped`: the CTEs that sum the catalog's measures per group.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, Literal, Protocol

import polars as pl

from adpulse.metrics import MEASURES, nonzero_sql
from adpulse.serving.live import live_tables
from adpulse.serving.queries.filters import (
    FilterError,
    Filters,
    ceil_minute,
    conditions,
    where,
)
from adpulse.serving.store.base import ServingStore
from adpulse.storage.warehouse.base import Warehouse
from adpulse.storage.warehouse.schema import FACT_TABLES

GroupBy = Literal["ad", "campaign"] | None

#: Every measure of the catalog summed over a group, by column name.
ROLLUP_SUMS: Final = {m.name: m.sum_sql() for m in MEASURES}
ROLLUP_INPUTS: Final = tuple(ROLLUP_SUMS)
#: The zero-group rule of rows showing every measure (counts, charts): keep a group when
#: any measure sums to non-zero. Float latency sums are left out: retracted +x/-x pairs
#: may not cancel exactly in floating point.
NONZERO: Final = nonzero_sql(ROLLUP_INPUTS)
#: ``latency_sum_seconds`` of one fact row (no view reads it; kept for the row's shape).
_FACT_LATENCY_SUM: Final = {"fact_conversions": "COALESCE(latency_seconds, 0)"}


def fact_branch(table: str, where_sql: str) -> str:
    """One rollup-shaped row per row of fact ``table``: the catalog's measures of it."""
    measures = "".join(f" CAST({m.fact_sql(table)} AS {m.sql_type}) AS {m.name}," for m in MEASURES)
    latency = _FACT_LATENCY_SUM.get(table, "0")
    return (
        "SELECT date_trunc('minute', event_time) AS minute, ad_id, campaign, platform,"
        f" location, gender, age_band, interests,{measures}"
        f" CAST({latency} AS DOUBLE PRECISION) AS latency_sum_seconds"
        f" FROM {table}{where_sql}"
    )


def rollup_source(
    filters: Filters,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    use_filter_range: bool = True,
    facts: bool = False,
) -> tuple[str, list[Any]]:
    """The FROM source of rollup-shaped rows for ``filters`` and its bound values.

    ``rollup_minute`` unless an audience filter (gender, age band, interest) is set: the
    rollups are keyed by minute, ad, campaign, platform and location only, so audience
    filters read the facts, one row per event shaped like a rollup row (a conversion
    counts in the minute of its event time, with its attributed click's platform and
    location, as in the rollups). The caller still applies every filter to the rows;
    the ones pushed into each branch here only make the scan smaller. Time bounds are
    pushed as ``event_time`` ranges equivalent to ``start <= minute < end``: ``start``
    and ``end`` if given, else the filters' (with ``use_filter_range``). ``facts``
    reads the facts even without an audience filter (to group by an audience column).
    """
    if not facts and not filters.has_audience:
        return "rollup_minute", []
    if use_filter_range:
        start = filters.start if start is None else start
        end = filters.end if end is None else end
    found, params = conditions(filters, "event_time", with_time=False)
    # date_trunc(event_time) >= start  <=>  event_time >= ceil(start); the same for < end.
    for bound, operator in ((start, ">="), (end, "<")):
        aligned = None if bound is None else ceil_minute(bound)
        if aligned is not None:
            found.append(f"event_time {operator} ?")
            params.append(aligned)
    where_sql = where(found)
    union = " UNION ALL ".join(fact_branch(table, where_sql) for table in FACT_TABLES)
    return f"({union}) AS facts_as_rollup", params * len(FACT_TABLES)


class Reader(Protocol):
    """What answers a query's SQL: the warehouse or the serving store's rows."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame: ...


def reader(
    warehouse: Warehouse,
    store: ServingStore | None,
    filters: Filters,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    use_filter_range: bool = True,
    facts: bool = False,
    keys: Sequence[str] = (),
    conversions: bool = False,
) -> Reader:
    """Where a live view reads its rows: the serving store or the warehouse.

    The serving ``store``, when one is given (the process keeps one, see
    :mod:`adpulse.runtime`) and it is ready and holds every minute of the range
    (``start``/``end`` as in :func:`rollup_source`), and the view reads no audience
    column (``facts``, audience filters): the store keeps none. Otherwise, and whenever
    the store cannot be read, the warehouse. An open start is never the store's (the
    warehouse holds older data). ``keys``: the rollup key columns the view groups by;
    with the filtered ones, the store may sum over the rest. ``conversions``: the view
    reads ``fact_conversions`` (latency); other views leave the store's conversions
    unread, most of what a wide range costs.
    """
    if facts or store is None or filters.has_audience:
        return warehouse
    if use_filter_range:
        start = filters.start if start is None else start
        end = filters.end if end is None else end
    if start is None:
        return warehouse
    # Whole minutes that cover the range: latency compares event_time, not the minute.
    first = start.replace(second=0, microsecond=0)
    last = None if end is None else ceil_minute(end)
    filtered = [c for c in ("ad_id", "campaign", "platform", "location") if getattr(filters, c)]
    columns = frozenset([*keys, *filtered])
    return live_tables(store, first, last, columns, conversions=conversions) or warehouse


def grouped(
    table: str,
    time_column: str,
    found: Sequence[str],
    measures: dict[str, str],
    inputs: Sequence[str],
    group_by: GroupBy,
    having: str,
) -> tuple[str, list[str]]:
    """CTEs ending in ``totals`` (group keys + measures) and the names of the key columns.

    ``found``: the WHERE conditions; ``inputs``: the columns of ``table`` that
    ``measures`` and ``having`` read.

    Grouping by ad shows the ad's campaign as of its latest data in the range (an ad can
    move between campaigns, and one row per ad is what rankings need).
    """
    aggregates = ", ".join(f"{expr} AS {name}" for name, expr in measures.items())
    having_sql = f" HAVING {having}" if having else ""
    # Only the columns used: engines may materialise a CTE that is read twice.
    needed = ", ".join(dict.fromkeys(["ad_id", "campaign", time_column, *inputs]))
    filtered = f"filtered AS (SELECT {needed} FROM {table}{where(found)})"
    if group_by is None:
        return f"{filtered}, totals AS (SELECT {aggregates} FROM filtered{having_sql})", []
    if group_by == "campaign":
        totals = (
            f"totals AS (SELECT campaign, {aggregates} FROM filtered GROUP BY campaign{having_sql})"
        )
        return f"{filtered}, {totals}", ["campaign"]
    if group_by == "ad":
        names = (
            "ad_names AS (SELECT ad_id, campaign, ROW_NUMBER() OVER (PARTITION BY ad_id"
            f" ORDER BY MAX({time_column}) DESC, campaign NULLS LAST) AS rank_in_ad"
            " FROM filtered GROUP BY ad_id, campaign)"
        )
        per_ad = f"per_ad AS (SELECT ad_id, {aggregates} FROM filtered GROUP BY ad_id{having_sql})"
        columns = ", ".join(f"per_ad.{name}" for name in measures)
        totals = (
            f"totals AS (SELECT per_ad.ad_id, ad_names.campaign, {columns} FROM per_ad"
            " LEFT JOIN ad_names ON ad_names.ad_id = per_ad.ad_id AND ad_names.rank_in_ad = 1)"
        )
        return f"{filtered}, {names}, {per_ad}, {totals}", ["ad_id", "campaign"]
    raise FilterError(f"group_by must be None, 'ad' or 'campaign'; got {group_by!r}")


def order(keys: Sequence[str]) -> str:
    """`` ORDER BY`` the group keys, NULL (unknown) last; by ad id alone for ads."""
    if not keys:
        return ""
    if keys[0] == "ad_id":
        return " ORDER BY ad_id"
    return " ORDER BY " + ", ".join(f"{k} NULLS LAST" for k in keys)
