"""Keeping a serving store in step with the warehouse, which stays the source of truth.

- after each warehouse commit, the batch's :class:`~.base.LiveDelta` (with its end
  offsets) is applied under a batch key unique to this process's run, so a retried
  write cannot count twice;
- at processor start (every worker start and rebalance), the store's recorded offsets of
  the processor's partitions are compared with the warehouse's checkpoints
  (:meth:`StoreSync.start`): equal, the store holds every committed batch of those
  partitions and is used as it is; different (a crash between the warehouse commit and
  the store write, a store outage, a fresh or flushed store), it is rebuilt;
- a rebuild, also after any failed write, reads the warehouse's last 24 h of
  ``rollup_minute`` and ``fact_conversions``, its checkpoints and the largest committed
  batch id per partition in ONE snapshot (:func:`warehouse_snapshot`) and switches to
  it in one step; other processes may keep writing meanwhile, by the rebuild protocol
  of :mod:`.base` their batches are neither lost nor counted twice;
- a batch too large for a delta (catching up on a backlog) marks the store behind, so
  one rebuild covers many batches; the store then lags the warehouse by up to
  ``retry_seconds``.

Why the offsets comparison is sound: a partition has one owner at a time and a
fenced-out worker's commit fails before any store write, so each partition's offsets
have one writer at a time, which writes them after the warehouse commit and in commit
order; after a failed write the writer skips every later batch until it has rebuilt.
Equal offsets therefore mean that the last committed batch of the partition, and every
one before it, is in the store. Idle batches carry no offsets and write nothing.

A store failure never stops ingestion: it is logged and counted
(:attr:`StoreSync.failures`), and while the store is behind, writes are skipped and a
rebuild is tried at most every ``retry_seconds``, on the committer's next batch (idle
batches included, so the repair does not wait for new data).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Final

from adpulse.contracts import Stream
from adpulse.metrics import MEASURES
from adpulse.serving.store.base import (
    EPOCH,
    LIVE_CONVERSIONS,
    LIVE_ROLLUPS,
    WINDOW,
    LiveRows,
    RebuildRunningError,
    ServingStore,
    StoreSnapshot,
    StoreWindow,
    live_delta,
)
from adpulse.storage.warehouse.base import BatchOutput, Warehouse
from adpulse.storage.warehouse.schema import ROLLUP_KEY

log = logging.getLogger(__name__)

_KEY: Final = ", ".join(ROLLUP_KEY)
#: The catalog's measures summed per rollup key (one GROUP BY: no empty group).
_SUMS: Final = "".join(f" {m.sum_sql(empty_as_zero=False)} AS {m.name}," for m in MEASURES)


def warehouse_snapshot(warehouse: Warehouse) -> StoreSnapshot:
    """What the store should hold now, read from the warehouse in one transaction: the
    newest :data:`~.base.WINDOW` of rollups (summed per key) and conversions, the
    checkpoints, and the largest committed batch id per partition."""
    with warehouse.snapshot() as read:
        newest = read("SELECT MAX(minute) AS newest FROM rollup_minute", []).item()
        checkpoints = read('SELECT stream, "partition", "offset" FROM checkpoints', [])
        batches = read(
            'SELECT "partition", MAX(batch_id) AS batch_id FROM ingest_stats GROUP BY "partition"',
            [],
        )
        if newest is None:
            rows, window = LiveRows.empty(), StoreWindow(EPOCH, None)
        else:
            start = newest - WINDOW
            rollups = read(
                f"SELECT {_KEY},{_SUMS}"
                " CAST(0 AS DOUBLE PRECISION) AS latency_sum_seconds"
                f" FROM rollup_minute WHERE minute >= ? GROUP BY {_KEY}",
                [start],
            )
            conversions = read(
                f"SELECT {', '.join(LIVE_CONVERSIONS)} FROM fact_conversions WHERE event_time >= ?",
                [start],
            )
            rows = LiveRows(rollups.cast(LIVE_ROLLUPS), conversions.cast(LIVE_CONVERSIONS))  # type: ignore[arg-type]
            window = StoreWindow(start, newest)
    return StoreSnapshot(
        rows,
        window,
        offsets={(Stream(st), int(p)): o for st, p, o in checkpoints.iter_rows()},
        batches={int(p): int(b) for p, b in batches.iter_rows()},
    )


class StoreSync:
    """Writes one processor's committed batches to a serving store (see module docs)."""

    def __init__(
        self,
        store: ServingStore,
        warehouse: Warehouse,
        retry_seconds: float = 5.0,
        max_delta_rows: int = 100_000,
        wait_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self.warehouse = warehouse
        self.retry_seconds = retry_seconds
        self.max_delta_rows = max_delta_rows
        #: How long :meth:`start` waits for another process's rebuild to end.
        self.wait_seconds = wait_seconds
        #: Unique per run: a batch key stays unique should the warehouse be reset.
        self.run_id = uuid.uuid4().hex
        self.failures = 0
        self.rebuilds = 0
        #: Rebuilds after the store was first current (a failed write, a gap found at a
        #: rebalance, a flushed store): the ``store_rebuild`` alert's incidents.
        self.repairs = 0
        self.behind = True  # until the first rebuild
        self._was_current = False
        self._last_attempt = float("-inf")

    def start(self, partitions: Sequence[int]) -> bool:
        """Make the store current for ``partitions`` (a processor's, at its start):
        rebuild unless the store's recorded offsets of every one of them equal the
        warehouse's checkpoints. While another process rebuilds (workers starting
        together), wait up to ``wait_seconds`` for it, then check again: its snapshot
        may already hold these partitions. True when the store is current, False
        (logged) when it could not be checked or rebuilt (it is then behind: retried on
        later commits)."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                if self._current(partitions):
                    self.behind, self._was_current = False, True
                    return True
                self.store.rebuild(self.snapshot)
            except RebuildRunningError as exc:
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                return self._failed("rebuild", exc)
            except Exception as exc:  # noqa: BLE001 - the store must never stop ingestion
                return self._failed("rebuild", exc)
            self._last_attempt = time.monotonic()
            self._rebuilt()
            return True

    def _current(self, partitions: Sequence[int]) -> bool:
        held = self.store.offsets()
        if held is None:
            return False
        committed = self.warehouse.load_offsets()
        return all(
            held.get((stream, p)) == committed.get((stream, p))
            for stream in Stream
            for p in partitions
        )

    def _failed(self, what: str, exc: Exception) -> bool:
        self._last_attempt = time.monotonic()
        self.failures += 1
        self.behind = True
        log.warning("serving store %s failed (reads use the warehouse): %s", what, exc)
        return False

    def snapshot(self) -> StoreSnapshot:
        """What a rebuild reads (:func:`warehouse_snapshot`); called by the store once
        it journals the deltas written meanwhile."""
        return warehouse_snapshot(self.warehouse)

    def rebuild(self) -> bool:
        """Replace the store's content with the warehouse's; False (logged) on failure."""
        self._last_attempt = time.monotonic()
        try:
            self.store.rebuild(self.snapshot)
        except Exception as exc:  # noqa: BLE001 - the store must never stop ingestion
            return self._failed("rebuild", exc)
        self._rebuilt()
        return True

    def _rebuilt(self) -> None:
        self.rebuilds += 1
        if self._was_current:
            self.repairs += 1
        self.behind, self._was_current = False, True

    def on_commit(self, output: BatchOutput) -> None:
        """Bring the store up to date with ``output``, which the warehouse just committed.

        A batch of more than ``max_delta_rows`` rollup rows and conversions (catching up
        on a backlog) is not written as a delta: a rebuild, at most every
        ``retry_seconds``, covers many such batches at the cost of one window.
        """
        delta = live_delta(output)
        if delta.rows.rollups.height + delta.rows.conversions.height > self.max_delta_rows:
            self.behind = True
        if self.behind:
            if time.monotonic() - self._last_attempt >= self.retry_seconds:
                self.rebuild()  # includes this batch: it is committed
            return
        if delta.is_empty:
            return
        try:
            applied = self.store.apply(f"{self.run_id}:{output.batch_id}", delta)
        except Exception as exc:  # noqa: BLE001 - the store must never stop ingestion
            self.failures += 1
            self.behind = True
            log.warning(
                "serving store write of batch %s failed; it will be rebuilt: %s",
                output.batch_id,
                exc,
            )
            return
        if applied is None:  # the store lost its content (flushed, or never rebuilt)
            self.behind = True
            self.rebuild()
