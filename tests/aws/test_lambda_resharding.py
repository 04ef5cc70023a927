"""The consumer Lambda across a shard split: half of a data set is put on one shard, the
shard is split (moto made to keep the parent's records, as the service does), the other
half lands in the children. Deliveries come parent first, as the event-source mapping
sends them; a parent delivery retried after a child's commit is skipped by the lineage.
The warehouse equals the oracle."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import duckdb
import oracle
import pytest
from awstest import unique_name, use_local_aws
from builders import fixed_clock, generated_dataset, load_dimensions
from kinesistest import kinesis_client, kinesis_transport, kinesis_url, realistic_resharding
from lambdatest import deliveries, read_back

from adpulse.aws.consumer import ConsumerFunction
from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.sources.producer import replay_directory
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.transport.kinesis import partition_range, stream_name

NOW = datetime(2026, 1, 1)
PARTITIONS = 2


def halves(data: Path, out: Path) -> tuple[Path, Path]:
    """Each stream file's first and second half of lines, in two directories."""
    first, second = out / "first", out / "second"
    for part in (first, second):
        part.mkdir()
    for stream in Stream:
        lines = (data / f"{stream.value}.jsonl").read_bytes().splitlines(keepends=True)
        cut = len(lines) // 2
        (first / f"{stream.value}.jsonl").write_bytes(b"".join(lines[:cut]))
        (second / f"{stream.value}.jsonl").write_bytes(b"".join(lines[cut:]))
    return first, second


def test_split_shard_parent_then_children(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_local_aws(monkeypatch)
    data = tmp_path / "data"
    generated_dataset(
        data,
        4_000,
        datetime(2023, 9, 8),
        datetime(2023, 9, 9),
        seed=9,
        ads=20,
        campaigns=5,
        users=200,
        ctr_mean=0.2,
        conversion_rate_min=0.3,
        conversion_rate_max=0.5,
        conversion_delay_median_seconds=600.0,
        duplicate_rate=0.02,
    )
    first, second = halves(data, tmp_path)
    prefix = unique_name("reshard")
    transport = kinesis_transport(PARTITIONS, prefix=prefix, shards=1)
    client = kinesis_client()
    with realistic_resharding():
        replay_directory(first, transport.producer(), PARTITIONS, chunk_bytes=16 * 1024)
        for stream in Stream:
            client.split_shard(
                StreamName=stream_name(prefix, stream),
                ShardToSplit="shardId-000000000000",
                NewStartingHashKey=str(partition_range(1, PARTITIONS)[0]),
            )
        replay_directory(second, transport.producer(), PARTITIONS, chunk_bytes=16 * 1024)
    transport.close()

    home = tmp_path / "home"
    home.mkdir()
    settings = Settings(
        home=home,
        partitions=PARTITIONS,
        transport_url=kinesis_url(prefix, 1),
        warehouse_url=f"duckdb:///{home / 'warehouse.duckdb'}",
        idle_timeout_seconds=3600,
    )
    with DuckDBWarehouse(settings.warehouse_path) as wh:
        wh.create_schema()
        load_dimensions(wh, data)

    function = ConsumerFunction(settings, clock=fixed_clock(NOW))
    shard_events = {
        stream: {
            s.shard_id: deliveries(s, 3) for s in read_back(client, stream_name(prefix, stream))
        }
        for stream in Stream
    }
    for stream in Stream:
        assert sorted(shard_events[stream]) == [
            "shardId-000000000000",
            "shardId-000000000001",
            "shardId-000000000002",
        ]
        assert all(shard_events[stream].values()), "every shard got records"
    # Parent shards to their end, then the children, stream by stream in turn.
    for shard in ("shardId-000000000000", "shardId-000000000001", "shardId-000000000002"):
        for stream in Stream:
            for event in shard_events[stream][shard]:
                assert function.handle(event) == {"batchItemFailures": []}
    offsets = function.runtime.warehouse.load_offsets()
    assert {o.split(":")[0] for o in offsets.values()} == {
        "shardId-000000000001",
        "shardId-000000000002",
    }
    # A parent delivery again, after its children committed: nothing changes.
    parent = shard_events[Stream.CLICKS]["shardId-000000000000"][0]
    received = function.runtime.warehouse.query("SELECT sum(received) FROM ingest_stats").item()
    assert function.handle(parent) == {"batchItemFailures": []}
    assert (
        function.runtime.warehouse.query("SELECT sum(received) FROM ingest_stats").item()
        == received
    )
    assert function.runtime.warehouse.load_offsets() == offsets
    function.close()

    truth = duckdb.connect()
    lines = oracle.build(truth, data, now=NOW)
    shutil.rmtree(first)
    with DuckDBWarehouse(settings.warehouse_path) as wh:
        assert wh.query("SELECT sum(received)::BIGINT FROM ingest_stats").item() == sum(
            lines.values()
        )
        got = wh.query("SELECT event_id, click_time FROM fact_conversions ORDER BY event_id").rows()
        want = truth.execute(
            "SELECT given_id, click_time FROM o_conversions ORDER BY given_id"
        ).fetchall()
        assert got == want
        assert sum(1 for _, click in got if click is not None) > 50
        for stream in ("impressions", "clicks"):
            got_ids = wh.query(f"SELECT event_id FROM fact_{stream} ORDER BY 1").rows()
            want_ids = truth.execute(f"SELECT given_id FROM o_{stream} ORDER BY 1").fetchall()
            assert got_ids == want_ids
