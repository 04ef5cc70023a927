"""What only the Redis Streams transport does (a real server, see tests/redistest.py):
entry-id offsets, trimming on ack, maxlen, the partition count kept per prefix, opening by
URL. The Transport contract itself runs on Redis in test_transport_contract.py; consumer
groups are in test_transport_redis_groups.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redistest import REDIS_URL, redis_prefix, redis_transport

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.transport import OffsetOutOfRangeError, open_transport
from adpulse.transport.redis_streams import RedisStreamsTransport


@pytest.fixture
def transport() -> Iterator[RedisStreamsTransport]:
    with redis_transport(4) as t:
        yield t


def _ids(t: RedisStreamsTransport, stream: Stream, partition: int) -> list[str]:
    return [i.decode() for i, _ in t.client.xrange(t.key(stream, partition))]


def test_offsets_are_entry_ids(transport: RedisStreamsTransport) -> None:
    """Each record is one entry and its offset the entry id; byte positions are refused."""
    producer = transport.producer()
    consumer = transport.consumer()
    producer.send_framed(Stream.CLICKS, 0, b"abc\ndef\n", 2)
    first, last = _ids(transport, Stream.CLICKS, 0)
    chunk = consumer.poll(Stream.CLICKS, 0, None, 100)
    assert chunk is not None
    assert (chunk.data, chunk.records, chunk.end_offset) == (b"abc\ndef\n", 2, last)
    chunk = consumer.poll(Stream.CLICKS, 0, first, 100)
    assert chunk is not None
    assert (chunk.data, chunk.end_offset) == (b"def\n", last)
    assert consumer.poll(Stream.CONVERSIONS, 2, "0-0", 1000) is None  # the empty start
    with pytest.raises(ValueError, match="not an offset of the Redis Streams"):
        consumer.poll(Stream.CLICKS, 0, "8", 100)
    ms, seq = (int(x) for x in last.split("-"))
    with pytest.raises(OffsetOutOfRangeError, match="beyond the end"):
        consumer.poll(Stream.CLICKS, 0, f"{ms}-{seq + 1}", 100)
    with pytest.raises(OffsetOutOfRangeError, match="beyond the end.*empty"):
        consumer.poll(Stream.CLICKS, 1, "5-0", 100)


def test_ack_trims_only_committed_entries(transport: RedisStreamsTransport) -> None:
    producer = transport.producer()
    producer.send_framed(Stream.CLICKS, 0, b"".join(b"%09d\n" % i for i in range(5000)), 5000)
    ids = _ids(transport, Stream.CLICKS, 0)
    consumer = transport.consumer()
    assert consumer.committed(Stream.CLICKS, 0) is None
    consumer.ack(Stream.CLICKS, 0, ids[3000])
    assert consumer.committed(Stream.CLICKS, 0) == ids[3000]
    remaining = _ids(transport, Stream.CLICKS, 0)
    # Approximate trimming removes whole nodes: something went, nothing at or after
    # the committed entry did.
    assert len(remaining) < 5000
    assert remaining[-2001:] == ids[3000:]
    # The committer's offset still reads on.
    chunk = consumer.poll(Stream.CLICKS, 0, ids[3000], 1 << 20)
    assert chunk is not None and chunk.records == 1999
    assert chunk.data.startswith(b"000003001\n")
    # An offset in the trimmed range is refused, not silently skipped.
    with pytest.raises(OffsetOutOfRangeError, match="was trimmed"):
        consumer.poll(Stream.CLICKS, 0, ids[0], 100)
    # Lag after the committed entry: 1999 entries of 10 bytes.
    assert consumer.lag_bytes(Stream.CLICKS, 0, ids[3000]) == 19_990


def test_partition_count_is_fixed_per_prefix() -> None:
    with redis_prefix() as prefix:
        RedisStreamsTransport(REDIS_URL, 3, prefix=prefix).close()
        with pytest.raises(ValueError, match="have 3 partitions per stream, but 5 were"):
            RedisStreamsTransport(REDIS_URL, 5, prefix=prefix)
        RedisStreamsTransport(REDIS_URL, 3, prefix=prefix).close()


def test_maxlen_caps_and_reports_dropped_offsets() -> None:
    with redis_transport(1, maxlen=100) as t:
        producer = t.producer()
        producer.send_framed(Stream.CLICKS, 0, b"a\n", 1)
        first = _ids(t, Stream.CLICKS, 0)[0]
        producer.send_framed(Stream.CLICKS, 0, b"b\n" * 5000, 5000)
        assert t.client.xlen(t.key(Stream.CLICKS, 0)) < 1000
        with pytest.raises(OffsetOutOfRangeError, match="was trimmed"):
            t.consumer().poll(Stream.CLICKS, 0, first, 100)


def test_open_transport_selects_redis(tmp_path: Path) -> None:
    with redis_prefix() as prefix:
        url = f"{REDIS_URL}?prefix={prefix}"
        transport = open_transport(Settings(home=tmp_path, transport_url=url, partitions=2))
        try:
            assert isinstance(transport, RedisStreamsTransport)
            assert (transport.prefix, transport.partitions) == (prefix, 2)
            assert transport.client.hget(f"{prefix}:meta", "partitions") == b"2"
        finally:
            transport.close()


def test_unreachable_server_names_the_setting(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, transport_url="redis://:secret@127.0.0.1:1/0")
    with pytest.raises(ValueError) as error:
        open_transport(settings)
    message = str(error.value)
    assert "`transport_url`" in message and "unreachable" in message
    assert "ADPULSE_TRANSPORT_URL" in message
    assert "secret" not in message
