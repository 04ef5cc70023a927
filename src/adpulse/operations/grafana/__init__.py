"""``adpulse grafana export DIR``: Grafana provisioning files for the PostgreSQL warehouse.

Writes, under ``DIR``:

- ``provisioning/datasources/adpulse.yaml``: a PostgreSQL data source built from
  ``warehouse_url`` (host, port, database, user, sslmode). The password is never
  written: the file references ``$ADPULSE_WAREHOUSE_PASSWORD``, which Grafana expands
  from its own environment when it reads provisioning files;
- ``provisioning/dashboards/adpulse.yaml``: a file provider for ``DIR/dashboards``;
- with ``--prometheus-url``: a Prometheus data source, the pipeline-health dashboard
  (:mod:`.health`) and ``prometheus/adpulse-rules.yml``, the built-in alerts as
  Prometheus alerting rules (:mod:`adpulse.alerts.prometheus`);
- ``dashboards/adpulse.json``: one dashboard with every metric of the product brief,
  filterable by campaign, platform and location (multi-value, with "All") and by the
  dashboard time range, refreshing every 5 s.

The panel SQL is rendered from the metric catalog (:mod:`adpulse.metrics`) and
the query layer's own builders (:mod:`adpulse.serving.queries`), so a panel computes what
the CLI, the HTTP API and the built-in dashboard show for the same range and filters:

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

One module per topic: :mod:`.datasource` (the data source and the dashboard provider),
:mod:`.panels` (the SQL of every panel and variable), :mod:`.dashboard` (panels, layout,
variables), :mod:`.files` (the documents written by :func:`export`).
"""

from __future__ import annotations

from adpulse.operations.grafana.dashboard import (
    DASHBOARD_TITLE,
    DASHBOARD_UID,
    HEADLINES,
    REFRESH,
    PanelKind,
    PanelSpec,
    dashboard,
    panel_specs,
)
from adpulse.operations.grafana.datasource import (
    DATASOURCE_NAME,
    DATASOURCE_TYPE,
    DATASOURCE_UID,
    PASSWORD_ENV,
    GrafanaExportError,
    WarehouseConnection,
    dashboard_provider,
    datasource_provisioning,
    datasource_ref,
    warehouse_connection,
)
from adpulse.operations.grafana.files import (
    DASHBOARD_FILE,
    DATASOURCE_FILE,
    PROVIDER_FILE,
    RULES_FILE,
    export,
    rules_text,
    to_yaml,
)
from adpulse.operations.grafana.panels import (
    ALL_VALUE,
    FILTER_VARIABLES,
    RANKING_LIMIT,
    VARIABLE_VALUES_LIMIT,
    PanelSql,
    variable,
)

__all__ = [
    "ALL_VALUE",
    "DASHBOARD_FILE",
    "DASHBOARD_TITLE",
    "DASHBOARD_UID",
    "DATASOURCE_FILE",
    "DATASOURCE_NAME",
    "DATASOURCE_TYPE",
    "DATASOURCE_UID",
    "FILTER_VARIABLES",
    "HEADLINES",
    "PASSWORD_ENV",
    "PROVIDER_FILE",
    "RANKING_LIMIT",
    "REFRESH",
    "RULES_FILE",
    "VARIABLE_VALUES_LIMIT",
    "GrafanaExportError",
    "PanelKind",
    "PanelSpec",
    "PanelSql",
    "WarehouseConnection",
    "dashboard",
    "dashboard_provider",
    "datasource_provisioning",
    "datasource_ref",
    "export",
    "panel_specs",
    "rules_text",
    "to_yaml",
    "variable",
    "warehouse_connection",
]
