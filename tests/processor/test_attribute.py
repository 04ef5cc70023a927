"""Attribute step alone: each conversion to the last click by the same user on the same ad
at or before it, within the lookback; and re-attribution when a later click arrives late.

Clicks live in a :class:`FrameState` across batches, as in the processor; conversions are
built by hand with the columns enrich hands on.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import polars as pl

from adpulse.processor.state import CLICK_STATE_COLUMNS, OPEN_CONVERSION_COLUMNS, FrameState
from adpulse.processor.steps.attribute import attribute_conversions, reattribute
from adpulse.storage.warehouse.schema import REVENUE

LOOKBACK = timedelta(days=7)
CONV = datetime(2024, 1, 8, 10, 30)  # the conversions' time unless a test says otherwise

CLICK_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "ad_id": pl.Int64(),
    "event_time": pl.Datetime("us"),
    "event_id": pl.String(),
    "platform": pl.String(),
    "location": pl.String(),
    "partition": pl.Int32(),
}


def clicks(*rows: tuple[str, str, int, datetime]) -> pl.DataFrame:
    """Clicks ``(event_id, user_id, ad_id, event_time)``; platform and location name the
    click (``<id>-platform``) so a test sees which click a conversion took them from."""
    return pl.DataFrame(
        [(u, a, t, e, f"{e}-platform", f"{e}-location", 0) for e, u, a, t in rows],
        schema=CLICK_SCHEMA,
        orient="row",
    )


def click_state(*batches: pl.DataFrame) -> FrameState:
    state = FrameState(CLICK_STATE_COLUMNS)
    for batch in batches:
        state.add(batch)
    return state


def conversions(*rows: tuple[str, str, int, datetime]) -> pl.DataFrame:
    """Conversions ``(event_id, user_id, ad_id, event_time)``, revenue 10, enriched."""
    n = len(rows)
    return pl.DataFrame(
        {
            "event_id": [r[0] for r in rows],
            "user_id": [r[1] for r in rows],
            "ad_id": [r[2] for r in rows],
            "event_time": [r[3] for r in rows],
            "revenue": pl.Series([Decimal("10")] * n, dtype=REVENUE),
            "campaign": ["Spring"] * n,
            "gender": ["F"] * n,
            "age_band": ["25-34"] * n,
            "interests": ["sports"] * n,
            "partition": pl.Series([0] * n, dtype=pl.Int32),
        },
        schema_overrides={"ad_id": pl.Int64, "event_time": pl.Datetime("us")},
    )


def attribution(rows: pl.DataFrame) -> dict[str, tuple[object, ...]]:
    """{conversion id: (click id, click time, latency s, platform, location)}."""
    cols = ("click_event_id", "click_time", "latency_seconds", "platform", "location")
    return {r[0]: tuple(r[1:]) for r in rows.select("event_id", *cols).iter_rows()}


def attributed_to(
    click_id: str, click_time: datetime, conv_time: datetime = CONV
) -> tuple[object, ...]:
    latency = (conv_time - click_time).total_seconds()
    return (click_id, click_time, latency, f"{click_id}-platform", f"{click_id}-location")


UNATTRIBUTED = (None, None, None, None, None)


# -- on arrival --------------------------------------------------------------------------


def test_the_last_click_by_the_same_user_on_the_same_ad_at_or_before_the_conversion() -> None:
    state = click_state(
        clicks(
            ("first", "U1", 1, CONV - timedelta(minutes=30)),
            ("last", "U1", 1, CONV - timedelta(minutes=10)),
            ("after", "U1", 1, CONV + timedelta(seconds=1)),  # after the conversion
            ("other-user", "U2", 1, CONV - timedelta(minutes=5)),
            ("other-ad", "U1", 2, CONV - timedelta(minutes=1)),
        )
    )
    out = attribute_conversions(conversions(("v", "U1", 1, CONV)), state, LOOKBACK)
    # latency = 10:30 - 10:20 = 600 s
    assert attribution(out) == {
        "v": ("last", CONV - timedelta(minutes=10), 600.0, "last-platform", "last-location")
    }
    # the conversion's own columns pass through
    assert out.select("event_id", "revenue", "campaign", "partition").row(0) == (
        "v",
        Decimal("10.0000"),
        "Spring",
        0,
    )


def test_a_click_at_the_conversion_time_counts_with_zero_latency() -> None:
    state = click_state(clicks(("same", "U1", 1, CONV)))
    out = attribute_conversions(conversions(("v", "U1", 1, CONV)), state, LOOKBACK)
    assert attribution(out) == {"v": attributed_to("same", CONV)}
    assert out["latency_seconds"].to_list() == [0.0]


def test_lookback_boundary() -> None:
    # U1's click is exactly 7 days before: in. U2's is 7 days and 1 s before: out.
    # U3's is 7 days and 1 us before: out (the bound is exact to the microsecond).
    state = click_state(
        clicks(
            ("edge", "U1", 1, CONV - LOOKBACK),
            ("beyond", "U2", 1, CONV - LOOKBACK - timedelta(seconds=1)),
            ("just-beyond", "U3", 1, CONV - LOOKBACK - timedelta(microseconds=1)),
        )
    )
    rows = conversions(("v1", "U1", 1, CONV), ("v2", "U2", 1, CONV), ("v3", "U3", 1, CONV))
    out = attribute_conversions(rows, state, LOOKBACK)
    assert attribution(out) == {
        "v1": attributed_to("edge", CONV - LOOKBACK),  # 7 * 86400 = 604800 s
        "v2": UNATTRIBUTED,
        "v3": UNATTRIBUTED,
    }
    assert out["latency_seconds"].to_list()[0] == 604_800.0


def test_latency_keeps_microseconds() -> None:
    # 10:30:00 - 10:29:59.250000 = 0.75 s
    at = CONV - timedelta(microseconds=750_000)
    state = click_state(clicks(("c", "U1", 1, at)))
    out = attribute_conversions(conversions(("v", "U1", 1, CONV)), state, LOOKBACK)
    assert out["latency_seconds"].to_list() == [0.75]


def test_a_conversion_with_no_click_is_unattributed_and_kept() -> None:
    rows = conversions(("v1", "U1", 1, CONV), ("v2", "U2", 1, CONV))
    # no clicks at all (empty state), then clicks only for someone else
    for state in (click_state(), click_state(clicks(("c", "U2", 1, CONV)))):
        out = attribute_conversions(rows, state, LOOKBACK)
        assert out["event_id"].to_list() == ["v1", "v2"]
        assert attribution(out)["v1"] == UNATTRIBUTED
    assert attribution(out)["v2"] == attributed_to("c", CONV)


def test_ties_at_the_same_time_go_to_the_larger_click_id_whatever_the_arrival_order() -> None:
    at = CONV - timedelta(minutes=1)
    for order in (("c-a", "c-b"), ("c-b", "c-a")):
        state = click_state(*(clicks((e, "U1", 1, at)) for e in order))
        out = attribute_conversions(conversions(("v", "U1", 1, CONV)), state, LOOKBACK)
        assert attribution(out) == {"v": attributed_to("c-b", at)}


def test_clicks_from_earlier_batches_are_in_state_until_they_expire() -> None:
    earlier = clicks(("old", "U1", 1, CONV - timedelta(days=2)))
    state = click_state(earlier, clicks(("new", "U1", 2, CONV - timedelta(minutes=1))))
    rows = conversions(("v", "U1", 1, CONV))
    assert attribution(attribute_conversions(rows, state, LOOKBACK)) == {
        "v": attributed_to("old", CONV - timedelta(days=2))
    }
    # once the partition's cutoff passes the click, it is gone from state
    state.expire("event_time", {0: CONV - timedelta(days=1)})
    assert len(state) == 1
    assert attribution(attribute_conversions(rows, state, LOOKBACK)) == {"v": UNATTRIBUTED}


def test_several_conversions_of_one_user_each_take_their_own_last_click() -> None:
    t = CONV
    state = click_state(
        clicks(
            ("c1", "U1", 1, t - timedelta(hours=2)),
            ("c2", "U1", 1, t - timedelta(hours=1)),
        )
    )
    rows = conversions(
        ("v-late", "U1", 1, t),
        ("v-between", "U1", 1, t - timedelta(minutes=90)),
        ("v-before-all", "U1", 1, t - timedelta(hours=3)),
    )
    out = attribute_conversions(rows, state, LOOKBACK)
    assert out["event_id"].to_list() == ["v-late", "v-between", "v-before-all"]
    assert attribution(out) == {
        "v-late": attributed_to("c2", t - timedelta(hours=1)),  # 3600 s
        "v-between": attributed_to("c1", t - timedelta(hours=2), t - timedelta(minutes=90)),
        "v-before-all": UNATTRIBUTED,
    }


# -- late clicks: re-attribution of open conversions -------------------------------------


def opened(state: FrameState, rows: pl.DataFrame) -> FrameState:
    """Open conversions as the processor keeps them: attributed on arrival against ``state``."""
    open_conversions = FrameState(OPEN_CONVERSION_COLUMNS)
    open_conversions.add(attribute_conversions(rows, state, LOOKBACK))
    return open_conversions


def test_a_late_click_that_beats_the_current_one_reattributes() -> None:
    early = CONV - timedelta(minutes=30)
    open_conversions = opened(
        click_state(clicks(("early", "U1", 1, early))),
        conversions(("v", "U1", 1, CONV), ("w", "U2", 1, CONV)),
    )
    late = CONV - timedelta(minutes=5)
    old, new = reattribute(clicks(("late", "U1", 1, late)), open_conversions, LOOKBACK)
    assert attribution(old) == {"v": attributed_to("early", early)}  # 1800 s
    assert attribution(new) == {"v": attributed_to("late", late)}  # 300 s
    assert old.columns == new.columns == list(OPEN_CONVERSION_COLUMNS)
    # the open conversions now hold the new attribution; "w" is untouched
    kept = open_conversions.frame()
    assert kept is not None
    assert attribution(kept) == {"w": UNATTRIBUTED, "v": attributed_to("late", late)}


def test_a_late_click_gives_an_unattributed_conversion_its_click() -> None:
    open_conversions = opened(click_state(), conversions(("v", "U1", 1, CONV)))
    at = CONV - timedelta(days=1)
    old, new = reattribute(clicks(("c", "U1", 1, at)), open_conversions, LOOKBACK)
    assert attribution(old) == {"v": UNATTRIBUTED}
    assert attribution(new) == {"v": attributed_to("c", at)}  # 86400 s


def test_late_clicks_that_do_not_beat_the_current_one_change_nothing() -> None:
    current = CONV - timedelta(minutes=10)
    open_conversions = opened(
        click_state(clicks(("c-m", "U1", 1, current))), conversions(("v", "U1", 1, CONV))
    )
    before = open_conversions.frame()
    late = clicks(
        ("c-earlier", "U1", 1, current - timedelta(seconds=1)),
        ("c-a", "U1", 1, current),  # same time, smaller id than "c-m"
        ("c-after", "U1", 1, CONV + timedelta(microseconds=1)),  # after the conversion
        ("c-other-ad", "U1", 2, CONV),
        ("c-other-user", "U2", 1, CONV),
    )
    old, new = reattribute(late, open_conversions, LOOKBACK)
    assert old.height == new.height == 0
    after = open_conversions.frame()
    assert before is not None and after is not None and after.equals(before)


def test_a_late_click_at_the_same_time_with_a_larger_id_wins() -> None:
    # the same tie rule as on arrival, so the result does not depend on arrival order
    at = CONV - timedelta(minutes=10)
    open_conversions = opened(
        click_state(clicks(("c-a", "U1", 1, at))), conversions(("v", "U1", 1, CONV))
    )
    old, new = reattribute(clicks(("c-b", "U1", 1, at)), open_conversions, LOOKBACK)
    assert attribution(old) == {"v": attributed_to("c-a", at)}
    assert attribution(new) == {"v": attributed_to("c-b", at)}


def test_a_late_click_beyond_the_lookback_does_not_attribute() -> None:
    open_conversions = opened(click_state(), conversions(("v", "U1", 1, CONV)))
    too_old = clicks(("c", "U1", 1, CONV - LOOKBACK - timedelta(seconds=1)))
    old, new = reattribute(too_old, open_conversions, LOOKBACK)
    assert old.height == new.height == 0
    at_edge = clicks(("c", "U1", 1, CONV - LOOKBACK))
    old, new = reattribute(at_edge, open_conversions, LOOKBACK)
    assert attribution(new) == {"v": attributed_to("c", CONV - LOOKBACK)}


def test_no_open_conversions_or_no_clicks() -> None:
    empty = FrameState(OPEN_CONVERSION_COLUMNS)
    old, new = reattribute(clicks(("c", "U1", 1, CONV)), empty, LOOKBACK)
    assert old.height == new.height == 0
    open_conversions = opened(click_state(), conversions(("v", "U1", 1, CONV)))
    old, new = reattribute(clicks(), open_conversions, LOOKBACK)
    assert old.height == new.height == 0
