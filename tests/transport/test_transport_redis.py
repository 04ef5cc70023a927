"""The Transport contract against Redis Streams (a real server, see tests/redistest.py).

Same properties as test_transport_contract.py; offsets are entry ids instead of byte
positions, so the expectations are stated in records and data rather than offsets.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redistest import REDIS_URL, redis_prefix, redis_transport

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.transport import OffsetOutOfRangeError, open_transport
from adpulse.transport.base import Consumer
from adpulse.transport.framing import frame_one, partition_of
from adpulse.transport.redis_streams import RedisStreamsTransport


def read_all(
    consumer: Consumer, stream: Stream, partition: int, after: str | None, max_bytes: int
) -> list[tuple[str | None, str, bytes, int]]:
    chunks = []
    while (chunk := consumer.poll(stream, partition, after, max_bytes)) is not None:
        assert chunk.stream is stream
        assert chunk.partition == partition
        chunks.append((chunk.start_offset, chunk.end_offset, chunk.data, chunk.records))
        after = chunk.end_offset
    return chunks


@pytest.fixture
def transport() -> Iterator[RedisStreamsTransport]:
    with redis_transport(4) as t:
        yield t


def _ids(t: RedisStreamsTransport, stream: Stream, partition: int) -> list[str]:
    return [i.decode() for i, _ in t.client.xrange(t.key(stream, partition))]


def test_round_trip_over_streams_and_partitions(transport: RedisStreamsTransport) -> None:
    producer = transport.producer()
    expected: dict[tuple[Stream, int], list[bytes]] = {}
    for stream in Stream:
        for batch in range(3):
            users = [f"user_{(batch * 7 + i) % 23}" for i in range(40)]
            payloads = [f'{{"s":"{stream}","b":{batch},"i":{i}}}'.encode() for i in range(40)]
            producer.send(stream, payloads, users)
            for payload, user in zip(payloads, users, strict=True):
                expected.setdefault((stream, partition_of(user, 4)), []).append(payload)
    producer.flush()
    consumer = transport.consumer()
    assert set(expected) == {(s, p) for s in Stream for p in range(4)}
    for (stream, partition), payloads in expected.items():
        framed = b"".join(p + b"\n" for p in payloads)
        chunks = read_all(consumer, stream, partition, None, 1 << 20)
        assert b"".join(c[2] for c in chunks) == framed
        assert sum(c[3] for c in chunks) == len(payloads)
        assert chunks[0][0] is None
        ids = _ids(transport, stream, partition)
        assert len(ids) == len(payloads)  # one entry per record
        assert chunks[-1][1] == ids[-1]
        # Approximate by design; exact here because all entries of a partition are alike.
        assert abs(consumer.lag_bytes(stream, partition, None) - len(framed)) <= len(payloads)
        assert consumer.lag_bytes(stream, partition, ids[-1]) == 0
        assert consumer.poll(stream, partition, ids[-1], 1 << 20) is None


def test_chunks_hold_whole_lines_up_to_max_bytes(transport: RedisStreamsTransport) -> None:
    producer = transport.producer()
    lines = [b"%09d\n" % i for i in range(10)]  # 10 bytes each
    for line in lines:
        producer.send_framed(Stream.CLICKS, 0, line, 1)
    ids = _ids(transport, Stream.CLICKS, 0)
    consumer = transport.consumer()
    chunks = read_all(consumer, Stream.CLICKS, 0, None, 25)
    assert [(c[0], c[1], c[3]) for c in chunks] == [
        (None, ids[1], 2),
        (ids[1], ids[3], 2),
        (ids[3], ids[5], 2),
        (ids[5], ids[7], 2),
        (ids[7], ids[9], 2),
    ]
    assert [c[2] for c in chunks] == [b"".join(lines[i : i + 2]) for i in range(0, 10, 2)]
    chunk = consumer.poll(Stream.CLICKS, 0, ids[2], 30)
    assert chunk is not None
    assert (chunk.end_offset, chunk.data, chunk.records) == (ids[5], b"".join(lines[3:6]), 3)
    # A first guess of the entry size far off (large budget) still respects the budget.
    fresh = transport.consumer()
    chunk = fresh.poll(Stream.CLICKS, 0, None, 35)
    assert chunk is not None and chunk.records == 3


def test_a_line_longer_than_max_bytes_comes_alone(transport: RedisStreamsTransport) -> None:
    producer = transport.producer()
    long_line = b'{"pad":"' + b"x" * 200_000 + b'"}\n'
    producer.send_framed(Stream.CLICKS, 0, b"a\n", 1)
    producer.send_framed(Stream.CLICKS, 0, long_line, 1)
    producer.send_framed(Stream.CLICKS, 0, b"b\nc\n", 2)
    ids = _ids(transport, Stream.CLICKS, 0)
    chunks = read_all(transport.consumer(), Stream.CLICKS, 0, None, 10)
    assert chunks == [
        (None, ids[0], b"a\n", 1),
        (ids[0], ids[1], long_line, 1),
        (ids[1], ids[3], b"b\nc\n", 2),
    ]


def test_nothing_to_read(transport: RedisStreamsTransport) -> None:
    consumer = transport.consumer()
    assert consumer.poll(Stream.CONVERSIONS, 2, None, 1000) is None
    assert consumer.poll(Stream.CONVERSIONS, 2, "0-0", 1000) is None
    assert consumer.lag_bytes(Stream.CONVERSIONS, 2, None) == 0
    transport.producer().send_framed(Stream.CONVERSIONS, 2, b"x\n", 1)
    chunk = consumer.poll(Stream.CONVERSIONS, 2, None, 1000)
    assert chunk is not None
    (only,) = _ids(transport, Stream.CONVERSIONS, 2)
    assert (chunk.start_offset, chunk.end_offset, chunk.data, chunk.records) == (
        None,
        only,
        b"x\n",
        1,
    )
    assert consumer.poll(Stream.CONVERSIONS, 2, only, 1000) is None
    assert consumer.poll(Stream.CONVERSIONS, 1, None, 1000) is None


def test_send_frames_special_payloads(transport: RedisStreamsTransport) -> None:
    payloads = [b'{"a":1}', b"", b"two\nlines", b"\x00escape", b"x" * 70_000, b"\r\n"]
    transport.producer().send(Stream.CLICKS, payloads, [None] * len(payloads))
    chunk = transport.consumer().poll(Stream.CLICKS, 0, None, 1 << 20)
    assert chunk is not None
    assert chunk.data == b"".join(frame_one(p) for p in payloads)
    assert chunk.records == len(payloads)


def test_rejects_bad_arguments(transport: RedisStreamsTransport) -> None:
    producer = transport.producer()
    consumer = transport.consumer()
    producer.send_framed(Stream.CLICKS, 0, b"abc\ndef\n", 2)
    first, last = _ids(transport, Stream.CLICKS, 0)
    with pytest.raises(ValueError, match=r"partitions 0\.\.3"):
        producer.send_framed(Stream.CLICKS, 4, b"x\n", 1)
    with pytest.raises(ValueError, match=r"partitions 0\.\.3"):
        consumer.poll(Stream.CLICKS, 5, None, 100)
    with pytest.raises(ValueError, match="ending in b'\\\\n'"):
        producer.send_framed(Stream.CLICKS, 0, b"no newline", 1)
    with pytest.raises(ValueError, match="3 payloads but 2 keys"):
        producer.send(Stream.CLICKS, [b"1", b"2", b"3"], ["a", "b"])
    with pytest.raises(ValueError, match="not an offset of the Redis Streams"):
        consumer.poll(Stream.CLICKS, 0, "8", 100)
    ms, seq = (int(x) for x in last.split("-"))
    with pytest.raises(OffsetOutOfRangeError, match="beyond the end"):
        consumer.poll(Stream.CLICKS, 0, f"{ms}-{seq + 1}", 100)
    with pytest.raises(OffsetOutOfRangeError, match="beyond the end.*empty"):
        consumer.poll(Stream.CLICKS, 1, "5-0", 100)
    with pytest.raises(ValueError, match="max_bytes must be at least 1"):
        consumer.poll(Stream.CLICKS, 0, None, 0)
    chunk = consumer.poll(Stream.CLICKS, 0, first, 100)
    assert chunk is not None
    assert (chunk.data, chunk.end_offset) == (b"def\n", last)


def test_consumers_are_independent(transport: RedisStreamsTransport) -> None:
    transport.producer().send_framed(Stream.IMPRESSIONS, 0, b"1\n22\n333\n", 3)
    ids = _ids(transport, Stream.IMPRESSIONS, 0)
    first, second = transport.consumer(), transport.consumer()
    one = first.poll(Stream.IMPRESSIONS, 0, None, 2)
    assert one is not None
    assert (one.data, one.end_offset) == (b"1\n", ids[0])
    everything = second.poll(Stream.IMPRESSIONS, 0, None, 100)
    assert everything is not None
    assert (everything.data, everything.end_offset) == (b"1\n22\n333\n", ids[2])
    rest = first.poll(Stream.IMPRESSIONS, 0, ids[0], 100)
    assert rest is not None
    assert (rest.data, rest.records, rest.end_offset) == (b"22\n333\n", 2, ids[2])


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
