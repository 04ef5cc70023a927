"""Poison records (issue 8, items 1-3): revenue beyond its bound, event times outside the
accepted window, and characters a warehouse cannot store. Each once halted the processor
for good; each is now a dead letter with its specific reason, the rest of its batch
commits, and facts + duplicates + dead letters = records received. On DuckDB and on
PostgreSQL, with the same expected values."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from builders import MiniPipeline, fresh_warehouse
from pgtest import postgres_warehouse

from adpulse.contracts import Reason, Stream
from adpulse.serving import queries
from adpulse.storage.warehouse.schema import MAX_REVENUE

FACT_TABLE = {
    Stream.IMPRESSIONS: "fact_impressions",
    Stream.CLICKS: "fact_clicks",
    Stream.CONVERSIONS: "fact_conversions",
}


@pytest.fixture(params=["duckdb", "postgres", "redshift"])
def pipe(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MiniPipeline]:
    if request.param == "duckdb":
        mini = MiniPipeline(tmp_path)
        try:
            yield mini
        finally:
            mini.warehouse.close()
    elif request.param == "redshift":
        with fresh_warehouse("redshift", tmp_path / "unused.duckdb") as warehouse:
            yield MiniPipeline(tmp_path, warehouse=warehouse)
    else:
        with postgres_warehouse() as warehouse:
            yield MiniPipeline(tmp_path, warehouse=warehouse)


def conversion(
    event_id: str, revenue: object, at: str = "2023-09-09 10:20:00"
) -> dict[str, object]:
    return {
        "event_id": event_id,
        "ad_id": 1001,
        "user_id": "U1",
        "conversion_timestamp": at,
        "product_id": "P501",
        "revenue": revenue,
    }


def click(event_id: str, at: str = "2023-09-09 10:00:00", **fields: object) -> dict[str, object]:
    record: dict[str, object] = {
        "event_id": event_id,
        "ad_id": 1001,
        "user_id": "U1",
        "click_timestamp": at,
        "platform": "Web",
        "location": "Boston",
    }
    record.update(fields)
    return record


def dead_letters(pipe: MiniPipeline, stream: Stream) -> dict[str, int]:
    rows = pipe.rows(
        "SELECT reason, COUNT(*) FROM dead_letters WHERE stream = ? GROUP BY reason",
        [stream.value],
    )
    return {str(reason): int(str(n)) for reason, n in rows}


def reconcile(pipe: MiniPipeline, stream: Stream, received: int) -> tuple[int, int, int]:
    """(facts, duplicates, dead letters) of ``stream``, checked to add up to ``received``
    (and to agree with the ingest statistics)."""
    [(facts,)] = pipe.rows(f"SELECT COUNT(*) FROM {FACT_TABLE[stream]}")
    [(dead,)] = pipe.rows("SELECT COUNT(*) FROM dead_letters WHERE stream = ?", [stream.value])
    [(got, rejected, duplicates)] = pipe.rows(
        "SELECT SUM(received), SUM(rejected), SUM(duplicates) FROM ingest_stats WHERE stream = ?",
        [stream.value],
    )
    counts = (int(str(facts)), int(str(duplicates)), int(str(dead)))
    assert sum(counts) == received == int(str(got))
    assert int(str(rejected)) == counts[2]
    return counts


# --- 1. revenue ---------------------------------------------------------------------------
def test_revenue_above_the_maximum_is_a_dead_letter_and_the_rest_commits(
    pipe: MiniPipeline,
) -> None:
    # The reproduction: two conversions of one ad in one minute, 6e13 each, crashed
    # aggregation (DECIMAL(38,4) -> DECIMAL(18,4)) on every restart.
    pipe.send(
        Stream.CONVERSIONS,
        [
            conversion("big-1", 60_000_000_000_000),
            conversion("big-2", 60_000_000_000_000),
            conversion("just-above", MAX_REVENUE + 0.0001),
            conversion("at-max", MAX_REVENUE),
            conversion("at-max-again", MAX_REVENUE, at="2023-09-09 10:20:30"),
            conversion("at-max", MAX_REVENUE),  # a duplicate
            conversion("negative", -1),
        ],
    )
    pipe.run()
    assert reconcile(pipe, Stream.CONVERSIONS, 7) == (2, 1, 4)
    assert dead_letters(pipe, Stream.CONVERSIONS) == {
        Reason.REVENUE_OUT_OF_RANGE.value: 3,
        Reason.NEGATIVE_REVENUE.value: 1,
    }
    [(revenue,)] = pipe.rows("SELECT SUM(revenue) FROM rollup_minute")
    assert revenue == Decimal(2 * MAX_REVENUE)


def test_sums_of_accepted_revenue_do_not_overflow(pipe: MiniPipeline) -> None:
    # 100,001 conversions at the maximum in one minute of one ad: 1.00001e14, above what
    # DECIMAL(18,4) holds. One batch's rollup row holds the whole sum.
    n = 100_001
    pipe.send(
        Stream.CONVERSIONS,
        [orjson.dumps(conversion(f"c{i}", MAX_REVENUE)) for i in range(n)],
    )
    pipe.run()
    assert reconcile(pipe, Stream.CONVERSIONS, n) == (n, 0, 0)
    expected = Decimal(n * MAX_REVENUE)
    [(rollup,)] = pipe.rows("SELECT SUM(revenue) FROM rollup_minute")
    assert rollup == expected
    per_conversion = queries.revenue_per_conversion(pipe.warehouse, queries.Filters())
    assert per_conversion.select("conversions", "revenue", "revenue_per_conversion").rows() == [
        (n, expected, float(MAX_REVENUE))
    ]
    # the facts-based path (an audience filter reads the facts, not the rollups)
    by_facts = queries.revenue_per_conversion(pipe.warehouse, queries.Filters(gender="Female"))
    assert by_facts["revenue"].to_list() in ([], [Decimal(0)])


# --- 2. event times ------------------------------------------------------------------------
def test_a_year_zero_timestamp_alone_in_a_batch_is_a_dead_letter(pipe: MiniPipeline) -> None:
    # Alone in its batch it crashed the processor ("year 0 is out of range") on every run.
    pipe.send(Stream.CLICKS, [click("y0", at="0000-01-01 00:00:00")])
    pipe.run()
    assert reconcile(pipe, Stream.CLICKS, 1) == (0, 0, 1)
    assert dead_letters(pipe, Stream.CLICKS) == {Reason.EVENT_TIME_OUT_OF_RANGE.value: 1}
    [(detail,)] = pipe.rows("SELECT detail FROM dead_letters")
    assert "min_event_time 2000-01-01 00:00:00" in str(detail)


def test_event_times_outside_the_window_are_dead_letters_and_readers_keep_working(
    pipe: MiniPipeline,
) -> None:
    records = [
        click("y0", at="0000-01-01 00:00:00"),
        click("y1-offset", at="0001-01-01T00:00:00+05:00"),  # year 0 in UTC
        click("before-min", at="1999-12-31 23:59:59"),
        click("at-min", at="2000-01-01 00:00:00"),
        click("min-by-offset", at="1999-12-31T23:59:59-00:01"),  # 2000-01-01 00:00:59
        click("far-future", at="9999-12-31T23:59:59-05:00"),  # year 10000 in UTC
        click("future", at="2999-09-09 10:00:00"),
        *(click(f"ok-{i}") for i in range(5)),
    ]
    pipe.send(Stream.CLICKS, records)
    pipe.run()
    assert reconcile(pipe, Stream.CLICKS, 12) == (7, 0, 5)
    assert dead_letters(pipe, Stream.CLICKS) == {
        Reason.EVENT_TIME_OUT_OF_RANGE.value: 3,
        Reason.FUTURE_TIMESTAMP.value: 2,
    }
    # the readers that failed on the committed year-0 click
    status = queries.pipeline_status(pipe.warehouse)
    clicks = status["streams"].filter(stream="clicks").row(0, named=True)
    assert (clicks["min_event_time"], clicks["max_event_time"]) == (
        datetime(2000, 1, 1),
        datetime(2023, 9, 9, 10),
    )
    span = queries.data_range(pipe.warehouse)
    assert (span["first_minute"], span["last_minute"]) == (
        datetime(2000, 1, 1),
        datetime(2023, 9, 9, 10),
    )
    assert queries.timeseries(pipe.warehouse, queries.Filters())["clicks"].sum() == 7


def test_min_event_time_is_a_setting(tmp_path: Path) -> None:
    mini = MiniPipeline(tmp_path, min_event_time=datetime(2023, 1, 1))
    try:
        mini.send(Stream.CLICKS, [click("old", at="2022-12-31 23:59:59"), click("new")])
        mini.run()
        assert reconcile(mini, Stream.CLICKS, 2) == (1, 0, 1)
        assert dead_letters(mini, Stream.CLICKS) == {Reason.EVENT_TIME_OUT_OF_RANGE.value: 1}
    finally:
        mini.warehouse.close()


# --- 3. characters -------------------------------------------------------------------------
NUL = "\x00"


def _nul_records() -> list[tuple[Stream, bytes]]:
    """A NUL (written ``\\u0000``) in each string field of each stream."""
    out: list[tuple[Stream, bytes]] = []
    good = {
        Stream.IMPRESSIONS: {
            "event_id": "x",
            "ad_id": 1001,
            "user_id": "U1",
            "impression_timestamp": "2023-09-09 09:59:00",
            "platform": "Web",
            "location": "Boston",
        },
        Stream.CLICKS: click("x"),
        Stream.CONVERSIONS: conversion("x", 5.0),
    }
    for stream, record in good.items():
        for name, value in record.items():
            if isinstance(value, str):
                bad = {**record, "event_id": f"nul-{stream}-{name}", name: value + NUL + "x"}
                if name == "event_id":
                    bad[name] = "nul" + NUL
                out.append((stream, orjson.dumps(bad)))
    return out


def test_a_nul_in_any_string_field_is_an_invalid_character(pipe: MiniPipeline) -> None:
    bad = _nul_records()
    assert len(bad) == 5 + 5 + 4  # every string field, timestamps and event ids included
    lone_surrogate = (
        b'{"event_id": "sur", "ad_id": 1001, "user_id": "U1\\ud800",'
        b' "click_timestamp": "2023-09-09 10:00:00", "platform": "Web", "location": "X"}'
    )
    for stream in Stream:
        payloads = [p for s, p in bad if s is stream]
        if stream is Stream.CLICKS:
            payloads.append(lone_surrogate)
            payloads.extend(orjson.dumps(click(f"ok-{i}")) for i in range(3))
        pipe.send(stream, payloads)
    pipe.run()  # on PostgreSQL, COPY refused the NUL on every retry
    assert reconcile(pipe, Stream.IMPRESSIONS, 5) == (0, 0, 5)
    assert reconcile(pipe, Stream.CLICKS, 9) == (3, 0, 6)
    assert reconcile(pipe, Stream.CONVERSIONS, 4) == (0, 0, 4)
    assert {s: dead_letters(pipe, s) for s in Stream} == {
        Stream.IMPRESSIONS: {Reason.INVALID_CHARACTER.value: 5},
        Stream.CLICKS: {Reason.INVALID_CHARACTER.value: 6},
        Stream.CONVERSIONS: {Reason.INVALID_CHARACTER.value: 4},
    }
    # the raw payloads are kept exactly, NUL escapes and all
    stored = {bytes(p) for (p,) in pipe.rows("SELECT payload FROM dead_letters")}  # type: ignore[arg-type]
    assert stored == {p for _, p in bad} | {lone_surrogate}
    [(detail,)] = pipe.rows(
        "SELECT detail FROM dead_letters WHERE stream = 'clicks' AND payload = ?",
        [next(p for s, p in bad if s is Stream.CLICKS and b"Boston\\u0000" in p)],
    )
    assert detail == (
        "location holds a NUL character (U+0000, at byte 6), which a warehouse cannot store"
    )


@pytest.mark.parametrize("neighbour_is_broken", [False, True])
def test_a_records_reason_does_not_depend_on_its_neighbours(
    pipe: MiniPipeline, neighbour_is_broken: bool
) -> None:
    # A broken neighbour sends the chunk down the per-record path; the vectorized decoder
    # reads a lone surrogate as NUL, the per-record checks refuse it: same reason both ways.
    payloads = [
        b'{"event_id": "sur", "ad_id": 1, "user_id": "U1", "platform": "Web\\udbff",'
        b' "click_timestamp": "2023-09-09 10:00:00", "location": "X"}',
        orjson.dumps(click("nul", platform="W" + NUL)),
        # in a field adpulse does not keep: the record is still no valid JSON text
        orjson.dumps(click("extra")).replace(b"}", b', "note": "\\uD801x"}'),
        orjson.dumps(click("ok")),
    ]
    if neighbour_is_broken:
        payloads.append(b'{"ad_id": 1, "user_id": ')
    pipe.send(Stream.CLICKS, payloads)
    pipe.run()
    expected = {Reason.INVALID_CHARACTER.value: 3}
    if neighbour_is_broken:
        expected[Reason.INVALID_JSON.value] = 1
    assert dead_letters(pipe, Stream.CLICKS) == expected
    assert reconcile(pipe, Stream.CLICKS, len(payloads)) == (1, 0, len(payloads) - 1)
