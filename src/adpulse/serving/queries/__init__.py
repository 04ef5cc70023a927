"""The one query layer: every number the CLI, the HTTP API and the dashboard show.

Each function takes a :class:`~adpulse.storage.warehouse.base.Warehouse`, a
:class:`Filters` and, where it makes sense, a :data:`GroupBy`, and returns a Polars
frame whose columns are documented on the function. The SQL is built here, once, in the
portable subset every warehouse speaks (DuckDB, PostgreSQL, Redshift): ``?``
placeholders with every filter value bound, never formatted into the text; each metric's
sums, ratio (``CAST(... AS DOUBLE PRECISION) / NULLIF(..., 0)``), zero-group rule and
statistics (``percentile_cont(f) WITHIN GROUP``) rendered from its entry in the metric
catalog (:mod:`adpulse.metrics`); interests matched with ``POSITION`` instead of
array functions.

One module per topic: :mod:`.filters` (what to count), :mod:`.sources` (where the rows
come from and how they are grouped), :mod:`.metrics` (the catalog's metrics and the
summary), :mod:`.rankings` (trending, top ads), :mod:`.charts` (time buckets, latency
histogram, breakdowns, picker values), :mod:`.status` (pipeline status). Everything
public is importable from here.

Sources:

- counts and rates come from ``rollup_minute``: append-only partial rows (a retraction
  is a negative row), so every read SUMs over the key. A group is dropped when the
  measures its metric reads all sum to zero (it has nothing to show, or only ever held
  retracted data): for :func:`counts` all of them, for a ratio (:func:`ctr`,
  :func:`conversion_rate`, :func:`revenue_per_conversion`) its numerator and
  denominator;
- except when an audience filter (gender, age band, interest) is set: ``rollup_minute``
  is keyed by minute, ad, campaign, platform and location only, so those counts and
  rates come from the fact tables, read as one rollup-shaped row per event
  (:func:`.sources.rollup_source`). Both give the same numbers, since the rollups are
  an aggregation of the current facts;
- latency comes from ``fact_conversions`` (percentiles need the individual values);
- live views (every metric, ranking and chart below except the status and picker
  values) take an optional ``store`` keyword: the serving store, read instead of the
  warehouse when it holds the whole range and no audience filter is set
  (:func:`.sources.reader`). The store holds the same rows at the same grain (summed
  rollup rows and the conversions of its last 24 h), and the same SQL runs over them, so
  the numbers are the same.

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

from adpulse.serving.queries.charts import (
    LATENCY_EDGES,
    BreakdownDimension,
    Bucket,
    DimensionValues,
    breakdown,
    bucketed_timeseries,
    dimension_values,
    known_values,
    latency_histogram,
)
from adpulse.serving.queries.filters import (
    AGE_BAND_LABELS,
    CHECKED_FILTERS,
    MAX_FILTER_LENGTH,
    FilterError,
    Filters,
    KnownValues,
    UnknownValueError,
    minute_aligned,
)
from adpulse.serving.queries.metrics import (
    conversion_latency,
    conversion_rate,
    counts,
    ctr,
    distribution,
    grouped_metric,
    ratio,
    revenue_per_conversion,
    summary,
    timeseries,
)
from adpulse.serving.queries.rankings import (
    TopAdsBy,
    TrendingWindows,
    top_ads,
    trending,
    trending_windows,
)
from adpulse.serving.queries.sources import GroupBy, reader
from adpulse.serving.queries.status import (
    DataRange,
    PipelineStatus,
    data_range,
    partition_owners,
    pipeline_status,
)

__all__ = [
    "AGE_BAND_LABELS",
    "CHECKED_FILTERS",
    "LATENCY_EDGES",
    "MAX_FILTER_LENGTH",
    "BreakdownDimension",
    "Bucket",
    "DataRange",
    "DimensionValues",
    "FilterError",
    "Filters",
    "GroupBy",
    "KnownValues",
    "PipelineStatus",
    "TopAdsBy",
    "TrendingWindows",
    "UnknownValueError",
    "breakdown",
    "bucketed_timeseries",
    "conversion_latency",
    "conversion_rate",
    "counts",
    "ctr",
    "data_range",
    "dimension_values",
    "distribution",
    "grouped_metric",
    "known_values",
    "latency_histogram",
    "minute_aligned",
    "partition_owners",
    "pipeline_status",
    "ratio",
    "reader",
    "revenue_per_conversion",
    "summary",
    "timeseries",
    "top_ads",
    "trending",
    "trending_windows",
]
