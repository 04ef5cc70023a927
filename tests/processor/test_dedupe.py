"""Dedupe step alone: ids (the producer's, or derived from the content), lateness against
the running watermark, and repeats within a batch and across batches within the horizon.

Rows are built by hand in the shape validate hands on (``event_id``, the stream's fields,
``event_time`` and ``partition``); each test runs the step's public functions in the order
the processor does: ``with_event_ids`` -> ``flag_late`` -> ``drop_duplicates``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from decimal import Decimal

import polars as pl

from adpulse.contracts import Stream
from adpulse.processor.state import DedupeState
from adpulse.processor.steps.dedupe import drop_duplicates, flag_late, with_event_ids
from adpulse.storage.warehouse.schema import REVENUE

HORIZON = timedelta(hours=24)
LATENESS = timedelta(minutes=10)
T0 = datetime(2024, 1, 1, 10, 30)


def clicks(
    *rows: tuple[str | None, datetime, int] | tuple[str | None, datetime, int, str],
) -> pl.DataFrame:
    """Click rows ``(event_id, event_time, partition[, platform])``, user U1 on ad 1."""
    return pl.DataFrame(
        {
            "event_id": [r[0] for r in rows],
            "ad_id": [1] * len(rows),
            "user_id": ["U1"] * len(rows),
            "platform": [r[3] if len(r) > 3 else "Web" for r in rows],
            "location": ["Boston"] * len(rows),
            "event_time": [r[1] for r in rows],
            "partition": [r[2] for r in rows],
        },
        schema={
            "event_id": pl.String,
            "ad_id": pl.Int64,
            "user_id": pl.String,
            "platform": pl.String,
            "location": pl.String,
            "event_time": pl.Datetime("us"),
            "partition": pl.Int32,
        },
    )


def dedupe(
    rows: pl.DataFrame,
    state: DedupeState,
    watermarks: dict[int, datetime | None] | None = None,
) -> tuple[list[str], dict[int, int]]:
    """(ids kept, in order; {partition: duplicates}) for one batch of clicks."""
    rows = with_event_ids(rows, Stream.CLICKS)
    rows = flag_late(rows, watermarks or {}, LATENESS)
    kept, dups = drop_duplicates(rows, Stream.CLICKS, state, HORIZON)
    assert "_wm" not in kept.columns
    return kept["event_id"].to_list(), dict(dups.sort("partition").iter_rows())


# -- ids ---------------------------------------------------------------------------------


def test_derived_id_is_a_hash_of_the_canonical_content() -> None:
    # stream | event time in epoch microseconds | ad | user | platform | location
    at = datetime(2024, 1, 1, 10, 0, 0, 500)  # 1_704_103_200_000_500 us since the epoch
    canonical = "clicks|1704103200000500|1|U1|Web|Boston"
    expected = "d:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]
    out = with_event_ids(
        clicks((None, at, 0), ("", at, 0), ("  ", at, 0), ("p-1", at, 0)), Stream.CLICKS
    )
    # missing, empty and blank ids are all derived; the producer's id is kept as it is
    assert out["event_id"].to_list() == [expected, expected, expected, "p-1"]


def test_derived_conversion_id_includes_product_and_revenue_in_its_stored_form() -> None:
    # Revenue is canonicalised as the stored DECIMAL(18,4) text, so 12.5 reads "12.5000":
    # the id stays the same whether the producer wrote 12.5 or 12.50.
    at = datetime(2024, 1, 1, 10, 0, 0, 500)
    rows = pl.DataFrame(
        {
            "event_id": pl.Series([None, None], dtype=pl.String),
            "ad_id": [1, 1],
            "user_id": ["U1", "U1"],
            "product_id": ["P", "P"],
            "revenue": pl.Series([Decimal("12.5"), Decimal("12.51")], dtype=REVENUE),
            "event_time": [at, at],
            "partition": pl.Series([0, 0], dtype=pl.Int32),
        }
    )
    ids = with_event_ids(rows, Stream.CONVERSIONS)["event_id"].to_list()
    assert ids == [
        "d:" + hashlib.sha256(b"conversions|1704103200000500|1|U1|P|12.5000").hexdigest()[:32],
        "d:" + hashlib.sha256(b"conversions|1704103200000500|1|U1|P|12.5100").hexdigest()[:32],
    ]


def test_a_resent_record_without_id_is_a_duplicate_and_a_different_one_is_not() -> None:
    state = DedupeState()
    first, _ = dedupe(clicks((None, T0, 0)), state)
    # the same record again (next batch), and one differing only in its platform
    again = clicks((None, T0, 0), (None, T0, 0, "iOS"))
    kept, dups = dedupe(again, state, {0: T0})
    assert len(first) == 1 and first[0].startswith("d:")
    assert len(kept) == 1 and kept[0] != first[0]
    assert dups == {0: 1}


def test_ids_are_per_stream() -> None:
    # the same producer id on a click and an impression are two different events
    state = DedupeState()
    rows = flag_late(with_event_ids(clicks(("e1", T0, 0)), Stream.CLICKS), {}, LATENESS)
    kept_clicks, _ = drop_duplicates(rows, Stream.CLICKS, state, HORIZON)
    kept_impr, dups = drop_duplicates(rows, Stream.IMPRESSIONS, state, HORIZON)
    assert kept_clicks["event_id"].to_list() == kept_impr["event_id"].to_list() == ["e1"]
    assert dups["duplicates"].to_list() == [0]


# -- within one batch --------------------------------------------------------------------


def test_same_id_twice_in_a_batch_counts_once_and_the_first_arrival_is_kept() -> None:
    state = DedupeState()
    rows = clicks(
        ("a", T0, 0, "Web"),
        ("b", T0, 0),
        ("a", T0 + timedelta(seconds=5), 0, "iOS"),  # same id, different content
        ("a", T0, 1, "Android"),  # same id on another partition: still the same event
        ("c", T0, 1),
    )
    out = flag_late(with_event_ids(rows, Stream.CLICKS), {}, LATENESS)
    kept, dups = drop_duplicates(out, Stream.CLICKS, state, HORIZON)
    assert kept["event_id"].to_list() == ["a", "b", "c"]
    assert kept.filter(pl.col("event_id") == "a")["platform"].to_list() == ["Web"]
    assert dict(dups.sort("partition").iter_rows()) == {0: 1, 1: 1}
    assert len(state) == 3


def test_empty_batch() -> None:
    state = DedupeState()
    kept, dups = dedupe(clicks(), state)
    assert kept == [] and dups == {}


# -- across batches: the horizon ---------------------------------------------------------


def test_an_id_seen_in_an_earlier_batch_within_the_horizon_is_a_duplicate() -> None:
    state = DedupeState()
    assert dedupe(clicks(("a", T0, 0), ("b", T0, 0)), state) == (["a", "b"], {0: 0})
    # a later batch: the watermark is 12 h on; "a" again, and a new "c"
    later = T0 + timedelta(hours=12)
    assert dedupe(clicks(("a", T0, 0), ("c", later, 0)), state, {0: later}) == (
        ["c"],
        {0: 1},
    )


def test_the_horizon_boundary_is_the_event_time_hour() -> None:
    # "a" at 10:30 is kept in its event-time hour, 10:00. It counts as seen while that
    # hour is not older than the hour of (watermark - 24 h):
    #   watermark 2024-01-02 10:59:59.999999 -> cutoff hour 2024-01-01 10:00 -> seen
    #   watermark 2024-01-02 11:00:00        -> cutoff hour 2024-01-01 11:00 -> expired
    inside = datetime(2024, 1, 2, 10, 59, 59, 999_999)
    outside = datetime(2024, 1, 2, 11, 0)
    for watermark, expected in ((inside, ([], {0: 1})), (outside, (["a"], {0: 0}))):
        state = DedupeState()
        dedupe(clicks(("a", T0, 0)), state)
        assert dedupe(clicks(("a", T0, 0)), state, {0: watermark}) == expected


def test_an_expired_id_is_renewed_by_its_new_arrival() -> None:
    # Past the horizon the record counts again, and is then remembered again: a re-send
    # of a re-sent event within the horizon of the watermark is a duplicate.
    state = DedupeState()
    dedupe(clicks(("a", T0, 0)), state)
    much_later = T0 + timedelta(days=3)
    assert dedupe(clicks(("a", much_later, 0)), state, {0: much_later}) == (["a"], {0: 0})
    assert dedupe(clicks(("a", much_later, 0)), state, {0: much_later}) == ([], {0: 1})


def test_the_watermark_moves_within_the_batch_in_arrival_order() -> None:
    # No start watermark. In partition 0 a row two days on arrives first: for the re-sent
    # "a" behind it the cutoff is the hour of (2024-01-03 10:30 - 24 h) = 2024-01-02 10:00,
    # past "a"'s hour, so "a" counts again. In partition 1 the re-sent "a" arrives first,
    # with no watermark yet: every remembered id counts as seen.
    later = T0 + timedelta(days=2)
    state = DedupeState()
    dedupe(clicks(("a", T0, 0), ("a", T0, 1)), state)
    assert dedupe(clicks(("x", later, 0), ("a", T0, 0)), state) == (["x", "a"], {0: 0})
    state = DedupeState()
    dedupe(clicks(("a", T0, 1)), state)
    assert dedupe(clicks(("a", T0, 1), ("x", later, 1)), state) == (["x"], {1: 1})


# -- lateness ----------------------------------------------------------------------------


def test_late_is_behind_the_running_watermark_by_more_than_the_allowed_lateness() -> None:
    # Partition 0 starts at a watermark of 12:00, so the limit is 11:50 (not late at it).
    # Partition 1 has none: its first row is never late and sets the watermark.
    noon = datetime(2024, 1, 1, 12, 0)
    rows = clicks(
        ("at-limit", noon - LATENESS, 0),
        ("behind", noon - LATENESS - timedelta(microseconds=1), 0),
        ("ahead", noon + timedelta(minutes=30), 0),  # the watermark moves to 12:30
        ("now-late", noon + timedelta(minutes=19, seconds=59), 0),  # < 12:20
        ("first", noon - timedelta(hours=5), 1),
        ("p1-late", noon - timedelta(hours=5, minutes=10, seconds=1), 1),
        ("p1-ok", noon - timedelta(hours=5, minutes=10), 1),
    )
    out = flag_late(rows, {0: noon}, LATENESS)
    assert dict(out.select("event_id", "is_late").iter_rows()) == {
        "at-limit": False,
        "behind": True,
        "ahead": False,
        "now-late": True,
        "first": False,
        "p1-late": True,
        "p1-ok": False,
    }
    # the watermark before each row, which drop_duplicates uses for the horizon
    assert out["_wm"].to_list() == [
        noon,
        noon,
        noon,
        noon + timedelta(minutes=30),
        None,
        noon - timedelta(hours=5),
        noon - timedelta(hours=5),
    ]


def test_late_rows_are_kept() -> None:
    state = DedupeState()
    noon = datetime(2024, 1, 1, 12, 0)
    kept, dups = dedupe(clicks(("old", noon - timedelta(hours=1), 0)), state, {0: noon})
    assert (kept, dups) == (["old"], {0: 0})
