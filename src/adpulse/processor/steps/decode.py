"""Step 1, decode: framed log lines -> typed columns, or dead letters with a reason.

Fast path: all chunks of one stream are decoded by ONE vectorized NDJSON call with the
stream's schema. If that call fails (some record is not valid JSON, has a wrong type,
or was stored escaped), the records are split in halves and decoded again until the bad
records are isolated and classified one by one; the good ones keep the fast decoder, so
a bad record costs a few extra decodes of its neighbourhood, never a per-record path for
the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import orjson
import polars as pl

from adpulse.contracts import Reason, Stream
from adpulse.transport.base import Chunk
from adpulse.transport.framing import split_lines, unframe_line

#: Below this many records a failing slice is classified record by record.
_LEAF = 16


@dataclass(slots=True)
class Reject:
    """A record that will go to the dead letters."""

    row: int  # index of the record in the decoded batch (all chunks of the stream)
    reason: Reason
    detail: str
    payload: bytes


@dataclass(slots=True)
class Decoded:
    """A stream's records of one batch: typed rows plus the rejected ones."""

    stream: Stream
    rows: pl.DataFrame  # the stream's decode schema + ``_row`` (UInt32) + ``partition``
    rejects: list[Reject] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    chunk_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _lines: list[bytes] | None = None

    @property
    def received(self) -> int:
        return int(sum(c.records for c in self.chunks))

    def line(self, row: int) -> bytes:
        """The stored line of record ``row`` (split lazily: only rejects need it)."""
        if self._lines is None:
            self._lines = [line for c in self.chunks for line in split_lines(c.data)]
        return self._lines[row]

    def locate(self, row: int) -> tuple[Chunk, int]:
        """The chunk a record came in and its index inside that chunk."""
        i = int(np.searchsorted(self.chunk_starts, row, side="right")) - 1
        return self.chunks[i], row - int(self.chunk_starts[i])


def decode(stream: Stream, chunks: list[Chunk]) -> Decoded:
    """Decode all chunks of one stream in a batch (one vectorized call per chunk)."""
    counts = np.array([c.records for c in chunks], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(chunks) else counts
    schema = stream.decode_schema
    empty = _empty(schema).with_row_index("_row").with_columns(partition=pl.lit(0, pl.Int32))
    out = Decoded(stream=stream, rows=empty.clear(), chunks=chunks, chunk_starts=starts)
    parts: list[pl.DataFrame] = []
    for chunk, start in zip(chunks, starts.tolist(), strict=True):
        if chunk.records == 0:
            continue
        # Decoding chunk by chunk avoids copying the whole batch into one buffer.
        frame = _try_decode(chunk.data, schema, chunk.records)
        if frame is not None:
            frame = frame.with_row_index("_row", offset=start)
        else:
            lines = split_lines(chunk.data)
            pieces: list[pl.DataFrame] = []
            rejects: list[Reject] = []
            _bisect(lines, 0, len(lines), schema, pieces, rejects)
            for r in rejects:
                r.row += start
            out.rejects.extend(rejects)
            frame = (
                pl.concat(pieces).with_columns((pl.col("_row") + start).cast(pl.UInt32))
                if pieces
                else empty.clear().drop("partition")
            )
        parts.append(frame.with_columns(partition=pl.lit(chunk.partition, pl.Int32)))
    if parts:
        out.rows = pl.concat(parts, rechunk=False)
    return out


def _empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def _try_decode(data: bytes, schema: dict[str, pl.DataType], expected: int) -> pl.DataFrame | None:
    try:
        frame = pl.read_ndjson(data, schema=schema)
    except Exception:  # Polars raises ComputeError and friends for any bad record
        return None
    # A blank or whitespace-only record is skipped by the decoder: classify one by one.
    return frame if frame.height == expected else None


def _bisect(
    lines: list[bytes],
    lo: int,
    hi: int,
    schema: dict[str, pl.DataType],
    parts: list[pl.DataFrame],
    rejects: list[Reject],
) -> None:
    if hi <= lo:
        return
    if hi - lo > _LEAF:
        data = b"\n".join(lines[lo:hi]) + b"\n"
        frame = _try_decode(data, schema, hi - lo)
        if frame is not None:
            parts.append(frame.with_row_index("_row", offset=lo))
            return
        mid = (lo + hi) // 2
        _bisect(lines, lo, mid, schema, parts, rejects)
        _bisect(lines, mid, hi, schema, parts, rejects)
        return
    for row in range(lo, hi):
        decoded = decode_one(lines[row], schema)
        if isinstance(decoded, Reject):
            decoded.row = row
            rejects.append(decoded)
        else:
            parts.append(decoded.with_row_index("_row", offset=row))


def decode_one(line: bytes, schema: dict[str, pl.DataType]) -> pl.DataFrame | Reject:
    """Decode one stored line, or say precisely why it cannot be decoded."""
    payload, original_size = unframe_line(line)
    if original_size is not None:
        return Reject(-1, Reason.PAYLOAD_TOO_LARGE, f"{original_size} bytes", payload)
    if not payload.strip():
        return Reject(-1, Reason.EMPTY_PAYLOAD, "record has no content", payload)
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Reject(-1, Reason.INVALID_UTF8, str(exc), payload)
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return Reject(-1, Reason.INVALID_JSON, str(exc), payload)
    if not isinstance(value, dict):
        return Reject(-1, Reason.NOT_AN_OBJECT, f"got a JSON {type(value).__name__}", payload)
    wrong = _wrong_type(value, schema)
    if wrong is not None:
        return Reject(-1, Reason.WRONG_TYPE, wrong, payload)
    try:
        # Re-encode on one line (the payload may have had line breaks): same decoder,
        # same coercions as the fast path.
        frame = pl.read_ndjson(orjson.dumps(value) + b"\n", schema=schema)
    except Exception as exc:  # noqa: BLE001 - the decoder's message is the detail
        return Reject(-1, Reason.WRONG_TYPE, str(exc).splitlines()[0], payload)
    return frame


def _wrong_type(value: dict[str, object], schema: dict[str, pl.DataType]) -> str | None:
    for name, dtype in schema.items():
        v = value.get(name)
        if v is None:
            continue
        if dtype == pl.Int64 and (
            isinstance(v, bool) or not isinstance(v, int) or not -(2**63) <= v < 2**63
        ):
            return f"{name} must be an integer, got {_show(v)}"
        if dtype == pl.Float64 and (isinstance(v, bool) or not isinstance(v, int | float)):
            return f"{name} must be a number, got {_show(v)}"
        if dtype == pl.String and isinstance(v, dict | list):
            return f"{name} must be a string, got {_show(v)}"
    return None


def _show(v: object) -> str:
    text = orjson.dumps(v).decode()
    return text if len(text) <= 40 else text[:37] + "..."
