"""Pipeline status: the span of data, ingest counters, dead letters, watermarks and the
owners of shared partitions (over all data, not a range)."""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict

import polars as pl

from adpulse.contracts import Stream
from adpulse.storage.warehouse.base import Warehouse
from adpulse.storage.warehouse.schema import STREAM_COUNTERS


class DataRange(TypedDict):
    """First and last minute with rollup data; both None while the warehouse is empty."""

    first_minute: datetime | None
    last_minute: datetime | None


def data_range(warehouse: Warehouse) -> DataRange:
    """The span of minutes holding data (for default ranges and the status view)."""
    first, last = warehouse.query(
        "SELECT MIN(minute) AS first_minute, MAX(minute) AS last_minute FROM rollup_minute"
    ).row(0)
    return DataRange(first_minute=first, last_minute=last)


class PipelineStatus(TypedDict):
    """What the live status view shows (a plain dict, so it serialises as is).

    - ``streams``: one row per stream (all three, zeros when idle): ``stream``,
      ``received``, ``accepted``, ``rejected``, ``duplicates``, ``late``,
      ``unknown_ad``, ``unknown_user`` (Int64 sums over all batches),
      ``min_event_time``, ``max_event_time``, ``last_committed_at``;
    - ``dead_letters``: ``stream``, ``reason``, ``records`` (by stream, then reason);
    - ``watermarks``: ``stream``, ``partition``, ``watermark``, ``max_event_time``,
      ``updated_at`` (by stream, then partition);
    - ``last_commit``: time of the latest committed batch, None before the first.
    """

    streams: pl.DataFrame
    dead_letters: pl.DataFrame
    watermarks: pl.DataFrame
    last_commit: datetime | None


def pipeline_status(warehouse: Warehouse) -> PipelineStatus:
    """Ingest counters, dead letters by reason and watermarks, for the status view."""
    sums = ", ".join(f"CAST(COALESCE(SUM({c}), 0) AS BIGINT) AS {c}" for c in STREAM_COUNTERS)
    stats = warehouse.query(
        f"SELECT stream, {sums}, MIN(min_event_time) AS min_event_time,"
        " MAX(max_event_time) AS max_event_time, MAX(committed_at) AS last_committed_at"
        " FROM ingest_stats GROUP BY stream"
    )
    every_stream = pl.DataFrame({"stream": [str(s) for s in Stream]}, schema={"stream": pl.String})
    streams = every_stream.join(stats, on="stream", how="left", maintain_order="left").with_columns(
        pl.col(c).fill_null(0) for c in STREAM_COUNTERS
    )
    dead_letters = warehouse.query(
        "SELECT stream, reason, CAST(COUNT(*) AS BIGINT) AS records FROM dead_letters"
        " GROUP BY stream, reason ORDER BY stream, reason"
    )
    watermarks = warehouse.query(
        'SELECT stream, "partition", watermark, max_event_time, updated_at FROM watermarks'
        ' ORDER BY stream, "partition"'
    )
    last_commit = streams["last_committed_at"].max()
    return PipelineStatus(
        streams=streams,
        dead_letters=dead_letters,
        watermarks=watermarks,
        last_commit=last_commit if isinstance(last_commit, datetime) else None,
    )


def partition_owners(warehouse: Warehouse) -> pl.DataFrame:
    """Who processes each partition when workers share them (empty otherwise).

    Columns: ``partition``, ``worker_id``, ``host``, ``pid`` (NULL: no owner),
    ``epoch`` (owner changes so far), ``expires_at`` (UTC) and ``live`` (the lease has
    not expired), by partition. See :mod:`adpulse.storage.warehouse.leases`.
    """
    if not warehouse.shares_partitions:
        return pl.DataFrame()
    exists = warehouse.query(
        "SELECT COUNT(*) AS n FROM information_schema.tables"
        " WHERE table_name = 'partition_leases' AND table_schema = current_schema()"
    ).item()
    if not exists:  # a warehouse created before leases existed, opened read-only
        return pl.DataFrame()
    return warehouse.query(
        'SELECT l."partition", l.owner AS worker_id, w.host, w.pid, l.epoch, l.expires_at,'
        " COALESCE(l.expires_at > LOCALTIMESTAMP, FALSE) AS live"
        " FROM partition_leases l LEFT JOIN workers w ON w.worker_id = l.owner"
        ' ORDER BY l."partition"'
    )
