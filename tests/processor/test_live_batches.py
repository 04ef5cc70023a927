"""The live batch cap (``live_batch_max_bytes``): live, a batch takes at most that many
bytes per stream (split over the partitions); catching up (``until_caught_up``) it takes
``batch_max_bytes``. Batch sizes are asserted exactly, not timed."""

from __future__ import annotations

import threading
from pathlib import Path

from builders import MiniPipeline

from adpulse.contracts import Stream
from adpulse.processor.pipeline import BatchReport, Processor


def impression(n: int) -> bytes:
    """A valid impression framed in exactly 200 bytes (199 and its line end)."""
    head = (
        b'{"event_id":"i%05d","user_id":"u1","ad_id":1,"platform":"Web","location":"Berlin",'
        b'"impression_timestamp":"2024-05-01 10:00:00","pad":"' % n
    )
    return head + b"x" * (199 - len(head) - 2) + b'"}'


def click(n: int) -> bytes:
    head = (
        b'{"event_id":"c%05d","user_id":"u1","ad_id":1,"platform":"Web","location":"Berlin",'
        b'"click_timestamp":"2024-05-01 10:00:01","pad":"' % n
    )
    return head + b"x" * (199 - len(head) - 2) + b'"}'


def batches(tmp_path: Path, *, live: bool, **settings: object) -> list[tuple[int, int]]:
    """(impressions, clicks) received by each batch of a processor over 50 impressions
    and 30 clicks in one partition."""
    pipeline = MiniPipeline(tmp_path, partitions=1, **settings)
    pipeline.send(Stream.IMPRESSIONS, [impression(n) for n in range(50)])
    pipeline.send(Stream.CLICKS, [click(n) for n in range(30)])
    processor = Processor(pipeline.settings, pipeline.transport, pipeline.warehouse)
    reports: list[BatchReport] = []
    stop = threading.Event()

    def on_batch(report: BatchReport) -> None:
        reports.append(report)
        if sum(r.records for r in reports) == 80:
            stop.set()

    try:
        processor.run(stop, on_batch=on_batch, until_caught_up=not live)
    finally:
        processor.close()
    assert pipeline.rows("SELECT count(*) FROM fact_impressions") == [(50,)]
    assert pipeline.rows("SELECT count(*) FROM dead_letters") == [(0,)]
    return [
        (r.received.get(Stream.IMPRESSIONS, 0), r.received.get(Stream.CLICKS, 0)) for r in reports
    ]


def test_live_batches_take_at_most_the_cap_per_stream(tmp_path: Path) -> None:
    assert len(impression(7)) == 199 and len(click(7)) == 199
    # 4,000 bytes per stream: 20 records of 200 bytes.
    sizes = batches(tmp_path, live=True, live_batch_max_bytes=4000)
    assert sizes == [(20, 20), (20, 10), (10, 0)]


def test_catching_up_ignores_the_live_cap(tmp_path: Path) -> None:
    assert batches(tmp_path, live=False, live_batch_max_bytes=4000) == [(50, 30)]


def test_batch_max_bytes_below_the_cap_wins_and_zero_lifts_the_cap(
    tmp_path: Path,
) -> None:
    # batch_max_bytes below the live cap wins: 3,000 bytes, 15 records per stream.
    sizes = batches(tmp_path, live=True, live_batch_max_bytes=4000, batch_max_bytes=3000)
    assert sizes == [(15, 15), (15, 15), (15, 0), (5, 0)]
    # 0: no live cap at all.
    assert batches(tmp_path / "nocap", live=True, live_batch_max_bytes=0) == [(50, 30)]


def test_run_once_is_live_as_the_workers_drive_it(tmp_path: Path) -> None:
    pipeline = MiniPipeline(tmp_path, partitions=1, live_batch_max_bytes=4000)
    pipeline.send(Stream.IMPRESSIONS, [impression(n) for n in range(50)])
    processor = Processor(pipeline.settings, pipeline.transport, pipeline.warehouse)
    try:
        report = processor.run_once()
    finally:
        processor.close()
    assert report is not None and report.received == {
        Stream.IMPRESSIONS: 20,
        Stream.CLICKS: 0,
        Stream.CONVERSIONS: 0,
    }


class _RecordedStop(threading.Event):
    """A stop event that records each wait instead of waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(-1.0 if timeout is None else timeout)
        return self.is_set()


def paced_waits(tmp_path: Path, impressions: int, **settings: object) -> list[float]:
    """The waits of a live processor over ``impressions`` in one partition, until all
    are committed."""
    pipeline = MiniPipeline(tmp_path, partitions=1, live_batch_max_bytes=4000, **settings)
    pipeline.send(Stream.IMPRESSIONS, [impression(n) for n in range(impressions)])
    processor = Processor(pipeline.settings, pipeline.transport, pipeline.warehouse)
    stop = _RecordedStop()
    received = [0]

    def on_batch(report: BatchReport) -> None:
        received[0] += report.records
        if received[0] == impressions:
            stop.set()

    try:
        processor.run(stop, on_batch=on_batch)
    finally:
        processor.close()
    return stop.waits


def test_live_a_batch_that_drained_the_log_waits_for_the_next_to_gather(
    tmp_path: Path,
) -> None:
    # 5 records (1,000 bytes) drain the log: the next batch starts 0.5 s after this one.
    waits = paced_waits(tmp_path, 5, live_batch_interval_seconds=0.5)
    assert len(waits) == 1 and 0 <= waits[0] <= 0.5  # less the time the batch took
    # A backlog (batches of the full 4,000 bytes, then 2,000) is worked off at once.
    assert paced_waits(tmp_path / "backlog", 50, live_batch_interval_seconds=0.5) == []
    # 0: no pacing.
    assert paced_waits(tmp_path / "off", 5, live_batch_interval_seconds=0) == []
