"""Processor over the Redis Streams transport: closed and recreated mid-way on the same
streams and warehouse, or dead with batches read but not committed, it ends with the same
warehouse as an uninterrupted run; acks trim the streams only up to the committed offsets
and leave nothing pending in the consumer group."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

import pytest
from builders import Pipeline, generated_dataset, open_pipeline
from redistest import REDIS_URL, redis_prefix

from adpulse.contracts import Stream
from adpulse.storage.warehouse.base import Warehouse
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.transport.redis_streams import RedisStreamsTransport

#: One xdist worker runs this module: its module-scoped fixtures are built once, not
#: once on each worker.
pytestmark = pytest.mark.xdist_group("redis-restart")

PARTITIONS = 3
NOW = datetime(2026, 1, 1)
TABLES = {
    "fact_impressions": "event_id, event_time, campaign",
    "fact_clicks": "event_id, event_time, campaign, platform",
    "fact_conversions": "event_id, event_time, click_event_id, latency_seconds, revenue",
    "dead_letters": "stream, partition, reason, payload",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    generated_dataset(
        out,
        15_000,
        datetime(2023, 9, 8),
        datetime(2023, 9, 9),
        seed=5,
        ads=30,
        campaigns=6,
        users=500,
        duplicate_rate=0.02,
        out_of_order_rate=0.05,
        malformed_rate=0.005,
    )
    return out


def _pipeline(data: Path, home: Path, prefix: str) -> Pipeline:
    """DuckDB over Redis Streams, with every record of ``data`` sent."""
    pipeline = open_pipeline(
        data,
        home,
        RedisStreamsTransport(REDIS_URL, PARTITIONS, prefix=prefix, entry_bytes=4096),
        DuckDBWarehouse(home / "warehouse.duckdb"),
        NOW,
        batch_max_bytes=60_000,
        idle_timeout_seconds=100_000,
    )
    pipeline.replay(data)
    return pipeline


def _snapshot(warehouse: Warehouse) -> dict[str, list[tuple[object, ...]]]:
    out = {
        table: warehouse.query(f"SELECT {cols} FROM {table} ORDER BY ALL").rows()
        for table, cols in TABLES.items()
    }
    out["rollups"] = warehouse.query(
        "SELECT minute, ad_id, platform, sum(impressions), sum(clicks), sum(conversions), "
        "sum(attributed_conversions), sum(revenue) FROM rollup_minute GROUP BY ALL "
        "HAVING sum(impressions) <> 0 OR sum(clicks) <> 0 OR sum(conversions) <> 0 "
        "ORDER BY ALL"
    ).rows()
    return out


def _uninterrupted(data: Path, home: Path, prefix: str) -> dict[str, list[tuple[object, ...]]]:
    """The warehouse of one processor run over ``data`` without interruption."""
    pipeline = _pipeline(data, home, prefix)
    try:
        processor = pipeline.processor()
        processor.run(threading.Event(), until_caught_up=True)
        processor.close()
        return _snapshot(pipeline.warehouse)
    finally:
        pipeline.close()


def test_restart_mid_stream_equals_uninterrupted_run(data: Path, tmp_path: Path) -> None:
    with redis_prefix() as prefix_a, redis_prefix() as prefix_b:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        pipeline = _pipeline(data, tmp_path / "a", prefix_a)
        transport, warehouse = pipeline.transport, pipeline.warehouse
        processor = pipeline.processor()
        for _ in range(4):
            assert processor.run_once() is not None
        processor.close()
        # A new processor on the same streams and warehouse resumes from the checkpoints.
        processor = pipeline.processor()
        processor.run(threading.Event(), until_caught_up=True)
        processor.close()
        restarted = _snapshot(warehouse)

        assert restarted == _uninterrupted(data, tmp_path / "b", prefix_b)
        assert len(restarted["fact_impressions"]) > 5000

        # Redis knows the committed offsets (= the warehouse checkpoints) and trimmed
        # nothing at or after them.
        checkpoints = {
            (s, int(p)): o
            for s, p, o in warehouse.query(
                'SELECT stream, partition, "offset" FROM checkpoints'
            ).rows()
        }
        consumer = transport.consumer()
        for stream in Stream:
            for partition in range(PARTITIONS):
                committed = consumer.committed(stream, partition)
                assert committed == checkpoints[(stream.value, partition)]
                first = transport.client.xrange(transport.key(stream, partition), count=1)
                first_id = tuple(int(x) for x in first[0][0].decode().split("-"))
                assert first_id <= tuple(int(x) for x in committed.split("-"))
                assert consumer.poll(stream, partition, committed, 1 << 20) is None
        impressions = sum(
            transport.client.xlen(transport.key(Stream.IMPRESSIONS, p)) for p in range(PARTITIONS)
        )
        assert impressions < len(restarted["fact_impressions"])  # trimmed behind commits
        transport.close()
        warehouse.close()


def test_batches_read_but_never_committed_are_taken_over(data: Path, tmp_path: Path) -> None:
    with redis_prefix() as prefix_a, redis_prefix() as prefix_b:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        pipeline = _pipeline(data, tmp_path / "a", prefix_a)
        transport, warehouse = pipeline.transport, pipeline.warehouse
        processor = pipeline.processor()
        commit = warehouse.commit
        commits = 0

        def commit_until_the_crash(output):  # type: ignore[no-untyped-def]
            nonlocal commits
            commits += 1
            if commits > 3:
                raise OSError("simulated crash: this commit never happens")
            commit(output)

        warehouse.commit = commit_until_the_crash  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="commit to the warehouse failed"):
            for _ in range(10):
                processor.run_once()
        # The dead processor's consumer holds entries read after the last commit.
        dead = processor.consumer.name  # type: ignore[attr-defined]
        held = {
            (stream, p): transport.client.xpending(transport.key(stream, p), transport.group)
            for stream in Stream
            for p in range(PARTITIONS)
        }
        assert sum(h["pending"] for h in held.values()) > 0
        assert {c["name"].decode() for h in held.values() for c in h["consumers"]} == {dead}
        warehouse.commit = commit  # type: ignore[method-assign]

        heir = pipeline.processor()
        heir.run(threading.Event(), until_caught_up=True)
        heir.close()
        recovered = _snapshot(warehouse)

        assert recovered == _uninterrupted(data, tmp_path / "b", prefix_b)
        assert len(recovered["fact_impressions"]) > 5000

        # Everything committed is acknowledged; the dead consumer was removed at the takeover.
        checkpoints = dict(
            ((s, int(p)), o)
            for s, p, o in warehouse.query(
                'SELECT stream, partition, "offset" FROM checkpoints'
            ).rows()
        )
        for stream in Stream:
            for p in range(PARTITIONS):
                key = transport.key(stream, p)
                (group,) = transport.client.xinfo_groups(key)
                assert (group["name"], group["pending"]) == (b"adpulse", 0)
                assert group["last-delivered-id"].decode() == checkpoints[(stream.value, p)]
                # The heir, closed with nothing pending, left the group too.
                assert transport.client.xinfo_consumers(key, transport.group) == []
        transport.close()
        warehouse.close()
