"""Live reads: a warehouse paired with a serving store, and the store's rows made
queryable by the query layer's own SQL.

:class:`LiveWarehouse` is a :class:`~adpulse.storage.warehouse.base.Warehouse` (every
call goes to the warehouse) that also carries a serving store; the query layer
(:func:`adpulse.serving.queries.sources.reader`) reads a live view from the store when the
store holds the requested range. :class:`LiveTables` runs the very SQL the query layer
sends to the warehouse over the store's rows, in an in-memory DuckDB, with tables named
as in the warehouse (``rollup_minute``, ``fact_conversions``); so both sources give the
same numbers by construction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import duckdb
import polars as pl

from adpulse.contracts import Stream
from adpulse.serving.store.base import LiveRows, ServingStore
from adpulse.storage.warehouse.base import (
    BatchOutput,
    DimensionKind,
    DimensionLoadResult,
    PartitionWatermark,
    SnapshotRead,
    Warehouse,
)

if TYPE_CHECKING:
    from adpulse.storage.warehouse.leases import PartitionLeases, WorkerIdentity

log = logging.getLogger(__name__)


_engine: duckdb.DuckDBPyConnection | None = None
_engine_lock = threading.Lock()


def _cursor() -> duckdb.DuckDBPyConnection:
    """A cursor of the process's one in-memory DuckDB: opening a database costs far more
    than a query here, while a cursor is cheap and keeps its registered tables private."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = duckdb.connect(":memory:")
        return _engine.cursor()


class LiveTables:
    """The store's rows for one range, answering :meth:`query` like a warehouse would."""

    def __init__(self, rows: LiveRows) -> None:
        self.rows = rows

    def query(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
        with _cursor() as cursor:
            cursor.register("rollup_minute", self.rows.rollups.to_arrow())
            cursor.register("fact_conversions", self.rows.conversions.to_arrow())
            frame: pl.DataFrame = cursor.sql(sql, params=list(params) or None).pl()
            return frame


class LiveWarehouse(Warehouse):
    """``warehouse`` for everything, plus ``store`` for the live views (see module docs)."""

    def __init__(self, warehouse: Warehouse, store: ServingStore) -> None:
        self.warehouse = warehouse
        self.store = store
        self.dialect = warehouse.dialect
        self.shares_partitions = warehouse.shares_partitions

    def live(
        self, start: datetime, end: datetime | None, columns: frozenset[str]
    ) -> LiveTables | None:
        """The store's rows of minutes ``[start, end)``, rollups kept at least by the key
        ``columns``; None when the store does not hold that range or cannot be read (the
        warehouse then answers)."""
        try:
            rows = self.store.read(start, end, columns)
        except Exception as exc:  # noqa: BLE001 - any store failure: read the warehouse
            log.warning("serving store read failed; reading the warehouse: %s", exc)
            return None
        return None if rows is None else LiveTables(rows)

    # -- everything else is the warehouse's ----------------------------------------------
    def create_schema(self) -> None:
        self.warehouse.create_schema()

    def close(self) -> None:
        try:
            self.store.close()
        finally:
            self.warehouse.close()

    def commit(self, output: BatchOutput) -> None:
        self.warehouse.commit(output)

    def load_offsets(self) -> dict[tuple[Stream, int], str]:
        return self.warehouse.load_offsets()

    def load_watermarks(self) -> dict[tuple[Stream, int], PartitionWatermark]:
        return self.warehouse.load_watermarks()

    def next_batch_id(self) -> int:
        return self.warehouse.next_batch_id()

    def reserve_batch_ids(self, count: int) -> int:
        return self.warehouse.reserve_batch_ids(count)

    def partition_leases(
        self, worker: WorkerIdentity, partitions: int, ttl_seconds: float
    ) -> PartitionLeases:
        return self.warehouse.partition_leases(worker, partitions, ttl_seconds)

    def load_event_ids(
        self, table: str, partitions: Sequence[int], since: datetime
    ) -> pl.DataFrame:
        return self.warehouse.load_event_ids(table, partitions, since)

    def load_facts(
        self, table: str, partitions: Sequence[int], since: datetime, columns: Sequence[str]
    ) -> pl.DataFrame:
        return self.warehouse.load_facts(table, partitions, since, columns)

    def load_dimension(
        self, kind: DimensionKind, rows: pl.DataFrame, effective_from: datetime
    ) -> DimensionLoadResult:
        return self.warehouse.load_dimension(kind, rows, effective_from)

    def dimension(self, kind: DimensionKind) -> pl.DataFrame:
        return self.warehouse.dimension(kind)

    def dimension_revision(self) -> int:
        return self.warehouse.dimension_revision()

    def query(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
        return self.warehouse.query(sql, params)

    @contextmanager
    def snapshot(self) -> Iterator[SnapshotRead]:
        with self.warehouse.snapshot() as read:
            yield read
