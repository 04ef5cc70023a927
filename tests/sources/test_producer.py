"""Publishing to a transport: partition by user id, replay a directory."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from adpulse.contracts import Stream
from adpulse.sources.files import iter_stream_files, write_dataset
from adpulse.sources.generator import EventGenerator, GeneratorConfig
from adpulse.sources.producer import publish, replay_directory, user_ids
from adpulse.transport.base import Producer
from adpulse.transport.framing import partition_of, split_lines, unframe_line
from adpulse.transport.memory import InMemoryTransport

START = datetime(2023, 9, 9, 8)
END = datetime(2023, 9, 9, 14)
CONFIG = GeneratorConfig(ads=40, campaigns=8, users=1_000, malformed_rate=0.02)


def _read_all(transport: InMemoryTransport, stream: Stream) -> dict[int, list[bytes]]:
    consumer = transport.consumer()
    out: dict[int, list[bytes]] = {}
    for partition in range(transport.partitions):
        records: list[bytes] = []
        after = None
        while (chunk := consumer.poll(stream, partition, after, 1 << 20)) is not None:
            records += [unframe_line(line)[0] for line in split_lines(chunk.data)]
            after = chunk.end_offset
        out[partition] = records
    return out


def _key(payload: bytes) -> str | None:
    """The user id a record is partitioned by, read independently."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    value = doc.get("user_id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


@pytest.mark.parametrize("partitions", [1, 4, 7])
def test_publish_puts_each_record_in_the_partition_of_its_user(partitions: int) -> None:
    events = EventGenerator(CONFIG).generate(8_000, START, END)
    transport = InMemoryTransport(partitions)
    for stream in Stream:
        payloads = events.records[stream]
        sent = publish(transport.producer(), stream, payloads, partitions)
        got = _read_all(transport, stream)
        assert sum(sent.values()) == len(payloads)
        assert {p: len(r) for p, r in got.items() if r} == sent
        # Each partition holds exactly its users' records, in their order (an oversized
        # record is stored as its head).
        for partition, records in got.items():
            mine = [p for p in payloads if partition_of(_key(p), partitions) == partition]
            assert [r[:4096] for r in records] == [p[:4096] for p in mine]


def test_user_ids_fall_back_to_one_by_one_only_for_a_broken_batch() -> None:
    good = [
        b'{"ad_id": 1001, "user_id": "U1234"}',
        b'{"ad_id": 1002}',
        b'{"ad_id": 1003, "user_id": null}',
        b'{"ad_id": 1003, "user_id": {"id": "U5678"}}',
        b'{"ad_id": 1003, "user_id": 9101}',
    ]
    expected = ["U1234", None, None, None, "9101"]
    assert user_ids(good).to_list() == expected
    broken = [*good, b"", b'{"user_id": "U1', b"[1]", b'{"user_id": "U\n1"}', b"\xff"]
    assert user_ids(broken).to_list() == [*expected, None, None, None, None, None]


class RecordingProducer(Producer):
    """Keeps every send_framed call."""

    partitions = 2
    max_record_bytes = 64 * 1024

    def __init__(self) -> None:
        self.calls: list[tuple[Stream, int, bytes, int]] = []
        self.flushed = 0

    def _append(self, stream: Stream, partition: int, framed: bytes) -> None:
        raise AssertionError("replay uses send_framed")

    def send(self, stream: Stream, payloads: Sequence[bytes], keys: Sequence[str | None]) -> None:
        raise AssertionError("replay uses send_framed")

    def send_framed(self, stream: Stream, partition: int, framed: bytes, records: int) -> None:
        assert framed.count(b"\n") == records
        self.calls.append((stream, partition, framed, records))

    def flush(self) -> None:
        self.flushed += 1


def test_replay_sends_every_line_and_advances_the_streams_together(tmp_path: Path) -> None:
    summary = write_dataset(tmp_path, EventGenerator(CONFIG), 30_000, START, END)
    producer = RecordingProducer()
    progress: list[tuple[int, int]] = []
    sent = replay_directory(
        tmp_path,
        producer,
        3,
        on_progress=lambda records, read: progress.append((records, read)),
        chunk_bytes=64 * 1024,
    )
    assert sent == {Stream(s): n for s, n in summary["lines"].items()}
    # Records sent and bytes of the files read, both rising to their totals.
    files = sum(p.stat().st_size for p in iter_stream_files(tmp_path).values())
    assert progress[-1] == (sum(sent.values()), files)
    assert progress == sorted(progress)
    assert len({read for _, read in progress}) > 10
    assert producer.flushed == 1
    order = [stream for stream, *_ in producer.calls]
    # Interleaved: clicks and conversions start before the impressions are done.
    last_impressions = max(i for i, s in enumerate(order) if s is Stream.IMPRESSIONS)
    for stream in (Stream.CLICKS, Stream.CONVERSIONS):
        first = order.index(stream)
        assert first < last_impressions / 4
    transport = InMemoryTransport(3)
    replay_directory(tmp_path, transport.producer(), 3)
    for stream in Stream:
        records = [r for rs in _read_all(transport, stream).values() for r in rs]
        assert len(records) == summary["lines"][stream.value]


def test_replay_throttles_to_the_rate(tmp_path: Path) -> None:
    write_dataset(tmp_path, EventGenerator(CONFIG), 3_000, START, END)
    clock = [100.0]
    producer = RecordingProducer()
    sent = replay_directory(
        tmp_path,
        producer,
        2,
        rate=500.0,
        clock=lambda: clock[0],
        sleep=lambda s: clock.__setitem__(0, clock[0] + s),
    )
    total = sum(sent.values())
    # Sends take no time on this clock: the replay lasts exactly total / rate.
    assert clock[0] - 100.0 == pytest.approx(total / 500.0, abs=1e-9)
    # Sent in slices of at most 0.05 s of records at that rate.
    assert max(records for *_, records in producer.calls) <= 25


def test_replay_of_a_directory_without_stream_files_says_what_it_expects(
    tmp_path: Path,
) -> None:
    with pytest.raises(FileNotFoundError, match=r"impressions\.jsonl"):
        replay_directory(tmp_path, RecordingProducer(), 2)


@pytest.mark.parametrize("malformed", [True, False])
def test_a_few_records_go_to_the_same_partitions_as_a_large_batch(malformed: bool) -> None:
    """Small batches (the collector's pixel and click) hash key by key, large ones as a
    Polars column: every record lands in the same partition either way (``malformed``:
    the large batch reads its ids one by one too; else in one vectorized decode)."""
    odd = [
        b'{"user_id": 123}',
        b'{"user_id": 1.5}',
        b'{"user_id": true}',
        b'{"user_id": null}',
        b'{"user_id": {"a": 1}}',
        b'{"user_id": "[x"}',
        b"not json",
        b"[1, 2]",
        b'{"ad_id": 1}',
    ]
    if not malformed:
        odd = [b'{"user_id": 123}', b'{"user_id": 77.0}', b'{"user_id": null}', b'{"a": 1}']
    payloads = odd + [orjson.dumps({"user_id": f"user-{i}"}) for i in range(1100)]
    together, one_by_one = InMemoryTransport(5), InMemoryTransport(5)
    publish(together.producer(), Stream.CLICKS, payloads, 5)
    single = one_by_one.producer()
    for payload in payloads:
        publish(single, Stream.CLICKS, [payload], 5)
    assert _read_all(one_by_one, Stream.CLICKS) == _read_all(together, Stream.CLICKS)
    assert sorted(p for ps in _read_all(together, Stream.CLICKS).values() for p in ps) == sorted(
        payloads
    )
