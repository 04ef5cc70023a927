"""Enrich step alone: campaign and user dimensions joined as of each event's time (SCD
type 2), unknown keys kept with empty fields and flagged.

Versions are built by hand in the shape of the warehouse's dimension tables; a key's first
version is valid from EPOCH (as the dimension loader writes it), so history joins it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from adpulse.processor.steps.enrich import (
    CAMPAIGN_FIELDS,
    USER_FIELDS,
    DimensionLookup,
    enrich,
    join_dimension,
)
from adpulse.storage.dimensions import EPOCH
from adpulse.storage.warehouse.schema import DIM_CAMPAIGNS, DIM_USERS, conform

CHANGE = datetime(2024, 1, 1, 12, 0)  # when the second versions take effect
JUST_BEFORE = CHANGE - timedelta(microseconds=1)


def campaigns(*rows: tuple[int, datetime, str, str]) -> DimensionLookup:
    """Versions ``(ad_id, valid_from, campaign, product)``."""
    frame = pl.DataFrame(rows, schema=["ad_id", "valid_from", "campaign", "product"], orient="row")
    return DimensionLookup.build(conform(frame, DIM_CAMPAIGNS), "ad_id", CAMPAIGN_FIELDS)


def users(*rows: tuple[str, datetime, int | None, str | None, str | None]) -> DimensionLookup:
    """Versions ``(user_id, valid_from, age, gender, interests)``."""
    frame = pl.DataFrame(
        rows, schema=["user_id", "valid_from", "age", "gender", "interests"], orient="row"
    )
    return DimensionLookup.build(conform(frame, DIM_USERS), "user_id", USER_FIELDS)


def events(*rows: tuple[str, int, str, datetime]) -> pl.DataFrame:
    """Events ``(event_id, ad_id, user_id, event_time)``."""
    return pl.DataFrame(
        rows,
        schema={
            "event_id": pl.String,
            "ad_id": pl.Int64,
            "user_id": pl.String,
            "event_time": pl.Datetime("us"),
        },
        orient="row",
    )


def by_id(rows: pl.DataFrame, *columns: str) -> dict[str, tuple[object, ...]]:
    """{event_id: (columns...)}; the step does not keep the row order (single-version and
    versioned keys are joined separately), so results are compared by event id."""
    return {r[0]: tuple(r[1:]) for r in rows.select("event_id", *columns).iter_rows()}


ADS = campaigns(
    (1, EPOCH, "Spring", "Shoes"),
    (2, EPOCH, "Old", "Hats"),
    (2, CHANGE, "New", "Caps"),
)
USERS = users(
    ("U1", EPOCH, 30, "F", "sports;travel"),
    ("U2", EPOCH, 24, "M", "music"),
    ("U2", CHANGE, 25, "M", "music;film"),
)


def test_an_event_joins_the_version_in_effect_at_its_event_time() -> None:
    rows = events(
        ("at-change", 2, "U2", CHANGE),
        ("just-before", 2, "U2", JUST_BEFORE),
        ("long-before", 2, "U2", datetime(2001, 1, 1)),
        ("later", 2, "U2", CHANGE + timedelta(days=30)),
        ("single", 1, "U1", JUST_BEFORE),
    )
    out = enrich(rows, ADS, USERS)
    assert out.height == 5
    # valid_from is inclusive: an event exactly at it joins the new version
    assert by_id(out, "campaign", "product", "age", "age_band", "interests") == {
        "at-change": ("New", "Caps", 25, "25-34", "music;film"),
        "just-before": ("Old", "Hats", 24, "18-24", "music"),
        "long-before": ("Old", "Hats", 24, "18-24", "music"),
        "later": ("New", "Caps", 25, "25-34", "music;film"),
        "single": ("Spring", "Shoes", 30, "25-34", "sports;travel"),
    }
    assert out.filter(pl.col("_unknown_ad") | pl.col("_unknown_user")).height == 0
    assert "valid_from" not in out.columns


def test_versions_arrive_in_any_order_and_events_too() -> None:
    # Versions listed newest first, events not sorted by time: the as-of join sorts.
    ads = campaigns((2, CHANGE, "New", "Caps"), (2, EPOCH, "Old", "Hats"))
    rows = events(
        ("b", 2, "U9", CHANGE + timedelta(hours=1)),
        ("a", 2, "U9", JUST_BEFORE),
        ("c", 2, "U9", CHANGE),
    )
    out = join_dimension(rows, ads)
    # among the versioned key's rows, the input order is kept
    assert out["event_id"].to_list() == ["b", "a", "c"]
    assert out["campaign"].to_list() == ["New", "Old", "New"]


def test_unknown_ad_or_user_keeps_the_event_with_empty_fields_and_flags_it() -> None:
    # U3 is known but has no age, gender or interests: empty fields, yet not unknown
    people = users(("U1", EPOCH, 30, "F", "sports;travel"), ("U3", EPOCH, None, None, None))
    rows = events(
        ("known-blank", 1, "U3", CHANGE),
        ("unknown-ad", 99, "U1", CHANGE),
        ("unknown-user", 1, "U99", CHANGE),
        ("both", 99, "U99", CHANGE),
        ("known", 2, "U1", CHANGE),
    )
    out = enrich(rows, ADS, people)
    assert by_id(out, "campaign", "product", "gender", "age", "age_band", "interests") == {
        "known-blank": ("Spring", "Shoes", None, None, None, None),
        "unknown-ad": (None, None, "F", 30, "25-34", "sports;travel"),
        "unknown-user": ("Spring", "Shoes", None, None, None, None),
        "both": (None, None, None, None, None, None),
        "known": ("New", "Caps", "F", 30, "25-34", "sports;travel"),
    }
    assert by_id(out, "_unknown_ad", "_unknown_user") == {
        "known-blank": (False, False),
        "unknown-ad": (True, False),
        "unknown-user": (False, True),
        "both": (True, True),
        "known": (False, False),
    }


def test_no_dimensions_loaded_yet() -> None:
    ads = DimensionLookup.empty(
        "ad_id", pl.Int64(), {"campaign": pl.String(), "product": pl.String()}
    )
    people = DimensionLookup.empty(
        "user_id",
        pl.String(),
        {
            "gender": pl.String(),
            "age": pl.Int32(),
            "age_band": pl.String(),
            "interests": pl.String(),
        },
    )
    out = enrich(events(("e", 1, "U1", CHANGE)), ads, people)
    assert out.row(0, named=True) == {
        "event_id": "e",
        "ad_id": 1,
        "user_id": "U1",
        "event_time": CHANGE,
        "campaign": None,
        "product": None,
        "gender": None,
        "age": None,
        "age_band": None,
        "interests": None,
        "_unknown_ad": True,
        "_unknown_user": True,
    }


def test_age_bands_at_their_bounds() -> None:
    # upper bounds are exclusive: 17 -> "<18", 18 -> "18-24", 64 -> "55-64", 65 -> "65+";
    # a missing age has no band
    ages = [17, 18, 64, 65, None]
    people = users(*((f"U{i}", EPOCH, a, "F", "x") for i, a in enumerate(ages)))
    rows = events(*((f"e{i}", 1, f"U{i}", CHANGE) for i in range(len(ages))))
    out = join_dimension(rows, people)
    assert out["age_band"].to_list() == ["<18", "18-24", "55-64", "65+", None]


def test_interests_pass_through_as_the_loaded_semicolon_list() -> None:
    # The loader normalises interests to "a;b" and queries match an item between ';'s;
    # enrich carries the text unchanged (no splitting, no reordering).
    people = users(("U1", EPOCH, 40, "F", "travel;sports;music"))
    out = join_dimension(events(("e", 1, "U1", CHANGE)), people)
    assert out["interests"].to_list() == ["travel;sports;music"]
    assert out["interests"].str.split(";").to_list() == [["travel", "sports", "music"]]
