"""The embedded warehouse: one DuckDB file, nothing to install.

Everything DuckDB-specific is here: type names, the connection and its cursors, zero-copy
staging of Polars frames (``register`` of Arrow data, then ``INSERT ... SELECT``), and
turning DuckDB's file-lock error into one a user can act on. The statements themselves
are the portable ones of :mod:`.sql`.

Impressions of a large batch (:data:`SEGMENT_MIN_ROWS` or more) are not inserted row by
row: they are written as one Parquet file, a *segment*, beside the database file, and
listed in ``fact_segments`` in the same transaction as the batch's other outputs and
offsets. ``fact_impressions`` is a view over the table of smaller batches' rows
(``fact_impressions_rows``) and the listed segments (by absolute path), replaced in that
same transaction, so every reader, inside adpulse or not, sees the committed segments
and no other. A segment whose commit failed is deleted at once; one left by a crash
before its commit is deleted at the next open for writing. Writing a segment costs
about a third of the CPU of inserting its rows (see docs/performance.md).

Threads: one writer connection, used under a lock by whoever commits (the processor);
every read opens its own cursor, so a dashboard thread reads committed data while the
processor commits, in the same process. Processes: DuckDB lets only one process open a
file (even read-only, while a writer holds it); a second one gets
:class:`WarehouseLockedError`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final

import duckdb
import polars as pl

from adpulse.storage.warehouse import schema
from adpulse.storage.warehouse.base import SnapshotRead, WarehouseUnavailableError
from adpulse.storage.warehouse.sql import (
    PRIMARY_KEYS,
    Dialect,
    SqlWarehouse,
    column_list,
    now_utc,
    quote,
)

log = logging.getLogger(__name__)

__all__ = ["DUCKDB", "DuckDBWarehouse", "WarehouseLockedError", "WarehouseUnavailableError"]

DUCKDB: Final = Dialect(
    name="duckdb",
    type_names={
        pl.String: "VARCHAR",
        pl.Int64: "BIGINT",
        pl.Int32: "INTEGER",
        pl.Datetime: "TIMESTAMP",
        pl.Date: "DATE",
        pl.Float64: "DOUBLE",
        pl.Boolean: "BOOLEAN",
        pl.Binary: "BLOB",
    },
)

_PID: Final = re.compile(r"PID (\d+)")

#: Connection settings. Vacuum off: the processor's appends leave a partly filled row
#: group per large batch, and vacuuming merges them again at every checkpoint, which
#: made each checkpoint ~6x slower in the commit benchmark. Nothing here deletes rows in
#: bulk (upserts update in place), so there is little for vacuum to reclaim.
#: max_vacuum_tasks=0: see the commit benchmark notes in the README (vacuuming the small
#: row groups each batch leaves made checkpoints ~6x slower).
DUCKDB_CONFIG: Final[dict[str, str | int | bool]] = {
    "max_vacuum_tasks": 0,
}
#: Default ``checkpoint_threshold`` (the setting ``duckdb_checkpoint_threshold``): DuckDB
#: holds the rows committed since its last checkpoint in memory (besides the WAL on disk)
#: until the WAL reaches this size, so under a live run its memory is a saw-tooth up to
#: about this much above its cached blocks (256MB: 60-255 MB under ``adpulse demo --rate
#: 5000``; 64MB: 14-95 MB, see docs/performance.md "Memory under live load").
DEFAULT_CHECKPOINT_THRESHOLD: Final = "64MB"


#: A batch's impressions from this many rows on are written as a Parquet segment (about
#: half a DuckDB row group: smaller ones, e.g. a live stream's, go to the table, so
#: segments stay few and large).
SEGMENT_MIN_ROWS: Final = 50_000
#: Upserts of at most this many rows (a commit's checkpoints and watermarks: one row per
#: stream and partition) bind their values as parameters of one statement; larger ones
#: are staged as a frame. Staging costs about as much as the statement itself (~1 ms on
#: the development machine), binding a value about 8 us.
UPSERT_VALUES_MAX_ROWS: Final = 64
#: The fact table stored in segments, and the table of its smaller batches' rows.
SEGMENTED: Final = "fact_impressions"
SEGMENT_ROWS_TABLE: Final = "fact_impressions_rows"
#: The manifest: one row per committed segment file.
SEGMENTS_TABLE: Final = "fact_segments"
SEGMENTS: Final = {
    "table_name": pl.String(),
    "file": pl.String(),
    "rows": pl.Int64(),
    "min_event_time": pl.Datetime("us"),
    "max_event_time": pl.Datetime("us"),
    "created_at": pl.Datetime("us"),
}


class WarehouseLockedError(WarehouseUnavailableError):
    """Another process holds the DuckDB file."""


class DuckDBWarehouse(SqlWarehouse):
    """A warehouse in one DuckDB file at ``path``.

    ``read_only=True`` opens an existing file without write access (``commit`` and
    ``load_dimension`` then raise). Use as a context manager or call :meth:`close`.
    """

    dialect = "duckdb"
    sql_dialect = DUCKDB

    def __init__(
        self,
        path: Path,
        read_only: bool = False,
        *,
        memory_limit: str = "",
        threads: int = 0,
        segment_min_rows: int = SEGMENT_MIN_ROWS,
        checkpoint_threshold: str = DEFAULT_CHECKPOINT_THRESHOLD,
    ) -> None:
        """``memory_limit``: the setting ``duckdb_memory_limit`` (see :func:`memory_limit`);
        ``threads``: DuckDB's worker threads (0: its default, one per core);
        ``checkpoint_threshold``: the WAL size at which DuckDB checkpoints (the setting
        ``duckdb_checkpoint_threshold``, see :data:`DEFAULT_CHECKPOINT_THRESHOLD`);
        ``segment_min_rows``: impressions of a batch from this many rows on are written
        as a Parquet segment (tests lower it to exercise segments on small data)."""
        self.path = Path(path)
        self.read_only = read_only
        self.segment_min_rows = segment_min_rows
        # Beside the database file, named after it (characters a file pattern would read
        # as wildcards replaced).
        segments = re.sub(r"[^A-Za-z0-9._-]", "_", self.path.name) + ".segments"
        self.segments_dir = self.path.parent.resolve() / segments / SEGMENTED
        self._written: list[Path] = []  # segments written by the open transaction
        if read_only and not self.path.exists():
            raise WarehouseUnavailableError(
                f"no warehouse at {self.path}: run the pipeline once to create it,"
                " or point warehouse_url (ADPULSE_WAREHOUSE_URL) at an existing file"
            )
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._root = _connect(self.path, read_only, memory_limit, threads, checkpoint_threshold)
        # The root connection only hands out cursors: the writer is one of them, and
        # each read gets its own, so no connection object is shared between threads.
        self._writer = self._root.cursor()
        self._write_lock = threading.Lock()
        self._cursor_lock = threading.Lock()
        self._staged: set[str] = set()  # views registered on the writer, see _stage
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    def create_schema(self) -> None:
        if self.read_only:
            return  # nothing to create, and no right to; reads fail clearly if tables lack
        with self._transaction():
            # A warehouse of an earlier version: its impressions table keeps its rows.
            if self._object_type(SEGMENTED) == "BASE TABLE":
                self._execute(
                    f"ALTER TABLE {quote(SEGMENTED)} RENAME TO {quote(SEGMENT_ROWS_TABLE)}"
                )
        super().create_schema()
        self.segments_dir.mkdir(parents=True, exist_ok=True)
        with self._transaction():
            self._settle_segments()
            self._replace_view()  # absolute paths: the warehouse may have been moved

    def _tables(self) -> dict[str, dict[str, pl.DataType]]:
        tables = super()._tables()
        tables[SEGMENT_ROWS_TABLE] = tables.pop(SEGMENTED)
        tables[SEGMENTS_TABLE] = SEGMENTS
        return tables

    def _object_type(self, name: str) -> str | None:
        found = self._fetch(
            "SELECT table_type FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_name = ?",
            [name],
        )
        return str(found.item()) if found.height else None

    def _listed_segments(self) -> list[str]:
        found = self._fetch(
            f"SELECT file FROM {quote(SEGMENTS_TABLE)} WHERE table_name = ? ORDER BY file",
            [SEGMENTED],
        )
        return [str(f) for f in found["file"]]

    def _replace_view(self) -> None:
        """``fact_impressions``: the rows table and every listed segment."""
        columns = column_list(list(schema.FACT_IMPRESSIONS))
        sql = f"SELECT {columns} FROM {quote(SEGMENT_ROWS_TABLE)}"
        files = [str(self.segments_dir / name) for name in self._listed_segments()]
        if files:
            paths = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            sql += f" UNION ALL SELECT {columns} FROM read_parquet([{paths}])"
        self._execute(f"CREATE OR REPLACE VIEW {quote(SEGMENTED)} AS {sql}")

    def _settle_segments(self) -> None:
        """After a crash: delete segment files no commit lists, and say which listed
        ones are missing."""
        listed = set(self._listed_segments())
        for path in self.segments_dir.glob("*.parquet"):
            if path.name not in listed:
                path.unlink()
        missing = sorted(f for f in listed if not (self.segments_dir / f).exists())
        if missing:
            raise WarehouseUnavailableError(
                f"{len(missing)} committed segment file(s) of {SEGMENTED} are missing from"
                f" {self.segments_dir} (e.g. {missing[0]}): restore them from a backup of"
                " the warehouse's directory (the .duckdb file and its .segments directory"
                " belong together)"
            )

    def _append(self, table: str, frame: pl.DataFrame, columns: Mapping[str, pl.DataType]) -> None:
        if table == SEGMENTED:
            if frame.height >= self.segment_min_rows:
                self._append_segment(frame)
                return
            table = SEGMENT_ROWS_TABLE
        super()._append(table, frame, columns)

    def _append_segment(self, frame: pl.DataFrame) -> None:
        """Write ``frame`` as a segment, list it and show it, in the open transaction."""
        path = self.segments_dir / f"{uuid.uuid4().hex}.parquet"
        self._written.append(path)
        frame.write_parquet(path, compression="zstd")
        with path.open("rb") as written:  # durable before the commit that lists it
            os.fsync(written.fileno())
        times = frame["event_time"]
        self._execute(
            f"INSERT INTO {quote(SEGMENTS_TABLE)} ({column_list(list(SEGMENTS))})"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [SEGMENTED, path.name, frame.height, times.min(), times.max(), now_utc()],
        )
        self._replace_view()

    def _discard_segments(self) -> None:
        written, self._written = self._written, []
        for path in written:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        self._root.close()

    def refuses_data(self, exc: BaseException) -> bool:
        """DuckDB's data errors: a value refused by the database, never its state.

        Data (the commit's rows are at fault; isolated and dead-lettered):
        ``duckdb.DataError`` (its subclasses ``ConversionException``,
        ``OutOfRangeException``, ``TypeMismatchException``: a value that does not fit
        its column), ``duckdb.IntegrityError`` (``ConstraintException``) and
        ``InvalidInputException`` (e.g. a string that is not valid UTF-8 in a staged
        frame).

        Infrastructure (stop or retry): ``OperationalError`` and its subclasses
        (``IOException`` for a full disk or a lost file, ``OutOfMemoryException``,
        ``TransactionException``, ``ConnectionException``), ``InterruptException``,
        ``FatalException`` (the database is invalidated), and ``OSError``. Errors of the
        SQL itself (``BinderException``, ``CatalogException``, ``ParserException``) are
        bugs or a wrong schema: they stop too, since no record can be blamed for them.
        """
        return isinstance(
            exc, duckdb.DataError | duckdb.IntegrityError | duckdb.InvalidInputException
        )

    # -- reads -------------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
        """Run one read-only statement (``SELECT``/``WITH``) on a cursor of its own."""
        return self._read(sql, params, select_only=True)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor on this database for one thread's own use (close it when done)."""
        with self._cursor_lock:
            return self._root.cursor()

    @contextmanager
    def snapshot(self) -> Iterator[SnapshotRead]:
        """Statements in one transaction of a cursor of their own: DuckDB's MVCC shows
        them the data committed when it began, nothing the writer commits later."""
        cursor = self.cursor()
        try:
            cursor.execute("BEGIN TRANSACTION")

            def read(sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
                frame: pl.DataFrame = cursor.sql(sql, params=list(params) or None).pl()
                return frame

            yield read
        finally:
            with suppress(duckdb.Error):
                cursor.execute("ROLLBACK")
            cursor.close()

    # -- SqlWarehouse primitives -----------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[None]:
        if self.read_only:
            raise WarehouseUnavailableError(
                f"warehouse {self.path} is open read-only; open it without read_only to write"
            )
        with self._write_lock:
            self._writer.execute("BEGIN TRANSACTION")
            try:
                yield
                self._writer.execute("COMMIT")
            except BaseException:
                # After a failed statement or COMMIT DuckDB needs an explicit ROLLBACK
                # before the connection is usable again.
                with suppress(duckdb.Error):  # nothing left open to roll back
                    self._writer.execute("ROLLBACK")
                for name in self._staged:  # release the frames staged views still hold
                    with suppress(duckdb.Error):
                        self._writer.unregister(name)
                self._staged.clear()
                self._discard_segments()
                raise
            self._written.clear()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._writer.execute(sql, list(params) or None)

    @contextmanager
    def _stage(self, name: str, frame: pl.DataFrame) -> Iterator[None]:
        # register() scans the frame's Arrow buffers in place: no row loop. Handed the
        # Arrow table (what DuckDB would make of the frame): ~0.3 ms less per frame.
        self._writer.register(name, frame.to_arrow())
        self._staged.add(name)
        try:
            yield
        finally:
            # In a transaction aborted by an error, unregister fails too; it must not
            # hide that error, and _transaction retries it after the ROLLBACK.
            with suppress(duckdb.Error):
                self._writer.unregister(name)
                self._staged.discard(name)

    def _upsert(self, table: str, frame: pl.DataFrame) -> None:
        """One ``INSERT ... ON CONFLICT DO UPDATE`` (DuckDB's upsert), instead of the
        portable UPDATE and INSERT: half the statements, and for the few rows of a
        commit's checkpoints and watermarks, values bound as parameters instead of a
        staged frame. The commit of a small live batch costs about 4 ms less CPU."""
        if frame.height == 0:
            return
        key = PRIMARY_KEYS[table]
        columns = frame.columns
        sets = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in columns if c not in key)
        into = f"INSERT INTO {quote(table)} ({column_list(columns)})"
        conflict = f" ON CONFLICT ({column_list(key)}) DO UPDATE SET {sets}"
        if frame.height > UPSERT_VALUES_MAX_ROWS:
            source = f"staged_{table}"
            with self._stage(source, frame):
                select = f" SELECT {column_list(columns)} FROM {quote(source)}"
                self._execute(into + select + conflict)
            return
        row = "(" + ", ".join("?" * len(columns)) + ")"
        values = ", ".join([row] * frame.height)
        self._execute(f"{into} VALUES {values}{conflict}", [v for r in frame.rows() for v in r])

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
        frame: pl.DataFrame = self._writer.sql(sql, params=list(params) or None).pl()
        return frame

    def _read_value(self, sql: str, params: Sequence[Any] = ()) -> Any:
        # A tuple, not a frame: a one-value frame costs ~0.5 ms more, once per poll.
        cursor = self.cursor()
        try:
            row = cursor.execute(sql, list(params) or None).fetchone()
            return row[0] if row is not None else None
        finally:
            cursor.close()

    def _read(
        self, sql: str, params: Sequence[Any] = (), *, select_only: bool = False
    ) -> pl.DataFrame:
        cursor = self.cursor()
        try:
            if select_only:
                # Parsed, not pattern-matched: a trailing "; DROP ..." is a second statement.
                statements = cursor.extract_statements(sql)
                if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
                    raise ValueError("query() runs exactly one SELECT statement")
            frame: pl.DataFrame = cursor.sql(sql, params=list(params) or None).pl()
            return frame
        finally:
            cursor.close()


#: Default DuckDB memory limit: this share of the machine's RAM, at most DEFAULT_MEMORY_CAP.
DEFAULT_MEMORY_SHARE: Final = 0.25
DEFAULT_MEMORY_CAP: Final = 256 << 20


def memory_limit(setting: str, total_ram: int | None = None, cap: int = DEFAULT_MEMORY_CAP) -> str:
    """DuckDB's ``memory_limit`` for the setting ``duckdb_memory_limit``.

    ``""``: 25 % of RAM, at most ``cap`` (256 MiB; DuckDB's own default is 80 % of RAM,
    which it fills with cached blocks of the file under a long live run; past the limit
    it moves blocks not yet checkpointed to its temporary directory instead of failing).
    ``"N%"``: that share of RAM. Anything else ("512MB", "2GiB") is passed to DuckDB as it is.
    """
    if setting and not setting.endswith("%"):
        return setting
    ram = total_ram if total_ram is not None else _total_ram()
    if not setting:
        return f"{min(int(ram * DEFAULT_MEMORY_SHARE), cap) >> 20}MiB"
    return f"{int(ram * float(setting[:-1]) / 100) >> 20}MiB"


def _total_ram() -> int:
    """Physical RAM, or the cgroup's memory limit when that is lower (containers)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            ram = min(ram, int(limit))
    return ram


def _connect(
    path: Path,
    read_only: bool,
    memory: str = "",
    threads: int = 0,
    checkpoint_threshold: str = DEFAULT_CHECKPOINT_THRESHOLD,
) -> duckdb.DuckDBPyConnection:
    config: dict[str, str | bool | int | float | list[str]] = {
        **DUCKDB_CONFIG,
        "memory_limit": memory_limit(memory),
        "checkpoint_threshold": checkpoint_threshold,
    }
    if threads:
        config["threads"] = threads
    try:
        return duckdb.connect(str(path), read_only=read_only, config=config)
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            raise WarehouseUnavailableError(f"cannot open warehouse {path}: {exc}") from exc
        pid = _PID.search(str(exc))
        holder = f"process {pid.group(1)}" if pid else "another process"
        raise WarehouseLockedError(
            f"warehouse {path} is in use by {holder}. A DuckDB file can be opened by one"
            " process at a time: stop the other adpulse process (`adpulse process` or"
            " `adpulse demo`), or query through it instead of opening the file."
        ) from exc
    except duckdb.ConnectionException as exc:
        # Same file already open in this process with another read_only setting.
        raise WarehouseUnavailableError(
            f"warehouse {path} is already open in this process with a different mode"
            f" (read_only={not read_only}); reuse that warehouse object instead: {exc}"
        ) from exc
