"""Data contracts: the event streams, their fields, and the dead-letter reasons.

Field names and formats are the original hackathon's (see ``shared/samples``), so its
records are accepted verbatim. Every layer imports its names from here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

import polars as pl


class Stream(StrEnum):
    """An event stream; each is its own partitioned topic in the transport."""

    IMPRESSIONS = "impressions"
    CLICKS = "clicks"
    CONVERSIONS = "conversions"

    @property
    def timestamp_field(self) -> str:
        return _TIMESTAMP_FIELD[self]

    @property
    def decode_schema(self) -> dict[str, pl.DataType]:
        """Polars schema used to decode one JSON object per record of this stream."""
        return _DECODE_SCHEMA[self]

    @property
    def required_fields(self) -> tuple[str, ...]:
        return _REQUIRED[self]


_TIMESTAMP_FIELD: Final = {
    Stream.IMPRESSIONS: "impression_timestamp",
    Stream.CLICKS: "click_timestamp",
    Stream.CONVERSIONS: "conversion_timestamp",
}

_ENGAGEMENT_SCHEMA = {
    "event_id": pl.String(),
    "ad_id": pl.Int64(),
    "user_id": pl.String(),
    "platform": pl.String(),
    "location": pl.String(),
}

_DECODE_SCHEMA: Final[dict[Stream, dict[str, pl.DataType]]] = {
    Stream.IMPRESSIONS: {**_ENGAGEMENT_SCHEMA, "impression_timestamp": pl.String()},
    Stream.CLICKS: {**_ENGAGEMENT_SCHEMA, "click_timestamp": pl.String()},
    Stream.CONVERSIONS: {
        "event_id": pl.String(),
        "ad_id": pl.Int64(),
        "user_id": pl.String(),
        "conversion_timestamp": pl.String(),
        "product_id": pl.String(),
        "revenue": pl.Float64(),
    },
}

_REQUIRED: Final = {
    Stream.IMPRESSIONS: ("ad_id", "user_id", "impression_timestamp", "platform", "location"),
    Stream.CLICKS: ("ad_id", "user_id", "click_timestamp", "platform", "location"),
    Stream.CONVERSIONS: ("ad_id", "user_id", "conversion_timestamp", "product_id", "revenue"),
}

#: The partition key of every stream: a user's clicks and conversions meet in one partition.
PARTITION_KEY: Final = "user_id"

#: Timestamp formats accepted, tried in order. The original's format is read as UTC.
ORIGINAL_TIMESTAMP_FORMAT: Final = "%Y-%m-%d %H:%M:%S"

#: Largest accepted record, in bytes (Kinesis's own record limit is 1 MiB).
DEFAULT_MAX_RECORD_BYTES: Final = 64 * 1024


class Reason(StrEnum):
    """Why a record went to the dead letters. Each is specific and stable (it is stored)."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    EMPTY_PAYLOAD = "empty_payload"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NEGATIVE_REVENUE = "negative_revenue"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    BAD_EVENT_ID = "bad_event_id"
    REVENUE_OUT_OF_RANGE = "revenue_out_of_range"
    EVENT_TIME_OUT_OF_RANGE = "event_time_out_of_range"
    INVALID_CHARACTER = "invalid_character"
    #: A stored line no writer produces (a damaged log), or bytes lost in it.
    DAMAGED_RECORD = "damaged_record"
    #: A step of the processor raised on this record (see ``processor/isolation.py``).
    PROCESSING_FAILED = "processing_failed"
    #: The warehouse refused to store this record (its message is the detail).
    COMMIT_REJECTED = "commit_rejected"


# Age bands used for filters and rollups; upper bounds are exclusive.
AGE_BANDS: Final = (
    (0, 18, "<18"),
    (18, 25, "18-24"),
    (25, 35, "25-34"),
    (35, 45, "35-44"),
    (45, 55, "45-54"),
    (55, 65, "55-64"),
    (65, 200, "65+"),
)


def age_band_expr(age: pl.Expr) -> pl.Expr:
    """Polars expression mapping an age to its band label (null stays null)."""
    expr: pl.Expr = pl.lit(None, dtype=pl.String)
    for low, high, label in reversed(AGE_BANDS):
        expr = pl.when((age >= low) & (age < high)).then(pl.lit(label)).otherwise(expr)
    return expr


def age_band(age: int | None) -> str | None:
    if age is None:
        return None
    for low, high, label in AGE_BANDS:
        if low <= age < high:
            return label
    return None


# --- timestamps -----------------------------------------------------------------------------
# One parser for every layer: the processor's validate step reads event times with it, the
# CLI and the HTTP API read the times a user types with it, so both agree on every value.
_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S%#z", "%Y-%m-%dT%H:%M:%S%.f%#z")


def with_event_time(rows: pl.DataFrame, field: str) -> pl.DataFrame:
    """Add ``event_time``: the original format (read as UTC), else ISO-8601 with an offset.

    The ISO parsers only run on the rows the original format did not parse (a few % of
    records in practice), not on the whole batch.
    """
    rows = rows.with_columns(
        # cache=False: the cache of distinct strings costs more than it saves here
        # (~50 against ~30 ns per row; a batch holds few repeats of a second).
        event_time=pl.col(field).str.strptime(
            pl.Datetime("us"), ORIGINAL_TIMESTAMP_FORMAT, strict=False, cache=False
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
