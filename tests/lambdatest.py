"""Kinesis event-source-mapping events for the Lambda tests, built from records read back
from the local Kinesis server (tests/kinesistest.py).

:func:`read_back` reads every record of a stream, shard by shard, with GetRecords;
:func:`deliveries` cuts one shard's records into the events a mapping of ``batch_size``
would hand the consumer (one shard per invocation, in sequence order), each in the form
AWS documents for Kinesis events.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from awstest import REGION


@dataclass(frozen=True)
class ShardRecords:
    """The records of one shard of one stream, as GetRecords returned them."""

    stream_name: str
    shard_id: str
    records: list[dict[str, Any]]


def read_back(client: Any, stream_name: str) -> list[ShardRecords]:
    """Every record of ``stream_name``, one entry per shard (in ListShards order)."""
    shards = client.list_shards(StreamName=stream_name)["Shards"]
    out = []
    for shard in shards:
        iterator = client.get_shard_iterator(
            StreamName=stream_name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        records: list[dict[str, Any]] = []
        while iterator:
            page = client.get_records(ShardIterator=iterator, Limit=10_000)
            records.extend(page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
        out.append(ShardRecords(stream_name, shard["ShardId"], records))
    return out


def event_record(stream_name: str, shard_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """One record of a Kinesis event, as Lambda delivers it."""
    seq = record["SequenceNumber"]
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": record["PartitionKey"],
            "sequenceNumber": seq,
            "data": base64.b64encode(record["Data"]).decode(),
            "approximateArrivalTimestamp": 1_700_000_000.0,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard_id}:{seq}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/adpulse-consumer",
        "awsRegion": REGION,
        "eventSourceARN": f"arn:aws:kinesis:{REGION}:123456789012:stream/{stream_name}",
    }


def deliveries(shard: ShardRecords, batch_size: int) -> list[dict[str, Any]]:
    """The events a mapping with ``batch_size`` hands over for this shard, in order."""
    rows = [event_record(shard.stream_name, shard.shard_id, r) for r in shard.records]
    return [{"Records": rows[i : i + batch_size]} for i in range(0, len(rows), batch_size)]
