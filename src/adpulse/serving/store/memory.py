"""The in-process serving store (the default): Polars frames behind a lock.

It serves the process that also runs the processor (``adpulse demo``): a separate
``adpulse serve`` has no way to receive its deltas, so it reads the warehouse instead
(or a Redis store, which any number of processes share).

Rollup rows are kept once per projection of :data:`.base.PROJECTIONS` (per minute and
campaign, per minute and platform, ...), each in a list of parts of its own; a read
takes the parts of the smallest projection holding every column it keeps, so the
dashboard's 24 h views sum a few hundred rows a minute instead of every key. The five
small projections hold the whole :data:`.base.WINDOW`; the full key (~16,500 rows a
minute at 5,000 events/s, ~117 MB per hour of data) only the newest ``full_key_window``
(the ``serving_memory_window_seconds`` setting): a read that needs the full key from
earlier gets None, and the query layer reads the warehouse.
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
    projection_for,
)

#: Appended delta frames are summed when there are more than this many: the newest
#: MERGED of them, with every older part not more than twice as large as those.
MAX_PARTS: Final = 64
MERGED: Final = 32
#: Rows before a projection's start are dropped once they span this share of its
#: window, not every minute (dropping copies the parts holding them, the oldest and
#: largest first): a projection holds at most ``window * (1 + EXPIRE_SLACK)``.
EXPIRE_SLACK: Final = 1 / 16
#: How long applied batch keys are remembered (a retried write comes seconds later).
BATCH_KEY_SECONDS: Final = 3_600.0


class ProjectionParts:
    """The rollup rows of one projection (``columns``): a list of parts, summed on read,
    holding every minute from ``start`` on; ``span``: how far ``start`` stays behind the
    store's newest minute (no further back than the store's window)."""

    def __init__(self, columns: frozenset[str], span: timedelta, start: datetime) -> None:
        self.columns = columns
        self.span = span
        self.start = start
        self.parts: list[pl.DataFrame] = []
        #: No row held is older than this (rows before ``start`` are dropped late:
        #: :data:`EXPIRE_SLACK`; reads never see them).
        self.held_from = start

    def add(self, rows: pl.DataFrame) -> None:
        """Append ``rows`` (projected onto ``columns``) from ``start`` on."""
        rows = rows_since(rows, "minute", self.start)
        if rows.height:
            self.parts.append(rows)
        if len(self.parts) > MAX_PARTS:
            self.parts = compact(self.parts, self.columns)

    def expire(self, window: StoreWindow) -> None:
        """Move ``start`` to the store's ``window`` and ``span``; drop the rows before it
        once they span :data:`EXPIRE_SLACK` of ``span``."""
        start = window.start
        if window.newest is not None:
            start = max(start, window.newest - self.span)
        self.start = max(self.start, start)
        if self.start - self.held_from < self.span * EXPIRE_SLACK:
            return
        kept = (rows_since(p, "minute", self.start) for p in self.parts)
        self.parts = [p for p in kept if p.height]
        self.held_from = self.start

    def rows(self) -> int:
        """Rows held in every part (a key may have a row in several), expired ones not
        yet dropped included."""
        return sum(p.height for p in self.parts)


class MemoryServingStore(ServingStore):
    """A :class:`ServingStore` in this process's memory (the rebuild protocol of
    :mod:`.base` under one lock: the journal is a list of the deltas applied meanwhile).

    ``full_key_window``: how much event time the full-key rollup rows cover, back from
    the newest minute (at most the store's :data:`.base.WINDOW`, at least a minute);
    every other projection, and the conversions, cover the whole window.
    """

    def __init__(self, full_key_window: timedelta = WINDOW) -> None:
        if full_key_window < timedelta(minutes=1):
            raise ValueError(
                "the in-process store's full-key window must be a minute or more;"
                f" got {full_key_window}"
            )
        self.full_key_window = min(full_key_window, WINDOW)
        self._lock = threading.Lock()
        self._window: StoreWindow | None = None
        #: One per projection of PROJECTIONS, in its order.
        self._rollups: tuple[ProjectionParts, ...] = ()
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
            for held, rows in zip(self._rollups, projections(rollups), strict=True):
                held.add(rows)
        if conversions.height:
            self._conversions = pl.concat([self._conversions, conversions])
        if delta.reattributions.height:
            self._conversions = _reattribute(self._conversions, delta.reattributions)
        self._offsets.update(delta.offsets)
        self._window = StoreWindow(start, newest)
        self._expire()

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
        if newest is not None and newest - WINDOW > self._window.start:
            self._window = StoreWindow(newest - WINDOW, newest)
            self._conversions = rows_since(self._conversions, "event_time", newest - WINDOW)
        for held in self._rollups:
            held.expire(self._window)

    def rebuild(self, read: Callable[[], StoreSnapshot]) -> None:
        with self._lock:
            if self._journal is not None:
                raise RebuildRunningError("another rebuild of the serving store is running")
            self._journal = []  # before the snapshot is read: see the protocol
        try:
            snapshot = read()
            with self._lock:
                self._window = snapshot.window
                self._conversions = own_strings(
                    snapshot.rows.conversions.select(list(LIVE_CONVERSIONS))
                )
                self._rollups = tuple(
                    ProjectionParts(columns, self._span(columns), snapshot.window.start)
                    for columns in PROJECTIONS
                )
                self._expire()  # the window's and each projection's start, then their rows
                full = own_strings(project(snapshot.rows.rollups))
                for held, rows in zip(self._rollups, projections(full), strict=True):
                    held.add(rows)
                self._offsets = dict(snapshot.offsets)
                self._batches = dict(snapshot.batches)
                assert self._journal is not None
                for delta in self._journal:
                    if not delta.included_in(self._batches):
                        self._add(delta)
        finally:
            with self._lock:
                self._journal = None

    def _span(self, columns: frozenset[str]) -> timedelta:
        return self.full_key_window if columns == PROJECTIONS[-1] else WINDOW

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
        """As the contract says, from the smallest projection holding ``columns``
        (:func:`.base.projection_for`); None also when that is the full key and ``start``
        is before its window (``full_key_window``)."""
        with self._lock:
            if self._window is None or start < self._window.start:
                return None
            held = self._rollups[PROJECTIONS.index(projection_for(columns))]
            if start < held.start:
                return None
            parts = list(held.parts)
            events = self._conversions if conversions else self._conversions.clear()
        in_range = pl.col("minute") >= start
        conv_in_range = pl.col("event_time") >= start
        if end is not None:
            in_range &= pl.col("minute") < end
            conv_in_range &= pl.col("event_time").dt.truncate("1m") < end
        rollups = pl.concat(parts) if parts else pl.DataFrame(schema=LIVE_ROLLUPS)
        return LiveRows(project(rollups.filter(in_range), columns), events.filter(conv_in_range))

    def window(self) -> StoreWindow | None:
        with self._lock:
            return self._window

    def full_key_start(self) -> datetime | None:
        """The first minute the full-key rows cover (reads needing the full key from
        earlier get None); None when the store is not ready."""
        with self._lock:
            return None if self._window is None else self._rollups[-1].start

    def parts(self) -> int:
        """How many rollup frames the largest list holds (see :func:`compact`)."""
        with self._lock:
            return max((len(held.parts) for held in self._rollups), default=0)

    def rows_held(self) -> dict[frozenset[str], int]:
        """Rollup rows held per projection (:meth:`ProjectionParts.rows`), for memory
        reports and tests."""
        with self._lock:
            return {held.columns: held.rows() for held in self._rollups}

    def bytes_held(self) -> dict[frozenset[str], int]:
        """Bytes of rollup rows held per projection (Polars' estimate), for memory reports."""
        with self._lock:
            parts = {held.columns: list(held.parts) for held in self._rollups}
        return {c: sum(int(p.estimated_size()) for p in held) for c, held in parts.items()}

    def nbytes(self) -> int:
        """Bytes held by the frames of the window (Polars' estimate), for memory reports."""
        with self._lock:
            conversions = self._conversions
        return sum(self.bytes_held().values()) + int(conversions.estimated_size())

    def close(self) -> None:
        pass


def projections(rollups: pl.DataFrame) -> list[pl.DataFrame]:
    """Full-key ``rollups`` projected onto each of :data:`.base.PROJECTIONS`, in order
    (the full key's is ``rollups`` itself): each from the smallest one already made that
    holds its columns (per campaign from per ad, not from every key), text in buffers of
    its own."""
    made = {PROJECTIONS[-1]: rollups}
    for columns in reversed(PROJECTIONS[:-1]):
        source = min((made[c] for c in made if columns <= c), key=lambda f: f.height)
        made[columns] = own_strings(project(source, columns))
    return [made[columns] for columns in PROJECTIONS]


def rows_since(frame: pl.DataFrame, column: str, start: datetime) -> pl.DataFrame:
    """The rows of ``frame`` from ``start`` on: ``frame`` itself when that is all of them.

    The window moves every minute; filtering every frame each time copied the whole
    store (a transient as large as the store, every minute) to drop, during the first
    24 h, nothing."""
    oldest = frame[column].min()
    if frame[column].null_count() == 0 and (oldest is None or oldest >= start):  # type: ignore[operator]
        return frame
    return own_strings(frame.filter(pl.col(column) >= start))


def compact(
    parts: list[pl.DataFrame], columns: frozenset[str] = PROJECTIONS[-1]
) -> list[pl.DataFrame]:
    """``parts`` (rows of the projection onto ``columns``) with the newest :data:`MERGED`
    summed into one (:func:`.base.project`), together with every older part not more
    than twice as large as what is summed.

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
    return [*parts[:first], own_strings(project(pl.concat(parts[first:]), columns))]


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
