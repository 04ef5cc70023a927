"""``Consumer.lag``: bytes, records and age behind a position, for every transport that
implements it, with records appended at known times (an injected clock; for Redis
Streams, entry ids, which carry the server's append time). Kinesis, whose append times
are the server's, has its own test in test_transport_kinesis.py."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import TRANSPORT_KINDS, TransportMaker

from adpulse.contracts import Stream
from adpulse.transport.base import Consumer, Lag, Transport
from adpulse.transport.embedded import EmbeddedTransport
from adpulse.transport.redis_streams import FIELD, RedisStreamsTransport

#: The transports whose append clock a test can set (Kinesis: test_transport_kinesis.py).
LAG_KINDS = ("memory", "embedded", "embedded-tiny-segments", "redis")
#: (append time in seconds, records appended then), in order.
APPENDS = ((1000.0, 2), (1004.5, 3), (1010.25, 1))


def _payload(n: int) -> bytes:
    return b'{"n":%d,"pad":"%s"}' % (n, b"x" * (n % 7))


def append_at(transport: Transport, at: float, payloads: list[bytes]) -> None:
    """Append ``payloads`` to clicks partition 0 as one append at clock time ``at``."""
    if isinstance(transport, RedisStreamsTransport):
        key = transport.key(Stream.CLICKS, 0)
        for seq, payload in enumerate(payloads):
            transport.client.xadd(key, {FIELD: payload}, id=f"{round(at * 1000)}-{seq}")
        return
    transport.clock = lambda: at  # type: ignore[attr-defined]
    producer = transport.producer()
    producer.send_framed(Stream.CLICKS, 0, b"".join(p + b"\n" for p in payloads), len(payloads))
    producer.close()


def record_ends(consumer: Consumer) -> list[str]:
    ends, after = [], None
    while (chunk := consumer.poll(Stream.CLICKS, 0, after, 1)) is not None:
        ends.append(chunk.end_offset)
        after = chunk.end_offset
    return ends


@pytest.fixture(params=LAG_KINDS)
def make_lag_transport(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TransportMaker]:
    """Builds a transport of each kind of :data:`LAG_KINDS`."""
    maker = TransportMaker(request.param, tmp_path / "log")
    try:
        yield maker
    finally:
        maker.close()


def test_lag_counts_records_and_their_age(make_lag_transport: TransportMaker) -> None:
    transport = make_lag_transport(1)
    payloads = [_payload(n) for n in range(6)]
    sent = 0
    for at, records in APPENDS:
        append_at(transport, at, payloads[sent : sent + records])
        sent += records
    consumer = transport.consumer()
    ends = record_ends(transport.consumer())
    assert len(ends) == 6
    sizes = [len(p) + 1 for p in payloads]

    def lag(after: str | None) -> Lag:
        got = consumer.lag(Stream.CLICKS, 0, after)
        assert got.bytes == consumer.lag_bytes(Stream.CLICKS, 0, after)
        return got

    def behind(first: int) -> int:
        return sum(sizes[first:])

    # (position: records consumed, records behind, age: newest append - oldest behind)
    expected = [(0, 6, 10.25), (1, 5, 10.25), (2, 4, 5.75), (4, 2, 5.75), (5, 1, 0.0)]
    for consumed, records, seconds in expected:
        got = lag(None if consumed == 0 else ends[consumed - 1])
        assert (got.records, got.seconds) == (records, pytest.approx(seconds, abs=1e-9))
        if make_lag_transport.exact_lag:
            assert got.bytes == behind(consumed)
    assert lag(ends[-1]) == Lag(0, 0, 0.0)
    assert consumer.lag(Stream.CLICKS, 0, None).records == 6  # counted again from the start

    # more appended while the position moves on: counted exactly
    append_at(transport, 1030.0, [_payload(6), _payload(7)])
    ends = record_ends(transport.consumer())
    got = lag(ends[2])
    assert (got.records, got.seconds) == (5, pytest.approx(1030.0 - 1004.5))
    if make_lag_transport.exact_lag:
        sizes += [len(_payload(6)) + 1, len(_payload(7)) + 1]
        assert got.bytes == behind(3)
    assert consumer.lag(Stream.IMPRESSIONS, 0, None) == Lag(0, 0, 0.0)  # never written


def test_redis_lag_of_real_appends(tmp_path: Path) -> None:
    """The producer's own appends, whose entry ids Redis assigns."""
    maker = TransportMaker("redis", tmp_path)
    try:
        _check_real_appends(maker(1))
    finally:
        maker.close()


def _check_real_appends(transport: Transport) -> None:
    producer = transport.producer()
    producer.send_framed(Stream.CLICKS, 0, b'{"a":1}\n{"a":2}\n', 2)
    time.sleep(0.05)
    producer.send_framed(Stream.CLICKS, 0, b'{"a":3}\n', 1)
    got = transport.consumer().lag(Stream.CLICKS, 0, None)
    assert got.records == 3
    assert got.seconds is not None and 0.05 <= got.seconds < 5


def test_embedded_age_without_append_times_falls_back_to_the_segment_time(
    tmp_path: Path,
) -> None:
    transport = EmbeddedTransport(tmp_path / "log", 1, segment_bytes=26, clock=lambda: 50.0)
    producer = transport.producer()
    for n in range(3):  # three appends of 13 bytes: segments at 0 and 26
        producer.send_framed(Stream.CLICKS, 0, b'{"n":%d,"a":}\n' % n, 1)
    producer.close()
    directory = transport.partition_dir(Stream.CLICKS, 0)
    assert sorted(p.name for p in directory.iterdir() if p.name != ".lock") == [
        "00000000000000000000.log",
        "00000000000000000000.times",
        "00000000000000000026.log",
        "00000000000000000026.times",
    ]
    consumer = transport.consumer()
    assert consumer.lag(Stream.CLICKS, 0, None) == Lag(39, 3, 0.0)
    (directory / "00000000000000000000.times").unlink()  # a log written before sidecars
    os.utime(directory / "00000000000000000000.log", (20.0, 20.0))
    assert consumer.lag(Stream.CLICKS, 0, None) == Lag(39, 3, 30.0)  # 50 - mtime 20
    assert consumer.lag(Stream.CLICKS, 0, "13") == Lag(26, 2, 30.0)
    assert consumer.lag(Stream.CLICKS, 0, "26") == Lag(13, 1, 0.0)
    # retention deletes a segment's sidecar with it
    transport.truncate_before(Stream.CLICKS, 0, "26")
    assert not (directory / "00000000000000000000.log").exists()
    assert sorted(p.name for p in directory.iterdir() if p.name != ".lock") == [
        "00000000000000000026.log",
        "00000000000000000026.times",
    ]


class BytesOnly(Consumer):
    """A transport's consumer written before ``lag`` existed (e.g. on another branch)."""

    def poll(self, stream: Stream, partition: int, after: str | None, max_bytes: int) -> None:
        return None

    def lag_bytes(self, stream: Stream, partition: int, after: str | None) -> int:
        return 7 if stream is Stream.CLICKS else 0


def test_a_consumer_without_its_own_lag_reports_bytes_only() -> None:
    consumer = BytesOnly()
    assert consumer.lag(Stream.CLICKS, 0, None) == Lag(7, None, None)
    total = consumer.lag(Stream.CLICKS, 0, None).plus(Lag(3, 2, 1.5))
    assert total == Lag(10, None, None)  # unknown on one side: unknown
    assert Lag(3, 2, 1.5).plus(Lag(4, 5, 0.5)) == Lag(7, 7, 1.5)


@pytest.mark.parametrize("kind", [k for k in TRANSPORT_KINDS if k not in LAG_KINDS])
def test_the_other_transports_count_real_appends(kind: str, tmp_path: Path) -> None:
    """Transports whose append times are the server's (Kinesis)."""
    maker = TransportMaker(kind, tmp_path / "log")
    try:
        _check_real_appends(maker(1))
    finally:
        maker.close()
