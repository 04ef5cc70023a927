"""Property: whatever bytes arrive, the processor never stops, and per stream
facts + duplicates + dead letters = lines received, on DuckDB, on PostgreSQL and over the
Redshift backend (on PostgreSQL, staging on a local S3).

Hypothesis puts arbitrary JSON values, strings, numbers, timestamps of any year and
raw bytes into every field of every stream (and sends raw bytes as whole records), mixed with valid records and repeated
event ids. The probe's cases of issue 8 are fixed examples. A bounded number of
examples runs in the normal suite; for a longer run:

    ADPULSE_HYPOTHESIS_PROFILE=long ./run test tests/pipeline/test_hostile_input.py -n 0

(profiles in tests/conftest.py).
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from builders import fresh_warehouse
from hypothesis import example, given
from hypothesis import strategies as st
from pgtest import require_postgres

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.processor.pipeline import Processor
from adpulse.storage.warehouse.base import Warehouse
from adpulse.transport.memory import InMemoryTransport

pytestmark = pytest.mark.xdist_group("hostile")

_FACTS = {
    Stream.IMPRESSIONS: "fact_impressions",
    Stream.CLICKS: "fact_clicks",
    Stream.CONVERSIONS: "fact_conversions",
}
_VALID: dict[Stream, dict[str, Any]] = {
    Stream.IMPRESSIONS: {
        "ad_id": 1001,
        "user_id": "U1",
        "impression_timestamp": "2023-09-09 10:00:00",
        "platform": "Web",
        "location": "Paris",
    },
    Stream.CLICKS: {
        "ad_id": 1001,
        "user_id": "U1",
        "click_timestamp": "2023-09-09 10:01:00",
        "platform": "Web",
        "location": "Paris",
    },
    Stream.CONVERSIONS: {
        "ad_id": 1001,
        "user_id": "U1",
        "conversion_timestamp": "2023-09-09 10:02:00",
        "product_id": "P1",
        "revenue": 12.5,
    },
}
_MISSING = object()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.decimals(allow_nan=False, allow_infinity=False).map(float),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
timestamps = st.one_of(
    st.datetimes().map(lambda t: t.strftime("%Y-%m-%d %H:%M:%S")),
    st.datetimes().map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%S") + "+05:00"),
    st.datetimes().map(lambda t: t.isoformat()),
    st.builds(
        "{:04d}-{:02d}-{:02d} {:02d}:{:02d}:{:02d}".format,
        st.integers(0, 99999),
        st.integers(0, 13),
        st.integers(0, 32),
        st.integers(0, 25),
        st.integers(0, 61),
        st.integers(0, 61),
    ),
)
strings = st.text(max_size=40) | st.text(st.characters(codec="utf-8"), max_size=300)


def field_values(stream: Stream, name: str) -> st.SearchStrategy[Any]:
    """Anything at all, weighted towards values near the valid ones."""
    valid = _VALID[stream][name]
    near: st.SearchStrategy[Any]
    if name == stream.timestamp_field:
        near = timestamps
    elif name in ("ad_id",):
        near = st.integers() | st.integers(-(2**70), 2**70)
    elif name == "revenue":
        near = st.floats() | st.integers(-(2**80), 2**80) | st.decimals().map(str)
    else:
        near = strings
    return st.one_of(st.just(valid), st.just(valid), near, json_values, st.just(_MISSING))


def records(stream: Stream) -> st.SearchStrategy[bytes]:
    fields = {name: field_values(stream, name) for name in _VALID[stream] if name != "event_id"}
    event_ids = st.one_of(
        st.just(_MISSING), st.sampled_from(["e1", "e2", "e3"]), strings, json_values
    )
    record = st.fixed_dictionaries(
        {**fields, "event_id": event_ids},
        optional={"extra": json_values},
    ).map(lambda r: {k: v for k, v in r.items() if v is not _MISSING})
    as_json = st.builds(_dumps, record, st.booleans())
    # raw bytes (any, not only UTF-8) inside one field's string
    spliced = st.builds(
        _splice, st.just(stream), st.sampled_from(sorted(_VALID[stream])), st.binary(max_size=20)
    )
    return st.one_of(
        as_json,
        as_json,
        as_json,
        spliced,
        st.binary(max_size=60),
        st.builds(_dumps, json_values, st.booleans()),
    )


def _splice(stream: Stream, name: str, raw: bytes) -> bytes:
    return _line(stream, **{name: "@@RAW@@"}).replace(b"@@RAW@@", raw)


def _dumps(value: object, ascii_only: bool) -> bytes:
    """JSON as any producer may write it: NaN, huge integers, raw UTF-8, lone surrogates."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _line(stream: Stream, **changes: object) -> bytes:
    return json.dumps({**_VALID[stream], **changes}).encode()


batches = st.fixed_dictionaries({s: st.lists(records(s), max_size=8) for s in Stream})

#: The probe's cases (issue 8): revenue that overflows a sum, years 0 and 1, NUL.
_PROBE = {
    Stream.IMPRESSIONS: [
        _line(Stream.IMPRESSIONS, impression_timestamp="0000-01-01 00:00:00"),
        _line(Stream.IMPRESSIONS, location="\u0000", event_id="nul-location"),
    ],
    Stream.CLICKS: [
        _line(Stream.CLICKS, click_timestamp="0001-01-01T00:00:00+05:00"),
        _line(Stream.CLICKS, click_timestamp="2023-09-09 10:\u000001:00", event_id="nul-time"),
        _line(Stream.CLICKS, platform="\u0000", user_id="U\u0000", event_id="nul-platform"),
    ],
    Stream.CONVERSIONS: [
        _line(Stream.CONVERSIONS, revenue=60000000000000, event_id="big-1"),
        _line(Stream.CONVERSIONS, revenue=60000000000000, event_id="big-2"),
        _line(Stream.CONVERSIONS, product_id="P\u00001", event_id="nul-product"),
    ],
}


@pytest.mark.parametrize("backend", ["duckdb", "postgres", "redshift"])
@given(hostile=batches)
@example(hostile=_PROBE)
@example(
    hostile={
        Stream.IMPRESSIONS: [],
        Stream.CLICKS: [],
        Stream.CONVERSIONS: _PROBE[Stream.CONVERSIONS][:2],
    }
)
@example(hostile={**{s: [] for s in Stream}, Stream.IMPRESSIONS: _PROBE[Stream.IMPRESSIONS][:1]})
@example(hostile={**{s: [] for s in Stream}, Stream.CLICKS: _PROBE[Stream.CLICKS][:2]})
def test_no_record_stops_the_processor_and_every_line_is_counted(
    backend: str, hostile: dict[Stream, list[bytes]]
) -> None:
    if backend in ("postgres", "redshift"):
        require_postgres()
    with (
        tempfile.TemporaryDirectory() as tmp,
        fresh_warehouse(backend, Path(tmp) / "warehouse.duckdb") as warehouse,
    ):
        transport = InMemoryTransport(2)
        producer = transport.producer()
        sent: dict[Stream, int] = {}
        for stream in Stream:
            valid = [_line(stream, event_id=f"valid-{i}") for i in range(2)]
            lines = [valid[0], *hostile[stream], valid[1]]
            producer.send(stream, lines, [_user_key(line) for line in lines])
            sent[stream] = len(lines)
        settings = Settings(home=Path(tmp), partitions=2, idle_timeout_seconds=100_000)
        processor = Processor(settings, transport, warehouse)
        try:
            processor.run(threading.Event(), until_caught_up=True)  # must not raise
        finally:
            processor.close()

        for stream in Stream:
            facts = _one(warehouse, f"SELECT count(*) FROM {_FACTS[stream]}")
            letters = _one(warehouse, "SELECT count(*) FROM dead_letters WHERE stream = ?", stream)
            received, accepted, rejected, duplicates = warehouse.query(
                "SELECT coalesce(sum(received), 0), coalesce(sum(accepted), 0),"
                " coalesce(sum(rejected), 0), coalesce(sum(duplicates), 0)"
                " FROM ingest_stats WHERE stream = ?",
                [stream.value],
            ).row(0)
            assert facts + duplicates + letters == sent[stream], stream
            assert (received, accepted, rejected) == (sent[stream], facts + duplicates, letters)
            assert facts >= 1  # the valid records land whatever surrounds them
        offsets = warehouse.load_offsets()
        consumer = transport.consumer()
        assert all(
            consumer.lag_bytes(s, p, offsets.get((s, p))) == 0 for s in Stream for p in range(2)
        )


def _one(warehouse: Warehouse, sql: str, stream: Stream | None = None) -> int:
    return int(warehouse.query(sql, [stream.value] if stream else []).item())


def _user_key(line: bytes) -> str | None:
    try:
        return str(json.loads(line)["user_id"])
    except Exception:  # noqa: BLE001 - any record without a readable user id
        return None
