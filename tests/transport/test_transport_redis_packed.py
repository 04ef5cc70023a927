"""Packed entries of the Redis Streams transport: many framed records per stream entry
(``entry_bytes``; ``transport_url`` packs 64 KiB by default). Offsets are entry ids, so
a chunk holds whole entries; everything else (consumer groups, takeover, acks, trimming,
lag, maxlen) works per entry as with one record per entry (test_transport_redis*.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from redistest import REDIS_URL, redis_prefix, redis_transport

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.transport import OffsetOutOfRangeError, open_transport
from adpulse.transport.framing import frame_one
from adpulse.transport.redis_streams import ENTRY_BYTES, RedisStreamsTransport, pack_lines

CLICKS = Stream.CLICKS


@pytest.fixture
def transport() -> Iterator[RedisStreamsTransport]:
    # 40 bytes: four 9-byte framed lines ("rec-0000\n") per entry.
    with redis_transport(2, entry_bytes=40) as t:
        yield t


def lines(start: int, stop: int) -> bytes:
    return b"".join(b"rec-%04d\n" % i for i in range(start, stop))


def entries(t: RedisStreamsTransport, partition: int = 0) -> list[tuple[str, dict[bytes, bytes]]]:
    return [(i.decode(), f) for i, f in t.client.xrange(t.key(CLICKS, partition))]


def read_all(
    t: RedisStreamsTransport, consumer_name: str, after: str | None, max_bytes: int
) -> list[tuple[str | None, str, bytes, int]]:
    consumer = t.consumer(consumer_name)
    chunks = []
    while (chunk := consumer.poll(CLICKS, 0, after, max_bytes)) is not None:
        chunks.append((chunk.start_offset, chunk.end_offset, chunk.data, chunk.records))
        after = chunk.end_offset
    return chunks


def test_pack_lines_cuts_at_line_ends() -> None:
    framed = b"aaaa\nbb\ncccccccccc\nd\n"
    assert pack_lines(framed, 8) == [(2, b"aaaa\nbb"), (1, b"cccccccccc"), (1, b"d")]
    assert pack_lines(framed, 1 << 20) == [(4, b"aaaa\nbb\ncccccccccc\nd")]
    assert pack_lines(b"", 8) == []


def test_records_are_packed_into_entries_with_their_count(
    transport: RedisStreamsTransport,
) -> None:
    transport.producer().send_framed(CLICKS, 0, lines(0, 10), 10)
    stored = entries(transport)
    assert [f for _, f in stored] == [
        {b"n": b"4", b"b": lines(0, 4)[:-1]},
        {b"n": b"4", b"b": lines(4, 8)[:-1]},
        {b"n": b"2", b"b": lines(8, 10)[:-1]},
    ]
    ids = [i for i, _ in stored]
    # One chunk of everything; chunks of one entry with a budget below an entry.
    assert read_all(transport, "a", None, 1 << 20) == [(None, ids[2], lines(0, 10), 10)]
    assert read_all(transport, "b", None, 1) == [
        (None, ids[0], lines(0, 4), 4),
        (ids[0], ids[1], lines(4, 8), 4),
        (ids[1], ids[2], lines(8, 10), 2),
    ]
    # From a committed entry id: the entries after it.
    assert read_all(transport, "c", ids[0], 1 << 20) == [(ids[0], ids[2], lines(4, 10), 6)]


def test_a_line_longer_than_an_entry_is_an_entry_of_its_own(
    transport: RedisStreamsTransport,
) -> None:
    long = b"x" * 100
    framed = lines(0, 2) + frame_one(b"\n escaped") + long + b"\n" + lines(2, 3)
    transport.producer().send_framed(CLICKS, 0, framed, 5)
    assert [int(f[b"n"]) for _, f in entries(transport)] == [3, 1, 1]
    chunks = read_all(transport, "a", None, 1 << 20)
    assert [(c[2], c[3]) for c in chunks] == [(framed, 5)]


def test_one_record_entries_and_packed_ones_read_as_one_log() -> None:
    """Entries written one record each (before packing, or with entry_bytes=0) and
    packed ones in the same stream read in order, with exact record counts."""
    with redis_prefix() as prefix:
        old = RedisStreamsTransport(REDIS_URL, 1, prefix=prefix)
        new = RedisStreamsTransport(REDIS_URL, 1, prefix=prefix, entry_bytes=40)
        try:
            old.producer().send_framed(CLICKS, 0, lines(0, 3), 3)
            new.producer().send_framed(CLICKS, 0, lines(3, 8), 5)
            old.producer().send_framed(CLICKS, 0, lines(8, 9), 1)
            assert [f.get(b"n") for _, f in entries(new)] == [None, None, None, b"4", b"1", None]
            chunks = read_all(new, "reader", None, 1 << 20)
            assert [(c[2], c[3]) for c in chunks] == [(lines(0, 9), 9)]
            # An offset of either kind of entry reads on from there.
            ids = [i for i, _ in entries(new)]
            assert read_all(new, "from-old", ids[1], 1 << 20)[0][2:] == (lines(2, 9), 7)
            assert read_all(new, "from-new", ids[3], 1 << 20)[0][2:] == (lines(7, 9), 2)
            # Lag: entries after the offset times the mean size of the first and last.
            assert new.consumer().lag_bytes(CLICKS, 0, ids[3]) == 2 * 9
        finally:
            old.close()
            new.close()


def test_a_dead_consumers_packed_entries_go_once_to_the_next_owner(
    transport: RedisStreamsTransport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="adpulse.transport.redis_streams")
    transport.producer().send_framed(CLICKS, 0, lines(0, 20), 20)
    ids = [i for i, _ in entries(transport)]
    assert len(ids) == 5
    dead = transport.consumer("worker-a")
    chunk = dead.poll(CLICKS, 0, None, 80)
    assert chunk is not None and (chunk.end_offset, chunk.records) == (ids[1], 8)
    chunk = dead.poll(CLICKS, 0, ids[1], 80)
    assert chunk is not None and (chunk.end_offset, chunk.records) == (ids[3], 8)
    # It read one entry beyond its budget (all five are pending under it); its
    # warehouse committed up to ids[0] (4 records); it died without acknowledging.
    assert transport.client.xpending(transport.key(CLICKS, 0), transport.group)["pending"] == 5
    del dead, chunk
    chunks = read_all(transport, "worker-b", ids[0], 1 << 20)
    assert chunks == [(ids[0], ids[4], lines(4, 20), 16)]
    assert (
        f"clicks partition 0: consumer worker-b took over 4 pending entries after {ids[0]}"
        in caplog.messages
    )
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    summary = transport.client.xpending(transport.key(CLICKS, 0), transport.group)
    assert (summary["pending"], summary["min"].decode()) == (4, ids[1])


def test_ack_trims_packed_entries_up_to_the_committed_one() -> None:
    with redis_transport(1, entry_bytes=100) as t:  # 11 records of 9 bytes per entry
        t.producer().send_framed(CLICKS, 0, lines(0, 5500), 5500)
        ids = [i for i, _ in entries(t)]
        assert len(ids) == 500
        consumer = t.consumer()
        consumer.ack(CLICKS, 0, ids[300])
        remaining = [i for i, _ in entries(t)]
        assert len(remaining) < 500 and remaining[-200:] == ids[300:]
        chunk = consumer.poll(CLICKS, 0, ids[300], 1 << 20)
        assert chunk is not None and chunk.records == 199 * 11
        assert chunk.data.startswith(b"rec-3311\n")
        with pytest.raises(OffsetOutOfRangeError, match="was trimmed"):
            consumer.poll(CLICKS, 0, ids[0], 100)


def test_transport_url_packs_by_default_and_entry_bytes_sets_it(tmp_path: Path) -> None:
    with redis_prefix() as prefix:
        for query, expected in (("", ENTRY_BYTES), ("&entry_bytes=0", 0), ("&entry_bytes=9", 9)):
            url = f"{REDIS_URL}?prefix={prefix}{query}"
            transport = open_transport(Settings(home=tmp_path, transport_url=url, partitions=2))
            try:
                assert isinstance(transport, RedisStreamsTransport)
                assert transport.entry_bytes == expected
            finally:
                transport.close()
        url = f"{REDIS_URL}?prefix={prefix}&entry_bytes=lots"
        with pytest.raises(ValueError, match="entry_bytes='lots' is not a whole number"):
            open_transport(Settings(home=tmp_path, transport_url=url, partitions=2))


def test_lag_counts_the_records_of_packed_entries(transport: RedisStreamsTransport) -> None:
    transport.producer().send_framed(CLICKS, 0, lines(0, 12), 12)  # entries of 4, 4, 4
    ids = [i for i, _ in entries(transport)]
    consumer = transport.consumer()
    lag = consumer.lag(CLICKS, 0, None)
    assert (lag.bytes, lag.records) == (12 * 9, 12)
    assert consumer.lag(CLICKS, 0, ids[0]).records == 8
    assert consumer.lag(CLICKS, 0, ids[2]).records == 0
    transport.producer().send_framed(CLICKS, 0, lines(12, 14), 2)  # one entry of 2
    # Two entries after ids[1]: 4 and 2 records, counted as their mean, 3, twice.
    assert consumer.lag(CLICKS, 0, ids[1]).records == 6
    assert consumer.lag(CLICKS, 0, ids[2]).records == 2
