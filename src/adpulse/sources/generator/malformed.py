"""Malformed records: the kinds the generator injects, and how each is made.

Each :class:`MalformedKind` is a fault a real producer commits (cut-short JSON, invalid
UTF-8, a missing field, a negative revenue, an oversized payload...) and maps to the
dead-letter reason the pipeline must give it (:data:`EXPECTED_REASON`), so tests and
benchmarks can check the dead letters exactly. The records are built one by one from a
valid record, since there are few of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

import orjson

from adpulse.contracts import Reason, Stream


class MalformedKind(StrEnum):
    """A kind of malformed record the generator injects (see :data:`EXPECTED_REASON`)."""

    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NEGATIVE_REVENUE = "negative_revenue"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    EMPTY_PAYLOAD = "empty_payload"
    NOT_AN_OBJECT = "not_an_object"
    EMBEDDED_NEWLINE = "embedded_newline"
    OVERSIZED = "oversized"

    @property
    def expected_reason(self) -> Reason:
        """The dead-letter reason the pipeline must give a record of this kind."""
        return EXPECTED_REASON[self]


EXPECTED_REASON: Final[Mapping[MalformedKind, Reason]] = {
    MalformedKind.INVALID_JSON: Reason.INVALID_JSON,
    MalformedKind.INVALID_UTF8: Reason.INVALID_UTF8,
    MalformedKind.MISSING_FIELD: Reason.MISSING_FIELD,
    MalformedKind.WRONG_TYPE: Reason.WRONG_TYPE,
    MalformedKind.NEGATIVE_REVENUE: Reason.NEGATIVE_REVENUE,
    MalformedKind.BAD_TIMESTAMP: Reason.BAD_TIMESTAMP,
    MalformedKind.FUTURE_TIMESTAMP: Reason.FUTURE_TIMESTAMP,
    MalformedKind.EMPTY_PAYLOAD: Reason.EMPTY_PAYLOAD,
    MalformedKind.NOT_AN_OBJECT: Reason.NOT_AN_OBJECT,
    # A raw newline inside a JSON string is a control character: invalid JSON. In a
    # .jsonl file it splits the record into two lines, both invalid JSON.
    MalformedKind.EMBEDDED_NEWLINE: Reason.INVALID_JSON,
    MalformedKind.OVERSIZED: Reason.PAYLOAD_TOO_LARGE,
}


def malformed_kinds(stream: Stream) -> tuple[MalformedKind, ...]:
    """The malformed kinds injected into ``stream``, in the order they are cycled."""
    if stream is Stream.CONVERSIONS:
        return tuple(MalformedKind)
    return tuple(k for k in MalformedKind if k is not MalformedKind.NEGATIVE_REVENUE)


_MARK: Final = "\u241f"  # a placeholder swapped for raw bytes after serialising
_BAD_TIMESTAMPS: Final = ("2023-13-45 25:61:00", "yesterday", "09/09/2023 10:00:00")


def _dumps(record: Mapping[str, Any]) -> str:
    # The original's layout: ", " and ": " separators.
    return json.dumps(record, separators=(", ", ": "), ensure_ascii=False)


def malformed_record(
    kind: MalformedKind,
    variant: int,
    stream: Stream,
    base: bytes,
    event_id: str | None,
    oversized_bytes: int,
) -> bytes:
    """One malformed record of ``kind``, made from a valid record ``base``."""
    record: dict[str, Any] = orjson.loads(base)
    if event_id is not None:
        record["event_id"] = event_id  # its own id: it is not a copy of ``base``
    text_field = "product_id" if stream is Stream.CONVERSIONS else "location"
    ts_field = stream.timestamp_field
    match kind:
        case MalformedKind.INVALID_JSON:
            text = _dumps(record)
            return text[: len(text) // 2].encode()  # cut short: a prefix is never JSON
        case MalformedKind.INVALID_UTF8:
            value = record[text_field]
            record[text_field] = value[:2] + _MARK + value[2:]
            return _dumps(record).encode().replace(_MARK.encode(), b"\xc3\x28")
        case MalformedKind.MISSING_FIELD:
            required = stream.required_fields
            del record[required[variant % len(required)]]
            return _dumps(record).encode()
        case MalformedKind.WRONG_TYPE:
            options: list[tuple[str, Any]] = [
                ("ad_id", "abc"),
                ("user_id", {"id": record["user_id"]}),
            ]
            if stream is Stream.CONVERSIONS:
                options.insert(1, ("revenue", "12.5"))
            name, value = options[variant % len(options)]
            record[name] = value
            return _dumps(record).encode()
        case MalformedKind.NEGATIVE_REVENUE:
            record["revenue"] = _MARK
            return _dumps(record).encode().replace(f'"{_MARK}"'.encode(), b"-12.50")
        case MalformedKind.BAD_TIMESTAMP:
            record[ts_field] = _BAD_TIMESTAMPS[variant % len(_BAD_TIMESTAMPS)]
            return _dumps(record).encode()
        case MalformedKind.FUTURE_TIMESTAMP:
            record[ts_field] = "2999" + record[ts_field][4:]
            return _dumps(record).encode()
        case MalformedKind.EMPTY_PAYLOAD:
            return b""
        case MalformedKind.NOT_AN_OBJECT:
            return f"[{_dumps(record)}]".encode()
        case MalformedKind.EMBEDDED_NEWLINE:
            value = record[text_field]
            record[text_field] = value[:3] + _MARK + value[3:]
            return _dumps(record).encode().replace(_MARK.encode(), b"\n")
        case MalformedKind.OVERSIZED:
            record["debug_blob"] = ""
            size = len(_dumps(record).encode())
            record["debug_blob"] = "x" * max(0, oversized_bytes - size)
            return _dumps(record).encode()
    raise AssertionError(kind)  # pragma: no cover
