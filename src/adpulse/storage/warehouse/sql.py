"""What every SQL warehouse shares: DDL from :mod:`.schema`, portable statements, and the
commit / dimension-load / state-rebuild logic written once against a few primitives.

A backend (DuckDB, PostgreSQL) subclasses :class:`SqlWarehouse`, states its
:class:`Dialect` (type names) and implements the primitives: run a statement, stage a
Polars frame under a name for the current transaction, read a frame, open a transaction.
The statements here stay in the Redshift-compatible subset (no ``ON CONFLICT``, no
arrays, ``?`` placeholders that a backend may translate), so backends differ only in the
primitives and the type names.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import polars as pl

from adpulse.contracts import Stream
from adpulse.storage.dimensions import DIMENSIONS, scd2_changes, utc_naive
from adpulse.storage.warehouse import api_keys, schema
from adpulse.storage.warehouse.base import (
    BatchOutput,
    DimensionKind,
    DimensionLoadResult,
    LeaseFence,
    LeaseLostError,
    PartitionWatermark,
    Warehouse,
)
from adpulse.storage.warehouse.leases import (
    LEASE_KEYS,
    LEASE_TABLES,
    POSTGRES_CLOCK,
    DatabaseClock,
    fence_statements,
)

#: Small key/value table for warehouse bookkeeping (the dimension revision). It is a
#: storage detail, not part of the processor's contract, so it lives here, not in schema.
META: Final = {"key": pl.String(), "value": pl.Int64()}
META_TABLE: Final = "meta"
_REVISION: Final = "dimension_revision"  # the meta row bumped by dimension loads
_BATCH_IDS: Final = "last_batch_id"  # the meta row counting reserved batch ids

#: Every table the SQL warehouses create (plus the lease tables of :mod:`.leases`, where
#: workers share the partitions), with its primary key (empty: none). Fact and
#: rollup tables have none on purpose: the processor dedupes, and an index would slow
#: the append-only hot path.
TABLES: Final[dict[str, dict[str, pl.DataType]]] = {
    **schema.ALL_TABLES,
    META_TABLE: META,
    api_keys.API_KEYS_TABLE: api_keys.API_KEYS,
}
PRIMARY_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "checkpoints": ("stream", "partition"),
    "watermarks": ("stream", "partition"),
    META_TABLE: ("key",),
    api_keys.API_KEYS_TABLE: api_keys.API_KEYS_KEY,
    **LEASE_KEYS,
}


#: Columns whose type an earlier version created narrower: ``rollup_minute.revenue`` was
#: DECIMAL(18,4), too narrow for sums (see ``schema.MAX_REVENUE``).
WIDENED: Final = (("rollup_minute", "revenue"),)


class SchemaMismatchError(ValueError):
    """A frame handed to the warehouse does not follow :mod:`.schema` exactly."""


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one database spells the column types of :mod:`.schema`."""

    name: str
    #: Type name by Polars base type; Decimal is spelled ``DECIMAL(p,s)`` everywhere.
    type_names: Mapping[type[pl.DataType], str]

    def column_type(self, dtype: pl.DataType) -> str:
        if isinstance(dtype, pl.Decimal):
            return f"DECIMAL({dtype.precision},{dtype.scale})"
        try:
            return self.type_names[dtype.base_type()]
        except KeyError:
            raise TypeError(f"{self.name}: no column type for Polars {dtype}") from None

    def create_table(self, table: str, columns: Mapping[str, pl.DataType]) -> str:
        """``CREATE TABLE IF NOT EXISTS`` for ``table`` with its primary key, if any."""
        parts = [f"{quote(name)} {self.column_type(dtype)}" for name, dtype in columns.items()]
        key = PRIMARY_KEYS.get(table)
        if key:
            parts.append(f"PRIMARY KEY ({column_list(key)})")
        return f"CREATE TABLE IF NOT EXISTS {quote(table)} ({', '.join(parts)})"


#: The spelling of the read-side SQL (the query layer, the Grafana panels, the serving
#: store's rebuild): one text runs unchanged on DuckDB, PostgreSQL, Redshift and the
#: serving store's in-memory DuckDB, so its casts use the names they all accept.
PORTABLE: Final = Dialect(
    name="portable",
    type_names={pl.Int64: "BIGINT", pl.Int32: "INTEGER", pl.Float64: "DOUBLE PRECISION"},
)


# --- portable statement builders -------------------------------------------------------
def quote(name: str) -> str:
    """Quote an identifier; several of ours (``offset``, ``partition``) are keywords."""
    return '"' + name.replace('"', '""') + '"'


def column_list(columns: Sequence[str]) -> str:
    return ", ".join(quote(c) for c in columns)


def insert_from(table: str, columns: Sequence[str], source: str) -> str:
    cols = column_list(columns)
    return f"INSERT INTO {quote(table)} ({cols}) SELECT {cols} FROM {quote(source)}"


def upsert(table: str, key: Sequence[str], columns: Sequence[str], source: str) -> list[str]:
    """Statements that upsert ``source``'s rows into ``table`` by ``key``.

    UPDATE the keys that exist, then INSERT the ones that do not: every target runs it
    (Redshift has no ``ON CONFLICT``), and unlike DELETE + INSERT it leaves no deleted
    rows behind in tables rewritten on every commit.
    """
    t, s = quote(table), quote(source)
    match = " AND ".join(f"{t}.{quote(c)} = {s}.{quote(c)}" for c in key)
    sets = ", ".join(f"{quote(c)} = {s}.{quote(c)}" for c in columns if c not in key)
    cols = column_list(columns)
    return [
        f"UPDATE {t} SET {sets} FROM {s} WHERE {match}",
        f"INSERT INTO {t} ({cols}) SELECT {cols} FROM {s}"
        f" WHERE NOT EXISTS (SELECT 1 FROM {t} WHERE {match})",
    ]


def merge(table: str, key: Sequence[str], columns: Sequence[str], source: str) -> str:
    """One ``MERGE`` that upserts ``source``'s rows into ``table`` by ``key``.

    The same text runs on PostgreSQL 15+ and Redshift (no target alias, unqualified
    SET targets, both WHEN clauses); DuckDB uses :func:`upsert` instead.
    """
    t, s = quote(table), quote(source)
    match = " AND ".join(f"{t}.{quote(c)} = {s}.{quote(c)}" for c in key)
    sets = ", ".join(f"{quote(c)} = {s}.{quote(c)}" for c in columns if c not in key)
    values = ", ".join(f"{s}.{quote(c)}" for c in columns)
    return (
        f"MERGE INTO {t} USING {s} ON {match}"
        f" WHEN MATCHED THEN UPDATE SET {sets}"
        f" WHEN NOT MATCHED THEN INSERT ({column_list(columns)}) VALUES ({values})"
    )


def reattribute(source: str) -> str:
    """Move committed conversions to the attribution given in ``source`` (by event_id)."""
    columns = [c for c in schema.CONVERSION_REATTRIBUTIONS if c != "event_id"]
    sets = ", ".join(f"{quote(c)} = {quote(source)}.{quote(c)}" for c in columns)
    return (
        f"UPDATE fact_conversions SET {sets} FROM {quote(source)}"
        f" WHERE fact_conversions.event_id = {quote(source)}.event_id"
    )


def close_versions(table: str, key: str, source: str) -> str:
    """Close (set valid_to = ?) the current version of every key listed in ``source``."""
    return (
        f"UPDATE {quote(table)} SET valid_to = ? WHERE valid_to IS NULL"
        f" AND {quote(key)} IN (SELECT {quote(key)} FROM {quote(source)})"
    )


def check_frame(table: str, frame: pl.DataFrame, expected: Mapping[str, pl.DataType]) -> None:
    """Raise :class:`SchemaMismatchError` unless ``frame`` has exactly ``expected``'s columns.

    Inserts select columns by name, but a wrong type would be cast silently (or fail deep
    inside the database), so the contract is checked up front, before any write.
    """
    actual = dict(frame.schema)
    if list(actual) == list(expected) and all(actual[c] == expected[c] for c in expected):
        return
    missing = [c for c in expected if c not in actual]
    extra = [c for c in actual if c not in expected]
    wrong = [
        f"{c}: {actual[c]} (expected {expected[c]})"
        for c in expected
        if c in actual and actual[c] != expected[c]
    ]
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if extra:
        problems.append(f"unexpected {extra}")
    if wrong:
        problems.append("wrong types " + "; ".join(wrong))
    if not problems:
        problems.append(f"column order {list(actual)}, expected {list(expected)}")
    raise SchemaMismatchError(
        f"frame for table {table!r} does not match schema.py: {', '.join(problems)}."
        " Build it with adpulse.storage.warehouse.schema.conform(frame, <SCHEMA>)."
    )


def now_utc() -> datetime:
    """The current time as the warehouse stores it: UTC, naive, microseconds."""
    return datetime.now(UTC).replace(tzinfo=None)


# --- the shared warehouse --------------------------------------------------------------
class SqlWarehouse(Warehouse):
    """A :class:`Warehouse` over SQL, written once against five primitives.

    Subclasses set :attr:`sql_dialect` and implement :meth:`_transaction`,
    :meth:`_execute`, :meth:`_stage`, :meth:`_fetch` (inside the open transaction)
    and :meth:`_read` (on a fresh connection/cursor, from any thread).
    """

    sql_dialect: Dialect
    #: How lease SQL spells the database's current time (where workers share partitions).
    clock: DatabaseClock = POSTGRES_CLOCK

    # -- primitives ------------------------------------------------------------------------
    @abstractmethod
    def _transaction(self) -> AbstractContextManager[None]:
        """Open a transaction on the writer connection; commit on exit, roll back on error."""

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement on the writer connection (inside the open transaction)."""

    @abstractmethod
    def _stage(self, name: str, frame: pl.DataFrame) -> AbstractContextManager[None]:
        """Make ``frame`` readable as table ``name`` by the writer until the block exits."""

    @abstractmethod
    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
        """Read on the writer connection, seeing the open transaction's own writes."""

    @abstractmethod
    def _read(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
        """Read committed data on a connection of its own (safe from any thread)."""

    # -- schema -----------------------------------------------------------------------------
    def create_schema(self) -> None:
        # Lease tables only where worker processes can share the partitions.
        tables = {**self._tables(), **(LEASE_TABLES if self.shares_partitions else {})}
        with self._transaction():
            for table, columns in tables.items():
                self._execute(self.sql_dialect.create_table(table, columns))
            self._widen_columns()

    def _tables(self) -> dict[str, dict[str, pl.DataType]]:
        """The tables this backend creates, by name (a backend may store one differently)."""
        return dict(TABLES)

    def _widen_columns(self) -> None:
        """Give columns of a warehouse created by an earlier version their current,
        wider type (:data:`WIDENED`); a no-op once they have it."""
        for table, column in WIDENED:
            dtype = TABLES[table][column]
            assert isinstance(dtype, pl.Decimal)
            found = self._fetch(
                "SELECT numeric_precision FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = ? AND column_name = ?",
                [table, column],
            )
            if found.height and (found.item() or 0) < (dtype.precision or 38):
                self._execute(
                    f"ALTER TABLE {quote(table)} ALTER COLUMN {quote(column)}"
                    f" TYPE {self.sql_dialect.column_type(dtype)}"
                )

    # -- the processor's commit -------------------------------------------------------------
    def commit(self, output: BatchOutput) -> None:
        self._check_frames(output)
        with self._transaction():
            self._write(output)

    def check_commit(self, output: BatchOutput) -> None:
        self._check_frames(output)
        try:
            with self._transaction():
                self._write(output)
                raise _RolledBack  # the transaction context rolls back on any exception
        except _RolledBack:
            pass

    def _check_frames(self, output: BatchOutput) -> None:
        """Check every frame before the first write: a contract error then costs nothing."""
        for table, frame, columns in _appends(output):
            if frame.height:
                check_frame(table, frame, columns)
        if output.reattributions.height:
            check_frame("reattributions", output.reattributions, schema.CONVERSION_REATTRIBUTIONS)

    def _write(self, output: BatchOutput) -> None:
        """Every write of one commit, inside the open transaction."""
        appends = _appends(output)
        updated_at = now_utc()
        if output.fence is not None:
            self._check_fence(output.fence)  # first: takes the lease rows' locks
        for table, frame, columns in appends[:3]:
            self._append(table, frame, columns)
        if output.reattributions.height:
            with self._stage("staged_reattributions", output.reattributions):
                self._execute(reattribute("staged_reattributions"))
        for table, frame, columns in appends[3:]:
            self._append(table, frame, columns)
        if output.offsets:
            self._upsert("checkpoints", _offsets_frame(output.offsets, updated_at))
        if output.watermarks:
            self._upsert("watermarks", _watermarks_frame(output.watermarks, updated_at))

    def _check_fence(self, fence: LeaseFence) -> None:
        """Raise :class:`LeaseLostError` unless ``fence.owner`` still holds every lease.

        Runs inside the commit's transaction; its ``UPDATE`` keeps the lease rows locked
        until the commit ends (see :mod:`.leases`).
        """
        (renew, renew_params), (count, count_params) = fence_statements(fence, self.clock)
        self._execute(renew, renew_params)
        held = int(self._fetch(count, count_params).item())
        if held != len(fence.epochs):
            raise LeaseLostError(
                f"worker {fence.owner} no longer holds the leases of all of its partitions"
                f" {sorted(fence.epochs)} (another worker took over after its lease expired);"
                " the commit was rolled back and writes nothing"
            )

    def _append(self, table: str, frame: pl.DataFrame, columns: Mapping[str, pl.DataType]) -> None:
        if frame.height == 0:
            return
        source = f"staged_{table}"
        with self._stage(source, frame):
            self._execute(insert_from(table, list(columns), source))

    def _upsert(self, table: str, frame: pl.DataFrame) -> None:
        source = f"staged_{table}"
        with self._stage(source, frame):
            for statement in upsert(table, PRIMARY_KEYS[table], frame.columns, source):
                self._execute(statement)

    # -- API keys (:mod:`.api_keys`) --------------------------------------------------------
    def api_keys(self) -> pl.DataFrame:
        if not self._read(api_keys.TABLE_EXISTS).item():
            return pl.DataFrame(schema=api_keys.API_KEYS)
        return self._read(api_keys.SELECT_KEYS)

    def add_api_key(
        self, key_id: str, name: str, scope: str, salt: str, digest: str, created_at: datetime
    ) -> None:
        with self._transaction():
            self._execute(api_keys.INSERT_KEY, [key_id, name, scope, salt, digest, created_at])

    def revoke_api_key(self, key_id: str, at: datetime) -> bool:
        with self._transaction():
            self._execute(api_keys.REVOKE_KEY, [at, key_id])
            return bool(self._fetch(api_keys.COUNT_REVOKED, [key_id, at]).item())

    def load_offsets(self) -> dict[tuple[Stream, int], str]:
        rows = self._read('SELECT stream, "partition", "offset" FROM checkpoints')
        return {(Stream(s), p): o for s, p, o in rows.iter_rows()}

    def load_watermarks(self) -> dict[tuple[Stream, int], PartitionWatermark]:
        rows = self._read('SELECT stream, "partition", watermark, max_event_time FROM watermarks')
        return {(Stream(s), p): PartitionWatermark(w, m) for s, p, w, m in rows.iter_rows()}

    def next_batch_id(self) -> int:
        rows = self._read("SELECT MAX(batch_id) AS last FROM ingest_stats")
        last = rows.item()
        return 1 if last is None else int(last) + 1

    def reserve_batch_ids(self, count: int) -> int:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        key = quote("key")
        self._create_batch_counter()
        with self._transaction():
            # The row exists, so this UPDATE always finds and locks it: concurrent
            # reservers queue here and each sees the value left by the one before.
            self._execute(
                f"UPDATE {META_TABLE} SET value = value + ? WHERE {key} = ?", [count, _BATCH_IDS]
            )
            last = self._fetch(
                f"SELECT value FROM {META_TABLE} WHERE {key} = ?", [_BATCH_IDS]
            ).item()
        return int(last) - count + 1

    def _create_batch_counter(self) -> None:
        """Create the batch id counter if missing, after the largest committed batch id.

        A step of its own: were it in the reserving transaction, an UPDATE that found no
        row and an INSERT that found the row another process had just created would
        together hand out that process's ids a second time.
        """
        key = quote("key")
        exists = f"SELECT COUNT(*) AS n FROM {META_TABLE} WHERE {key} = ?"
        if self._read(exists, [_BATCH_IDS]).item():
            return
        try:
            with self._transaction():
                self._execute(
                    f"INSERT INTO {META_TABLE} ({key}, value)"
                    " SELECT ?, COALESCE((SELECT MAX(batch_id) FROM ingest_stats), 0)"
                    f" WHERE NOT EXISTS (SELECT 1 FROM {META_TABLE} WHERE {key} = ?)",
                    [_BATCH_IDS, _BATCH_IDS],
                )
        except Exception:
            # Created by another process at the same instant: its insert won the key.
            if not self._read(exists, [_BATCH_IDS]).item():
                raise

    # -- state rebuild ------------------------------------------------------------------------
    def load_event_ids(
        self, table: str, partitions: Sequence[int], since: datetime
    ) -> pl.DataFrame:
        return self.load_facts(table, partitions, since, ("event_id", "event_time", "partition"))

    def load_facts(
        self, table: str, partitions: Sequence[int], since: datetime, columns: Sequence[str]
    ) -> pl.DataFrame:
        # Table and column names are interpolated, so only schema names get through.
        if table not in schema.FACT_TABLES:
            raise ValueError(f"unknown fact table {table!r}; one of {list(schema.FACT_TABLES)}")
        table_schema = schema.FACT_TABLES[table]
        unknown = [c for c in columns if c not in table_schema]
        if unknown:
            raise ValueError(f"table {table!r} has no columns {unknown}")
        if not partitions:
            return schema.empty({c: table_schema[c] for c in columns})
        marks = ", ".join("?" for _ in partitions)
        sql = (
            f"SELECT {column_list(columns)} FROM {quote(table)}"
            f' WHERE "partition" IN ({marks}) AND event_time >= ?'
        )
        return self._read(sql, [*(int(p) for p in partitions), utc_naive(since)])

    # -- dimensions ---------------------------------------------------------------------------
    def load_dimension(
        self, kind: DimensionKind, rows: pl.DataFrame, effective_from: datetime
    ) -> DimensionLoadResult:
        spec = DIMENSIONS[kind]
        loaded_at = now_utc()
        with self._transaction():
            current = self._fetch(f"SELECT * FROM {quote(spec.table)} WHERE valid_to IS NULL")
            to_close, to_insert = scd2_changes(current, rows, kind, effective_from, loaded_at)
            if to_close.height:
                with self._stage("staged_dimension_keys", to_close):
                    self._execute(
                        close_versions(spec.table, spec.key, "staged_dimension_keys"),
                        [utc_naive(effective_from)],
                    )
            if to_insert.height:
                self._append(spec.table, to_insert, spec.schema)
                self._bump_dimension_revision()
        changed = to_close.height
        new = to_insert.height - changed
        return DimensionLoadResult(
            kind=kind,
            rows=rows.height,
            new_keys=new,
            changed_keys=changed,
            unchanged_keys=rows.height - new - changed,
        )

    def _bump_dimension_revision(self) -> None:
        key = quote("key")
        self._execute(f"UPDATE {META_TABLE} SET value = value + 1 WHERE {key} = ?", [_REVISION])
        self._execute(
            f"INSERT INTO {META_TABLE} ({key}, value) SELECT ?, 1"
            f" WHERE NOT EXISTS (SELECT 1 FROM {META_TABLE} WHERE {key} = ?)",
            [_REVISION, _REVISION],
        )

    def dimension(self, kind: DimensionKind) -> pl.DataFrame:
        spec = DIMENSIONS[kind]
        sql = (
            f"SELECT {column_list(list(spec.schema))} FROM {quote(spec.table)}"
            f" ORDER BY {quote(spec.key)}, version"
        )
        return self._read(sql)

    def dimension_revision(self) -> int:
        key = quote("key")
        value = self._read_value(f"SELECT value FROM {META_TABLE} WHERE {key} = ?", [_REVISION])
        return int(value) if value is not None else 0

    def _read_value(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row of a read (None without a row); a backend
        may answer it without building a frame (the processor asks once per poll)."""
        rows = self._read(sql, params)
        return rows.item(0, 0) if rows.height else None


class _RolledBack(Exception):
    """Ends :meth:`SqlWarehouse.check_commit`'s transaction by rolling it back."""


def _appends(
    output: BatchOutput,
) -> tuple[tuple[str, pl.DataFrame, Mapping[str, pl.DataType]], ...]:
    """The appended tables of a commit, in write order (facts first: re-attributions
    update conversions appended in the same commit)."""
    return (
        ("fact_impressions", output.impressions, schema.FACT_IMPRESSIONS),
        ("fact_clicks", output.clicks, schema.FACT_CLICKS),
        ("fact_conversions", output.conversions, schema.FACT_CONVERSIONS),
        ("rollup_minute", output.rollups, schema.ROLLUP_MINUTE),
        ("dead_letters", _storable(output.dead_letters), schema.DEAD_LETTERS),
        ("ingest_stats", output.stats, schema.INGEST_STATS),
    )


def _storable(dead_letters: pl.DataFrame) -> pl.DataFrame:
    """Dead letters whose texts every backend stores (:func:`.schema.storable_text`): a
    rejected record's detail may quote anything, and its commit must never fail."""
    texts = schema.DEAD_LETTER_TEXT
    if dead_letters.height == 0 or any(dead_letters.schema.get(c) != pl.String for c in texts):
        return dead_letters  # nothing to store, or check_frame refuses it
    return dead_letters.with_columns(schema.storable_text_expr(c) for c in schema.DEAD_LETTER_TEXT)


def _offsets_frame(offsets: Mapping[tuple[Stream, int], str], at: datetime) -> pl.DataFrame:
    # Built from rows: for a commit's few, ~4x cheaper than from columns.
    return pl.DataFrame(
        [(str(s), p, offsets[(s, p)], at) for s, p in sorted(offsets)],
        schema=schema.CHECKPOINTS,
        orient="row",
    )


def _watermarks_frame(
    marks: Mapping[tuple[Stream, int], PartitionWatermark], at: datetime
) -> pl.DataFrame:
    return pl.DataFrame(
        [
            (
                str(s),
                p,
                utc_naive(marks[(s, p)].watermark),
                utc_naive(marks[(s, p)].max_event_time),
                at,
            )
            for s, p in sorted(marks)
        ],
        schema=schema.WATERMARKS,
        orient="row",
    )
