"""Validate step alone: the bounds on revenue and event time and the characters no string
field may hold, each with its reason; and the time parsing behind CLI and API arguments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import polars as pl
import pytest

from adpulse.contracts import Reason, Stream, parse_time_argument, parse_timestamp
from adpulse.processor.steps.decode import decode
from adpulse.processor.steps.validate import validate
from adpulse.storage.warehouse.schema import MAX_REVENUE, REVENUE
from adpulse.transport.base import Chunk
from adpulse.transport.framing import frame

NOW = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
MAX_FUTURE = timedelta(minutes=15)


def _validate(
    stream: Stream, records: list[dict[str, object]], min_event_time: datetime | None = None
) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """(event ids accepted, {event id: (reason, detail)} rejected)."""
    payloads = [orjson.dumps(r) for r in records]
    decoded = decode(stream, [Chunk(stream, 0, None, "end", frame(payloads), len(payloads))])
    extra = {} if min_event_time is None else {"min_event_time": min_event_time}
    valid = validate(decoded, NOW, MAX_FUTURE, **extra)  # type: ignore[arg-type]
    rejected = {
        orjson.loads(r.payload)["event_id"]: (r.reason.value, r.detail) for r in valid.rejects
    }
    return valid.rows["event_id"].to_list(), rejected


def conversion(event_id: str, revenue: object) -> dict[str, object]:
    return {
        "event_id": event_id,
        "ad_id": 1,
        "user_id": "U1",
        "conversion_timestamp": "2023-09-09 10:20:00",
        "product_id": "P1",
        "revenue": revenue,
    }


def click(event_id: str, at: str, **fields: object) -> dict[str, object]:
    return {
        "event_id": event_id,
        "ad_id": 1,
        "user_id": "U1",
        "click_timestamp": at,
        "platform": "Web",
        "location": "X",
        **fields,
    }


def test_revenue_bounds() -> None:
    accepted, rejected = _validate(
        Stream.CONVERSIONS,
        [
            conversion("zero", 0),
            conversion("max", MAX_REVENUE),
            conversion("cents", 999_999_999.9999),
            conversion("above", MAX_REVENUE + 0.01),
            conversion("huge", 60_000_000_000_000),
            conversion("negative", -0.01),
        ],
    )
    assert accepted == ["zero", "max", "cents"]
    assert {k: v[0] for k, v in rejected.items()} == {
        "above": "revenue_out_of_range",
        "huge": "revenue_out_of_range",
        "negative": "negative_revenue",
    }
    assert rejected["huge"][1] == (
        "revenue 60000000000000.0 is above the maximum of 1,000,000,000 per conversion"
    )


def test_accepted_revenue_is_exact_in_its_stored_type() -> None:
    payloads = [orjson.dumps(conversion("cents", 999_999_999.9999))]
    decoded = decode(
        Stream.CONVERSIONS, [Chunk(Stream.CONVERSIONS, 0, None, "e", frame(payloads), 1)]
    )
    rows = validate(decoded, NOW, MAX_FUTURE).rows
    assert rows.schema["revenue"] == REVENUE
    assert rows["revenue"].to_list() == [Decimal("999999999.9999")]


def test_event_time_window() -> None:
    accepted, rejected = _validate(
        Stream.CLICKS,
        [
            click("year0", "0000-01-01 00:00:00"),
            click("year0-by-offset", "0001-01-01T00:00:00+05:00"),
            click("before", "1999-12-31 23:59:59"),
            click("first", "2000-01-01 00:00:00"),
            click("latest", "2024-01-01 12:15:00"),
            click("ahead", "2024-01-01 12:15:01"),
            click("year10000", "9999-12-31T23:59:59-05:00"),
        ],
    )
    assert accepted == ["first", "latest"]
    assert {k: v[0] for k, v in rejected.items()} == {
        "year0": "event_time_out_of_range",
        "year0-by-offset": "event_time_out_of_range",
        "before": "event_time_out_of_range",
        "ahead": "future_timestamp",
        "year10000": "future_timestamp",
    }
    assert rejected["year0-by-offset"][1] == (
        "click_timestamp 0001-01-01T00:00:00+05:00 is before min_event_time"
        " 2000-01-01 00:00:00 (UTC)"
    )
    assert rejected["ahead"][1] == (
        "click_timestamp 2024-01-01 12:15:01 is more than max_future_seconds (900 s)"
        " ahead of the clock"
    )


def test_min_event_time_is_a_parameter() -> None:
    accepted, rejected = _validate(
        Stream.CLICKS,
        [click("old", "2022-12-31 23:59:59"), click("new", "2023-01-01 00:00:00")],
        min_event_time=datetime(2023, 1, 1),
    )
    assert accepted == ["new"]
    assert {k: v[0] for k, v in rejected.items()} == {"old": "event_time_out_of_range"}


def test_nul_in_a_string_field_is_an_invalid_character_whatever_the_field() -> None:
    records = [
        click("ok", "2023-09-09 10:00:00"),
        click("location", "2023-09-09 10:00:00", location="New\x00York"),
        click("platform", "2023-09-09 10:00:00", platform="\x00"),
        click("timestamp", "2023-09-09 10:00:00\x00"),
        click("user", "2023-09-09 10:00:00", user_id="U\x001"),
        # an unknown extra field is kept in the raw record only: nothing to refuse
        click("extra", "2023-09-09 10:00:00", note="a\x00b"),
    ]
    accepted, rejected = _validate(Stream.CLICKS, records)
    assert accepted == ["ok", "extra"]
    assert {k: v[0] for k, v in rejected.items()} == {
        k: "invalid_character" for k in ("location", "platform", "timestamp", "user")
    }
    assert rejected["location"][1] == (
        "location holds a NUL character (U+0000, at byte 3), which a warehouse cannot store"
    )
    # in the event id itself, where there is no id to report it by
    payloads = [orjson.dumps(click("e\x00", "2023-09-09 10:00:00"))]
    decoded = decode(Stream.CLICKS, [Chunk(Stream.CLICKS, 0, None, "e", frame(payloads), 1)])
    [reject] = validate(decoded, NOW, MAX_FUTURE).rejects
    assert reject.reason is Reason.INVALID_CHARACTER


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-09-09 10:00:00", datetime(2023, 9, 9, 10)),
        ("2023-09-09T12:00:00+02:00", datetime(2023, 9, 9, 10)),
        ("0001-01-01 00:00:00", datetime(1, 1, 1)),
        ("0000-01-01 00:00:00", None),  # year 0: no Python datetime
        ("0001-01-01T00:00:00+05:00", None),  # year 0 in UTC
        ("9999-12-31T23:59:59-05:00", None),  # year 10000 in UTC
        ("yesterday", None),
    ],
)
def test_parse_timestamp_never_raises(text: str, expected: datetime | None) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-09-09", datetime(2023, 9, 9)),
        ("2023-09-09 10:05", datetime(2023, 9, 9, 10, 5)),
        ("2023-09-09T10:05:00", datetime(2023, 9, 9, 10, 5)),
        ("2023-09-09T10:05:00Z", datetime(2023, 9, 9, 10, 5)),
        ("2023-09-09T12:05:00+02:00", datetime(2023, 9, 9, 10, 5)),
        (
            "0001-01-01T00:00:00+05:00",
            "from: '0001-01-01T00:00:00+05:00' is outside the supported range"
            " 1000-01-01 to 9000-01-01 (UTC)",
        ),
        (
            "9999-12-31T23:59:59-05:00",
            "from: '9999-12-31T23:59:59-05:00' is outside the supported range"
            " 1000-01-01 to 9000-01-01 (UTC)",
        ),
        (
            "yesterday",
            "from: cannot read 'yesterday'; use 'YYYY-MM-DD', 'YYYY-MM-DD HH:MM[:SS]' (UTC)"
            " or ISO-8601 with an offset",
        ),
    ],
)
def test_time_arguments(text: str, expected: datetime | str) -> None:
    if isinstance(expected, datetime):
        assert parse_time_argument(text, "from") == expected
    else:
        with pytest.raises(ValueError) as info:
            parse_time_argument(text, "from")
        assert str(info.value) == expected


def test_the_nul_check_runs_whenever_a_string_may_hold_one() -> None:
    def decoded(*payloads: bytes) -> tuple[bool, list[str], list[str]]:
        chunk = Chunk(Stream.CLICKS, 0, None, "e", frame(list(payloads)), len(payloads))
        result = decode(Stream.CLICKS, [chunk])
        valid = validate(result, NOW, MAX_FUTURE)
        return (
            result.may_hold_nul,
            valid.rows["location"].to_list(),
            [r.reason.value for r in valid.rejects],
        )

    def line(location: bytes) -> bytes:
        return (
            b'{"ad_id": 1, "user_id": "U1", "click_timestamp": "2023-09-09 10:00:00",'
            b' "platform": "Web", "location": "' + location + b'"}'
        )

    # the common case: no backslash at all, so no string column is scanned
    assert decoded(line(b"Boston")) == (False, ["Boston"], [])
    assert decoded(line(b"Bo\\u0000ston")) == (True, [], ["invalid_character"])
    assert decoded(line(b"Bo\\uDBFFston")) == (True, [], ["invalid_character"])
    # an escaped backslash: the text \u0000, not a NUL (the hint errs on the safe side)
    assert decoded(line(b"Bo\\\\u0000ston")) == (True, ["Bo\\u0000ston"], [])
    assert decoded(line(b"caf\\u00e9")) == (False, ["caf\u00e9"], [])
    # the per-record path (a broken neighbour) always checks
    assert decoded(line(b"Boston"), b"{") == (True, ["Boston"], ["invalid_json"])


def test_missing_or_blank_required_fields() -> None:
    records: list[dict[str, object]] = [
        click("ok", "2023-09-09 10:00:00"),
        click("null-user", "2023-09-09 10:00:00", user_id=None),
        click("blank-user", "2023-09-09 10:00:00", user_id=" \t"),
        click("empty-platform", "2023-09-09 10:00:00", platform=""),
        click("null-ad", "2023-09-09 10:00:00", ad_id=None),
        {k: v for k, v in click("no-location", "2023-09-09 10:00:00").items() if k != "location"},
    ]
    accepted, rejected = _validate(Stream.CLICKS, records)
    assert accepted == ["ok"]
    assert rejected == {
        "null-user": ("missing_field", "user_id is missing or empty"),
        "blank-user": ("missing_field", "user_id is missing or empty"),
        "empty-platform": ("missing_field", "platform is missing or empty"),
        "null-ad": ("missing_field", "ad_id is missing or empty"),
        "no-location": ("missing_field", "location is missing or empty"),
    }


def test_event_id_is_optional() -> None:
    # no id, an empty one or a blank one: accepted; dedupe derives an id from the content
    payloads = [
        orjson.dumps(
            {k: v for k, v in click("x", "2023-09-09 10:00:00").items() if k != "event_id"}
        ),
        orjson.dumps(click("", "2023-09-09 10:00:00")),
        orjson.dumps(click("  ", "2023-09-09 10:00:00")),
    ]
    decoded = decode(Stream.CLICKS, [Chunk(Stream.CLICKS, 0, None, "e", frame(payloads), 3)])
    valid = validate(decoded, NOW, MAX_FUTURE)
    assert valid.rejects == []
    assert valid.rows["event_id"].to_list() == [None, "", "  "]


@pytest.mark.parametrize("broken_neighbour", [False, True])
def test_strings_that_look_like_json_are_strings_and_containers_are_not(
    broken_neighbour: bool,
) -> None:
    # A location "[North]" or a user "{42}" is text: accepted. A JSON object or array in
    # a string field is wrong_type, whether the chunk decodes at once or record by record.
    records = [
        click("brackets", "2023-09-09 10:00:00", location="[North]", user_id="{42}"),
        click("object", "2023-09-09 10:00:00", location={"city": "Boston"}),
        click("array", "2023-09-09 10:00:00", platform=["Web"]),
    ]
    payloads = [orjson.dumps(r) for r in records] + ([b"{"] if broken_neighbour else [])
    chunk = Chunk(Stream.CLICKS, 0, None, "e", frame(payloads), len(payloads))
    valid = validate(decode(Stream.CLICKS, [chunk]), NOW, MAX_FUTURE)
    assert valid.rows.select("event_id", "user_id", "location").rows() == [
        ("brackets", "{42}", "[North]")
    ]
    assert sorted((r.row, r.reason.value, r.detail) for r in valid.rejects) == [
        (1, "wrong_type", 'location must be a string, got {"city":"Boston"}'),
        (2, "wrong_type", 'platform must be a string, got ["Web"]'),
    ] + (
        [(3, "invalid_json", "unexpected end of data: line 1 column 2 (char 1)")]
        if broken_neighbour
        else []
    )


def test_length_limits_count_bytes() -> None:
    at = "2023-09-09 10:00:00"
    accepted, rejected = _validate(
        Stream.CLICKS,
        [
            click("i" * 256, at),  # at the limit
            click("i" * 257, at),
            click("long-user", at, user_id="u" * 257),
            click("long-location", at, location="l" * 257),
            # 128 x "é" is 256 bytes in UTF-8: at the limit; 129 is 258 bytes
            click("accents-ok", at, location="\u00e9" * 128),
            click("accents", at, location="\u00e9" * 129),
        ],
    )
    assert accepted == ["i" * 256, "accents-ok"]
    assert rejected == {
        "i" * 257: ("bad_event_id", "event_id longer than 256 bytes"),
        "long-user": ("wrong_type", "user_id longer than 256 bytes"),
        "long-location": ("wrong_type", "location longer than 256 bytes"),
        "accents": ("wrong_type", "location longer than 256 bytes"),
    }


def test_event_time_from_each_accepted_format_and_the_rest_refused() -> None:
    records = [
        click("original", "2023-09-09 10:00:00"),  # read as UTC
        click("offset", "2023-09-09T12:00:00+02:00"),
        click("zulu", "2023-09-09T10:00:00Z"),
        click("fraction", "2023-09-09T10:00:00.123456-01:00"),
        click("no-offset", "2023-09-09T10:00:00"),
        click("original-fraction", "2023-09-09 10:00:00.5"),
        click("words", "yesterday"),
    ]
    payloads = [orjson.dumps(r) for r in records]
    decoded = decode(Stream.CLICKS, [Chunk(Stream.CLICKS, 7, None, "e", frame(payloads), 7)])
    valid = validate(decoded, NOW, MAX_FUTURE)
    assert valid.rows.select("event_id", "event_time", "partition", "_row").rows() == [
        ("original", datetime(2023, 9, 9, 10), 7, 0),
        ("offset", datetime(2023, 9, 9, 10), 7, 1),
        ("zulu", datetime(2023, 9, 9, 10), 7, 2),
        ("fraction", datetime(2023, 9, 9, 11, 0, 0, 123456), 7, 3),
    ]
    assert valid.rows.schema["event_time"] == pl.Datetime("us")
    assert [(r.row, r.reason.value, r.detail) for r in valid.rejects] == [
        (4, "bad_timestamp", "click_timestamp is not a timestamp: 2023-09-09T10:00:00"),
        (5, "bad_timestamp", "click_timestamp is not a timestamp: 2023-09-09 10:00:00.5"),
        (6, "bad_timestamp", "click_timestamp is not a timestamp: yesterday"),
    ]


def test_the_first_failing_check_gives_the_reason() -> None:
    # missing fields come before the timestamp, the timestamp before revenue
    accepted, rejected = _validate(
        Stream.CONVERSIONS,
        [
            {**conversion("both", -1), "user_id": "", "conversion_timestamp": "never"},
            {**conversion("time-and-revenue", -1), "conversion_timestamp": "never"},
        ],
    )
    assert accepted == []
    assert {k: v[0] for k, v in rejected.items()} == {
        "both": "missing_field",
        "time-and-revenue": "bad_timestamp",
    }


def test_revenue_is_rounded_to_its_four_stored_decimals() -> None:
    payloads = [orjson.dumps(conversion(str(i), r)) for i, r in enumerate([1.23456, 1.23454, 7])]
    decoded = decode(
        Stream.CONVERSIONS, [Chunk(Stream.CONVERSIONS, 0, None, "e", frame(payloads), 3)]
    )
    rows = validate(decoded, NOW, MAX_FUTURE).rows
    assert rows["revenue"].to_list() == [Decimal("1.2346"), Decimal("1.2345"), Decimal("7.0000")]
    # a number written as a string is not a number
    accepted, rejected = _validate(Stream.CONVERSIONS, [conversion("text", "12")])
    assert rejected == {"text": ("wrong_type", 'revenue must be a number, got "12"')}
