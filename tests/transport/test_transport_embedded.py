"""The embedded on-disk log: layout, crash safety, segments, concurrency, retention."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.transport import (
    EmbeddedTransport,
    InMemoryTransport,
    OffsetOutOfRangeError,
    open_transport,
)
from adpulse.transport.embedded import count_lines, list_segments, segment_name


def lines(first: int, count: int) -> bytes:
    """``count`` 10-byte lines numbered from ``first``."""
    return b"".join(b"%09d\n" % i for i in range(first, first + count))


def segment_path(log_dir: Path, stream: str, partition: int, base: int) -> Path:
    return log_dir / stream / f"{partition:04d}" / segment_name(base)


def test_layout_meta_and_segment_contents(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    transport = EmbeddedTransport(log_dir, 3)
    producer = transport.producer()
    producer.send_framed(Stream.CLICKS, 2, lines(0, 3), 3)
    producer.send(Stream.CONVERSIONS, [b'{"a":1}', b"x\ny"], ["user_2", "user_2"])  # -> 1
    producer.close()

    assert json.loads((log_dir / "meta.json").read_text()) == {
        "format": "adpulse-embedded-log/1",
        "partitions": 3,
    }
    assert segment_path(log_dir, "clicks", 2, 0).read_bytes() == lines(0, 3)
    assert segment_path(log_dir, "conversions", 1, 0).read_bytes() == (b'{"a":1}\n\x00AngKeQ==\n')
    assert sorted(p.name for p in (log_dir / "clicks" / "0002").iterdir()) == [
        ".lock",
        "00000000000000000000.log",
        "00000000000000000000.times",  # its append times (the lag's age)
    ]
    assert sorted(p.name for p in log_dir.iterdir()) == ["clicks", "conversions", "meta.json"]
    transport.close()


def test_partition_count_mismatch_is_refused(tmp_path: Path) -> None:
    EmbeddedTransport(tmp_path / "log", 4).close()
    with pytest.raises(ValueError) as error:
        EmbeddedTransport(tmp_path / "log", 8)
    message = str(error.value)
    assert "has 4 partitions per stream, but 8 were requested" in message
    assert "set `partitions` (ADPULSE_PARTITIONS) back to 4" in message
    assert "embedded://NEW_DIR" in message
    # The same count reopens fine.
    EmbeddedTransport(tmp_path / "log", 4).close()


def test_corrupt_meta_is_refused(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a valid embedded-log metadata file"):
        EmbeddedTransport(tmp_path / "log", 4)


def test_poll_never_returns_a_partial_line(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path / "log", 1)
    transport.producer().send_framed(Stream.CLICKS, 0, lines(0, 2), 2)
    segment = segment_path(tmp_path / "log", "clicks", 0, 0)
    with segment.open("ab") as f:  # a writer in the middle of its write
        f.write(b'{"half":')
    consumer = transport.consumer()

    chunk = consumer.poll(Stream.CLICKS, 0, None, 1000)
    assert chunk is not None
    assert (chunk.data, chunk.records, chunk.end_offset) == (lines(0, 2), 2, "20")
    assert consumer.poll(Stream.CLICKS, 0, "20", 1000) is None
    assert consumer.lag_bytes(Stream.CLICKS, 0, "20") == 8  # written, not yet readable

    with segment.open("ab") as f:  # the writer finishes
        f.write(b'"line"}\n')
    chunk = consumer.poll(Stream.CLICKS, 0, "20", 1000)
    assert chunk is not None
    assert (chunk.data, chunk.records, chunk.end_offset) == (b'{"half":"line"}\n', 1, "36")
    transport.close()


def test_a_long_line_being_written_is_not_returned(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path / "log", 1)
    transport.producer().send_framed(Stream.CLICKS, 0, b"a\n", 1)
    segment = segment_path(tmp_path / "log", "clicks", 0, 0)
    with segment.open("ab") as f:
        f.write(b"z" * 150_000)  # longer than max_bytes, no newline yet
    consumer = transport.consumer()
    chunk = consumer.poll(Stream.CLICKS, 0, None, 100)
    assert chunk is not None
    assert (chunk.data, chunk.end_offset) == (b"a\n", "2")
    assert consumer.poll(Stream.CLICKS, 0, "2", 100) is None
    with segment.open("ab") as f:
        f.write(b"\nb\n")
    chunk = consumer.poll(Stream.CLICKS, 0, "2", 100)
    assert chunk is not None
    assert (chunk.data, chunk.records, chunk.end_offset) == (b"z" * 150_000 + b"\n", 1, "150003")
    transport.close()


@pytest.mark.parametrize("size", [0, 1, 65_535, 65_536, 1_048_576, 3_000_001])
def test_count_lines_matches_bytes_count(size: int) -> None:
    data = (np.arange(size, dtype=np.int64) * 7919 % 251).astype(np.uint8).tobytes()
    assert count_lines(data) == data.count(b"\n")


def test_torn_tail_is_repaired_before_the_next_append(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log_dir = tmp_path / "log"
    first = EmbeddedTransport(log_dir, 1)
    first.producer().send_framed(Stream.CLICKS, 0, lines(0, 3), 3)
    first.close()
    segment = segment_path(log_dir, "clicks", 0, 0)
    with segment.open("ab") as f:  # a producer killed mid-write
        f.write(b'{"torn":tru')

    reopened = EmbeddedTransport(log_dir, 1)
    with caplog.at_level(logging.WARNING, logger="adpulse.transport.embedded"):
        reopened.producer().send_framed(Stream.CLICKS, 0, lines(3, 1), 1)
    assert segment.read_bytes() == lines(0, 4)
    assert "removed an incomplete last record (11 bytes at offset 30)" in caplog.text
    chunk = reopened.consumer().poll(Stream.CLICKS, 0, None, 1000)
    assert chunk is not None
    assert (chunk.data, chunk.records, chunk.end_offset) == (lines(0, 4), 4, "40")
    reopened.close()


def test_torn_tail_left_by_another_producer_while_open(tmp_path: Path) -> None:
    # The repair runs before every append, not only the first after opening.
    transport = EmbeddedTransport(tmp_path / "log", 1)
    producer = transport.producer()
    producer.send_framed(Stream.CLICKS, 0, lines(0, 1), 1)
    segment = segment_path(tmp_path / "log", "clicks", 0, 0)
    with segment.open("ab") as f:
        f.write(b"x" * 70_000)  # longer than one backward scan step, no newline
    producer.send_framed(Stream.CLICKS, 0, lines(1, 1), 1)
    assert segment.read_bytes() == lines(0, 2)
    transport.close()


def test_torn_segment_without_any_newline_is_emptied(tmp_path: Path) -> None:
    partition_dir = tmp_path / "log" / "clicks" / "0000"
    partition_dir.mkdir(parents=True)
    EmbeddedTransport(tmp_path / "log", 1).close()
    (partition_dir / segment_name(0)).write_bytes(b'{"only partial')
    transport = EmbeddedTransport(tmp_path / "log", 1)
    assert transport.consumer().poll(Stream.CLICKS, 0, None, 100) is None
    transport.producer().send_framed(Stream.CLICKS, 0, lines(0, 1), 1)
    assert (partition_dir / segment_name(0)).read_bytes() == lines(0, 1)
    transport.close()


def test_resume_from_an_offset_after_reopening(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    transport = EmbeddedTransport(log_dir, 2)
    transport.producer().send_framed(Stream.IMPRESSIONS, 1, lines(0, 10), 10)
    chunk = transport.consumer().poll(Stream.IMPRESSIONS, 1, None, 35)
    assert chunk is not None
    assert (chunk.records, chunk.end_offset) == (3, "30")
    transport.close()

    reopened = EmbeddedTransport(log_dir, 2)
    reopened.producer().send_framed(Stream.IMPRESSIONS, 1, lines(10, 2), 2)
    chunk = reopened.consumer().poll(Stream.IMPRESSIONS, 1, "30", 1 << 20)
    assert chunk is not None
    assert (chunk.start_offset, chunk.data, chunk.records, chunk.end_offset) == (
        "30",
        lines(3, 9),
        9,
        "120",
    )
    reopened.close()


def test_segments_roll_and_reads_cross_them(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    transport = EmbeddedTransport(log_dir, 1, segment_bytes=100)
    producer = transport.producer()
    for i in range(0, 30, 3):  # ten appends of 30 bytes
        producer.send_framed(Stream.CLICKS, 0, lines(i, 3), 3)
    producer.send_framed(Stream.CLICKS, 0, lines(30, 15), 15)  # 150 bytes: a segment alone
    producer.send_framed(Stream.CLICKS, 0, lines(45, 1), 1)

    directory = log_dir / "clicks" / "0000"
    assert list_segments(directory) == [0, 90, 180, 270, 300, 450]
    assert (directory / segment_name(0)).read_bytes() == lines(0, 9)
    assert (directory / segment_name(270)).read_bytes() == lines(27, 3)
    assert (directory / segment_name(300)).read_bytes() == lines(30, 15)
    assert (directory / segment_name(450)).read_bytes() == lines(45, 1)

    consumer = transport.consumer()
    chunk = consumer.poll(Stream.CLICKS, 0, None, 1 << 20)
    assert chunk is not None
    assert (chunk.data, chunk.records, chunk.end_offset) == (lines(0, 46), 46, "460")

    # Small polls land exactly on segment ends and continue in the next segment.
    ends = []
    after: str | None = None
    while (chunk := consumer.poll(Stream.CLICKS, 0, after, 55)) is not None:
        ends.append(chunk.end_offset)
        after = chunk.end_offset
    assert ends == ["50", "100", "150", "200", "250", "300", "350", "400", "450", "460"]
    assert consumer.lag_bytes(Stream.CLICKS, 0, "85") == 375
    assert consumer.lag_bytes(Stream.CLICKS, 0, None) == 460
    transport.close()


def test_reader_follows_rolls_made_by_another_instance(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    reader_side = EmbeddedTransport(log_dir, 1)
    writer_side = EmbeddedTransport(log_dir, 1, segment_bytes=20)
    producer = writer_side.producer()
    consumer = reader_side.consumer()

    producer.send_framed(Stream.CLICKS, 0, lines(0, 2), 2)
    chunk = consumer.poll(Stream.CLICKS, 0, None, 1000)
    assert chunk is not None
    assert chunk.end_offset == "20"
    assert consumer.poll(Stream.CLICKS, 0, "20", 1000) is None
    for i in range(2, 8, 2):
        producer.send_framed(Stream.CLICKS, 0, lines(i, 2), 2)
    assert list_segments(log_dir / "clicks" / "0000") == [0, 20, 40, 60]
    chunk = consumer.poll(Stream.CLICKS, 0, "20", 1000)
    assert chunk is not None
    assert (chunk.data, chunk.end_offset) == (lines(2, 6), "80")
    reader_side.close()
    writer_side.close()


def test_writer_follows_rolls_made_by_another_writer(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    big = EmbeddedTransport(log_dir, 1).producer()
    small = EmbeddedTransport(log_dir, 1, segment_bytes=10).producer()
    big.send_framed(Stream.CLICKS, 0, lines(0, 1), 1)
    small.send_framed(Stream.CLICKS, 0, lines(1, 1), 1)  # rolls to segment 10
    small.send_framed(Stream.CLICKS, 0, lines(2, 1), 1)  # rolls to segment 20
    big.send_framed(Stream.CLICKS, 0, lines(3, 2), 2)  # must land in segment 20
    directory = log_dir / "clicks" / "0000"
    assert list_segments(directory) == [0, 10, 20]
    assert (directory / segment_name(20)).read_bytes() == lines(2, 3)
    big.close()
    small.close()


def _append_from_process(log_dir: str, writer: int, appends: int, start: Any) -> None:
    """Child process: appends 1-4 lines at a time, of varying lengths."""
    transport = EmbeddedTransport(Path(log_dir), 2, segment_bytes=64 * 1024)
    producer = transport.producer()
    start.wait()
    n = 0
    for i in range(appends):
        batch = []
        for _ in range(1 + i % 4):
            pad = "x" * ((n * 37) % 300)
            batch.append(f'{{"w":{writer},"n":{n},"pad":"{pad}"}}\n'.encode())
            n += 1
        producer.send_framed(Stream.CLICKS, 1, b"".join(batch), len(batch))
    transport.close()


def test_two_producer_processes_interleave_whole_lines(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    EmbeddedTransport(log_dir, 2).close()
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)  # both children ready before either appends
    appends = 6000  # 15,000 lines each (1+2+3+4 lines per 4 appends)
    workers = [
        context.Process(target=_append_from_process, args=(str(log_dir), w, appends, start))
        for w in (1, 2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0

    transport = EmbeddedTransport(log_dir, 2)
    chunk = transport.consumer().poll(Stream.CLICKS, 1, None, 1 << 30)
    assert chunk is not None
    records = [json.loads(line) for line in chunk.data.splitlines()]
    assert chunk.records == len(records) == 30_000
    for writer in (1, 2):
        mine = [r for r in records if r["w"] == writer]
        # No line lost, none torn, each writer's lines in its own order.
        assert [r["n"] for r in mine] == list(range(15_000))
        assert [len(r["pad"]) for r in mine] == [(n * 37) % 300 for n in range(15_000)]
    # They really did run concurrently and roll segments while contending.
    switches = sum(1 for a, b in zip(records, records[1:], strict=False) if a["w"] != b["w"])
    assert switches > 1
    assert len(list_segments(log_dir / "clicks" / "0001")) > 10
    assert chunk.end_offset == str(len(chunk.data))
    transport.close()


def test_ack_applies_retention_bytes(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    transport = EmbeddedTransport(log_dir, 1, segment_bytes=20, retention_bytes=25)
    producer = transport.producer()
    for i in range(0, 10, 2):
        producer.send_framed(Stream.CLICKS, 0, lines(i, 2), 2)
    directory = log_dir / "clicks" / "0000"
    assert list_segments(directory) == [0, 20, 40, 60, 80]
    consumer = transport.consumer()

    consumer.ack(Stream.CLICKS, 0, "20")  # keeps everything from offset -5
    assert list_segments(directory) == [0, 20, 40, 60, 80]
    consumer.ack(Stream.CLICKS, 0, "70")  # keeps from 45: segments 0 and 20 go
    assert list_segments(directory) == [40, 60, 80]
    consumer.ack(Stream.CLICKS, 0, "200")  # the last segment always stays
    assert list_segments(directory) == [80]

    with pytest.raises(OffsetOutOfRangeError, match="log now starts at offset 80"):
        consumer.poll(Stream.CLICKS, 0, "60", 1000)
    chunk = consumer.poll(Stream.CLICKS, 0, None, 1000)
    assert chunk is not None
    assert (chunk.data, chunk.end_offset) == (lines(8, 2), "100")
    transport.close()


def test_no_retention_by_default(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path / "log", 1, segment_bytes=10)
    producer = transport.producer()
    for i in range(3):
        producer.send_framed(Stream.CLICKS, 0, lines(i, 1), 1)
    transport.consumer().ack(Stream.CLICKS, 0, "30")
    assert list_segments(tmp_path / "log" / "clicks" / "0000") == [0, 10, 20]
    transport.close()


def test_retention_in_another_process_is_detected_by_a_cached_reader(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    transport = EmbeddedTransport(log_dir, 1, segment_bytes=10)
    producer = transport.producer()
    for i in range(4):
        producer.send_framed(Stream.CLICKS, 0, lines(i, 1), 1)
    consumer = transport.consumer()
    chunk = consumer.poll(Stream.CLICKS, 0, None, 10)
    assert chunk is not None
    assert chunk.end_offset == "10"

    other = EmbeddedTransport(log_dir, 1)
    assert other.truncate_before(Stream.CLICKS, 0, "30") == "30"
    with pytest.raises(OffsetOutOfRangeError, match="log now starts at offset 30"):
        consumer.poll(Stream.CLICKS, 0, "10", 10)
    other.close()
    transport.close()


def test_writer_whose_segment_was_deleted_appends_to_the_real_end(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    old = EmbeddedTransport(log_dir, 1).producer()
    old.send_framed(Stream.CLICKS, 0, lines(0, 1), 1)  # holds segment 0 open
    rolling = EmbeddedTransport(log_dir, 1, segment_bytes=10)
    for i in range(1, 4):
        rolling.producer().send_framed(Stream.CLICKS, 0, lines(i, 1), 1)
    assert rolling.truncate_before(Stream.CLICKS, 0, "30") == "30"
    old.send_framed(Stream.CLICKS, 0, lines(4, 1), 1)
    directory = log_dir / "clicks" / "0000"
    assert list_segments(directory) == [30]
    assert (directory / segment_name(30)).read_bytes() == lines(3, 2)
    old.close()
    rolling.close()


def test_fsync_mode_round_trip(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path / "log", 2, fsync=True, segment_bytes=15)
    producer = transport.producer()
    producer.send(Stream.CLICKS, [b'{"i":1}', b'{"i":2}', b'{"i":3}'], ["u", "u", "u"])
    producer.send(Stream.CLICKS, [b'{"i":4}'], ["u"])
    producer.flush()
    partition = 0 if (tmp_path / "log" / "clicks" / "0000").exists() else 1
    chunk = transport.consumer().poll(Stream.CLICKS, partition, None, 1000)
    assert chunk is not None
    assert (chunk.data, chunk.records) == (b'{"i":1}\n{"i":2}\n{"i":3}\n{"i":4}\n', 4)
    assert list_segments(tmp_path / "log" / "clicks" / f"{partition:04d}") == [0, 24]
    transport.close()


def test_flush_in_two_syncs_what_was_sent_before_its_first_half(tmp_path: Path) -> None:
    """The collector's group commit: the first half (under the collector's lock) takes
    the segments written so far; a send after it is left for the next flush; the second
    half fsyncs on descriptors of its own, which survive the writer's roll."""
    transport = EmbeddedTransport(tmp_path / "log", 2, fsync=True, segment_bytes=16)
    producer = transport.producer()
    producer.send_framed(Stream.CLICKS, 0, lines(0, 1), 1)
    producer.send_framed(Stream.CLICKS, 1, lines(1, 1), 1)
    writers = producer._writers  # type: ignore[attr-defined]

    def dirty() -> dict[int, bool]:
        return {partition: w.dirty for (_, partition), w in writers.items()}

    assert dirty() == {0: True, 1: True}
    sync = producer.flush_in_two()
    assert dirty() == {0: False, 1: False}
    producer.send_framed(Stream.CLICKS, 0, lines(2, 1), 1)  # rolls partition 0's segment
    assert list_segments(tmp_path / "log" / "clicks" / "0000") == [0, 10]
    assert dirty() == {0: True, 1: False}
    sync()
    assert dirty() == {0: True, 1: False}  # the next flush's
    producer.flush_in_two()()
    assert dirty() == {0: False, 1: False}
    producer.close()
    transport.close()


def test_flush_in_two_without_fsync_does_everything_at_once(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path / "log", 1)
    producer = transport.producer()
    producer.send_framed(Stream.CLICKS, 0, lines(0, 1), 1)
    producer.flush_in_two()
    assert [w.dirty for w in producer._writers.values()] == [False]  # type: ignore[attr-defined]
    producer.close()
    transport.close()


def test_many_partitions_beyond_the_descriptor_cache(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path / "log", 8, max_open_partitions=3)
    producer = transport.producer()
    consumer = transport.consumer()
    for round_ in range(3):
        for partition in range(8):
            producer.send_framed(Stream.CLICKS, partition, lines(partition * 10 + round_, 1), 1)
    for partition in range(8):
        chunk = consumer.poll(Stream.CLICKS, partition, None, 1000)
        assert chunk is not None
        expected = b"".join(lines(partition * 10 + r, 1) for r in range(3))
        assert (chunk.data, chunk.end_offset) == (expected, "30")
    open_fds = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").exists() else None
    transport.close()
    if open_fds is not None:
        # writers: lock, segment and append times; readers: segment
        assert len(os.listdir("/proc/self/fd")) == open_fds - 3 * 3 - 3


def test_open_transport_by_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADPULSE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ADPULSE_CONFIG", raising=False)

    default = open_transport(Settings(home=tmp_path / "home", partitions=3))
    assert isinstance(default, EmbeddedTransport)
    assert (default.log_dir, default.partitions) == (tmp_path / "home" / "log", 3)

    explicit = open_transport(
        Settings(
            home=tmp_path / "home",
            transport_url=f"embedded://{tmp_path / 'elsewhere'}",
            fsync=True,
            max_record_bytes=1000,
        )
    )
    assert isinstance(explicit, EmbeddedTransport)
    assert (explicit.log_dir, explicit.partitions, explicit.fsync) == (
        tmp_path / "elsewhere",
        4,
        True,
    )
    assert explicit.max_record_bytes == 1000

    memory = open_transport(Settings(home=tmp_path / "home", transport_url="memory://"))
    assert isinstance(memory, InMemoryTransport)
    assert memory.partitions == 4

    for url in ("rediss+x://localhost:6379", "kafka://clicks", "/some/dir", "embedded:/x"):
        with pytest.raises(ValueError) as error:
            open_transport(Settings(home=tmp_path / "home", transport_url=url))
        assert f"unsupported transport_url {url!r}" in str(error.value)
        assert "'embedded://DIR'" in str(error.value)
        assert "'memory://'" in str(error.value)
