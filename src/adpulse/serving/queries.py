"""The one query layer: every number the CLI, the HTTP API and the dashboard show.

Each function takes a :class:`~adpulse.storage.warehouse.base.Warehouse`, a
:class:`Filters` and, where it makes sense, a :data:`GroupBy`, and returns a Polars
frame whose columns are documented on the function. The SQL is built here, once, in the
portable subset every warehouse speaks (DuckDB, PostgreSQL, Redshift): ``?``
placeholders with every filter value bound, never formatted into the text; ratios as
``CAST(... AS DOUBLE PRECISION) / NULLIF(..., 0)``; ``percentile_cont(f) WITHIN GROUP``;
interests matched with ``POSITION`` instead of array functions.

Sources:

- counts and rates come from ``rollup_minute``: append-only partial rows (a retraction
  is a negative row), so every read SUMs over the key. A group is dropped when the
  measures its metric reads all sum to zero (it has nothing to show, or only ever held
  retracted data): for :func:`counts` all of them, for :func:`ctr` impressions and
  clicks, for :func:`conversion_rate` clicks and attributed conversions, for
  :func:`revenue_per_conversion` conversions and revenue;
- except when an audience filter (gender, age band, interest) is set: ``rollup_minute``
  is keyed by minute, ad, campaign, platform and location only, so those counts and
  rates come from the fact tables, read as one rollup-shaped row per event
  (:func:`_source`). Both give the same numbers, since the rollups are an aggregation
  of the current facts;
- latency comes from ``fact_conversions`` (percentiles need the individual values);
- live views (every metric, ranking and chart below except the status and picker
  values) read a serving store instead of the warehouse when the warehouse handed in is
  a :class:`~adpulse.serving.live.LiveWarehouse` whose store holds the whole range and
  no audience filter is set (:func:`_reader`). The store holds the same rows at the same
  grain (summed rollup rows and the conversions of its last 24 h), and the same SQL runs
  over them, so the numbers are the same.

Time ranges are half-open, ``[start, end)``, and minute-aligned for rollups: a minute
bucket belongs to the range when ``start <= minute < end``, so a start of 10:00:30
excludes the 10:00 bucket and an end of 10:05:30 includes the 10:05 one. Pass whole
minutes to get what you mean. Fact-based metrics (latency) compare ``event_time``
itself, which agrees with the buckets for minute-aligned ranges.

Dimensions (campaign, gender, age band, interests) are the versions in effect at each
event's time, already stored with the facts (the campaign with the rollups too); an
unknown ad or user has NULL there, so it matches no dimension filter and forms its own
NULL group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, Protocol, TypedDict, get_args

import polars as pl

from adpulse.contracts import AGE_BANDS, Stream
from adpulse.serving.live import LiveWarehouse
from adpulse.storage.warehouse.base import Warehouse

GroupBy = Literal["ad", "campaign"] | None
TopAdsBy = Literal["revenue", "conversion_rate"]

#: Longest accepted text filter value; longer ones are certainly not real values.
MAX_FILTER_LENGTH: Final = 200
AGE_BAND_LABELS: Final = tuple(label for _, _, label in AGE_BANDS)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class FilterError(ValueError):
    """A filter or option value that cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Filters:
    """What to count: every field is optional, and given fields must all match.

    ``start``/``end`` bound event time, ``[start, end)``; naive datetimes are UTC,
    aware ones are converted to UTC. ``interest`` matches a row when it is one of the
    row's ``;``-separated interests. ``age_band`` is one of :data:`AGE_BAND_LABELS`.
    Values are checked on construction (:class:`FilterError`).
    """

    campaign: str | None = None
    ad_id: int | None = None
    start: datetime | None = None
    end: datetime | None = None
    platform: str | None = None
    location: str | None = None
    gender: str | None = None
    age_band: str | None = None
    interest: str | None = None

    def __post_init__(self) -> None:
        for name in ("campaign", "platform", "location", "gender", "age_band", "interest"):
            _check_text(name, getattr(self, name))
        if self.ad_id is not None and (
            isinstance(self.ad_id, bool)
            or not isinstance(self.ad_id, int)
            or not _INT64_MIN <= self.ad_id <= _INT64_MAX
        ):
            raise FilterError(f"ad_id must be a 64-bit integer, got {self.ad_id!r}")
        if self.age_band is not None and self.age_band not in AGE_BAND_LABELS:
            raise FilterError(
                f"age_band must be one of {', '.join(AGE_BAND_LABELS)}; got {self.age_band!r}"
            )
        if self.interest is not None and ";" in self.interest:
            raise FilterError("interest is a single interest; it cannot contain ';'")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, datetime):
                raise FilterError(f"{name} must be a datetime, got {type(value).__name__}")
            if value.tzinfo is not None:
                # frozen: normalise once here so SQL always gets naive UTC like the tables
                object.__setattr__(self, name, value.astimezone(UTC).replace(tzinfo=None))
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise FilterError(f"start ({self.start}) must be before end ({self.end})")


def _check_text(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise FilterError(f"{name} must be text, got {type(value).__name__}")
    if not value:
        raise FilterError(f"{name} must not be empty (leave it out to match everything)")
    if len(value) > MAX_FILTER_LENGTH:
        raise FilterError(f"{name} is {len(value)} characters long; at most {MAX_FILTER_LENGTH}")
    if any(ord(c) < 32 for c in value):
        # No stored value holds control characters, and PostgreSQL rejects NUL outright.
        raise FilterError(f"{name} must not contain control characters")


# --- SQL building ------------------------------------------------------------------------
#: Rollup measures, summed and cast back to their stored types (SUM widens them).
_ROLLUP_SUMS: Final = {
    "impressions": "CAST(COALESCE(SUM(impressions), 0) AS BIGINT)",
    "clicks": "CAST(COALESCE(SUM(clicks), 0) AS BIGINT)",
    "conversions": "CAST(COALESCE(SUM(conversions), 0) AS BIGINT)",
    "attributed_conversions": "CAST(COALESCE(SUM(attributed_conversions), 0) AS BIGINT)",
    "revenue": "CAST(COALESCE(SUM(revenue), 0) AS DECIMAL(38,4))",
}
_ROLLUP_INPUTS: Final = tuple(_ROLLUP_SUMS)


def _nonzero(*columns: str) -> str:
    """HAVING condition: some of ``columns`` sums to non-zero (else the group is noise)."""
    return " OR ".join(f"COALESCE(SUM({c}), 0) <> 0" for c in columns)


#: counts() keeps a group when any of these sums is non-zero. Float latency sums are left
#: out: retracted +x/-x pairs may not cancel exactly in floating point.
_NONZERO: Final = _nonzero(
    "impressions", "clicks", "conversions", "attributed_conversions", "revenue"
)
_LATENCY: Final = {
    "conversions": "CAST(COUNT(*) AS BIGINT)",
    "latency_mean": "AVG(latency_seconds)",
    "latency_p50": "percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_seconds)",
    "latency_p90": "percentile_cont(0.9) WITHIN GROUP (ORDER BY latency_seconds)",
}


def _ratio(numerator: str, denominator: str) -> str:
    """numerator / denominator as a float, NULL when the denominator is 0."""
    return f"CAST({numerator} AS DOUBLE PRECISION) / NULLIF({denominator}, 0)"


def _conditions(
    filters: Filters, time_column: str, *, with_time: bool = True
) -> tuple[list[str], list[Any]]:
    """WHERE conditions and their bound values for ``filters`` (columns as in facts/rollups)."""
    conditions: list[str] = []
    params: list[Any] = []
    for column in ("campaign", "ad_id", "platform", "location", "gender", "age_band"):
        value = getattr(filters, column)
        if value is not None:
            conditions.append(f"{column} = ?")
            params.append(value)
    if filters.interest is not None:
        # ';a;b;' contains ';a;' exactly when a is one of the items: portable, no arrays.
        conditions.append("POSITION(? IN ';' || interests || ';') > 0")
        params.append(f";{filters.interest};")
    if with_time and filters.start is not None:
        conditions.append(f"{time_column} >= ?")
        params.append(filters.start)
    if with_time and filters.end is not None:
        conditions.append(f"{time_column} < ?")
        params.append(filters.end)
    return conditions, params


def _where(conditions: Sequence[str]) -> str:
    return " WHERE " + " AND ".join(conditions) if conditions else ""


#: Filters on audience columns, which ``rollup_minute`` does not keep.
_AUDIENCE_FILTERS: Final = ("gender", "age_band", "interest")
#: One rollup-shaped row per fact: the rollup measures of one event, by fact table.
_FACT_MEASURES: Final = {
    "fact_impressions": (1, 0, 0, "0", "0", "0"),
    "fact_clicks": (0, 1, 0, "0", "0", "0"),
    "fact_conversions": (
        0,
        0,
        1,
        "CASE WHEN click_time IS NOT NULL THEN 1 ELSE 0 END",
        "revenue",
        "COALESCE(latency_seconds, 0)",
    ),
}


def _fact_branch(table: str, where: str) -> str:
    impressions, clicks, conversions, attributed, revenue, latency = _FACT_MEASURES[table]
    return (
        "SELECT date_trunc('minute', event_time) AS minute, ad_id, campaign, platform,"
        " location, gender, age_band, interests,"
        f" CAST({impressions} AS BIGINT) AS impressions,"
        f" CAST({clicks} AS BIGINT) AS clicks,"
        f" CAST({conversions} AS BIGINT) AS conversions,"
        f" CAST({attributed} AS BIGINT) AS attributed_conversions,"
        f" CAST({revenue} AS DECIMAL(38,4)) AS revenue,"
        f" CAST({latency} AS DOUBLE PRECISION) AS latency_sum_seconds"
        f" FROM {table}{where}"
    )


def _ceil_minute(value: datetime) -> datetime | None:
    """The first whole minute at or after ``value``; None when it is out of range."""
    floor = value.replace(second=0, microsecond=0)
    if floor == value:
        return floor
    try:
        return floor + timedelta(minutes=1)
    except OverflowError:
        return None


def minute_aligned(filters: Filters) -> Filters:
    """``filters`` with ``start`` and ``end`` rounded up to whole minutes.

    The minute rollups read a range this way already (a bucket is in ``[start, end)``
    exactly when it is in ``[ceil(start), ceil(end))``), so rollup-based results are
    unchanged; fact-based latency then counts the same minutes as the buckets. The HTTP
    API aligns every range, so that requests with ``to=now`` in the same minute ask the
    same question (and share one cached answer). Returned unchanged when rounding would
    leave an empty range (both bounds in one minute) or overflow.
    """
    start = None if filters.start is None else _ceil_minute(filters.start)
    end = None if filters.end is None else _ceil_minute(filters.end)
    if (filters.start is not None and start is None) or (filters.end is not None and end is None):
        return filters
    if start == filters.start and end == filters.end:
        return filters
    if start is not None and end is not None and start >= end:
        return filters
    return replace(filters, start=start, end=end)


def _source(
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
    if not facts and all(getattr(filters, name) is None for name in _AUDIENCE_FILTERS):
        return "rollup_minute", []
    if use_filter_range:
        start = filters.start if start is None else start
        end = filters.end if end is None else end
    conditions, params = _conditions(filters, "event_time", with_time=False)
    # date_trunc(event_time) >= start  <=>  event_time >= ceil(start); the same for < end.
    for bound, operator in ((start, ">="), (end, "<")):
        aligned = None if bound is None else _ceil_minute(bound)
        if aligned is not None:
            conditions.append(f"event_time {operator} ?")
            params.append(aligned)
    where = _where(conditions)
    union = " UNION ALL ".join(_fact_branch(table, where) for table in _FACT_MEASURES)
    return f"({union}) AS facts_as_rollup", params * len(_FACT_MEASURES)


class _Reader(Protocol):
    def query(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame: ...


def _reader(
    warehouse: Warehouse,
    filters: Filters,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    use_filter_range: bool = True,
    facts: bool = False,
    keys: Sequence[str] = (),
) -> _Reader:
    """Where a live view reads its rows: the serving store or the warehouse.

    The store when ``warehouse`` is a :class:`LiveWarehouse` whose store is ready and
    holds every minute of the range (``start``/``end`` as in :func:`_source`), and the
    view reads no audience column (``facts``, audience filters): the store keeps none.
    Otherwise, and whenever the store cannot be read, the warehouse. An open start is
    never the store's (the warehouse holds older data). ``keys``: the rollup key
    columns the view groups by; with the filtered ones, the store may sum over the rest.
    """
    if (
        facts
        or not isinstance(warehouse, LiveWarehouse)
        or any(getattr(filters, name) is not None for name in _AUDIENCE_FILTERS)
    ):
        return warehouse
    if use_filter_range:
        start = filters.start if start is None else start
        end = filters.end if end is None else end
    if start is None:
        return warehouse
    # Whole minutes that cover the range: latency compares event_time, not the minute.
    first = start.replace(second=0, microsecond=0)
    last = None if end is None else _ceil_minute(end)
    filtered = [c for c in ("ad_id", "campaign", "platform", "location") if getattr(filters, c)]
    return warehouse.live(first, last, frozenset([*keys, *filtered])) or warehouse


def _grouped(
    table: str,
    time_column: str,
    conditions: Sequence[str],
    measures: dict[str, str],
    inputs: Sequence[str],
    group_by: GroupBy,
    having: str,
) -> tuple[str, list[str]]:
    """CTEs ending in ``totals`` (group keys + measures) and the names of the key columns.

    ``inputs`` are the columns of ``table`` that ``measures`` and ``having`` read.

    Grouping by ad shows the ad's campaign as of its latest data in the range (an ad can
    move between campaigns, and one row per ad is what rankings need).
    """
    aggregates = ", ".join(f"{expr} AS {name}" for name, expr in measures.items())
    having_sql = f" HAVING {having}" if having else ""
    # Only the columns used: engines may materialise a CTE that is read twice.
    needed = ", ".join(dict.fromkeys(["ad_id", "campaign", time_column, *inputs]))
    filtered = f"filtered AS (SELECT {needed} FROM {table}{_where(conditions)})"
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


def _order(keys: Sequence[str]) -> str:
    if not keys:
        return ""
    if keys[0] == "ad_id":
        return " ORDER BY ad_id"
    return " ORDER BY " + ", ".join(f"{k} NULLS LAST" for k in keys)


def _rollup_select(
    warehouse: Warehouse,
    filters: Filters,
    group_by: GroupBy,
    outputs: dict[str, str],
    having: str = _NONZERO,
) -> pl.DataFrame:
    source, source_params = _source(filters)
    conditions, params = _conditions(filters, "minute")
    ctes, keys = _grouped(
        source, "minute", conditions, _ROLLUP_SUMS, _ROLLUP_INPUTS, group_by, having
    )
    columns = ", ".join([*keys, *(f"{expr} AS {name}" for name, expr in outputs.items())])
    return _reader(warehouse, filters, keys=keys).query(
        f"WITH {ctes} SELECT {columns} FROM totals{_order(keys)}", [*source_params, *params]
    )


# --- metrics -------------------------------------------------------------------------------
def counts(warehouse: Warehouse, filters: Filters, group_by: GroupBy = None) -> pl.DataFrame:
    """Summed rollup measures.

    Columns: [``ad_id``, ``campaign`` | ``campaign``] then ``impressions``, ``clicks``,
    ``conversions``, ``attributed_conversions`` (Int64) and ``revenue`` (Decimal 38,4).
    One row per group with any non-zero measure (none at all when there is no data);
    ordered by the group key, NULL (unknown) last. Group keys: ``"campaign"`` gives
    ``campaign``; ``"ad"`` gives ``ad_id`` and the ad's ``campaign`` as of its latest
    data in the range. The other metric functions group the same way.
    """
    outputs = {name: name for name in _ROLLUP_SUMS}
    return _rollup_select(warehouse, filters, group_by, outputs)


def ctr(warehouse: Warehouse, filters: Filters, group_by: GroupBy = None) -> pl.DataFrame:
    """Click-through rate. Columns: [group keys], ``impressions``, ``clicks``, ``ctr``.

    ``ctr = clicks / impressions`` (Float64, NULL when there are no impressions).
    Groups without impressions and clicks are left out.
    """
    outputs = {
        "impressions": "impressions",
        "clicks": "clicks",
        "ctr": _ratio("clicks", "impressions"),
    }
    return _rollup_select(warehouse, filters, group_by, outputs, _nonzero("impressions", "clicks"))


def conversion_rate(
    warehouse: Warehouse, filters: Filters, group_by: GroupBy = None
) -> pl.DataFrame:
    """Conversion rate. Columns: [group keys], ``clicks``, ``attributed_conversions``,
    ``conversion_rate`` = attributed_conversions / clicks (NULL without clicks).
    """
    outputs = {
        "clicks": "clicks",
        "attributed_conversions": "attributed_conversions",
        "conversion_rate": _ratio("attributed_conversions", "clicks"),
    }
    having = _nonzero("clicks", "attributed_conversions")
    return _rollup_select(warehouse, filters, group_by, outputs, having)


def revenue_per_conversion(
    warehouse: Warehouse, filters: Filters, group_by: GroupBy = None
) -> pl.DataFrame:
    """Average revenue per conversion. Columns: [group keys], ``conversions``, ``revenue``,
    ``revenue_per_conversion`` = revenue / conversions over all conversions, attributed or
    not (Float64, NULL without conversions).
    """
    outputs = {
        "conversions": "conversions",
        "revenue": "revenue",
        "revenue_per_conversion": _ratio("revenue", "conversions"),
    }
    having = _nonzero("conversions", "revenue")
    return _rollup_select(warehouse, filters, group_by, outputs, having)


def conversion_latency(
    warehouse: Warehouse, filters: Filters, group_by: GroupBy = None
) -> pl.DataFrame:
    """Click-to-conversion latency of attributed conversions with event time in range.

    Columns: [group keys], ``conversions`` (Int64, attributed ones), and Float64
    ``latency_mean``, ``latency_p50``, ``latency_p90``
    (continuous percentiles, linear interpolation). A conversion's platform and location
    are its attributed click's. No row when nothing matches.
    """
    conditions, params = _conditions(filters, "event_time")
    conditions.insert(0, "click_time IS NOT NULL")
    ctes, keys = _grouped(
        "fact_conversions",
        "event_time",
        conditions,
        _LATENCY,
        ["latency_seconds"],
        group_by,
        "COUNT(*) > 0",
    )
    columns = ", ".join([*keys, *_LATENCY])
    sql = f"WITH {ctes} SELECT {columns} FROM totals{_order(keys)}"
    return _reader(warehouse, filters).query(sql, params)


def timeseries(warehouse: Warehouse, filters: Filters) -> pl.DataFrame:
    """Per-minute totals, for trend charts.

    Columns: ``minute`` (Datetime), ``impressions``, ``clicks``, ``conversions``,
    ``attributed_conversions``, ``revenue``, ``ctr``, ``conversion_rate``; only minutes
    with non-zero data, in time order.
    """
    frame = bucketed_timeseries(warehouse, filters, "minute")
    return frame.select(pl.col("bucket").alias("minute"), *_ROLLUP_SUMS, "ctr", "conversion_rate")


def summary(warehouse: Warehouse, filters: Filters) -> pl.DataFrame:
    """Headline numbers, always exactly one row.

    Columns: ``impressions``, ``clicks``, ``conversions``, ``attributed_conversions``
    (Int64), ``revenue`` (Decimal 38,4), ``ctr``, ``conversion_rate``,
    ``revenue_per_conversion``, ``latency_mean``, ``latency_p50``, ``latency_p90``
    (Float64, latencies in seconds; NULL when undefined). Same definitions as the
    individual metric functions.
    """
    source, source_params = _source(filters)
    r_conditions, r_params = _conditions(filters, "minute")
    l_conditions, l_params = _conditions(filters, "event_time")
    l_conditions.insert(0, "click_time IS NOT NULL")
    sums = ", ".join(f"{expr} AS {name}" for name, expr in _ROLLUP_SUMS.items())
    latency = ", ".join(
        f"{expr} AS {name}" for name, expr in _LATENCY.items() if name != "conversions"
    )
    sql = (
        f"WITH r AS (SELECT {sums} FROM {source}{_where(r_conditions)}),"
        f" l AS (SELECT {latency} FROM fact_conversions{_where(l_conditions)})"
        f" SELECT r.impressions, r.clicks, r.conversions, r.attributed_conversions, r.revenue,"
        f" {_ratio('r.clicks', 'r.impressions')} AS ctr,"
        f" {_ratio('r.attributed_conversions', 'r.clicks')} AS conversion_rate,"
        f" {_ratio('r.revenue', 'r.conversions')} AS revenue_per_conversion,"
        " l.latency_mean, l.latency_p50, l.latency_p90"
        " FROM r CROSS JOIN l"
    )
    return _reader(warehouse, filters).query(sql, [*source_params, *r_params, *l_params])


# --- rankings --------------------------------------------------------------------------------
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
    _check_int("window_minutes", window_minutes, 1, 7 * 24 * 60)
    end = filters.end
    if end is None:
        last = data_range(warehouse)["last_minute"]
        if last is None:
            return None
        end = last + timedelta(minutes=1)
    width = timedelta(minutes=window_minutes)
    return TrendingWindows(previous_start=end - 2 * width, latest_start=end - width, end=end)


def trending(
    warehouse: Warehouse,
    filters: Filters,
    window_minutes: int = 15,
    min_clicks: int = 20,
    limit: int = 10,
) -> pl.DataFrame:
    """Campaigns ranked by the change of conversions per click between two windows.

    Windows: see :func:`trending_windows` (``filters.start`` is not used; the windows
    are the range). Only known campaigns with at least ``min_clicks`` clicks in both
    windows. Columns: ``campaign``, ``previous_clicks``, ``previous_conversions``,
    ``previous_rate``, ``latest_clicks``, ``latest_conversions``, ``latest_rate``,
    ``change`` (latest_rate - previous_rate; rates are attributed conversions per click,
    Float64). Ordered by ``change`` descending, then campaign; at most ``limit`` rows.
    """
    _check_int("min_clicks", min_clicks, 0, _INT64_MAX)
    _check_int("limit", limit, 1, 10_000)
    windows = trending_windows(warehouse, filters, window_minutes)
    conditions, params = _conditions(filters, "minute", with_time=False)
    if windows is None:
        conditions.append("1 = 0")  # no data at all: same columns, no rows
        bounds: list[Any] = [None, None, None]
    else:
        bounds = [windows.previous_start, windows.latest_start, windows.end]
    # the windows are the range: filters.start is not used
    source, source_params = _source(filters, bounds[0], bounds[2], use_filter_range=False)
    conditions[:0] = ["campaign IS NOT NULL", "minute >= ?", "minute < ?"]
    latest, previous = "minute >= ?", "minute < ?"
    sql = (
        "WITH windows AS (SELECT campaign,"
        f" CAST(COALESCE(SUM(CASE WHEN {previous} THEN clicks END), 0) AS BIGINT)"
        " AS previous_clicks,"
        f" CAST(COALESCE(SUM(CASE WHEN {previous} THEN attributed_conversions END), 0)"
        " AS BIGINT) AS previous_conversions,"
        f" CAST(COALESCE(SUM(CASE WHEN {latest} THEN clicks END), 0) AS BIGINT)"
        " AS latest_clicks,"
        f" CAST(COALESCE(SUM(CASE WHEN {latest} THEN attributed_conversions END), 0)"
        " AS BIGINT) AS latest_conversions"
        f" FROM {source}{_where(conditions)} GROUP BY campaign"
        # campaigns with nothing (or only retracted data) in both windows are noise
        " HAVING COALESCE(SUM(clicks), 0) <> 0 OR COALESCE(SUM(attributed_conversions), 0) <> 0),"
        " rates AS (SELECT campaign, previous_clicks, previous_conversions,"
        f" {_ratio('previous_conversions', 'previous_clicks')} AS previous_rate,"
        " latest_clicks, latest_conversions,"
        f" {_ratio('latest_conversions', 'latest_clicks')} AS latest_rate"
        " FROM windows WHERE previous_clicks >= ? AND latest_clicks >= ?)"
        " SELECT *, latest_rate - previous_rate AS change FROM rates"
        " ORDER BY change DESC NULLS LAST, campaign LIMIT ?"
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
    reader = _reader(
        warehouse, filters, bounds[0], bounds[2], use_filter_range=False, keys=["campaign"]
    )
    return reader.query(sql, all_params)


def top_ads(
    warehouse: Warehouse,
    filters: Filters,
    by: TopAdsBy = "revenue",
    min_clicks: int = 20,
    limit: int = 10,
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
    _check_int("min_clicks", min_clicks, 0, _INT64_MAX)
    _check_int("limit", limit, 1, 10_000)
    source, source_params = _source(filters)
    conditions, params = _conditions(filters, "minute")
    ctes, _ = _grouped(source, "minute", conditions, _ROLLUP_SUMS, _ROLLUP_INPUTS, "ad", _NONZERO)
    ranked = (
        f"ranked AS (SELECT ad_id, campaign, {', '.join(_ROLLUP_SUMS)},"
        f" {_ratio('clicks', 'impressions')} AS ctr,"
        f" {_ratio('attributed_conversions', 'clicks')} AS conversion_rate FROM totals)"
    )
    if by == "revenue":
        tail = " ORDER BY revenue DESC, ad_id LIMIT ?"
        tail_params: list[Any] = [limit]
    else:
        tail = (
            " WHERE clicks >= ? ORDER BY conversion_rate DESC NULLS LAST, clicks DESC, ad_id"
            " LIMIT ?"
        )
        tail_params = [min_clicks, limit]
    sql = f"WITH {ctes}, {ranked} SELECT * FROM ranked{tail}"
    reader = _reader(warehouse, filters, keys=["ad_id", "campaign"])
    return reader.query(sql, [*source_params, *params, *tail_params])


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FilterError(f"{name} must be an integer from {low} to {high}; got {value!r}")


# --- pipeline status -------------------------------------------------------------------------
class DataRange(TypedDict):
    """First and last minute with rollup data; both None while the warehouse is empty."""

    first_minute: datetime | None
    last_minute: datetime | None


def data_range(warehouse: Warehouse) -> DataRange:
    """The span of minutes holding data (for default ranges and the status view)."""
    first, last = warehouse.query(
        "SELECT MIN(minute) AS first_minute, MAX(minute) AS last_minute FROM rollup_minute"
    ).row(0)
    return DataRange(first_minute=first, last_minute=last)


class PipelineStatus(TypedDict):
    """What the live status view shows (a plain dict, so it serialises as is).

    - ``streams``: one row per stream (all three, zeros when idle): ``stream``,
      ``received``, ``accepted``, ``rejected``, ``duplicates``, ``late``,
      ``unknown_ad``, ``unknown_user`` (Int64 sums over all batches),
      ``min_event_time``, ``max_event_time``, ``last_committed_at``;
    - ``dead_letters``: ``stream``, ``reason``, ``records`` (by stream, then reason);
    - ``watermarks``: ``stream``, ``partition``, ``watermark``, ``max_event_time``,
      ``updated_at`` (by stream, then partition);
    - ``last_commit``: time of the latest committed batch, None before the first.
    """

    streams: pl.DataFrame
    dead_letters: pl.DataFrame
    watermarks: pl.DataFrame
    last_commit: datetime | None


_STAT_COUNTS: Final = (
    "received",
    "accepted",
    "rejected",
    "duplicates",
    "late",
    "unknown_ad",
    "unknown_user",
)


def pipeline_status(warehouse: Warehouse) -> PipelineStatus:
    """Ingest counters, dead letters by reason and watermarks, for the status view."""
    sums = ", ".join(f"CAST(COALESCE(SUM({c}), 0) AS BIGINT) AS {c}" for c in _STAT_COUNTS)
    stats = warehouse.query(
        f"SELECT stream, {sums}, MIN(min_event_time) AS min_event_time,"
        " MAX(max_event_time) AS max_event_time, MAX(committed_at) AS last_committed_at"
        " FROM ingest_stats GROUP BY stream"
    )
    every_stream = pl.DataFrame({"stream": [str(s) for s in Stream]}, schema={"stream": pl.String})
    streams = every_stream.join(stats, on="stream", how="left", maintain_order="left").with_columns(
        pl.col(c).fill_null(0) for c in _STAT_COUNTS
    )
    dead_letters = warehouse.query(
        "SELECT stream, reason, CAST(COUNT(*) AS BIGINT) AS records FROM dead_letters"
        " GROUP BY stream, reason ORDER BY stream, reason"
    )
    watermarks = warehouse.query(
        'SELECT stream, "partition", watermark, max_event_time, updated_at FROM watermarks'
        ' ORDER BY stream, "partition"'
    )
    last_commit = streams["last_committed_at"].max()
    return PipelineStatus(
        streams=streams,
        dead_letters=dead_letters,
        watermarks=watermarks,
        last_commit=last_commit if isinstance(last_commit, datetime) else None,
    )


def partition_owners(warehouse: Warehouse) -> pl.DataFrame:
    """Who processes each partition when workers share them (empty otherwise).

    Columns: ``partition``, ``worker_id``, ``host``, ``pid`` (NULL: no owner),
    ``epoch`` (owner changes so far), ``expires_at`` (UTC) and ``live`` (the lease has
    not expired), by partition. See :mod:`adpulse.storage.warehouse.leases`.
    """
    if not warehouse.shares_partitions:
        return pl.DataFrame()
    exists = warehouse.query(
        "SELECT COUNT(*) AS n FROM information_schema.tables"
        " WHERE table_name = 'partition_leases' AND table_schema = current_schema()"
    ).item()
    if not exists:  # a warehouse created before leases existed, opened read-only
        return pl.DataFrame()
    return warehouse.query(
        'SELECT l."partition", l.owner AS worker_id, w.host, w.pid, l.epoch, l.expires_at,'
        " COALESCE(l.expires_at > LOCALTIMESTAMP, FALSE) AS live"
        " FROM partition_leases l LEFT JOIN workers w ON w.worker_id = l.owner"
        ' ORDER BY l."partition"'
    )


# --- charts: buckets, histogram, breakdowns, picker values ----------------------------------
Bucket = Literal["minute", "hour"]
BreakdownDimension = Literal["platform", "location", "gender", "age_band", "interest"]

#: Upper edges (seconds, exclusive) of the conversion-latency histogram buckets; the last
#: bucket is open-ended: [0, 30), [30, 60), ... [86400, inf).
LATENCY_EDGES: Final = (30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)


def bucketed_timeseries(
    warehouse: Warehouse, filters: Filters, bucket: Bucket = "minute"
) -> pl.DataFrame:
    """Totals per minute or hour bucket, for trend charts.

    Columns: ``bucket`` (Datetime, the bucket's start), ``impressions``, ``clicks``,
    ``conversions``, ``attributed_conversions`` (Int64), ``revenue`` (Decimal 38,4),
    ``ctr``, ``conversion_rate``, ``revenue_per_conversion`` (Float64, as in the metric
    functions), ``latency_p50``, ``latency_p90`` (Float64 seconds over the attributed
    conversions with event time in the bucket; NULL when there are none). Only buckets
    with non-zero counts, in time order. Same range rules as :func:`timeseries`.
    """
    if bucket not in get_args(Bucket):
        raise FilterError(f"bucket must be 'minute' or 'hour'; got {bucket!r}")
    source, source_params = _source(filters)
    conditions, params = _conditions(filters, "minute")
    l_conditions, l_params = _conditions(filters, "event_time")
    l_conditions.insert(0, "click_time IS NOT NULL")
    aggregates = ", ".join(f"{expr} AS {name}" for name, expr in _ROLLUP_SUMS.items())
    # bucket is one of two literals checked above: safe to write into the text
    sql = (
        f"WITH totals AS (SELECT date_trunc('{bucket}', minute) AS bucket, {aggregates}"
        f" FROM {source}{_where(conditions)}"
        f" GROUP BY date_trunc('{bucket}', minute) HAVING {_NONZERO}),"
        f" lat AS (SELECT date_trunc('{bucket}', event_time) AS bucket,"
        f" {_LATENCY['latency_p50']} AS latency_p50, {_LATENCY['latency_p90']} AS latency_p90"
        f" FROM fact_conversions{_where(l_conditions)}"
        f" GROUP BY date_trunc('{bucket}', event_time))"
        f" SELECT totals.bucket, {', '.join('totals.' + c for c in _ROLLUP_SUMS)},"
        f" {_ratio('totals.clicks', 'totals.impressions')} AS ctr,"
        f" {_ratio('totals.attributed_conversions', 'totals.clicks')} AS conversion_rate,"
        f" {_ratio('totals.revenue', 'totals.conversions')} AS revenue_per_conversion,"
        " lat.latency_p50, lat.latency_p90"
        " FROM totals LEFT JOIN lat ON lat.bucket = totals.bucket ORDER BY totals.bucket"
    )
    return _reader(warehouse, filters).query(sql, [*source_params, *params, *l_params])


def latency_histogram(warehouse: Warehouse, filters: Filters) -> pl.DataFrame:
    """Conversion latency histogram over :data:`LATENCY_EDGES` (attributed conversions
    with event time in range, as :func:`conversion_latency`).

    Columns: ``low_seconds`` (Int64, inclusive), ``high_seconds`` (Int64, exclusive;
    NULL for the last, open-ended bucket), ``conversions`` (Int64). Every bucket, zeros
    included, in order.
    """
    conditions, params = _conditions(filters, "event_time")
    conditions.insert(0, "click_time IS NOT NULL")
    cases = " ".join(
        f"WHEN latency_seconds < {edge} THEN {i}" for i, edge in enumerate(LATENCY_EDGES)
    )
    sql = (
        f"SELECT CASE {cases} ELSE {len(LATENCY_EDGES)} END AS bucket,"
        " CAST(COUNT(*) AS BIGINT) AS conversions"
        f" FROM fact_conversions{_where(conditions)} GROUP BY 1"
    )
    found = dict(_reader(warehouse, filters).query(sql, params).iter_rows())
    lows = (0, *LATENCY_EDGES)
    highs: tuple[int | None, ...] = (*LATENCY_EDGES, None)
    return pl.DataFrame(
        {
            "low_seconds": list(lows),
            "high_seconds": list(highs),
            "conversions": [int(found.get(i, 0)) for i in range(len(lows))],
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
    warehouse: Warehouse, filters: Filters, dimension: BreakdownDimension
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
    source, source_params = _source(filters, facts=audience)
    conditions, params = _conditions(filters, "minute")
    sums = ", ".join(f"{expr} AS {name}" for name, expr in _ROLLUP_SUMS.items())
    # column comes from the fixed mapping above, never from the caller
    sql = (
        f"SELECT {column} AS value, {sums} FROM {source}{_where(conditions)}"
        f" GROUP BY {column} HAVING {_NONZERO}"
    )
    reader = _reader(warehouse, filters, facts=audience, keys=[column])
    frame = reader.query(sql, [*source_params, *params])
    measures = list(_ROLLUP_SUMS)
    types = frame.schema
    if dimension == "interest":
        frame = (
            frame.with_columns(pl.col("value").str.split(";"))
            .explode("value")
            .with_columns(pl.col("value").str.strip_chars())
            .with_columns(
                pl.when(pl.col("value") == "").then(None).otherwise(pl.col("value")).alias("value")
            )
            .group_by("value")
            .agg(pl.col(m).sum() for m in measures)
        )
    frame = frame.with_columns(pl.col(m).cast(types[m]) for m in measures)

    def ratio(numerator: str, denominator: str) -> pl.Expr:
        den = pl.col(denominator).cast(pl.Float64)
        return pl.when(den == 0).then(None).otherwise(pl.col(numerator).cast(pl.Float64) / den)

    return frame.with_columns(
        ratio("clicks", "impressions").alias("ctr"),
        ratio("attributed_conversions", "clicks").alias("conversion_rate"),
        ratio("revenue", "conversions").alias("revenue_per_conversion"),
    ).sort("value", nulls_last=True)


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
    _check_int("limit", limit, 1, 1_000_000)

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
