"""The dashboard model: panels (title, kind, SQL, unit, size), their layout, and the
filter and option variables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from adpulse.config import Settings
from adpulse.metrics import CTR, LATENCY, REVENUE, headlines
from adpulse.operations.grafana.datasource import datasource_ref
from adpulse.operations.grafana.panels import ALL_VALUE, FILTER_VARIABLES, PanelSql

DASHBOARD_UID: Final = "adpulse-overview"
DASHBOARD_TITLE: Final = "adpulse: ad engagement"
REFRESH: Final = "5s"


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
            unit=REVENUE.unit,
            width=12,
        ),
        PanelSpec(
            "Rates per minute",
            "timeseries",
            sql.per_minute(["ctr", "conversion_rate"]),
            "CTR = clicks / impressions; conversion rate = attributed conversions / clicks.",
            unit=CTR.unit,
            width=12,
        ),
        PanelSpec(
            "Conversion latency per minute",
            "timeseries",
            sql.per_minute(["latency_p50", "latency_p90"]),
            "Click-to-conversion latency (p50, p90) of the attributed conversions per minute.",
            unit=LATENCY.unit,
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


#: Headline stat panels: (title, queries.summary column, unit), from the metric catalog.
HEADLINES: Final = tuple((h.title, h.column, h.unit) for h in headlines())


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
