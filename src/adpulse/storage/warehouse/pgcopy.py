"""PostgreSQL's binary ``COPY`` format, encoded from a Polars frame without a row loop.

``COPY ... FROM STDIN (FORMAT binary)`` spares the server parsing text (timestamps and
numbers from CSV cost it more than the rows' I/O). Each column becomes Arrow binary
arrays of its encoded fields (a 4-byte length, then the value in network byte order;
length -1 for NULL; text and bytea as two arrays, lengths and values), built with NumPy;
one Arrow ``take`` of every field in row order then copies them into one buffer, which
*is* the body of the COPY stream. See the Binary Format section of
https://www.postgresql.org/docs/current/sql-copy.html and the ``*_send`` functions of
each type for the value layouts.

:func:`encode` returns ``None`` for a frame it cannot encode exactly (a type without an
encoder here, or a decimal beyond 64 bits); the caller then copies it as CSV.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER: Final = b"\xff\xff"
#: Microseconds and days from the Unix epoch to PostgreSQL's (2000-01-01).
_PG_EPOCH_US: Final = 946_684_800_000_000
_PG_EPOCH_DAYS: Final = 10_957
_NULL: Final = np.frombuffer(b"\xff\xff\xff\xff", dtype=np.uint8)
_NUMERIC_NEG: Final = 0x4000
_NOTHING: Final = pa.scalar(b"", pa.large_binary())


def encode(frame: pl.DataFrame) -> list[bytes | memoryview] | None:
    """The binary COPY stream of ``frame`` in pieces (header, rows, trailer), or
    ``None`` when a column has a type or a value this encoder does not handle."""
    n = frame.height
    if n == 0:
        return [HEADER, TRAILER]  # no row: no value to encode
    fields: list[pa.Array] = []
    for series in frame.get_columns():
        encoded = _column(series)
        if encoded is None:
            return None
        fields += encoded
    count = np.frombuffer(frame.width.to_bytes(2, "big"), dtype=np.uint8)
    fields.insert(0, _fixed(np.tile(count, (n, 1))))
    # Every field of every row, column after column; taken row after row, their bytes
    # are the body. (A take copies each value once: several times faster here than
    # joining the fields of each row with binary_join_element_wise.)
    columns = pa.concat_arrays(fields)
    k = len(fields)
    order = np.arange(k, dtype=np.int64)[None, :] * n + np.arange(n, dtype=np.int64)[:, None]
    rows = columns.take(pa.array(order.reshape(-1)))
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64)[
        rows.offset : rows.offset + n * k + 1
    ]
    body = memoryview(rows.buffers()[2])[int(offsets[0]) : int(offsets[-1])]
    return [HEADER, body, TRAILER]


def _fixed(values: np.ndarray) -> pa.Array:
    """Rows of a 2-D uint8 array as one large_binary array (no copy)."""
    n, width = values.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
    data = np.ascontiguousarray(values).reshape(-1)
    return pa.Array.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _with_length(payload: np.ndarray, valid: np.ndarray) -> pa.Array:
    """Fixed-width payloads (n x w bytes) behind their length; NULL where not ``valid``."""
    n, width = payload.shape
    out = np.empty((n, 4 + width), dtype=np.uint8)
    out[:, :4] = np.frombuffer(width.to_bytes(4, "big"), dtype=np.uint8)
    out[:, 4:] = payload
    if valid.all():
        return _fixed(out)
    # A NULL field is its length alone: -1, no payload.
    lengths = np.where(valid, 4 + width, 4).astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    out[~valid, :4] = _NULL
    keep = np.ones((n, 4 + width), dtype=bool)
    keep[~valid, 4:] = False
    data = out[keep]
    return pa.Array.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _big_endian(values: np.ndarray, dtype: str) -> np.ndarray:
    return values.astype(dtype).view(np.uint8).reshape(len(values), -1)


def _column(series: pl.Series) -> list[pa.Array] | None:
    """The encoded fields of one column: one array, or for text and bytea two (the
    lengths, then the values), which the row-order ``take`` interleaves."""
    if series.dtype in (pl.String, pl.Binary):
        return _variable(series)
    encoded = _fixed_width(series)
    return None if encoded is None else [encoded]


def _fixed_width(series: pl.Series) -> pa.Array | None:
    dtype = series.dtype
    valid = series.is_not_null().to_numpy()
    if dtype == pl.Int64:
        return _with_length(_big_endian(series.fill_null(0).to_numpy(), ">i8"), valid)
    if dtype == pl.Int32:
        return _with_length(_big_endian(series.fill_null(0).to_numpy(), ">i4"), valid)
    if dtype == pl.Float64:
        return _with_length(_big_endian(series.fill_null(0).to_numpy(), ">f8"), valid)
    if dtype == pl.Boolean:
        values = series.fill_null(False).to_numpy().astype(np.uint8).reshape(-1, 1)
        return _with_length(values, valid)
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
        us = series.dt.cast_time_unit("us").to_physical().fill_null(0).to_numpy()
        return _with_length(_big_endian(us - _PG_EPOCH_US, ">i8"), valid)
    if dtype == pl.Date:
        days = series.to_physical().fill_null(0).to_numpy().astype(np.int64)
        return _with_length(_big_endian(days - _PG_EPOCH_DAYS, ">i4"), valid)
    if isinstance(dtype, pl.Decimal):
        return _numeric(series, valid)
    return None


def _variable(series: pl.Series) -> list[pa.Array]:
    """Text or bytea: the lengths (NULL: -1), and the values (NULL: nothing)."""
    values = series.to_arrow().cast(pa.large_binary())
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    lengths = pc.binary_length(values).to_numpy(zero_copy_only=False)
    valid = series.is_not_null().to_numpy()
    heads = np.where(valid, np.nan_to_num(lengths, nan=0), -1).astype(">i4")
    if values.null_count:
        values = pc.fill_null(values, _NOTHING)
    return [_fixed(heads.view(np.uint8).reshape(-1, 4)), values]


def _numeric(series: pl.Series, valid: np.ndarray) -> pa.Array | None:
    """NUMERIC: base-10000 digits (integer groups, then fractional ones), the weight of
    the first, the sign and the scale. Leading and trailing zero digits are allowed: the
    server strips them (``make_result``). Values beyond 64 bits: ``None`` (CSV)."""
    dtype = series.dtype
    assert isinstance(dtype, pl.Decimal)
    precision, scale = dtype.precision or 38, dtype.scale or 0
    unscaled = series.to_arrow().cast(pa.decimal128(38, scale))
    if isinstance(unscaled, pa.ChunkedArray):
        unscaled = unscaled.combine_chunks()
    words = np.frombuffer(unscaled.buffers()[1], dtype=np.int64)
    words = words[2 * unscaled.offset : 2 * (unscaled.offset + len(unscaled))].reshape(-1, 2)
    low, high = words[:, 0], words[:, 1]
    if not np.array_equal(high, low >> 63):  # beyond int64 (also catches -2**63)
        return None
    low = np.where(valid, low, 0)
    negative = low < 0
    magnitude = np.abs(low).astype(np.uint64)
    int_groups = max(1, -(-(precision - scale) // 4))
    frac_groups = -(-scale // 4)
    ten_scale = np.uint64(10**scale)
    whole, fraction = magnitude // ten_scale, magnitude % ten_scale
    fraction = fraction * np.uint64(10 ** (4 * frac_groups - scale))
    digits = np.empty((len(low), int_groups + frac_groups), dtype=np.int64)
    for i in range(int_groups - 1, -1, -1):
        digits[:, i] = (whole % np.uint64(10_000)).astype(np.int64)
        whole //= np.uint64(10_000)
    for i in range(frac_groups - 1, -1, -1):
        digits[:, int_groups + i] = (fraction % np.uint64(10_000)).astype(np.int64)
        fraction //= np.uint64(10_000)
    head = np.empty((len(low), 4), dtype=np.int64)
    head[:, 0] = int_groups + frac_groups
    head[:, 1] = int_groups - 1
    head[:, 2] = np.where(negative, _NUMERIC_NEG, 0)
    head[:, 3] = scale
    payload = np.concatenate([head, digits], axis=1).astype(">i2").view(np.uint8)
    return _with_length(payload.reshape(len(low), -1), valid)
