"""The Transport contract, run against every transport (memory, embedded, tiny segments)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from adpulse.contracts import Stream
from adpulse.transport import (
    Consumer,
    EmbeddedTransport,
    InMemoryTransport,
    OffsetOutOfRangeError,
    Transport,
)
from adpulse.transport.framing import frame_one, partition_of

TransportFactory = Callable[[int], Transport]


def read_all(
    consumer: Consumer, stream: Stream, partition: int, after: str | None, max_bytes: int
) -> list[tuple[str | None, str, bytes, int]]:
    """Every chunk until the log is exhausted: (start, end, data, records)."""
    chunks = []
    while (chunk := consumer.poll(stream, partition, after, max_bytes)) is not None:
        assert chunk.stream is stream
        assert chunk.partition == partition
        chunks.append((chunk.start_offset, chunk.end_offset, chunk.data, chunk.records))
        after = chunk.end_offset
    return chunks


def test_round_trip_over_streams_and_partitions(make_transport: TransportFactory) -> None:
    transport = make_transport(4)
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
        assert chunks[-1][1] == str(len(framed))
        assert consumer.lag_bytes(stream, partition, None) == len(framed)
        assert consumer.lag_bytes(stream, partition, str(len(framed))) == 0
        assert consumer.poll(stream, partition, str(len(framed)), 1 << 20) is None


def test_chunks_hold_whole_lines_up_to_max_bytes(make_transport: TransportFactory) -> None:
    transport = make_transport(1)
    producer = transport.producer()
    lines = [b"%09d\n" % i for i in range(10)]  # 10 bytes each
    for line in lines:
        producer.send_framed(Stream.CLICKS, 0, line, 1)
    consumer = transport.consumer()

    # 25 bytes fit two 10-byte lines; the half line after them is not returned.
    chunks = read_all(consumer, Stream.CLICKS, 0, None, 25)
    assert [(c[0], c[1], c[3]) for c in chunks] == [
        (None, "20", 2),
        ("20", "40", 2),
        ("40", "60", 2),
        ("60", "80", 2),
        ("80", "100", 2),
    ]
    assert [c[2] for c in chunks] == [b"".join(lines[i : i + 2]) for i in range(0, 10, 2)]

    # A budget ending exactly on a line end includes that line.
    chunk = consumer.poll(Stream.CLICKS, 0, "30", 30)
    assert chunk is not None
    assert (chunk.end_offset, chunk.data, chunk.records) == ("60", b"".join(lines[3:6]), 3)


def test_a_line_longer_than_max_bytes_comes_alone(make_transport: TransportFactory) -> None:
    transport = make_transport(1)
    producer = transport.producer()
    long_line = b'{"pad":"' + b"x" * 200_000 + b'"}\n'
    producer.send_framed(Stream.CLICKS, 0, b"a\n", 1)
    producer.send_framed(Stream.CLICKS, 0, long_line, 1)
    producer.send_framed(Stream.CLICKS, 0, b"b\nc\n", 2)
    consumer = transport.consumer()

    chunks = read_all(consumer, Stream.CLICKS, 0, None, 10)
    end_long = 2 + len(long_line)
    assert chunks == [
        (None, "2", b"a\n", 1),
        ("2", str(end_long), long_line, 1),
        (str(end_long), str(end_long + 4), b"b\nc\n", 2),
    ]


def test_budget_cut_far_behind_a_long_line(make_transport: TransportFactory) -> None:
    # The last line end within the budget lies more than one scan step (64 KiB) back.
    transport = make_transport(1)
    long_line = b"y" * 200_000 + b"\n"
    transport.producer().send_framed(Stream.CLICKS, 0, b"a\n" + long_line + b"b\n", 3)
    consumer = transport.consumer()
    chunks = read_all(consumer, Stream.CLICKS, 0, None, 150_000)
    assert chunks == [
        (None, "2", b"a\n", 1),
        ("2", "200003", long_line, 1),
        ("200003", "200005", b"b\n", 1),
    ]


def test_nothing_to_read(make_transport: TransportFactory) -> None:
    transport = make_transport(3)
    consumer = transport.consumer()
    # Never-written partitions read as empty, not as errors.
    assert consumer.poll(Stream.CONVERSIONS, 2, None, 1000) is None
    assert consumer.poll(Stream.CONVERSIONS, 2, "0", 1000) is None
    assert consumer.lag_bytes(Stream.CONVERSIONS, 2, None) == 0

    transport.producer().send_framed(Stream.CONVERSIONS, 2, b"x\n", 1)
    chunk = consumer.poll(Stream.CONVERSIONS, 2, None, 1000)
    assert chunk is not None
    assert (chunk.start_offset, chunk.end_offset, chunk.data, chunk.records) == (
        None,
        "2",
        b"x\n",
        1,
    )
    assert consumer.poll(Stream.CONVERSIONS, 2, "2", 1000) is None
    assert consumer.poll(Stream.CONVERSIONS, 1, None, 1000) is None


def test_send_frames_special_payloads(make_transport: TransportFactory) -> None:
    transport = make_transport(1)
    payloads = [b'{"a":1}', b"", b"two\nlines", b"\x00escape", b"x" * 70_000]
    transport.producer().send(Stream.CLICKS, payloads, [None] * len(payloads))
    chunk = transport.consumer().poll(Stream.CLICKS, 0, None, 1 << 20)
    assert chunk is not None
    assert chunk.data == b"".join(frame_one(p) for p in payloads)
    assert chunk.records == 5


def test_rejects_bad_arguments(make_transport: TransportFactory) -> None:
    transport = make_transport(2)
    producer = transport.producer()
    consumer = transport.consumer()
    producer.send_framed(Stream.CLICKS, 0, b"abc\ndef\n", 2)

    with pytest.raises(ValueError, match=r"partitions 0\.\.1"):
        producer.send_framed(Stream.CLICKS, 2, b"x\n", 1)
    with pytest.raises(ValueError, match=r"partitions 0\.\.1"):
        consumer.poll(Stream.CLICKS, 5, None, 100)
    with pytest.raises(ValueError, match="ending in b'\\\\n'"):
        producer.send_framed(Stream.CLICKS, 0, b"no newline", 1)
    with pytest.raises(ValueError, match="3 payloads but 2 keys"):
        producer.send(Stream.CLICKS, [b"1", b"2", b"3"], ["a", "b"])
    with pytest.raises(ValueError, match="not at a record boundary"):
        consumer.poll(Stream.CLICKS, 0, "2", 100)
    with pytest.raises(ValueError, match="not an offset"):
        consumer.poll(Stream.CLICKS, 0, "1700000000000-0", 100)
    with pytest.raises(OffsetOutOfRangeError, match="beyond the end of the log \\(8\\)"):
        consumer.poll(Stream.CLICKS, 0, "9", 100)
    with pytest.raises(OffsetOutOfRangeError, match="beyond the end of the log \\(0\\)"):
        consumer.poll(Stream.CLICKS, 1, "4", 100)
    with pytest.raises(ValueError, match="max_bytes must be at least 1"):
        consumer.poll(Stream.CLICKS, 0, None, 0)

    # The rejected sends appended nothing.
    chunk = consumer.poll(Stream.CLICKS, 0, "4", 100)
    assert chunk is not None
    assert (chunk.data, chunk.end_offset) == (b"def\n", "8")


def test_consumers_are_independent(make_transport: TransportFactory) -> None:
    transport = make_transport(1)
    transport.producer().send_framed(Stream.IMPRESSIONS, 0, b"1\n22\n333\n", 3)
    first, second = transport.consumer(), transport.consumer()
    one = first.poll(Stream.IMPRESSIONS, 0, None, 2)
    assert one is not None
    assert (one.data, one.end_offset) == (b"1\n", "2")
    everything = second.poll(Stream.IMPRESSIONS, 0, None, 100)
    assert everything is not None
    assert (everything.data, everything.end_offset) == (b"1\n22\n333\n", "9")
    rest = first.poll(Stream.IMPRESSIONS, 0, "2", 100)
    assert rest is not None
    assert (rest.data, rest.records, rest.end_offset) == (b"22\n333\n", 2, "9")


@pytest.mark.parametrize("kind", ["memory", "embedded-tiny-segments"])
def test_retention_refuses_deleted_offsets(kind: str, tmp_path: Path) -> None:
    transport: EmbeddedTransport | InMemoryTransport
    if kind == "memory":
        transport = InMemoryTransport(1)
    else:
        # One segment per append: retention granularity equals the memory transport's.
        transport = EmbeddedTransport(tmp_path / "log", 1, segment_bytes=1)
    producer = transport.producer()
    for i in range(5):
        producer.send_framed(Stream.CLICKS, 0, b"%09d\n" % i, 1)
    consumer = transport.consumer()

    assert transport.truncate_before(Stream.CLICKS, 0, "20") == "20"
    with pytest.raises(OffsetOutOfRangeError, match="deleted by retention.*starts at offset 20"):
        consumer.poll(Stream.CLICKS, 0, "10", 100)
    with pytest.raises(OffsetOutOfRangeError, match="deleted by retention"):
        consumer.poll(Stream.CLICKS, 0, "0", 100)
    chunk = consumer.poll(Stream.CLICKS, 0, None, 100)
    assert chunk is not None
    assert (chunk.data, chunk.records, chunk.end_offset) == (
        b"000000002\n000000003\n000000004\n",
        3,
        "50",
    )
    chunk = consumer.poll(Stream.CLICKS, 0, "30", 100)
    assert chunk is not None
    assert chunk.data == b"000000003\n000000004\n"
    assert consumer.lag_bytes(Stream.CLICKS, 0, None) == 30
    # Offsets are never renumbered: appends continue at the old end.
    producer.send_framed(Stream.CLICKS, 0, b"000000005\n", 1)
    chunk = consumer.poll(Stream.CLICKS, 0, "50", 100)
    assert chunk is not None
    assert (chunk.data, chunk.end_offset) == (b"000000005\n", "60")
    transport.close()
