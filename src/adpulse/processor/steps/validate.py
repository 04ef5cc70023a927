"""Step 2, validate: required fields, types the decoder lets through, values, timestamps.

Input: decoded rows. Output: the valid rows with ``event_time`` (UTC, microseconds) and
the rejects, each with a specific reason. Checks are vectorized; rows are only touched one
by one when they are rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from adpulse.contracts import ORIGINAL_TIMESTAMP_FORMAT, Reason, Stream
from adpulse.processor.steps.decode import Decoded, Reject

MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 256
#: Revenue is stored as DECIMAL(18, 4): 14 digits before the point.
MAX_REVENUE = 1e14
_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S%#z", "%Y-%m-%dT%H:%M:%S%.f%#z")


@dataclass(slots=True)
class Validated:
    stream: Stream
    rows: pl.DataFrame  # decode schema + _row, partition, event_time
    rejects: list[Reject]


def validate(decoded: Decoded, now: datetime, max_future: timedelta) -> Validated:
    """Split decoded rows into valid rows and rejects (appended to ``decoded.rejects``)."""
    stream = decoded.stream
    rows = with_event_time(decoded.rows, stream.timestamp_field)
    horizon = now.replace(tzinfo=None) + max_future
    checks: list[tuple[pl.Expr, Reason, pl.Expr]] = []
    for name in stream.required_fields:
        missing = pl.col(name).is_null()
        if stream.decode_schema[name] == pl.String:
            missing = missing | (pl.col(name).str.strip_chars() == "")
        checks.append((missing, Reason.MISSING_FIELD, pl.lit(f"{name} is missing or empty")))
    for name, dtype in stream.decode_schema.items():
        if dtype == pl.String and name != stream.timestamp_field:
            # The decoder turns a JSON object or array into its text; reject those here.
            container = pl.col(name).str.starts_with("{") | pl.col(name).str.starts_with("[")
            checks.append(
                (container, Reason.WRONG_TYPE, pl.lit(f"{name} must be a string, not a container"))
            )
            limit = MAX_ID_CHARS if name in ("event_id", "user_id") else MAX_TEXT_CHARS
            checks.append(
                (
                    pl.col(name).str.len_bytes() > limit,
                    Reason.BAD_EVENT_ID if name == "event_id" else Reason.WRONG_TYPE,
                    pl.lit(f"{name} longer than {limit} bytes"),
                )
            )
    ts = stream.timestamp_field
    checks.append(
        (
            pl.col("event_time").is_null(),
            Reason.BAD_TIMESTAMP,
            pl.format("{} is not a timestamp: {}", pl.lit(ts), pl.col(ts).str.head(40)),
        )
    )
    checks.append(
        (
            pl.col("event_time") > horizon,
            Reason.FUTURE_TIMESTAMP,
            pl.format("{} is {} ahead of the clock", pl.lit(ts), pl.col(ts)),
        )
    )
    if stream is Stream.CONVERSIONS:
        checks.append((pl.col("revenue") < 0, Reason.NEGATIVE_REVENUE, pl.lit("revenue < 0")))
        checks.append(
            (
                pl.col("revenue").is_nan() | pl.col("revenue").is_infinite(),
                Reason.WRONG_TYPE,
                pl.lit("revenue must be a finite number"),
            )
        )
        checks.append(
            (
                pl.col("revenue") >= MAX_REVENUE,
                Reason.WRONG_TYPE,
                pl.lit(f"revenue must be below {MAX_REVENUE:.0e}"),
            )
        )

    # First failing check wins; a row passes when every check is false (nulls = pass).
    reason: pl.Expr = pl.lit(None, dtype=pl.String)
    detail: pl.Expr = pl.lit(None, dtype=pl.String)
    for cond, why, text in reversed(checks):
        hit = cond.fill_null(False)
        reason = pl.when(hit).then(pl.lit(why.value)).otherwise(reason)
        detail = pl.when(hit).then(text).otherwise(detail)
    flagged = rows.with_columns(_reason=reason)
    if flagged["_reason"].null_count() == flagged.height:
        return Validated(stream, _typed(rows), decoded.rejects)
    # rechunk: Polars 2.1 panics evaluating `detail` over a multi-chunk filtered frame.
    bad = flagged.filter(pl.col("_reason").is_not_null()).rechunk().with_columns(_detail=detail)
    for row, why, text in bad.select("_row", "_reason", "_detail").iter_rows():
        payload = decoded.line(row)
        if payload[:1] == b"\x00":
            from adpulse.transport.framing import unframe_line

            payload = unframe_line(payload)[0]
        decoded.rejects.append(Reject(row, Reason(why), text, payload))
    good = flagged.filter(pl.col("_reason").is_null()).drop("_reason")
    return Validated(stream, _typed(good), decoded.rejects)


def _typed(rows: pl.DataFrame) -> pl.DataFrame:
    """Money as DECIMAL(18, 4) from here on (JSON numbers decode as floats)."""
    if "revenue" not in rows.columns:
        return rows
    return rows.with_columns(pl.col("revenue").round(4).cast(pl.Decimal(18, 4)))


def with_event_time(rows: pl.DataFrame, field: str) -> pl.DataFrame:
    """Add ``event_time``: the original format (read as UTC), else ISO-8601 with an offset.

    The ISO parsers only run on the rows the original format did not parse (a few % of
    records in practice), not on the whole batch.
    """
    rows = rows.with_columns(
        event_time=pl.col(field).str.strptime(
            pl.Datetime("us"), ORIGINAL_TIMESTAMP_FORMAT, strict=False
        )
    )
    need = rows["event_time"].is_null() & rows[field].is_not_null()
    if not need.any():
        return rows
    idx = need.arg_true()
    text = rows[field].gather(idx)
    parsed = pl.select(parse_iso(pl.lit(text))).to_series()
    return rows.with_columns(rows["event_time"].scatter(idx, parsed))


def parse_iso(text: pl.Expr) -> pl.Expr:
    result: pl.Expr = pl.lit(None, dtype=pl.Datetime("us"))
    for fmt in _ISO_FORMATS:
        iso = text.str.to_datetime(
            fmt, strict=False, time_zone="UTC", time_unit="us"
        ).dt.replace_time_zone(None)
        result = result.fill_null(iso)
    return result


def parse_timestamp(value: str) -> datetime | None:
    """One timestamp, same rules as the pipeline (for CLI arguments and tests)."""
    frame = with_event_time(pl.DataFrame({"t": [value]}), "t")
    return frame["event_time"].item()  # type: ignore[no-any-return]
