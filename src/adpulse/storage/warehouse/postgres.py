"""The server warehouse: PostgreSQL (15 or later), with SQL kept Redshift-compatible.

Everything PostgreSQL-specific is here; the statements are the portable ones of
:mod:`.sql`, with ``?`` placeholders turned into psycopg's ``%s`` in one place
(:func:`to_pyformat`). psycopg 3 is imported only when this backend is used.

How the primitives map onto PostgreSQL:

- appends: ``COPY table (columns) FROM STDIN (FORMAT csv)`` straight into the target
  table, fed by Polars' CSV writer (no Python loop over rows);
- staging (re-attributions, upserts, SCD2 keys): a ``TEMP`` table created and filled by
  COPY inside the commit's transaction, dropped when the step is done (a rollback drops
  it too);
- upserts (checkpoints, watermarks): one ``MERGE`` per table (:func:`.sql.merge`);
- one transaction per commit (facts, re-attributions, rollups, dead letters, stats,
  offsets and watermarks) on one writer connection, used under a lock;
- reads on connections of their own, taken from a small pool (one connection per
  concurrent reader, never shared by two threads at once), each read inside a
  ``READ ONLY`` transaction; :meth:`PostgresWarehouse.query` also runs with the
  extended protocol, which refuses more than one statement.

Differences from DuckDB (same results; :mod:`adpulse.serving.queries` runs unchanged):

- column types: ``TEXT`` for strings, ``DOUBLE PRECISION`` for floats, ``BYTEA`` for
  the dead-letter payload (DuckDB: ``VARCHAR``, ``DOUBLE``, ``BLOB``);
- strings cannot contain the NUL character (PostgreSQL refuses it in ``TEXT``);
- several processes may open the same warehouse (DuckDB allows one), so worker
  processes share the partitions through lease tables (:mod:`.leases`); each commit of
  a worker is fenced by its leases;
- ``schema=`` (or ``options=-csearch_path=...`` in the URL) puts the tables in a
  schema of their own.

Redshift notes (not tested against Redshift; the SQL was written for its subset):

- the DML is Redshift's too: ``UPDATE ... FROM``, ``INSERT ... SELECT``, ``MERGE`` with
  both ``WHEN`` clauses and no target alias, ``TEMP`` tables without ``ON COMMIT``;
- bulk loading differs: Redshift has no ``COPY ... FROM STDIN``; it loads with ``COPY``
  from S3 (staging the frame as Parquet there), which this module does not do;
- DDL differs: Redshift's ``TEXT`` is ``VARCHAR(256)``, so strings there need
  ``VARCHAR(65535)``; ``BYTEA`` is ``VARBYTE``; primary keys are not enforced (the
  upserts match on the key and do not rely on them);
- ``BEGIN READ ONLY`` does not exist there; read-only access needs a user granted
  ``SELECT`` only.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC
from typing import TYPE_CHECKING, Any, Final

import polars as pl
from pydantic import SecretStr

from adpulse.config import redact_url
from adpulse.storage.warehouse.base import SnapshotRead, WarehouseUnavailableError
from adpulse.storage.warehouse.leases import PartitionLeases, WorkerIdentity
from adpulse.storage.warehouse.sql import (
    PRIMARY_KEYS,
    Dialect,
    SqlWarehouse,
    column_list,
    merge,
    quote,
)

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "POSTGRES",
    "PostgresWarehouse",
    "WarehouseUnavailableError",
    "redact_url",
    "to_pyformat",
]

POSTGRES: Final = Dialect(
    name="postgres",
    type_names={
        pl.String: "TEXT",
        pl.Int64: "BIGINT",
        pl.Int32: "INTEGER",
        pl.Datetime: "TIMESTAMP",
        pl.Date: "DATE",
        pl.Float64: "DOUBLE PRECISION",
        pl.Boolean: "BOOLEAN",
        pl.Binary: "BYTEA",
    },
)

#: Polars types of PostgreSQL result columns, by type oid (numeric: see _dtype).
_OID_TYPES: Final[dict[int, pl.DataType]] = {
    16: pl.Boolean(),
    17: pl.Binary(),
    19: pl.String(),  # name
    20: pl.Int64(),
    21: pl.Int16(),
    23: pl.Int32(),
    25: pl.String(),
    700: pl.Float32(),
    701: pl.Float64(),
    1042: pl.String(),
    1043: pl.String(),
    1082: pl.Date(),
    1114: pl.Datetime("us"),
    1184: pl.Datetime("us", "UTC"),
    1186: pl.Duration("us"),
}
_NUMERIC_OID: Final = 1700

#: Idle read connections kept open for reuse.
_POOL_SIZE: Final = 4

_SETTING: Final = "setting warehouse_url, env ADPULSE_WAREHOUSE_URL"
_URL_PASSWORD: Final = re.compile(r"://[^:/?#@]*:[^@/?#]*@")


def to_pyformat(sql: str) -> str:
    """Turn the warehouse's ``?`` placeholders into psycopg's ``%s`` (and ``%`` into ``%%``).

    The one place where placeholders are translated. Quoted literals and identifiers are
    copied as they are, except that ``%`` is doubled everywhere, as psycopg expects.
    """
    out: list[str] = []
    quote_char: str | None = None
    for char in sql:
        if char == "%":
            out.append("%%")
        elif quote_char is not None:
            out.append(char)
            if char == quote_char:
                quote_char = None  # a doubled quote closes and reopens: same result
        elif char in "'\"":
            quote_char = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        else:
            out.append(char)
    return "".join(out)


class PostgresWarehouse(SqlWarehouse):
    """A warehouse in a PostgreSQL database, at a libpq URL (``postgresql://...``).

    ``password`` is used when the URL has none (``warehouse_password``). ``schema``, if
    given, holds the tables (created by :meth:`create_schema`, set as search_path).
    ``read_only=True`` refuses every write (``commit``, ``load_dimension``).
    Use as a context manager or call :meth:`close`.
    """

    dialect = "postgres"
    sql_dialect = POSTGRES
    shares_partitions = True

    def __init__(
        self,
        url: str,
        password: SecretStr | None = None,
        *,
        schema: str | None = None,
        read_only: bool = False,
    ) -> None:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - a dependency of adpulse
            raise WarehouseUnavailableError(
                "the PostgreSQL warehouse needs psycopg: pip install 'psycopg[binary]'"
            ) from exc
        self._psycopg = psycopg
        self.url = url
        self._password = password
        self.schema = schema
        self.read_only = read_only
        self._write_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._idle: list[psycopg.Connection[Any]] = []
        self._closed = False
        self._writer = self._connect()

    # -- connections ---------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        psycopg = self._psycopg
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": 10}
        if self._password is not None and not _URL_PASSWORD.search(self.url):
            kwargs["password"] = self._password.get_secret_value()
        try:
            conn = psycopg.connect(self.url, **kwargs)
        except (psycopg.Error, ValueError) as exc:
            raise WarehouseUnavailableError(self._explain(exc)) from None
        try:
            conn.execute("SET TIME ZONE 'UTC'")
            if self.schema is not None:
                conn.execute(f"SET search_path TO {quote(self.schema)}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _explain(self, exc: BaseException) -> str:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._password is not None:
            reason = reason.replace(self._password.get_secret_value(), "***")
        return (
            f"cannot connect to the PostgreSQL warehouse {redact_url(self.url)!r}"
            f" ({_SETTING}): {redact_url(reason)}"
        )

    @contextmanager
    def _reader(self) -> Iterator[psycopg.Connection[Any]]:
        with self._pool_lock:
            if self._closed:
                raise WarehouseUnavailableError("the PostgreSQL warehouse is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed or conn.broken:
            conn = self._connect()
        try:
            yield conn
        except BaseException:
            conn.close()  # state unknown after an error in the middle: do not reuse
            raise
        with self._pool_lock:
            if self._closed or len(self._idle) >= _POOL_SIZE:
                conn.close()
            else:
                self._idle.append(conn)

    # -- lifecycle ---------------------------------------------------------------------------
    def create_schema(self) -> None:
        if self.read_only:
            return  # nothing to create, and no right to
        if self.schema is not None:
            with self._transaction():
                self._execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}")
        super().create_schema()

    def close(self) -> None:
        with self._pool_lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        with self._write_lock:
            self._writer.close()

    def partition_leases(
        self, worker: WorkerIdentity, partitions: int, ttl_seconds: float
    ) -> PartitionLeases:
        """The lease tables, for ``worker``, on a connection of their own: lease
        statements then never wait behind a commit on the writer connection."""
        return PartitionLeases(self._connect, to_pyformat, worker, partitions, ttl_seconds)

    def refuses_data(self, exc: BaseException) -> bool:
        """PostgreSQL's data errors, by SQLSTATE class (psycopg maps each to a class).

        Data (the commit's rows are at fault; isolated and dead-lettered):
        ``psycopg.DataError`` (class 22: a NUL or an invalid byte in text, a number or
        a timestamp out of its column's range, ...), ``psycopg.IntegrityError``
        (class 23: a constraint) and ``ProgramLimitExceeded`` (class 54: a row or a
        value larger than PostgreSQL stores; a smaller batch may pass).

        Infrastructure (stop or retry): every other ``OperationalError`` (class 08 a
        lost connection, 53 a full disk or no memory, 57 a server shut down or a
        statement cancelled, 40 a serialization failure), ``InterfaceError`` (the
        driver's connection is unusable) and ``OSError``. ``ProgrammingError``
        (class 42, the SQL or the schema) and ``InternalError`` (class XX) are not the
        data's fault either: they stop.
        """
        errors = self._psycopg.errors
        return isinstance(
            exc,
            self._psycopg.DataError | self._psycopg.IntegrityError | errors.ProgramLimitExceeded,
        )

    # -- reads -------------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
        """Run one read-only statement in a ``READ ONLY`` transaction of its own."""
        psycopg = self._psycopg
        try:
            return self._read(sql, params)
        except (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.SyntaxError) as exc:
            if isinstance(exc, psycopg.errors.SyntaxError) and "multiple commands" not in str(exc):
                raise
            raise ValueError(f"query() runs exactly one SELECT statement: {exc}") from None

    @contextmanager
    def snapshot(self) -> Iterator[SnapshotRead]:
        """Statements in one ``REPEATABLE READ READ ONLY`` transaction: all of them see
        the data committed when the first one started, nothing committed later."""
        with self._reader() as conn, conn.cursor(binary=True) as cursor:
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

            def read(sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
                cursor.execute(to_pyformat(sql), list(params))
                return _frame(cursor)

            try:
                yield read
            finally:
                with suppress(self._psycopg.Error):
                    cursor.execute("ROLLBACK")  # nothing to keep: it was read-only

    # -- SqlWarehouse primitives -----------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[None]:
        if self.read_only:
            raise WarehouseUnavailableError(
                "the PostgreSQL warehouse is open read-only; open it without read_only to write"
            )
        with self._write_lock:
            if self._closed:
                raise WarehouseUnavailableError("the PostgreSQL warehouse is closed")
            if self._writer.closed or self._writer.broken:
                self._writer = self._connect()  # e.g. after a server restart
            with self._writer.transaction():
                yield

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._writer.execute(to_pyformat(sql), list(params))

    @contextmanager
    def _stage(self, name: str, frame: pl.DataFrame) -> Iterator[None]:
        columns = ", ".join(
            f"{quote(c)} {self.sql_dialect.column_type(t)}" for c, t in frame.schema.items()
        )
        self._execute(f"CREATE TEMP TABLE {quote(name)} ({columns})")
        self._copy(name, frame)
        yield
        # Only reached without error; after one, the rollback drops the table.
        self._execute(f"DROP TABLE {quote(name)}")

    def _append(self, table: str, frame: pl.DataFrame, columns: Any) -> None:
        # COPY straight into the target: no staging table needed for an append.
        if frame.height:
            self._copy(table, frame)

    def _upsert(self, table: str, frame: pl.DataFrame) -> None:
        source = f"staged_{table}"
        with self._stage(source, frame):
            self._execute(merge(table, PRIMARY_KEYS[table], frame.columns, source))

    def _copy(self, table: str, frame: pl.DataFrame) -> None:
        """Bulk-load ``frame`` into ``table`` with COPY (CSV: unquoted empty is NULL)."""
        binary = [c for c, t in frame.schema.items() if t == pl.Binary]
        if binary:  # bytea's hex input format
            frame = frame.with_columns(
                (pl.lit("\\x") + pl.col(c).bin.encode("hex")).alias(c) for c in binary
            )
        buffer = io.BytesIO()
        frame.write_csv(
            buffer,
            include_header=False,
            quote_style="necessary",  # quotes "" (empty string) but not NULL
            datetime_format="%Y-%m-%d %H:%M:%S%.6f",
        )
        sql = f"COPY {quote(table)} ({column_list(frame.columns)}) FROM STDIN (FORMAT csv)"
        with self._writer.cursor() as cursor, cursor.copy(sql) as copy:
            copy.write(buffer.getbuffer())

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
        with self._writer.cursor(binary=True) as cursor:
            cursor.execute(to_pyformat(sql), list(params))
            return _frame(cursor)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
        with self._reader() as conn:
            # binary=True forces the extended protocol: one statement per call.
            with conn.cursor(binary=True) as cursor:
                cursor.execute("BEGIN READ ONLY")
                try:
                    cursor.execute(to_pyformat(sql), list(params))
                    frame = _frame(cursor)
                finally:
                    with suppress(self._psycopg.Error):
                        cursor.execute("ROLLBACK")  # nothing to keep: it was read-only
            return frame


def _dtype(column: Any) -> pl.DataType | None:
    """The Polars type of a result column; None lets Polars infer it from the values."""
    if column.type_code == _NUMERIC_OID:
        if column.precision is not None and column.scale is not None:
            return pl.Decimal(column.precision, column.scale)
        return None
    return _OID_TYPES.get(column.type_code)


def _frame(cursor: Any) -> pl.DataFrame:
    description = cursor.description
    if description is None:
        return pl.DataFrame()
    rows = cursor.fetchall()
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in description]
    series = []
    seen: set[str] = set()
    for column, values in zip(description, columns, strict=True):
        # PostgreSQL names unnamed expressions by function ("sum"): keep names unique.
        name, n = column.name, 0
        while name in seen:
            n += 1
            name = f"{column.name}_{n}"
        seen.add(name)
        dtype = _dtype(column)
        if dtype is not None and isinstance(dtype, pl.Datetime) and dtype.time_zone:
            values = tuple(None if v is None else v.astimezone(UTC) for v in values)
        series.append(pl.Series(name, list(values), dtype=dtype, strict=False))
    return pl.DataFrame(series)
