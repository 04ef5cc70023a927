"""The binary COPY encoder (adpulse.storage.warehouse.pgcopy), on a real server: every
type the warehouse writes, NULLs, edge values, and the same rows as a CSV COPY."""

from __future__ import annotations

import io
from datetime import date, datetime
from decimal import Decimal

import polars as pl
import psycopg
import pytest
from pgtest import PG_URL, require_postgres

from adpulse.storage.warehouse import pgcopy

FRAME = pl.DataFrame(
    {
        "s": ["a", "", None, 'ünï €\t"quoted",\nline', "x" * 5000],
        "i8": [0, -1, None, 2**63 - 1, -(2**63)],
        "i4": [1, None, -(2**31), 2**31 - 1, 0],
        "f8": [1.5, -0.0, None, 1e300, -2.25],
        "b": [True, False, None, True, False],
        "ts": [
            datetime(2000, 1, 1),
            datetime(1999, 12, 31, 23, 59, 59, 999_999),
            None,
            datetime(2026, 11, 29, 10, 0, 0, 123_456),
            datetime(1970, 1, 1),
        ],
        "d": [date(2000, 1, 1), date(1969, 7, 20), None, date(2099, 12, 31), date(2000, 1, 2)],
        "rev": [Decimal("0"), Decimal("-12.3400"), None, Decimal("99999999999999.9999"), None],
        "total": [
            Decimal("12345678901234.0001"),
            Decimal("0.0001"),
            Decimal("-0.0001"),
            None,
            Decimal("100000000"),
        ],
        "raw": [b"\x00\xff", b"", None, b"bytes", b"\n"],
    },
    schema={
        "s": pl.String,
        "i8": pl.Int64,
        "i4": pl.Int32,
        "f8": pl.Float64,
        "b": pl.Boolean,
        "ts": pl.Datetime("us"),
        "d": pl.Date,
        "rev": pl.Decimal(18, 4),
        "total": pl.Decimal(38, 4),
        "raw": pl.Binary,
    },
)
COLUMNS = (
    "s TEXT, i8 BIGINT, i4 INTEGER, f8 DOUBLE PRECISION, b BOOLEAN, ts TIMESTAMP, d DATE,"
    " rev DECIMAL(18, 4), total DECIMAL(38, 4), raw BYTEA"
)


@pytest.fixture
def conn() -> psycopg.Connection[tuple[object, ...]]:
    require_postgres()
    with psycopg.connect(PG_URL) as conn:
        conn.execute(f"CREATE TEMP TABLE t ({COLUMNS})")
        yield conn


def _copy_binary(conn: psycopg.Connection[tuple[object, ...]], frame: pl.DataFrame) -> None:
    pieces = pgcopy.encode(frame)
    assert pieces is not None
    with conn.cursor() as cursor, cursor.copy("COPY t FROM STDIN (FORMAT binary)") as copy:
        for piece in pieces:
            copy.write(piece)


def test_every_type_round_trips_exactly(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    _copy_binary(conn, FRAME)
    rows = conn.execute("SELECT * FROM t").fetchall()
    expected = [tuple(r) for r in FRAME.rows()]
    assert [r[:9] + (bytes(r[9]) if r[9] is not None else None,) for r in rows] == expected
    # Decimals arrive with their scale (the server strips only the padding digits).
    assert [str(r[0]) for r in conn.execute("SELECT rev FROM t").fetchall()] == [
        "0.0000",
        "-12.3400",
        "None",
        "99999999999999.9999",
        "None",
    ]


def test_binary_and_csv_copies_store_the_same_rows(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    frame = FRAME.drop("raw")
    _copy_binary(conn, frame.with_columns(raw=pl.lit(None, pl.Binary)))
    buffer = io.BytesIO()
    frame.write_csv(buffer, include_header=False, datetime_format="%Y-%m-%d %H:%M:%S%.6f")
    with (
        conn.cursor() as cursor,
        cursor.copy(f"COPY t ({', '.join(frame.columns)}) FROM STDIN (FORMAT csv)") as copy,
    ):
        copy.write(buffer.getvalue())
    binary, csv = (
        conn.execute(f"SELECT {', '.join(frame.columns)} FROM t OFFSET {o} LIMIT 5").fetchall()
        for o in (0, 5)
    )
    assert binary == csv


def test_empty_frame_and_values_it_leaves_to_csv(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    _copy_binary(conn, FRAME.head(0))
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    # Beyond 64 bits of unscaled decimal, and a type without an encoder: None (CSV).
    huge = pl.DataFrame({"x": [Decimal("1e30")]}, schema={"x": pl.Decimal(38, 4)})
    assert pgcopy.encode(huge) is None
    assert pgcopy.encode(pl.DataFrame({"x": [[1, 2]]})) is None
