"""The in-process serving store (the default): Polars frames behind a lock.

It serves the process that also runs the processor (``adpulse demo``): a separate
``adpulse serve`` has no way to receive its deltas, so it reads the warehouse instead
(or a Redis store, which any number of processes share).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Final

import polars as pl

from adpulse.contracts import Stream
from adpulse.processor.state import own_strings
from adpulse.serving.store.base import (
    LIVE_CONVERSIONS,
    LIVE_ROLLUPS,
    PROJECTIONS,
    WINDOW,
    LiveDelta,
    LiveRows,
    RebuildRunningError,
    ServingStore,
    StoreSnapshot,
    StoreWindow,
    project,
)

#: Appended delta frames are summed when there are more than this many: the newest
#: MERGED of them, with every older part not more than twice as large as those.
MAX_PARTS: Final = 64
MERGED: Final = 32
#: How long applied batch keys are remembered (a retried write comes seconds later).
BATCH_KEY_SECONDS: Final = 3_600.0


class MemoryServingStore(ServingStore):
    """A :class:`ServingStore` in this process's memory (the rebuild protocol of
    :mod:`.base` under one lock: the journal is a list of the deltas applied meanwhile)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window: StoreWindow | None = None
        self._rollups: list[pl.DataFrame] = []
        self._conversions = pl.DataFrame(schema=LIVE_CONVERSIONS)
        self._applied: dict[str, float] = {}
        self._offsets: dict[tuple[Stream, int], str] = {}
        #: The largest committed batch id per partition of the last rebuild's snapshot.
        self._batches: dict[int, int] = {}
        #: Deltas applied while a rebuild runs (None: no rebuild running).
        self._journal: list[LiveDelta] | None = None

    def apply(self, batch_key: str, delta: LiveDelta) -> bool | None:
        with self._lock:
            if self._window is None and self._journal is None:
                return None
            now = time.monotonic()
            if batch_key in self._applied:
                return False
            self._applied[batch_key] = now
            self._forget_batch_keys(now)
            if self._window is not None and not delta.included_in(self._batches):
                self._add(delta)
            if self._journal is not None:
                self._journal.append(delta)
            return True

    def _add(self, delta: LiveDelta) -> None:
        assert self._window is not None
        start = self._window.start
        # text in buffers of its own: a delta's views would keep its batch's text alive
        rollups = own_strings(delta.rows.rollups.filter(pl.col("minute") >= start))
        conversions = own_strings(delta.rows.conversions.filter(pl.col("event_time") >= start))
        newest = _newest(self._window.newest, rollups, conversions)
        if rollups.height:
            self._rollups.append(rollups)
        if conversions.height:
            self._conversions = pl.concat([self._conversions, conversions])
        if delta.reattributions.height:
            self._conversions = _reattribute(self._conversions, delta.reattributions)
        self._offsets.update(delta.offsets)
        self._window = StoreWindow(start, newest)
        self._expire()
        if len(self._rollups) > MAX_PARTS:
            self._rollups = compact(self._rollups)

    def _forget_batch_keys(self, now: float) -> None:
        # insertion order is time order: drop from the front
        while self._applied:
            key, at = next(iter(self._applied.items()))
            if now - at < BATCH_KEY_SECONDS:
                break
            del self._applied[key]

    def _expire(self) -> None:
        assert self._window is not None
        newest = self._window.newest
        if newest is None or newest - WINDOW <= self._window.start:
            return
        start = newest - WINDOW
        self._window = StoreWindow(start, newest)
        self._rollups = [rows_since(f, "minute", start) for f in self._rollups]
        self._conversions = rows_since(self._conversions, "event_time", start)

    def rebuild(self, read: Callable[[], StoreSnapshot]) -> None:
        with self._lock:
            if self._journal is not None:
                raise RebuildRunningError("another rebuild of the serving store is running")
            self._journal = []  # before the snapshot is read: see the protocol
        try:
            snapshot = read()
            with self._lock:
                self._rollups = [own_strings(project(snapshot.rows.rollups))]
                self._conversions = own_strings(
                    snapshot.rows.conversions.select(list(LIVE_CONVERSIONS))
                )
                self._window = snapshot.window
                self._offsets = dict(snapshot.offsets)
                self._batches = dict(snapshot.batches)
                self._expire()
                assert self._journal is not None
                for delta in self._journal:
                    if not delta.included_in(self._batches):
                        self._add(delta)
        finally:
            with self._lock:
                self._journal = None

    def offsets(self) -> dict[tuple[Stream, int], str] | None:
        with self._lock:
            return None if self._window is None else dict(self._offsets)

    def read(
        self,
        start: datetime,
        end: datetime | None,
        columns: frozenset[str] = PROJECTIONS[-1],
        *,
        conversions: bool = True,
    ) -> LiveRows | None:
        with self._lock:
            if self._window is None or start < self._window.start:
                return None
            parts = list(self._rollups)
            held = self._conversions if conversions else self._conversions.clear()
        in_range = pl.col("minute") >= start
        conv_in_range = pl.col("event_time") >= start
        if end is not None:
            in_range &= pl.col("minute") < end
            conv_in_range &= pl.col("event_time").dt.truncate("1m") < end
        rollups = pl.concat(parts) if parts else pl.DataFrame(schema=LIVE_ROLLUPS)
        return LiveRows(project(rollups.filter(in_range), columns), held.filter(conv_in_range))

    def window(self) -> StoreWindow | None:
        with self._lock:
            return self._window

    def parts(self) -> int:
        """How many rollup frames it holds (see :func:`compact`)."""
        with self._lock:
            return len(self._rollups)

    def nbytes(self) -> int:
        """Bytes held by the frames of the window (Polars' estimate), for memory reports."""
        with self._lock:
            frames = [*self._rollups, self._conversions]
        return sum(int(f.estimated_size()) for f in frames)

    def close(self) -> None:
        pass


def rows_since(frame: pl.DataFrame, column: str, start: datetime) -> pl.DataFrame:
    """The rows of ``frame`` from ``start`` on: ``frame`` itself when that is all of them.

    The window moves every minute; filtering every frame each time copied the whole
    store (a transient as large as the store, every minute) to drop, during the first
    24 h, nothing."""
    oldest = frame[column].min()
    if frame[column].null_count() == 0 and (oldest is None or oldest >= start):  # type: ignore[operator]
        return frame
    return own_strings(frame.filter(pl.col(column) >= start))


def compact(parts: list[pl.DataFrame]) -> list[pl.DataFrame]:
    """``parts`` with the newest :data:`MERGED` summed into one (:func:`.base.project`),
    together with every older part not more than twice as large as what is summed.

    Summing all of them each time re-summed (and copied) the whole window every
    :data:`MAX_PARTS` batches. This way the parts shrink from the oldest to the newest
    (each more than twice the rows of all newer ones when it was made), a row is summed
    again only when the parts after it have grown as large as its own, and the number of
    parts stays logarithmic in the window's rows plus :data:`MAX_PARTS`. Reads sum over
    the parts (they project), so a key in two parts reads the same as one summed row."""
    first = len(parts) - MERGED
    rows = sum(p.height for p in parts[first:])
    while first > 0 and parts[first - 1].height <= 2 * rows:
        first -= 1
        rows += parts[first].height
    return [*parts[:first], own_strings(project(pl.concat(parts[first:])))]


def _newest(
    current: datetime | None, rollups: pl.DataFrame, conversions: pl.DataFrame
) -> datetime | None:
    candidates = [current] if current is not None else []
    if rollups.height:
        candidates.append(rollups["minute"].max())  # type: ignore[arg-type]
    if conversions.height:
        candidates.append(conversions["event_time"].dt.truncate("1m").max())  # type: ignore[arg-type]
    return max(candidates) if candidates else None


def _reattribute(conversions: pl.DataFrame, reattributions: pl.DataFrame) -> pl.DataFrame:
    """``conversions`` with the attribution columns of ``reattributions`` (by event_id),
    as the warehouse's UPDATE does."""
    columns = [c for c in reattributions.columns if c != "event_id"]
    new = reattributions.unique("event_id", keep="last")
    updated = conversions.join(new, on="event_id", how="left", suffix="_new")
    return own_strings(
        updated.with_columns(
            pl.when(pl.col("click_event_id").is_not_null())
            .then(pl.col(f"{c}_new"))
            .otherwise(pl.col(c))
            .alias(c)
            for c in columns
            if c in conversions.columns
        ).select(list(LIVE_CONVERSIONS))
    )
