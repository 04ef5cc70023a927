"""``adpulse bench-server`` on the real servers, tiny: every configuration commits every
record it appended, and the benchmark leaves no database or key prefix behind. (What it
measures is never asserted: speed is for the benchmark's report, not for tests.)"""

from __future__ import annotations

import psycopg
import pytest
import redis
from pgtest import PG_URL, require_postgres
from redistest import REDIS_URL, require_redis
from rich.console import Console

from adpulse.operations.bench_server import run_bench_server

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bench-server")]


def _bench_databases() -> set[str]:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'adpulse_bench_%'"
        ).fetchall()
    return {r[0] for r in rows}


def _bench_keys() -> int:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return sum(1 for _ in client.scan_iter(match="adpulse-bench-*", count=1000))
    finally:
        client.close()


def test_every_configuration_commits_everything_and_cleans_up(tmp_path) -> None:
    require_postgres()
    require_redis()
    databases, keys = _bench_databases(), _bench_keys()
    result = run_bench_server(
        redis_url=REDIS_URL,
        pg_url=PG_URL,
        events=20_000,
        partitions=2,
        workers=[1],
        rate=2_000,
        latency_seconds=5,
        seed=3,
        workdir=tmp_path / "bench",
        console=Console(quiet=True),
    )
    runs = result["throughput"]
    assert [r["label"] for r in runs] == [
        "embedded log + DuckDB, 1 process",
        "Redis + PostgreSQL, 1 worker(s)",
    ]
    # The same workload everywhere, and all of it committed (records incl. malformed).
    assert len({r["records"] for r in runs}) == 1
    assert all(r["committed"] == r["records"] for r in runs)
    latency = result["latency"]
    assert latency["samples"] > 0
    # Producer counts continue the committed ones: a record is never queryable before
    # it was produced (a baseline error shows up as negative latencies).
    assert latency["latency_ms"]["p50_ms"] >= 0
    assert _bench_databases() == databases
    assert _bench_keys() == keys
