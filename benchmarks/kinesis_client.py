"""The Kinesis transport's own client cost per record, with stubbed service responses, and
the events per second a shard can carry under the service limits.

Run: ``python benchmarks/kinesis_client.py [--records 200000] [--record-bytes 150]``.
No server: the HTTP layer of a real boto3 client is stubbed (a ``before-send`` hook answers
every request with a canned response body), so what is measured is adpulse's code plus
botocore's request building, signing and response parsing, on this process's CPU
(``time.process_time``). A second run replaces the client by a fake that answers with
Python dicts: adpulse's code alone. Prints figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse

from adpulse.contracts import Stream
from adpulse.transport.kinesis import (
    AGGREGATE_BYTES,
    KinesisTransport,
    aggregates,
    partition_key,
)

#: Service limits of one shard (Kinesis Data Streams, provisioned mode).
WRITE_BYTES_PER_SECOND = 1 << 20
WRITE_RECORDS_PER_SECOND = 1000
READ_BYTES_PER_SECOND = 2 << 20
READ_CALLS_PER_SECOND = 5


def make_payloads(count: int, record_bytes: int) -> list[bytes]:
    """``count`` JSON payloads of ``record_bytes - 1`` bytes (framed: ``record_bytes``)."""
    template = '{"ad_id":%6d,"user_id":"user_%06d","click_timestamp":"2024-01-01 00:00:00",'
    payloads = []
    for i in range(count):
        head = (template % (i % 1000, i)).encode()
        pad = record_bytes - 1 - len(head) - len(b'"p":""}')
        payloads.append(head + b'"p":"' + b"x" * pad + b'"}')
    return payloads


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Any:
        yield self.data


def stubbed_client(answer: Callable[[str, dict[str, Any]], dict[str, Any]]) -> Any:
    """A real boto3 Kinesis client whose requests never leave the process."""
    client = boto3.client(
        "kinesis",
        region_name="eu-central-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        endpoint_url="http://127.0.0.1:1",
    )

    def send(request: Any, **_: Any) -> AWSResponse:
        operation = request.headers["X-Amz-Target"].decode().split(".")[-1]
        body = json.loads(request.body) if request.body else {}
        data = json.dumps(answer(operation, body)).encode()
        return AWSResponse(
            request.url, 200, {"content-type": "application/x-amz-json-1.1"}, _Body(data)
        )  # type: ignore[arg-type]

    client.meta.events.register("before-send.kinesis", send)
    return client


def _put_answer(operation: str, body: dict[str, Any]) -> dict[str, Any]:
    if operation == "PutRecords":
        n = len(body["Records"])
        ok = {
            "SequenceNumber": "49590338271490256608559692538361571095921575989136588898",
            "ShardId": "shardId-000000000000",
        }
        return {"FailedRecordCount": 0, "Records": [ok] * n}
    return {"StreamDescriptionSummary": {"StreamStatus": "ACTIVE"}}


class FakeClient:
    """Answers with Python dicts: no botocore at all."""

    def __init__(self, get_records: list[dict[str, Any]] | None = None) -> None:
        self.pages = list(get_records or [])

    def create_stream(self, **_: Any) -> dict[str, Any]:
        return {}

    def describe_stream_summary(self, **_: Any) -> dict[str, Any]:
        return {"StreamDescriptionSummary": {"StreamStatus": "ACTIVE"}}

    def put_records(self, Records: list[dict[str, Any]], **_: Any) -> dict[str, Any]:  # noqa: N803
        return _put_answer("PutRecords", {"Records": Records})

    def list_shards(self, **_: Any) -> dict[str, Any]:
        return _shards()

    def get_shard_iterator(self, **_: Any) -> dict[str, Any]:
        return {"ShardIterator": "it"}

    def get_records(self, **_: Any) -> dict[str, Any]:
        if self.pages:
            return self.pages.pop(0)
        return {"Records": [], "NextShardIterator": "it", "MillisBehindLatest": 0}


def _shards() -> dict[str, Any]:
    return {
        "Shards": [
            {
                "ShardId": "shardId-000000000000",
                "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": str((1 << 128) - 1)},
                "SequenceNumberRange": {"StartingSequenceNumber": "1"},
            }
        ]
    }


def _pages(framed: bytes, *, encoded: bool) -> list[dict[str, Any]]:
    """GetRecords answers holding the aggregates of ``framed`` (10 MB a page at most)."""
    pages: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    size = 0
    for seq, aggregate in enumerate(aggregates(framed), start=1):
        data: Any = base64.b64encode(aggregate).decode() if encoded else aggregate
        arrival: Any = 1.7e9 if encoded else datetime.fromtimestamp(1.7e9, UTC)
        records.append(
            {
                "SequenceNumber": str(seq),
                "PartitionKey": partition_key(0),
                "Data": data,
                "ApproximateArrivalTimestamp": arrival,
            }
        )
        size += len(aggregate)
        if size > 9 << 20:
            pages.append(
                {"Records": records, "NextShardIterator": "it", "MillisBehindLatest": 1000}
            )
            records, size = [], 0
    pages.append({"Records": records, "NextShardIterator": "it", "MillisBehindLatest": 0})
    return pages


def measure(what: str, records: int, run: Callable[[], None]) -> float:
    started = time.process_time()
    run()
    seconds = time.process_time() - started
    per_record = seconds / records * 1e6
    print(f"{what:<48} {per_record:7.3f} µs CPU/record  ({seconds:.2f} s for {records:,})")
    return per_record


def produce(client: Any, payloads: list[bytes], users: list[str]) -> None:
    transport = KinesisTransport("bench", 1, client=client, read_interval=0.0)
    producer = transport.producer()
    step = 5000  # as a replay sends: a few thousand records a call
    for i in range(0, len(payloads), step):
        producer.send(Stream.CLICKS, payloads[i : i + step], users[i : i + step])


def consume(client: Any, records: int) -> None:
    transport = KinesisTransport("bench", 1, client=client, read_interval=0.0, create=False)
    consumer = transport.consumer()
    after = None
    got = 0
    while (chunk := consumer.poll(Stream.CLICKS, 0, after, 4 << 20)) is not None:
        got += chunk.records
        after = chunk.end_offset
    assert got == records, (got, records)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--record-bytes", type=int, default=150)
    args = parser.parse_args()
    n, size = args.records, args.record_bytes
    payloads = make_payloads(n, size)
    users = ["u"] * n  # one partition: the shard's own figures
    framed = b"".join(p + b"\n" for p in payloads)
    print(f"{n:,} records of {size} bytes framed; load average {os.getloadavg()[0]:.2f}")

    produce_full = measure(
        "produce: adpulse + botocore (HTTP stubbed)",
        n,
        lambda: produce(stubbed_client(_put_answer), payloads, users),
    )
    produce_own = measure(
        "produce: adpulse alone (fake client)", n, lambda: produce(FakeClient(), payloads, users)
    )
    encoded = _pages(framed, encoded=True)

    def read_answer(operation: str, body: dict[str, Any]) -> dict[str, Any]:
        if operation == "ListShards":
            return _shards()
        if operation == "GetShardIterator":
            return {"ShardIterator": "it"}
        if encoded:
            return encoded.pop(0)
        return {"Records": [], "NextShardIterator": "it", "MillisBehindLatest": 0}

    consume_full = measure(
        "consume: adpulse + botocore (HTTP stubbed)",
        n,
        lambda: consume(stubbed_client(read_answer), n),
    )
    consume_own = measure(
        "consume: adpulse alone (fake client)",
        n,
        lambda: consume(FakeClient(_pages(framed, encoded=False)), n),
    )
    del produce_own, consume_own  # printed; the projection uses the full client path

    per_record = AGGREGATE_BYTES // size
    write = min(WRITE_BYTES_PER_SECOND / size, WRITE_RECORDS_PER_SECOND * per_record)
    read = READ_BYTES_PER_SECOND / size
    print()
    print(f"per shard, {size}-byte events, {per_record:,} events per Kinesis record:")
    print(
        f"  write: min(1 MiB/s / {size} B, 1,000 records/s x {per_record:,})"
        f" = {write:,.0f} events/s"
    )
    print(f"  read:  2 MiB/s / {size} B = {read:,.0f} events/s")
    print(
        f"  client CPU at those limits: {write * produce_full / 1e6:.3f} cores writing,"
        f" {read * consume_full / 1e6:.3f} cores reading, per shard"
    )
    print(
        f"  one core: {1e6 / produce_full:,.0f} events/s produced ({1e6 / produce_full / write:.1f}"
        f" shards), {1e6 / consume_full:,.0f} consumed ({1e6 / consume_full / read:.1f} shards)"
    )


if __name__ == "__main__":
    main()
