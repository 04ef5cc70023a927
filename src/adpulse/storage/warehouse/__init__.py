"""Warehouses: the contract (:mod:`.base`), the shared schema (:mod:`.schema`), the
portable SQL layer (:mod:`.sql`) and one module per database (:mod:`.duckdb`,
:mod:`.postgres`, :mod:`.redshift` on top of it, loading through :mod:`.s3staging`).

:func:`open_warehouse` picks the backend from ``settings.warehouse_url`` (the table:
:mod:`adpulse.backends`); database drivers are imported only when their backend is chosen.
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


def open_warehouse(settings: Settings, read_only: bool = False) -> Warehouse:
    """Open the warehouse named by ``settings.warehouse_url``, creating its tables.

    ``""`` or ``duckdb:///PATH`` opens DuckDB at ``settings.warehouse_path``;
    ``postgresql://...`` (or ``postgres://...``) connects to PostgreSQL, with
    ``settings.warehouse_password`` when the URL has no password; ``redshift://...``
    connects to Redshift, loading through S3 (:func:`open_redshift`) (the scheme -> opener
    table: :data:`adpulse.backends.WAREHOUSE`). Tables are created if missing unless
    ``read_only``. Anything else raises :class:`~adpulse.backends.UnsupportedUrlError`
    (a ``ValueError``); an unreachable server raises
    :class:`~.base.WarehouseUnavailableError` naming the setting.
    """
    from adpulse.backends import WAREHOUSE

    warehouse: Warehouse = WAREHOUSE.open(settings, read_only=read_only)
    try:
        if not read_only:
            warehouse.create_schema()
    except BaseException:
        warehouse.close()
        raise
    return warehouse


def open_duckdb(settings: Settings, read_only: bool = False) -> Warehouse:
    """``duckdb:///PATH`` or ``""``: DuckDB at ``settings.warehouse_path``."""
    from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

    return DuckDBWarehouse(
        settings.warehouse_path,
        read_only=read_only,
        memory_limit=settings.duckdb_memory_limit,
        threads=settings.duckdb_threads,
        checkpoint_threshold=settings.duckdb_checkpoint_threshold,
    )


def open_postgres(settings: Settings, read_only: bool = False) -> Warehouse:
    """``postgresql://...``: PostgreSQL (psycopg is imported only here)."""
    from adpulse.outages import ServerTimeouts
    from adpulse.storage.warehouse.postgres import PostgresWarehouse

    return PostgresWarehouse(
        settings.warehouse_url,
        password=settings.warehouse_password,
        read_only=read_only,
        timeouts=ServerTimeouts.from_settings(settings),
    )


def open_redshift(settings: Settings, read_only: bool = False) -> Warehouse:
    """``redshift://...``: Redshift, staging batches on S3 (psycopg and boto3 are imported
    only here); the URL's ``staging``/``iam_role``/``region``/``endpoint_url`` parameters
    or the ``redshift_*`` settings (see :func:`.redshift.redshift_target`)."""
    from adpulse.outages import ServerTimeouts
    from adpulse.storage.warehouse.redshift import RedshiftWarehouse, redshift_target
    from adpulse.storage.warehouse.s3staging import S3Staging

    target = redshift_target(settings)
    staging = S3Staging(
        target.staging, region=target.s3_region, endpoint_url=target.s3_endpoint_url
    )
    return RedshiftWarehouse(
        target.url,
        staging,
        target.iam_role,
        password=settings.warehouse_password,
        read_only=read_only,
        timeouts=ServerTimeouts.from_settings(settings),
    )
