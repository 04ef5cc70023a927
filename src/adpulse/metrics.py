"""The metric catalog: every number adpulse shows, defined once.

Three kinds of metric, each an entry below (see ``docs/metrics.md``):

- a :class:`Measure` is an additive count, one column of ``rollup_minute`` summed over a
  group (impressions, clicks, conversions, attributed conversions, revenue). It says how
  one fact row counts towards it, so audience-filtered reads can sum the facts instead;
- a :class:`Ratio` divides one measure's sum by another's (CTR, conversion rate, revenue
  per conversion), as a float, NULL when the denominator sums to 0. A group is shown
  only when its numerator or denominator sums to non-zero (the zero-group rule: a group
  holding nothing, or only retracted rows, has nothing to show);
- a :class:`Distribution` summarises one value per fact row (conversion latency: mean and
  percentiles, which need the individual values, so it reads the facts).

Each entry renders itself for every target: the warehouse SQL of the query layer
(:mod:`adpulse.serving.queries`; the same text on DuckDB, PostgreSQL and the serving
store, spelled by :data:`~adpulse.storage.warehouse.sql.PORTABLE`), Polars expressions
(the serving store, in-memory breakdowns), the Grafana panels (titles and units, via
:mod:`adpulse.operations.grafana`), and the names and help of the CLI's ``query`` and
the API's ``/api/v1/metrics/{metric}``. Adding a metric is adding an entry here.

This module imports only storage-level definitions (schema, SQL dialect), so every layer
above may use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

import polars as pl

from adpulse.storage.warehouse.schema import FACT_TABLES, ROLLUP_MEASURES
from adpulse.storage.warehouse.sql import PORTABLE

#: Group keys every grouped metric supports (besides no grouping): ``"ad"`` gives
#: ``ad_id`` and the ad's campaign, ``"campaign"`` the campaign.
GROUPINGS: Final = ("ad", "campaign")
#: Grafana unit ids used as the metrics' units.
Unit = Literal["short", "currencyUSD", "percentunit", "s"]


def ratio_sql(numerator: str, denominator: str) -> str:
    """``numerator / denominator`` as a float, NULL when the denominator is 0 (SQL)."""
    return f"CAST({numerator} AS {PORTABLE.column_type(pl.Float64())}) / NULLIF({denominator}, 0)"


def ratio_expr(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """``numerator / denominator`` as Float64, NULL when the denominator is 0 (Polars)."""
    den = denominator.cast(pl.Float64)
    return pl.when(den == 0).then(None).otherwise(numerator.cast(pl.Float64) / den)


def nonzero_sql(columns: tuple[str, ...]) -> str:
    """HAVING condition of the zero-group rule: some of ``columns`` sums to non-zero."""
    return " OR ".join(f"COALESCE(SUM({c}), 0) <> 0" for c in columns)


def nonzero_expr(columns: tuple[str, ...]) -> pl.Expr:
    """The zero-group rule over already summed ``columns`` (Polars filter)."""
    return pl.any_horizontal(pl.col(c).fill_null(0) != 0 for c in columns)


@dataclass(frozen=True, slots=True)
class Measure:
    """An additive count: the rollup column ``name``, summed over a group's rows.

    Its type is the rollup column's (:data:`~adpulse.storage.warehouse.schema.ROLLUP_MEASURES`),
    and a sum is cast back to it (SUM widens). ``facts``: how one row of each fact table
    counts towards it (an SQL expression over that table's columns; tables left out
    count 0), for reads that sum the facts (audience filters).
    """

    name: str
    title: str
    unit: Unit
    description: str
    facts: Mapping[str, str]
    #: A headline number (a stat panel of the Grafana dashboard).
    headline: bool = True

    @property
    def dtype(self) -> pl.DataType:
        return ROLLUP_MEASURES[self.name]

    @property
    def sql_type(self) -> str:
        return PORTABLE.column_type(self.dtype)

    def sum_sql(self, *, when: str | None = None, empty_as_zero: bool = True) -> str:
        """The group's sum, typed (SQL); over the rows matching the condition ``when``
        only, if given. 0 for an empty group unless ``empty_as_zero`` is off (a
        ``GROUP BY`` never makes an empty group)."""
        value = self.name if when is None else f"CASE WHEN {when} THEN {self.name} END"
        total = f"COALESCE(SUM({value}), 0)" if empty_as_zero else f"SUM({value})"
        return f"CAST({total} AS {self.sql_type})"

    def sum_expr(self) -> pl.Expr:
        """The group's sum in Polars, typed as :meth:`sum_sql` (Polars widens decimals)."""
        return pl.col(self.name).sum().cast(self.dtype)

    def fact_sql(self, table: str) -> str:
        """What one row of fact table ``table`` adds to this measure (SQL)."""
        if table not in FACT_TABLES:
            raise ValueError(f"unknown fact table {table!r}; one of {list(FACT_TABLES)}")
        return self.facts.get(table, "0")


@dataclass(frozen=True, slots=True)
class Ratio:
    """``numerator / denominator`` over the sums of two :class:`Measure` s of a group.

    Float, NULL when the denominator sums to 0. A group is kept when either input sums
    to non-zero (:attr:`inputs`). Its result columns are the denominator, the numerator,
    then the ratio.
    """

    name: str
    numerator: str
    denominator: str
    title: str
    unit: Unit
    description: str
    groupings: tuple[str, ...] = GROUPINGS
    headline: bool = True

    @property
    def api_name(self) -> str:
        """The name in ``adpulse query NAME`` and ``/api/v1/metrics/NAME``."""
        return self.name.replace("_", "-")

    @property
    def inputs(self) -> tuple[str, ...]:
        """The measures it reads, in column order; the zero-group rule checks these."""
        return (self.denominator, self.numerator)

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.inputs, self.name)

    def sql(self, table: str = "") -> str:
        """The ratio over summed columns (of ``table``, if given) in SQL."""
        prefix = f"{table}." if table else ""
        return ratio_sql(prefix + self.numerator, prefix + self.denominator)

    def sql_over(self, numerator: str, denominator: str) -> str:
        """The ratio over other columns holding the same sums (e.g. one time window's)."""
        return ratio_sql(numerator, denominator)

    def expr(self) -> pl.Expr:
        """The ratio over summed columns in Polars."""
        return ratio_expr(pl.col(self.numerator), pl.col(self.denominator)).alias(self.name)


@dataclass(frozen=True, slots=True)
class Statistic:
    """One summary of a :class:`Distribution`'s values: their mean, or a continuous
    percentile (linear interpolation) when ``percentile`` is given."""

    name: str
    title: str
    percentile: float | None = None
    headline: bool = True

    def sql(self, value: str) -> str:
        if self.percentile is None:
            return f"AVG({value})"
        return f"percentile_cont({self.percentile}) WITHIN GROUP (ORDER BY {value})"

    def expr(self, value: str) -> pl.Expr:
        column = pl.col(value)
        if self.percentile is None:
            return column.mean().alias(self.name)
        return column.quantile(self.percentile, interpolation="linear").alias(self.name)


@dataclass(frozen=True, slots=True)
class Distribution:
    """Statistics of ``value`` over the rows of fact ``table`` where ``requires`` is not
    NULL, by the rows' ``time_column``. Result columns: ``count`` (the rows, Int64),
    then one Float64 per statistic, NULL when no row matches. A group is kept when it
    has a row."""

    name: str
    table: str
    value: str
    time_column: str
    requires: str
    count: str
    statistics: tuple[Statistic, ...]
    title: str
    unit: Unit
    description: str
    groupings: tuple[str, ...] = GROUPINGS

    @property
    def api_name(self) -> str:
        return self.name.replace("_", "-")

    @property
    def condition(self) -> str:
        """The rows it reads (SQL)."""
        return f"{self.requires} IS NOT NULL"

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.count, *(s.name for s in self.statistics))

    def aggregates(self) -> dict[str, str]:
        """Result column -> aggregate SQL over the matching rows."""
        return {
            self.count: f"CAST(COUNT(*) AS {PORTABLE.column_type(pl.Int64())})",
            **{s.name: s.sql(self.value) for s in self.statistics},
        }

    def statistic(self, name: str) -> Statistic:
        """The statistic whose column is ``name``."""
        for statistic in self.statistics:
            if statistic.name == name:
                return statistic
        known = ", ".join(s.name for s in self.statistics)
        raise KeyError(f"{self.name} has no statistic {name!r}; it has {known}")

    def exprs(self) -> list[pl.Expr]:
        """The result columns in Polars, over rows already filtered by :attr:`requires`."""
        count = pl.len().cast(pl.Int64).alias(self.count)
        return [count, *(s.expr(self.value) for s in self.statistics)]


# --- the catalog --------------------------------------------------------------------------
IMPRESSIONS: Final = Measure(
    "impressions",
    "Impressions",
    "short",
    "Ads shown.",
    facts={"fact_impressions": "1"},
)
CLICKS: Final = Measure(
    "clicks",
    "Clicks",
    "short",
    "Clicks on ads.",
    facts={"fact_clicks": "1"},
)
CONVERSIONS: Final = Measure(
    "conversions",
    "Conversions",
    "short",
    "Conversions, attributed to a click or not.",
    facts={"fact_conversions": "1"},
)
ATTRIBUTED_CONVERSIONS: Final = Measure(
    "attributed_conversions",
    "Attributed conversions",
    "short",
    "Conversions attributed to an earlier click of the same user on the same ad.",
    facts={"fact_conversions": "CASE WHEN click_time IS NOT NULL THEN 1 ELSE 0 END"},
    headline=False,
)
REVENUE: Final = Measure(
    "revenue",
    "Revenue",
    "currencyUSD",
    "Revenue of the conversions.",
    facts={"fact_conversions": "revenue"},
)
#: Every measure, in column order (the order of ``rollup_minute``'s measure columns).
MEASURES: Final = (IMPRESSIONS, CLICKS, CONVERSIONS, ATTRIBUTED_CONVERSIONS, REVENUE)

CTR: Final = Ratio(
    "ctr",
    numerator="clicks",
    denominator="impressions",
    title="CTR",
    unit="percentunit",
    description="Click-through rate: clicks / impressions.",
)
CONVERSION_RATE: Final = Ratio(
    "conversion_rate",
    numerator="attributed_conversions",
    denominator="clicks",
    title="Conversion rate",
    unit="percentunit",
    description="Attributed conversions / clicks.",
)
REVENUE_PER_CONVERSION: Final = Ratio(
    "revenue_per_conversion",
    numerator="revenue",
    denominator="conversions",
    title="Revenue per conversion",
    unit="currencyUSD",
    description="Revenue / conversions, over all conversions, attributed or not.",
)
#: Every ratio, in column order.
RATIOS: Final = (CTR, CONVERSION_RATE, REVENUE_PER_CONVERSION)

LATENCY: Final = Distribution(
    "conversion_latency",
    table="fact_conversions",
    value="latency_seconds",
    time_column="event_time",
    requires="click_time",
    count="conversions",
    statistics=(
        Statistic("latency_mean", "Latency mean"),
        Statistic("latency_p50", "Latency p50", 0.5),
        Statistic("latency_p90", "Latency p90", 0.9),
    ),
    title="Conversion latency",
    unit="s",
    description="Click-to-conversion latency of attributed conversions (mean, p50, p90).",
)
DISTRIBUTIONS: Final = (LATENCY,)

Metric = Measure | Ratio | Distribution


@dataclass(frozen=True, slots=True)
class Headline:
    """One headline number: a column of the query layer's ``summary``."""

    title: str
    column: str
    unit: Unit


def headlines() -> tuple[Headline, ...]:
    """The headline numbers, in catalog order: measures, ratios, distribution statistics."""
    found = [Headline(m.title, m.name, m.unit) for m in MEASURES if m.headline]
    found += [Headline(r.title, r.name, r.unit) for r in RATIOS if r.headline]
    found += [
        Headline(s.title, s.name, d.unit) for d in DISTRIBUTIONS for s in d.statistics if s.headline
    ]
    return tuple(found)


#: Measure by name.
MEASURE: Final = {m.name: m for m in MEASURES}
#: Ratio by name.
RATIO: Final = {r.name: r for r in RATIOS}
#: The metrics of ``adpulse query NAME`` and ``/api/v1/metrics/NAME`` (one row per
#: group), by that name.
GROUPED: Final[dict[str, Ratio | Distribution]] = {m.api_name: m for m in (*RATIOS, *DISTRIBUTIONS)}
#: Their names, in catalog order.
GROUPED_NAMES: Final = tuple(GROUPED)


def _check() -> None:
    """Catch a catalog mistake at import: a name used twice, a ratio of unknown measures."""
    names = [*MEASURE, *RATIO, *(s.name for d in DISTRIBUTIONS for s in d.statistics)]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"metric names defined twice in the catalog: {duplicated}")
    for ratio in RATIOS:
        missing = [m for m in ratio.inputs if m not in MEASURE]
        if missing:
            raise ValueError(f"ratio {ratio.name} reads unknown measures {missing}")
    for distribution in DISTRIBUTIONS:
        if distribution.table not in FACT_TABLES:
            raise ValueError(f"{distribution.name} reads unknown table {distribution.table!r}")


_check()
