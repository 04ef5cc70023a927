"""COPY into PostgreSQL: CSV (the former path) against the binary format of
``adpulse.storage.warehouse.pgcopy``, on the same generated fact rows, into an unlogged
temporary table; client (encode) and server (COPY) time apart, each the best of ``--repeat``.

Run: ``python benchmarks/pg_copy.py --pg-url postgresql://postgres@127.0.0.1:5432/test
[--rows 300000]``. Prints figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import io
import time

import polars as pl
import psycopg
from storage_commit import facts

from adpulse.storage.warehouse import pgcopy, schema
from adpulse.storage.warehouse.postgres import POSTGRES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    frame = facts(schema.FACT_IMPRESSIONS, args.rows, 0, 1)
    columns = ", ".join(f'"{c}" {POSTGRES.column_type(t)}' for c, t in frame.schema.items())
    with psycopg.connect(args.pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE TEMP TABLE copied ({columns})")
        for name, encode, options in (("csv", _csv, "csv"), ("binary", _binary, "binary")):
            encoding, copying = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                pieces = encode(frame)
                t1 = time.perf_counter()
                with (
                    conn.cursor() as cursor,
                    cursor.copy(f"COPY copied FROM STDIN (FORMAT {options})") as copy,
                ):
                    for piece in pieces:
                        copy.write(piece)
                t2 = time.perf_counter()
                conn.execute("TRUNCATE copied")
                encoding.append(t1 - t0)
                copying.append(t2 - t1)
            best = (min(encoding), min(copying))
            print(
                f"{name:>6}: {args.rows:,} fact rows, encode {best[0]:.3f} s + COPY {best[1]:.3f}"
                f" s = {args.rows / sum(best):,.0f} rows/s"
            )


def _csv(frame: pl.DataFrame) -> list[bytes]:
    buffer = io.BytesIO()
    frame.write_csv(
        buffer,
        include_header=False,
        quote_style="necessary",
        datetime_format="%Y-%m-%d %H:%M:%S%.6f",
    )
    return [buffer.getvalue()]


def _binary(frame: pl.DataFrame) -> list[bytes | memoryview]:
    pieces = pgcopy.encode(frame)
    assert pieces is not None
    return pieces


if __name__ == "__main__":
    main()
