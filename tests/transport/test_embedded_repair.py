"""A damaged embedded log: ``check_log`` reports exactly what is damaged (file, offset,
bytes), ``repair_log`` repairs it and counts what is lost, and the processor then runs on
with counts that reconcile; and the commands and messages a user sees."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.processor.pipeline import Processor
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.transport.embedded import EmbeddedTransport, list_segments, segment_name
from adpulse.transport.embedded_repair import (
    Damage,
    PartitionRepair,
    check_log,
    commit_checkpoints,
    repair_log,
)

PARTITIONS = 2
NOW = datetime(2026, 1, 1)
S = Stream.IMPRESSIONS


class Pipeline:
    def __init__(self, home: Path, segment_bytes: int = 256 << 20) -> None:
        self.home = home
        self.log_dir = home / "log"
        self.segment_bytes = segment_bytes
        self.transport = EmbeddedTransport(self.log_dir, PARTITIONS, segment_bytes=segment_bytes)
        self.warehouse = DuckDBWarehouse(home / "warehouse.duckdb")
        self.warehouse.create_schema()
        self.sent = 0

    def send(self, n: int, location: str = "Paris") -> None:
        """``n`` impressions with distinct ids, all in partition 0."""
        records = [
            {
                "event_id": f"imp-{self.sent + i:06d}",
                "ad_id": 1,
                "user_id": "user-0",
                "impression_timestamp": "2023-09-08 12:00:00",
                "platform": "web",
                "location": location,
            }
            for i in range(n)
        ]
        producer = self.transport.producer()
        producer.send_framed(S, 0, b"".join(orjson.dumps(r) + b"\n" for r in records), n)
        producer.close()
        self.sent += n

    def process(self) -> None:
        settings = Settings(
            home=self.home,
            partitions=PARTITIONS,
            batch_max_bytes=4096,
            idle_timeout_seconds=100_000,
        )
        processor = Processor(settings, self.transport, self.warehouse, clock=lambda: NOW)
        try:
            processor.run(threading.Event(), until_caught_up=True)
        finally:
            processor.close()

    def count(self, sql: str) -> int:
        return int(self.warehouse.query(sql).item() or 0)

    def counts(self) -> tuple[int, int, dict[str, int]]:
        """(received, facts, dead letters by reason)."""
        dead = self.warehouse.query("SELECT reason, count(*) FROM dead_letters GROUP BY reason")
        return (
            self.count("SELECT sum(received) FROM ingest_stats"),
            self.count("SELECT count(*) FROM fact_impressions"),
            dict(dead.rows()),  # type: ignore[arg-type]
        )

    def segments(self) -> list[Path]:
        directory = self.log_dir / S.value / "0000"
        return [directory / segment_name(b) for b in list_segments(directory)]

    def checkpoints(self) -> dict[tuple[Stream, int], str]:
        return self.warehouse.load_offsets()

    def lines(self) -> int:
        return sum(p.read_bytes().count(b"\n") for p in self.segments())


@pytest.fixture
def pipe(tmp_path: Path) -> Pipeline:
    p = Pipeline(tmp_path)
    yield p
    p.warehouse.close()


def _last_line_length(path: Path) -> int:
    data = path.read_bytes()
    return len(data) - (data.rfind(b"\n", 0, len(data) - 1) + 1)


def test_intact_log_checks_clean(pipe: Pipeline) -> None:
    pipe.send(30)
    pipe.process()
    result = check_log(pipe.log_dir, PARTITIONS, pipe.checkpoints())
    assert result.ok and result.damages == []
    assert result.scans[(S, 0)].records == 30


def test_cut_committed_segment_is_reported_repaired_and_the_processor_runs_on(
    pipe: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    pipe.send(40)
    pipe.process()
    (segment,) = pipe.segments()
    end = segment.stat().st_size
    last = _last_line_length(segment)
    assert pipe.checkpoints()[(S, 0)] == str(end)
    os.truncate(segment, end - 5)  # truncate -s -5

    result = check_log(pipe.log_dir, PARTITIONS, pipe.checkpoints())
    start = end - last
    assert [(d.kind, d.file, d.offset, d.length) for d in result.damages] == [
        ("torn_tail", segment, start, last - 5),
        ("checkpoint_beyond_end", None, end - 5, 5),
    ]
    assert result.checkpoint_changes == {(S, 0): (end, start)}

    repairs, moved = repair_log(pipe.log_dir, PARTITIONS, pipe.checkpoints())
    assert repairs == [
        PartitionRepair(
            S,
            0,
            removed_records=1,
            removed_bytes=last - 5,
            missing_bytes=5,
            lost_records=0,
            processed_records=1,
            filled_bytes=0,
            checkpoint=(end, start),
        )
    ]
    assert moved == {(S, 0): str(start)}
    commit_checkpoints(pipe.warehouse, moved)
    assert check_log(pipe.log_dir, PARTITIONS, pipe.checkpoints()).ok
    assert segment.stat().st_size == start

    with caplog.at_level(logging.WARNING):
        pipe.send(10)
    assert not [r for r in caplog.records if "incomplete" in r.getMessage()]
    pipe.process()
    received, facts, dead = pipe.counts()
    assert (received, facts, dead) == (50, 50, {})  # nothing lost from the results


def test_append_after_a_cut_says_what_happened(
    pipe: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    pipe.send(5)
    (segment,) = pipe.segments()
    size = segment.stat().st_size
    last = _last_line_length(segment)
    os.truncate(segment, size - 5)
    with caplog.at_level(logging.WARNING, logger="adpulse.transport.embedded"):
        pipe.send(1)
    (message,) = [r.getMessage() for r in caplog.records]
    assert f"removed an incomplete last record ({last - 5} bytes at offset {size - last})" in (
        message
    )
    assert "never readable" not in message
    assert "adpulse log check" in message


def test_torn_tail_of_an_uncommitted_segment_loses_exactly_one_record(pipe: Pipeline) -> None:
    pipe.send(25)
    (segment,) = pipe.segments()
    size = segment.stat().st_size
    last = _last_line_length(segment)
    os.truncate(segment, size - 5)

    result = check_log(pipe.log_dir, PARTITIONS, pipe.checkpoints())
    assert result.damages == [
        Damage(
            S,
            0,
            "torn_tail",
            segment,
            size - last,
            last - 5,
            f"{segment} ends inside a record: {last - 5} bytes at offset {size - last} are an"
            " incomplete record (a writer stopped mid-write, or the file was cut); repair"
            " cuts them",
        )
    ]
    repairs, moved = repair_log(pipe.log_dir, PARTITIONS, pipe.checkpoints())
    assert repairs == [PartitionRepair(S, 0, 1, last - 5, 0, 1, 0, 0, None)]
    assert moved == {}
    pipe.process()
    assert pipe.counts() == (24, 24, {})


def test_cut_sealed_segment_is_filled_and_the_loss_is_a_dead_letter(tmp_path: Path) -> None:
    pipe = Pipeline(tmp_path, segment_bytes=2000)
    for _ in range(6):
        pipe.send(10)  # ~1.3 KB per append: one segment each
    segments = pipe.segments()
    assert len(segments) == 6
    first = segments[0]
    size = first.stat().st_size
    last = _last_line_length(first)
    os.truncate(first, size - 5)
    lines_before = pipe.lines()

    result = check_log(pipe.log_dir, PARTITIONS)
    keep = size - last
    (damage,) = result.damages
    assert (damage.kind, damage.file, damage.offset, damage.length) == (
        "cut_segment",
        first,
        keep,
        last,
    )
    # The reader refuses the gap, naming the file and what to run.
    from adpulse.transport.embedded import LogDamagedError

    consumer = pipe.transport.consumer()
    with pytest.raises(LogDamagedError, match=r"5 bytes are missing.*adpulse log check"):
        consumer.poll(S, 0, None, 1 << 20)
    consumer.close()

    repairs, _ = repair_log(pipe.log_dir, PARTITIONS)
    assert repairs == [PartitionRepair(S, 0, 1, last - 5, 5, 1, 0, last, None)]
    assert check_log(pipe.log_dir, PARTITIONS).ok
    assert first.stat().st_size == size  # filled up to the next segment's first offset
    assert pipe.lines() == lines_before + 1  # the incomplete line, now a lost-bytes line

    pipe.process()
    received, facts, dead = pipe.counts()
    assert (received, facts, dead) == (60, 59, {"damaged_record": 1})
    detail = pipe.warehouse.query("SELECT detail FROM dead_letters").item()
    assert detail == f"{last} bytes of the log were lost here (filled by `adpulse log repair`)"
    pipe.warehouse.close()


def test_garbage_in_the_middle_is_reported_exactly_and_dead_lettered(pipe: Pipeline) -> None:
    pipe.send(30)
    (segment,) = pipe.segments()
    data = segment.read_bytes()
    starts = [0] + [i + 1 for i, b in enumerate(data[:-1]) if b == 0x0A]
    escaped_at = starts[10]  # a record's first bytes overwritten: b"\x00!!"
    middle = starts[20] + 30  # two line ends written inside a record
    with segment.open("r+b") as f:
        f.seek(escaped_at)
        f.write(b"\x00!!")
        f.seek(middle)
        f.write(b"\n\n")
    first_line = data.index(b"\n", escaped_at) - escaped_at

    result = check_log(pipe.log_dir, PARTITIONS)
    assert [(d.kind, d.file, d.offset, d.length, d.repairable) for d in result.damages] == [
        ("damaged_record", segment, escaped_at, first_line + 1, False),
        ("damaged_record", segment, middle + 1, 1, False),
    ]
    assert "not valid base64" in result.damages[0].detail
    assert "empty line" in result.damages[1].detail
    assert repair_log(pipe.log_dir, PARTITIONS) == ([], {})  # left for the processor

    pipe.process()
    received, facts, dead = pipe.counts()
    # 30 lines became 32: one record split in three (its two halves are not JSON)
    assert received == 32 == pipe.lines()
    assert dead == {"damaged_record": 2, "invalid_json": 2}
    assert facts == 28
    assert received == facts + sum(dead.values())


def test_checkpoint_inside_a_record_after_a_cut_and_an_append(pipe: Pipeline) -> None:
    pipe.send(10)
    pipe.process()
    (segment,) = pipe.segments()
    end = segment.stat().st_size
    start = end - _last_line_length(segment)
    os.truncate(segment, end - 5)
    pipe.send(3, location="Paris, Île-de-France")  # longer records: the old end is inside one
    result = check_log(pipe.log_dir, PARTITIONS, pipe.checkpoints())
    assert [(d.kind, d.offset) for d in result.damages] == [("checkpoint_inside_record", end)]
    assert result.checkpoint_changes == {(S, 0): (end, start)}
    repairs, moved = repair_log(pipe.log_dir, PARTITIONS, pipe.checkpoints())
    assert repairs == [PartitionRepair(S, 0, 0, 0, 0, 0, 0, 0, (end, start))]
    commit_checkpoints(pipe.warehouse, moved)
    pipe.process()
    # 10 processed before the cut (the cut one's results kept) + the 3 appended after it
    assert pipe.counts() == (13, 13, {})


def test_checkpoint_before_a_deleted_segment(tmp_path: Path) -> None:
    pipe = Pipeline(tmp_path, segment_bytes=2000)
    for _ in range(3):
        pipe.send(10)
    first, second, _ = pipe.segments()
    commit_checkpoints(pipe.warehouse, {(S, 0): "0"})
    lines_first = first.read_bytes().count(b"\n")
    first.unlink()  # deleted by hand: its records were never processed
    base = int(second.name[:20])
    result = check_log(pipe.log_dir, PARTITIONS, pipe.checkpoints())
    assert [(d.kind, d.offset, d.length) for d in result.damages] == [
        ("checkpoint_before_start", 0, base)
    ]
    repairs, moved = repair_log(pipe.log_dir, PARTITIONS, pipe.checkpoints())
    assert repairs == [PartitionRepair(S, 0, 0, 0, base, 0, 0, 0, (0, base))]
    commit_checkpoints(pipe.warehouse, moved)
    pipe.process()
    assert pipe.counts() == (30 - lines_first, 30 - lines_first, {})
    pipe.warehouse.close()


def _adpulse(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adpulse", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ADPULSE_PARTITIONS": str(PARTITIONS)},
    )


def test_cli_cut_log_error_then_check_then_repair(tmp_path: Path) -> None:
    pipe = Pipeline(tmp_path)
    pipe.send(20)
    pipe.process()
    pipe.warehouse.close()  # the commands open it
    (segment,) = pipe.segments()
    os.truncate(segment, segment.stat().st_size - 5)

    done = _adpulse(tmp_path, "process", "--until-caught-up")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: offset ") and "adpulse log repair --yes" in line
    assert "reset the consumer's checkpoint" not in line

    done = _adpulse(tmp_path, "log", "check", "--json")
    assert done.returncode == 1, done.stderr
    kinds = [d["kind"] for d in orjson.loads(done.stdout)["damages"]]
    assert kinds == ["torn_tail", "checkpoint_beyond_end"]

    done = _adpulse(tmp_path, "log", "repair")  # no --yes, no terminal: refused
    assert done.returncode == 2 and "--yes" in done.stderr

    done = _adpulse(tmp_path, "log", "repair", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    totals = orjson.loads(done.stdout)["totals"]
    assert (totals["lost_records"], totals["processed_records"], totals["missing_bytes"]) == (
        0,
        1,
        5,
    )
    assert _adpulse(tmp_path, "log", "check").returncode == 0
    done = _adpulse(tmp_path, "process", "--until-caught-up")
    assert done.returncode == 0, done.stderr
