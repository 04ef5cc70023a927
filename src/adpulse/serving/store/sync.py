"""Keeping a serving store in step with the warehouse, which stays the source of truth.

- after each warehouse commit, the batch's :class:`~.base.LiveDelta` is applied under a
  batch key unique to this process's run (batch ids alone may repeat across workers),
  so a retried write cannot count twice;
- at processor start, and after any failed write, the store is rebuilt from the
  warehouse (its last 24 h of ``rollup_minute`` and ``fact_conversions``) and switched
  to in one step. That repairs whatever a crash between the commit and the store write,
  or an outage of the store, left out;
- a batch too large for a delta (catching up on a backlog) marks the store behind, so
  one rebuild covers many batches; the store then lags the warehouse by up to
  ``retry_seconds``.

A store failure never stops ingestion: it is logged and counted
(:attr:`StoreSync.failures`), and while the store is behind, writes are skipped and a
rebuild is tried at most every ``retry_seconds``, on the committer's next batch (idle
batches included, so the repair does not wait for new data).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Final

from adpulse.serving.store.base import (
    EPOCH,
    LIVE_CONVERSIONS,
    LIVE_ROLLUPS,
    WINDOW,
    LiveRows,
    ServingStore,
    StoreWindow,
    live_delta,
)
from adpulse.storage.warehouse.base import BatchOutput, Warehouse
from adpulse.storage.warehouse.schema import ROLLUP_KEY

log = logging.getLogger(__name__)

_KEY: Final = ", ".join(ROLLUP_KEY)


def warehouse_rows(warehouse: Warehouse) -> tuple[LiveRows, StoreWindow]:
    """What the store should hold now, read from the warehouse: the newest
    :data:`~.base.WINDOW` of rollups (summed per key) and conversions."""
    newest = warehouse.query("SELECT MAX(minute) AS newest FROM rollup_minute").item()
    if newest is None:
        return LiveRows.empty(), StoreWindow(EPOCH, None)
    start = newest - WINDOW
    rollups = warehouse.query(
        f"SELECT {_KEY}, CAST(SUM(impressions) AS BIGINT) AS impressions,"
        " CAST(SUM(clicks) AS BIGINT) AS clicks, CAST(SUM(conversions) AS BIGINT) AS conversions,"
        " CAST(SUM(attributed_conversions) AS BIGINT) AS attributed_conversions,"
        " CAST(SUM(revenue) AS DECIMAL(18,4)) AS revenue,"
        " CAST(0 AS DOUBLE PRECISION) AS latency_sum_seconds"
        f" FROM rollup_minute WHERE minute >= ? GROUP BY {_KEY}",
        [start],
    )
    conversions = warehouse.query(
        f"SELECT {', '.join(LIVE_CONVERSIONS)} FROM fact_conversions WHERE event_time >= ?",
        [start],
    )
    rows = LiveRows(rollups.cast(LIVE_ROLLUPS), conversions.cast(LIVE_CONVERSIONS))  # type: ignore[arg-type]
    return rows, StoreWindow(start, newest)


class StoreSync:
    """Writes one processor's committed batches to a serving store (see module docs)."""

    def __init__(
        self,
        store: ServingStore,
        warehouse: Warehouse,
        retry_seconds: float = 5.0,
        max_delta_rows: int = 100_000,
    ) -> None:
        self.store = store
        self.warehouse = warehouse
        self.retry_seconds = retry_seconds
        self.max_delta_rows = max_delta_rows
        #: Unique per run: batch ids restart from the warehouse's and repeat across workers.
        self.run_id = uuid.uuid4().hex
        self.failures = 0
        self.rebuilds = 0
        self.behind = True  # until the first rebuild
        self._last_attempt = float("-inf")

    def rebuild(self) -> bool:
        """Replace the store's content with the warehouse's; False (logged) on failure."""
        self._last_attempt = time.monotonic()
        try:
            rows, window = warehouse_rows(self.warehouse)
            self.store.replace(rows, window)
        except Exception as exc:  # noqa: BLE001 - the store must never stop ingestion
            self.failures += 1
            self.behind = True
            log.warning("serving store rebuild failed (reads use the warehouse): %s", exc)
            return False
        self.rebuilds += 1
        self.behind = False
        return True

    def after_commit(self, output: BatchOutput) -> None:
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
