"""Live reads: the serving store's rows made queryable by the query layer's own SQL.

The query layer (:func:`adpulse.serving.queries.sources.reader`), handed a serving store
next to the warehouse, reads a live view from the store (:func:`live_tables`) when the
store holds the requested range. :class:`LiveTables` runs the very SQL the query layer
sends to the warehouse over the store's rows, in an in-memory DuckDB, with tables named
as in the warehouse (``rollup_minute``, ``fact_conversions``); so both sources give the
same numbers by construction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb
import polars as pl

from adpulse.serving.store.base import LiveRows, ServingStore

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


def live_tables(
    store: ServingStore, start: datetime, end: datetime | None, columns: frozenset[str]
) -> LiveTables | None:
    """The store's rows of minutes ``[start, end)``, rollups kept at least by the key
    ``columns``; None when the store does not hold that range or cannot be read (the
    warehouse then answers)."""
    try:
        rows = store.read(start, end, columns)
    except Exception as exc:  # noqa: BLE001 - any store failure: read the warehouse
        log.warning("serving store read failed; reading the warehouse: %s", exc)
        return None
    return None if rows is None else LiveTables(rows)
