"""Latency of the live views over the last 24 h: from the serving store vs the warehouse.

Builds a warehouse of ``--events`` generated events (default 1M over 3 days) by running
the processor with a serving store (rebuilt at the end: catching up, it is left behind),
then times ``--requests`` sequential HTTP requests
(FastAPI TestClient, in process) per endpoint for the newest 24 h, once through an app
whose warehouse carries the store and once through an app over the plain warehouse,
and checks that both answered the same JSON.

Run (servers: PostgreSQL warehouse + Redis store, each in a scratch schema / key prefix
deleted afterwards)::

    python benchmarks/serving_reads.py --pg-url postgresql://postgres@127.0.0.1/test \\
        --redis-url redis://127.0.0.1:6379/0

Without ``--pg-url``/``--redis-url``: a DuckDB file warehouse and the in-process store.
Prints figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.processor.pipeline import Processor
from adpulse.serving import queries
from adpulse.serving.api import create_app
from adpulse.serving.store import MemoryServingStore, ServingStore
from adpulse.serving.store.redis import RedisServingStore
from adpulse.serving.store.sync import StoreSync
from adpulse.sources.generator import EventGenerator, GeneratorConfig
from adpulse.sources.producer import publish
from adpulse.storage.warehouse.base import Warehouse
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.transport.memory import InMemoryTransport

START = datetime(2023, 9, 1)
PARTITIONS = 4


@contextmanager
def backends(args: argparse.Namespace, home: Path) -> Iterator[tuple[Warehouse, ServingStore]]:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    prefix = f"adpulse-bench-{uuid.uuid4().hex[:12]}"
    warehouse: Warehouse
    store: ServingStore
    if args.pg_url:
        import psycopg

        from adpulse.storage.warehouse.postgres import PostgresWarehouse

        warehouse = PostgresWarehouse(args.pg_url, schema=schema)
    else:
        warehouse = DuckDBWarehouse(home / "warehouse.duckdb")
    if args.redis_url:
        store = RedisServingStore(args.redis_url, prefix=prefix)
    else:
        store = MemoryServingStore()
    try:
        warehouse.create_schema()
        yield warehouse, store
    finally:
        if isinstance(store, RedisServingStore):
            keys = list(store.client.scan_iter(match=f"{prefix}:*", count=1000))
            for i in range(0, len(keys), 1000):
                store.client.unlink(*keys[i : i + 1000])
        store.close()
        warehouse.close()
        if args.pg_url:
            with psycopg.connect(args.pg_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def fill(warehouse: Warehouse, store: ServingStore, events: int, days: int, home: Path) -> float:
    gen = EventGenerator(GeneratorConfig(seed=3))
    for kind, frame in (("campaigns", gen.campaigns()), ("users", gen.users())):
        from adpulse.sources.files import write_csv
        from adpulse.storage.dimensions import read_dimension_csv

        path = home / f"{kind}.csv"
        write_csv(frame, path)
        dim_kind, rows = read_dimension_csv(path)
        warehouse.load_dimension(dim_kind, rows, datetime(2023, 1, 1))
    transport = InMemoryTransport(PARTITIONS)
    producer = transport.producer()
    for part in gen.iter_generate(events, START, START + timedelta(days=days)):
        for stream in Stream:
            publish(producer, stream, part.records[stream], PARTITIONS)
    producer.flush()
    settings = Settings(home=home, partitions=PARTITIONS)
    t = time.perf_counter()
    processor = Processor(
        settings,
        transport,
        warehouse,
        clock=lambda: datetime.now().astimezone(),
        listeners=[StoreSync(store, warehouse)],
    )
    processor.run(threading.Event(), until_caught_up=True)
    processor.close()
    seconds = time.perf_counter() - t
    # Catching up, batches are too large for a delta: the store is left behind until a
    # rebuild (the live processor's sync makes one; here the run has ended).
    assert StoreSync(store, warehouse).rebuild(), "the store could not be rebuilt"
    return seconds


def timed(client: TestClient, path: str, params: dict[str, str], n: int) -> tuple[list[float], Any]:
    seconds = []
    body = None
    for _ in range(n):
        t = time.perf_counter()
        response = client.get(path, params=params)
        seconds.append(time.perf_counter() - t)
        response.raise_for_status()
        body = response.json()
    return seconds, body


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}[{i}]")
    else:
        yield path, value


def compare(a: Any, b: Any) -> str:
    """ "same JSON", or the largest relative difference of floats (other values must be
    equal): PostgreSQL and DuckDB round percentile interpolation differently."""
    if a == b:
        return "same JSON"
    left, right = dict(_leaves(a)), dict(_leaves(b))
    if left.keys() != right.keys():
        return "DIFFERENT JSON (shape)"
    worst = 0.0
    for key, x in left.items():
        y = right[key]
        if isinstance(x, float) and isinstance(y, float):
            worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-300))
        elif x != y:
            return f"DIFFERENT JSON at {key}: {x!r} != {y!r}"
    return f"same JSON but floats within relative {worst:.1e}"


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--pg-url")
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="adpulse-serving-bench-") as tmp:
        home = Path(tmp)
        with backends(args, home) as (warehouse, store):
            seconds = fill(warehouse, store, args.events, args.days, home)
            last = queries.data_range(warehouse)["last_minute"]
            assert last is not None
            end = last + timedelta(minutes=1)
            params = {
                "from": (end - timedelta(hours=24)).isoformat(),
                "to": end.isoformat(),
            }
            summary = queries.summary(
                warehouse, queries.Filters(start=end - timedelta(hours=24), end=end)
            )
            print(
                f"warehouse {type(warehouse).__name__}, store {type(store).__name__}:"
                f" {args.events:,} events over {args.days} days processed in {seconds:.1f} s;"
                f" last 24 h: {summary['impressions'].item():,} impressions"
            )
            # no shared answers: every request computes (else both sides time a cache)
            settings = Settings(home=home, partitions=PARTITIONS, api_cache_seconds=0)
            live_app = create_app(warehouse, settings, store=store)
            plain_app = create_app(warehouse, settings)
            with TestClient(live_app) as live, TestClient(plain_app) as plain:
                for path, extra in (
                    ("/api/v1/summary", {}),
                    ("/api/v1/timeseries", {"bucket": "hour"}),
                    ("/api/v1/timeseries", {"bucket": "minute"}),
                    ("/api/v1/breakdown/platform", {}),
                    ("/api/v1/top-ads", {}),
                ):
                    query = {**params, **extra}
                    label = path + "".join(f"?{k}={v}" for k, v in extra.items())
                    from_store, a = timed(live, path, query, args.requests)
                    from_warehouse, b = timed(plain, path, query, args.requests)
                    same = compare(a, b)
                    for name, values in (("store", from_store), ("warehouse", from_warehouse)):
                        print(
                            f"{label:32} {name:9} p50 {percentile(values, 50) * 1000:8.1f} ms"
                            f"  p99 {percentile(values, 99) * 1000:8.1f} ms"
                            f"  ({args.requests} sequential requests)"
                        )
                    print(f"{label:32} {same}")


if __name__ == "__main__":
    main()
