"""The catalog's metrics over the warehouse: counts, ratios, latency and the summary.

Each function renders entries of :mod:`adpulse.metrics` into one SQL statement
over the rows of :mod:`.sources`; :func:`grouped_metric` serves any grouped metric by
its catalog name (``adpulse query NAME``, ``/api/v1/metrics/NAME``).
"""

from __future__ import annotations

import polars as pl

from adpulse.metrics import (
    CONVERSION_RATE,
    CTR,
    GROUPED,
    LATENCY,
    MEASURES,
    RATIOS,
    REVENUE_PER_CONVERSION,
    Distribution,
    Ratio,
    nonzero_sql,
)
from adpulse.serving.queries.charts import bucketed_timeseries
from adpulse.serving.queries.filters import FilterError, Filters, conditions, where
from adpulse.serving.queries.sources import (
    NONZERO,
    ROLLUP_INPUTS,
    ROLLUP_SUMS,
    GroupBy,
    grouped,
    order,
    reader,
    rollup_source,
)
from adpulse.serving.store.base import ServingStore
from adpulse.storage.warehouse.base import Warehouse


def _rollup_select(
    warehouse: Warehouse,
    filters: Filters,
    group_by: GroupBy,
    outputs: dict[str, str],
    having: str = NONZERO,
    *,
    store: ServingStore | None = None,
) -> pl.DataFrame:
    source, source_params = rollup_source(filters)
    found, params = conditions(filters, "minute")
    ctes, keys = grouped(source, "minute", found, ROLLUP_SUMS, ROLLUP_INPUTS, group_by, having)
    columns = ", ".join([*keys, *(f"{expr} AS {name}" for name, expr in outputs.items())])
    return reader(warehouse, store, filters, keys=keys).query(
        f"WITH {ctes} SELECT {columns} FROM totals{order(keys)}", [*source_params, *params]
    )


def counts(
    warehouse: Warehouse,
    filters: Filters,
    group_by: GroupBy = None,
    *,
    store: ServingStore | None = None,
) -> pl.DataFrame:
    """Summed rollup measures.

    Columns: [``ad_id``, ``campaign`` | ``campaign``] then ``impressions``, ``clicks``,
    ``conversions``, ``attributed_conversions`` (Int64) and ``revenue`` (Decimal 38,4).
    One row per group with any non-zero measure (none at all when there is no data);
    ordered by the group key, NULL (unknown) last. Group keys: ``"campaign"`` gives
    ``campaign``; ``"ad"`` gives ``ad_id`` and the ad's ``campaign`` as of its latest
    data in the range. The other metric functions group the same way.
    """
    outputs = {name: name for name in ROLLUP_SUMS}
    return _rollup_select(warehouse, filters, group_by, outputs, store=store)


def ratio(
    warehouse: Warehouse,
    metric: Ratio,
    filters: Filters,
    group_by: GroupBy = None,
    *,
    store: ServingStore | None = None,
) -> pl.DataFrame:
    """One catalog ratio. Columns: [group keys], the denominator's and the numerator's
    sums, and the ratio (Float64, NULL when the denominator sums to 0). Groups where
    both sum to 0 are left out."""
    outputs = {**{name: name for name in metric.inputs}, metric.name: metric.sql()}
    return _rollup_select(
        warehouse, filters, group_by, outputs, nonzero_sql(metric.inputs), store=store
    )


def ctr(
    warehouse: Warehouse,
    filters: Filters,
    group_by: GroupBy = None,
    *,
    store: ServingStore | None = None,
) -> pl.DataFrame:
    """Click-through rate. Columns: [group keys], ``impressions``, ``clicks``, ``ctr``.

    ``ctr = clicks / impressions`` (Float64, NULL when there are no impressions).
    Groups without impressions and clicks are left out.
    """
    return ratio(warehouse, CTR, filters, group_by, store=store)


def conversion_rate(
    warehouse: Warehouse,
    filters: Filters,
    group_by: GroupBy = None,
    *,
    store: ServingStore | None = None,
) -> pl.DataFrame:
    """Conversion rate. Columns: [group keys], ``clicks``, ``attributed_conversions``,
    ``conversion_rate`` = attributed_conversions / clicks (NULL without clicks).
    """
    return ratio(warehouse, CONVERSION_RATE, filters, group_by, store=store)


def revenue_per_conversion(
    warehouse: Warehouse,
    filters: Filters,
    group_by: GroupBy = None,
    *,
    store: ServingStore | None = None,
) -> pl.DataFrame:
    """Average revenue per conversion. Columns: [group keys], ``conversions``, ``revenue``,
    ``revenue_per_conversion`` = revenue / conversions over all conversions, attributed or
    not (Float64, NULL without conversions).
    """
    return ratio(warehouse, REVENUE_PER_CONVERSION, filters, group_by, store=store)


def distribution(
    warehouse: Warehouse,
    metric: Distribution,
    filters: Filters,
    group_by: GroupBy = None,
    *,
    store: ServingStore | None = None,
) -> pl.DataFrame:
    """One catalog distribution over its fact rows with time in range. Columns: [group
    keys], the row count (Int64) and each statistic (Float64). No row when nothing
    matches."""
    found, params = conditions(filters, metric.time_column)
    found.insert(0, metric.condition)
    aggregates = metric.aggregates()
    ctes, keys = grouped(
        metric.table,
        metric.time_column,
        found,
        aggregates,
        [metric.value],
        group_by,
        "COUNT(*) > 0",
    )
    columns = ", ".join([*keys, *aggregates])
    sql = f"WITH {ctes} SELECT {columns} FROM totals{order(keys)}"
    return reader(warehouse, store, filters, conversions=True).query(sql, params)


def conversion_latency(
    warehouse: Warehouse,
    filters: Filters,
    group_by: GroupBy = None,
    *,
    store: ServingStore | None = None,
) -> pl.DataFrame:
    """Click-to-conversion latency of attributed conversions with event time in range.

    Columns: [group keys], ``conversions`` (Int64, attributed ones), and Float64
    ``latency_mean``, ``latency_p50``, ``latency_p90``
    (continuous percentiles, linear interpolation). A conversion's platform and location
    are its attributed click's. No row when nothing matches.
    """
    return distribution(warehouse, LATENCY, filters, group_by, store=store)


def grouped_metric(
    warehouse: Warehouse,
    name: str,
    filters: Filters,
    group_by: GroupBy = None,
    *,
    store: ServingStore | None = None,
) -> pl.DataFrame:
    """The grouped metric ``name`` of the catalog (``ctr``, ``conversion-rate``, ...)."""
    metric = GROUPED.get(name)
    if metric is None:
        raise FilterError(f"unknown metric {name!r}; choose one of: {', '.join(GROUPED)}")
    if isinstance(metric, Ratio):
        return ratio(warehouse, metric, filters, group_by, store=store)
    return distribution(warehouse, metric, filters, group_by, store=store)


def timeseries(
    warehouse: Warehouse, filters: Filters, *, store: ServingStore | None = None
) -> pl.DataFrame:
    """Per-minute totals, for trend charts.

    Columns: ``minute`` (Datetime), ``impressions``, ``clicks``, ``conversions``,
    ``attributed_conversions``, ``revenue``, ``ctr``, ``conversion_rate``; only minutes
    with non-zero data, in time order.
    """
    frame = bucketed_timeseries(warehouse, filters, "minute", store=store)
    return frame.select(
        pl.col("bucket").alias("minute"), *ROLLUP_SUMS, CTR.name, CONVERSION_RATE.name
    )


def summary(
    warehouse: Warehouse, filters: Filters, *, store: ServingStore | None = None
) -> pl.DataFrame:
    """Headline numbers, always exactly one row.

    Columns: ``impressions``, ``clicks``, ``conversions``, ``attributed_conversions``
    (Int64), ``revenue`` (Decimal 38,4), ``ctr``, ``conversion_rate``,
    ``revenue_per_conversion``, ``latency_mean``, ``latency_p50``, ``latency_p90``
    (Float64, latencies in seconds; NULL when undefined). Same definitions as the
    individual metric functions.
    """
    source, source_params = rollup_source(filters)
    r_conditions, r_params = conditions(filters, "minute")
    l_conditions, l_params = conditions(filters, LATENCY.time_column)
    l_conditions.insert(0, LATENCY.condition)
    sums = ", ".join(f"{expr} AS {name}" for name, expr in ROLLUP_SUMS.items())
    latency = ", ".join(f"{s.sql(LATENCY.value)} AS {s.name}" for s in LATENCY.statistics)
    columns = ", ".join(
        [
            *(f"r.{m.name}" for m in MEASURES),
            *(f"{r.sql('r')} AS {r.name}" for r in RATIOS),
            *(f"l.{s.name}" for s in LATENCY.statistics),
        ]
    )
    sql = (
        f"WITH r AS (SELECT {sums} FROM {source}{where(r_conditions)}),"
        f" l AS (SELECT {latency} FROM {LATENCY.table}{where(l_conditions)})"
        f" SELECT {columns} FROM r CROSS JOIN l"
    )
    return reader(warehouse, store, filters, conversions=True).query(
        sql, [*source_params, *r_params, *l_params]
    )
