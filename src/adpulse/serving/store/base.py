"""The serving-store contract: live aggregates of the last 24 h, for fast reads.

A serving store holds, for the newest :data:`WINDOW` of event time (ending at the newest
minute it has seen), the same rows the query layer reads from the warehouse for its live
views, so every view computes exactly the same numbers from either:

- rollup rows: the warehouse's rows are one per (minute, ad, campaign, platform,
  location); a store keeps them summed per minute and key of each projection of
  :data:`PROJECTIONS` (per minute, per minute and campaign, ..., every key column), and
  a read gets them from the smallest projection that keeps every key column the view
  filters or groups by (:func:`project`, :func:`projection_for`). A store may keep the
  full key (the largest by far) for less than the window, and then answers reads
  needing it from earlier with None (the warehouse answers them);
- conversions: one per conversion event, with its event time, ad, campaign and its
  attributed click's time, latency, platform and location (latency percentiles need the
  individual values).

Audience columns (gender, age band, interests) are left out: queries filtering on them
go to the warehouse, as they go to the facts there.

The store is written by the processor after each warehouse commit (:class:`LiveDelta`,
applied idempotently under a batch key) and rebuilt from the warehouse, which stays the
source of truth, when it may be wrong (:mod:`.sync`). Until its first rebuild a store is
not *ready* and serves nothing.

Each delta also records the batch's end offsets per (stream, partition), in the same
atomic step as its rows: at start a processor compares them with the warehouse's
checkpoints of its partitions and rebuilds only when they differ (:mod:`.sync`).

A rebuild is exact while other processes keep writing (the rebuild protocol, which
every backend implements the same way):

1. it starts *journaling*: from now on every applied delta is also kept for the new
   content (with its batch id and one partition it touched);
2. it reads a :class:`StoreSnapshot` from the warehouse in ONE transaction: the rows,
   the checkpoints, and per partition the largest batch id committed;
3. it switches to the new content in one atomic step, replaying the journaled deltas of
   batches the snapshot does not include, and keeps the snapshot's batch ids, so that a
   delta arriving later for a batch the snapshot includes is not added again.

Why "batch id <= the snapshot's largest id of one of its partitions" tells whether the
snapshot includes a batch: a partition has one owner at a time, its batches commit in
the order of their ids (ids come in increasing blocks from one counter, reserved after
the lease is taken), and a snapshot sees a prefix of the commits. A delta applied before
step 1 belongs to a batch committed before it, so before the snapshot: included.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Self

import polars as pl

from adpulse.contracts import Stream
from adpulse.metrics import MEASURES
from adpulse.storage.warehouse.base import BatchOutput
from adpulse.storage.warehouse.schema import (
    CONVERSION_REATTRIBUTIONS,
    ROLLUP_KEY,
    ROLLUP_MEASURES,
)

#: How much event time a serving store holds, back from its newest minute.
WINDOW: Final = timedelta(hours=24)
#: The window start of a store rebuilt from an empty warehouse: it holds everything.
EPOCH: Final = datetime(1970, 1, 1)

#: Rollup rows as the store holds them: the warehouse's rollup columns, measures summed.
#: ``latency_sum_seconds`` is not kept (no view reads it) and reads back as 0.
LIVE_ROLLUPS: Final = {**ROLLUP_KEY, **ROLLUP_MEASURES}
#: The summed measures, the metric catalog's (:data:`adpulse.metrics.MEASURES`).
LIVE_MEASURES: Final = tuple(m.name for m in MEASURES)
#: Conversions as the store holds them: the ``fact_conversions`` columns the live views
#: read (latency, filters by campaign, ad, platform, location).
LIVE_CONVERSIONS: Final = {
    "event_id": pl.String(),
    "event_time": pl.Datetime("us"),
    "ad_id": pl.Int64(),
    "campaign": pl.String(),
    "platform": pl.String(),
    "location": pl.String(),
    "click_time": pl.Datetime("us"),
    "latency_seconds": pl.Float64(),
}


#: The rollup key columns besides the minute.
KEY_COLUMNS: Final = ("ad_id", "campaign", "platform", "location")
#: Reductions of the rollup key a store keeps, smallest first: a view reads the smallest
#: one holding every column it filters or groups by (the dashboard's headline numbers
#: read per-minute totals, 1,440 rows a day, instead of every key).
PROJECTIONS: Final[tuple[frozenset[str], ...]] = (
    frozenset(),
    frozenset({"campaign"}),
    frozenset({"platform"}),
    frozenset({"location"}),
    frozenset({"ad_id", "campaign"}),
    frozenset(KEY_COLUMNS),
)


def projection_for(columns: frozenset[str]) -> frozenset[str]:
    """The smallest projection of :data:`PROJECTIONS` that keeps every key column of
    ``columns`` (the full key when one of them is no key column)."""
    return next((kept for kept in PROJECTIONS if columns <= kept), PROJECTIONS[-1])


def project(rollups: pl.DataFrame, columns: frozenset[str] = PROJECTIONS[-1]) -> pl.DataFrame:
    """One row per minute and value of the key ``columns``, measures summed, the other key
    columns NULL; typed as :data:`LIVE_ROLLUPS`. The SQL of the query layer gives the same
    result over it as over the full rows, as long as it reads no other key column."""
    if rollups.height == 0:
        return pl.DataFrame(schema=LIVE_ROLLUPS)
    keep = ["minute", *(c for c in KEY_COLUMNS if c in columns)]
    return (
        rollups.group_by(keep)
        .agg(m.sum_expr() for m in MEASURES)
        .with_columns(
            *(pl.lit(None).alias(c) for c in KEY_COLUMNS if c not in columns),
            pl.lit(0.0).alias("latency_sum_seconds"),
        )
        .select(pl.col(name).cast(dtype) for name, dtype in LIVE_ROLLUPS.items())
    )


class ServingStoreError(RuntimeError):
    """The serving store could not be read or written (the warehouse is unaffected)."""


class ServingStoreUnavailableError(ServingStoreError):
    """The serving store cannot be opened as configured; the message says why."""


class RebuildRunningError(ServingStoreError):
    """Another rebuild of the store is running (one at a time); nothing was changed."""


@dataclass(frozen=True, slots=True)
class LiveRows:
    """Rows of the store (or for it): ``rollups`` per :data:`LIVE_ROLLUPS`,
    ``conversions`` per :data:`LIVE_CONVERSIONS`."""

    rollups: pl.DataFrame
    conversions: pl.DataFrame

    @classmethod
    def empty(cls) -> Self:
        return cls(pl.DataFrame(schema=LIVE_ROLLUPS), pl.DataFrame(schema=LIVE_CONVERSIONS))


#: Committed offsets by (stream, partition); opaque strings, compared for equality only.
Offsets = Mapping[tuple[Stream, int], str]


@dataclass(frozen=True, slots=True)
class LiveDelta:
    """What one committed batch changes: rollup rows to add (re-attributions already
    appear there as a negative and a positive row), new conversions, and new attributions
    of conversions committed earlier (``CONVERSION_REATTRIBUTIONS`` columns).

    ``batch_id`` and ``partition`` (one partition the batch read records of) tell a
    rebuild whether its snapshot includes the batch; None for a delta of no known batch
    (always applied). ``offsets``: the batch's end offsets, recorded with it.
    """

    rows: LiveRows
    reattributions: pl.DataFrame
    batch_id: int | None = None
    partition: int | None = None
    offsets: Offsets = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        """No rows and no offsets: nothing to write."""
        return not (
            self.rows.rollups.height
            or self.rows.conversions.height
            or self.reattributions.height
            or self.offsets
        )

    def included_in(self, batches: Mapping[int, int]) -> bool:
        """Whether a snapshot with these largest committed batch ids per partition holds
        this batch (see the module docs)."""
        if self.batch_id is None or self.partition is None:
            return False
        last = batches.get(self.partition)
        return last is not None and self.batch_id <= last


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """What a rebuild reads from the warehouse in one transaction: the rows and window
    to hold, the checkpoints, and per partition the largest committed batch id."""

    rows: LiveRows
    window: StoreWindow
    offsets: Offsets = field(default_factory=dict)
    batches: Mapping[int, int] = field(default_factory=dict)


#: Shared empty parts of a delta (frames are immutable; each costs ~0.1 ms to build).
_NO_ROLLUPS: Final = pl.DataFrame(schema=LIVE_ROLLUPS)
_NO_CONVERSIONS: Final = pl.DataFrame(schema=LIVE_CONVERSIONS)
_NO_REATTRIBUTIONS: Final = pl.DataFrame(schema=CONVERSION_REATTRIBUTIONS)


def live_delta(output: BatchOutput) -> LiveDelta:
    """The store's share of a committed batch (a pure projection of its outputs)."""
    rollups = output.rollups
    rollups = (
        rollups.select(
            *(
                pl.lit(0.0).alias(c) if c == "latency_sum_seconds" else pl.col(c)
                for c in LIVE_ROLLUPS
            )
        )
        if rollups.height
        else _NO_ROLLUPS
    )
    conversions = (
        output.conversions.select(list(LIVE_CONVERSIONS))
        if output.conversions.height
        else _NO_CONVERSIONS
    )
    reattributions = (
        output.reattributions.select(list(CONVERSION_REATTRIBUTIONS))
        if output.reattributions.height
        else _NO_REATTRIBUTIONS
    )
    partitions = output.stats["partition"] if output.stats.height else None
    return LiveDelta(
        LiveRows(rollups, conversions),
        reattributions,
        batch_id=output.batch_id if partitions is not None else None,
        partition=int(partitions.min()) if partitions is not None else None,  # type: ignore[arg-type]
        offsets=dict(output.offsets),
    )


@dataclass(frozen=True, slots=True)
class StoreWindow:
    """The event time a ready store holds: every minute from ``start`` on (``newest`` is
    the newest minute it has seen; None while it has seen none)."""

    start: datetime
    newest: datetime | None


class ServingStore(ABC):
    """Live aggregates of the newest :data:`WINDOW`; one implementation per backend.

    Implementations are safe to share between threads, and (for server backends) between
    processes writing and reading the same store.
    """

    @abstractmethod
    def apply(self, batch_key: str, delta: LiveDelta) -> bool | None:
        """Add ``delta`` once per ``batch_key``, atomically with its offsets, then expire
        minutes older than the window; skipped (still True) when the content came from a
        snapshot that includes the batch. True when applied, False when that key was
        already applied (a replay: nothing changes), None when the store is not ready
        (never rebuilt, no rebuild running: nothing changes, a rebuild is due). Rows
        older than the window are ignored."""

    @abstractmethod
    def rebuild(self, read: Callable[[], StoreSnapshot]) -> None:
        """Replace the whole content with a snapshot that ``read`` takes from the
        warehouse, by the rebuild protocol (module docs): deltas applied meanwhile by
        anyone are neither lost nor counted twice. Makes the store ready. Readers see
        the old or the new content, never a mix. One rebuild at a time: raises
        :class:`RebuildRunningError` while another one runs."""

    def replace(self, rows: LiveRows, window: StoreWindow) -> None:
        """Rebuild with ``rows`` holding ``window``, no offsets and no batch ids."""
        self.rebuild(lambda: StoreSnapshot(rows, window))

    @abstractmethod
    def offsets(self) -> dict[tuple[Stream, int], str] | None:
        """The end offsets of what the content holds, per (stream, partition): of the
        last batch applied, or of the snapshot of the last rebuild. None when not ready."""

    @abstractmethod
    def read(
        self,
        start: datetime,
        end: datetime | None,
        columns: frozenset[str] = PROJECTIONS[-1],
        *,
        conversions: bool = True,
    ) -> LiveRows | None:
        """The rows of minutes ``[start, end)`` (end None: to the newest), or None when
        the store cannot answer for that range: not ready, ``start`` before its window,
        or before the event time its projection for ``columns`` covers (a full key kept
        for less than the window). ``start`` must be a whole minute. Rollup rows are
        summed per minute and key at least over the key ``columns`` (:func:`project`):
        other key columns may be NULL. Conversions are complete, or none at all when
        ``conversions`` is False (for a view that reads none: they are most of what a
        wide range costs to read)."""

    @abstractmethod
    def window(self) -> StoreWindow | None:
        """The event time held (the full key's rows may cover less: :meth:`read`);
        None when the store is not ready."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
