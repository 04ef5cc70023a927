"""The consumer Lambda's entry point and its failures: settings from the environment with
the warehouse URL in Secrets Manager (local server), a commit that fails half way through
a delivery (answered with exactly the records not committed, which a new environment
then commits), and events it must refuse."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from awstest import REGION, unique_name, use_local_aws
from builders import fixed_clock, generated_dataset, load_dimensions
from kinesistest import kinesis_client, kinesis_transport, kinesis_url
from lambdatest import deliveries, event_record, read_back

from adpulse.aws import consumer
from adpulse.aws.consumer import ConsumerFunction
from adpulse.aws.delivery import DeliveryError
from adpulse.aws.producer import ProducerFunction
from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.sources.producer import replay_directory
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.transport.kinesis import partition_hash_key, stream_name

#: One xdist worker runs this module: its module-scoped fixtures are built once, not
#: once on each worker.
pytestmark = pytest.mark.xdist_group("lambda-consumer-handler")

NOW = datetime(2026, 1, 1)


@pytest.fixture(scope="module")
def produced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A small data set on fresh streams of 1 shard (1 partition): (data dir, prefix)."""
    with pytest.MonkeyPatch.context() as mp:
        use_local_aws(mp)
        data = tmp_path_factory.mktemp("data")
        generated_dataset(
            data,
            2_000,
            datetime(2023, 9, 8),
            datetime(2023, 9, 9),
            seed=3,
            users=100,
            ads=10,
            campaigns=4,
        )
        prefix = unique_name("handler")
        transport = kinesis_transport(1, prefix=prefix, shards=1)
        replay_directory(data, transport.producer(), 1, chunk_bytes=16 * 1024)
        transport.close()
        yield data, prefix


def _warehouse(home: Path, data: Path) -> Path:
    path = home / "warehouse.duckdb"
    with DuckDBWarehouse(path) as wh:
        wh.create_schema()
        load_dimensions(wh, data)
    return path


def _impressions(prefix: str) -> list[dict[str, Any]]:
    (shard,) = read_back(kinesis_client(), stream_name(prefix, Stream.IMPRESSIONS))
    assert len(shard.records) >= 3
    return shard.records


def test_handler_reads_its_settings_and_the_secret(
    produced: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, prefix = produced
    endpoint = use_local_aws(monkeypatch)
    path = _warehouse(tmp_path, data)
    secrets = boto3.client("secretsmanager", region_name=REGION, endpoint_url=endpoint)
    arn = secrets.create_secret(Name=unique_name("wh"), SecretString=f"duckdb:///{path}")["ARN"]
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", endpoint)
    monkeypatch.setenv("ADPULSE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADPULSE_PARTITIONS", "1")
    monkeypatch.setenv("ADPULSE_TRANSPORT_URL", kinesis_url(prefix, 1))
    monkeypatch.setenv("ADPULSE_WAREHOUSE_SECRET_ARN", arn)
    (shard,) = read_back(kinesis_client(), stream_name(prefix, Stream.IMPRESSIONS))
    events = deliveries(shard, 2)
    try:
        answers = [consumer.handler(e) for e in [*events, events[0]]]
    finally:
        consumer.reset()
    assert answers == [{"batchItemFailures": []}] * (len(events) + 1)
    lines = sum(r["Data"].count(b"\n") for r in shard.records)
    with DuckDBWarehouse(path) as wh:
        received = wh.query("SELECT sum(received)::BIGINT FROM ingest_stats").item()
        assert received == lines
        assert wh.load_offsets() == {
            (Stream.IMPRESSIONS, 0): f"{shard.shard_id}:{int(shard.records[-1]['SequenceNumber'])}"
        }


def test_a_failed_commit_answers_the_records_not_committed(
    produced: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, prefix = produced
    use_local_aws(monkeypatch)
    path = _warehouse(tmp_path, data)
    records = _impressions(prefix)[:3]
    shard_id = "shardId-000000000000"
    event = {
        "Records": [
            event_record(stream_name(prefix, Stream.IMPRESSIONS), shard_id, r) for r in records
        ]
    }
    settings = Settings(
        home=tmp_path,
        partitions=1,
        transport_url=kinesis_url(prefix, 1),
        warehouse_url=f"duckdb:///{path}",
        batch_max_bytes=1024,  # one Kinesis record per micro-batch
    )
    function = ConsumerFunction(settings, clock=fixed_clock(NOW))
    warehouse = function.runtime.warehouse
    commit = warehouse.commit
    calls: list[int] = []

    def outage_after_one(output: Any) -> None:
        calls.append(output.batch_id)
        if len(calls) > 1:
            raise ConnectionError("the warehouse went away")
        commit(output)

    monkeypatch.setattr(warehouse, "commit", outage_after_one)
    answer = function.handle(event)
    assert answer == {
        "batchItemFailures": [{"itemIdentifier": r["SequenceNumber"]} for r in records[1:]]
    }
    assert function.broken
    assert warehouse.load_offsets() == {
        (Stream.IMPRESSIONS, 0): f"{shard_id}:{int(records[0]['SequenceNumber'])}"
    }
    function.close()

    # The mapping delivers from the first failed record again (here: the whole batch,
    # as after a function error): a new environment commits only what was missing.
    again = ConsumerFunction(settings, clock=fixed_clock(NOW))
    assert again.handle(event) == {"batchItemFailures": []}
    wh = again.runtime.warehouse
    lines = sum(r["Data"].count(b"\n") for r in records)
    assert wh.query("SELECT sum(received)::BIGINT FROM ingest_stats").item() == lines
    assert wh.load_offsets() == {
        (Stream.IMPRESSIONS, 0): f"{shard_id}:{int(records[-1]['SequenceNumber'])}"
    }
    again.close()


def test_events_of_other_streams_are_refused(
    produced: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, prefix = produced
    use_local_aws(monkeypatch)
    path = _warehouse(tmp_path, data)
    settings = Settings(
        home=tmp_path,
        partitions=1,
        transport_url=kinesis_url(prefix, 1),
        warehouse_url=f"duckdb:///{path}",
    )
    function = ConsumerFunction(settings, clock=fixed_clock(NOW))
    try:
        record = event_record(
            "someone-elses-stream", "shardId-000000000000", _impressions(prefix)[0]
        )
        with pytest.raises(DeliveryError, match="someone-elses-stream"):
            function.handle({"Records": [record]})
        with pytest.raises(DeliveryError, match="not a Kinesis event-source record"):
            function.handle({"Records": [{"body": "an SQS message"}]})
        assert function.handle({"Records": []}) == {"batchItemFailures": []}
    finally:
        function.close()


def test_producer_to_consumer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two functions together: what the producer put, the consumer received, every
    record a fact, a counted duplicate or a dead letter."""
    use_local_aws(monkeypatch)
    prefix = unique_name("e2e")
    settings = Settings(
        home=tmp_path,
        partitions=2,
        transport_url=kinesis_url(prefix, 2),
        warehouse_url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
    )
    made = ProducerFunction(settings)
    sent = {s.value: 0 for s in Stream}
    for minute in range(3):
        put = made.generate(800, NOW + timedelta(minutes=minute))
        for stream, n in put["records"].items():
            sent[stream] += n
    made.close()
    function = ConsumerFunction(settings)
    client = kinesis_client()
    for stream in Stream:
        for shard in read_back(client, stream_name(prefix, stream)):
            for event in deliveries(shard, 5):
                assert function.handle(event) == {"batchItemFailures": []}
    wh = function.runtime.warehouse
    rows = wh.query(
        "SELECT stream, sum(received)::BIGINT, sum(duplicates)::BIGINT FROM ingest_stats GROUP BY 1"
    ).rows()
    assert {r[0]: r[1] for r in rows} == {s: n for s, n in sent.items() if n}
    for stream, received, duplicates in rows:
        facts = wh.query(f"SELECT count(*) FROM fact_{stream}").item()
        dead = wh.query("SELECT count(*) FROM dead_letters WHERE stream = ?", [stream]).item()
        assert facts + duplicates + dead == received
    assert sent["impressions"] > 2_000
    function.close()


def test_records_of_another_writer_are_dead_letters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record adpulse did not put (its key is no partition number) goes to the lowest
    partition of its shard, as with the Kinesis consumer, and is a dead letter there."""
    use_local_aws(monkeypatch)
    prefix = unique_name("foreign")
    settings = Settings(
        home=tmp_path,
        partitions=4,
        transport_url=kinesis_url(prefix, 2),
        warehouse_url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
    )
    function = ConsumerFunction(settings, clock=fixed_clock(NOW))
    client = kinesis_client()
    name = stream_name(prefix, Stream.CLICKS)
    client.put_record(
        StreamName=name,
        Data=b'{"sensor": 7, "reading": 21.5}',
        PartitionKey="device-42",
        ExplicitHashKey=str(partition_hash_key(3, 4)),  # in the second shard
    )
    (event,) = [e for s in read_back(client, name) for e in deliveries(s, 10)]
    assert event["Records"][0]["eventID"].startswith("shardId-000000000001:")
    assert function.handle(event) == {"batchItemFailures": []}
    wh = function.runtime.warehouse
    assert wh.query("SELECT partition, reason FROM dead_letters").rows() == [(2, "missing_field")]
    assert wh.query("SELECT sum(received)::BIGINT FROM ingest_stats").item() == 1
    assert set(wh.load_offsets()) == {(Stream.CLICKS, 2)}
    function.close()
