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

When the server fails (:mod:`adpulse.outages`): every connection has a connect timeout,
TCP keepalives, ``tcp_user_timeout`` and a ``statement_timeout``, and a watchdog shuts
down the socket of a statement that outlives ``statement_seconds`` (a server that
stopped answering at all, which no TCP timer notices while its host still acknowledges
packets). Reads, commits, batch id reservations, dimension loads and schema creation are
retried on a new connection with backoff, for at most ``retry_seconds``. A commit whose
outcome is unknown (the connection was lost around its ``COMMIT``) is resolved first by
re-reading the checkpoints: the batch committed with its offsets, or not at all.

Redshift: :mod:`.redshift` subclasses this backend and states its differences (loading
through S3 with ``COPY ... FORMAT AS PARQUET``, Redshift's column types, its clock);
docs/redshift.md says what is tested and what only a real Redshift can confirm.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC
from typing import TYPE_CHECKING, Any, ClassVar, Final

import polars as pl
from pydantic import SecretStr

from adpulse.config import redact_url
from adpulse.contracts import Stream
from adpulse.outages import Retrier, ServerTimeouts
from adpulse.storage.warehouse import pgcopy
from adpulse.storage.warehouse.base import BatchOutput, SnapshotRead, WarehouseUnavailableError
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

log = logging.getLogger(__name__)

__all__ = [
    "POSTGRES",
    "PostgresWarehouse",
    "WarehouseConnectionError",
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


class WarehouseConnectionError(WarehouseUnavailableError):
    """No connection to the PostgreSQL server could be made (retried mid-run).

    ``reason``: the driver's reason alone, for retry logs that already name the server.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


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
    ``timeouts``: how long to wait for the server and to retry (see the module docs).
    Use as a context manager or call :meth:`close`.
    """

    dialect = "postgres"
    sql_dialect = POSTGRES
    shares_partitions = True
    #: Extra ``psycopg.connect`` arguments of every connection (a subclass's server needs).
    driver_options: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        url: str,
        password: SecretStr | None = None,
        *,
        schema: str | None = None,
        read_only: bool = False,
        timeouts: ServerTimeouts | None = None,
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
        self.timeouts = timeouts or ServerTimeouts()
        self._retrier = Retrier(
            component=f"warehouse ({redact_url(url)})",
            setting="warehouse_url",
            seconds=self.timeouts.retry_seconds,
            transient=(psycopg.OperationalError, WarehouseConnectionError),
        )
        self._deadlines = _Deadlines(self.timeouts.statement_seconds, self._retrier.component)
        self._writer = self._connect()

    # -- connections ---------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        psycopg = self._psycopg
        kwargs: dict[str, Any] = {
            "autocommit": True,
            **_connection_timeouts(self.timeouts),
            **self.driver_options,
        }
        if self._password is not None and not _URL_PASSWORD.search(self.url):
            kwargs["password"] = self._password.get_secret_value()
        try:
            conn = psycopg.connect(self.url, **kwargs)
        except (psycopg.Error, ValueError) as exc:
            reason = self._explain(exc, bare=True)
            raise WarehouseConnectionError(
                self._explain(exc), f"cannot connect: {reason}"
            ) from None
        try:
            statement_ms = int(self.timeouts.statement_seconds * 1000)
            conn.execute(f"SET statement_timeout = {statement_ms}")
            conn.execute("SET TIME ZONE 'UTC'")
            if self.schema is not None:
                conn.execute(f"SET search_path TO {quote(self.schema)}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _explain(self, exc: BaseException, bare: bool = False) -> str:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._password is not None:
            reason = reason.replace(self._password.get_secret_value(), "***")
        if bare:
            return redact_url(reason)
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
            with self._deadlines.guard(conn):
                yield conn
        except BaseException:
            conn.close()  # state unknown after an error in the middle: do not reuse
            raise
        with self._pool_lock:
            if self._closed or len(self._idle) >= _POOL_SIZE:
                conn.close()
            else:
                self._idle.append(conn)

    def _discard_idle(self, _error: BaseException | None = None) -> None:
        """Close the idle read connections: after a lost connection, all are suspect."""
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with suppress(Exception):
                conn.close()

    def _retry(self, what: str, operation: Any) -> Any:
        return self._retrier.call(what, operation, self._discard_idle)

    # -- lifecycle ---------------------------------------------------------------------------
    def create_schema(self) -> None:
        if self.read_only:
            return  # nothing to create, and no right to

        def create() -> None:
            if self.schema is not None:
                with self._transaction():
                    self._execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}")
            SqlWarehouse.create_schema(self)

        self._retry("creating the tables", create)

    # -- writes, retried on a new connection ---------------------------------------------------
    def commit(self, output: BatchOutput) -> None:
        """See :meth:`Warehouse.commit`; retried when the connection is lost. A retry
        first re-reads the checkpoints: if the lost connection had already committed
        the batch (its offsets are there), it is not written twice."""
        outcome_unknown = False

        def attempt() -> None:
            nonlocal outcome_unknown
            if outcome_unknown and self._committed(output):
                log.warning(
                    "%s: batch %s was committed before the connection was lost",
                    self._retrier.component,
                    output.batch_id,
                )
                return
            try:
                SqlWarehouse.commit(self, output)
            except self._retrier.transient:
                outcome_unknown = True
                raise

        self._retry(f"the commit of batch {output.batch_id}", attempt)

    def check_commit(self, output: BatchOutput) -> None:
        """See :meth:`Warehouse.check_commit`; retried when the connection is lost (it
        writes nothing, so a retry is always safe)."""
        self._retry(
            f"a trial commit of batch {output.batch_id}",
            lambda: SqlWarehouse.check_commit(self, output),
        )

    def _committed(self, output: BatchOutput) -> bool:
        """Whether ``output`` is committed: its checkpoints are in the warehouse. (A batch
        always moves at least one offset on, so they identify it; an idle tick without
        offsets only upserts watermarks, which is harmless to repeat.)"""
        if not output.offsets:
            return False
        rows = self._read_once('SELECT stream, "partition", "offset" FROM checkpoints')
        saved = {(Stream(s), int(p)): o for s, p, o in rows.iter_rows()}
        return all(saved.get(key) == offset for key, offset in output.offsets.items())

    def reserve_batch_ids(self, count: int) -> int:
        # Repeating a reservation whose commit was lost skips a block of ids: harmless.
        return int(
            self._retry("reserving batch ids", lambda: SqlWarehouse.reserve_batch_ids(self, count))
        )

    def load_dimension(self, kind: Any, rows: pl.DataFrame, effective_from: Any) -> Any:
        # Repeating a load that did commit finds no changes: it writes nothing more.
        return self._retry(
            f"loading the {kind} dimension",
            lambda: SqlWarehouse.load_dimension(self, kind, rows, effective_from),
        )

    def close(self) -> None:
        with self._pool_lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        self._deadlines.stop()
        with self._write_lock:
            self._writer.close()

    def partition_leases(
        self, worker: WorkerIdentity, partitions: int, ttl_seconds: float
    ) -> PartitionLeases:
        """The lease tables, for ``worker``, on a connection of their own: lease
        statements then never wait behind a commit on the writer connection."""
        return PartitionLeases(
            self._connect,
            to_pyformat,
            worker,
            partitions,
            ttl_seconds,
            guard=self._deadlines.guard,
            retry=self._retry,
            clock=self.clock,
        )

    def refuses_data(self, exc: BaseException) -> bool:
        """PostgreSQL's data errors, by SQLSTATE class (psycopg maps each to a class).

        Data (the commit's rows are at fault; isolated and dead-lettered):
        ``psycopg.DataError`` (class 22: a NUL or an invalid byte in text, a number or
        a timestamp out of its column's range, a string too long for its column, ...)
        and ``psycopg.IntegrityError`` (class 23: a constraint).

        Infrastructure (retried on a new connection, then stop): every
        ``OperationalError`` (class 08 a lost connection, 53 a full disk or no memory,
        57 a server shut down or a statement cancelled, 40 a serialization failure;
        also 54, program limits, which no record of at most ``max_record_bytes`` can
        reach here), ``InterfaceError`` (the driver's connection is unusable) and
        ``OSError``. ``ProgrammingError`` (class 42, the SQL or the schema) and
        ``InternalError`` (class XX) are not the data's fault either: they stop.
        """
        return isinstance(exc, self._psycopg.DataError | self._psycopg.IntegrityError)

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
                self._deadlines.arm(conn)
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
                self._writer.close()
                self._writer = self._connect()  # e.g. after a server restart
            # Each statement inside re-arms the deadline (see _Deadlines).
            with self._deadlines.guard(self._writer), self._writer.transaction():
                yield

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._deadlines.arm(self._writer)
        self._writer.execute(to_pyformat(sql), list(params))
        self._deadlines.arm(self._writer)

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
        """Bulk-load ``frame`` into ``table`` with COPY, in the binary format (see
        :mod:`.pgcopy`: the server parses no text), or as CSV for a frame that format's
        encoder does not take (unquoted empty is NULL)."""
        pieces = pgcopy.encode(frame)
        if pieces is not None:
            sql = f"COPY {quote(table)} ({column_list(frame.columns)}) FROM STDIN (FORMAT binary)"
            self._deadlines.arm(self._writer)
            with self._writer.cursor() as cursor, cursor.copy(sql) as copy:
                for piece in pieces:
                    copy.write(piece)
            self._deadlines.arm(self._writer)
            return
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
        self._deadlines.arm(self._writer)
        with self._writer.cursor() as cursor, cursor.copy(sql) as copy:
            copy.write(buffer.getbuffer())
        self._deadlines.arm(self._writer)

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
        self._deadlines.arm(self._writer)
        with self._writer.cursor(binary=True) as cursor:
            cursor.execute(to_pyformat(sql), list(params))
            return _frame(cursor)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
        """Read on a pooled connection; retried on a new one when the connection is lost."""
        return self._retry("a read", lambda: self._read_once(sql, params))  # type: ignore[no-any-return]

    def _read_once(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
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


def _connection_timeouts(timeouts: ServerTimeouts) -> dict[str, Any]:
    """libpq parameters that bound every wait on the server: the connect timeout, and TCP
    keepalives plus ``tcp_user_timeout`` so that a connection whose peer vanished (a
    network cut, a host down) fails within about ``connect_seconds``."""
    seconds = timeouts.connect_seconds
    return {
        "connect_timeout": max(2, math.ceil(seconds)),  # libpq's minimum is 2
        "keepalives": 1,
        "keepalives_idle": max(1, math.ceil(seconds / 2)),
        "keepalives_interval": max(1, math.ceil(seconds / 6)),
        "keepalives_count": 3,
        "tcp_user_timeout": int(seconds * 1000),
    }


class _Deadlines:
    """Ends statements that outlive ``seconds`` by shutting their connection's socket down.

    A server that stopped answering while its host still acknowledges packets (a hung
    process, a proxy that holds the connection) is invisible to TCP keepalives, and
    psycopg has no client-side statement timeout: without this a statement would wait
    forever. Shutting the socket down wakes the waiting thread with a lost-connection
    error, which the retry handles like any other. A connection is watched from
    :meth:`arm` (again: the deadline moves on) to :meth:`disarm`.
    """

    def __init__(self, seconds: float, component: str) -> None:
        self.seconds = seconds
        self.component = component
        self._lock = threading.Lock()
        self._armed: dict[int, tuple[float, Any]] = {}
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def arm(self, conn: Any) -> None:
        with self._lock:
            self._armed[id(conn)] = (time.monotonic() + self.seconds, conn)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="adpulse-pg-deadlines", daemon=True
                )
                self._thread.start()

    def disarm(self, conn: Any) -> None:
        with self._lock:
            self._armed.pop(id(conn), None)

    @contextmanager
    def guard(self, conn: Any) -> Iterator[None]:
        self.arm(conn)
        try:
            yield
        finally:
            self.disarm(conn)

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        step = min(0.25, self.seconds / 4)
        while not self._stopped.wait(step):
            now = time.monotonic()
            with self._lock:
                expired = [(k, c) for k, (t, c) in self._armed.items() if t <= now]
                for key, conn in expired:
                    del self._armed[key]
                    self._shut_down(conn)

    def _shut_down(self, conn: Any) -> None:
        log.warning(
            "%s: no answer within statement_timeout_seconds = %s; closing the connection",
            self.component,
            self.seconds,
        )
        with suppress(Exception):
            sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()


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
