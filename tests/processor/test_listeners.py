"""Commit listeners: told of the start and of each committed batch, after its commit; a
failing listener never stops ingestion."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from builders import MiniPipeline, web_impression

from adpulse.commits import CommitSignal
from adpulse.contracts import Stream
from adpulse.processor.pipeline import Processor
from adpulse.storage.warehouse.base import BatchOutput


class Recording:
    """Records what it was told, and what the warehouse held when it was told."""

    def __init__(self, pipeline: MiniPipeline) -> None:
        self.pipeline = pipeline
        self.started: list[list[int]] = []
        self.committed: list[tuple[int, int]] = []  # (batch id, impressions stored then)

    def start(self, partitions: Sequence[int]) -> None:
        self.started.append(list(partitions))

    def on_commit(self, output: BatchOutput) -> None:
        stored = self.pipeline.rows("SELECT count(*) FROM fact_impressions")[0][0]
        self.committed.append((output.batch_id, int(stored)))  # type: ignore[call-overload]


class Broken:
    def start(self, partitions: Sequence[int]) -> None:
        raise RuntimeError("broken start")

    def on_commit(self, output: BatchOutput) -> None:
        raise RuntimeError("broken listener")


def test_listeners_hear_each_commit_after_it_and_a_broken_one_changes_nothing(
    tmp_path: Path,
) -> None:
    pipeline = MiniPipeline(tmp_path, partitions=2)
    recording, signal = Recording(pipeline), CommitSignal()
    pipeline.processor = Processor(
        pipeline.settings,
        pipeline.transport,
        pipeline.warehouse,
        listeners=[Broken(), recording, signal],
    )
    assert recording.started == [[0, 1]]
    pipeline.send(Stream.IMPRESSIONS, [web_impression(n) for n in range(5)])
    pipeline.processor.run(threading.Event(), until_caught_up=True)
    pipeline.processor.close()
    assert pipeline.rows("SELECT count(*) FROM fact_impressions") == [(5,)]
    # told after the commit: the first batch's facts were already stored
    assert recording.committed[0][1] == 5
    batch_ids = [b for b, _ in recording.committed]
    assert batch_ids == sorted(set(batch_ids))  # each commit told once, in order
    assert signal.version == len(recording.committed)
