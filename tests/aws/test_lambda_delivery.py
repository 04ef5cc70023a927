"""Deliveries as the processor reads them (adpulse.aws.delivery), without a server: what
counts as after a committed offset (within a shard, inside an aggregate, across a
shard lineage, with a stale shard listing), and chunks cut at whole records."""

from __future__ import annotations

import base64

from adpulse.aws.delivery import DeliveredRecord, DeliveryTransport, decode_event, is_after
from adpulse.contracts import Stream

PARENT, CHILD = "shardId-000000000000", "shardId-000000000002"


def record(shard: str, seq: int, *lines: bytes, partition: int = 0) -> DeliveredRecord:
    return DeliveredRecord(
        Stream.CLICKS, shard, str(seq), partition, b"".join(line + b"\n" for line in lines)
    )


def test_after_within_a_shard_and_inside_an_aggregate() -> None:
    def lineage(stream: Stream, partition: int, fresh: bool) -> list[str]:
        return [PARENT]

    r = record(PARENT, 50, b"a", b"b", b"c")
    assert is_after(None, r, lineage)
    assert is_after(f"{PARENT}:49", r, lineage)
    assert not is_after(f"{PARENT}:50", r, lineage)
    assert not is_after(f"{PARENT}:51", r, lineage)
    assert is_after(f"{PARENT}:50:2", r, lineage)  # two of its three lines are done
    transport = DeliveryTransport(1, 1024, lineage)
    transport.deliver([r])
    chunk = transport.consumer().poll(Stream.CLICKS, 0, f"{PARENT}:50:2", 1 << 20)
    assert chunk is not None
    assert (chunk.data, chunk.records, chunk.end_offset) == (b"c\n", 1, f"{PARENT}:50")


def test_after_across_the_lineage_listing_again_when_stale() -> None:
    calls: list[bool] = []

    def lineage(stream: Stream, partition: int, fresh: bool) -> list[str]:
        calls.append(fresh)
        return [PARENT, CHILD] if fresh else [PARENT]  # cached before the split

    parent = record(PARENT, 10, b"x")
    assert not is_after(f"{CHILD}:3", parent, lineage)
    assert calls == [False, True]
    assert is_after(f"{PARENT}:99", record(CHILD, 1, b"y"), lineage)


def test_chunks_end_at_whole_records_within_the_budget() -> None:
    transport = DeliveryTransport(2, 1024, lambda s, p, fresh: [PARENT])
    records = [record(PARENT, seq, b"r%d" % seq, partition=seq % 2) for seq in range(1, 7)]
    transport.deliver(records)
    consumer = transport.consumer()
    first = consumer.poll(Stream.CLICKS, 1, None, 4)  # one record of 3 bytes fits
    assert first is not None
    assert (first.data, first.end_offset) == (b"r1\n", f"{PARENT}:1")
    rest = consumer.poll(Stream.CLICKS, 1, first.end_offset, 1 << 20)
    assert rest is not None
    assert (rest.data, rest.records, rest.end_offset) == (b"r3\nr5\n", 2, f"{PARENT}:5")
    assert consumer.poll(Stream.CLICKS, 1, rest.end_offset, 1 << 20) is None
    assert consumer.poll(Stream.IMPRESSIONS, 1, None, 1 << 20) is None
    consumer.ack(Stream.CLICKS, 1, rest.end_offset)
    assert transport.uncommitted({}) == ["2", "4", "6"]


def test_decode_reads_stream_shard_partition_and_lines() -> None:
    event = {
        "Records": [
            {
                "eventSourceARN": "arn:aws:kinesis:eu-central-1:123456789012:stream/ap-conversions",
                "eventID": f"{CHILD}:4959",
                "kinesis": {
                    "sequenceNumber": "4959",
                    "partitionKey": "3",
                    "data": base64.b64encode(b'{"a": 1}\n{"a": 2}\n').decode(),
                },
            },
            {
                "eventSourceARN": "arn:aws:kinesis:eu-central-1:123456789012:stream/ap-conversions",
                "eventID": f"{CHILD}:4960",
                "kinesis": {
                    "sequenceNumber": "4960",
                    "partitionKey": "not-ours",
                    "data": base64.b64encode(b'{"a": 3}').decode(),
                },
            },
        ]
    }
    got = decode_event(event, "ap", 4, lambda stream, shard: 2)
    assert got == [
        DeliveredRecord(Stream.CONVERSIONS, CHILD, "4959", 3, b'{"a": 1}\n{"a": 2}\n'),
        DeliveredRecord(Stream.CONVERSIONS, CHILD, "4960", 2, b'{"a": 3}\n'),
    ]
