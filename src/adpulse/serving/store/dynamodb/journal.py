"""A delta journaled while a generation is rebuilt: its bytes and its order."""

from __future__ import annotations

import io
import struct
import time

import orjson
import polars as pl

from adpulse.contracts import Stream
from adpulse.serving.store.base import (
    LIVE_CONVERSIONS,
    LIVE_ROLLUPS,
    LiveDelta,
    LiveRows,
)
from adpulse.storage.warehouse.schema import CONVERSION_REATTRIBUTIONS


def _frame_bytes(frame: pl.DataFrame) -> bytes:
    out = io.BytesIO()
    frame.write_ipc(out, compression="zstd")
    return out.getvalue()


def encode_delta(delta: LiveDelta) -> bytes:
    header = orjson.dumps(
        {
            "batch_id": delta.batch_id,
            "partition": delta.partition,
            "offsets": [[s.value, p, o] for (s, p), o in delta.offsets.items()],
        }
    )
    parts = [header] + [
        _frame_bytes(f) for f in (delta.rows.rollups, delta.rows.conversions, delta.reattributions)
    ]
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def decode_delta(data: bytes) -> LiveDelta:
    parts, i = [], 0
    while i < len(data):
        (size,) = struct.unpack_from(">I", data, i)
        parts.append(data[i + 4 : i + 4 + size])
        i += 4 + size
    header = orjson.loads(parts[0])
    rollups, conversions, moved = (pl.read_ipc(io.BytesIO(p)) for p in parts[1:4])
    return LiveDelta(
        LiveRows(rollups.cast(LIVE_ROLLUPS), conversions.cast(LIVE_CONVERSIONS)),  # type: ignore[arg-type]
        moved.cast(CONVERSION_REATTRIBUTIONS),  # type: ignore[arg-type]
        batch_id=header["batch_id"],
        partition=header["partition"],
        offsets={(Stream(s), int(p)): o for s, p, o in header["offsets"]},
    )


def journal_order(delta: LiveDelta, batch_key: str) -> str:
    """Journal entries sort by batch id (commit order within a partition), then arrival."""
    batch = "~" if delta.batch_id is None else f"{delta.batch_id:020d}"
    return f"{batch}#{time.time_ns():020d}#{batch_key}"
