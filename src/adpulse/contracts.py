"""Data contracts: the event streams, their fields, and the dead-letter reasons.

Field names and formats are the original hackathon's (see ``shared/samples``), so its
records are accepted verbatim. Every layer imports its names from here.
"""

from __future__ import annotations

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
