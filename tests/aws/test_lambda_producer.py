"""The producer Lambda on the local Kinesis server: scheduled invocations put the
generator's live feed, window after window, each record in its user's partition;
forwarded collector requests are put byte for byte, and bad ones answered as the
collector answers them."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
from awstest import unique_name, use_local_aws
from kinesistest import kinesis_client, kinesis_url
from lambdatest import read_back

from adpulse.aws import producer
from adpulse.aws.producer import ProducerFunction
from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.transport import framing
from adpulse.transport.kinesis import stream_name

PARTITIONS = 4
NOW = datetime(2026, 3, 2, 12, 0)


@pytest.fixture
def function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ProducerFunction]:
    use_local_aws(monkeypatch)
    settings = Settings(
        home=tmp_path,
        partitions=PARTITIONS,
        transport_url=kinesis_url(unique_name("producer"), 2),
    )
    made = ProducerFunction(settings)
    yield made
    made.close()


def lines_by_partition(prefix: str, stream: Stream) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for shard in read_back(kinesis_client(), stream_name(prefix, stream)):
        for record in shard.records:
            lines = framing.split_lines(record["Data"])
            out.setdefault(int(record["PartitionKey"]), []).extend(lines)
    return out


def test_scheduled_invocations_put_the_feed_by_user(function: ProducerFunction) -> None:
    first = function.handle({"events": 2_000}, now=NOW)
    second = function.handle({"events": 1_000}, now=NOW + timedelta(minutes=1))
    assert first["start"] == (NOW - timedelta(minutes=1)).isoformat()
    assert second["start"] == first["end"] == NOW.isoformat()
    prefix = function.transport.prefix  # type: ignore[attr-defined]
    for stream in Stream:
        parts = lines_by_partition(prefix, stream)
        sent = first["records"][stream.value] + second["records"][stream.value]
        assert sum(len(v) for v in parts.values()) == sent
        for partition, lines in parts.items():
            for line in lines:
                try:
                    user = orjson.loads(line).get("user_id")
                except orjson.JSONDecodeError:
                    continue  # a malformed record of the feed: partition 0 or any
                if isinstance(user, str):
                    assert framing.partition_of(user, PARTITIONS) == partition
    assert first["records"]["impressions"] > 1_000
    assert first["records"]["clicks"] > 0


def _request(body: bytes, stream: str = "clicks", **headers: str) -> dict[str, object]:
    return {
        "rawPath": f"/v1/events/{stream}",
        "requestContext": {"http": {"method": "POST"}},
        "headers": headers,
        "isBase64Encoded": True,
        "body": base64.b64encode(body).decode(),
    }


CLICKS = [
    {"ad_id": 1001, "user_id": "U1234", "click_timestamp": "2023-09-09 10:00:00",
     "platform": "Web", "location": "New York"},
    {"ad_id": 1002, "user_id": "U5678", "click_timestamp": "2023-09-09 10:00:05",
     "platform": "Mobile", "location": "Chicago"},
    {"ad_id": 1003, "user_id": "U9101", "click_timestamp": "2023-09-09 10:00:09",
     "platform": "Web", "location": "Miami"},
]  # fmt: skip


def test_forwarded_collector_request_is_put_as_sent(function: ProducerFunction) -> None:
    ndjson = b"\n".join(orjson.dumps(c) for c in CLICKS) + b"\n"
    answer = function.handle(
        _request(
            gzip.compress(ndjson),
            **{"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"},
        )
    )
    assert answer["statusCode"] == 202
    assert json.loads(answer["body"]) == {"accepted": 3}
    prefix = function.transport.prefix  # type: ignore[attr-defined]
    parts = lines_by_partition(prefix, Stream.CLICKS)
    got = sorted(line for lines in parts.values() for line in lines)
    assert got == sorted(orjson.dumps(c) for c in CLICKS)
    for partition, lines in parts.items():
        for line in lines:
            assert framing.partition_of(orjson.loads(line)["user_id"], PARTITIONS) == partition


def test_bad_requests_are_answered_as_the_collector_does(function: ProducerFunction) -> None:
    unknown = function.handle(_request(b"{}", stream="views"))
    assert unknown["statusCode"] == 404
    assert json.loads(unknown["body"])["error"] == "unknown_stream"
    broken = function.handle(_request(b"[{", **{"content-type": "application/json"}))
    assert broken["statusCode"] == 400
    assert json.loads(broken["body"])["error"] == "invalid_body"
    big = function.settings.collector_max_body_bytes + 1
    too_large = function.handle(_request(b"x" * big))
    assert too_large["statusCode"] == 413


def test_handler_reads_its_settings_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_local_aws(monkeypatch)
    prefix = unique_name("producer")
    monkeypatch.setenv("ADPULSE_HOME", str(tmp_path))
    monkeypatch.setenv("ADPULSE_PARTITIONS", str(PARTITIONS))
    monkeypatch.setenv("ADPULSE_TRANSPORT_URL", kinesis_url(prefix, 1))
    try:
        answer = producer.handler({"events": 300})
    finally:
        producer.reset()
    for stream in Stream:
        parts = lines_by_partition(prefix, stream)
        assert sum(len(v) for v in parts.values()) == answer["records"][stream.value]
    assert answer["records"]["impressions"] > 100
