"""Replacing an event-time range of facts and rollups in one transaction.

``adpulse reprocess`` recomputes history in batch (docs/reprocess.md) and swaps it in:
every fact whose ``event_time`` and every rollup row whose ``minute`` lies in
``[start, end)`` is deleted and the recomputed rows of that range are written, in ONE
transaction of the warehouse, so a reader sees either the old range or the new one.
Rows outside the range are never touched (a recomputation reads more history than it
replaces: clicks before the range attribute conversions inside it).

Written against the :class:`~.sql.SqlWarehouse` primitives, so the SQL is the shared,
portable one; DuckDB's impressions kept in Parquet segments are rewritten without the
range (a segment entirely inside the range is only unlisted).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

import polars as pl

from adpulse.storage.warehouse import schema
from adpulse.storage.warehouse.sql import SqlWarehouse, quote

#: The tables a range replacement writes, with the column that places a row in time.
REPLACED: dict[str, tuple[dict[str, pl.DataType], str]] = {
    "fact_impressions": (schema.FACT_IMPRESSIONS, "event_time"),
    "fact_clicks": (schema.FACT_CLICKS, "event_time"),
    "fact_conversions": (schema.FACT_CONVERSIONS, "event_time"),
    "rollup_minute": (schema.ROLLUP_MINUTE, "minute"),
}


def _in_range(column: str, start: datetime | None, end: datetime | None) -> pl.Expr:
    cond = pl.lit(True)
    if start is not None:
        cond = cond & (pl.col(column) >= start)
    if end is not None:
        cond = cond & (pl.col(column) < end)
    return cond


def _where(column: str, start: datetime | None, end: datetime | None) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []
    if start is not None:
        clauses.append(f"{quote(column)} >= ?")
        params.append(start)
    if end is not None:
        clauses.append(f"{quote(column)} < ?")
        params.append(end)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def replace_event_range(
    warehouse: SqlWarehouse,
    start: datetime | None,
    end: datetime | None,
    tables: Mapping[str, Iterable[pl.DataFrame]],
) -> dict[str, int]:
    """Replace ``[start, end)`` (None: unbounded) of each table in ``tables`` (names from
    :data:`REPLACED`) by the rows of its frames that lie in the range; returns the rows
    written per table. Times are naive UTC; ``start`` and ``end`` must be whole minutes
    (rollups are per minute)."""
    for bound in (start, end):
        if bound is not None and (bound.second or bound.microsecond):
            raise ValueError(f"range bounds must be whole minutes, got {bound}")
    unknown = set(tables) - set(REPLACED)
    if unknown:
        raise ValueError(f"cannot replace {sorted(unknown)}: only {sorted(REPLACED)}")
    written: dict[str, int] = {}
    from adpulse.storage.warehouse.duckdb import (
        SEGMENT_ROWS_TABLE,
        SEGMENTED,
        DuckDBWarehouse,
    )

    unlisted: list[Path] = []
    with warehouse._transaction():
        for table in tables:
            columns, time_column = REPLACED[table]
            target = table
            if isinstance(warehouse, DuckDBWarehouse) and table == SEGMENTED:
                unlisted = _cut_segments(warehouse, start, end)
                target = SEGMENT_ROWS_TABLE
            where, params = _where(time_column, start, end)
            warehouse._execute(f"DELETE FROM {quote(target)}{where}", params)
            rows = 0
            for frame in tables[table]:
                kept = schema.conform(frame, columns).filter(_in_range(time_column, start, end))
                if kept.height:
                    warehouse._append(table, kept, columns)
                    rows += kept.height
            written[table] = rows
    for path in unlisted:  # committed: the files no listing names any more
        path.unlink(missing_ok=True)
    return written


def _cut_segments(warehouse: object, start: datetime | None, end: datetime | None) -> list[Path]:
    """DuckDB: rewrite the listed impression segments that overlap the range without
    its rows (in the open transaction); returns the old files, to delete after commit."""
    from adpulse.storage.warehouse.duckdb import SEGMENTED, SEGMENTS_TABLE, DuckDBWarehouse

    assert isinstance(warehouse, DuckDBWarehouse)
    clauses, params = ["table_name = ?"], [SEGMENTED]
    if start is not None:
        clauses.append("max_event_time >= ?")
        params.append(start)  # type: ignore[arg-type]
    if end is not None:
        clauses.append("min_event_time < ?")
        params.append(end)  # type: ignore[arg-type]
    found = warehouse._fetch(
        f"SELECT file FROM {quote(SEGMENTS_TABLE)} WHERE {' AND '.join(clauses)}", params
    )
    old: list[Path] = []
    for name in found["file"].to_list():
        path = warehouse.segments_dir / name
        rest = pl.read_parquet(path).filter(~_in_range("event_time", start, end))
        warehouse._execute(
            f"DELETE FROM {quote(SEGMENTS_TABLE)} WHERE table_name = ? AND file = ?",
            [SEGMENTED, name],
        )
        if rest.height:
            warehouse._append_segment(rest)
        old.append(path)
    if old:
        warehouse._replace_view()
    return old
