"""The processor's keyed state, each part bounded by its horizon.

- :class:`Watermarks`: per stream and partition, the newest event time seen and the
  watermark (which also follows the wall clock once a stream has been idle).
- :class:`DedupeState`: event keys per stream, kept for the dedupe horizon.
- :class:`ClickState`: clicks kept for the attribution lookback (plus allowed lateness).
- :class:`OpenConversions`: conversions whose attribution may still change, because a
  click at or before them can still arrive within the allowed lateness.

State is never serialized: after a restart it is rebuilt from the committed facts with
the same retention rules (:meth:`Processor.recover`), so it is committed atomically with
the outputs by construction.
"""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

import numpy as np
import polars as pl

from adpulse.contracts import Stream
from adpulse.processor.id_set import SLOT_BYTES, IdSet
from adpulse.processor.spilled_keys import SpilledKeys
from adpulse.storage.warehouse.base import PartitionWatermark

EPOCH = datetime(1970, 1, 1)
#: An event-time hour in microseconds: the granularity of dedupe retention.
HOUR_US = 3_600_000_000
#: The in-memory key tables spill when their entries pass this share of the budget's
#: slots, down to SPILL_TO (deep: the entries kept are inserted again into the rebuilt
#: table, so each spill should free many): a table holds its entries at a load of at
#: most 0.7 and is rebuilt at most half full, so the tables' bytes stay within the budget.
SPILL_AT: Final = 0.25
SPILL_TO: Final = 0.03125
#: Click state below this many rows is not compacted (:meth:`FrameState.keep_last_settled`).
COMPACT_MIN_ROWS: Final = 1024


def hour_bucket(ts: datetime) -> int:
    return int((ts - EPOCH) // timedelta(hours=1))


@dataclass(slots=True)
class _Clock:
    watermark: datetime
    max_event_time: datetime
    last_event_wall: float


class Watermarks:
    """Watermark per (stream, partition); ``None`` until the first event."""

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self._clocks: dict[tuple[Stream, int], _Clock] = {}

    def restore(self, saved: dict[tuple[Stream, int], PartitionWatermark]) -> None:
        now = time.monotonic()
        for key, wm in saved.items():
            self._clocks[key] = _Clock(wm.watermark, wm.max_event_time, now)

    def copy(self) -> Watermarks:
        other = Watermarks(self.idle_timeout)
        other._clocks = {
            k: _Clock(c.watermark, c.max_event_time, c.last_event_wall)
            for k, c in self._clocks.items()
        }
        return other

    def get(self, stream: Stream, partition: int) -> datetime | None:
        clock = self._clocks.get((stream, partition))
        return clock.watermark if clock else None

    def observe(self, stream: Stream, partition: int, max_event_time: datetime) -> None:
        key = (stream, partition)
        clock = self._clocks.get(key)
        now = time.monotonic()
        if clock is None:
            self._clocks[key] = _Clock(max_event_time, max_event_time, now)
            return
        if max_event_time > clock.max_event_time:
            clock.max_event_time = max_event_time
        if max_event_time > clock.watermark:
            clock.watermark = max_event_time
        clock.last_event_wall = now

    def advance_idle(self, active: set[tuple[Stream, int]]) -> bool:
        """Let idle streams' watermarks follow the wall clock; True if any moved."""
        now = time.monotonic()
        moved = False
        for key, clock in self._clocks.items():
            if key in active:
                continue
            idle = now - clock.last_event_wall
            if idle <= self.idle_timeout:
                continue
            candidate = clock.max_event_time + timedelta(seconds=idle - self.idle_timeout)
            # Whole seconds only, so an idle tick does not rewrite the row every poll.
            candidate = candidate.replace(microsecond=0)
            if candidate > clock.watermark:
                clock.watermark = candidate
                moved = True
        return moved

    def snapshot(self) -> dict[tuple[Stream, int], PartitionWatermark]:
        return {
            k: PartitionWatermark(c.watermark, c.max_event_time) for k, c in self._clocks.items()
        }

    def cutoff_map(
        self, stream: Stream, partitions: list[int], behind: timedelta
    ) -> dict[int, datetime | None]:
        out: dict[int, datetime | None] = {}
        for p in partitions:
            wm = self.get(stream, p)
            out[p] = wm - behind if wm is not None else None
        return out


class DedupeKeys:
    """One stream's dedupe keys: the recent ones in memory (:class:`IdSet`), older hours
    spilled to runs on disk (:class:`SpilledKeys`) when the memory budget asks for it.

    A key is seen when a live copy is in either; a key seen only in a run is not added
    to the table, so each key keeps the hour of its first sighting, as in one table.
    """

    def __init__(self, spilled: SpilledKeys | None = None) -> None:
        self.table = IdSet()
        self.spilled = spilled

    def __len__(self) -> int:
        return len(self.table) + (len(self.spilled) if self.spilled is not None else 0)

    @property
    def nbytes(self) -> int:
        """Bytes in memory: the table, and the filters and fences of the runs."""
        return self.table.nbytes + (self.spilled.nbytes if self.spilled is not None else 0)

    def copy(self) -> DedupeKeys:
        other = DedupeKeys.__new__(DedupeKeys)
        other.table = self.table.copy()
        other.spilled = self.spilled.share() if self.spilled is not None else None
        return other

    def check_and_add(
        self,
        hi: np.ndarray,
        lo: np.ndarray,
        bucket: np.ndarray,
        cutoff: np.ndarray,
        keep_from: int | None = None,
    ) -> np.ndarray:
        """:meth:`IdSet.check_and_add` over both tiers."""
        if self.spilled is None or self.spilled.runs == 0:
            return self.table.check_and_add(hi, lo, bucket, cutoff, keep_from)
        hi = np.ascontiguousarray(hi, dtype=np.uint64)
        seen = self.spilled.seen(hi, (lo & np.uint64(0xFFFF_FFFF)).astype(np.uint32), cutoff)
        fresh = np.flatnonzero(~seen)
        if fresh.size == len(hi):
            return self.table.check_and_add(hi, lo, bucket, cutoff, keep_from)
        if fresh.size:
            floor = int(cutoff.min()) if keep_from is None else min(keep_from, int(cutoff.min()))
            seen[fresh] = self.table.check_and_add(
                hi[fresh], lo[fresh], bucket[fresh], cutoff[fresh], floor
            )
        return seen


class DedupeState:
    """Keys of events seen within the dedupe horizon, per stream.

    A key counts as seen while its event-time hour is not older than the hour of
    (watermark - horizon) of its partition.

    ``budget_bytes`` (0: none) bounds the in-memory tables: when their entries pass
    :data:`SPILL_AT` of the budget's slots, the oldest hours go to runs on disk under
    ``directory`` until they are at :data:`SPILL_TO` (see :meth:`bound`). Without a
    directory nothing is spilled.
    """

    def __init__(self, budget_bytes: int = 0, directory: Path | None = None) -> None:
        self.budget_bytes = budget_bytes
        self.directory = directory
        self.sets: dict[Stream, DedupeKeys] = {
            s: DedupeKeys(SpilledKeys(directory / s.value) if directory is not None else None)
            for s in Stream
        }

    def __len__(self) -> int:
        return sum(len(s) for s in self.sets.values())

    @property
    def nbytes(self) -> int:
        """Bytes of memory of the key tables and of the spilled runs' filters."""
        return sum(s.nbytes for s in self.sets.values())

    @property
    def spilled_keys(self) -> int:
        return sum(len(s.spilled) for s in self.sets.values() if s.spilled is not None)

    def copy(self) -> DedupeState:
        """A copy (the runs on disk are shared: it is valid until :meth:`bound` runs)."""
        other = DedupeState.__new__(DedupeState)
        other.budget_bytes, other.directory = self.budget_bytes, self.directory
        other.sets = {stream: ids.copy() for stream, ids in self.sets.items()}
        return other

    def bound(self, floor: int, newest: int) -> None:
        """Between batches: delete runs of hours before ``floor`` (dead in every
        partition), and spill the oldest hours when over the budget.

        ``newest``: the newest event-time hour seen; older hours' runs are merged.
        """
        for keys in self.sets.values():
            if keys.spilled is not None:
                keys.spilled.expire(floor)
        if not self.budget_bytes or self.directory is None:
            return
        slots = self.budget_bytes // SLOT_BYTES
        used = sum(k.table.used for k in self.sets.values())
        if used <= SPILL_AT * slots:
            return
        # The oldest hours first, across streams, until the tables hold SPILL_TO.
        counts: dict[int, int] = defaultdict(int)
        for keys in self.sets.values():
            for hour, n in zip(*keys.table.live_buckets(floor), strict=True):
                counts[int(hour)] += int(n)
        live = sum(counts.values())
        threshold = max(counts, default=floor) + 1
        for hour in sorted(counts):
            if live <= SPILL_TO * slots:
                threshold = hour
                break
            live -= counts[hour]
        for keys in self.sets.values():
            assert keys.spilled is not None
            keys.spilled.add(*keys.table.take_before(threshold, floor))
            keys.spilled.compact(newest)

    def close(self) -> None:
        """Delete the runs on disk."""
        for keys in self.sets.values():
            if keys.spilled is not None:
                keys.spilled.clear()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def key_hashes(event_ids: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes of each id: a 128-bit in-memory key.

    Polars' hash is only stable within one version, which is enough: the set is rebuilt
    from the stored ids after every restart.
    """
    frame = pl.DataFrame({"id": event_ids}).select(
        hi=pl.col("id").hash(0x5EED_0001), lo=pl.col("id").hash(0x5EED_0002)
    )
    return frame["hi"].to_numpy(), frame["lo"].to_numpy()


def hour_buckets(times: pl.Series) -> np.ndarray:
    return (times.dt.epoch("us") // HOUR_US).cast(pl.Int32).to_numpy()


CLICK_STATE_COLUMNS = (
    "user_id",
    "ad_id",
    "event_time",
    "event_id",
    "platform",
    "location",
    "partition",
)

OPEN_CONVERSION_COLUMNS = (
    "event_id",
    "user_id",
    "ad_id",
    "event_time",
    "revenue",
    "campaign",
    "gender",
    "age_band",
    "interests",
    "click_event_id",
    "click_time",
    "latency_seconds",
    "platform",
    "location",
    "partition",
)


def own_strings(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with its text columns copied into buffers of their own.

    A Polars text column is a view into the buffers of the column it was filtered,
    gathered, joined or grouped from, and keeps ALL of them alive: ten rows kept of each
    of 20 batches of 500,000 held the batches' whole text, 445 MB, while
    ``estimated_size()`` said 0. Frames kept across batches (processor state, the
    serving store) go through this, or each pins the text of the batches it came from
    (under ``adpulse demo --rate 5000``: ~10 MB a minute, docs/performance.md)."""
    text = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    if not text or frame.height == 0:
        return frame
    return frame.with_columns(pl.concat_str(pl.col(name), pl.lit("")).alias(name) for name in text)


class FrameState:
    """Rows kept in a list of frames, dropped by an event-time cutoff per partition
    (text in buffers of their own: :func:`own_strings`)."""

    def __init__(self, columns: tuple[str, ...]) -> None:
        self.columns = columns
        self._parts: list[pl.DataFrame] = []
        self._frame: pl.DataFrame | None = None
        #: Rows after the last :meth:`keep_last_settled` (which runs again at twice this).
        self._compacted = 0

    def __len__(self) -> int:
        return sum(p.height for p in self._parts)

    def copy(self) -> FrameState:
        """A copy sharing the (immutable) frames: cheap."""
        other = FrameState(self.columns)
        other._parts = list(self._parts)
        other._frame = self._frame
        other._compacted = self._compacted
        return other

    def add(self, rows: pl.DataFrame) -> None:
        if rows.height:
            self._parts.append(own_strings(rows.select(self.columns)))
            self._frame = None

    def replace(self, frame: pl.DataFrame) -> None:
        self._parts = [own_strings(frame.select(self.columns))] if frame.height else []
        self._frame = None

    def frame(self) -> pl.DataFrame | None:
        if not self._parts:
            return None
        if self._frame is None:
            self._frame = pl.concat(self._parts, rechunk=True)
            self._parts = [self._frame]
        return self._frame

    def keep_last_settled(
        self, time_column: str, settled: datetime | None, by: list[str], order: list[str]
    ) -> None:
        """Of the rows before ``settled``, keep only the last by ``order`` per ``by``.

        For the clicks: every conversion still to be attributed is at or after the
        conversions' watermark minus the allowed lateness (a later one is late and not
        attributed), so of the clicks before that time only the last per user and ad can
        ever be chosen (ties broken by event id, as attribution does). This bounds the
        click state by the user and ad pairs of the lookback, not by its clicks.
        Amortized: runs when the rows doubled since the last time.
        """
        frame = self.frame()
        if frame is None or settled is None:
            return
        if frame.height < max(COMPACT_MIN_ROWS, 2 * self._compacted):
            return
        old = pl.col(time_column) < settled
        last = frame.filter(old).sort(order).group_by(by, maintain_order=True).last()
        self.replace(pl.concat([last.select(self.columns), frame.filter(~old)]))
        self._compacted = sum(p.height for p in self._parts)

    def expire(self, time_column: str, cutoffs: dict[int, datetime | None]) -> None:
        """Drop rows older than their partition's cutoff (no cutoff: keep)."""
        frame = self.frame()
        if frame is None:
            return
        known = {p: c for p, c in cutoffs.items() if c is not None}
        if not known:
            return
        # Usually nothing is due (click state spans the lookback): one min answers that.
        oldest = frame[time_column].min()
        if isinstance(oldest, datetime) and oldest >= max(known.values()):
            return
        cutoff = pl.col("partition").replace_strict(
            known, default=None, return_dtype=pl.Datetime("us")
        )
        kept = frame.filter(cutoff.is_null() | (pl.col(time_column) >= cutoff))
        if kept.height != frame.height:
            self.replace(kept)
