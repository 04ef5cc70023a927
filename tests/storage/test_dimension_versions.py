"""SCD type 2: the pure diff and its application by the warehouse."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from builders import fresh_warehouse

from adpulse.storage.dimensions import DIMENSIONS, EPOCH, parse_dimension_csv, scd2_changes
from adpulse.storage.warehouse import schema
from adpulse.storage.warehouse.base import DimensionKind, DimensionLoadResult, Warehouse

CAMPAIGNS = (
    "ad_id, campaign, product, target_start_date, target_end_date\n"
    "1001, Back-to-School, Laptop, 2023-08-01, 2023-10-31\n"
    "1002, Summer Sale, Smartphone, 2023-07-15, 2023-09-15\n"
    "1003, Fall Fashion, Jacket, 2023-09-01, 2023-11-30\n"
)
USERS = (
    "user_id, age, gender, interests\n"
    "U1234, 22, Male, Music;Travel\n"
    "U5678, 30, Female, Reading;Photography\n"
)
T1 = datetime(2023, 9, 10)
T2 = datetime(2023, 9, 20)
LOADED = datetime(2023, 9, 10, 12, 0)


def rows(text: str) -> pl.DataFrame:
    return parse_dimension_csv(text)[1]


def campaigns(*lines: str) -> pl.DataFrame:
    return rows("ad_id, campaign, product, target_start_date, target_end_date\n" + "\n".join(lines))


@pytest.fixture(params=["duckdb", "postgres", "redshift"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    with fresh_warehouse(request.param, tmp_path / "w.duckdb") as wh:
        yield wh


def versions(wh: Warehouse, kind: DimensionKind = "campaigns") -> list[tuple[object, ...]]:
    """(key, first attribute, valid_from, valid_to, version) of every stored version."""
    spec = DIMENSIONS[kind]
    columns = [spec.key, spec.attributes[0], "valid_from", "valid_to", "version"]
    return wh.dimension(kind).select(columns).rows()


# --- the pure diff -----------------------------------------------------------------------
def test_new_keys_get_version_one_from_epoch() -> None:
    to_close, to_insert = scd2_changes(
        schema.empty(schema.DIM_CAMPAIGNS), rows(CAMPAIGNS), "campaigns", T1, LOADED
    )
    assert to_close.is_empty() and to_close.columns == ["ad_id"]
    assert to_insert.schema == pl.Schema(schema.DIM_CAMPAIGNS)
    scd = (EPOCH, None, 1, LOADED)
    assert to_insert.rows() == [
        (1001, "Back-to-School", "Laptop", date(2023, 8, 1), date(2023, 10, 31), *scd),
        (1002, "Summer Sale", "Smartphone", date(2023, 7, 15), date(2023, 9, 15), *scd),
        (1003, "Fall Fashion", "Jacket", date(2023, 9, 1), date(2023, 11, 30), *scd),
    ]
    assert datetime(1970, 1, 1) == EPOCH


def test_identical_rows_change_nothing() -> None:
    _, current = scd2_changes(pl.DataFrame(), rows(CAMPAIGNS), "campaigns", T1, LOADED)
    to_close, to_insert = scd2_changes(current, rows(CAMPAIGNS), "campaigns", T2, LOADED)
    assert to_close.is_empty() and to_insert.is_empty()


def test_a_changed_attribute_closes_and_versions_the_key() -> None:
    _, current = scd2_changes(pl.DataFrame(), rows(CAMPAIGNS), "campaigns", T1, LOADED)
    changed = campaigns(
        "1001, Back-to-School, Laptop, 2023-08-01, 2023-10-31",
        "1002, Summer Sale, Smartphone, 2023-07-15, ",  # end date removed: NULL is a change
        "1004, Winter, Coat, 2023-12-01, 2024-01-31",
    )
    to_close, to_insert = scd2_changes(current, changed, "campaigns", T2, LOADED)
    assert to_close.rows() == [(1002,)]
    assert to_insert.rows() == [
        (1004, "Winter", "Coat", date(2023, 12, 1), date(2024, 1, 31), EPOCH, None, 1, LOADED),
        (1002, "Summer Sale", "Smartphone", date(2023, 7, 15), None, T2, None, 2, LOADED),
    ]


def test_only_current_versions_are_compared() -> None:
    history = schema.conform(
        pl.DataFrame(
            {
                "user_id": ["U1", "U1"],
                "age": [20, 21],
                "gender": ["Male", "Male"],
                "interests": ["Music", "Music"],
                "valid_from": [EPOCH, T1],
                "valid_to": [T1, None],
                "version": [1, 2],
            }
        ),
        schema.DIM_USERS,
    )
    # Age 20 equals the closed version 1, not the current version 2: a change.
    to_close, to_insert = scd2_changes(
        history, rows("user_id, age, gender, interests\nU1, 20, Male, Music\n"), "users", T2, LOADED
    )
    assert to_close.rows() == [("U1",)]
    assert to_insert.select("user_id", "age", "valid_from", "version").rows() == [("U1", 20, T2, 3)]


def test_duplicate_and_null_keys_are_refused() -> None:
    duplicated = pl.DataFrame(
        {"user_id": ["U1", "U2", "U1"], "age": [1, 2, 3], "gender": None, "interests": None}
    )
    with pytest.raises(ValueError, match="users: duplicate user_id in one load: 'U1'"):
        scd2_changes(pl.DataFrame(), duplicated, "users", T1, LOADED)
    nulls = pl.DataFrame(
        {"user_id": ["U1", None], "age": [1, 2], "gender": None, "interests": None}
    )
    with pytest.raises(ValueError, match="users: 1 rows have no user_id"):
        scd2_changes(pl.DataFrame(), nulls, "users", T1, LOADED)
    with pytest.raises(ValueError, match=r"users rows lack columns \['interests'\]"):
        scd2_changes(pl.DataFrame(), nulls.drop("interests"), "users", T1, LOADED)


def test_a_change_must_take_effect_after_the_version_it_replaces() -> None:
    _, current = scd2_changes(pl.DataFrame(), rows(CAMPAIGNS), "campaigns", T1, LOADED)
    current = current.with_columns(pl.lit(T2).alias("valid_from"))
    renamed = campaigns("1001, Renamed, Laptop, 2023-08-01, 2023-10-31")
    with pytest.raises(ValueError, match="effective_from 2023-09-20 00:00:00 is not after"):
        scd2_changes(current, renamed, "campaigns", T2, LOADED)


def test_aware_times_are_stored_as_naive_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    _, current = scd2_changes(pl.DataFrame(), rows(USERS), "users", T1, LOADED)
    _, to_insert = scd2_changes(
        current,
        rows("user_id, age, gender, interests\nU1234, 23, Male, Music;Travel\n"),
        "users",
        datetime(2023, 9, 20, 2, 0, tzinfo=plus_two),
        datetime(2023, 9, 20, 12, 0, tzinfo=UTC),
    )
    assert to_insert.select("valid_from", "loaded_at").rows() == [(T2, datetime(2023, 9, 20, 12))]


# --- applied by the warehouse ----------------------------------------------------------------
def test_initial_load_and_identical_reload(warehouse: Warehouse) -> None:
    assert warehouse.dimension_revision() == 0
    result = warehouse.load_dimension("campaigns", rows(CAMPAIGNS), T1)
    assert result == DimensionLoadResult(
        "campaigns", rows=3, new_keys=3, changed_keys=0, unchanged_keys=0
    )
    assert warehouse.dimension_revision() == 1
    assert versions(warehouse) == [
        (1001, "Back-to-School", EPOCH, None, 1),
        (1002, "Summer Sale", EPOCH, None, 1),
        (1003, "Fall Fashion", EPOCH, None, 1),
    ]
    again = warehouse.load_dimension("campaigns", rows(CAMPAIGNS), T2)
    assert again == DimensionLoadResult(
        "campaigns", rows=3, new_keys=0, changed_keys=0, unchanged_keys=3
    )
    assert warehouse.dimension_revision() == 1  # nothing changed
    assert len(versions(warehouse)) == 3
    stored = warehouse.dimension("campaigns")
    assert stored.schema == pl.Schema(schema.DIM_CAMPAIGNS)
    assert stored["target_end_date"].to_list() == [
        date(2023, 10, 31),
        date(2023, 9, 15),
        date(2023, 11, 30),
    ]


def test_changed_campaign_name_makes_two_versions(warehouse: Warehouse) -> None:
    warehouse.load_dimension("campaigns", rows(CAMPAIGNS), T1)
    renamed = CAMPAIGNS.replace("Summer Sale", "Summer Sale 2")
    result = warehouse.load_dimension("campaigns", rows(renamed), T2)
    assert result == DimensionLoadResult(
        "campaigns", rows=3, new_keys=0, changed_keys=1, unchanged_keys=2
    )
    assert versions(warehouse) == [
        (1001, "Back-to-School", EPOCH, None, 1),
        (1002, "Summer Sale", EPOCH, T2, 1),
        (1002, "Summer Sale 2", T2, None, 2),
        (1003, "Fall Fashion", EPOCH, None, 1),
    ]
    assert warehouse.dimension_revision() == 2
    # The version in effect at an event time, as the processor joins it:
    in_effect = warehouse.query(
        "SELECT campaign FROM dim_campaigns WHERE ad_id = ? AND valid_from <= ?"
        " AND (valid_to IS NULL OR ? < valid_to)",
        [1002, T2 - timedelta(seconds=1), T2 - timedelta(seconds=1)],
    )
    assert in_effect.item() == "Summer Sale"


def test_partial_files_leave_other_keys_alone(warehouse: Warehouse) -> None:
    warehouse.load_dimension("campaigns", rows(CAMPAIGNS), T1)
    partial = campaigns(
        "1003, Fall Fashion, Coat, 2023-09-01, 2023-11-30",
        "1004, Winter, Coat, 2023-12-01, 2024-01-31",
    )
    result = warehouse.load_dimension("campaigns", partial, T2)
    assert result == DimensionLoadResult(
        "campaigns", rows=2, new_keys=1, changed_keys=1, unchanged_keys=0
    )
    assert warehouse.dimension("campaigns").select(
        "ad_id", "product", "valid_from", "valid_to", "version"
    ).rows() == [
        (1001, "Laptop", EPOCH, None, 1),
        (1002, "Smartphone", EPOCH, None, 1),
        (1003, "Jacket", EPOCH, T2, 1),
        (1003, "Coat", T2, None, 2),
        (1004, "Coat", EPOCH, None, 1),  # new keys join history too
    ]
    third = T2 + timedelta(days=1)
    warehouse.load_dimension(
        "campaigns", campaigns("1003, Fall Fashion, Scarf, 2023-09-01, 2023-11-30"), third
    )
    assert versions(warehouse)[2:5] == [
        (1003, "Fall Fashion", EPOCH, T2, 1),
        (1003, "Fall Fashion", T2, third, 2),
        (1003, "Fall Fashion", third, None, 3),
    ]


def test_users_load(warehouse: Warehouse) -> None:
    warehouse.load_dimension("users", rows(USERS), T1)
    warehouse.load_dimension("users", rows(USERS.replace("Music;Travel", "Music")), T2)
    assert versions(warehouse, "users") == [
        ("U1234", 22, EPOCH, T2, 1),
        ("U1234", 22, T2, None, 2),
        ("U5678", 30, EPOCH, None, 1),
    ]
    assert (
        warehouse.dimension("users").filter(pl.col("version") == 2)["interests"].item() == "Music"
    )
    assert warehouse.dimension_revision() == 2


def test_a_failed_load_changes_nothing(warehouse: Warehouse) -> None:
    warehouse.load_dimension("campaigns", rows(CAMPAIGNS), T2)
    before = warehouse.dimension("campaigns")
    with pytest.raises(ValueError, match="is not after"):
        warehouse.load_dimension("campaigns", rows(CAMPAIGNS.replace("Laptop", "Tablet")), EPOCH)
    assert warehouse.dimension("campaigns").equals(before)
    assert warehouse.dimension_revision() == 1
