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
import re
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


#: Whether the query layer's SQL (never a user's string) reads the conversions.
_READS_CONVERSIONS = re.compile(r"\bfact_conversions\b")


class LiveTables:
    """The store's rows for one range, answering :meth:`query` like a warehouse would.

    ``conversions``: whether ``rows`` holds the range's conversions (read only for views
    that need them); SQL reading ``fact_conversions`` without them is refused, so a view
    can never be answered from a missing table.
    """

    def __init__(self, rows: LiveRows, conversions: bool = True) -> None:
        self.rows = rows
        self.conversions = conversions

    def query(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
        if not self.conversions and _READS_CONVERSIONS.search(sql):
            raise RuntimeError(
                "a live view reads fact_conversions but its store rows were read without "
                "them: pass conversions=True to queries.reader()"
            )
        with _cursor() as cursor:
            cursor.register("rollup_minute", self.rows.rollups.to_arrow())
            cursor.register("fact_conversions", self.rows.conversions.to_arrow())
            frame: pl.DataFrame = cursor.sql(sql, params=list(params) or None).pl()
            return frame


def live_tables(
    store: ServingStore,
    start: datetime,
    end: datetime | None,
    columns: frozenset[str],
    *,
    conversions: bool = True,
) -> LiveTables | None:
    """The store's rows of minutes ``[start, end)``, rollups kept at least by the key
    ``columns``, with the conversions if ``conversions``; None when the store does not
    hold that range or cannot be read (the warehouse then answers)."""
    try:
        rows = store.read(start, end, columns, conversions=conversions)
    except Exception as exc:  # noqa: BLE001 - any store failure: read the warehouse
        log.warning("serving store read failed; reading the warehouse: %s", exc)
        return None
    return None if rows is None else LiveTables(rows, conversions)
