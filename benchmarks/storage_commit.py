"""Warehouse write throughput for the fact shape the processor commits.

1. Raw DuckDB: ``INSERT INTO t SELECT * FROM <Arrow table>`` of 100k fact rows, 20 times,
   into a file database: the ceiling of any DuckDB-backed commit on this machine.
2. ``Warehouse.commit`` of 200k fact rows (100k impressions, 50k clicks, 50k
   conversions), in 1 batch and in 10 batches, on DuckDB and (with ``--pg-url``) on
   PostgreSQL (a schema of its own, dropped afterwards).

Run: ``python benchmarks/storage_commit.py [--pg-url postgresql://postgres@127.0.0.1/test]``.
Prints figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from adpulse.storage.warehouse import schema
from adpulse.storage.warehouse.base import BatchOutput, Warehouse
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

T0 = datetime(2023, 9, 1)


def facts(table: dict[str, pl.DataType], n: int, offset: int, seed: int) -> pl.DataFrame:
    """``n`` plausible fact rows of ``table``'s schema (ids unique across calls)."""
    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {
        "event_id": [f"e8bff5ef-i{offset + i}" for i in range(n)],
        "event_time": [T0 + timedelta(seconds=int(s)) for s in rng.integers(0, 86_400, n)],
        "ad_id": rng.integers(1000, 1300, n),
        "user_id": [f"U{u}" for u in rng.integers(0, 20_000, n)],
        "platform": rng.choice(["Web", "Mobile", "Tablet"], n),
        "location": rng.choice(["New York", "Los Angeles", "Chicago", "Miami"], n),
        "campaign": rng.choice([f"Campaign {i}" for i in range(30)], n),
        "product": rng.choice(["Laptop", "Phone", "Jacket"], n),
        "gender": rng.choice(["Male", "Female"], n),
        "age": rng.integers(18, 70, n),
        "age_band": rng.choice(["18-24", "25-34", "35-44"], n),
        "interests": rng.choice(["Music;Travel", "Reading;Photography", "Gaming"], n),
        "is_late": np.zeros(n, dtype=bool),
        "partition": rng.integers(0, 4, n),
        "processed_at": [T0] * n,
        "product_id": [f"P{p}" for p in rng.integers(500, 600, n)],
        "revenue": np.round(rng.uniform(1, 200, n), 2),
        "click_event_id": [f"e8bff5ef-c{offset + i}" for i in range(n)],
        "click_time": [T0] * n,
        "latency_seconds": rng.uniform(1, 86_400, n),
    }
    return schema.conform(pl.DataFrame({k: columns[k] for k in table}), table)


def raw_duckdb(root: Path) -> None:
    frame = facts(schema.FACT_IMPRESSIONS, 100_000, 0, 1).to_arrow()
    con = duckdb.connect(str(root / "raw.duckdb"))
    con.register("frame", frame)
    con.execute("CREATE TABLE f AS SELECT * FROM frame LIMIT 0")
    started = time.perf_counter()
    for _ in range(20):
        con.execute("BEGIN")
        con.execute("INSERT INTO f SELECT * FROM frame")
        con.execute("COMMIT")
    seconds = time.perf_counter() - started
    con.close()
    print(f"{'raw DuckDB insert, 20 x 100k rows':50s} {2_000_000 / seconds:12,.0f} rows/s")


def commits(name: str, warehouse: Warehouse) -> None:
    for batches in (1, 10):
        outputs = []
        for b in range(batches):
            n, off = 200_000 // batches, b * 1_000_000
            outputs.append(
                BatchOutput(
                    batch_id=b + 1,
                    impressions=facts(schema.FACT_IMPRESSIONS, n // 2, off, b),
                    clicks=facts(schema.FACT_CLICKS, n // 4, off, b + 100),
                    conversions=facts(schema.FACT_CONVERSIONS, n // 4, off, b + 200),
                    reattributions=schema.empty(schema.CONVERSION_REATTRIBUTIONS),
                    rollups=schema.empty(schema.ROLLUP_MINUTE),
                    dead_letters=schema.empty(schema.DEAD_LETTERS),
                    stats=schema.empty(schema.INGEST_STATS),
                )
            )
        started = time.perf_counter()
        for output in outputs:
            warehouse.commit(output)
        seconds = time.perf_counter() - started
        label = f"{name} commit, 200k fact rows in {batches} batch(es)"
        print(f"{label:50s} {200_000 / seconds:12,.0f} rows/s ({seconds:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pg-url", default=None, help="Also measure this PostgreSQL server.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="adpulse-bench-") as tmp:
        root = Path(tmp)
        raw_duckdb(root)
        with DuckDBWarehouse(root / "w.duckdb") as wh:
            wh.create_schema()
            commits("DuckDB", wh)
    if args.pg_url:
        import psycopg

        from adpulse.storage.warehouse.postgres import PostgresWarehouse

        name = f"bench_{uuid.uuid4().hex[:12]}"
        try:
            with PostgresWarehouse(args.pg_url, schema=name) as wh:
                wh.create_schema()
                commits("PostgreSQL", wh)
        finally:
            with psycopg.connect(args.pg_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


if __name__ == "__main__":
    main()
