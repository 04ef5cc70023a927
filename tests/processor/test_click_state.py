"""The click state keeps, of the clicks no conversion to come can be at or before apart
from the last, only that last one per user and ad (ties by event id, as attribution)."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from adpulse.processor.state import CLICK_STATE_COLUMNS, COMPACT_MIN_ROWS, FrameState

T0 = datetime(2023, 9, 9, 10, 0)


def _clicks(rows: list[tuple[str, int, int, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "ad_id": [r[1] for r in rows],
            "event_time": [T0 + timedelta(minutes=r[2]) for r in rows],
            "event_id": [r[3] for r in rows],
            "platform": ["Web"] * len(rows),
            "location": ["Paris"] * len(rows),
            "partition": [0] * len(rows),
        },
        schema_overrides={"ad_id": pl.Int64, "partition": pl.Int32},
    )


def test_settled_clicks_keep_the_last_per_user_and_ad() -> None:
    state = FrameState(CLICK_STATE_COLUMNS)
    filler = [("F", 9, 100 + i % 5, f"f{i:05}") for i in range(COMPACT_MIN_ROWS)]
    state.add(
        _clicks(
            [
                ("U1", 1, 0, "a"),
                ("U1", 1, 10, "c"),
                ("U1", 1, 10, "b"),  # same time as c: c wins (larger id)
                ("U1", 2, 5, "d"),
                ("U2", 1, 1, "e"),
                ("U1", 1, 30, "g"),  # at or after the settled time: kept as they are
                ("U1", 1, 31, "h"),
                *filler,
            ]
        )
    )
    state.keep_last_settled(
        "event_time", T0 + timedelta(minutes=30), ["user_id", "ad_id"], ["event_time", "event_id"]
    )
    frame = state.frame()
    assert frame is not None
    kept = sorted(frame.filter(pl.col("user_id") != "F")["event_id"].to_list())
    assert kept == ["c", "d", "e", "g", "h"]
    assert len(state) == 5 + COMPACT_MIN_ROWS  # the filler is after the settled time
    # Not again until the rows double.
    state.add(_clicks([("U1", 1, 20, "i")]))
    state.keep_last_settled(
        "event_time", T0 + timedelta(minutes=30), ["user_id", "ad_id"], ["event_time", "event_id"]
    )
    assert len(state) == 6 + COMPACT_MIN_ROWS


def test_no_settled_time_keeps_every_click() -> None:
    state = FrameState(CLICK_STATE_COLUMNS)
    state.add(_clicks([("U1", 1, i, f"k{i:05}") for i in range(2 * COMPACT_MIN_ROWS)]))
    state.keep_last_settled("event_time", None, ["user_id", "ad_id"], ["event_time", "event_id"])
    assert len(state) == 2 * COMPACT_MIN_ROWS
