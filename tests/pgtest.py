"""PostgreSQL for tests: the server of .ci/run, one fresh schema per warehouse.

``ADPULSE_TEST_PG_URL`` names the server (default: the local one, trust auth, database
``test``). Each warehouse gets a schema of its own (dropped afterwards), so tests run in
parallel (pytest-xdist). If the server is unreachable, tests fail in CI (``CI`` set) and
are skipped locally, saying why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import psycopg
from servertest import require_server

from adpulse.storage.warehouse.postgres import PostgresWarehouse

PG_URL = os.environ.get("ADPULSE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@cache
def _unreachable() -> str | None:
    try:
        psycopg.connect(PG_URL, connect_timeout=5).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_URL} is unreachable ({exc}); start it or set ADPULSE_TEST_PG_URL"
    return None


def require_postgres() -> None:
    require_server(_unreachable())


def new_schema() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


def drop_schema(schema: str) -> None:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def postgres_warehouse(schema: str | None = None) -> Iterator[PostgresWarehouse]:
    """A warehouse with its tables, in a new schema dropped on exit."""
    require_postgres()
    schema = schema or new_schema()
    wh = PostgresWarehouse(PG_URL, schema=schema)
    try:
        wh.create_schema()
        yield wh
    finally:
        wh.close()
        drop_schema(schema)
