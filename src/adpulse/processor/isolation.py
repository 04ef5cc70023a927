"""Isolating the records that make a batch fail, so that no record can halt the pipeline.

Validation rejects every record it can judge on its own. What remains can still fail:
a step may raise on a value nobody foresaw (a Polars overflow, a date Python cannot
hold), or the warehouse may refuse to store a value (PostgreSQL refuses a NUL in text).
Such a failure is the data's fault, so retrying the same batch fails again, forever.

Instead the processor (:meth:`~adpulse.processor.pipeline.Processor.process_isolating`)
cuts the batch into pieces and processes them in arrival order, each against the state
left by the pieces before it: a piece that fails is halved, recursively
(:func:`bisect`), down to the single records that fail on their own. Those become dead
letters (:data:`~adpulse.contracts.Reason.PROCESSING_FAILED` or
:data:`~adpulse.contracts.Reason.COMMIT_REJECTED`, with the exception's or the
database's message); the pieces that passed are merged into ONE output
(:func:`merge_outputs`), committed in one transaction with the batch's offsets, as any
batch. A piece is "committed" on trial only (:meth:`Warehouse.check_commit`, rolled
back), and a failed piece's effect on the processor's state is undone, so neither the
warehouse nor the dedupe and attribution state ever hold a dead-lettered record.

Processing pieces one after the other gives the results of processing the batch whole:
every step is built to give the same results however records are cut into batches.
A failure that needs two records together (a sum that overflows) passes in two pieces,
and both records are kept.

Which exceptions are the data's fault: :func:`step_refuses_data` for the steps, and
:meth:`Warehouse.refuses_data <adpulse.storage.warehouse.base.Warehouse.refuses_data>`
for each backend's commit. Everything else (a lost connection, a full disk, a bug)
stops the processor as before.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import polars as pl
from polars.exceptions import PanicException, PolarsError

from adpulse.contracts import Reason, Stream
from adpulse.storage.warehouse.base import BatchOutput
from adpulse.storage.warehouse.schema import (
    CONVERSION_REATTRIBUTIONS,
    DEAD_LETTERS,
    FACT_CLICKS,
    FACT_CONVERSIONS,
    FACT_IMPRESSIONS,
    INGEST_STATS,
    ROLLUP_MINUTE,
    STREAM_COUNTERS,
    conform,
    storable_text,
)
from adpulse.transport.base import Chunk
from adpulse.transport.framing import split_lines, unframe_line

#: Longest stored detail of a dead letter.
MAX_DETAIL_CHARS = 500


def step_refuses_data(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a processing step, is the fault of the batch's data.

    The steps are pure functions of the batch and the in-memory state, so an error
    computing over values is the values' fault:

    - ``polars.exceptions.PolarsError`` (``ComputeError``, ``InvalidOperationError``
      such as a decimal overflow, ``OutOfBoundsError``, ...);
    - ``PanicException``: Polars panicked on an input it did not expect;
    - ``ValueError`` (``year 0 is out of range`` converting a time to Python,
      ``UnicodeError``) and ``ArithmeticError`` (``OverflowError``,
      ``ZeroDivisionError``).

    Not the data's fault, so they stop the processor: ``OSError`` and ``MemoryError``
    (the machine), ``KeyboardInterrupt``/``SystemExit`` (the user), and programming
    errors (``TypeError``, ``AttributeError``, ``KeyError``, ``AssertionError``...):
    a bug would fail on every record, and dead-lettering them all would hide it.
    """
    return isinstance(exc, PolarsError | PanicException | ValueError | ArithmeticError)


def describe(exc: BaseException) -> str:
    """An exception as a dead letter's detail: its type and message on one line,
    without what a warehouse may refuse to store (NUL, lone surrogates), and bounded."""
    message = " ".join(storable_text(str(exc)).split())
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:MAX_DETAIL_CHARS]


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a piece of a batch failed: the dead-letter reason and detail it gives."""

    reason: Reason
    detail: str


def bisect(
    lo: int, hi: int, attempt: Callable[[int, int], Failure | None]
) -> list[tuple[int, Failure]]:
    """Records ``[lo, hi)`` processed by ``attempt`` in order, halving what fails.

    ``attempt(lo, hi)`` processes records ``[lo, hi)`` after every earlier piece that
    passed, keeps their results and returns None, or undoes what it did and returns
    why it failed. Returns the records that fail on their own, in order, with why.
    A batch with ``k`` such records among ``n`` costs about ``2 k log2(n / k)`` attempts.
    """
    if lo >= hi:
        return []
    failure = attempt(lo, hi)
    if failure is None:
        return []
    if hi - lo == 1:
        return [(lo, failure)]
    mid = (lo + hi) // 2
    return bisect(lo, mid, attempt) + bisect(mid, hi, attempt)


class BatchRecords:
    """The records of one polled batch, in processing order (stream by stream, chunk by
    chunk, line by line), and any contiguous range of them as chunks of their own."""

    def __init__(self, chunks: Mapping[Stream, list[Chunk]]) -> None:
        self.chunks = {s: list(chunks.get(s, [])) for s in Stream}
        self._lines = {s: [split_lines(c.data) for c in self.chunks[s]] for s in Stream}
        #: (stream, chunk index, line index) of every record, in processing order.
        self.places = [
            (s, ci, li)
            for s in Stream
            for ci, lines in enumerate(self._lines[s])
            for li in range(len(lines))
        ]

    def __len__(self) -> int:
        return len(self.places)

    def piece(
        self, lo: int, hi: int
    ) -> tuple[dict[Stream, list[Chunk]], dict[tuple[Stream, int], int]]:
        """Records ``[lo, hi)`` as chunks (one per chunk they come from, with its
        offsets), and the index of each new chunk's first record in its source chunk."""
        ranges: dict[tuple[Stream, int], list[int]] = {}
        for s, ci, li in self.places[lo:hi]:
            ranges.setdefault((s, ci), []).append(li)
        out: dict[Stream, list[Chunk]] = {s: [] for s in Stream}
        starts: dict[tuple[Stream, int], int] = {}
        for (s, ci), indexes in ranges.items():
            source = self.chunks[s][ci]
            first, last = indexes[0], indexes[-1] + 1
            lines = self._lines[s][ci][first:last]
            chunk = Chunk(
                stream=s,
                partition=source.partition,
                start_offset=source.start_offset,
                end_offset=source.end_offset,
                data=b"\n".join(lines) + b"\n",
                records=len(lines),
            )
            out[s].append(chunk)
            starts[(s, source.partition)] = first
        return out, starts

    def dead_letter(self, place: int, failure: Failure, received_at: datetime) -> dict[str, object]:
        """The dead-letter row of one record (its payload as it was sent)."""
        s, ci, li = self.places[place]
        chunk = self.chunks[s][ci]
        payload, _ = unframe_line(self._lines[s][ci][li])
        return {
            "stream": s.value,
            "partition": chunk.partition,
            "source_offset": chunk.start_offset or "",
            "record_index": li,
            "reason": failure.reason.value,
            "detail": failure.detail[:MAX_DETAIL_CHARS],
            "payload": payload,
            "received_at": received_at,
        }


def rebase_dead_letters(
    dead_letters: pl.DataFrame, starts: Mapping[tuple[Stream, int], int]
) -> pl.DataFrame:
    """Dead letters of a piece with ``record_index`` counted in the source chunk: the
    piece's chunk of a stream and partition starts at record ``starts[(stream,
    partition)]`` of it (a batch polls each partition once: one chunk per key)."""
    shift = {(s.value, p): first for (s, p), first in starts.items() if first}
    if dead_letters.height == 0 or not shift:
        return dead_letters
    keys = pl.DataFrame(
        {
            "stream": [s for s, _ in shift],
            "partition": [p for _, p in shift],
            "_shift": list(shift.values()),
        },
        schema={"stream": pl.String, "partition": pl.Int32, "_shift": pl.Int32},
    )
    return (
        dead_letters.join(keys, on=["stream", "partition"], how="left", maintain_order="left")
        .with_columns(pl.col("record_index") + pl.col("_shift").fill_null(0))
        .select(list(DEAD_LETTERS))
    )


def merge_outputs(
    pieces: list[BatchOutput],
    refused: pl.DataFrame,
    batch_id: int,
    committed_at: datetime,
) -> BatchOutput:
    """One output for the pieces that passed (in order) and the refused records'
    dead letters ``refused``; offsets, watermarks and fence are the caller's to set.

    Rollup rows stay separate (readers sum them: adding them here could overflow, which
    is what a piece may have been cut for); a conversion re-attributed by two pieces
    keeps its last attribution; statistics add up per stream and partition.
    """

    def concat(frames: list[pl.DataFrame], schema: dict[str, pl.DataType]) -> pl.DataFrame:
        frames = [f for f in frames if f.height]
        return pl.concat(frames) if frames else pl.DataFrame(schema=schema)

    reattributions = concat([p.reattributions for p in pieces], CONVERSION_REATTRIBUTIONS)
    if reattributions.height:
        reattributions = reattributions.unique("event_id", keep="last", maintain_order=True)
    refused_stats = _refused_stats(refused, batch_id, committed_at)
    stats = concat([*(p.stats for p in pieces), refused_stats], INGEST_STATS)
    if stats.height:
        stats = conform(
            stats.group_by("batch_id", "stream", "partition", maintain_order=True).agg(
                *(pl.col(c).sum() for c in STREAM_COUNTERS),
                pl.col("min_event_time").min(),
                pl.col("max_event_time").max(),
                pl.col("committed_at").max(),
            ),
            INGEST_STATS,
        )

    return BatchOutput(
        batch_id=batch_id,
        impressions=concat([p.impressions for p in pieces], FACT_IMPRESSIONS),
        clicks=concat([p.clicks for p in pieces], FACT_CLICKS),
        conversions=concat([p.conversions for p in pieces], FACT_CONVERSIONS),
        reattributions=reattributions,
        rollups=concat([p.rollups for p in pieces], ROLLUP_MINUTE),
        dead_letters=concat([*(p.dead_letters for p in pieces), refused], DEAD_LETTERS),
        stats=stats,
    )


def _refused_stats(refused: pl.DataFrame, batch_id: int, committed_at: datetime) -> pl.DataFrame:
    """Statistics of records dead-lettered by isolation: received and rejected."""
    if refused.height == 0:
        return pl.DataFrame(schema=INGEST_STATS)
    counts: dict[tuple[str, int], int] = defaultdict(int)
    for stream, partition in refused.select("stream", "partition").iter_rows():
        counts[(stream, partition)] += 1
    frame = pl.DataFrame(
        {
            "batch_id": [batch_id] * len(counts),
            "stream": [s for s, _ in counts],
            "partition": [p for _, p in counts],
            "received": list(counts.values()),
            "accepted": [0] * len(counts),
            "rejected": list(counts.values()),
            "committed_at": [committed_at] * len(counts),
        }
    )
    return conform(frame, INGEST_STATS).with_columns(
        pl.col(c).fill_null(0) for c in ("duplicates", "late", "unknown_ad", "unknown_user")
    )
