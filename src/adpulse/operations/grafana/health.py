"""The pipeline-health dashboard: adpulse's Prometheus metrics (docs/metrics-prometheus.md)
on a Prometheus data source.

A dashboard of its own beside the warehouse one, written only when the export is given a
Prometheus URL: its panels read Prometheus, not the warehouse, and the warehouse
dashboard's campaign, platform and location filters mean nothing to them. Grafana finds
it through the same dashboard provider (the same directory).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

PROMETHEUS_DATASOURCE_FILE: Final = Path("provisioning/datasources/adpulse-prometheus.yaml")
HEALTH_DASHBOARD_FILE: Final = Path("dashboards/adpulse-pipeline-health.json")
PROMETHEUS_NAME: Final = "adpulse-prometheus"
PROMETHEUS_UID: Final = "adpulse-prometheus"
HEALTH_UID: Final = "adpulse-pipeline-health"
HEALTH_TITLE: Final = "adpulse: pipeline health"


@dataclass(frozen=True, slots=True)
class HealthPanel:
    """One time-series panel: PromQL ``queries`` as (expression, legend) pairs."""

    title: str
    description: str
    unit: str
    queries: tuple[tuple[str, str], ...]


def _p95(histogram: str, by: str = "") -> str:
    keys = f"le, {by}" if by else "le"
    return f"histogram_quantile(0.95, sum by ({keys}) (rate({histogram}_bucket[5m])))"


HEALTH_PANELS: Final = (
    HealthPanel(
        "Events received per second",
        "Records read from the log, per stream (all workers).",
        "ops",
        (("sum by (stream) (rate(adpulse_events_received_total[1m]))", "{{stream}}"),),
    ),
    HealthPanel(
        "Rejected, duplicate and late records per second",
        "Records dead-lettered, dropped as duplicates, or behind the allowed lateness.",
        "ops",
        (
            ("sum(rate(adpulse_events_rejected_total[5m]))", "rejected"),
            ("sum(rate(adpulse_events_duplicates_total[5m]))", "duplicates"),
            ("sum(rate(adpulse_events_late_total[5m]))", "late"),
        ),
    ),
    HealthPanel(
        "Dead letters per second by reason",
        "Why records were rejected (see robustness.md).",
        "ops",
        (("sum by (reason) (rate(adpulse_dead_letters_total[5m]))", "{{reason}}"),),
    ),
    HealthPanel(
        "Watermark delay",
        "Now minus each stream's watermark (its slowest partition): grows while a worker is"
        " stuck or behind.",
        "s",
        (("max by (stream) (adpulse_watermark_delay_seconds)", "{{stream}}"),),
    ),
    HealthPanel(
        "Lag",
        "Bytes in the log not yet processed (every process that runs a processor).",
        "bytes",
        (("sum(adpulse_lag_bytes)", "lag"),),
    ),
    HealthPanel(
        "Lag in records, and its age",
        "Records not yet processed; seconds from the oldest of them to the newest record"
        " appended (the slowest process).",
        "short",
        (("sum(adpulse_lag_records)", "records"), ("max(adpulse_lag_seconds)", "age (s)")),
    ),
    HealthPanel(
        "Failures in the last 5 minutes",
        "Failed warehouse commits, retried server operations by setting, restarts of"
        " crashed workers, and serving-store rebuilds after the store was current.",
        "short",
        (
            ("sum(increase(adpulse_commit_failures_total[5m]))", "commit failures"),
            (
                "sum by (setting) (increase(adpulse_server_retries_total[5m]))",
                "retries {{setting}}",
            ),
            ("sum(increase(adpulse_worker_restarts_total[5m]))", "worker restarts"),
            (
                'sum(increase(adpulse_store_rebuilds_total{kind="repair"}[5m]))',
                "store rebuilds",
            ),
        ),
    ),
    HealthPanel(
        "Batch step time (p95)",
        "95th percentile of one batch's time per processor step, and of its commit.",
        "s",
        (
            (_p95("adpulse_batch_step_duration_seconds", "step"), "{{step}}"),
            (_p95("adpulse_commit_duration_seconds"), "commit"),
        ),
    ),
    HealthPanel(
        "API request time (p95) by route",
        "95th percentile of HTTP API request time per route template.",
        "s",
        ((_p95("adpulse_http_request_duration_seconds", "route"), "{{route}}"),),
    ),
    HealthPanel(
        "API requests per second by status, and live-stream clients",
        "HTTP answers per status code; open live-feed streams.",
        "short",
        (
            (
                "sum by (status) (rate(adpulse_http_request_duration_seconds_count[1m]))",
                "{{status}}",
            ),
            ("sum(adpulse_live_stream_clients)", "live clients"),
        ),
    ),
)


def prometheus_ref() -> dict[str, str]:
    return {"type": "prometheus", "uid": PROMETHEUS_UID}


def prometheus_provisioning(url: str) -> dict[str, Any]:
    """The Prometheus data source document (``apiVersion: 1``)."""
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": PROMETHEUS_NAME,
                "uid": PROMETHEUS_UID,
                "type": "prometheus",
                "access": "proxy",
                "url": url.replace("$", "$$"),  # no $NAME expansion by Grafana
                "isDefault": False,
                "editable": False,
                "jsonData": {"httpMethod": "POST", "timeInterval": "15s"},
            }
        ],
    }


def health_dashboard() -> dict[str, Any]:
    """The dashboard model: a "Pipeline health" row, then its panels two per line."""
    ref = prometheus_ref()
    panels: list[dict[str, Any]] = [
        {
            "id": 1,
            "type": "row",
            "title": "Pipeline health",
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0},
            "panels": [],
        }
    ]
    for i, spec in enumerate(HEALTH_PANELS):
        panels.append(
            {
                "id": i + 2,
                "type": "timeseries",
                "title": spec.title,
                "description": spec.description,
                "datasource": ref,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 1 + 8 * (i // 2)},
                "targets": [
                    {"refId": chr(ord("A") + n), "datasource": ref, "expr": expr}
                    | {"legendFormat": legend, "range": True}
                    for n, (expr, legend) in enumerate(spec.queries)
                ],
                "fieldConfig": {"defaults": {"unit": spec.unit}, "overrides": []},
                "options": {
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}
                },
            }
        )
    return {
        "uid": HEALTH_UID,
        "title": HEALTH_TITLE,
        "description": "Written by `adpulse grafana export`; regenerate instead of editing.",
        "tags": ["adpulse"],
        "timezone": "utc",
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "15s",
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": []},
        "panels": panels,
    }
