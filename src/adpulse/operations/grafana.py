"""``adpulse grafana export DIR``: Grafana provisioning files for the PostgreSQL warehouse.

Writes, under ``DIR``:

- ``provisioning/datasources/adpulse.yaml``: a PostgreSQL data source built from
  ``warehouse_url`` (host, port, database, user, sslmode). The password is never
  written: the file references ``$ADPULSE_WAREHOUSE_PASSWORD``, which Grafana expands
  from its own environment when it reads provisioning files;
- ``provisioning/dashboards/adpulse.yaml``: a file provider for ``DIR/dashboards``;
- ``dashboards/adpulse.json``: one dashboard with every metric of the product brief,
  filterable by campaign, platform and location (multi-value, with "All") and by the
  dashboard time range, refreshing every 5 s.

The panel SQL is built here, once, from the query layer's own measure expressions
(:mod:`adpulse.serving.queries`), so a panel computes what the CLI, the HTTP API and the
built-in dashboard show for the same range and filters:

- the range is half-open and minute-aligned like the query layer's, written as
  ``minute >= $__timeFrom() AND minute < $__timeTo()`` (``event_time`` for latency).
  ``$__timeFilter`` is not used: it expands to ``BETWEEN``, which would also count the
  minute bucket that starts exactly at the range's end;
- the rollups are append-only partial sums (a retraction is a negative row), so every
  panel SUMs them and drops groups whose measures sum to zero, as the query layer does;
- latency comes from ``fact_conversions`` (attributed conversions only);
- trending compares the two windows that end at the dashboard's end time, with the
  ``min_clicks`` guard, and top ads by conversion rate use the same guard.

Variables reach the SQL only as ``${name:sqlstring}``: Grafana quotes each value and
doubles its single quotes, so a value cannot change the statement. "All" is a custom
all value, ``'__all__'``, that Grafana inserts as it is; each filter reads
``('__all__' IN (values) OR column IN (values))``, so "All" also keeps the rows whose
value is unknown (NULL), as leaving a query-layer filter out does. Time macros are
Grafana's PostgreSQL macros (``$__timeFrom()`` / ``$__timeTo()`` expand to quoted
RFC 3339 UTC instants; PostgreSQL ignores the ``Z`` when comparing them with our
``TIMESTAMP`` columns, which hold UTC).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from adpulse.config import Settings, redact_url
from adpulse.contracts import Stream

# The query layer's measure definitions, reused rather than copied: a panel's numbers are
# the query layer's by construction (and tests/operations/test_grafana.py checks it).
from adpulse.serving.queries import (
    _LATENCY,
    _NONZERO,
    _ROLLUP_INPUTS,
    _ROLLUP_SUMS,
    _STAT_COUNTS,
    _grouped,
    _nonzero,
    _ratio,
)
from adpulse.storage.warehouse.sql import quote

DATASOURCE_UID: Final = "adpulse-warehouse"
DATASOURCE_TYPE: Final = "grafana-postgresql-datasource"
DATASOURCE_NAME: Final = "adpulse warehouse"
DASHBOARD_UID: Final = "adpulse-overview"
DASHBOARD_TITLE: Final = "adpulse: ad engagement"
#: Where Grafana finds the password (expanded by Grafana from its environment).
PASSWORD_ENV: Final = "ADPULSE_WAREHOUSE_PASSWORD"
#: The custom "All" value of the filter variables. Grafana inserts a custom all value
#: as it is, unquoted, so it is written as an SQL string literal.
ALL_VALUE: Final = "'__all__'"
#: Filter variables: dashboard variable name = rollup/fact column name.
FILTER_VARIABLES: Final = ("campaign", "platform", "location")
REFRESH: Final = "5s"
#: Rows of the ranking tables (the query layer's default limit).
RANKING_LIMIT: Final = 10
#: Most values a filter variable offers (as queries.dimension_values).
VARIABLE_VALUES_LIMIT: Final = 10_000

DATASOURCE_FILE: Final = Path("provisioning/datasources/adpulse.yaml")
PROVIDER_FILE: Final = Path("provisioning/dashboards/adpulse.yaml")
DASHBOARD_FILE: Final = Path("dashboards/adpulse.json")

#: Grafana's PostgreSQL data source knows these sslmodes; libpq's "prefer" and "allow"
#: (try TLS, fall back) have no equivalent there and become "disable".
_GRAFANA_SSLMODES: Final = ("disable", "require", "verify-ca", "verify-full")
_SEARCH_PATH: Final = re.compile(r"-c\s*search_path\s*=\s*(\S+)")


class GrafanaExportError(ValueError):
    """The export cannot be made as configured; the message says what to change."""


# --- the data source ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WarehouseConnection:
    """What Grafana needs to reach the warehouse (never the password)."""

    host: str
    port: int
    database: str
    user: str
    sslmode: str
    #: The schema holding the tables, when not the default search path.
    schema: str | None


def warehouse_connection(url: str, schema: str | None = None) -> WarehouseConnection:
    """The connection parts of a ``postgresql://`` ``warehouse_url``, read by libpq's own
    parser (so every form psycopg accepts is understood the same way).

    The schema is ``schema`` if given, else the first entry of a ``search_path`` set in
    the URL's ``options`` (``?options=-csearch_path%3Dadpulse``), else None.
    """
    if not url.startswith(("postgresql://", "postgres://")):
        raise GrafanaExportError(
            "Grafana provisioning is for the PostgreSQL warehouse; set warehouse_url"
            " (env ADPULSE_WAREHOUSE_URL) to postgresql://USER@HOST:PORT/DB"
            f" (it is {redact_url(url)!r})"
        )
    from psycopg import conninfo

    try:
        parts = conninfo.conninfo_to_dict(url)
    except Exception as exc:  # psycopg.ProgrammingError, which may quote the whole URL
        reason = redact_url(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        raise GrafanaExportError(
            f"warehouse_url {redact_url(url)!r} is not a valid PostgreSQL URL: {reason}"
        ) from None
    host = str(parts.get("host") or "localhost").split(",")[0]
    port = str(parts.get("port") or "5432").split(",")[0]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise GrafanaExportError(
            f"warehouse_url {redact_url(url)!r} has port {port!r}; expected 1 to 65535"
        )
    if schema is None:
        found = _SEARCH_PATH.search(str(parts.get("options") or ""))
        if found:
            schema = found.group(1).split(",")[0].strip().strip('"') or None
    sslmode = str(parts.get("sslmode") or "disable")
    return WarehouseConnection(
        host=host,
        port=int(port),
        database=str(parts.get("dbname") or parts.get("user") or "postgres"),
        user=str(parts.get("user") or "postgres"),
        sslmode=sslmode if sslmode in _GRAFANA_SSLMODES else "disable",
        schema=schema,
    )


def datasource_ref() -> dict[str, str]:
    """How panels, targets and variables name the provisioned data source."""
    return {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}


def datasource_provisioning(connection: WarehouseConnection) -> dict[str, Any]:
    """The data source provisioning document (``apiVersion: 1``)."""
    # a host starting with "/" is a Unix socket directory, which has no port
    socket = connection.host.startswith("/")
    url = connection.host if socket else f"{connection.host}:{connection.port}"
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": DATASOURCE_NAME,
                "uid": DATASOURCE_UID,
                "type": DATASOURCE_TYPE,
                "access": "proxy",
                "url": _literal(url),
                "user": _literal(connection.user),
                "isDefault": False,
                "editable": False,
                "jsonData": {
                    "database": _literal(connection.database),
                    "sslmode": connection.sslmode,
                    "postgresVersion": 1500,
                    "timescaledb": False,
                },
                # Grafana expands $NAME from its environment: the secret stays out of files.
                "secureJsonData": {"password": f"${PASSWORD_ENV}"},
            }
        ],
    }


def _literal(value: str) -> str:
    """``value`` protected from Grafana's ``$NAME`` expansion of provisioning files."""
    return value.replace("$", "$$")


def dashboard_provider(dashboards_path: str) -> dict[str, Any]:
    """The dashboard provider provisioning document: the JSON files under ``dashboards_path``."""
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "adpulse",
                "orgId": 1,
                "folder": "adpulse",
                "type": "file",
                "disableDeletion": False,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 30,
                "options": {"path": _literal(dashboards_path)},
            }
        ],
    }


# --- panel SQL ------------------------------------------------------------------------------
def variable(name: str) -> str:
    """A dashboard variable as SQL: its values quoted by Grafana's ``sqlstring`` format."""
    return f"${{{name}:sqlstring}}"


def _filter_condition(column: str) -> str:
    values = variable(column)
    return f"({ALL_VALUE} IN ({values}) OR {column} IN ({values}))"


def _range_conditions(time_column: str) -> list[str]:
    """The dashboard range, half-open like the query layer's ``[start, end)``."""
    return [f"{time_column} >= $__timeFrom()", f"{time_column} < $__timeTo()"]


def _where(conditions: Sequence[str]) -> str:
    return " WHERE " + " AND ".join(conditions) if conditions else ""


#: The headline numbers of :func:`adpulse.serving.queries.summary`, over its CTEs ``r``
#: (summed rollups) and ``l`` (latency of attributed conversions).
_SUMMARY_OUTPUTS: Final = {
    **{name: f"r.{name}" for name in _ROLLUP_SUMS},
    "ctr": _ratio("r.clicks", "r.impressions"),
    "conversion_rate": _ratio("r.attributed_conversions", "r.clicks"),
    "revenue_per_conversion": _ratio("r.revenue", "r.conversions"),
    **{name: f"l.{name}" for name in _LATENCY if name != "conversions"},
}
#: Per-bucket outputs of :func:`adpulse.serving.queries.bucketed_timeseries`.
_BUCKET_OUTPUTS: Final = {
    **{name: f"totals.{name}" for name in _ROLLUP_SUMS},
    "ctr": _ratio("totals.clicks", "totals.impressions"),
    "conversion_rate": _ratio("totals.attributed_conversions", "totals.clicks"),
    "revenue_per_conversion": _ratio("totals.revenue", "totals.conversions"),
    "latency_p50": "lat.latency_p50",
    "latency_p90": "lat.latency_p90",
}
_RATES: Final = {
    "ctr": _ratio("clicks", "impressions"),
    "conversion_rate": _ratio("attributed_conversions", "clicks"),
    "revenue_per_conversion": _ratio("revenue", "conversions"),
}


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
            "click_time IS NOT NULL",
            *_range_conditions("event_time"),
            *(_filter_condition(c) for c in FILTER_VARIABLES),
        ]

    def summary(self, outputs: Sequence[str]) -> str:
        """One row: the headline numbers ``outputs`` (names of queries.summary's columns)."""
        ctes: dict[str, str] = {}
        expressions = " ".join(_SUMMARY_OUTPUTS[name] for name in outputs)
        if re.search(r"\br\.", expressions):
            sums = ", ".join(f"{expr} AS {name}" for name, expr in _ROLLUP_SUMS.items())
            rollup = self.table("rollup_minute")
            ctes["r"] = f"SELECT {sums} FROM {rollup}{_where(self._rollup_conditions())}"
        if re.search(r"\bl\.", expressions):
            latency = ", ".join(
                f"{expr} AS {name}" for name, expr in _LATENCY.items() if name != "conversions"
            )
            facts = self.table("fact_conversions")
            ctes["l"] = f"SELECT {latency} FROM {facts}{_where(self._latency_conditions())}"
        with_clause = ", ".join(f"{name} AS ({body})" for name, body in ctes.items())
        sources = " CROSS JOIN ".join(ctes)
        columns = ", ".join(f"{_SUMMARY_OUTPUTS[name]} AS {name}" for name in outputs)
        return f"WITH {with_clause} SELECT {columns} FROM {sources}"

    def per_minute(self, outputs: Sequence[str]) -> str:
        """Time series: ``outputs`` (queries.bucketed_timeseries columns) per minute bucket,
        only buckets with non-zero counts, as column ``time``."""
        sums = ", ".join(f"{expr} AS {name}" for name, expr in _ROLLUP_SUMS.items())
        rollup = self.table("rollup_minute")
        sql = (
            f"WITH totals AS (SELECT date_trunc('minute', minute) AS bucket, {sums}"
            f" FROM {rollup}{_where(self._rollup_conditions())}"
            f" GROUP BY date_trunc('minute', minute) HAVING {_NONZERO})"
        )
        join = ""
        if re.search(r"\blat\.", " ".join(_BUCKET_OUTPUTS[name] for name in outputs)):
            sql += (
                ", lat AS (SELECT date_trunc('minute', event_time) AS bucket,"
                f" {_LATENCY['latency_p50']} AS latency_p50,"
                f" {_LATENCY['latency_p90']} AS latency_p90"
                f" FROM {self.table('fact_conversions')}{_where(self._latency_conditions())}"
                " GROUP BY date_trunc('minute', event_time))"
            )
            join = " LEFT JOIN lat ON lat.bucket = totals.bucket"
        columns = ", ".join(f"{_BUCKET_OUTPUTS[name]} AS {name}" for name in outputs)
        return (
            f'{sql} SELECT totals.bucket AS "time", {columns} FROM totals{join}'
            " ORDER BY totals.bucket"
        )

    def by_campaign(self) -> str:
        """Counts and rates per campaign (queries.counts grouped by campaign, NULL last)."""
        ctes, _ = _grouped(
            self.table("rollup_minute"),
            "minute",
            self._rollup_conditions(),
            _ROLLUP_SUMS,
            _ROLLUP_INPUTS,
            "campaign",
            _NONZERO,
        )
        rates = ", ".join(f"{expr} AS {name}" for name, expr in _RATES.items())
        return (
            f"WITH {ctes} SELECT campaign, {', '.join(_ROLLUP_SUMS)}, {rates}"
            " FROM totals ORDER BY campaign NULLS LAST"
        )

    def breakdown(self, column: Literal["platform", "location"]) -> str:
        """Counts and rates per platform or location value (queries.breakdown)."""
        sums = ", ".join(f"{expr} AS {name}" for name, expr in _ROLLUP_SUMS.items())
        rates = ", ".join(f"{expr} AS {name}" for name, expr in _RATES.items())
        rollup = self.table("rollup_minute")
        # column is one of two literals (typed above), never a caller's string
        return (
            f"WITH totals AS (SELECT {column} AS value, {sums}"
            f" FROM {rollup}{_where(self._rollup_conditions())}"
            f" GROUP BY {column} HAVING {_NONZERO})"
            f" SELECT value, {', '.join(_ROLLUP_SUMS)}, {rates} FROM totals"
            " ORDER BY value NULLS LAST"
        )

    def top_ads(self, by: Literal["revenue", "conversion_rate"]) -> str:
        """queries.top_ads: best ads in the range; by conversion rate with ``$min_clicks``."""
        ctes, _ = _grouped(
            self.table("rollup_minute"),
            "minute",
            self._rollup_conditions(),
            _ROLLUP_SUMS,
            _ROLLUP_INPUTS,
            "ad",
            _NONZERO,
        )
        ranked = (
            f"ranked AS (SELECT ad_id, campaign, {', '.join(_ROLLUP_SUMS)},"
            f" {_RATES['ctr']} AS ctr, {_RATES['conversion_rate']} AS conversion_rate"
            " FROM totals)"
        )
        if by == "revenue":
            tail = f" ORDER BY revenue DESC, ad_id LIMIT {RANKING_LIMIT}"
        else:
            tail = (
                f" WHERE clicks >= CAST({variable('min_clicks')} AS BIGINT)"
                " ORDER BY conversion_rate DESC NULLS LAST, clicks DESC, ad_id"
                f" LIMIT {RANKING_LIMIT}"
            )
        return f"WITH {ctes}, {ranked} SELECT * FROM ranked{tail}"

    def trending(self) -> str:
        """queries.trending over the two ``$trending_window``-minute windows that end at
        the dashboard's end time (its start is not used, as in the query layer)."""
        end = "CAST($__timeTo() AS TIMESTAMP)"
        width = f"(CAST({variable('trending_window')} AS INTEGER) * INTERVAL '1 minute')"
        latest_start = f"({end} - {width})"
        previous_start = f"({end} - 2 * {width})"
        conditions = [
            "campaign IS NOT NULL",
            f"minute >= {previous_start}",
            f"minute < {end}",
            *self._rollup_conditions(with_range=False),
        ]
        latest, previous = f"minute >= {latest_start}", f"minute < {latest_start}"
        min_clicks = f"CAST({variable('min_clicks')} AS BIGINT)"

        def window_sum(condition: str, measure: str, name: str) -> str:
            return (
                f"CAST(COALESCE(SUM(CASE WHEN {condition} THEN {measure} END), 0) AS BIGINT)"
                f" AS {name}"
            )

        return (
            "WITH windows AS (SELECT campaign,"
            f" {window_sum(previous, 'clicks', 'previous_clicks')},"
            f" {window_sum(previous, 'attributed_conversions', 'previous_conversions')},"
            f" {window_sum(latest, 'clicks', 'latest_clicks')},"
            f" {window_sum(latest, 'attributed_conversions', 'latest_conversions')}"
            f" FROM {self.table('rollup_minute')}{_where(conditions)} GROUP BY campaign"
            f" HAVING {_nonzero('clicks', 'attributed_conversions')}),"
            " rates AS (SELECT campaign, previous_clicks, previous_conversions,"
            f" {_ratio('previous_conversions', 'previous_clicks')} AS previous_rate,"
            " latest_clicks, latest_conversions,"
            f" {_ratio('latest_conversions', 'latest_clicks')} AS latest_rate"
            f" FROM windows WHERE previous_clicks >= {min_clicks}"
            f" AND latest_clicks >= {min_clicks})"
            " SELECT *, latest_rate - previous_rate AS change FROM rates"
            f" ORDER BY change DESC NULLS LAST, campaign LIMIT {RANKING_LIMIT}"
        )

    # -- pipeline health (queries.pipeline_status: over all data, not the range) ----------
    def stream_counters(self) -> str:
        """Ingest counters per stream, every stream shown (zeros when idle)."""
        sums = ", ".join(f"CAST(COALESCE(SUM(i.{c}), 0) AS BIGINT) AS {c}" for c in _STAT_COUNTS)
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
            f" FROM {self.table('dead_letters')}{_where(_range_conditions('received_at'))}"
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


# --- the dashboard --------------------------------------------------------------------------
PanelKind = Literal["stat", "timeseries", "table"]


@dataclass(frozen=True, slots=True)
class PanelSpec:
    """One panel: its title (unique), visualisation, SQL and size on the 24-column grid."""

    title: str
    kind: PanelKind
    sql: str
    description: str
    unit: str | None = None
    width: int = 24
    height: int = 8
    #: Stat panels: which fields to show; "" is Grafana's "numeric fields", "/.*/" all
    #: fields (needed for a time value).
    stat_fields: str = ""


def panel_specs(sql: PanelSql) -> list[PanelSpec]:
    """Every panel of the dashboard, in reading order."""
    stat = _stat_specs(sql)
    return [
        *stat,
        PanelSpec(
            "Events per minute",
            "timeseries",
            sql.per_minute(["impressions", "clicks", "conversions"]),
            "Impressions, clicks and conversions per minute bucket (event time).",
            unit="short",
            width=12,
        ),
        PanelSpec(
            "Revenue per minute",
            "timeseries",
            sql.per_minute(["revenue"]),
            "Revenue of the conversions per minute bucket (event time).",
            unit="currencyUSD",
            width=12,
        ),
        PanelSpec(
            "Rates per minute",
            "timeseries",
            sql.per_minute(["ctr", "conversion_rate"]),
            "CTR = clicks / impressions; conversion rate = attributed conversions / clicks.",
            unit="percentunit",
            width=12,
        ),
        PanelSpec(
            "Conversion latency per minute",
            "timeseries",
            sql.per_minute(["latency_p50", "latency_p90"]),
            "Click-to-conversion latency (p50, p90) of the attributed conversions per minute.",
            unit="s",
            width=12,
        ),
        PanelSpec(
            "Trending campaigns",
            "table",
            sql.trending(),
            "Change of conversions per click between the latest $trending_window minutes"
            " before the range's end and the window before; campaigns with at least"
            " $min_clicks clicks in both windows.",
            height=9,
        ),
        PanelSpec(
            "Top ads by revenue",
            "table",
            sql.top_ads("revenue"),
            "The ads with the most revenue in the range.",
            width=12,
            height=9,
        ),
        PanelSpec(
            "Top ads by conversion rate",
            "table",
            sql.top_ads("conversion_rate"),
            "Attributed conversions per click; ads with at least $min_clicks clicks.",
            width=12,
            height=9,
        ),
        PanelSpec(
            "Campaigns",
            "table",
            sql.by_campaign(),
            "Counts and rates per campaign (unknown ads last).",
            height=9,
        ),
        PanelSpec(
            "By platform",
            "table",
            sql.breakdown("platform"),
            "A conversion counts under its attributed click's platform.",
            width=12,
        ),
        PanelSpec(
            "By location",
            "table",
            sql.breakdown("location"),
            "A conversion counts under its attributed click's location.",
            width=12,
        ),
        PanelSpec(
            "Records per stream",
            "table",
            sql.stream_counters(),
            "Pipeline health over all data: received = accepted + rejected.",
            width=16,
        ),
        PanelSpec(
            "Last commit",
            "stat",
            sql.last_commit(),
            "Time of the latest committed batch.",
            unit="dateTimeAsIso",
            width=8,
            stat_fields="/.*/",
        ),
        PanelSpec(
            "Dead letters per minute",
            "timeseries",
            sql.dead_letters_per_minute(),
            "Rejected records per minute of arrival, by stream.",
            unit="short",
            width=8,
        ),
        PanelSpec(
            "Dead letters by reason",
            "table",
            sql.dead_letters_by_reason(),
            "Every rejected record, by stream and reason (all data).",
            width=8,
        ),
        PanelSpec(
            "Watermarks",
            "table",
            sql.watermarks(),
            "Per stream and partition: watermark and newest event time.",
            width=8,
        ),
    ]


#: Headline stat panels: (title, queries.summary column, unit).
HEADLINES: Final = (
    ("Impressions", "impressions", "short"),
    ("Clicks", "clicks", "short"),
    ("Conversions", "conversions", "short"),
    ("Revenue", "revenue", "currencyUSD"),
    ("CTR", "ctr", "percentunit"),
    ("Conversion rate", "conversion_rate", "percentunit"),
    ("Revenue per conversion", "revenue_per_conversion", "currencyUSD"),
    ("Latency mean", "latency_mean", "s"),
    ("Latency p50", "latency_p50", "s"),
    ("Latency p90", "latency_p90", "s"),
)


def _stat_specs(sql: PanelSql) -> list[PanelSpec]:
    return [
        PanelSpec(
            title,
            "stat",
            sql.summary([column]),
            f"{title} over the range and filters (the query layer's summary.{column}).",
            unit=unit,
            width=6 if i < 4 else 8,
            height=4,
        )
        for i, (title, column, unit) in enumerate(HEADLINES)
    ]


def _layout(specs: Iterable[PanelSpec]) -> list[dict[str, int]]:
    """Grid positions: left to right, wrapping at 24 columns."""
    positions, x, y, row_height = [], 0, 0, 0
    for spec in specs:
        if x + spec.width > 24:
            x, y, row_height = 0, y + row_height, 0
        positions.append({"h": spec.height, "w": spec.width, "x": x, "y": y})
        x += spec.width
        row_height = max(row_height, spec.height)
    return positions


def _panel(panel_id: int, spec: PanelSpec, grid: dict[str, int]) -> dict[str, Any]:
    ref = datasource_ref()
    defaults: dict[str, Any] = {}
    if spec.unit is not None:
        defaults["unit"] = spec.unit
    options: dict[str, Any]
    if spec.kind == "stat":
        options = {
            "reduceOptions": {
                "calcs": ["lastNotNull"],
                "fields": spec.stat_fields,
                "values": False,
            },
            "colorMode": "none",
            "graphMode": "none",
            "textMode": "value",
        }
    elif spec.kind == "timeseries":
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "spanNulls": False}
    else:
        options = {"showHeader": True, "cellHeight": "sm"}
    return {
        "id": panel_id,
        "type": spec.kind,
        "title": spec.title,
        "description": spec.description,
        "datasource": ref,
        "gridPos": grid,
        "targets": [
            {
                "refId": "A",
                "datasource": ref,
                "editorMode": "code",
                "format": "time_series" if spec.kind == "timeseries" else "table",
                "rawQuery": True,
                "rawSql": spec.sql,
            }
        ],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
    }


def _query_variable(name: str, label: str, sql: str) -> dict[str, Any]:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": datasource_ref(),
        "definition": sql,
        "query": sql,
        "refresh": 2,  # on time range change: new values appear as data arrives
        "multi": True,
        "includeAll": True,
        "allValue": ALL_VALUE,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 1,
        "hide": 0,
    }


def _custom_variable(name: str, label: str, choices: Sequence[int], default: int) -> dict[str, Any]:
    values = sorted({*choices, default})
    return {
        "type": "custom",
        "name": name,
        "label": label,
        "query": ",".join(str(v) for v in values),
        "multi": False,
        "includeAll": False,
        "current": {"selected": True, "text": str(default), "value": str(default)},
        "options": [{"selected": v == default, "text": str(v), "value": str(v)} for v in values],
        "hide": 0,
    }


def dashboard(sql: PanelSql, settings: Settings) -> dict[str, Any]:
    """The dashboard model (the JSON Grafana stores), every panel on the provisioned source."""
    specs = panel_specs(sql)
    titles = [spec.title for spec in specs]
    if len(set(titles)) != len(titles):  # pragma: no cover - a programming error
        raise AssertionError("panel titles must be unique")
    panels = [
        _panel(i, spec, grid)
        for i, (spec, grid) in enumerate(zip(specs, _layout(specs), strict=True), start=1)
    ]
    labels = {"campaign": "Campaign", "platform": "Platform", "location": "Location"}
    variables = [_query_variable(c, labels[c], sql.variable_values(c)) for c in FILTER_VARIABLES]
    variables.append(
        _custom_variable(
            "trending_window",
            "Trending window (min)",
            (5, 15, 30, 60),
            settings.trending_window_minutes,
        )
    )
    variables.append(
        _custom_variable("min_clicks", "Min clicks", (0, 5, 10, 20, 50, 100), settings.min_clicks)
    )
    return {
        "uid": DASHBOARD_UID,
        "title": DASHBOARD_TITLE,
        "description": "Written by `adpulse grafana export`; regenerate instead of editing.",
        "tags": ["adpulse"],
        "timezone": "utc",
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": REFRESH,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": variables},
        "panels": panels,
    }


# --- files ------------------------------------------------------------------------------------
def to_yaml(value: Any, indent: int = 0) -> str:
    """``value`` (dicts, lists, strings, numbers, booleans) as block YAML.

    Strings are written as JSON strings, which YAML reads as double-quoted scalars: no
    value can be mistaken for another type or break the structure.
    """
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(item, indent + 1))
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                body = to_yaml(item, indent + 1)
                lines.append(f"{pad}- {body.lstrip()}")
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return "\n".join(lines)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(str(value))


_HEADER: Final = "# Written by `adpulse grafana export`; regenerate rather than edit.\n"


def export(
    directory: Path,
    settings: Settings,
    *,
    schema: str | None = None,
    dashboards_path: str | None = None,
) -> list[Path]:
    """Write the provisioning files under ``directory``; return their paths.

    ``schema`` overrides the one read from ``warehouse_url``; ``dashboards_path`` is
    where Grafana will find ``DIR/dashboards`` (default: its absolute path here, for a
    Grafana on this machine; give the mounted path for a container).
    """
    connection = warehouse_connection(settings.warehouse_url, schema)
    directory = directory.expanduser().resolve()
    path = dashboards_path or str(directory / DASHBOARD_FILE.parent)
    documents: list[tuple[Path, str]] = [
        (
            DATASOURCE_FILE,
            _HEADER
            + f"# The password comes from ${PASSWORD_ENV} in Grafana's environment.\n"
            + to_yaml(datasource_provisioning(connection))
            + "\n",
        ),
        (PROVIDER_FILE, _HEADER + to_yaml(dashboard_provider(path)) + "\n"),
        (
            DASHBOARD_FILE,
            json.dumps(dashboard(PanelSql(connection.schema), settings), indent=2) + "\n",
        ),
    ]
    written = []
    try:
        for relative, text in documents:
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            written.append(target)
    except OSError as exc:
        raise GrafanaExportError(
            f"cannot write the Grafana files under {directory}: {exc}"
        ) from exc
    return written
