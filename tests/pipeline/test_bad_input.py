"""Malformed records: each lands in the dead letters with its specific reason, the good
records of the same batch are processed, and the counts reconcile."""

from __future__ import annotations

import orjson
import pytest

from adpulse.contracts import Reason, Stream

GOOD_CLICK = {
    "ad_id": 1001,
    "user_id": "U1234",
    "click_timestamp": "2023-09-09 10:00:00",
    "platform": "Web",
    "location": "New York",
}
GOOD_CONV = {
    "ad_id": 1001,
    "user_id": "U1234",
    "conversion_timestamp": "2023-09-09 10:20:00",
    "product_id": "P501",
    "revenue": 50.0,
}


def click(**changes: object) -> bytes:
    record = {**GOOD_CLICK, "event_id": f"c-{len(changes)}-{sorted(changes.items())!r}"}
    for key, value in changes.items():
        if value is ...:
            record.pop(key)
        else:
            record[key] = value
    return orjson.dumps(record)


def conv(**changes: object) -> bytes:
    record = {**GOOD_CONV, "event_id": f"v-{sorted(changes.items())!r}"}
    record.update(changes)
    return orjson.dumps(record)


CLICK_CORPUS: list[tuple[bytes, Reason | None]] = [
    (
        b'{"ad_id": 1001, "user_id": "U1", "click_timestamp": "2023-09-09 10:00:00"',
        Reason.INVALID_JSON,
    ),
    (b'\xff\xfe{"ad_id": 1}', Reason.INVALID_UTF8),
    (
        click(location="Ne\udcff")
        if False
        else b'{"ad_id": 1001, "user_id": "U\xc3\x28", "click_timestamp": "2023-09-09 10:00:00", '
        b'"platform": "Web", "location": "X"}',
        Reason.INVALID_UTF8,
    ),
    (click(location=...), Reason.MISSING_FIELD),
    (click(user_id=None), Reason.MISSING_FIELD),
    (click(platform=""), Reason.MISSING_FIELD),
    (click(ad_id="abc"), Reason.WRONG_TYPE),
    (click(ad_id=1.5), Reason.WRONG_TYPE),
    (click(ad_id=True), Reason.WRONG_TYPE),
    (
        b'{"ad_id": 18446744073709551616, "user_id": "U1", "click_timestamp": '
        b'"2023-09-09 10:00:00", "platform": "Web", "location": "X"}',
        Reason.WRONG_TYPE,
    ),
    (click(user_id={"id": "U1"}), Reason.WRONG_TYPE),
    (click(location=["a"]), Reason.WRONG_TYPE),
    (click(click_timestamp="yesterday"), Reason.BAD_TIMESTAMP),
    (click(click_timestamp="2023-13-45 25:61:00"), Reason.BAD_TIMESTAMP),
    (click(click_timestamp="09/09/2023 10:00:00"), Reason.BAD_TIMESTAMP),
    (click(click_timestamp="2999-09-09 10:00:00"), Reason.FUTURE_TIMESTAMP),
    (click(debug="x" * 70_000), Reason.PAYLOAD_TOO_LARGE),
    (b"", Reason.EMPTY_PAYLOAD),
    (b"   ", Reason.EMPTY_PAYLOAD),
    (b"[1, 2]", Reason.NOT_AN_OBJECT),
    (b'"just a string"', Reason.NOT_AN_OBJECT),
    (b"null", Reason.NOT_AN_OBJECT),
    (
        b'{"ad_id": 1001, "user_id": "U1", "location": "New\nYork", "platform": "Web", '
        b'"click_timestamp": "2023-09-09 10:00:00"}',
        Reason.INVALID_JSON,
    ),
    (click(event_id="e" * 300), Reason.BAD_EVENT_ID),
    # Accepted: an ISO-8601 time with an offset, unknown extra fields, pretty-printed JSON.
    (click(click_timestamp="2023-09-09T12:00:00+02:00", event_id="iso"), None),
    (click(extra={"nested": [1, 2]}, event_id="extra"), None),
    (
        b'{\n  "ad_id": 1002,\n  "user_id": "U5678",\n  "click_timestamp": "2023-09-09 10:05:23",'
        b'\n  "platform": "Mobile",\n  "location": "Los Angeles"\n}',
        None,
    ),
]

CONVERSION_CORPUS: list[tuple[bytes, Reason | None]] = [
    (conv(revenue=-12.5), Reason.NEGATIVE_REVENUE),
    (conv(revenue="12.5"), Reason.WRONG_TYPE),
    (
        b'{"ad_id": 1001, "user_id": "U1234", "conversion_timestamp": "2023-09-09 10:20:00", '
        b'"product_id": "P1", "revenue": NaN}',
        Reason.INVALID_JSON,
    ),
    (conv(product_id=None), Reason.MISSING_FIELD),
    (conv(revenue=0, event_id="zero"), None),
    (conv(event_id="ok"), None),
]


@pytest.mark.parametrize("good_per_bad", [0, 50])
def test_each_bad_record_gets_its_specific_reason(pipeline, good_per_bad: int) -> None:  # type: ignore[no-untyped-def]
    sent = {Stream.CLICKS: 0, Stream.CONVERSIONS: 0}
    for stream, corpus, good in (
        (Stream.CLICKS, CLICK_CORPUS, GOOD_CLICK),
        (Stream.CONVERSIONS, CONVERSION_CORPUS, GOOD_CONV),
    ):
        payloads = []
        for i, (payload, _) in enumerate(corpus):
            payloads.append(payload)
            payloads.extend(
                orjson.dumps({**good, "event_id": f"good-{i}-{j}"}) for j in range(good_per_bad)
            )
        pipeline.send(stream, payloads)
        sent[stream] = len(payloads)
    pipeline.run()

    for stream, corpus in ((Stream.CLICKS, CLICK_CORPUS), (Stream.CONVERSIONS, CONVERSION_CORPUS)):
        expected_rejects = sorted(
            (payload, reason.value) for payload, reason in corpus if reason is not None
        )
        got = sorted(
            (bytes(p), r)
            for p, r in pipeline.rows(
                "SELECT payload, reason FROM dead_letters WHERE stream = ?", [stream.value]
            )
        )
        # Oversized payloads keep their first 4 KiB only.
        got = [(p, r) for p, r in got]
        want = [
            (p[:4096] if r == Reason.PAYLOAD_TOO_LARGE.value else p, r) for p, r in expected_rejects
        ]
        assert sorted(got) == sorted(want)
        accepted = len(corpus) - len(expected_rejects) + len(corpus) * good_per_bad
        received, acc, rej = pipeline.rows(
            "SELECT sum(received), sum(accepted), sum(rejected) FROM ingest_stats WHERE stream = ?",
            [stream.value],
        )[0]
        assert (received, acc, rej) == (sent[stream], accepted, len(expected_rejects))
        table = "fact_clicks" if stream is Stream.CLICKS else "fact_conversions"
        assert pipeline.rows(f"SELECT count(*) FROM {table}") == [(accepted,)]


def test_dead_letter_has_detail_and_location(pipeline) -> None:  # type: ignore[no-untyped-def]
    pipeline.send(Stream.CLICKS, [click(ad_id="abc")])
    pipeline.run()
    [(stream, reason, detail, index)] = pipeline.rows(
        "SELECT stream, reason, detail, record_index FROM dead_letters"
    )
    assert (stream, reason, index) == ("clicks", "wrong_type", 0)
    assert "ad_id" in detail and "abc" in detail
