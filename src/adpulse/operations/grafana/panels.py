"""The SQL of every panel and variable, rendered from the metric catalog.

Each panel runs the query layer's own SQL where the query layer has one builder for it
(:func:`~adpulse.serving.queries.rankings.trending_sql`,
:func:`~adpulse.serving.queries.rankings.top_ads_sql`), and otherwise renders the
catalog's sums, ratios, zero-group rules and statistics (:mod:`adpulse.metrics`)
into statements of the query layer's shape, with Grafana's range macros and
``sqlstring`` variables where the query layer binds values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from adpulse.contracts import Stream
from adpulse.metrics import LATENCY, MEASURES, RATIOS
from adpulse.serving.queries.charts import BUCKET_STATISTICS
from adpulse.serving.queries.filters import where
from adpulse.serving.queries.rankings import top_ads_sql, trending_sql
from adpulse.serving.queries.sources import NONZERO, ROLLUP_INPUTS, ROLLUP_SUMS, grouped
from adpulse.storage.warehouse.schema import STREAM_COUNTERS
from adpulse.storage.warehouse.sql import quote

#: The custom "All" value of the filter variables. Grafana inserts a custom all value
#: as it is, unquoted, so it is written as an SQL string literal.
ALL_VALUE: Final = "'__all__'"
#: Filter variables: dashboard variable name = rollup/fact column name.
FILTER_VARIABLES: Final = ("campaign", "platform", "location")
#: Rows of the ranking tables (the query layer's default limit).
RANKING_LIMIT: Final = 10
#: Most values a filter variable offers (as queries.dimension_values).
VARIABLE_VALUES_LIMIT: Final = 10_000


def variable(name: str) -> str:
    """A dashboard variable as SQL: its values quoted by Grafana's ``sqlstring`` format."""
    return f"${{{name}:sqlstring}}"


def _filter_condition(column: str) -> str:
    values = variable(column)
    return f"({ALL_VALUE} IN ({values}) OR {column} IN ({values}))"


def _range_conditions(time_column: str) -> list[str]:
    """The dashboard range, half-open like the query layer's ``[start, end)``."""
    return [f"{time_column} >= $__timeFrom()", f"{time_column} < $__timeTo()"]


#: The headline numbers of :func:`adpulse.serving.queries.summary`, over its CTEs ``r``
#: (summed rollups) and ``l`` (latency of attributed conversions).
_SUMMARY_ROLLUP: Final = {
    **{m.name: f"r.{m.name}" for m in MEASURES},
    **{r.name: r.sql("r") for r in RATIOS},
}
_SUMMARY_LATENCY: Final = {s.name: f"l.{s.name}" for s in LATENCY.statistics}
_SUMMARY_OUTPUTS: Final = {**_SUMMARY_ROLLUP, **_SUMMARY_LATENCY}
#: Per-bucket outputs of :func:`adpulse.serving.queries.bucketed_timeseries`, over its
#: CTEs ``totals`` (summed rollups) and ``lat`` (latency statistics).
_BUCKET_LATENCY: Final = {s.name: f"lat.{s.name}" for s in BUCKET_STATISTICS}
_BUCKET_OUTPUTS: Final = {
    **{m.name: f"totals.{m.name}" for m in MEASURES},
    **{r.name: r.sql("totals") for r in RATIOS},
    **_BUCKET_LATENCY,
}
#: Every ratio over summed columns, as the campaign and breakdown tables show them.
_RATES: Final = ", ".join(f"{r.sql()} AS {r.name}" for r in RATIOS)


def _sums() -> str:
    return ", ".join(f"{expr} AS {name}" for name, expr in ROLLUP_SUMS.items())


def _statistics(statistics: Sequence[str]) -> str:
    return ", ".join(f"{LATENCY.statistic(n).sql(LATENCY.value)} AS {n}" for n in statistics)


@dataclass(frozen=True, slots=True)
class PanelSql:
    """The SQL of every panel and variable, for tables in ``schema`` (None: search path).

    Identifiers come from our own constants (the schema is quoted); values reach the SQL
    only through Grafana's macros and ``sqlstring`` variables.
    """

    schema: str | None = None

    def table(self, name: str) -> str:
        return name if self.schema is None else f"{quote(self.schema)}.{name}"

    def _rollup_conditions(self, *, with_range: bool = True) -> list[str]:
        time = _range_conditions("minute") if with_range else []
        return [*time, *(_filter_condition(c) for c in FILTER_VARIABLES)]

    def _latency_conditions(self) -> list[str]:
        return [
            LATENCY.condition,
            *_range_conditions(LATENCY.time_column),
            *(_filter_condition(c) for c in FILTER_VARIABLES),
        ]

    def summary(self, outputs: Sequence[str]) -> str:
        """One row: the headline numbers ``outputs`` (names of queries.summary's columns)."""
        ctes: dict[str, str] = {}
        if any(name in _SUMMARY_ROLLUP for name in outputs):
            rollup = self.table("rollup_minute")
            ctes["r"] = f"SELECT {_sums()} FROM {rollup}{where(self._rollup_conditions())}"
        if any(name in _SUMMARY_LATENCY for name in outputs):
            statistics = _statistics(list(_SUMMARY_LATENCY))
            facts = self.table(LATENCY.table)
            ctes["l"] = f"SELECT {statistics} FROM {facts}{where(self._latency_conditions())}"
        with_clause = ", ".join(f"{name} AS ({body})" for name, body in ctes.items())
        sources = " CROSS JOIN ".join(ctes)
        columns = ", ".join(f"{_SUMMARY_OUTPUTS[name]} AS {name}" for name in outputs)
        return f"WITH {with_clause} SELECT {columns} FROM {sources}"

    def per_minute(self, outputs: Sequence[str]) -> str:
        """Time series: ``outputs`` (queries.bucketed_timeseries columns) per minute bucket,
        only buckets with non-zero counts, as column ``time``."""
        rollup = self.table("rollup_minute")
        sql = (
            f"WITH totals AS (SELECT date_trunc('minute', minute) AS bucket, {_sums()}"
            f" FROM {rollup}{where(self._rollup_conditions())}"
            f" GROUP BY date_trunc('minute', minute) HAVING {NONZERO})"
        )
        join = ""
        if any(name in _BUCKET_LATENCY for name in outputs):
            time = LATENCY.time_column
            sql += (
                f", lat AS (SELECT date_trunc('minute', {time}) AS bucket,"
                f" {_statistics(list(_BUCKET_LATENCY))}"
                f" FROM {self.table(LATENCY.table)}{where(self._latency_conditions())}"
                f" GROUP BY date_trunc('minute', {time}))"
            )
            join = " LEFT JOIN lat ON lat.bucket = totals.bucket"
        columns = ", ".join(f"{_BUCKET_OUTPUTS[name]} AS {name}" for name in outputs)
        return (
            f'{sql} SELECT totals.bucket AS "time", {columns} FROM totals{join}'
            " ORDER BY totals.bucket"
        )

    def by_campaign(self) -> str:
        """Counts and rates per campaign (queries.counts grouped by campaign, NULL last)."""
        ctes, _ = grouped(
            self.table("rollup_minute"),
            "minute",
            self._rollup_conditions(),
            ROLLUP_SUMS,
            ROLLUP_INPUTS,
            "campaign",
            NONZERO,
        )
        return (
            f"WITH {ctes} SELECT campaign, {', '.join(ROLLUP_SUMS)}, {_RATES}"
            " FROM totals ORDER BY campaign NULLS LAST"
        )

    def breakdown(self, column: Literal["platform", "location"]) -> str:
        """Counts and rates per platform or location value (queries.breakdown)."""
        rollup = self.table("rollup_minute")
        # column is one of two literals (typed above), never a caller's string
        return (
            f"WITH totals AS (SELECT {column} AS value, {_sums()}"
            f" FROM {rollup}{where(self._rollup_conditions())}"
            f" GROUP BY {column} HAVING {NONZERO})"
            f" SELECT value, {', '.join(ROLLUP_SUMS)}, {_RATES} FROM totals"
            " ORDER BY value NULLS LAST"
        )

    def top_ads(self, by: Literal["revenue", "conversion_rate"]) -> str:
        """queries.top_ads: best ads in the range; by conversion rate with ``$min_clicks``."""
        return top_ads_sql(
            self.table("rollup_minute"),
            self._rollup_conditions(),
            by,
            min_clicks=f"CAST({variable('min_clicks')} AS BIGINT)",
            limit=str(RANKING_LIMIT),
        )

    def trending(self) -> str:
        """queries.trending over the two ``$trending_window``-minute windows that end at
        the dashboard's end time (its start is not used, as in the query layer)."""
        end = "CAST($__timeTo() AS TIMESTAMP)"
        width = f"(CAST({variable('trending_window')} AS INTEGER) * INTERVAL '1 minute')"
        latest_start = f"({end} - {width})"
        previous_start = f"({end} - 2 * {width})"
        found = [
            "campaign IS NOT NULL",
            f"minute >= {previous_start}",
            f"minute < {end}",
            *self._rollup_conditions(with_range=False),
        ]
        return trending_sql(
            self.table("rollup_minute"),
            found,
            previous=f"minute < {latest_start}",
            latest=f"minute >= {latest_start}",
            min_clicks=f"CAST({variable('min_clicks')} AS BIGINT)",
            limit=str(RANKING_LIMIT),
        )

    # -- pipeline health (queries.pipeline_status: over all data, not the range) ----------
    def stream_counters(self) -> str:
        """Ingest counters per stream, every stream shown (zeros when idle)."""
        sums = ", ".join(f"CAST(COALESCE(SUM(i.{c}), 0) AS BIGINT) AS {c}" for c in STREAM_COUNTERS)
        # stream names are our own enum values, safe to write as literals
        streams = ", ".join(f"({i}, '{s}')" for i, s in enumerate(Stream))
        return (
            f"SELECT s.stream, {sums}, MAX(i.committed_at) AS last_committed_at"
            f" FROM (VALUES {streams}) AS s(position, stream)"
            f" LEFT JOIN {self.table('ingest_stats')} AS i ON i.stream = s.stream"
            " GROUP BY s.position, s.stream ORDER BY s.position"
        )

    def last_commit(self) -> str:
        return f"SELECT MAX(committed_at) AS last_commit FROM {self.table('ingest_stats')}"

    def dead_letters_by_reason(self) -> str:
        return (
            "SELECT stream, reason, CAST(COUNT(*) AS BIGINT) AS records"
            f" FROM {self.table('dead_letters')} GROUP BY stream, reason ORDER BY stream, reason"
        )

    def dead_letters_per_minute(self) -> str:
        """Rejected records per minute of arrival and stream, in the dashboard range."""
        return (
            "SELECT date_trunc('minute', received_at) AS \"time\", stream AS metric,"
            " CAST(COUNT(*) AS BIGINT) AS records"
            f" FROM {self.table('dead_letters')}{where(_range_conditions('received_at'))}"
            " GROUP BY date_trunc('minute', received_at), stream ORDER BY 1, 2"
        )

    def watermarks(self) -> str:
        return (
            'SELECT stream, "partition", watermark, max_event_time, updated_at'
            f' FROM {self.table("watermarks")} ORDER BY stream, "partition"'
        )

    def variable_values(self, column: str) -> str:
        """The values a filter variable offers (as queries.dimension_values)."""
        if column not in FILTER_VARIABLES:
            raise ValueError(f"not a filter variable: {column!r}")
        return (
            f"SELECT DISTINCT {column} FROM {self.table('rollup_minute')}"
            f" WHERE {column} IS NOT NULL ORDER BY 1 LIMIT {VARIABLE_VALUES_LIMIT}"
        )
