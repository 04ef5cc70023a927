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

from adpulse.operations.bench_server import event_latencies, run_bench_server, weighted_percentiles

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


def test_event_latencies_weigh_every_event() -> None:
    # Appended: 10 events at t=1 (after 100 at the baseline mark), 10 more at t=2.
    marks = [(0.0, {"clicks": 100}), (1.0, {"clicks": 110}), (2.0, {"clicks": 120})]
    # Queryable: 105 at t=1.5, all 120 at t=4 (one long batch).
    updates = [(0.5, {"clicks": 100}), (1.5, {"clicks": 105}), (4.0, {"clicks": 120})]
    assert sorted(event_latencies(marks, updates)) == [(0.5, 5), (2.0, 10), (3.0, 5)]
    assert weighted_percentiles(event_latencies(marks, updates)) == {
        "p50_ms": 2000.0,
        "p90_ms": 3000.0,
        "p99_ms": 3000.0,
        "max_ms": 3000.0,
        "events": 20,
    }


def test_a_backlog_run_measures_with_and_without_the_live_cap(tmp_path) -> None:
    require_postgres()
    require_redis()
    result = run_bench_server(
        redis_url=REDIS_URL,
        pg_url=PG_URL,
        events=10_000,
        partitions=2,
        workers=[1],
        rate=2_000,
        latency_seconds=8,
        backlog=20_000,
        seed=3,
        workdir=tmp_path / "bench",
        console=Console(quiet=True),
    )
    runs = result["backlog_latency"]
    assert [r["label"] for r in runs] == [
        "live batch cap on",
        "live batch cap off (live_batch_max_bytes = 0)",
    ]
    for run in runs:
        assert run["backlog_impressions"] > 19_000
        assert run["fresh_streams_ms"]["events"] > 0
        assert run["fresh_streams_ms"]["p50_ms"] >= 0
