"""The provisioning files: YAML and JSON documents written under the export directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from adpulse.alerts.prometheus import rules_comment, rules_document
from adpulse.config import Settings
from adpulse.operations.grafana.dashboard import dashboard
from adpulse.operations.grafana.datasource import (
    PASSWORD_ENV,
    GrafanaExportError,
    dashboard_provider,
    datasource_provisioning,
    warehouse_connection,
)
from adpulse.operations.grafana.health import (
    HEALTH_DASHBOARD_FILE,
    PROMETHEUS_DATASOURCE_FILE,
    health_dashboard,
    prometheus_provisioning,
)
from adpulse.operations.grafana.panels import PanelSql

DATASOURCE_FILE: Final = Path("provisioning/datasources/adpulse.yaml")
PROVIDER_FILE: Final = Path("provisioning/dashboards/adpulse.yaml")
DASHBOARD_FILE: Final = Path("dashboards/adpulse.json")
#: Prometheus alerting rules equal to the built-in alerts (:mod:`adpulse.alerts.prometheus`).
RULES_FILE: Final = Path("prometheus/adpulse-rules.yml")


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


def rules_text(settings: Settings) -> str:
    """The Prometheus rules file of the built-in alerts with the bounds of ``settings``
    (written by the export and by ``adpulse prometheus rules``)."""
    return (
        "# Written by adpulse (`grafana export` or `alerts prometheus-rules`); regenerate rather"
        " than edit.\n" + rules_comment(settings) + to_yaml(rules_document(settings)) + "\n"
    )


def export(
    directory: Path,
    settings: Settings,
    *,
    schema: str | None = None,
    dashboards_path: str | None = None,
    prometheus_url: str | None = None,
) -> list[Path]:
    """Write the provisioning files under ``directory``; return their paths.

    ``schema`` overrides the one read from ``warehouse_url``; ``dashboards_path`` is
    where Grafana will find ``DIR/dashboards`` (default: its absolute path here, for a
    Grafana on this machine; give the mounted path for a container). With
    ``prometheus_url``, also a Prometheus data source and the pipeline-health dashboard
    (:mod:`.health`), and the Prometheus alerting rules of the built-in alerts, from
    ``settings`` (:data:`RULES_FILE`).
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
    if prometheus_url is not None:
        documents += [
            (
                PROMETHEUS_DATASOURCE_FILE,
                _HEADER + to_yaml(prometheus_provisioning(prometheus_url)) + "\n",
            ),
            (HEALTH_DASHBOARD_FILE, json.dumps(health_dashboard(), indent=2) + "\n"),
            (RULES_FILE, rules_text(settings)),
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
