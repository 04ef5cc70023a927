"""Step 3, dedupe: give every event its id, flag lateness, drop repeats within the horizon.

- ``event_id`` is the producer's when present; otherwise it is derived from the
  record's canonical content (stream, ad, user, event time, other fields), so a re-sent
  record without an id is recognised too. Derived ids start with ``d:``.
- Lateness: an event is late when its time is more than the allowed lateness behind the
  watermark of its stream and partition at its arrival (the running maximum of event
  times, in arrival order). Late events are kept and counted, only flagged.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import polars_hash as plh

from adpulse.contracts import Stream
from adpulse.processor.state import HOUR_US, DedupeState, hour_buckets, key_hashes

_NO_CUTOFF = -(2**31)

_CANONICAL_FIELDS = {
    Stream.IMPRESSIONS: ("ad_id", "user_id", "platform", "location"),
    Stream.CLICKS: ("ad_id", "user_id", "platform", "location"),
    Stream.CONVERSIONS: ("ad_id", "user_id", "product_id", "revenue"),
}


def with_event_ids(rows: pl.DataFrame, stream: Stream) -> pl.DataFrame:
    """Fill a missing or blank ``event_id`` with an id derived from the canonical content."""
    rows = rows.with_columns(
        event_id=pl.when(pl.col("event_id").str.strip_chars() != "").then(pl.col("event_id"))
    )
    if rows["event_id"].null_count() == 0:
        return rows
    canonical = pl.concat_str(
        [pl.lit(stream.value), pl.col("event_time").dt.epoch("us").cast(pl.String)]
        + [pl.col(f).cast(pl.String) for f in _CANONICAL_FIELDS[stream]],
        separator="|",
    )
    derived = pl.lit("d:") + plh.col("_canonical").chash.sha2_256().str.slice(0, 32)
    return (
        rows.with_columns(_canonical=canonical)
        .with_columns(event_id=pl.coalesce(pl.col("event_id"), derived))
        .drop("_canonical")
    )


def flag_late(
    rows: pl.DataFrame, watermarks: dict[int, datetime | None], lateness: timedelta
) -> pl.DataFrame:
    """Add ``is_late`` and ``_wm``: the running watermark per partition before each row,
    in arrival order (so both are the same however the records are cut into batches)."""
    known = {p: wm for p, wm in watermarks.items() if wm is not None}
    prior = pl.col("event_time").cum_max().shift(1).over("partition")
    start = pl.col("partition").replace_strict(known, default=None, return_dtype=pl.Datetime("us"))
    wm = pl.max_horizontal(prior, start) if known else prior
    # One pass (a live batch's fixed cost is per operation, not per row).
    return rows.with_columns(
        _wm=wm, is_late=(pl.col("event_time") < wm - lateness).fill_null(False)
    )


def _first_occurrences(event_ids: pl.Series, hi: np.ndarray) -> np.ndarray:
    """Mask of each id's first row in the batch (arrival order).

    Comparing 64-bit hashes is ~10x cheaper than comparing strings; the exact string
    comparison only runs on the few rows whose hash is not unique in the batch.
    """
    first = np.ones(len(hi), dtype=bool)
    maybe = pl.Series(hi).is_duplicated()
    if maybe.any():
        idx = maybe.arg_true()
        repeat = ~event_ids.gather(idx).is_first_distinct().to_numpy()
        first[idx.to_numpy()[repeat]] = False
    return first


def drop_duplicates(
    rows: pl.DataFrame,
    stream: Stream,
    state: DedupeState,
    horizon: timedelta,
    keep_from: int | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return (unique rows, duplicate counts per partition) and remember the new keys.

    A row is a duplicate when its key was seen with an event-time hour at or after the
    hour of (the running watermark before the row - horizon): ``rows`` come from
    :func:`flag_late`, which adds that watermark as ``_wm``. ``keep_from`` is the
    oldest hour still live in any partition (see :meth:`IdSet.check_and_add`).
    """
    if rows.height == 0:
        return rows.drop("_wm"), pl.DataFrame(
            schema={"partition": pl.Int32, "duplicates": pl.UInt32}
        )
    hi, lo = key_hashes(rows["event_id"])
    first = _first_occurrences(rows["event_id"], hi)
    unique = rows
    if not first.all():
        unique = rows.filter(pl.Series(first))
        hi, lo = hi[first], lo[first]
    buckets = hour_buckets(unique["event_time"])
    cutoff = (
        unique.select(
            ((pl.col("_wm") - horizon).dt.epoch("us") // HOUR_US)
            .fill_null(_NO_CUTOFF)
            .cast(pl.Int32)
        )
        .to_series()
        .to_numpy()
    )
    unique = unique.drop("_wm")
    seen = state.sets[stream].check_and_add(hi, lo, buckets, cutoff, keep_from)
    if seen.any():
        unique = unique.filter(pl.Series(~seen))
    # Per partition of ``rows``: its rows not kept (counted in NumPy: a live batch's
    # fixed cost is per frame operation).
    dropped = ~first
    dropped[np.flatnonzero(first)[seen]] = True
    partitions = rows["partition"].to_numpy()
    names, inverse = np.unique(partitions, return_inverse=True)
    counts = np.bincount(inverse, weights=dropped, minlength=len(names)).astype(np.uint32)
    duplicates = pl.DataFrame(
        {"partition": names, "duplicates": counts},
        schema={"partition": pl.Int32, "duplicates": pl.UInt32},
    )
    return unique, duplicates
