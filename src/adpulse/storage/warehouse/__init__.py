"""Warehouses: the contract (:mod:`.base`), the shared schema (:mod:`.schema`), the
portable SQL layer (:mod:`.sql`) and one module per database (:mod:`.duckdb`,
:mod:`.postgres`).

:func:`open_warehouse` picks the backend from ``settings.warehouse_url``; database
drivers are imported only when their backend is chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adpulse.storage.warehouse.base import (
    BatchOutput,
    DimensionKind,
    DimensionLoadResult,
    PartitionWatermark,
    Warehouse,
)

if TYPE_CHECKING:
    from adpulse.config import Settings

__all__ = [
    "BatchOutput",
    "DimensionKind",
    "DimensionLoadResult",
    "PartitionWatermark",
    "Warehouse",
    "open_warehouse",
]

_ACCEPTED = (
    "'' (default: HOME/warehouse.duckdb), duckdb:///PATH,"
    " or postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE (also postgres://)"
)
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_warehouse(settings: Settings, read_only: bool = False) -> Warehouse:
    """Open the warehouse named by ``settings.warehouse_url``, creating its tables.

    ``""`` or ``duckdb:///PATH`` opens DuckDB at ``settings.warehouse_path``;
    ``postgresql://...`` (or ``postgres://...``) connects to PostgreSQL, with
    ``settings.warehouse_password`` when the URL has no password. Tables are created if
    missing unless ``read_only``. Anything else raises ``ValueError``; an unreachable
    server raises :class:`~.base.WarehouseUnavailableError` naming the setting.
    """
    url = settings.warehouse_url
    warehouse: Warehouse
    if url == "" or (url.startswith("duckdb:///") and len(url) > len("duckdb:///")):
        from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

        warehouse = DuckDBWarehouse(settings.warehouse_path, read_only=read_only)
    elif url.startswith(_POSTGRES_SCHEMES) and len(url) > len("postgres://"):
        from adpulse.outages import ServerTimeouts
        from adpulse.storage.warehouse.postgres import PostgresWarehouse

        warehouse = PostgresWarehouse(
            url,
            password=settings.warehouse_password,
            read_only=read_only,
            timeouts=ServerTimeouts.from_settings(settings),
        )
    else:
        from adpulse.config import redact_url

        raise ValueError(
            f"unsupported warehouse_url {redact_url(url)!r} (setting warehouse_url, env"
            f" ADPULSE_WAREHOUSE_URL); accepted: {_ACCEPTED}"
        )
    try:
        if not read_only:
            warehouse.create_schema()
    except BaseException:
        warehouse.close()
        raise
    return warehouse
