"""The in-process serving store (the default): Polars frames behind a lock.

It serves the process that also runs the processor (``adpulse demo``): a separate
``adpulse serve`` has no way to receive its deltas, so it reads the warehouse instead
(or a Redis store, which any number of processes share).

Its memory is bounded by configuration, not by how long the process runs:

- it holds ``span`` of event time (``serving_memory_window_seconds``, 2 h by default;
  the shared stores hold :data:`.base.WINDOW`, 24 h): the dashboard's 15-minute and
  1-hour views with their previous periods, and trending's two windows. A view of a
  range starting earlier gets None from :meth:`MemoryServingStore.read`, so the query
  layer reads it from the warehouse (:func:`adpulse.serving.queries.sources.reader`),
  whole: no answer combines the two sources, and each is exact, so every answer is
  what it was with a 24-hour window. A rebuild reads only ``span`` of the warehouse.
- rows are held compactly (:mod:`.memory_rows`: the rollup key as an id into a
  dictionary of keys, the measures in the smallest integer types that hold them; ~21
  bytes a rollup row against ~87), read back in the contract's types;
- expired minutes are dropped once they are :data:`EXPIRE_SLACK` of the span old, and
  the key dictionary cut to the keys still held when it has doubled.

The demo's data at 5,000 events/s, 20 minutes of it
(``benchmarks/serving_store_bytes.py --rate 5000 --minutes 20``): 38.9 MB held before
(117 MB per hour of data, 2.8 GB for a 24-hour window), 10.6 MB now (32 MB per hour of
data, so ~70 MB for the default 2 hours); with ``--window-minutes 5`` it stays at 3.1 to
5.7 MB from the 5th minute to the 20th (sampled each minute).

What it costs (``benchmarks/serving_store_reads.py``: 20 minutes of 2,500-row deltas,
16k keys a minute; CPU, alternated with the code before): ~2.5 ms more per delta
applied (the key lookup); reads of the newest 15 minutes by minute only 56-61 ms
against 43 (the measures are widened before they are summed), by every key 245-273 ms
against 341-372 (fewer columns to filter and sum).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

import polars as pl

from adpulse.contracts import Stream
from adpulse.processor.state import own_strings
from adpulse.serving.store.base import (
    KEY_COLUMNS,
    LIVE_CONVERSIONS,
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
from adpulse.serving.store.memory_rows import HELD, KeyDictionary, shrink, sum_parts, widen

#: Appended delta frames are summed when there are more than this many: the newest
#: MERGED of them, with every older part not more than twice as large as those.
MAX_PARTS: Final = 64
MERGED: Final = 32
#: Rows before the window's start are dropped once they span this share of the window
#: (so the store holds at most ``span * (1 + EXPIRE_SLACK)`` of event time).
EXPIRE_SLACK: Final = 1 / 16
#: How long applied batch keys are remembered (a retried write comes seconds later).
BATCH_KEY_SECONDS: Final = 3_600.0


class MemoryServingStore(ServingStore):
    """A :class:`ServingStore` in this process's memory (the rebuild protocol of
    :mod:`.base` under one lock: the journal is a list of the deltas applied meanwhile)."""

    def __init__(self, span: timedelta = WINDOW) -> None:
        if span < timedelta(minutes=1):
            raise ValueError(f"the in-process store's window must be a minute or more; got {span}")
        self.span = span
        self._lock = threading.Lock()
        self._window: StoreWindow | None = None
        #: Rollup parts (:data:`.memory_rows.HELD`), oldest first; keys in ``_keys``.
        self._rollups: list[pl.DataFrame] = []
        self._keys = KeyDictionary()
        self._conversions = pl.DataFrame(schema=LIVE_CONVERSIONS)
        self._applied: dict[str, float] = {}
        self._offsets: dict[tuple[Stream, int], str] = {}
        #: The largest committed batch id per partition of the last rebuild's snapshot.
        self._batches: dict[int, int] = {}
        #: Deltas applied while a rebuild runs (None: no rebuild running).
        self._journal: list[LiveDelta] | None = None
        #: No row held is older than this (rows before the window's start are dropped
        #: once they are :data:`EXPIRE_SLACK` of the span old; reads never see them).
        self._held_from: datetime | None = None

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
        rollups = delta.rows.rollups.filter(pl.col("minute") >= start)
        conversions = own_strings(delta.rows.conversions.filter(pl.col("event_time") >= start))
        newest = _newest(self._window.newest, rollups, conversions)
        if rollups.height:
            self._rollups.append(shrink(self._keys.encode(rollups)))
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
        if newest is None or newest - self.span <= self._window.start:
            return
        start = newest - self.span
        self._window = StoreWindow(start, newest)
        # Dropping rows copies the frames holding them (the oldest part is the largest):
        # done when the expired minutes are a slice of the span, not every minute.
        if self._held_from is not None and start - self._held_from < self.span * EXPIRE_SLACK:
            return
        kept = (rows_since(f, "minute", start) for f in self._rollups)
        self._rollups = self._keys.keep_only([f for f in kept if f.height])
        self._conversions = rows_since(self._conversions, "event_time", start)
        self._held_from = start

    def rebuild(self, read: Callable[[], StoreSnapshot]) -> None:
        with self._lock:
            if self._journal is not None:
                raise RebuildRunningError("another rebuild of the serving store is running")
            self._journal = []  # before the snapshot is read: see the protocol
        try:
            snapshot = read()
            with self._lock:
                self._keys = KeyDictionary()
                rollups = snapshot.rows.rollups
                self._rollups = [sum_parts([self._keys.encode(rollups)])] if rollups.height else []
                self._conversions = own_strings(
                    snapshot.rows.conversions.select(list(LIVE_CONVERSIONS))
                )
                self._window = snapshot.window
                self._held_from = None  # the snapshot may hold more than the span
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
            keys = self._keys.keys  # replaced, never changed in place
            held = self._conversions if conversions else self._conversions.clear()
        in_range = pl.col("minute") >= start
        conv_in_range = pl.col("event_time") >= start
        if end is not None:
            in_range &= pl.col("minute") < end
            conv_in_range &= pl.col("event_time").dt.truncate("1m") < end
        rows = [widen(p.filter(in_range)) for p in parts]
        rollups = pl.concat(rows) if rows else widen(pl.DataFrame(schema=HELD))
        needed = [c for c in KEY_COLUMNS if c in columns]
        if needed:  # each row's key columns, by its key's id
            rollups = rollups.join(keys.select("key", *needed), on="key", how="left")
        return LiveRows(project(rollups, columns), held.filter(conv_in_range))

    def window(self) -> StoreWindow | None:
        with self._lock:
            return self._window

    def parts(self) -> int:
        """How many rollup frames it holds (see :func:`compact`)."""
        with self._lock:
            return len(self._rollups)

    def held(self) -> int:
        """How many rows it holds: rollup rows of every part (a key may have a row in
        several parts) and conversions, the window's and the expired ones not yet dropped."""
        with self._lock:
            return sum(f.height for f in self._rollups) + self._conversions.height

    def keys(self) -> int:
        """How many rollup keys its dictionary knows (see :mod:`.memory_rows`)."""
        with self._lock:
            return self._keys.keys.height

    def nbytes(self) -> int:
        """Bytes held by the frames of the window (Polars' estimate), for memory reports."""
        with self._lock:
            frames = [*self._rollups, self._conversions, self._keys.keys]
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
    """``parts`` with the newest :data:`MERGED` summed into one (:func:`.memory_rows.sum_parts`),
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
    return [*parts[:first], sum_parts(parts[first:])]


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
