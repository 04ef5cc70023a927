"""Step 2, validate: required fields, types the decoder lets through, values, timestamps.

Input: decoded rows. Output: the valid rows with ``event_time`` (UTC, microseconds) and
the rejects, each with a specific reason. Checks are vectorized; rows are only touched one
by one when they are rejected.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from adpulse.config import DEFAULT_MIN_EVENT_TIME
from adpulse.contracts import Reason, Stream, with_event_time
from adpulse.processor.steps.decode import Decoded, Reject
from adpulse.storage.warehouse.schema import MAX_REVENUE, REVENUE

MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 256
#: Characters no string field may hold: NUL, which PostgreSQL cannot store in TEXT.
#: (Lone surrogates and invalid UTF-8 never reach a column: decode rejects them.)
FORBIDDEN_CHARACTERS = "\x00"


@dataclass(slots=True)
class Validated:
    stream: Stream
    rows: pl.DataFrame  # decode schema + _row, partition, event_time
    rejects: list[Reject]


def validate(
    decoded: Decoded,
    now: datetime,
    max_future: timedelta,
    min_event_time: datetime = DEFAULT_MIN_EVENT_TIME,
) -> Validated:
    """Split decoded rows into valid rows and rejects (appended to ``decoded.rejects``).

    Event times are accepted in ``[min_event_time, now + max_future]`` (UTC); revenue in
    ``[0, MAX_REVENUE]``; string fields without a NUL. Rules and reasons:
    ``docs/robustness.md``, "What is rejected, and why".
    """
    stream = decoded.stream
    rows = with_event_time(decoded.rows, stream.timestamp_field)
    horizon = now.replace(tzinfo=None) + max_future
    earliest = min_event_time.replace(tzinfo=None)
    # A row passes when every check is false (nulls = pass). Most batches have no bad
    # row: one boolean pass answers that, without building a reason for every row.
    time_checks = _time_checks(stream, horizon, earliest, max_future)
    failing = pl.any_horizontal(
        _fields_failing(stream, decoded.may_hold_nul),
        _any_failing(time_checks),
        _values_failing(stream),
    )
    if not rows.select(failing.any()).item():
        return Validated(stream, _typed(rows), decoded.rejects)
    checks = [
        *_field_checks(stream, decoded.may_hold_nul),
        *time_checks,
        *_value_checks(stream),
    ]
    # First failing check wins.
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


_Check = tuple[pl.Expr, Reason, pl.Expr]


@functools.cache
def _field_checks(stream: Stream, may_hold_nul: bool) -> tuple[_Check, ...]:
    """The checks of the fields themselves, in the order they are judged (built once per
    stream: building them cost more than running them over a live batch)."""
    checks: list[_Check] = []
    for name in stream.required_fields:
        missing = pl.col(name).is_null()
        if stream.decode_schema[name] == pl.String:
            missing = missing | (pl.col(name).str.strip_chars() == "")
        checks.append((missing, Reason.MISSING_FIELD, pl.lit(f"{name} is missing or empty")))
    for name, dtype in stream.decode_schema.items():
        if dtype == pl.String and may_hold_nul:
            checks.append(
                (
                    pl.col(name).str.contains(FORBIDDEN_CHARACTERS, literal=True),
                    Reason.INVALID_CHARACTER,
                    pl.format(
                        "{} holds a NUL character (U+0000, at byte {}), which a"
                        " warehouse cannot store",
                        pl.lit(name),
                        pl.col(name).str.find(FORBIDDEN_CHARACTERS, literal=True),
                    ),
                )
            )
    for name, dtype in stream.decode_schema.items():
        # (A JSON object or array in a string field is rejected by decode, which tells it
        # from a string that merely starts with "{" or "[": that one is text, accepted.)
        if dtype == pl.String and name != stream.timestamp_field:
            limit = MAX_ID_CHARS if name in ("event_id", "user_id") else MAX_TEXT_CHARS
            checks.append(
                (
                    pl.col(name).str.len_bytes() > limit,
                    Reason.BAD_EVENT_ID if name == "event_id" else Reason.WRONG_TYPE,
                    pl.lit(f"{name} longer than {limit} bytes"),
                )
            )
    return tuple(checks)


def _time_checks(
    stream: Stream, horizon: datetime, earliest: datetime, max_future: timedelta
) -> tuple[_Check, ...]:
    """The event time's checks (their bounds move with the clock)."""
    ts = stream.timestamp_field
    return (
        (
            pl.col("event_time").is_null(),
            Reason.BAD_TIMESTAMP,
            pl.format("{} is not a timestamp: {}", pl.lit(ts), pl.col(ts).str.head(40)),
        ),
        (
            pl.col("event_time") < earliest,
            Reason.EVENT_TIME_OUT_OF_RANGE,
            pl.format(
                "{} {} is before min_event_time {} (UTC)",
                pl.lit(ts),
                pl.col(ts).str.head(40),
                pl.lit(str(earliest)),
            ),
        ),
        (
            pl.col("event_time") > horizon,
            Reason.FUTURE_TIMESTAMP,
            pl.format(
                "{} {} is more than max_future_seconds ({} s) ahead of the clock",
                pl.lit(ts),
                pl.col(ts).str.head(40),
                pl.lit(int(max_future.total_seconds())),
            ),
        ),
    )


@functools.cache
def _value_checks(stream: Stream) -> tuple[_Check, ...]:
    """The checks of values after the event time (revenue), built once per stream."""
    if stream is not Stream.CONVERSIONS:
        return ()
    return (
        (pl.col("revenue") < 0, Reason.NEGATIVE_REVENUE, pl.lit("revenue < 0")),
        (
            pl.col("revenue").is_nan() | pl.col("revenue").is_infinite(),
            Reason.WRONG_TYPE,
            pl.lit("revenue must be a finite number"),
        ),
        (
            pl.col("revenue") > MAX_REVENUE,
            Reason.REVENUE_OUT_OF_RANGE,
            pl.format(
                "revenue {} is above the maximum of {} per conversion",
                pl.col("revenue"),
                pl.lit(f"{MAX_REVENUE:,}"),
            ),
        ),
    )


@functools.cache
def _fields_failing(stream: Stream, may_hold_nul: bool) -> pl.Expr:
    return _any_failing(_field_checks(stream, may_hold_nul))


@functools.cache
def _values_failing(stream: Stream) -> pl.Expr:
    return _any_failing(_value_checks(stream))


def _any_failing(checks: tuple[_Check, ...]) -> pl.Expr:
    """Whether any of ``checks`` fails (NULL = passes)."""
    if not checks:
        return pl.lit(False)
    return pl.any_horizontal([c.fill_null(False) for c, _, _ in checks])


def _typed(rows: pl.DataFrame) -> pl.DataFrame:
    """Money as :data:`~adpulse.storage.warehouse.schema.REVENUE` from here on (JSON
    numbers decode as floats; at most ``MAX_REVENUE``, so the cast cannot overflow)."""
    if "revenue" not in rows.columns:
        return rows
    return rows.with_columns(pl.col("revenue").round(4).cast(REVENUE))
