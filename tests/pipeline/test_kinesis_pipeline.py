"""The pipeline over the Kinesis transport on the local AWS API server (moto), against the
independent oracle (tests/oracle.py): 2 shards; a shard split in the middle of a replay;
a worker process killed with ``kill -9`` mid-stream while another takes its shards (and
``adpulse status`` shows the shards' new owner).

Data sets are small (moto answers in milliseconds per call, not microseconds)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import oracle
import pytest
from awstest import CREDENTIALS, unique_name
from builders import generated_dataset, load_dimensions, open_pipeline
from kinesistest import kinesis_client, kinesis_transport, kinesis_url, realistic_resharding
from pgtest import PG_URL, drop_schema, new_schema, require_postgres
from typer.testing import CliRunner

from adpulse.cli.main import app
from adpulse.contracts import Stream
from adpulse.sources.producer import replay_directory
from adpulse.storage.warehouse.base import Warehouse
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.storage.warehouse.postgres import PostgresWarehouse
from adpulse.transport.kinesis import KinesisTransport, partition_hash_key, partition_range

EVENTS = 4_000
PARTITIONS = 2
NOW = datetime(2026, 1, 1)


def _generate(data: Path, seed: int) -> None:
    generated_dataset(
        data,
        EVENTS,
        datetime(2023, 9, 9),
        datetime(2023, 9, 10),
        seed=seed,
        ads=20,
        campaigns=5,
        users=300,
        ctr_mean=0.25,
        conversion_rate_min=0.3,
        conversion_rate_max=0.5,
        duplicate_rate=0.02,
        out_of_order_rate=0.05,
        late_rate=0.01,
        malformed_rate=0.004,
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    _generate(data, seed=23)
    return data


def _truth(data: Path, now: datetime) -> tuple[duckdb.DuckDBPyConnection, dict[str, int]]:
    con = duckdb.connect()
    return con, oracle.build(con, data, now=now)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"{what}: not after {timeout} s"
        time.sleep(0.02)


def _process_while_replaying(
    data: Path, home: Path, transport: KinesisTransport, during: Callable[[], None] | None
) -> Warehouse:
    """Replay ``data`` (throttled) while a processor runs; ``during()`` once the processor
    committed part of it and the replay is still going; then process to the end."""
    warehouse = DuckDBWarehouse(home / "warehouse.duckdb")
    pipeline = open_pipeline(data, home, transport, warehouse, NOW, batch_max_bytes=16_000)
    processor = pipeline.processor()
    stop = threading.Event()
    worker = threading.Thread(target=processor.run, args=(stop,))
    worker.start()
    producer = transport.producer()
    replayer = threading.Thread(
        target=replay_directory,
        args=(data, producer, PARTITIONS),
        kwargs={"rate": 4_000.0, "chunk_bytes": 8_000},
    )
    replayer.start()
    try:
        if during is not None:
            _wait(lambda: processor.offsets.get((Stream.CLICKS, 0)) is not None, 30, "reading")
            assert replayer.is_alive(), "the replay ended before the processor read anything"
            during()
        replayer.join()
    finally:
        stop.set()
        worker.join()
    processor.run(threading.Event(), until_caught_up=True)
    processor.close()
    return warehouse


def test_two_shards_equal_oracle(dataset: Path, tmp_path: Path) -> None:
    transport = kinesis_transport(PARTITIONS, shards=2, read_interval=0.02)
    try:
        shards = transport.list_shards(Stream.CLICKS)
        assert [(s.starting_hash_key, s.ending_hash_key) for s in shards] == [
            partition_range(p, PARTITIONS) for p in range(PARTITIONS)
        ]
        warehouse = _process_while_replaying(dataset, tmp_path, transport, None)
        oracle.assert_warehouse_equals(warehouse, _truth(dataset, NOW))
        warehouse.close()
    finally:
        transport.delete_streams()
        transport.close()


@pytest.mark.parametrize("stream", [Stream.CLICKS, Stream.CONVERSIONS])
def test_shard_split_mid_replay_equals_oracle(
    dataset: Path, tmp_path: Path, stream: Stream
) -> None:
    """Split the shard of partition 0 while the replay runs: the processor reads the
    parent to its end, then the child holding partition 0's hash key."""
    transport = kinesis_transport(PARTITIONS, shards=2, read_interval=0.02)
    client = kinesis_client()
    name = transport.stream_name(stream)

    def split() -> None:
        start, _ = partition_range(0, PARTITIONS)
        # Partition 0's key lands in the upper child; the lower one gets nothing.
        at = (start + partition_hash_key(0, PARTITIONS)) // 2
        client.split_shard(
            StreamName=name, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(at)
        )

    try:
        with realistic_resharding():
            warehouse = _process_while_replaying(dataset, tmp_path, transport, split)
        lineage = transport.lineage(stream, 0)
        assert [s.shard_id for s in lineage] == ["shardId-000000000000", "shardId-000000000003"]
        assert lineage[0].closed and not lineage[1].closed
        # Both shards of the lineage got records of the replay: the split was mid-stream.
        for shard in lineage:
            iterator = client.get_shard_iterator(
                StreamName=name, ShardId=shard.shard_id, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            assert client.get_records(ShardIterator=iterator)["Records"], shard.shard_id
        oracle.assert_warehouse_equals(warehouse, _truth(dataset, NOW))
        warehouse.close()
    finally:
        transport.delete_streams()
        transport.close()


# kill -9 of a worker process --------------------------------------------------------------

LEASE_SECONDS = 1.5
SLACK_SECONDS = 8.0


@pytest.fixture
def cluster_env(tmp_path: Path, dataset: Path) -> Iterator[tuple[dict[str, str], str, str]]:
    require_postgres()
    schema, prefix = new_schema(), unique_name("adpulse")
    transport = kinesis_transport(PARTITIONS, prefix, shards=2)
    warehouse = PostgresWarehouse(PG_URL, schema=schema)
    env = {
        **os.environ,
        **CREDENTIALS,
        "ADPULSE_HOME": str(tmp_path),
        "ADPULSE_PARTITIONS": str(PARTITIONS),
        "ADPULSE_WAREHOUSE_URL": f"{PG_URL}?options=-csearch_path%3D{schema}",
        "ADPULSE_TRANSPORT_URL": kinesis_url(prefix, 2) + "&read_interval=0.05",
        "ADPULSE_WORKER_LEASE_SECONDS": str(LEASE_SECONDS),
        "ADPULSE_IDLE_TIMEOUT_SECONDS": "100000",
        "ADPULSE_BATCH_MAX_BYTES": str(16 * 1024),
    }
    try:
        warehouse.create_schema()
        load_dimensions(warehouse, dataset)
        yield env, schema, prefix
    finally:
        warehouse.close()
        transport.delete_streams()
        transport.close()
        drop_schema(schema)


# Not concurrently with the other crash tests: all time processes on 2 shared cores.
@pytest.mark.slow
@pytest.mark.xdist_group("crash")
def test_kill_9_worker_mid_stream_equals_oracle(
    dataset: Path, tmp_path: Path, cluster_env: tuple[dict[str, str], str, str]
) -> None:
    env, schema, prefix = cluster_env
    warehouse = PostgresWarehouse(PG_URL, schema=schema)
    transport = kinesis_transport(PARTITIONS, prefix)
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker-{len(procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "adpulse", "process"], env=env, stdout=log, stderr=log
        )
        procs.append(proc)
        return proc

    def logs() -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("worker-*.log")))

    def owners() -> dict[int, int]:
        rows = warehouse.query(
            'SELECT l."partition", w.pid FROM partition_leases l'
            " JOIN workers w ON w.worker_id = l.owner WHERE l.expires_at > LOCALTIMESTAMP"
        ).rows()
        return {int(p): int(pid) for p, pid in rows}

    def received(partitions: list[int]) -> int:
        marks = ", ".join("?" for _ in partitions)
        total = warehouse.query(
            f'SELECT SUM(received) FROM ingest_stats WHERE "partition" IN ({marks})', partitions
        ).item()
        return int(total or 0)

    def caught_up() -> bool:
        committed = warehouse.load_offsets()
        consumer = transport.consumer()
        return all(
            consumer.lag_bytes(s, p, committed.get((s, p))) == 0
            for s in Stream
            for p in range(PARTITIONS)
        )

    try:
        first, second = start(), start()
        _wait(lambda: sorted(owners().values()) == sorted([first.pid, second.pid]), 60, logs())
        lost = sorted(p for p, pid in owners().items() if pid == first.pid)
        replayer = threading.Thread(
            target=replay_directory,
            args=(dataset, transport.producer(), PARTITIONS),
            kwargs={"rate": 600.0, "chunk_bytes": 4_000},
        )
        replayer.start()
        _wait(lambda: received(lost) > 0, 60, "the victim's first commit")
        assert replayer.is_alive()  # mid-stream
        first.send_signal(signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
        killed = time.monotonic()
        _wait(
            lambda: set(owners().values()) == {second.pid} and len(owners()) == PARTITIONS,
            LEASE_SECONDS + SLACK_SECONDS,
            "the survivor owns every partition",
        )
        print(f"shards owned by the survivor {time.monotonic() - killed:.2f}s after kill -9")
        status = CliRunner().invoke(app, ["status", "--format", "json"], env=env)
        assert status.exit_code == 0, status.output
        shards = json.loads(status.output)["kinesis_shards"]
        assert [(r["stream"], r["partition"]) for r in shards] == [
            (s.value, p) for s in Stream for p in range(PARTITIONS)
        ]
        assert {r["owner"].rsplit(":", 1)[1] for r in shards} == {str(second.pid)}
        assert {r["shard"] for r in shards} == {"shardId-000000000000", "shardId-000000000001"}
        assert all(r["state"] == "open" and r["millis_behind_latest"] >= 0 for r in shards)
        replayer.join()
        _wait(caught_up, 90, "everything committed")
        second.send_signal(signal.SIGINT)
        assert second.wait(timeout=60) == 0, logs()
        now = datetime.now(UTC).replace(tzinfo=None)
        oracle.assert_warehouse_equals(warehouse, _truth(dataset, now))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        transport.close()
        warehouse.close()
