"""Consumer groups beneath the Redis Streams transport (a real server, tests/redistest.py).

What the processor relies on: ``poll(after=committed)`` returns exactly the entries after
the committed offset, whichever consumer read them before; acknowledgement follows the
commit; trimming removes nothing uncommitted. What Redis shows: the group, its pending
entry list (XPENDING), its consumers. And the defensive paths: a broken group falls back
to XRANGE (logged), never to a gap or a repeat.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from redistest import REDIS_URL, redis_prefix, redis_transport

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.transport import open_transport
from adpulse.transport.base import Consumer
from adpulse.transport.redis_streams import RedisStreamsTransport

CLICKS = Stream.CLICKS
MODULE = "adpulse.transport.redis_streams"


@pytest.fixture
def transport() -> Iterator[RedisStreamsTransport]:
    with redis_transport(2) as t:
        yield t


def produce(t: RedisStreamsTransport, records: int, partition: int = 0) -> list[str]:
    """``records`` entries ``rec-0000`` ... (9 bytes framed each); their ids."""
    t.producer().send_framed(CLICKS, partition, lines(0, records), records)
    return [i.decode() for i, _ in t.client.xrange(t.key(CLICKS, partition))]


def lines(start: int, stop: int) -> bytes:
    return b"".join(b"rec-%04d\n" % i for i in range(start, stop))


def read_all(
    consumer: Consumer, after: str | None, max_bytes: int, partition: int = 0
) -> list[tuple[str | None, str, bytes, int]]:
    chunks = []
    while (chunk := consumer.poll(CLICKS, partition, after, max_bytes)) is not None:
        chunks.append((chunk.start_offset, chunk.end_offset, chunk.data, chunk.records))
        after = chunk.end_offset
    return chunks


def pending(t: RedisStreamsTransport, partition: int = 0) -> dict[str, object]:
    """XPENDING summary, ids and names decoded."""
    summary = t.client.xpending(t.key(CLICKS, partition), t.group)
    return {
        "pending": summary["pending"],
        "min": summary["min"] and summary["min"].decode(),
        "max": summary["max"] and summary["max"].decode(),
        "consumers": {c["name"].decode(): c["pending"] for c in summary["consumers"]},
    }


def consumers(t: RedisStreamsTransport, partition: int = 0) -> dict[str, int]:
    return {
        c["name"].decode(): c["pending"]
        for c in t.client.xinfo_consumers(t.key(CLICKS, partition), t.group)
    }


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == MODULE and r.levelno >= 30]


def test_a_dead_consumers_entries_go_once_to_the_next_owner(
    transport: RedisStreamsTransport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=MODULE)
    ids = produce(transport, 10)
    dead = transport.consumer("worker-a")
    first = dead.poll(CLICKS, 0, None, 36)
    assert first is not None and (first.end_offset, first.data) == (ids[3], lines(0, 4))
    second = dead.poll(CLICKS, 0, ids[3], 36)
    assert second is not None and (second.end_offset, second.data) == (ids[7], lines(4, 8))
    # worker-a's warehouse committed up to ids[1]; then it died before acknowledging
    # anything: dropped, no ack, no close.
    del dead, first, second
    assert pending(transport) == {
        "pending": 8,
        "min": ids[0],
        "max": ids[7],
        "consumers": {"worker-a": 8},
    }

    heir = transport.consumer("worker-b")
    chunks = read_all(heir, ids[1], 1 << 20)
    # Exactly the entries after the committed offset, once, in order: worker-a's six
    # pending ones re-delivered first, then the two never delivered.
    assert chunks == [(ids[1], ids[9], lines(2, 10), 8)]
    assert (
        f"clicks partition 0: consumer worker-b took over 6 pending entries after {ids[1]}"
        in caplog.messages
    )
    assert warnings(caplog) == []  # through the group, no XRANGE fallback
    # The committed entries' lost acks were made up for; the dead consumer is gone.
    assert pending(transport) == {
        "pending": 8,
        "min": ids[2],
        "max": ids[9],
        "consumers": {"worker-b": 8},
    }
    assert consumers(transport) == {"worker-b": 8}
    heir.ack(CLICKS, 0, ids[9])
    assert pending(transport)["pending"] == 0


def test_after_commit_and_ack_nothing_is_pending_up_to_the_committed_id(
    transport: RedisStreamsTransport,
) -> None:
    ids = produce(transport, 10)
    consumer = transport.consumer("worker")
    chunks = read_all(consumer, None, 27)
    assert [(c[1], c[3]) for c in chunks] == [(ids[2], 3), (ids[5], 3), (ids[8], 3), (ids[9], 1)]
    assert consumer.committed(CLICKS, 0) is None
    consumer.ack(CLICKS, 0, ids[5])
    key = transport.key(CLICKS, 0)
    assert transport.client.xpending_range(key, transport.group, "-", ids[5], 100) == []
    assert pending(transport) == {
        "pending": 4,
        "min": ids[6],
        "max": ids[9],
        "consumers": {"worker": 4},
    }
    assert consumer.committed(CLICKS, 0) == ids[5]
    assert transport.client.hgetall(transport.committed_key) == {
        b"adpulse:clicks:0": ids[5].encode()
    }
    consumer.ack(CLICKS, 0, ids[9])
    assert pending(transport) == {"pending": 0, "min": None, "max": None, "consumers": {}}
    assert consumer.committed(CLICKS, 0) == ids[9]


def test_xinfo_groups_shows_the_group(transport: RedisStreamsTransport) -> None:
    ids = produce(transport, 10)
    key = transport.key(CLICKS, 0)
    assert transport.client.xinfo_groups(key) == []  # created by the first poll
    consumer = transport.consumer("worker")
    assert read_all(consumer, None, 1 << 20) == [(None, ids[9], lines(0, 10), 10)]
    consumer.ack(CLICKS, 0, ids[9])
    assert transport.client.xinfo_groups(key) == [
        {
            "name": b"adpulse",
            "consumers": 1,
            "pending": 0,
            "last-delivered-id": ids[9].encode(),
            "entries-read": 10,
            "lag": 0,
        }
    ]
    assert consumers(transport) == {"worker": 0}
    # A clean close leaves the group of each partition read with nothing pending.
    consumer.close()
    assert consumers(transport) == {}
    assert transport.client.exists(transport.key(CLICKS, 1)) == 0  # never read: no group


def test_close_keeps_a_consumer_that_still_holds_entries(transport: RedisStreamsTransport) -> None:
    ids = produce(transport, 4)
    consumer = transport.consumer("worker")
    assert read_all(consumer, None, 1 << 20) == [(None, ids[3], lines(0, 4), 4)]
    consumer.ack(CLICKS, 0, ids[1])
    consumer.close()
    assert consumers(transport) == {"worker": 2}  # for the next owner to claim


def test_group_and_consumer_names(tmp_path: Path) -> None:
    with redis_prefix() as prefix:
        # One record per entry (entry_bytes=0), as the assertions below count entries.
        url = f"{REDIS_URL}?prefix={prefix}&group=analytics&entry_bytes=0"
        transport = open_transport(Settings(home=tmp_path, transport_url=url, partitions=2))
        try:
            assert isinstance(transport, RedisStreamsTransport)
            assert (transport.prefix, transport.group) == (prefix, "analytics")
            ids = produce(transport, 3)
            one, two = transport.consumer(), transport.consumer()
            assert re.fullmatch(rf"[^:]+:{os.getpid()}:[0-9a-f]{{8}}", one.name)
            assert one.name != two.name
            assert read_all(one, None, 1 << 20) == [(None, ids[2], lines(0, 3), 3)]
            (group,) = transport.client.xinfo_groups(transport.key(CLICKS, 0))
            assert (group["name"], group["pending"]) == (b"analytics", 3)
            assert consumers(transport) == {one.name: 3}
        finally:
            transport.close()
        with pytest.raises(ValueError, match="consumer group name must not be empty"):
            RedisStreamsTransport(REDIS_URL, 2, prefix=prefix, group="")


def test_trimming_waits_for_a_lagging_second_group_and_other_partitions() -> None:
    with redis_prefix() as prefix:
        main = RedisStreamsTransport(REDIS_URL, 2, prefix=prefix)
        archive = RedisStreamsTransport(REDIS_URL, 2, prefix=prefix, group="archive")
        try:
            ids = produce(main, 5000)
            other = produce(main, 50, partition=1)
            leader = main.consumer("main-1")
            assert read_all(leader, None, 1 << 20)[-1][1] == ids[4999]
            # The second pipeline (group "archive") read 2000 entries, committed 1000.
            lagging = archive.consumer("archive-1")
            chunk = lagging.poll(CLICKS, 0, None, 18_000)
            assert chunk is not None and (chunk.records, chunk.end_offset) == (2000, ids[1999])
            lagging.ack(CLICKS, 0, ids[999])
            # main has committed nothing yet: its pending entries hold everything.
            assert main.client.xlen(main.key(CLICKS, 0)) == 5000

            leader.ack(CLICKS, 0, ids[4999])
            remaining = [i.decode() for i, _ in main.client.xrange(main.key(CLICKS, 0))]
            # Trimmed below archive's committed entry (whole nodes: some just below it
            # may stay), nothing from it on, although main committed everything.
            assert len(remaining) < 5000
            assert remaining[-4001:] == ids[999:]
            # Partition 1, never read or committed by anyone, is untouched.
            assert [i.decode() for i, _ in main.client.xrange(main.key(CLICKS, 1))] == other

            # archive's next owner resumes at its committed offset, nothing missing.
            heir = archive.consumer("archive-2")
            chunks = read_all(heir, ids[999], 1 << 20)
            assert b"".join(c[2] for c in chunks) == lines(1000, 5000)
            assert (chunks[0][0], chunks[-1][1], sum(c[3] for c in chunks)) == (
                ids[999],
                ids[4999],
                4000,
            )
            heir.ack(CLICKS, 0, ids[4999])
            remaining = [i.decode() for i, _ in main.client.xrange(main.key(CLICKS, 0))]
            assert len(remaining) < 1000 and remaining[-1] == ids[4999]
        finally:
            main.close()
            archive.close()


def test_entries_acknowledged_without_commit_fall_back_to_xrange(
    transport: RedisStreamsTransport, caplog: pytest.LogCaptureFixture
) -> None:
    ids = produce(transport, 10)
    dead = transport.consumer("worker-a")
    chunk = dead.poll(CLICKS, 0, None, 54)
    assert chunk is not None and chunk.end_offset == ids[5]
    # Broken invariant: ids[3] acknowledged although only ids[1] was committed.
    transport.client.xack(transport.key(CLICKS, 0), transport.group, ids[3])
    heir = transport.consumer("worker-b")
    # The re-delivery (ids 2, 4, 5) has a hole: XRANGE from the committed offset instead.
    assert read_all(heir, ids[1], 1 << 20) == [(ids[1], ids[9], lines(2, 10), 8)]
    (message,) = warnings(caplog)
    assert message.startswith(
        f"clicks partition 0: the re-delivered entries of consumer group 'adpulse' did not "
        f"continue at {ids[1]}"
    )
    assert transport.client.xinfo_groups(transport.key(CLICKS, 0))[0]["last-delivered-id"] == (
        ids[9].encode()
    )
    heir.ack(CLICKS, 0, ids[9])
    assert pending(transport)["pending"] == 0


def test_entries_taken_by_another_consumer_fall_back_to_xrange(
    transport: RedisStreamsTransport, caplog: pytest.LogCaptureFixture
) -> None:
    ids = produce(transport, 10)
    owner = transport.consumer("owner")
    chunk = owner.poll(CLICKS, 0, None, 45)
    assert chunk is not None and chunk.end_offset == ids[4]
    # A consumer outside the lease protocol takes the next two new entries.
    key = transport.key(CLICKS, 0)
    stolen = transport.client.xreadgroup(transport.group, "rogue", {key: ">"}, count=2)
    assert [i.decode() for i, _ in stolen[0][1]] == ids[5:7]
    assert read_all(owner, ids[4], 1 << 20) == [(ids[4], ids[9], lines(5, 10), 5)]
    (message,) = warnings(caplog)
    assert message.startswith(
        f"clicks partition 0: the new entries of consumer group 'adpulse' did not continue at "
        f"{ids[4]}"
    )
    # Back in step: nothing repeated, nothing new.
    assert owner.poll(CLICKS, 0, ids[9], 1 << 20) is None
    owner.ack(CLICKS, 0, ids[9])
    assert pending(transport)["pending"] == 0


def test_a_missing_group_is_created_at_the_committed_offset(
    transport: RedisStreamsTransport, caplog: pytest.LogCaptureFixture
) -> None:
    ids = produce(transport, 10)
    consumer = transport.consumer("worker")
    assert read_all(consumer, ids[5], 1 << 20) == [(ids[5], ids[9], lines(6, 10), 4)]
    assert warnings(caplog) == []  # nothing up to the offset was delivered again
    (group,) = transport.client.xinfo_groups(transport.key(CLICKS, 0))
    assert (group["name"], group["pending"], group["last-delivered-id"]) == (
        b"adpulse",
        4,
        ids[9].encode(),
    )


def test_a_group_behind_the_committed_offset_is_moved_up(
    transport: RedisStreamsTransport, caplog: pytest.LogCaptureFixture
) -> None:
    ids = produce(transport, 10)
    key = transport.key(CLICKS, 0)
    transport.client.xgroup_create(key, transport.group, id="0")  # e.g. recreated by hand
    consumer = transport.consumer("worker")
    assert read_all(consumer, ids[5], 1 << 20) == [(ids[5], ids[9], lines(6, 10), 4)]
    assert warnings(caplog) == []  # moved up with SETID, not repaired by a fallback
    assert pending(transport) == {
        "pending": 4,
        "min": ids[6],
        "max": ids[9],
        "consumers": {"worker": 4},
    }


def test_a_group_destroyed_while_reading_is_created_again(
    transport: RedisStreamsTransport, caplog: pytest.LogCaptureFixture
) -> None:
    ids = produce(transport, 10)
    key = transport.key(CLICKS, 0)
    consumer = transport.consumer("worker")
    chunk = consumer.poll(CLICKS, 0, None, 45)
    assert chunk is not None and chunk.end_offset == ids[4]
    transport.client.xgroup_destroy(key, transport.group)
    assert read_all(consumer, ids[4], 1 << 20) == [(ids[4], ids[9], lines(5, 10), 5)]
    (message,) = warnings(caplog)
    assert message == (
        f"clicks partition 0: consumer group 'adpulse' of {key} vanished; created it again at "
        f"{ids[4]}"
    )
    assert pending(transport)["consumers"] == {"worker": 5}


def test_a_budget_smaller_than_a_read_keeps_the_rest_for_the_next_poll(
    transport: RedisStreamsTransport,
) -> None:
    ids = produce(transport, 10)
    consumer = transport.consumer("worker")
    assert [(c[1], c[2]) for c in read_all(consumer, None, 1 << 20)] == [(ids[9], lines(0, 10))]
    # A fresh consumer guesses 128-byte entries; a budget of 20 takes 2 per poll, and
    # entries read beyond it are handed out by the next polls, not lost nor read twice.
    fresh = transport.consumer("fresh")
    chunks = read_all(fresh, None, 20)
    assert [c[2] for c in chunks] == [lines(i, i + 2) for i in range(0, 10, 2)]
    assert [c[1] for c in chunks] == ids[1::2]


def test_producer_batches_keep_order_across_script_calls(transport: RedisStreamsTransport) -> None:
    # 12,001 small lines: script calls of 5000, 5000 and 2001 entries, one round trip.
    transport.producer().send_framed(CLICKS, 0, lines(0, 12_001), 12_001)
    # Three 3 MB lines: the 8 MB cap per call splits them 2 + 1.
    big = [bytes([65 + i]) * (3 << 20) for i in range(3)]
    transport.producer().send_framed(CLICKS, 1, b"".join(b + b"\n" for b in big), 3)
    assert transport.client.xlen(transport.key(CLICKS, 0)) == 12_001
    chunks = read_all(transport.consumer(), None, 1 << 20)
    assert b"".join(c[2] for c in chunks) == lines(0, 12_001)
    stored = [f[b"r"] for _, f in transport.client.xrange(transport.key(CLICKS, 1))]
    assert stored == big


def test_a_large_backlog_is_acknowledged_in_bounded_script_calls(
    transport: RedisStreamsTransport,
) -> None:
    # 25,000 pending entries: more than one script call acks (20,000 per call at most,
    # so that the server is never blocked long), and all of them are acked.
    ids = produce(transport, 25_000)
    consumer = transport.consumer("worker")
    assert sum(c[3] for c in read_all(consumer, None, 1 << 20)) == 25_000
    assert pending(transport)["pending"] == 25_000
    assert transport.acknowledge(CLICKS, 0, ids[-1], finish=True) == 25_000
    assert pending(transport)["pending"] == 0
    assert consumer.committed(CLICKS, 0) == ids[-1]
