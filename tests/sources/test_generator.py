"""The event generator: determinism, realistic shape, exact fault injection."""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from adpulse.contracts import Stream
from adpulse.sources.generator import (
    EXPECTED_REASON,
    EventGenerator,
    GeneratedEvents,
    GeneratorConfig,
    MalformedKind,
    event_generator,
    malformed_kinds,
)

#: One xdist worker runs this module: its module-scoped fixtures are built once, not
#: once on each worker.
pytestmark = pytest.mark.xdist_group("generator")

START = datetime(2023, 9, 9, 8)
END = datetime(2023, 9, 9, 20)
SMALL = {"ads": 60, "campaigns": 10, "users": 2_000}


def half_up(rate: float, n: int) -> int:
    return math.floor(rate * n + 0.5)


def parse_time(text: str) -> datetime | None:
    """Independent reading of the two accepted timestamp formats (UTC)."""
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        pass
    if "T" not in text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo is not None else None


def kind_of(stream: Stream, payload: bytes) -> MalformedKind | None:
    """Which malformed kind a payload is (None: a valid record), decided independently."""
    if payload == b"":
        return MalformedKind.EMPTY_PAYLOAD
    if len(payload) > 64 * 1024:
        return MalformedKind.OVERSIZED
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return MalformedKind.INVALID_UTF8
    if "\n" in text:
        return MalformedKind.EMBEDDED_NEWLINE
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return MalformedKind.INVALID_JSON
    if not isinstance(doc, dict):
        return MalformedKind.NOT_AN_OBJECT
    if any(name not in doc for name in stream.required_fields):
        return MalformedKind.MISSING_FIELD
    if not isinstance(doc["ad_id"], int) or not isinstance(doc["user_id"], str):
        return MalformedKind.WRONG_TYPE
    if stream is Stream.CONVERSIONS:
        if not isinstance(doc["revenue"], int | float):
            return MalformedKind.WRONG_TYPE
        if doc["revenue"] < 0:
            return MalformedKind.NEGATIVE_REVENUE
    moment = parse_time(doc[stream.timestamp_field])
    if moment is None:
        return MalformedKind.BAD_TIMESTAMP
    if moment.year > 2100:
        return MalformedKind.FUTURE_TIMESTAMP
    return None


def valid_frame(stream: Stream, payloads: list[bytes]) -> pl.DataFrame:
    """The valid records, first occurrences only, with arrival position and event time."""
    rows = []
    seen: set[bytes] = set()
    for position, payload in enumerate(payloads):
        if payload in seen or kind_of(stream, payload) is not None:
            continue
        seen.add(payload)
        doc = json.loads(payload)
        doc["time"] = parse_time(doc.pop(stream.timestamp_field))
        doc["position"] = position
        rows.append(doc)
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def clean() -> tuple[EventGenerator, GeneratedEvents]:
    gen = EventGenerator(GeneratorConfig().without_faults())
    return gen, gen.generate(200_000, datetime(2023, 9, 9), datetime(2023, 9, 11))


@pytest.fixture(scope="module")
def faulty() -> tuple[GeneratorConfig, GeneratedEvents]:
    config = GeneratorConfig(
        seed=3,
        **SMALL,
        duplicate_rate=0.03,
        out_of_order_rate=0.05,
        late_rate=0.01,
        malformed_rate=0.02,
    )
    # Half an hour: dense enough that every displaced impression overtakes another.
    return config, EventGenerator(config).generate(60_000, START, START + timedelta(minutes=30))


# --- Determinism -----------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_another_seed_does_not() -> None:
    config = GeneratorConfig(**SMALL, malformed_rate=0.01)
    a = EventGenerator(config).generate(20_000, START, END)
    b = EventGenerator(config).generate(20_000, START, END)
    assert a.records == b.records
    assert a.counts == b.counts
    assert EventGenerator(config).campaigns().equals(EventGenerator(config).campaigns())
    assert EventGenerator(config).users().equals(EventGenerator(config).users())

    other = GeneratorConfig(**{**SMALL, "seed": 8}, malformed_rate=0.01)
    c = EventGenerator(other).generate(20_000, START, END)
    for stream in Stream:
        assert a.records[stream] != c.records[stream]
    assert not EventGenerator(other).users().equals(EventGenerator(config).users())


def test_generate_is_the_concatenation_of_its_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    # The window size is read where EventGenerator lives: patch it there.
    monkeypatch.setattr(event_generator, "MAX_WINDOW_EVENTS", 7_000)
    config = GeneratorConfig(**SMALL, duplicate_rate=0.03, late_rate=0.01, malformed_rate=0.01)
    gen = EventGenerator(config)
    parts = list(gen.iter_generate(30_000, START, END))
    assert len(parts) == 5
    whole = gen.generate(30_000, START, END)
    assert whole.records == GeneratedEvents.concat(parts).records
    # Fault counts stay exact over the whole run, whatever the windows.
    for stream in Stream:
        counts = whole.counts[stream]
        assert counts.duplicates == half_up(0.03, counts.events)
        assert counts.late == half_up(0.01, counts.events)
        assert counts.malformed_total == half_up(0.01, counts.events)
        assert len(whole.records[stream]) == counts.records


def test_stream_chunks_are_deterministic_and_never_arrive_before_they_happen() -> None:
    def run() -> list[GeneratedEvents]:
        gen = EventGenerator(GeneratorConfig(**SMALL, conversion_delay_median_seconds=20))
        now = datetime(2026, 1, 5, 12, tzinfo=UTC)
        return [
            gen.stream_chunk(now + timedelta(seconds=i), now + timedelta(seconds=i + 1), 500)
            for i in range(120)
        ]

    first, second = run(), run()
    assert [w.records for w in first] == [w.records for w in second]
    totals = dict.fromkeys(Stream, 0)
    for window in first:
        for stream in Stream:
            frame = valid_frame(stream, window.records[stream])
            totals[stream] += frame.height
            if frame.height:
                assert frame["time"].max() < window.end
                assert frame["time"].min() >= first[0].start - timedelta(seconds=1)
    # Clicks and conversions happen after the window of their impression or click.
    assert totals[Stream.CLICKS] > 0
    assert totals[Stream.CONVERSIONS] > 0


def test_stream_chunk_rejects_overlapping_windows() -> None:
    gen = EventGenerator(GeneratorConfig(**SMALL))
    now = datetime(2026, 1, 5, 12, tzinfo=UTC)
    gen.stream_chunk(now, now + timedelta(seconds=1), 100)
    with pytest.raises(ValueError, match="must not overlap"):
        gen.stream_chunk(now + timedelta(milliseconds=500), now + timedelta(seconds=2), 100)
    gen.reset_stream()
    gen.stream_chunk(now, now + timedelta(seconds=1), 100)


def _event_ids(window: GeneratedEvents) -> set[str]:
    return {
        json.loads(p)["event_id"]
        for s in Stream
        for p in window.records[s]
        if kind_of(s, p) is None
    }


def test_feeds_of_one_seed_share_the_dimensions_but_no_event_id() -> None:
    now = datetime(2026, 1, 5, 12, tzinfo=UTC)

    def feed(number: int) -> tuple[EventGenerator, list[GeneratedEvents]]:
        gen = EventGenerator(GeneratorConfig(**SMALL), feed=number)
        windows = [
            gen.stream_chunk(now + timedelta(seconds=i), now + timedelta(seconds=i + 1), 2_000)
            for i in range(5)
        ]
        return gen, windows

    (first, a), (_, b), (restart, c) = feed(0), feed(0), feed(1_764_400_000_123)
    assert first.campaigns().equals(restart.campaigns())
    assert first.users().equals(restart.users())
    # A feed is reproducible; another feed of the same seed repeats none of its ids.
    assert [w.records for w in a] == [w.records for w in b]
    ids_a = set().union(*map(_event_ids, a))
    ids_c = set().union(*map(_event_ids, c))
    assert len(ids_a) > 1_000 and len(ids_c) > 1_000
    assert ids_a.isdisjoint(ids_c)
    with pytest.raises(ValueError, match="feed must be >= 0"):
        EventGenerator(GeneratorConfig(**SMALL), feed=-1)


def test_a_final_window_sends_every_held_record_so_faults_are_exact() -> None:
    config = GeneratorConfig(**SMALL, duplicate_rate=0.05, out_of_order_rate=0.05, late_rate=0.01)
    gen = EventGenerator(config)
    now = datetime(2026, 1, 5, 12, tzinfo=UTC)
    windows = [
        gen.stream_chunk(now + timedelta(seconds=i), now + timedelta(seconds=i + 1), 3_000)
        for i in range(3)
    ]
    windows.append(
        gen.stream_chunk(now + timedelta(seconds=3), now + timedelta(seconds=4), 3_000, final=True)
    )
    whole = GeneratedEvents.concat(windows)
    for stream in (Stream.IMPRESSIONS, Stream.CLICKS):
        counts = whole.counts[stream]
        records = whole.records[stream]
        # Re-sends and displaced records held back (up to 5 s and 540 s later) all
        # arrived: the stream is exactly its events plus the injected faults.
        assert len(records) == counts.records
        assert len(records) - len(set(records)) == counts.duplicates
        assert counts.duplicates == half_up(0.05, counts.events)
        assert counts.late == half_up(0.01, counts.events)
    # The feed goes on with new events: nothing is held back from before the final window.
    later = gen.stream_chunk(now + timedelta(seconds=4), now + timedelta(seconds=5), 3_000)
    assert later.total_records > 0
    assert _event_ids(later).isdisjoint(_event_ids(whole))


# --- Dimensions --------------------------------------------------------------------------


def _sample_rows(path: Path) -> list[list[str]]:
    return [line.split(", ") for line in path.read_text().splitlines()[1:]]


def test_original_samples_are_always_in_the_dimensions(samples: Path) -> None:
    for config in (GeneratorConfig(), GeneratorConfig(seed=99, ads=3, campaigns=3, users=3)):
        gen = EventGenerator(config)
        campaigns = gen.campaigns().with_columns(pl.all().cast(pl.String))
        for row in _sample_rows(samples / "campaigns.csv"):
            got = campaigns.filter(pl.col("ad_id") == row[0]).rows()
            assert got == [tuple(row)]
        users = gen.users().with_columns(pl.all().cast(pl.String))
        for row in _sample_rows(samples / "users.csv"):
            assert users.filter(pl.col("user_id") == row[0]).rows() == [tuple(row)]


def test_dimensions_have_the_configured_size_and_realistic_values() -> None:
    gen = EventGenerator(GeneratorConfig())
    campaigns, users = gen.campaigns(), gen.users()
    assert campaigns.columns == [
        "ad_id",
        "campaign",
        "product",
        "target_start_date",
        "target_end_date",
    ]
    assert campaigns.height == 300
    assert campaigns["ad_id"].n_unique() == 300
    assert campaigns["campaign"].n_unique() == 30
    assert (campaigns["target_start_date"] <= campaigns["target_end_date"]).all()
    assert not campaigns["campaign"].str.contains(",").any()
    assert users.columns == ["user_id", "age", "gender", "interests"]
    assert users.height == 20_000
    assert users["user_id"].n_unique() == 20_000
    interests = users["interests"].str.split(";")
    assert interests.list.len().min() == 1
    assert interests.list.len().max() == 4
    assert interests.explode().n_unique() == 15
    assert set(users["gender"].unique()) == {"Male", "Female", "Non-binary"}


# --- Realistic shape ----------------------------------------------------------------------


def _decode(events: GeneratedEvents, stream: Stream) -> pl.DataFrame:
    text = b"\n".join(events.records[stream])
    frame = pl.read_ndjson(text, schema=stream.decode_schema)
    ts = pl.col(stream.timestamp_field)
    return frame.with_columns(
        time=ts.str.strptime(pl.Datetime("ms"), "%Y-%m-%d %H:%M:%S", strict=False).fill_null(
            ts.str.to_datetime("%Y-%m-%dT%H:%M:%S%#z", strict=False, time_unit="ms")
            .dt.convert_time_zone("UTC")
            .dt.replace_time_zone(None)
        )
    )


def test_engagement_has_a_realistic_shape(clean: tuple[EventGenerator, GeneratedEvents]) -> None:
    gen, events = clean
    impressions = _decode(events, Stream.IMPRESSIONS)
    clicks = _decode(events, Stream.CLICKS)
    assert impressions["time"].null_count() == 0
    assert impressions["time"].min() >= datetime(2023, 9, 9)
    assert impressions["time"].max() < datetime(2023, 9, 11)

    ctr = clicks.height / impressions.height
    assert 0.015 <= ctr <= 0.035
    # Zipf-like popularity: the top 10 % of ads draw most of the impressions.
    per_ad = impressions["ad_id"].value_counts(sort=True)["count"]
    assert per_ad.head(per_ad.len() // 10).sum() > 0.4 * impressions.height
    assert set(impressions["platform"].unique()) == {"Web", "Mobile", "Tablet"}
    assert impressions["location"].n_unique() == 20

    # Unknown ads and users exist, each at about the configured 0.5 %.
    known_ads = gen.campaigns()["ad_id"]
    known_users = gen.users()["user_id"]
    unknown_ad = (~impressions["ad_id"].is_in(known_ads.implode())).mean()
    unknown_user = (~impressions["user_id"].is_in(known_users.implode())).mean()
    assert 0.003 <= unknown_ad <= 0.007  # type: ignore[operator]
    assert 0.003 <= unknown_user <= 0.007  # type: ignore[operator]

    # Ads only run during their flight (flights cover these days).
    flights = impressions.join(gen.campaigns(), on="ad_id").with_columns(
        day=pl.col("time").dt.date()
    )
    assert flights.height > 0
    running = (pl.col("target_start_date") <= pl.col("day")) & (
        pl.col("day") <= pl.col("target_end_date")
    )
    assert flights.filter(~running).height == 0

    # A click follows an impression of the same user and ad, seconds before.
    matched = clicks.sort("time").join_asof(
        impressions.sort("time").select("user_id", "ad_id", imp_time="time"),
        left_on="time",
        right_on="imp_time",
        by=["user_id", "ad_id"],
        strategy="backward",
        check_sortedness=False,
    )
    lag = (matched["time"] - matched["imp_time"]).dt.total_seconds()
    assert lag.null_count() == 0
    assert lag.min() >= 0
    assert lag.max() <= 300


def test_conversions_follow_clicks_with_heavy_tailed_delays(
    clean: tuple[EventGenerator, GeneratedEvents],
) -> None:
    _, events = clean
    clicks = _decode(events, Stream.CLICKS)
    conversions = _decode(events, Stream.CONVERSIONS)
    assert (conversions["revenue"] > 0).all()
    assert ((conversions["revenue"] * 100).round(6) % 1 == 0).all()
    assert conversions["product_id"].str.contains(r"^P\d{3}$").all()

    matched = conversions.sort("time").join_asof(
        clicks.sort("time").select("user_id", "ad_id", click_time="time"),
        left_on="time",
        right_on="click_time",
        by=["user_id", "ad_id"],
        strategy="backward",
        check_sortedness=False,
    )
    without_click = matched.filter(pl.col("click_time").is_null()).height
    counts = events.counts[Stream.CONVERSIONS]
    # Exactly the unattributed conversions lack an earlier click of the same user and ad.
    assert without_click == counts.unattributed > 0
    assert 0.02 <= counts.unattributed / conversions.height <= 0.05

    delay = (matched["time"] - matched["click_time"]).dt.total_seconds().drop_nulls()
    median = delay.median()
    assert median is not None
    assert delay.min() >= 0  # type: ignore[operator]
    assert delay.max() < 7 * 86_400  # type: ignore[operator]
    assert delay.mean() > 2 * median  # type: ignore[operator]
    assert delay.quantile(0.99) > 20 * median  # type: ignore[operator]
    assert delay.max() > 86_400  # type: ignore[operator]
    rate = matched.height / clicks.height
    assert 0.05 <= rate <= 0.15


def test_iso_timestamps_use_an_offset_at_the_configured_share(
    clean: tuple[EventGenerator, GeneratedEvents],
) -> None:
    _, events = clean
    texts = _decode(events, Stream.IMPRESSIONS)["impression_timestamp"]
    iso = texts.filter(texts.str.contains("T"))
    assert iso.str.contains(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$").all()
    assert 0.045 <= iso.len() / texts.len() <= 0.055


def test_without_event_ids_no_two_events_share_their_content() -> None:
    config = GeneratorConfig(
        **SMALL, include_event_ids=False, duplicate_rate=0.02, malformed_rate=0.0
    )
    events = EventGenerator(config).generate(40_000, START, START + timedelta(minutes=20))
    for stream in Stream:
        frame = _decode(events, stream)
        assert frame["event_id"].null_count() == frame.height
        content = [c for c in frame.columns if c not in ("event_id", stream.timestamp_field)]
        distinct = frame.select(content).unique().height
        # Only the injected re-sends repeat some content.
        assert frame.height - distinct == events.counts[stream].duplicates


# --- Faults ----------------------------------------------------------------------------


def test_fault_counts_match_the_knobs_exactly(
    faulty: tuple[GeneratorConfig, GeneratedEvents],
) -> None:
    config, events = faulty
    for stream in Stream:
        counts = events.counts[stream]
        n = counts.events
        assert counts.duplicates == half_up(config.duplicate_rate, n)
        assert counts.out_of_order == half_up(config.out_of_order_rate, n)
        assert counts.late == half_up(config.late_rate, n)
        assert counts.malformed_total == half_up(config.malformed_rate, n)
        assert len(events.records[stream]) == counts.records
        # Malformed kinds are cycled: as balanced as the count allows.
        kinds = malformed_kinds(stream)
        per_kind = [counts.malformed.get(k, 0) for k in kinds]
        if counts.malformed_total >= len(kinds):
            assert max(per_kind) - min(per_kind) <= 1


def test_injected_records_are_what_the_counts_say(
    faulty: tuple[GeneratorConfig, GeneratedEvents],
) -> None:
    _, events = faulty
    for stream in Stream:
        payloads = events.records[stream]
        counts = events.counts[stream]
        kinds = Counter(kind_of(stream, p) for p in payloads)
        malformed = {k: n for k, n in kinds.items() if k is not None}
        assert malformed == {k: n for k, n in counts.malformed.items() if n}
        valid = [p for p in payloads if kind_of(stream, p) is None]
        repeats = Counter(valid)
        assert len(repeats) == counts.events
        assert sum(n - 1 for n in repeats.values()) == counts.duplicates
        assert max(repeats.values()) <= 2


def test_every_malformed_kind_is_injected_with_its_expected_reason() -> None:
    events = EventGenerator(GeneratorConfig(**SMALL, malformed_rate=0.5)).generate(
        20_000, START, END
    )
    conversions = events.counts[Stream.CONVERSIONS].malformed
    assert set(conversions) == set(MalformedKind)
    impressions = events.counts[Stream.IMPRESSIONS].malformed
    assert set(impressions) == set(MalformedKind) - {MalformedKind.NEGATIVE_REVENUE}
    assert EXPECTED_REASON[MalformedKind.EMBEDDED_NEWLINE].value == "invalid_json"
    assert EXPECTED_REASON[MalformedKind.OVERSIZED].value == "payload_too_large"
    oversized = [p for p in events.records[Stream.CLICKS] if len(p) > 64 * 1024]
    assert {len(p) for p in oversized} == {70_000}


@pytest.mark.parametrize("stream", [Stream.IMPRESSIONS, Stream.CLICKS])
def test_displaced_records_arrive_late_within_the_bound(
    faulty: tuple[GeneratorConfig, GeneratedEvents], stream: Stream
) -> None:
    """Displaced records overtake others; only late ones fall far behind the stream."""
    config, events = faulty
    counts = events.counts[stream]
    frame = valid_frame(stream, events.records[stream]).sort("position")
    # Event ids number the events in event-time order: a record is displaced when one
    # with a higher number arrived before it.
    number = frame["event_id"].str.extract(r"-[icv](\d+)$").cast(pl.Int64)
    displaced = (number < number.cum_max().shift(1).fill_null(-1)).sum()
    if stream is Stream.IMPRESSIONS:
        assert displaced == counts.out_of_order + counts.late
    else:  # sparse: a displaced click may overtake nothing
        assert 0 < displaced <= counts.out_of_order + counts.late

    newest = frame["time"].cum_max()
    lateness = (newest - frame["time"]).dt.total_seconds()
    assert lateness.max() <= config.late_max_seconds
    beyond_reordering = (lateness > config.out_of_order_max_seconds + 1).sum()
    assert 0 < beyond_reordering <= counts.late
    # In-order records are never behind the stream.
    in_order = number >= number.cum_max().shift(1).fill_null(-1)
    assert lateness.filter(in_order).max() == 0


def test_knobs_are_validated() -> None:
    with pytest.raises(ValueError, match="duplicate_rate"):
        GeneratorConfig(duplicate_rate=1.5)
    with pytest.raises(ValueError, match="late_max_seconds"):
        GeneratorConfig(late_rate=0.1, late_max_seconds=10, out_of_order_max_seconds=30)
    with pytest.raises(ValueError, match="campaigns"):
        GeneratorConfig(ads=5, campaigns=10)
    with pytest.raises(ValueError, match="after start"):
        EventGenerator(GeneratorConfig(**SMALL)).generate(10, END, START)
