"""Step 2, validate: required fields, types the decoder lets through, values, timestamps.

Input: decoded rows. Output: the valid rows with ``event_time`` (UTC, microseconds) and
the rejects, each with a specific reason. Checks are vectorized; rows are only touched one
by one when they are rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import polars as pl

from adpulse.config import DEFAULT_MIN_EVENT_TIME
from adpulse.contracts import ORIGINAL_TIMESTAMP_FORMAT, Reason, Stream
from adpulse.processor.steps.decode import Decoded, Reject
from adpulse.storage.warehouse.schema import MAX_REVENUE, REVENUE

MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 256
_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S%#z", "%Y-%m-%dT%H:%M:%S%.f%#z")
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
    checks: list[tuple[pl.Expr, Reason, pl.Expr]] = []
    for name in stream.required_fields:
        missing = pl.col(name).is_null()
        if stream.decode_schema[name] == pl.String:
            missing = missing | (pl.col(name).str.strip_chars() == "")
        checks.append((missing, Reason.MISSING_FIELD, pl.lit(f"{name} is missing or empty")))
    for name, dtype in stream.decode_schema.items():
        if dtype == pl.String and decoded.may_hold_nul:
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
            pl.col("event_time") < earliest,
            Reason.EVENT_TIME_OUT_OF_RANGE,
            pl.format(
                "{} {} is before min_event_time {} (UTC)",
                pl.lit(ts),
                pl.col(ts).str.head(40),
                pl.lit(str(earliest)),
            ),
        )
    )
    checks.append(
        (
            pl.col("event_time") > horizon,
            Reason.FUTURE_TIMESTAMP,
            pl.format(
                "{} {} is more than max_future_seconds ({} s) ahead of the clock",
                pl.lit(ts),
                pl.col(ts).str.head(40),
                pl.lit(int(max_future.total_seconds())),
            ),
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
                pl.col("revenue") > MAX_REVENUE,
                Reason.REVENUE_OUT_OF_RANGE,
                pl.format(
                    "revenue {} is above the maximum of {} per conversion",
                    pl.col("revenue"),
                    pl.lit(f"{MAX_REVENUE:,}"),
                ),
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
    """Money as :data:`~adpulse.storage.warehouse.schema.REVENUE` from here on (JSON
    numbers decode as floats; at most ``MAX_REVENUE``, so the cast cannot overflow)."""
    if "revenue" not in rows.columns:
        return rows
    return rows.with_columns(pl.col("revenue").round(4).cast(REVENUE))


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
    """One timestamp, same rules as the pipeline: naive UTC, or None when it is no
    timestamp or lies outside Python's years 1 to 9999 (``0001-01-01T00:00:00+05:00``
    is in year 0 in UTC). Times a user types: :func:`parse_time_argument`."""
    micros = _epoch_micros(value)
    if micros is None or not _MIN_MICROS <= micros <= _MAX_MICROS:
        return None
    return _EPOCH + timedelta(microseconds=micros)


def parse_time_argument(value: str, name: str) -> datetime:
    """A time a user typed (``--from``, ``?to=``): ``YYYY-MM-DD``, ``YYYY-MM-DD HH:MM[:SS]``
    or ``YYYY-MM-DDTHH:MM:SS`` (UTC), or ISO-8601 with an offset; naive UTC.

    Raises ValueError naming ``name`` and saying what is accepted, for text that is no
    time and for times outside :data:`QUERY_TIME_RANGE` (far outside any event time a
    warehouse can hold, and far enough inside Python's range for minute arithmetic).
    """
    text = value.strip()
    if len(text) == 10:
        text += " 00:00:00"
    elif len(text) == 16:
        text += ":00"
    if len(text) == 19 and text[10] == "T":  # naive ISO: UTC, like the space form
        text = text[:10] + " " + text[11:]
    micros = _epoch_micros(text)
    if micros is None:
        raise ValueError(
            f"{name}: cannot read {value!r}; use 'YYYY-MM-DD', 'YYYY-MM-DD HH:MM[:SS]' (UTC)"
            " or ISO-8601 with an offset"
        )
    low, high = QUERY_TIME_RANGE
    if not _micros(low) <= micros < _micros(high):
        raise ValueError(
            f"{name}: {value!r} is outside the supported range {low:%Y-%m-%d} to"
            f" {high:%Y-%m-%d} (UTC)"
        )
    return _EPOCH + timedelta(microseconds=micros)


#: Times a query may name, ``[low, high)``, UTC.
QUERY_TIME_RANGE: Final = (datetime(1000, 1, 1), datetime(9000, 1, 1))
_EPOCH: Final = datetime(1970, 1, 1)


def _epoch_micros(text: str) -> int | None:
    """One timestamp as microseconds since 1970 (UTC), parsed like the events' (Polars
    holds times Python's datetime cannot, e.g. in year 0), or None."""
    frame = with_event_time(pl.DataFrame({"t": [text]}), "t")
    micros: int | None = frame.select(pl.col("event_time").dt.epoch("us")).item()
    return micros


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


_MIN_MICROS: Final = _micros(datetime.min)
_MAX_MICROS: Final = _micros(datetime.max)
