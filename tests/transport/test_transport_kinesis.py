"""What the Kinesis transport adds to the shared contract (test_transport_contract.py):
the partition <-> hash key mapping, resharding (split and merge) read in order, PutRecords
partial failures and throttling retried in order, expired iterators, the service limits
of a request, and opening by URL. On the local AWS API server (moto); failures are
injected by a client wrapper around the real one."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from awstest import REGION, use_local_aws
from botocore.exceptions import ClientError
from kinesistest import kinesis_client, kinesis_transport, kinesis_url, realistic_resharding
from typer.testing import CliRunner

from adpulse.backends import UnsupportedUrlError
from adpulse.cli.main import app
from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.transport import kinesis, open_transport
from adpulse.transport.base import Consumer, Lag
from adpulse.transport.framing import partition_of
from adpulse.transport.kinesis import (
    HASH_KEY_SPACE,
    PUT_RECORDS_MAX_BYTES,
    PUT_RECORDS_MAX_RECORDS,
    KinesisOffset,
    KinesisTransport,
    format_offset,
    parse_offset,
    partition_hash_key,
    partition_key,
    partition_range,
    record_partition,
    sequence_after,
    shard_partitions,
    stream_name,
)


def test_partitions_are_equal_slices_of_the_hash_key_space() -> None:
    for partitions in (1, 2, 3, 7, 64):
        ranges = [partition_range(p, partitions) for p in range(partitions)]
        assert ranges[0][0] == 0 and ranges[-1][1] == HASH_KEY_SPACE - 1
        assert all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        for p, (start, end) in enumerate(ranges):
            assert start < partition_hash_key(p, partitions) < end
            assert shard_partitions(start, end, partitions) == [p]
    assert shard_partitions(0, HASH_KEY_SPACE - 1, 3) == [0, 1, 2]
    # A shard over half of the space holds the partitions whose keys lie in that half.
    assert shard_partitions(0, HASH_KEY_SPACE // 2 - 1, 4) == [0, 1]
    assert stream_name("ads", Stream.CLICKS) == "ads-clicks"
    assert (partition_key(5), record_partition("5")) == ("5", 5)
    with pytest.raises(ValueError, match="not written by the adpulse Kinesis producer"):
        record_partition("U1234")
    with pytest.raises(ValueError, match=r"partitions 0\.\.2"):
        partition_range(3, 3)


def test_offsets() -> None:
    assert format_offset("shardId-000000000001", 42) == "shardId-000000000001:42"
    assert format_offset("shardId-000000000001", "42", 3) == "shardId-000000000001:42:3"
    assert parse_offset("shardId-000000000001:42:3") == KinesisOffset("shardId-000000000001", 42, 3)
    assert str(parse_offset("shardId-000000000001:42")) == "shardId-000000000001:42"
    for bad in ("42", "shardId-1:42", "shardId-000000000001:42:0", "shardId-000000000001:x"):
        with pytest.raises(ValueError, match="is not an offset of the Kinesis transport"):
            parse_offset(bad)
    shard = "shardId-000000000000"
    assert sequence_after(f"{shard}:10", shard, 11)
    assert not sequence_after(f"{shard}:10", shard, 10)
    assert sequence_after(f"{shard}:10:2", shard, 10)  # only part of record 10 was taken
    with pytest.raises(ValueError, match="is not in shard"):
        sequence_after(f"{shard}:10", "shardId-000000000001", 11)


def _read(consumer: Consumer, stream: Stream, partition: int, after: str | None) -> list[bytes]:
    lines: list[bytes] = []
    while (chunk := consumer.poll(stream, partition, after, 100)) is not None:
        lines.extend(chunk.data.splitlines())
        after = chunk.end_offset
    return lines


def _send(transport: KinesisTransport, partition: int, numbers: range) -> list[bytes]:
    lines = [b'{"n":%d}' % n for n in numbers]
    transport.producer().send_framed(
        Stream.CLICKS, partition, b"".join(x + b"\n" for x in lines), len(lines)
    )
    return lines


def test_split_and_merge_are_read_parent_first_without_loss_or_repeat() -> None:
    transport = kinesis_transport(2, shards=2, read_interval=0.0)
    client = kinesis_client()
    name = transport.stream_name(Stream.CLICKS)
    try:
        with realistic_resharding():
            sent = _send(transport, 0, range(0, 50))
            sent1 = _send(transport, 1, range(1000, 1010))
            consumer = transport.consumer()
            chunk = consumer.poll(Stream.CLICKS, 0, None, 200)  # part of the parent
            assert chunk is not None and 0 < chunk.records < 50
            middle = chunk.end_offset
            start, _ = partition_range(0, 2)
            at = (start + partition_hash_key(0, 2)) // 2
            client.split_shard(
                StreamName=name, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(at)
            )
            sent += _send(transport, 0, range(50, 80))
            # Merge partition 0's child with partition 1's shard: one shard, two partitions.
            client.merge_shards(
                StreamName=name,
                ShardToMerge="shardId-000000000003",
                AdjacentShardToMerge="shardId-000000000001",
            )
            sent += _send(transport, 0, range(80, 90))
            sent1 += _send(transport, 1, range(1010, 1020))

            lineage = [s.shard_id for s in transport.lineage(Stream.CLICKS, 0)]
            assert lineage == [
                "shardId-000000000000",
                "shardId-000000000003",
                "shardId-000000000004",
            ]
            assert [s.shard_id for s in transport.lineage(Stream.CLICKS, 1)] == [
                "shardId-000000000001",
                "shardId-000000000004",
            ]
            assert _read(transport.consumer(), Stream.CLICKS, 0, None) == sent
            assert _read(transport.consumer(), Stream.CLICKS, 1, None) == sent1
            # Resuming from inside the parent continues through both children.
            assert _read(transport.consumer(), Stream.CLICKS, 0, middle) == sent[chunk.records :]
            assert _read(consumer, Stream.CLICKS, 0, middle) == sent[chunk.records :]
            assert transport.consumer().lag_bytes(Stream.CLICKS, 0, middle) == sum(
                len(x) + 1 for x in sent[chunk.records :]
            )
    finally:
        transport.delete_streams()


class FlakyClient:
    """The real client, with failures injected into chosen calls."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.put_requests: list[list[dict[str, Any]]] = []
        self.put_hook: Callable[[int, list[dict[str, Any]]], dict[str, Any] | None] | None = None
        self.get_records_errors: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self.put_requests.append(Records)
        if self.put_hook is not None:
            answer = self.put_hook(len(self.put_requests), Records)
            if answer is not None:
                return answer
        result: dict[str, Any] = self.real.put_records(StreamName=StreamName, Records=Records)
        return result

    def get_records(self, **kwargs: Any) -> dict[str, Any]:
        if self.get_records_errors:
            code = self.get_records_errors.pop(0)
            raise ClientError({"Error": {"Code": code, "Message": code}}, "GetRecords")
        result: dict[str, Any] = self.real.get_records(**kwargs)
        return result


def user_of(partition: int, partitions: int) -> str:
    """A user id of ``partition``."""
    return next(
        u for u in (f"u{i}" for i in range(1 << 20)) if partition_of(u, partitions) == partition
    )


def _flaky_transport(partitions: int, **options: Any) -> tuple[KinesisTransport, FlakyClient]:
    client = FlakyClient(kinesis_client())
    transport = kinesis_transport(partitions, client=client, read_interval=0.0, **options)
    return transport, client


def test_partial_failures_are_retried_without_reordering_a_partition() -> None:
    transport, client = _flaky_transport(2, shards=1)
    real = client.real
    try:

        def hook(call: int, records: list[dict[str, Any]]) -> dict[str, Any] | None:
            if call == 1:  # partition 0 throttled, partition 1 written
                name = transport.stream_name(Stream.CLICKS)
                ok = real.put_records(StreamName=name, Records=records[1:])["Records"]
                failed = {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": ""}
                return {"FailedRecordCount": 1, "Records": [failed, *ok]}
            if call == 2:  # the whole request throttled
                raise ClientError(
                    {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": ""}},
                    "PutRecords",
                )
            return None

        client.put_hook = hook
        # Three aggregates for partition 0 (2.4 MB), one for partition 1.
        big = [b'{"n":%d,"pad":"%s"}' % (n, b"x" * 60_000) for n in range(40)]
        small = [b'{"m":%d}' % n for n in range(5)]
        producer = transport.producer()
        producer.send(
            Stream.CLICKS, big + small, [user_of(0, 2)] * len(big) + [user_of(1, 2)] * len(small)
        )
        assert producer.records_retried == 1
        # Never two records of one partition in a request: a failed one cannot be overtaken.
        for request in client.put_requests:
            keys = [r["PartitionKey"] for r in request]
            assert len(keys) == len(set(keys))
        assert _read(transport.consumer(), Stream.CLICKS, 0, None) == big
        assert _read(transport.consumer(), Stream.CLICKS, 1, None) == small
    finally:
        transport.delete_streams()


def test_requests_stay_within_the_service_limits() -> None:
    transport, client = _flaky_transport(600, shards=1)
    try:
        producer = transport.producer()
        by_partition: dict[int, str] = {}
        for user in (f"u{i}" for i in range(100_000)):
            by_partition.setdefault(partition_of(user, 600), user)
        users = [by_partition[p] for p in range(600)]
        producer.send(Stream.IMPRESSIONS, [b'{"p":%d}' % p for p in range(600)], users)
        assert [len(r) for r in client.put_requests] == [PUT_RECORDS_MAX_RECORDS, 100]
        client.put_requests.clear()
        payload = b'{"pad":"' + b"y" * 60_000 + b'"}'
        # 12 partitions with 720 KB each: 7 aggregates fill a request (5 MiB), 5 the next.
        producer.send(
            Stream.IMPRESSIONS, [payload] * 144, [u for u in users[:12] for _ in range(12)]
        )
        sizes = [
            sum(len(r["Data"]) + len(r["PartitionKey"]) for r in q) for q in client.put_requests
        ]
        assert [len(r) for r in client.put_requests] == [7, 5]
        assert max(sizes) <= PUT_RECORDS_MAX_BYTES
        chunk = transport.consumer().poll(Stream.IMPRESSIONS, 11, None, 1 << 20)
        # One shard holds the 600 partitions; the reader of one keeps only its records.
        assert chunk is not None and chunk.data == b'{"p":11}\n' + (payload + b"\n") * 12
    finally:
        transport.delete_streams()


def test_expired_iterators_are_renewed_and_throttled_reads_retried() -> None:
    transport, client = _flaky_transport(1, shards=1)
    try:
        sent = _send(transport, 0, range(30))
        consumer = transport.consumer()
        chunk = consumer.poll(Stream.CLICKS, 0, None, 50)
        assert chunk is not None
        client.get_records_errors = [
            "ExpiredIteratorException",
            "ProvisionedThroughputExceededException",
        ]
        more = _send(transport, 0, range(30, 40))
        rest = _read(consumer, Stream.CLICKS, 0, chunk.end_offset)
        assert chunk.data.splitlines() + rest == sent + more
        assert client.get_records_errors == []
    finally:
        transport.delete_streams()


def test_opened_by_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_local_aws(monkeypatch)
    from awstest import unique_name

    prefix = unique_name("adpulse")
    settings = Settings(home=tmp_path, partitions=3, transport_url=kinesis_url(prefix, 2))
    transport = open_transport(settings)
    try:
        assert isinstance(transport, KinesisTransport)
        assert (transport.partitions, transport.prefix) == (3, prefix)
        assert [len(transport.list_shards(s)) for s in Stream] == [2, 2, 2]
        # Used as they are when they exist, whatever shards= says.
        again = open_transport(
            settings.model_copy(update={"transport_url": kinesis_url(prefix, 5)})
        )
        assert [len(again.list_shards(s)) for s in Stream] == [2, 2, 2]  # type: ignore[attr-defined]
    finally:
        transport.delete_streams()  # type: ignore[attr-defined]
    for bad in ("kinesis://", "kinesis://a b", f"kinesis://x?region={REGION}&shard=2"):
        with pytest.raises((UnsupportedUrlError, ValueError), match="transport_url"):
            open_transport(settings.model_copy(update={"transport_url": bad}))
    with pytest.raises(ValueError, match="too large for Kinesis"):
        kinesis_transport(1, max_record_bytes=1 << 20)


def test_puts_failing_for_longer_than_the_retry_time_raise() -> None:
    transport, client = _flaky_transport(1, shards=1, retry_seconds=0.3)
    try:

        def always_throttled(call: int, records: list[dict[str, Any]]) -> dict[str, Any]:
            failed = {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": ""}
            return {"FailedRecordCount": len(records), "Records": [failed] * len(records)}

        client.put_hook = always_throttled
        with pytest.raises(TimeoutError, match=r"PutRecords to .* kept failing.*add shards"):
            transport.producer().send(Stream.CLICKS, [b"{}"], ["u1"])
        assert len(client.put_requests) > 2  # retried with backoff until the deadline
        assert transport.consumer().poll(Stream.CLICKS, 0, None, 100) is None
    finally:
        transport.delete_streams()


def test_waits_for_streams_being_created() -> None:
    class Creating(FlakyClient):
        creating = 2

        def describe_stream_summary(self, StreamName: str) -> dict[str, Any]:  # noqa: N803
            if self.creating:
                self.creating -= 1
                return {"StreamDescriptionSummary": {"StreamStatus": "CREATING"}}
            result: dict[str, Any] = self.real.describe_stream_summary(StreamName=StreamName)
            return result

    client = Creating(kinesis_client())
    transport = kinesis_transport(1, client=client)
    try:
        assert client.creating == 0
        assert [len(transport.list_shards(s)) for s in Stream] == [1, 1, 1]
    finally:
        transport.delete_streams()


def test_existing_streams_need_no_create_right() -> None:
    class NoCreate(FlakyClient):
        def create_stream(self, **_: Any) -> None:
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": ""}}, "Create")

    first = kinesis_transport(2, shards=2)
    try:
        again = kinesis_transport(2, first.prefix, client=NoCreate(kinesis_client()))
        assert [len(again.list_shards(s)) for s in Stream] == [2, 2, 2]
        with pytest.raises(ClientError, match="AccessDenied"):
            kinesis_transport(2, client=NoCreate(kinesis_client()))  # a new prefix
    finally:
        first.delete_streams()


def test_records_of_another_writer_go_to_one_partition_and_halt_nothing() -> None:
    transport = kinesis_transport(2, shards=2, read_interval=0.0)
    client = kinesis_client()
    try:
        ours = _send(transport, 0, range(3))
        client.put_records(
            StreamName=transport.stream_name(Stream.CLICKS),
            Records=[
                {"Data": b"not ours", "PartitionKey": "U1234"},
                {"Data": b'{"n":9}', "PartitionKey": "7"},  # a partition that does not exist
            ],
        )
        hashes = [int(hashlib.md5(k.encode()).hexdigest(), 16) for k in ("U1234", "7")]
        shards = transport.list_shards(Stream.CLICKS)
        owners = [
            next(
                shard_partitions(s.starting_hash_key, s.ending_hash_key, 2)[0]
                for s in shards
                if s.starting_hash_key <= h <= s.ending_hash_key
            )
            for h in hashes
        ]
        want: dict[int, list[bytes]] = {0: list(ours), 1: []}
        want[owners[0]].append(b"not ours")
        want[owners[1]].append(b'{"n":9}')
        got = {p: _read(transport.consumer(), Stream.CLICKS, p, None) for p in (0, 1)}
        assert {p: sorted(v) for p, v in got.items()} == {p: sorted(v) for p, v in want.items()}
    finally:
        transport.delete_streams()


def test_status_shows_each_partitions_shard(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_local_aws(monkeypatch)
    with DuckDBWarehouse(tmp_path / "warehouse.duckdb") as warehouse:
        warehouse.create_schema()
    transport = kinesis_transport(2, shards=2)
    try:
        _send(transport, 1, range(3))
        env = {
            "ADPULSE_HOME": str(tmp_path),
            "ADPULSE_PARTITIONS": "2",
            "ADPULSE_TRANSPORT_URL": kinesis_url(transport.prefix, 2),
        }
        result = CliRunner().invoke(app, ["status", "--format", "json"], env=env)
        assert result.exit_code == 0, result.output
        rows = json.loads(result.output[result.output.index("{") :])["kinesis_shards"]
        assert [(r["stream"], r["partition"], r["shard"], r["state"]) for r in rows] == [
            (s.value, p, f"shardId-00000000000{p}", "open") for s in Stream for p in (0, 1)
        ]
        assert all(r["owner"] is None and r["committed_offset"] is None for r in rows)
        assert all(r["millis_behind_latest"] >= 0 for r in rows)

        env["ADPULSE_TRANSPORT_URL"] = kinesis_url("no-such-streams", 2)
        result = CliRunner().invoke(app, ["status", "--format", "json"], env=env)
        assert result.exit_code == 0, result.output
        shown = json.loads(result.output[result.output.index("{") :])["kinesis_shards"]
        assert shown.startswith("unavailable: ") and "ResourceNotFoundException" in shown
    finally:
        transport.delete_streams()


def test_lag_counts_records_and_their_age(monkeypatch: pytest.MonkeyPatch) -> None:
    transport, client = _flaky_transport(1, shards=1)
    try:
        first = _send(transport, 0, range(2))
        time.sleep(0.3)
        last = _send(transport, 0, range(2, 3))
        consumer = transport.consumer()
        chunk = consumer.poll(Stream.CLICKS, 0, None, len(first[0]) + len(first[1]) + 2)
        assert chunk is not None and chunk.records == 2

        exact = consumer.lag(Stream.CLICKS, 0, None)
        assert (exact.bytes, exact.records) == (sum(len(x) + 1 for x in first + last), 3)
        assert exact.seconds is not None and 0.3 <= exact.seconds < 5
        assert consumer.lag(Stream.CLICKS, 0, chunk.end_offset) == Lag(len(last[0]) + 1, 1, 0.0)
        assert consumer.lag_bytes(Stream.CLICKS, 0, None) == exact.bytes

        # Not at the tip after the scan: the rest is estimated from MillisBehindLatest.
        monkeypatch.setattr(kinesis.consumer, "LAG_SCAN_CALLS", 1)
        real_get_records = client.get_records

        def behind_by_two_seconds(**kwargs: Any) -> dict[str, Any]:
            return {**real_get_records(**kwargs), "MillisBehindLatest": 2000}

        monkeypatch.setattr(client, "get_records", behind_by_two_seconds)
        estimate = consumer.lag(Stream.CLICKS, 0, None)
        ahead = 2.0 / exact.seconds
        assert estimate == Lag(
            exact.bytes + int(exact.bytes * ahead),
            3 + int(3 * ahead),
            pytest.approx(exact.seconds + 2.0),
        )
    finally:
        transport.delete_streams()
