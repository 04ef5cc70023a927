"""The Transport contract, run against every transport (memory, embedded, tiny segments,
Redis Streams, Kinesis).

Offsets are opaque: each transport numbers its records its own way (byte positions, Redis
entry ids, Kinesis shard sequence numbers), so expectations name the offset after the n-th record as read back one record
at a time (:func:`record_ends`) and compare offsets for equality only, never by
arithmetic. What the byte-position numbering promises is tested separately, on the
transports that use it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import TransportMaker

from adpulse.contracts import Stream
from adpulse.transport import (
    Consumer,
    EmbeddedTransport,
    InMemoryTransport,
    OffsetOutOfRangeError,
)
from adpulse.transport.framing import frame_one, partition_of


def read_all(
    consumer: Consumer, stream: Stream, partition: int, after: str | None, max_bytes: int
) -> list[tuple[str | None, str, bytes, int]]:
    """Every chunk until the log is exhausted: (start, end, data, records)."""
    chunks = []
    while (chunk := consumer.poll(stream, partition, after, max_bytes)) is not None:
        assert chunk.stream is stream
        assert chunk.partition == partition
        assert chunk.start_offset == after
        chunks.append((chunk.start_offset, chunk.end_offset, chunk.data, chunk.records))
        after = chunk.end_offset
    return chunks


def record_ends(consumer: Consumer, stream: Stream, partition: int) -> list[str]:
    """The offset after each record of the partition, read one record at a time: a budget
    of one byte is smaller than any line, and a line longer than the budget comes alone."""
    chunks = read_all(consumer, stream, partition, None, 1)
    assert all(records == 1 for _, _, _, records in chunks)
    return [end for _, end, _, _ in chunks]


def test_round_trip_over_streams_and_partitions(make_transport: TransportMaker) -> None:
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
        ends = record_ends(consumer, stream, partition)
        assert len(ends) == len(payloads) == len(set(ends))  # one offset per record
        assert chunks[-1][1] == ends[-1]
        lag = consumer.lag_bytes(stream, partition, None)
        if make_transport.exact_lag:
            assert lag == len(framed)
        else:  # an estimate from entry sizes, which differ by a byte at most here
            assert abs(lag - len(framed)) <= len(payloads)
        assert consumer.lag_bytes(stream, partition, ends[-1]) == 0
        assert consumer.poll(stream, partition, ends[-1], 1 << 20) is None


def test_chunks_hold_whole_lines_up_to_max_bytes(make_transport: TransportMaker) -> None:
    transport = make_transport(1)
    producer = transport.producer()
    lines = [b"%09d\n" % i for i in range(10)]  # 10 bytes each
    for line in lines:
        producer.send_framed(Stream.CLICKS, 0, line, 1)
    consumer = transport.consumer()
    ends = record_ends(consumer, Stream.CLICKS, 0)
    assert len(ends) == 10

    # 25 bytes fit two 10-byte lines; the half line after them is not returned.
    chunks = read_all(consumer, Stream.CLICKS, 0, None, 25)
    assert [(c[0], c[1], c[3]) for c in chunks] == [
        (None, ends[1], 2),
        (ends[1], ends[3], 2),
        (ends[3], ends[5], 2),
        (ends[5], ends[7], 2),
        (ends[7], ends[9], 2),
    ]
    assert [c[2] for c in chunks] == [b"".join(lines[i : i + 2]) for i in range(0, 10, 2)]

    # A budget ending exactly on a line end includes that line.
    chunk = consumer.poll(Stream.CLICKS, 0, ends[2], 30)
    assert chunk is not None
    assert (chunk.end_offset, chunk.data, chunk.records) == (ends[5], b"".join(lines[3:6]), 3)
    # A new consumer (no size learnt yet) respects the budget too.
    chunk = transport.consumer().poll(Stream.CLICKS, 0, None, 35)
    assert chunk is not None
    assert (chunk.end_offset, chunk.data, chunk.records) == (ends[2], b"".join(lines[:3]), 3)


def test_a_line_longer_than_max_bytes_comes_alone(make_transport: TransportMaker) -> None:
    transport = make_transport(1)
    producer = transport.producer()
    long_line = b'{"pad":"' + b"x" * 200_000 + b'"}\n'
    producer.send_framed(Stream.CLICKS, 0, b"a\n", 1)
    producer.send_framed(Stream.CLICKS, 0, long_line, 1)
    producer.send_framed(Stream.CLICKS, 0, b"b\nc\n", 2)
    consumer = transport.consumer()
    ends = record_ends(consumer, Stream.CLICKS, 0)
    assert len(ends) == 4

    chunks = read_all(consumer, Stream.CLICKS, 0, None, 10)
    assert chunks == [
        (None, ends[0], b"a\n", 1),
        (ends[0], ends[1], long_line, 1),
        (ends[1], ends[3], b"b\nc\n", 2),
    ]


def test_budget_cut_far_behind_a_long_line(make_transport: TransportMaker) -> None:
    # The last line end within the budget lies more than one scan step (64 KiB) back.
    transport = make_transport(1)
    long_line = b"y" * 200_000 + b"\n"
    transport.producer().send_framed(Stream.CLICKS, 0, b"a\n" + long_line + b"b\n", 3)
    consumer = transport.consumer()
    ends = record_ends(consumer, Stream.CLICKS, 0)
    assert len(ends) == 3
    chunks = read_all(consumer, Stream.CLICKS, 0, None, 150_000)
    assert chunks == [
        (None, ends[0], b"a\n", 1),
        (ends[0], ends[1], long_line, 1),
        (ends[1], ends[2], b"b\n", 1),
    ]


def test_nothing_to_read(make_transport: TransportMaker) -> None:
    transport = make_transport(3)
    consumer = transport.consumer()
    # Never-written partitions read as empty, not as errors.
    assert consumer.poll(Stream.CONVERSIONS, 2, None, 1000) is None
    assert consumer.lag_bytes(Stream.CONVERSIONS, 2, None) == 0

    transport.producer().send_framed(Stream.CONVERSIONS, 2, b"x\n", 1)
    chunk = consumer.poll(Stream.CONVERSIONS, 2, None, 1000)
    assert chunk is not None
    assert (chunk.start_offset, chunk.data, chunk.records) == (None, b"x\n", 1)
    assert record_ends(consumer, Stream.CONVERSIONS, 2) == [chunk.end_offset]
    assert consumer.poll(Stream.CONVERSIONS, 2, chunk.end_offset, 1000) is None
    assert consumer.lag_bytes(Stream.CONVERSIONS, 2, chunk.end_offset) == 0
    assert consumer.poll(Stream.CONVERSIONS, 1, None, 1000) is None


def test_send_frames_special_payloads(make_transport: TransportMaker) -> None:
    transport = make_transport(1)
    payloads = [b'{"a":1}', b"", b"two\nlines", b"\x00escape", b"x" * 70_000, b"\r\n"]
    transport.producer().send(Stream.CLICKS, payloads, [None] * len(payloads))
    chunk = transport.consumer().poll(Stream.CLICKS, 0, None, 1 << 20)
    assert chunk is not None
    assert chunk.data == b"".join(frame_one(p) for p in payloads)
    assert chunk.records == len(payloads)


def test_rejects_bad_arguments(make_transport: TransportMaker) -> None:
    transport = make_transport(3)
    producer = transport.producer()
    consumer = transport.consumer()
    producer.send_framed(Stream.CLICKS, 0, b"abc\ndef\n", 2)
    # Written after partition 0 and longer: its last offset lies beyond partition 0's end
    # (and beyond the end of the empty partition 2), whatever the numbering.
    producer.send_framed(Stream.CLICKS, 1, b"abc\ndef\nghi\n", 3)
    ends = record_ends(consumer, Stream.CLICKS, 0)
    beyond = record_ends(consumer, Stream.CLICKS, 1)[-1]

    with pytest.raises(ValueError, match=r"partitions 0\.\.2"):
        producer.send_framed(Stream.CLICKS, 3, b"x\n", 1)
    with pytest.raises(ValueError, match=r"partitions 0\.\.2"):
        consumer.poll(Stream.CLICKS, 5, None, 100)
    with pytest.raises(ValueError, match="ending in b'\\\\n'"):
        producer.send_framed(Stream.CLICKS, 0, b"no newline", 1)
    with pytest.raises(ValueError, match="3 payloads but 2 keys"):
        producer.send(Stream.CLICKS, [b"1", b"2", b"3"], ["a", "b"])
    with pytest.raises(ValueError, match="'not-an-offset' is not an offset of"):
        consumer.poll(Stream.CLICKS, 0, "not-an-offset", 100)
    with pytest.raises(OffsetOutOfRangeError, match="beyond the end"):
        consumer.poll(Stream.CLICKS, 0, beyond, 100)
    with pytest.raises(OffsetOutOfRangeError, match="beyond the end"):
        consumer.poll(Stream.CLICKS, 2, beyond, 100)
    with pytest.raises(ValueError, match="max_bytes must be at least 1"):
        consumer.poll(Stream.CLICKS, 0, None, 0)

    # The rejected sends appended nothing.
    assert record_ends(consumer, Stream.CLICKS, 0) == ends
    chunk = consumer.poll(Stream.CLICKS, 0, ends[0], 100)
    assert chunk is not None
    assert (chunk.data, chunk.end_offset) == (b"def\n", ends[1])


def test_consumers_are_independent(make_transport: TransportMaker) -> None:
    transport = make_transport(1)
    transport.producer().send_framed(Stream.IMPRESSIONS, 0, b"1\n22\n333\n", 3)
    first, second = transport.consumer(), transport.consumer()
    ends = record_ends(transport.consumer(), Stream.IMPRESSIONS, 0)
    one = first.poll(Stream.IMPRESSIONS, 0, None, 2)
    assert one is not None
    assert (one.data, one.end_offset) == (b"1\n", ends[0])
    everything = second.poll(Stream.IMPRESSIONS, 0, None, 100)
    assert everything is not None
    assert (everything.data, everything.end_offset) == (b"1\n22\n333\n", ends[2])
    rest = first.poll(Stream.IMPRESSIONS, 0, ends[0], 100)
    assert rest is not None
    assert (rest.data, rest.records, rest.end_offset) == (b"22\n333\n", 2, ends[2])


def test_byte_offsets_are_positions_at_record_boundaries(
    make_byte_transport: TransportMaker,
) -> None:
    """The in-memory and embedded transports number records by byte position: an offset
    is the decimal position after a record's newline, and any other number is refused."""
    transport = make_byte_transport(2)
    producer = transport.producer()
    consumer = transport.consumer()
    assert consumer.poll(Stream.CLICKS, 1, "0", 100) is None  # "0": the empty log's start
    producer.send_framed(Stream.CLICKS, 0, b"abc\ndef\n", 2)
    assert record_ends(consumer, Stream.CLICKS, 0) == ["4", "8"]
    assert consumer.lag_bytes(Stream.CLICKS, 0, "4") == 4
    chunk = consumer.poll(Stream.CLICKS, 0, "0", 100)
    assert chunk is not None
    assert (chunk.data, chunk.end_offset) == (b"abc\ndef\n", "8")

    with pytest.raises(ValueError, match="not at a record boundary"):
        consumer.poll(Stream.CLICKS, 0, "2", 100)
    with pytest.raises(ValueError, match="not an offset"):  # a Redis entry id
        consumer.poll(Stream.CLICKS, 0, "1700000000000-0", 100)
    with pytest.raises(ValueError, match="not an offset"):
        consumer.poll(Stream.CLICKS, 0, "-4", 100)
    with pytest.raises(OffsetOutOfRangeError, match="beyond the end of the log \\(8\\)"):
        consumer.poll(Stream.CLICKS, 0, "9", 100)
    with pytest.raises(OffsetOutOfRangeError, match="beyond the end of the log \\(0\\)"):
        consumer.poll(Stream.CLICKS, 1, "4", 100)


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
