"""The provisioned PostgreSQL data source and the dashboard file provider."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from adpulse.config import redact_url

DATASOURCE_UID: Final = "adpulse-warehouse"
DATASOURCE_TYPE: Final = "grafana-postgresql-datasource"
DATASOURCE_NAME: Final = "adpulse warehouse"
#: Where Grafana finds the password (expanded by Grafana from its environment).
PASSWORD_ENV: Final = "ADPULSE_WAREHOUSE_PASSWORD"
#: The custom "All" value of the filter variables. Grafana inserts a custom all value

#: Grafana's PostgreSQL data source knows these sslmodes; libpq's "prefer" and "allow"
#: (try TLS, fall back) have no equivalent there and become "disable".
_GRAFANA_SSLMODES: Final = ("disable", "require", "verify-ca", "verify-full")
_SEARCH_PATH: Final = re.compile(r"-c\s*search_path\s*=\s*(\S+)")


class GrafanaExportError(ValueError):
    """The export cannot be made as configured; the message says what to change."""


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
