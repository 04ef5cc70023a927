"""Server failures under a running processor, through a TCP proxy in the test (the shared
servers are never stopped): PostgreSQL connections dropped mid-run, dropped right after a
COMMIT was sent (outcome unknown), or black-holed; the Redis transport dropped; a Redis
database index that does not exist."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from builders import generated_dataset, open_pipeline
from pgtest import PG_URL, drop_schema, new_schema, require_postgres
from redistest import REDIS_URL, redis_prefix
from tcpproxy import TcpProxy

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.outages import InfrastructureError, ServerTimeouts
from adpulse.processor.pipeline import BatchReport, Processor
from adpulse.processor.workers import PartitionWorker
from adpulse.sources.producer import replay_directory
from adpulse.storage.warehouse.postgres import PostgresWarehouse
from adpulse.transport.memory import InMemoryTransport
from adpulse.transport.redis_streams import RedisStreamsTransport

#: One xdist worker runs this module: its module-scoped fixtures are built once, not
#: once on each worker.
pytestmark = pytest.mark.xdist_group("server-outages")

PARTITIONS = 2
NOW = datetime(2026, 1, 1)
TABLES = {
    "fact_impressions": "event_id, event_time, campaign",
    "fact_clicks": "event_id, event_time, campaign, platform",
    "fact_conversions": "event_id, event_time, click_event_id, latency_seconds, revenue",
    "dead_letters": 'stream, "partition", reason, payload',
    "rollup_minute": "minute, ad_id, platform, impressions, clicks, conversions, revenue",
}
#: Small bounds, so that every case takes seconds.
FAST = ServerTimeouts(connect_seconds=1, statement_seconds=1.5, retry_seconds=20)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    generated_dataset(
        out,
        6_000,
        datetime(2023, 9, 8),
        datetime(2023, 9, 9),
        seed=11,
        ads=20,
        campaigns=5,
        users=300,
        duplicate_rate=0.02,
    )
    return out


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple]]:
    """The warehouse of an uninterrupted run, straight to the server."""
    require_postgres()
    schema = new_schema()
    try:
        with PostgresWarehouse(PG_URL, schema=schema) as wh:
            _run(data, tmp_path_factory.mktemp("ref"), wh)
            return _snapshot(wh)
    finally:
        drop_schema(schema)


def _settings(home: Path) -> Settings:
    return Settings(
        home=home, partitions=PARTITIONS, batch_max_bytes=30_000, idle_timeout_seconds=100_000
    )


def _run(
    data: Path,
    home: Path,
    warehouse: PostgresWarehouse,
    on_batch: object = None,
    workers: bool = False,
) -> None:
    """Process ``data``; ``workers``: as a partition worker (leases, fenced commits), as
    ``adpulse process`` does over PostgreSQL."""
    pipeline = open_pipeline(
        data,
        home,
        InMemoryTransport(PARTITIONS),
        warehouse,
        NOW,
        batch_max_bytes=30_000,
        idle_timeout_seconds=100_000,
    )
    pipeline.replay(data)
    processor: Processor | PartitionWorker
    if workers:
        processor = PartitionWorker(
            pipeline.settings, pipeline.transport, warehouse, clock=pipeline.clock
        )
    else:
        processor = pipeline.processor()
    try:
        processor.run(threading.Event(), on_batch=on_batch, until_caught_up=True)  # type: ignore[arg-type]
    finally:
        processor.close()


def _snapshot(warehouse: PostgresWarehouse) -> dict[str, list[tuple]]:
    out = {}
    for table, cols in TABLES.items():
        frame = warehouse.query(f"SELECT {cols} FROM {table}")
        out[table] = frame.sort(frame.columns, nulls_last=True).rows()
    stats = warehouse.query("SELECT stream, sum(received) AS n FROM ingest_stats GROUP BY stream")
    out["received"] = sorted(stats.rows())
    return out


@pytest.fixture
def proxied() -> object:
    require_postgres()
    schema = new_schema()
    proxy = TcpProxy.for_url(PG_URL)
    try:
        yield proxy, schema
    finally:
        proxy.close()
        drop_schema(schema)


@pytest.mark.parametrize("workers", [False, True], ids=["processor", "partition-worker"])
def test_postgres_dropped_mid_run_reconnects_with_uninterrupted_results(
    workers: bool,
    data: Path,
    reference: dict[str, list[tuple]],
    proxied: tuple[TcpProxy, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, schema = proxied
    batches = [0]

    def drop_now_and_then(report: BatchReport) -> None:
        batches[0] += 1
        if batches[0] in (2, 5, 9):
            proxy.drop()  # while the committer commits the batch before

    with (
        caplog.at_level(logging.WARNING, logger="adpulse.outages"),
        PostgresWarehouse(proxy.url(PG_URL), schema=schema, timeouts=FAST) as wh,
    ):
        _run(data, tmp_path, wh, on_batch=drop_now_and_then, workers=workers)
        got = _snapshot(wh)
    assert batches[0] > 9
    assert got == reference
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retries, "the drops were not noticed"
    port = proxy.port
    assert all(
        m.startswith(f"warehouse (postgresql://postgres@127.0.0.1:{port}/test): connection lost")
        for m in retries
    ), retries


def test_commit_whose_answer_was_lost_is_not_written_twice(
    data: Path,
    reference: dict[str, list[tuple]],
    proxied: tuple[TcpProxy, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, schema = proxied
    batches = [0]

    def lose_a_commit_answer(report: BatchReport) -> None:
        batches[0] += 1
        if batches[0] == 3:
            proxy.drop_after(b"COMMIT")

    with (
        caplog.at_level(logging.WARNING, logger="adpulse.storage.warehouse.postgres"),
        PostgresWarehouse(proxy.url(PG_URL), schema=schema, timeouts=FAST) as wh,
    ):
        _run(data, tmp_path, wh, on_batch=lose_a_commit_answer)
        got = _snapshot(wh)
    assert proxy.dropped_after.is_set()
    assert got == reference
    assert any(
        "was committed before the connection was lost" in r.getMessage() for r in caplog.records
    )


def test_postgres_black_holed_gives_up_within_the_bound(
    proxied: tuple[TcpProxy, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy, schema = proxied
    bound = 3.0
    timeouts = ServerTimeouts(connect_seconds=1, statement_seconds=1, retry_seconds=bound)
    # a password in the URL (the local server trusts, so any will do) is never shown
    url = proxy.url(PG_URL).replace("://postgres@", "://postgres:s3cret@")
    with (
        caplog.at_level(logging.WARNING),
        PostgresWarehouse(url, schema=schema, timeouts=timeouts) as wh,
    ):
        wh.create_schema()
        proxy.pause()
        started = time.monotonic()
        with pytest.raises(InfrastructureError) as caught:
            wh.load_offsets()
        elapsed = time.monotonic() - started
        proxy.resume()
    # the bound, plus at most one attempt's own timeout (libpq's connect minimum: 2 s),
    # plus slack for a loaded machine
    assert bound <= elapsed + FAST.statement_seconds and elapsed < bound + 4, elapsed
    message = str(caught.value)
    assert caught.value.setting == "warehouse_url"
    assert message.startswith(
        f"warehouse (postgresql://postgres:***@127.0.0.1:{proxy.port}/test) is unavailable:"
        " a read failed for "
    ), message
    assert "s3cret" not in message and "s3cret" not in caplog.text
    assert "retrying a read in 0.5 s (attempt 2, giving up after 3 s)" in caplog.text
    assert "warehouse_url (ADPULSE_WAREHOUSE_URL)" in message


def _adpulse(home: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adpulse", *args, "--home", str(home)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_black_holed_postgres_one_error_line_exit_2(
    proxied: tuple[TcpProxy, str], tmp_path: Path, data: Path
) -> None:
    proxy, schema = proxied
    env = {
        "ADPULSE_WAREHOUSE_URL": proxy.url(PG_URL) + f"?options=-csearch_path%3D{schema}",
        "ADPULSE_INFRA_TIMEOUT_SECONDS": "1",
        "ADPULSE_STATEMENT_TIMEOUT_SECONDS": "1",
        "ADPULSE_INFRA_RETRY_SECONDS": "3",
        "ADPULSE_PARTITIONS": "2",
    }
    with PostgresWarehouse(PG_URL, schema=schema) as wh:
        wh.create_schema()
    done = _adpulse(tmp_path, env, "replay", str(data), "--produce-only")
    assert done.returncode == 0, done.stderr
    process = subprocess.Popen(
        [sys.executable, "-m", "adpulse", "process", "--home", str(tmp_path)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with PostgresWarehouse(PG_URL, schema=schema) as wh:
            deadline = time.monotonic() + 60
            while not wh.query("SELECT count(*) FROM ingest_stats").item():
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        with proxy.paused():  # mid-run: the processor has committed, and goes on polling
            started = time.monotonic()
            _, stderr = process.communicate(timeout=60)
            elapsed = time.monotonic() - started
    finally:
        process.kill()
    assert process.returncode == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert errors[0].startswith(
        f"error: warehouse (postgresql://postgres@127.0.0.1:{proxy.port}/test?options="
    ), errors
    assert "warehouse_url (ADPULSE_WAREHOUSE_URL)" in errors[0]
    assert "Traceback" not in stderr
    # detection (statement deadline 1 s) + retries for 3 s + one reconnect attempt (2 s)
    # + leaving cleanly (one more try each) + slack for a loaded machine
    assert elapsed < 15, elapsed


def test_cli_postgres_unreachable_at_start_one_error_line(tmp_path: Path) -> None:
    with TcpProxy.for_url(PG_URL) as proxy:
        env = {"ADPULSE_WAREHOUSE_URL": proxy.url(PG_URL), "ADPULSE_INFRA_TIMEOUT_SECONDS": "1"}
        with proxy.paused():
            done = _adpulse(tmp_path, env, "process", "--until-caught-up")
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "(setting warehouse_url, env ADPULSE_WAREHOUSE_URL)" in errors[0]


def test_redis_transport_dropped_reconnects_and_names_the_transport(
    data: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

    with redis_prefix() as prefix, TcpProxy.for_url(REDIS_URL) as proxy:
        url = proxy.url(REDIS_URL)
        transport = RedisStreamsTransport(url, PARTITIONS, prefix=prefix, timeouts=FAST)
        replay_directory(data, transport.producer(), PARTITIONS)
        warehouse = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
        warehouse.create_schema()
        batches = [0]

        def drop_now_and_then(report: BatchReport) -> None:
            batches[0] += 1
            if batches[0] == 2:  # idle connections: the client reconnects on its own
                proxy.drop()
            elif batches[0] == 4:  # a read's entries were delivered, its answer is lost
                proxy.drop_after(b"XREADGROUP")
            elif batches[0] == 8:  # an acknowledgement's answer is lost
                proxy.drop_after(b"EVALSHA")

        processor = Processor(
            _settings(tmp_path), transport, warehouse, clock=lambda: NOW.astimezone()
        )
        with caplog.at_level(logging.WARNING, logger="adpulse.outages"):
            try:
                processor.run(threading.Event(), on_batch=drop_now_and_then, until_caught_up=True)
            finally:
                processor.close()
                transport.close()
        received = warehouse.query("SELECT sum(received) FROM ingest_stats").item()
        facts = sum(
            warehouse.query(f"SELECT count(*) FROM {t}").item()
            for t in ("fact_impressions", "fact_clicks", "fact_conversions")
        )
        distinct = sum(
            warehouse.query(f"SELECT count(DISTINCT event_id) FROM {t}").item()
            for t in ("fact_impressions", "fact_clicks", "fact_conversions")
        )
        warehouse.close()
    lines = sum(_count(p) for p in data.glob("*.jsonl"))
    assert received == lines
    assert facts == distinct
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert any("retrying a read of" in m for m in retries), retries
    assert any("retrying the acknowledgement of" in m for m in retries), retries
    assert all(m.startswith(f"transport (redis://127.0.0.1:{proxy.port}/0)") for m in retries)


def _count(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)


@pytest.mark.parametrize("setting", ["transport_url", "serving_url"])
def test_redis_database_that_does_not_exist_one_error_line(setting: str, tmp_path: Path) -> None:
    with redis_prefix():  # only to skip when Redis is not there
        pass
    env = {f"ADPULSE_{setting.upper()}": REDIS_URL.rsplit("/", 1)[0] + "/999"}
    done = _adpulse(tmp_path, env, "process", "--until-caught-up")
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert setting in errors[0] and "/999" in errors[0], errors
    assert "Traceback" not in done.stderr


def test_redis_transport_black_holed_gives_up_naming_transport_url(data: Path) -> None:
    bound = 2.0
    timeouts = ServerTimeouts(connect_seconds=0.5, statement_seconds=1, retry_seconds=bound)
    with redis_prefix() as prefix, TcpProxy.for_url(REDIS_URL) as proxy:
        transport = RedisStreamsTransport(
            proxy.url(REDIS_URL), PARTITIONS, prefix=prefix, timeouts=timeouts
        )
        consumer = transport.consumer()
        try:
            with proxy.paused():
                started = time.monotonic()
                with pytest.raises(InfrastructureError) as caught:
                    consumer.poll(Stream.CLICKS, 0, None, 1 << 16)
                elapsed = time.monotonic() - started
                consumer.close()  # best effort, bounded: the server is still away
        finally:
            transport.close()
    assert caught.value.setting == "transport_url"
    assert str(caught.value).startswith(
        f"transport (redis://127.0.0.1:{proxy.port}/0) is unavailable: a read of clicks"
        " partition 0 failed"
    )
    assert "transport_url (ADPULSE_TRANSPORT_URL)" in str(caught.value)
    assert elapsed < bound + 1.5, elapsed


def test_serving_store_black_holed_never_stops_ingestion(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from adpulse.serving.store.redis import RedisServingStore
    from adpulse.serving.store.sync import StoreSync
    from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

    timeouts = ServerTimeouts(connect_seconds=0.5, statement_seconds=1, retry_seconds=2)
    with redis_prefix() as prefix, TcpProxy.for_url(REDIS_URL) as proxy:
        store = RedisServingStore(proxy.url(REDIS_URL), prefix=prefix, timeouts=timeouts)
        duck = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
        duck.create_schema()
        transport = InMemoryTransport(PARTITIONS)
        replay_directory(data, transport.producer(), PARTITIONS)
        batches = [0]

        def black_hole(report: BatchReport) -> None:
            batches[0] += 1
            if batches[0] == 3:
                proxy.pause()

        processor = Processor(
            _settings(tmp_path),
            transport,
            duck,
            clock=lambda: NOW.astimezone(),
            listeners=[StoreSync(store, duck)],
        )
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="adpulse.serving"):
            try:
                processor.run(threading.Event(), on_batch=black_hole, until_caught_up=True)
            finally:
                processor.close()
        elapsed = time.monotonic() - started
        proxy.resume()
        received = duck.query("SELECT sum(received) FROM ingest_stats").item()
        store.close()
        duck.close()
    assert batches[0] > 3
    assert received == sum(_count(p) for p in data.glob("*.jsonl"))
    assert any("serving store" in r.getMessage() for r in caplog.records)
    assert elapsed < 20, elapsed


def _duck_counts(data: Path, home: Path, transport: object) -> tuple[int, dict[str, int]]:
    """Process ``transport`` into a DuckDB warehouse: (records received, facts per table)."""
    from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

    warehouse = DuckDBWarehouse(home / "warehouse.duckdb")
    warehouse.create_schema()
    processor = Processor(_settings(home), transport, warehouse, clock=lambda: NOW.astimezone())  # type: ignore[arg-type]
    try:
        processor.run(threading.Event(), until_caught_up=True)
    finally:
        processor.close()
    received = int(warehouse.query("SELECT sum(received) FROM ingest_stats").item())
    facts = {
        t: int(warehouse.query(f"SELECT count(*) FROM {t}").item())
        for t in ("fact_impressions", "fact_clicks", "fact_conversions", "dead_letters")
    }
    warehouse.close()
    return received, facts


def test_redis_append_whose_answer_was_lost_is_retried_and_counted_once(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    extra = [
        orjson.dumps(
            {
                "event_id": f"extra-{i}",
                "ad_id": 1,
                "user_id": "u-1",
                "impression_timestamp": "2023-09-08 12:00:00",
                "platform": "web",
                "location": "Paris",
            }
        )
        for i in range(3)
    ]
    memory = InMemoryTransport(PARTITIONS)
    memory.producer().send(Stream.IMPRESSIONS, extra, ["u-1"] * 3)
    replay_directory(data, memory.producer(), PARTITIONS)
    (tmp_path / "ref").mkdir()
    lines, expected = _duck_counts(data, tmp_path / "ref", memory)

    with redis_prefix() as prefix, TcpProxy.for_url(REDIS_URL) as proxy:
        transport = RedisStreamsTransport(
            proxy.url(REDIS_URL), PARTITIONS, prefix=prefix, timeouts=FAST
        )
        producer = transport.producer()
        proxy.drop_after(b"EVALSHA")  # the append's entries land, its answer is lost
        with caplog.at_level(logging.WARNING, logger="adpulse.outages"):
            producer.send(Stream.IMPRESSIONS, extra, ["u-1"] * 3)
        assert proxy.dropped_after.is_set()
        replay_directory(data, producer, PARTITIONS)
        (tmp_path / "run").mkdir()
        try:
            received, facts = _duck_counts(data, tmp_path / "run", transport)
        finally:
            transport.close()
    assert any("retrying an append to" in r.getMessage() for r in caplog.records)
    assert received == lines + 3  # the retried append stored its records twice...
    assert facts == expected  # ...and they count once
