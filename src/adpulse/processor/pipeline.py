"""The micro-batch processor: poll -> decode -> validate -> dedupe -> enrich -> attribute
-> aggregate -> commit, with offsets, watermarks and outputs in one transaction.

One :class:`Processor` owns a set of partitions (all of them by default). After a crash
it resumes from the committed offsets and rebuilds its state from the committed facts,
so a restarted run produces exactly the results of an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from adpulse.config import Settings
from adpulse.contracts import Reason, Stream
from adpulse.outages import InfrastructureError
from adpulse.processor.allocator import RELEASE_EVERY_SECONDS, release_free_memory
from adpulse.processor.isolation import (
    BatchRecords,
    Failure,
    bisect,
    describe,
    merge_outputs,
    rebase_dead_letters,
    step_refuses_data,
)
from adpulse.processor.listeners import CommitListener, tell_commit, tell_start
from adpulse.processor.state import (
    CLICK_STATE_COLUMNS,
    OPEN_CONVERSION_COLUMNS,
    DedupeState,
    FrameState,
    Watermarks,
    hour_bucket,
    hour_buckets,
    key_hashes,
)
from adpulse.processor.steps import aggregate
from adpulse.processor.steps.attribute import attribute_conversions, reattribute
from adpulse.processor.steps.decode import Decoded, decode
from adpulse.processor.steps.dedupe import drop_duplicates, flag_late, with_event_ids
from adpulse.processor.steps.enrich import CAMPAIGN_FIELDS, USER_FIELDS, DimensionLookup, enrich
from adpulse.processor.steps.validate import validate
from adpulse.storage.warehouse.base import BatchOutput, LeaseFence, Warehouse
from adpulse.storage.warehouse.schema import (
    CONVERSION_REATTRIBUTIONS,
    DEAD_LETTERS,
    FACT_CLICKS,
    FACT_CONVERSIONS,
    FACT_IMPRESSIONS,
    INGEST_STATS,
    REVENUE,
    conform,
    storable_text,
)
from adpulse.transport.base import Chunk, Consumer, Transport

log = logging.getLogger(__name__)

STEP_NAMES = (
    "poll",
    "decode",
    "validate",
    "dedupe",
    "enrich",
    "attribute",
    "aggregate",
    "commit_wait",
    "commit",
)
#: Batch ids reserved at a time (:meth:`Warehouse.reserve_batch_ids`): one reservation
#: per thousand batches keeps it off the hot path.
BATCH_ID_BLOCK = 1000
_FACT_SCHEMA = {
    Stream.IMPRESSIONS: FACT_IMPRESSIONS,
    Stream.CLICKS: FACT_CLICKS,
    Stream.CONVERSIONS: FACT_CONVERSIONS,
}


@dataclass(slots=True)
class BatchReport:
    """What one committed batch did (for status displays and benchmarks)."""

    batch_id: int
    received: dict[Stream, int]
    accepted: dict[Stream, int]
    rejected: dict[Stream, int]
    duplicates: dict[Stream, int]
    late: dict[Stream, int]
    reattributed: int
    bytes: int
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(self.received.values())


class CommitFailedError(RuntimeError):
    """A commit failed; ``__cause__`` is the warehouse's error."""


class _Committer:
    """Commits batches in order on a thread of its own, one batch behind the processing.

    The warehouse's driver releases the GIL while it writes, so batch N+1 is decoded,
    deduplicated and aggregated while batch N is being committed. Each commit is still
    one transaction holding its outputs and offsets; the in-memory state may run one
    batch ahead of the committed one, and a crash rebuilds it from what was committed.
    A failed commit stops the processor at its next submit, or, when the warehouse
    refused the batch's data, makes it isolate the records at fault
    (:meth:`Processor.settle`). Batches submitted after a failed one are never committed.
    """

    def __init__(
        self,
        warehouse: Warehouse,
        consumer: Consumer,
        seconds: dict[str, float],
        listeners: Sequence[CommitListener] = (),
    ) -> None:
        self.warehouse = warehouse
        self.consumer = consumer
        self.seconds = seconds
        self.listeners = listeners
        self.error: BaseException | None = None
        #: What failed: the warehouse's commit, or the transport's ack after it.
        self.failed_step = "a commit to the warehouse failed"
        self.last_commit_wall: float | None = None
        self._queue: queue.Queue[tuple[BatchOutput, list[tuple[Stream, int, str]]] | None] = (
            queue.Queue(maxsize=1)
        )
        self._thread = threading.Thread(target=self._run, name="adpulse-committer", daemon=True)
        self._thread.start()

    def submit(self, output: BatchOutput, acks: list[tuple[Stream, int, str]]) -> None:
        self._raise()
        self._queue.put((output, acks))

    def drain(self) -> None:
        """Wait until every submitted batch is committed."""
        self._queue.join()
        self._raise()

    def take_error(self) -> BaseException | None:
        """Wait until every submitted batch is committed or skipped, then return the
        failure of the first that failed (None if none) and forget it: commits resume."""
        self._queue.join()
        error, self.error = self.error, None
        return error

    def close(self) -> None:
        """Drain, then stop the thread (also after a failed commit, which is raised)."""
        try:
            self.drain()
        finally:
            self._queue.put(None)
            self._thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.failure(self.error)

    def failure(self, error: BaseException) -> BaseException:
        """What the processor raises for a failed commit: an :class:`InfrastructureError`
        as it is (it already names the server and its setting), anything else as a
        :class:`CommitFailedError` saying which step failed."""
        if isinstance(error, InfrastructureError):
            return error
        failed = CommitFailedError(f"{self.failed_step}; restart the processor")
        failed.__cause__ = error
        return failed

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self.error is not None:
                    continue  # never commit past a failed batch
                output, acks = item
                t = time.perf_counter()
                step = "a commit to the warehouse failed"
                try:
                    self.warehouse.commit(output)
                    step = (
                        f"the transport's acknowledgement of batch {output.batch_id} failed"
                        " (the batch is committed)"
                    )
                    for stream, partition, offset in acks:
                        self.consumer.ack(stream, partition, offset)
                except BaseException as exc:  # noqa: BLE001 - handed to the processor
                    self.failed_step = step
                    if isinstance(exc, InfrastructureError):  # printed by the CLI, once
                        log.debug("batch %s: %s", output.batch_id, step, exc_info=True)
                    elif self.warehouse.refuses_data(exc):
                        log.warning(
                            "the warehouse refused batch %s for its data (%s);"
                            " isolating the records at fault",
                            output.batch_id,
                            describe(exc),
                        )
                    else:
                        log.exception("batch %s: %s", output.batch_id, step)
                    self.error = exc
                else:
                    output.seconds["commit"] = time.perf_counter() - t
                    # after the commit, never instead: listeners only mirror the warehouse
                    tell_commit(self.listeners, output)
                self.seconds["commit"] += time.perf_counter() - t
                self.last_commit_wall = time.time()
            finally:
                self._queue.task_done()


class Processor:
    """Consumes the transport's partitions and commits results to the warehouse."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        warehouse: Warehouse,
        partitions: Sequence[int] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        fence: LeaseFence | None = None,
        listeners: Sequence[CommitListener] = (),
    ) -> None:
        """``partitions``: the ones to process (default all). ``fence``: when workers
        share the partitions, the leases every commit must still hold (else it fails
        with :class:`~adpulse.storage.warehouse.base.LeaseLostError`). ``listeners``
        are told of the start and of every commit (:mod:`adpulse.processor.listeners`):
        the serving-store sync, the commit signal, whatever the wiring adds."""
        self.settings = settings
        self.fence = fence
        self.transport = transport
        self.warehouse = warehouse
        self.partitions = (
            list(partitions) if partitions is not None else list(range(transport.partitions))
        )
        self.clock = clock
        self.lateness = timedelta(seconds=settings.allowed_lateness_seconds)
        self.horizon = timedelta(seconds=settings.dedupe_horizon_seconds)
        self.lookback = timedelta(seconds=settings.attribution_lookback_seconds)
        self.consumer: Consumer = transport.consumer()
        self.offsets: dict[tuple[Stream, int], str | None] = {}
        self.watermarks = Watermarks(settings.idle_timeout_seconds)
        # Replaced by recover(), which sizes the tables by what it reloads: this one is
        # the smallest (a Lambda cold start used to fill 12 MB of tables here in vain).
        self.dedupe = DedupeState()
        self.clicks = FrameState(CLICK_STATE_COLUMNS)
        self.open_conversions = FrameState(OPEN_CONVERSION_COLUMNS)
        self.step_seconds: dict[str, float] = defaultdict(float)
        self._dims_revision: int | None = None
        self._campaigns = DimensionLookup.empty(
            "ad_id", pl.Int64(), {"campaign": pl.String(), "product": pl.String()}
        )
        self._users = DimensionLookup.empty(
            "user_id",
            pl.String(),
            {
                "gender": pl.String(),
                "age": pl.Int32(),
                "age_band": pl.String(),
                "interests": pl.String(),
            },
        )
        self._last_idle_commit = 0.0
        #: Whether the last poll filled half a partition's budget or more: a backlog.
        self.polled_full = False
        self._last_release = time.monotonic()
        #: Bytes polled per stream and batch: live (the default, also for the workers'
        #: run_once), batch_max_bytes capped by live_batch_max_bytes; see run().
        self.batch_max_bytes = _live_budget(settings)
        self.recover()
        self.listeners = tuple(listeners)
        # e.g. the store sync rebuilds only when it misses a committed batch of these
        tell_start(self.listeners, self.partitions)
        self.committer = _Committer(warehouse, self.consumer, self.step_seconds, self.listeners)

    # -- recovery ----------------------------------------------------------------------
    def recover(self) -> None:
        """Load committed offsets and watermarks and rebuild state from committed facts
        (from scratch: after a refused batch, what the state held is forgotten)."""
        self.watermarks = Watermarks(self.settings.idle_timeout_seconds)
        self.dedupe.close()  # the spilled runs are rebuilt from the warehouse too
        self.dedupe = DedupeState(self.settings.dedupe_memory_bytes, spill_directory(self.settings))
        saved = self.warehouse.load_offsets()
        self.offsets = {(s, p): saved.get((s, p)) for s in Stream for p in self.partitions}
        marks = {
            k: v for k, v in self.warehouse.load_watermarks().items() if k[1] in self.partitions
        }
        self.watermarks.restore(marks)
        self._reserve_batch_ids()
        self._rebuild_dedupe()
        click_floor = self._floor(Stream.CONVERSIONS, self.lateness + self.lookback)
        clicks = self.warehouse.load_facts(
            "fact_clicks",
            self.partitions,
            min(click_floor.values(), default=_MIN_TIME),
            (*CLICK_STATE_COLUMNS, "is_late"),
        )
        self.clicks.replace(_on_time_state(clicks, CLICK_STATE_COLUMNS))
        self.clicks.expire(
            "event_time", self._cutoffs(Stream.CONVERSIONS, self.lateness + self.lookback)
        )
        conv_floor = self._floor(Stream.CLICKS, self.lateness)
        convs = self.warehouse.load_facts(
            "fact_conversions",
            self.partitions,
            min(conv_floor.values(), default=_MIN_TIME),
            (*OPEN_CONVERSION_COLUMNS, "is_late"),
        )
        self.open_conversions.replace(_on_time_state(convs, OPEN_CONVERSION_COLUMNS))
        self._close_conversions()

    def _reserve_batch_ids(self) -> None:
        self.batch_id = self.warehouse.reserve_batch_ids(BATCH_ID_BLOCK)
        self._batch_id_end = self.batch_id + BATCH_ID_BLOCK

    def _floor(self, stream: Stream, behind: timedelta) -> dict[int, datetime]:
        return {
            p: (wm - behind if wm is not None else _MIN_TIME)
            for p, wm in self.watermarks.cutoff_map(stream, self.partitions, timedelta()).items()
        }

    def _dedupe_floor(self, start_wms: dict[int, datetime | None]) -> int:
        """Oldest event-time hour whose ids are still live in any owned partition."""
        # A partition without a watermark has seen no event of this stream: no ids.
        hours = [hour_bucket(wm - self.horizon) for wm in start_wms.values() if wm is not None]
        return min(hours, default=int(np.iinfo(np.int32).min))

    def _dedupe_bounds(self) -> tuple[int, int]:
        """(the oldest event-time hour live in any stream and partition, the newest hour
        seen): what :meth:`DedupeState.bound` keeps and merges."""
        marks = self.watermarks.snapshot()
        floors = [
            self._dedupe_floor({p: self.watermarks.get(s, p) for p in self.partitions})
            for s in Stream
            if any(k[0] == s for k in marks)
        ]
        newest = [hour_bucket(m.max_event_time) for m in marks.values()]
        return min(floors, default=int(_NO_HOUR)), max(newest, default=int(_NO_HOUR))

    def _cutoffs(self, stream: Stream, behind: timedelta) -> dict[int, datetime | None]:
        return self.watermarks.cutoff_map(stream, self.partitions, behind)

    def _rebuild_dedupe(self) -> None:
        for stream, table in (
            (Stream.IMPRESSIONS, "fact_impressions"),
            (Stream.CLICKS, "fact_clicks"),
            (Stream.CONVERSIONS, "fact_conversions"),
        ):
            cutoffs = self._cutoffs(stream, self.horizon)
            # Same rule as live: a key lives while its hour >= the cutoff's hour.
            floors = {
                p: (datetime(1970, 1, 1) + timedelta(hours=hour_bucket(c)) if c else _MIN_TIME)
                for p, c in cutoffs.items()
            }
            ids = self.warehouse.load_event_ids(table, self.partitions, min(floors.values()))
            if ids.height == 0:
                continue
            # An id stored twice (re-sent after the horizon) keeps its newest time.
            ids = ids.group_by("event_id").agg(pl.col("event_time").max())
            hi, lo = key_hashes(ids["event_id"])
            buckets = hour_buckets(ids["event_time"].cast(pl.Datetime("us")))
            del ids
            keys = self.dedupe.sets[stream]
            # Oldest hours first, a slice at a time, so the budget holds during the
            # rebuild too (the oldest hours spill as the table fills).
            order = np.argsort(buckets, kind="stable")
            floor, newest = self._dedupe_bounds()
            for part in np.array_split(order, max(1, -(-len(order) // _REBUILD_SLICE))):
                keys.check_and_add(
                    hi[part], lo[part], buckets[part], np.full(len(part), _NO_HOUR, np.int32)
                )
                self.dedupe.bound(floor, newest)

    # -- dimensions ---------------------------------------------------------------------
    def refresh_dimensions(self) -> None:
        """Reload the dimension lookups when a dimension file was loaded meanwhile."""
        revision = self.warehouse.dimension_revision()
        if revision == self._dims_revision:
            return
        campaigns = self.warehouse.dimension("campaigns")
        users = self.warehouse.dimension("users")
        if campaigns.height:
            self._campaigns = DimensionLookup.build(campaigns, "ad_id", CAMPAIGN_FIELDS)
        if users.height:
            self._users = DimensionLookup.build(users, "user_id", USER_FIELDS)
        self._dims_revision = revision

    # -- the loop -----------------------------------------------------------------------
    def run(
        self,
        stop: threading.Event,
        on_batch: Callable[[BatchReport], None] | None = None,
        until_caught_up: bool = False,
        bulk: bool = False,
    ) -> None:
        """Process until ``stop`` is set (or, with ``until_caught_up``, the log is drained).

        Live (without ``until_caught_up``) a batch takes at most ``live_batch_max_bytes``
        per stream: while a backlog is worked off, each batch stays short, so the fresh
        events of the other streams and partitions wait one short batch, not a long one.
        ``bulk`` batches up to ``batch_max_bytes`` while live, as a catch-up does: for a
        bulk load such as ``replay``, where a batch's size is its cost (impressions go to
        a columnar segment from ``SEGMENT_MIN_ROWS`` rows on, row by row below).
        """
        self.batch_max_bytes = (
            self.settings.batch_max_bytes
            if until_caught_up or bulk
            else _live_budget(self.settings)
        )
        pace = 0.0 if until_caught_up else self.settings.live_batch_interval_seconds
        try:
            while not stop.is_set():
                started = time.monotonic()
                report = self.run_once()
                if report is None and until_caught_up:
                    # Caught up once the last commits are done (or, refused, isolated).
                    report = self.settle()
                    if report is None:
                        return
                if report is not None:
                    if on_batch is not None:
                        on_batch(report)
                    if pace and not self.polled_full:
                        # Drained: let the next batch gather (see live_batch_interval_seconds).
                        stop.wait(max(0.0, pace - (time.monotonic() - started)))
                    continue
                stop.wait(self.settings.batch_interval_seconds)
        finally:
            self._finish_commits()

    def close(self) -> None:
        """Commit what is pending, stop the committer thread, then let the consumer go
        (a Redis consumer leaves its groups where nothing of it is pending) and delete
        the spilled dedupe keys (a next run rebuilds them from the warehouse)."""
        try:
            try:
                self._finish_commits()
            finally:
                self.committer.close()
        finally:
            try:
                self.consumer.close()
            finally:
                self.dedupe.close()

    def settle(self) -> BatchReport | None:
        """Wait until every submitted batch is committed. If the warehouse refused one
        for its data, isolate the records at fault and commit the rest (see
        :mod:`.isolation`): returns that batch's report; None when nothing was refused.
        Raises :class:`CommitFailedError` when a commit failed for any other reason."""
        error = self.committer.take_error()
        if error is None:
            return None
        if not self.warehouse.refuses_data(error):
            raise self.committer.failure(error)
        return self._isolate_after(error)

    def _finish_commits(self) -> None:
        """On the way out: wait for the commits in flight. A batch refused for its data
        is left uncommitted, not raised: its records are read again (and isolated) by
        the next run, and the state forgets them now."""
        error = self.committer.take_error()
        if error is None:
            return
        if not self.warehouse.refuses_data(error):
            raise self.committer.failure(error)
        log.warning("a batch refused for its data is left for the next run: %s", describe(error))
        self.recover()

    def lag_bytes(self, consumer: Consumer | None = None) -> int:
        """Bytes in the log not yet processed. From another thread, pass a consumer of
        that thread's own (consumers are not thread-safe)."""
        reader = consumer or self.consumer
        offsets = dict(self.offsets)
        return sum(
            reader.lag_bytes(s, p, offsets.get((s, p))) for s in Stream for p in self.partitions
        )

    def run_once(self) -> BatchReport | None:
        """Poll once; process and commit a batch if there is data. None when idle."""
        t0 = time.perf_counter()
        self.refresh_dimensions()
        chunks = self._poll()
        self.step_seconds["poll"] += time.perf_counter() - t0
        try:
            if not any(chunks.values()):
                self._idle_tick()  # its commit may report the previous batch's failure
                return None
            return self.process(chunks)
        except BaseException as exc:  # PanicException is not an Exception
            cause = exc.__cause__ if isinstance(exc, CommitFailedError) else None
            if cause is not None and self.warehouse.refuses_data(cause):
                return self._isolate_after(cause)
            if cause is None and step_refuses_data(exc):
                log.warning(
                    "processing batch %s failed for its data (%s); isolating the records at fault",
                    self.batch_id,
                    describe(exc),
                )
                return self._isolate_after(exc)
            raise

    def _poll(self) -> dict[Stream, list[Chunk]]:
        # The budget is per stream: impressions outnumber clicks ~40:1, and a batch large
        # enough to fill whole DuckDB row groups (~123k rows) is written straight to the
        # database file instead of going through the WAL first.
        budget = max(1024, self.batch_max_bytes // len(self.partitions))
        chunks: dict[Stream, list[Chunk]] = {s: [] for s in Stream}
        full = False
        for stream in Stream:
            for p in self.partitions:
                chunk = self.consumer.poll(stream, p, self.offsets[(stream, p)], budget)
                if chunk is not None and chunk.records:
                    chunks[stream].append(chunk)
                    # Half the budget or more: the poll was likely cut short (a backlog).
                    full = full or 2 * len(chunk.data) >= budget
        self.polled_full = full
        return chunks

    def _idle_tick(self) -> None:
        if not self.watermarks.advance_idle(set()):
            return
        self._close_conversions()
        now = time.monotonic()
        if now - self._last_idle_commit < 1.0:
            return
        self._last_idle_commit = now
        output = BatchOutput.empty(
            self.batch_id, watermarks=self.watermarks.snapshot(), fence=self.fence
        )
        self.committer.submit(output, [])

    def process(self, chunks: dict[Stream, list[Chunk]]) -> BatchReport:
        """Run every step over one batch of chunks and commit it."""
        timer = _StepTimer(self.step_seconds)
        output, report, active = self._compute(chunks, timer)
        output.seconds.update(timer.spent)  # the steps, for metrics (commit: its own)
        with timer("commit_wait"):
            acks = [(s, c.partition, c.end_offset) for s in Stream for c in chunks[s]]
            self.committer.submit(output, acks)
        self.watermarks.advance_idle(active)
        self._expire_state()
        if time.monotonic() - self._last_release > RELEASE_EVERY_SECONDS:
            release_free_memory()
            self._last_release = time.monotonic()
        self._next_batch_id()
        report.seconds = dict(timer.spent)
        return report

    def _next_batch_id(self) -> None:
        self.batch_id += 1
        if self.batch_id >= self._batch_id_end:
            self._reserve_batch_ids()

    # -- isolation of records that make a batch fail (see isolation.py) -------------------
    def _isolate_after(self, error: BaseException) -> BatchReport | None:
        """After a batch failed for its data: go back to the committed state, read the
        uncommitted records again, and process them isolating the ones at fault."""
        pending = self.committer.take_error()  # the commit in flight, or the refused one
        if (
            pending is not None
            and pending is not error
            and not self.warehouse.refuses_data(pending)
        ):
            raise self.committer.failure(pending)
        self.recover()
        chunks = self._poll()
        if not any(chunks.values()):
            return None
        return self.process_isolating(chunks)

    def process_isolating(self, chunks: dict[Stream, list[Chunk]]) -> BatchReport:
        """Process one batch piece by piece, dead-letter the records that fail on their
        own, and commit the rest, with the batch's offsets, in one transaction.

        Needs the in-memory state to be the committed one (nothing in flight); commits
        synchronously. Only runs after a batch failed: the hot path is :meth:`process`.
        """
        timer = _StepTimer(self.step_seconds)
        records = BatchRecords(chunks)
        passed: list[BatchOutput] = []
        reports: list[BatchReport] = []
        active: set[tuple[Stream, int]] = set()

        def attempt(lo: int, hi: int) -> Failure | None:
            piece, starts = records.piece(lo, hi)
            saved = self._save_state()
            try:
                output, report, touched = self._compute(piece, timer)
            except BaseException as exc:  # PanicException is not an Exception
                if not step_refuses_data(exc):
                    raise
                self._restore_state(saved)
                return Failure(Reason.PROCESSING_FAILED, describe(exc))
            try:
                self.warehouse.check_commit(output)
            except Exception as exc:
                if not self.warehouse.refuses_data(exc):
                    raise
                self._restore_state(saved)
                return Failure(Reason.COMMIT_REJECTED, describe(exc))
            output.dead_letters = rebase_dead_letters(output.dead_letters, starts)
            passed.append(output)
            reports.append(report)
            active.update(touched)
            self._expire_state()
            return None

        refused = bisect(0, len(records), attempt)
        now = self.clock().replace(tzinfo=None)
        letters = pl.DataFrame(
            [records.dead_letter(place, failure, now) for place, failure in refused],
            schema=DEAD_LETTERS,
        )
        for row in letters.iter_rows(named=True):
            log.warning(
                "dead letter %s: %s partition %s, record %s of the chunk read after %s: %s",
                row["reason"],
                row["stream"],
                row["partition"],
                row["record_index"],
                f"offset {row['source_offset']}" if row["source_offset"] else "the start",
                row["detail"],
            )
        output = merge_outputs(passed, letters, self.batch_id, now)
        for stream in Stream:
            for c in chunks[stream]:
                self.offsets[(stream, c.partition)] = c.end_offset
                active.add((stream, c.partition))
        output.offsets = {k: v for k, v in self.offsets.items() if v is not None}
        output.watermarks = self.watermarks.snapshot()
        output.fence = self.fence
        output.seconds.update(timer.spent)  # every piece tried, for metrics
        with timer("commit_wait"):  # the committer counts the commit itself
            acks = [(s, c.partition, c.end_offset) for s in Stream for c in chunks[s]]
            self.committer.submit(output, acks)
            error = self.committer.take_error()
        if error is not None:
            # Every piece passed on its own: a refusal now is not one record's fault.
            raise CommitFailedError(
                f"batch {self.batch_id} failed to commit after the records at fault were"
                " set aside; restart the processor"
            ) from error
        self.watermarks.advance_idle(active)
        report = _merge_reports(self.batch_id, reports, records, refused)
        report.seconds = dict(timer.spent)
        self._next_batch_id()
        return report

    def _save_state(self) -> _SavedState:
        return _SavedState(
            offsets=dict(self.offsets),
            watermarks=self.watermarks.copy(),
            dedupe=self.dedupe.copy(),
            clicks=self.clicks.copy(),
            open_conversions=self.open_conversions.copy(),
        )

    def _restore_state(self, saved: _SavedState) -> None:
        self.offsets = saved.offsets
        self.watermarks = saved.watermarks
        self.dedupe = saved.dedupe
        self.clicks = saved.clicks
        self.open_conversions = saved.open_conversions

    def _compute(
        self, chunks: dict[Stream, list[Chunk]], timer: _StepTimer
    ) -> tuple[BatchOutput, BatchReport, set[tuple[Stream, int]]]:
        """Every step over one batch: its output (to commit), its report and the
        partitions it touched. Advances the in-memory state and offsets."""
        now = self.clock()
        processed_at = now.replace(tzinfo=None)
        max_future = timedelta(seconds=self.settings.max_future_seconds)
        facts: dict[Stream, pl.DataFrame] = {}
        dead: list[pl.DataFrame] = []
        stats: list[tuple[object, ...]] = []
        active: set[tuple[Stream, int]] = set()
        report = BatchReport(self.batch_id, {}, {}, {}, {}, {}, 0, 0)

        for stream in Stream:
            with timer("decode"):
                decoded = decode(stream, chunks[stream])
            with timer("validate"):
                valid = validate(decoded, now, max_future, self.settings.min_event_time)
                rows = valid.rows
            with timer("dedupe"):
                start_wms = {p: self.watermarks.get(stream, p) for p in self.partitions}
                rows = with_event_ids(rows, stream)
                rows = flag_late(rows, start_wms, self.lateness)
                if rows.height:
                    maxes = rows.group_by("partition").agg(pl.col("event_time").max())
                    for p, t in maxes.iter_rows():
                        self.watermarks.observe(stream, p, t)
                rows, dups = drop_duplicates(
                    rows, stream, self.dedupe, self.horizon, self._dedupe_floor(start_wms)
                )
            with timer("enrich"):
                rows = enrich(rows, self._campaigns, self._users)
            facts[stream] = rows
            for c in decoded.chunks:
                active.add((stream, c.partition))
                self.offsets[(stream, c.partition)] = c.end_offset
                report.bytes += len(c.data)
            letters = _dead_letters(decoded, processed_at)
            if letters is not None:
                dead.append(letters)
            stats.extend(_stats(self.batch_id, decoded, rows, dups, processed_at))
            report.received[stream] = decoded.received
            report.rejected[stream] = len(decoded.rejects)
            report.accepted[stream] = decoded.received - len(decoded.rejects)
            report.duplicates[stream] = int(dups["duplicates"].sum()) if dups.height else 0
            report.late[stream] = int(rows["is_late"].sum()) if rows.height else 0

        with timer("attribute"):
            # Only records within the allowed lateness take part in attribution: then the
            # result is the same in whichever order the clicks and conversions streams
            # are read (see README, "Late and out-of-order data").
            clicks = facts[Stream.CLICKS]
            on_time_clicks = clicks.filter(~pl.col("is_late"))
            self.clicks.add(on_time_clicks)
            old, new = reattribute(on_time_clicks, self.open_conversions, self.lookback)
            arrived = facts[Stream.CONVERSIONS]
            on_time = attribute_conversions(
                arrived.filter(~pl.col("is_late")), self.clicks, self.lookback
            )
            conversions = pl.concat(
                [on_time, arrived.filter(pl.col("is_late"))], how="diagonal_relaxed"
            )
            facts[Stream.CONVERSIONS] = conversions
            self.open_conversions.add(on_time)
            report.reattributed = old.height
        with timer("aggregate"):
            rollups = aggregate.combine(
                [
                    aggregate.engagement_rollup(facts[Stream.IMPRESSIONS], "impressions"),
                    aggregate.engagement_rollup(clicks, "clicks"),
                    aggregate.conversion_rollup(conversions),
                    aggregate.conversion_rollup(old, sign=-1),
                    aggregate.conversion_rollup(new, sign=1),
                ]
            )
            output = BatchOutput(
                batch_id=self.batch_id,
                impressions=_facts(facts[Stream.IMPRESSIONS], Stream.IMPRESSIONS, processed_at),
                clicks=_facts(clicks, Stream.CLICKS, processed_at),
                conversions=_facts(conversions, Stream.CONVERSIONS, processed_at),
                reattributions=conform(new, CONVERSION_REATTRIBUTIONS)
                if new.height
                else pl.DataFrame(schema=CONVERSION_REATTRIBUTIONS),
                rollups=rollups,
                dead_letters=pl.concat(dead) if dead else _NO_DEAD_LETTERS,
                stats=pl.DataFrame(stats, schema=INGEST_STATS, orient="row")
                if stats
                else _NO_STATS,
                offsets={k: v for k, v in self.offsets.items() if v is not None},
                watermarks=self.watermarks.snapshot(),
                fence=self.fence,
            )
        return output, report, active

    def _close_conversions(self) -> None:
        """Forget conversions that no click within the allowed lateness can precede."""
        self.open_conversions.expire("event_time", self._cutoffs(Stream.CLICKS, self.lateness))

    def _expire_state(self) -> None:
        self.dedupe.bound(*self._dedupe_bounds())
        self._close_conversions()
        self.clicks.expire(
            "event_time", self._cutoffs(Stream.CONVERSIONS, self.lateness + self.lookback)
        )
        # The oldest on-time conversion still to come, over all partitions (a click
        # and its conversion need not share one).
        cutoffs = list(self._cutoffs(Stream.CONVERSIONS, self.lateness).values())
        known = [c for c in cutoffs if c is not None]
        self.clicks.keep_last_settled(
            "event_time",
            min(known) if known and len(known) == len(cutoffs) else None,
            ["user_id", "ad_id"],
            ["event_time", "event_id"],
        )


_MIN_TIME = datetime(1970, 1, 1)
#: Shared empty outputs (frames are immutable; building one costs ~0.1 ms).
_NO_DEAD_LETTERS = pl.DataFrame(schema=DEAD_LETTERS)
_NO_STATS = pl.DataFrame(schema=INGEST_STATS)
_NO_HOUR = np.iinfo(np.int32).min
#: Keys inserted at a time when the dedupe state is rebuilt (then the budget is checked).
_REBUILD_SLICE = 1 << 20


def spill_directory(settings: Settings) -> Path:
    """Where this processor spills dedupe keys: a directory of its own under
    HOME/dedupe (several processors may share a home), named after the process so that
    a later one can delete what a crashed one left."""
    root = settings.home / "dedupe"
    if root.is_dir():
        for old in root.iterdir():
            pid = old.name.partition("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
    return root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True


def _live_budget(settings: Settings) -> int:
    """Bytes per stream and batch when live: ``batch_max_bytes``, at most
    ``live_batch_max_bytes`` (0: no cap)."""
    cap = settings.live_batch_max_bytes
    return min(settings.batch_max_bytes, cap) if cap else settings.batch_max_bytes


@dataclass(slots=True)
class _SavedState:
    """The processor's state before a piece of an isolated batch (copies)."""

    offsets: dict[tuple[Stream, int], str | None]
    watermarks: Watermarks
    dedupe: DedupeState
    clicks: FrameState
    open_conversions: FrameState


def _merge_reports(
    batch_id: int,
    reports: list[BatchReport],
    records: BatchRecords,
    refused: list[tuple[int, Failure]],
) -> BatchReport:
    merged = BatchReport(batch_id, {}, {}, {}, {}, {}, 0, 0)
    for r in reports:
        merged.reattributed += r.reattributed
        for total, part in (
            (merged.received, r.received),
            (merged.accepted, r.accepted),
            (merged.rejected, r.rejected),
            (merged.duplicates, r.duplicates),
            (merged.late, r.late),
        ):
            for stream, n in part.items():
                total[stream] = total.get(stream, 0) + n
    for place, _ in refused:
        stream = records.places[place][0]
        merged.received[stream] = merged.received.get(stream, 0) + 1
        merged.rejected[stream] = merged.rejected.get(stream, 0) + 1
    merged.bytes = sum(len(c.data) for cs in records.chunks.values() for c in cs)
    return merged


class _StepTimer:
    def __init__(self, totals: dict[str, float]) -> None:
        self.totals = totals
        self.spent: dict[str, float] = defaultdict(float)

    def __call__(self, name: str) -> _StepTimer:
        self._name = name
        return self

    def __enter__(self) -> None:
        self._t = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        dt = time.perf_counter() - self._t
        self.spent[self._name] += dt
        self.totals[self._name] += dt


def _on_time_state(frame: pl.DataFrame, columns: tuple[str, ...]) -> pl.DataFrame:
    """Rows of restored state that take part in attribution, typed as the live state."""
    if frame.height == 0:
        return frame
    return (
        frame.filter(~pl.col("is_late"))
        .select(columns)
        .with_columns(
            pl.col("event_time").cast(pl.Datetime("us")),
            pl.col("partition").cast(pl.Int32),
            *([pl.col("revenue").cast(REVENUE)] if "revenue" in columns else []),
        )
    )


def _facts(rows: pl.DataFrame, stream: Stream, processed_at: datetime) -> pl.DataFrame:
    schema = _FACT_SCHEMA[stream]
    if rows.height == 0:
        return pl.DataFrame(schema=schema)
    return conform(rows.with_columns(processed_at=pl.lit(processed_at)), schema)


def _dead_letters(decoded: Decoded, received_at: datetime) -> pl.DataFrame | None:
    if not decoded.rejects:
        return None
    records = []
    for r in decoded.rejects:
        chunk, index = decoded.locate(r.row)
        records.append(
            {
                "stream": decoded.stream.value,
                "partition": chunk.partition,
                "source_offset": chunk.start_offset or "",
                "record_index": index,
                "reason": r.reason.value,
                "detail": storable_text(r.detail[:500]),
                "payload": r.payload,
                "received_at": received_at,
            }
        )
    return pl.DataFrame(records, schema=DEAD_LETTERS)


def _stats(
    batch_id: int,
    decoded: Decoded,
    unique: pl.DataFrame,
    dups: pl.DataFrame,
    committed_at: datetime,
) -> list[tuple[object, ...]]:
    """This stream's rows of ``ingest_stats`` (one per partition that sent records), as
    tuples in :data:`INGEST_STATS` order: assembled in Python from one aggregation, as
    a live batch's few partitions cost less so than in a chain of frame operations."""
    received: dict[int, int] = {}
    for c in decoded.chunks:
        received[c.partition] = received.get(c.partition, 0) + c.records
    if not received:
        return []
    rejected: dict[int, int] = defaultdict(int)
    for r in decoded.rejects:
        rejected[decoded.locate(r.row)[0].partition] += 1
    duplicates = {int(p): int(n) for p, n in dups.iter_rows()} if dups.height else {}
    per: dict[int, tuple[object, ...]] = {}
    if unique.height:
        for p, *figures in (
            unique.group_by("partition")
            .agg(
                pl.col("is_late").sum(),
                pl.col("_unknown_ad").sum(),
                pl.col("_unknown_user").sum(),
                first=pl.col("event_time").min(),
                last=pl.col("event_time").max(),
            )
            .iter_rows()
        ):
            per[p] = tuple(figures)
    stream = decoded.stream.value
    rows: list[tuple[object, ...]] = []
    for p, n in received.items():
        late, unknown_ad, unknown_user, first, last = per.get(p, (0, 0, 0, None, None))
        rows.append(
            (
                batch_id,
                stream,
                p,
                n,
                n - rejected.get(p, 0),
                rejected.get(p, 0),
                duplicates.get(p, 0),
                late,
                unknown_ad,
                unknown_user,
                first,
                last,
                committed_at,
            )
        )
    return rows
