"""The Redshift warehouse for tests: its real SQL on PostgreSQL, its staging on moto's S3.

Redshift itself cannot run here. What runs instead:

- every statement the backend sends goes to the real PostgreSQL server (pgtest), where
  the two dialects agree, and is recorded by :class:`StatementLog` at the driver
  (psycopg's ``Cursor.execute`` and ``Cursor.copy``), to be checked against Redshift's
  grammar (:func:`redshift_problems`);
- the frames are staged as Parquet on the local AWS API server (awstest) with boto3,
  exactly as on AWS;
- :class:`ParquetCopyShim`, the one test double: PostgreSQL cannot run Redshift's
  ``COPY t FROM 's3://...' IAM_ROLE '...' FORMAT AS PARQUET``, so the shim records that
  statement, reads the staged Parquet back from S3 and inserts its rows into the staging
  table (statements marked with :data:`SHIM_MARK`, not the backend's);
- two names Redshift has and PostgreSQL lacks are defined in the test schema
  (:data:`REDSHIFT_NAMES_SHIM`): the function ``GETDATE()`` and the type ``VARBYTE``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import psycopg
import sqlglot
from awstest import REGION, aws_endpoint_own_process, unique_name
from pgtest import PG_URL, drop_schema, new_schema, require_postgres
from sqlglot import exp

from adpulse.storage.warehouse.postgres import POSTGRES
from adpulse.storage.warehouse.redshift import RedshiftWarehouse, copy_parquet
from adpulse.storage.warehouse.s3staging import S3Location, S3Staging

IAM_ROLE = "arn:aws:iam::123456789012:role/adpulse-redshift-copy"
#: Marks the statements the test shims send (not the backend's: left out of the log).
SHIM_MARK = "/* test shim (redshifttest.py) */"
#: Marks a statement a test sends itself (say, to expire a lease): left out of the log.
TEST_MARK = "/* sent by the test */"
#: Redshift's GETDATE() and VARBYTE, defined in the test schema of PostgreSQL.
REDSHIFT_NAMES_SHIM = (
    'CREATE FUNCTION "{schema}".getdate() RETURNS timestamp LANGUAGE sql STABLE'
    " AS 'SELECT LOCALTIMESTAMP'",
    'CREATE DOMAIN "{schema}".varbyte AS bytea',
)

#: Statements sqlglot's Redshift dialect does not parse, allowed by name because Redshift
#: documents them (BEGIN: docs r_BEGIN, "[ ISOLATION LEVEL option ] [ READ WRITE | READ
#: ONLY ]"; SET TIME ZONE: docs r_timezone_config).
DOCUMENTED_UNPARSED = frozenset(
    {
        "BEGIN READ ONLY",
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        "SET TIME ZONE 'UTC'",
    }
)
#: PostgreSQL-only functions (or leader-node-only ones on Redshift), by lower-case name.
PG_ONLY_FUNCTIONS = frozenset(
    {
        "pg_advisory_lock",
        "pg_advisory_xact_lock",
        "pg_try_advisory_lock",
        "pg_try_advisory_xact_lock",
        "generate_series",
        "string_agg",
        "array_agg",
        "jsonb_build_object",
        "to_jsonb",
    }
)
#: Column types Redshift lacks (or, for TEXT, silently narrows to VARCHAR(256)).
PG_ONLY_TYPES = frozenset(
    {
        exp.DataType.Type.JSONB,
        exp.DataType.Type.JSON,
        exp.DataType.Type.ARRAY,
        exp.DataType.Type.TEXT,
        exp.DataType.Type.UUID,
        exp.DataType.Type.SERIAL,
        exp.DataType.Type.BIGSERIAL,
    }
)
_PLACEHOLDER = re.compile(r"%s")
_STRINGS = re.compile(r"'(?:[^']|'')*'")
#: Date functions Redshift runs on its leader node only (docs: c_SQL_functions_leader_node_only).
_LEADER_ONLY_CLOCKS = re.compile(
    r"\b(LOCALTIMESTAMP|LOCALTIME|CURRENT_TIMESTAMP|CURRENT_TIME|NOW\s*\(|CLOCK_TIMESTAMP)",
    re.IGNORECASE,
)


def redshift_problems(statement: str) -> list[str]:
    """Why ``statement`` would not run on Redshift: it does not parse with sqlglot's
    Redshift dialect, or it uses a construct listed above. Empty when fine."""
    text = " ".join(statement.split())
    if text in DOCUMENTED_UNPARSED:
        return []
    if re.search(r"\bFROM\s+STDIN\b", text, re.IGNORECASE):
        return ["COPY ... FROM STDIN (Redshift copies from S3 only)"]
    if re.search(r"\bBYTEA\b", text, re.IGNORECASE):  # sqlglot reads it as VARBYTE
        return ["type BYTEA (Redshift: VARBYTE)"]
    # sqlglot reads GETDATE(), NOW() and CURRENT_TIMESTAMP alike: look at the text.
    clock = _LEADER_ONLY_CLOCKS.search(_STRINGS.sub("''", text))
    if clock:
        return [f"function {clock.group(1).lower()} (leader-node only on Redshift)"]
    try:
        trees = sqlglot.parse(_PLACEHOLDER.sub("?", text), read="redshift")
    except sqlglot.errors.SqlglotError as exc:
        return [f"does not parse as Redshift SQL: {str(exc).splitlines()[0]}"]
    # More than one only where a test sends a user's query that the backend must refuse.
    return [problem for tree in trees if tree is not None for problem in _constructs(tree)]


def _constructs(tree: exp.Expression) -> list[str]:
    if isinstance(tree, exp.Command):
        return ["parsed only as an opaque command (syntax sqlglot's Redshift lacks)"]
    problems: list[str] = []
    for node in tree.walk():
        if isinstance(node, exp.OnConflict):
            problems.append("ON CONFLICT")
        elif isinstance(node, exp.Returning):
            problems.append("RETURNING")
        elif isinstance(node, exp.DataType) and node.this in PG_ONLY_TYPES:
            problems.append(f"type {node.sql('postgres')}")
        elif isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name in PG_ONLY_FUNCTIONS:
                problems.append(f"function {name}")
        elif isinstance(node, exp.Lock):
            problems.append("SELECT ... FOR UPDATE/SHARE")
        elif isinstance(node, exp.Distinct) and node.args.get("on") is not None:
            problems.append("DISTINCT ON")
    return problems


class StatementLog:
    """Every statement sent through psycopg while :meth:`recording` (shim ones left out)."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def add(self, statement: str) -> None:
        if SHIM_MARK not in statement and TEST_MARK not in statement:
            self.statements.append(statement)

    @contextmanager
    def recording(self) -> Iterator[StatementLog]:
        execute, copy = psycopg.Cursor.execute, psycopg.Cursor.copy
        log = self

        def recorded_execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            log.add(str(query))
            return execute(cursor, query, *args, **kwargs)

        def recorded_copy(cursor: Any, statement: Any, *args: Any, **kwargs: Any) -> Any:
            log.add(str(statement))
            return copy(cursor, statement, *args, **kwargs)

        psycopg.Cursor.execute = recorded_execute  # type: ignore[method-assign]
        psycopg.Cursor.copy = recorded_copy  # type: ignore[method-assign]
        try:
            yield self
        finally:
            psycopg.Cursor.execute = execute  # type: ignore[method-assign]
            psycopg.Cursor.copy = copy  # type: ignore[method-assign]

    def problems(self) -> dict[str, list[str]]:
        """Each distinct recorded statement that would not run on Redshift, with why."""
        found: dict[str, list[str]] = {}
        for statement in dict.fromkeys(self.statements):
            why = redshift_problems(statement)
            if why:
                found[statement] = why
        return found


class ParquetCopyShim(RedshiftWarehouse):
    """The Redshift backend with Redshift's ``COPY ... FORMAT AS PARQUET`` done by the
    test: the Parquet object is read back from S3 and its rows inserted into the staging
    table, in the backend's open transaction. Nothing else is replaced."""

    def __init__(self, *args: Any, log: StatementLog, **kwargs: Any) -> None:
        self.log = log
        self.copies: list[str] = []  # the COPY statements the backend asked for
        super().__init__(*args, **kwargs)

    def copy_from_s3(self, table: str, uri: str, execute: Callable[..., None]) -> None:
        statement = copy_parquet(table, uri, self.iam_role)
        self.log.add(statement)
        self.copies.append(statement)
        frame = self.staging.read(uri)
        if frame.height == 0:
            return
        # One array per column, unnested into rows: one statement, few parameters.
        arrays = ", ".join(
            f"CAST(? AS {POSTGRES.column_type(dtype)}[])" for dtype in frame.schema.values()
        )
        execute(
            f'{SHIM_MARK} INSERT INTO "{table}" SELECT * FROM unnest({arrays})',
            [column.to_list() for column in frame.get_columns()],
        )


def new_bucket() -> str:
    """A fresh bucket on the local AWS API server."""
    name = unique_name("adpulse-staging")
    s3_client().create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    return name


def s3_client() -> Any:
    """A client of the local S3, served from a process of its own (an in-process server
    would wait for the GIL of the processor it serves)."""
    return boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url=aws_endpoint_own_process(),
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def prepare_schema(schema: str) -> None:
    """Create ``schema`` with Redshift's GETDATE() and VARBYTE defined in it."""
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'{SHIM_MARK} CREATE SCHEMA IF NOT EXISTS "{schema}"')
        for statement in REDSHIFT_NAMES_SHIM:
            conn.execute(f"{SHIM_MARK} {statement.format(schema=schema)}")


def staging(bucket: str, prefix: str = "adpulse/staging") -> S3Staging:
    return S3Staging(S3Location(bucket, prefix), client=s3_client())


@contextmanager
def redshift_warehouse(
    log: StatementLog | None = None, schema: str | None = None, bucket: str | None = None
) -> Iterator[ParquetCopyShim]:
    """The Redshift backend (with its tables) on a new PostgreSQL schema and S3 bucket,
    recording its statements in ``log``; the schema is dropped on exit."""
    require_postgres()
    log = log or StatementLog()
    schema = schema or new_schema()
    prepare_schema(schema)
    try:
        with log.recording():
            wh = ParquetCopyShim(
                PG_URL, staging(bucket or new_bucket()), IAM_ROLE, schema=schema, log=log
            )
            try:
                wh.create_schema()
                yield wh
            finally:
                wh.close()
    finally:
        drop_schema(schema)
