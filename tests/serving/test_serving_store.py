"""The serving-store contract, on every backend (in-process and real Redis) with the same
expected values: readiness, exact round trip, idempotent deltas, re-attribution, expiry
of minutes older than 24 h, and the serving_url setting."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from redistest import REDIS_URL, redis_prefix

from adpulse.cli.runtime import UserError, with_serving_store
from adpulse.config import Settings
from adpulse.serving.store import (
    LiveDelta,
    LiveRows,
    MemoryServingStore,
    ServingStore,
    ServingStoreUnavailableError,
    StoreWindow,
    open_serving_store,
)
from adpulse.serving.store.base import LIVE_CONVERSIONS, LIVE_ROLLUPS
from adpulse.serving.store.redis import RedisServingStore
from adpulse.storage.warehouse.schema import CONVERSION_REATTRIBUTIONS

T0 = datetime(2023, 9, 1, 12, 0)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[ServingStore]:
    if request.param == "memory":
        yield MemoryServingStore()
        return
    with redis_prefix() as prefix, RedisServingStore(REDIS_URL, prefix=prefix) as redis_store:
        yield redis_store


def rollups(*rows: tuple[object, ...]) -> pl.DataFrame:
    """Rows of (minute, ad_id, campaign, platform, location, impressions, clicks,
    conversions, attributed, revenue text)."""
    return pl.DataFrame(
        [(*r[:9], Decimal(str(r[9])), 0.0) for r in rows],
        schema=LIVE_ROLLUPS,
        orient="row",
    )


def conversions(*rows: tuple[object, ...]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=LIVE_CONVERSIONS, orient="row")


def no_reattributions() -> pl.DataFrame:
    return pl.DataFrame(schema=CONVERSION_REATTRIBUTIONS)


def delta(r: pl.DataFrame, c: pl.DataFrame | None = None) -> LiveDelta:
    c = conversions() if c is None else c
    return LiveDelta(LiveRows(r, c), no_reattributions())


def sorted_rollups(rows: LiveRows) -> list[tuple[object, ...]]:
    return sorted(rows.rollups.rows(), key=repr)


BASE = rollups(
    (T0, 1, "Back-to-School", "Mobile", "Boston", 10, 2, 1, 1, "19.9900"),
    (T0, None, None, "Web", "Miami", 3, 0, 0, 0, "0"),
    (T0 + timedelta(minutes=1), 1, "Back-to-School", "Mobile", "Boston", 5, 1, 0, 0, "0"),
)
CONVERSION = (
    "conv-1",
    T0 + timedelta(seconds=42, microseconds=123_456),
    1,
    "Back-to-School",
    "Mobile",
    "Boston",
    T0 + timedelta(seconds=1, microseconds=7),
    41.123449,
)


def test_a_store_serves_nothing_before_its_first_rebuild(store: ServingStore) -> None:
    assert store.window() is None
    assert store.read(T0, None) is None
    assert store.apply("run:1", delta(BASE)) is None  # nothing applied: a rebuild is due
    store.replace(LiveRows.empty(), StoreWindow(datetime(1970, 1, 1), None))
    assert store.window() == StoreWindow(datetime(1970, 1, 1), None)
    empty = store.read(T0, None)
    assert empty is not None and empty.rollups.height == 0 and empty.conversions.height == 0


def test_rows_round_trip_exactly_and_reads_are_bounded_by_range_and_window(
    store: ServingStore,
) -> None:
    start = T0 - timedelta(hours=1)
    store.replace(LiveRows(BASE, conversions(CONVERSION)), StoreWindow(start, T0))
    assert store.window() == StoreWindow(start, T0)
    rows = store.read(T0, None)
    assert rows is not None
    assert rows.rollups.schema == pl.Schema(LIVE_ROLLUPS)
    assert rows.conversions.schema == pl.Schema(LIVE_CONVERSIONS)
    assert sorted_rollups(rows) == sorted(BASE.rows(), key=repr)
    assert rows.conversions.rows() == [CONVERSION]  # microseconds and the float exact
    only_first = store.read(T0, T0 + timedelta(minutes=1))
    assert only_first is not None
    assert sorted_rollups(only_first) == sorted(BASE.rows()[:2], key=repr)
    later = store.read(T0 + timedelta(minutes=1), None)
    assert later is not None and later.conversions.height == 0
    assert store.read(start - timedelta(minutes=1), None) is None  # before the window


def test_a_replayed_batch_changes_nothing(store: ServingStore) -> None:
    store.replace(LiveRows.empty(), StoreWindow(T0 - timedelta(hours=1), None))
    batch = delta(BASE, conversions(CONVERSION))
    assert store.apply("run-a:7", batch) is True
    assert store.apply("run-a:7", batch) is False  # the same batch again
    assert store.apply("run-b:7", delta(BASE[:1])) is True  # same id, another run
    rows = store.read(T0, None)
    assert rows is not None
    summed = rows.rollups.sort("minute", "platform").select(
        "minute", "platform", "impressions", "clicks", "revenue"
    )
    assert summed.rows() == [
        (T0, "Mobile", 20, 4, Decimal("39.9800")),
        (T0, "Web", 3, 0, Decimal("0.0000")),
        (T0 + timedelta(minutes=1), "Mobile", 5, 1, Decimal("0.0000")),
    ]
    assert rows.conversions.height == 1
    assert store.window() == StoreWindow(T0 - timedelta(hours=1), T0 + timedelta(minutes=1))


def test_negative_rows_and_reattributions_update_what_is_held(store: ServingStore) -> None:
    store.replace(LiveRows(BASE, conversions(CONVERSION)), StoreWindow(T0, T0))
    retract = rollups(
        (T0, 1, "Back-to-School", "Mobile", "Boston", 0, 0, -1, -1, "-19.99"),
        (T0, 1, "Back-to-School", "Web", "Denver", 0, 0, 1, 1, "19.99"),
    )
    moved = pl.DataFrame(
        [("conv-1", "click-9", T0 + timedelta(seconds=30), 12.5, "Web", "Denver")],
        schema=CONVERSION_REATTRIBUTIONS,
        orient="row",
    )
    assert store.apply("run:2", LiveDelta(LiveRows(retract, conversions()), moved)) is True
    rows = store.read(T0, None)
    assert rows is not None
    by_key = {(r[3], r[4]): r[5:10] for r in rows.rollups.filter(pl.col("minute") == T0).rows()}
    assert by_key[("Mobile", "Boston")] == (10, 2, 0, 0, Decimal("0.0000"))
    assert by_key[("Web", "Denver")] == (0, 0, 1, 1, Decimal("19.9900"))
    assert rows.conversions.rows() == [
        (
            "conv-1",
            CONVERSION[1],
            1,
            "Back-to-School",
            "Web",
            "Denver",
            T0 + timedelta(seconds=30),
            12.5,
        )
    ]


def test_minutes_older_than_24_hours_expire(store: ServingStore) -> None:
    store.replace(LiveRows(BASE, conversions(CONVERSION)), StoreWindow(T0, T0))
    next_day = T0 + timedelta(hours=24, minutes=1)
    late_and_new = rollups(
        (T0 - timedelta(minutes=5), 2, "Fall", "Web", "Miami", 1, 0, 0, 0, "0"),  # too old
        (next_day, 2, "Fall", "Web", "Miami", 7, 0, 0, 0, "0"),
    )
    assert store.apply("run:3", delta(late_and_new)) is True
    # the newest minute is next_day: minutes before next_day - 24 h = T0 + 1 min are gone
    assert store.window() == StoreWindow(T0 + timedelta(minutes=1), next_day)
    assert store.read(T0, None) is None
    rows = store.read(T0 + timedelta(minutes=1), None)
    assert rows is not None
    assert sorted((r[0], r[1], r[5]) for r in rows.rollups.rows()) == [
        (T0 + timedelta(minutes=1), 1, 5),
        (next_day, 2, 7),
    ]
    assert rows.conversions.height == 0  # its minute expired


def test_a_rebuild_replaces_everything_at_once(store: ServingStore) -> None:
    store.replace(LiveRows(BASE, conversions(CONVERSION)), StoreWindow(T0, T0))
    store.apply("run:4", delta(BASE))
    fresh = rollups((T0, 3, "Fall", "Tablet", "Austin", 1, 1, 1, 0, "5.5"))
    store.replace(LiveRows(fresh, conversions()), StoreWindow(T0 - timedelta(hours=2), T0))
    rows = store.read(T0 - timedelta(hours=2), None)
    assert rows is not None
    assert rows.rollups.rows() == fresh.rows()
    assert rows.conversions.height == 0
    assert store.apply("run:4", delta(BASE)) is False  # batch keys survive a rebuild


# --- the serving_url setting ------------------------------------------------------------
def test_serving_url_opens_the_named_store(tmp_path: Path) -> None:
    assert isinstance(open_serving_store(Settings(home=tmp_path)), MemoryServingStore)
    memory = Settings(home=tmp_path, serving_url="memory://")
    assert isinstance(open_serving_store(memory), MemoryServingStore)
    with redis_prefix() as prefix:
        redis_settings = Settings(home=tmp_path, serving_url=f"{REDIS_URL}?prefix={prefix}")
        with open_serving_store(redis_settings) as opened:
            assert isinstance(opened, RedisServingStore)
            assert opened.base == f"{prefix}:serving"


def test_a_wrong_serving_url_is_one_clear_error_naming_the_setting(tmp_path: Path) -> None:
    from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

    with DuckDBWarehouse(tmp_path / "w.duckdb") as warehouse:
        wrong = Settings(home=tmp_path, serving_url="dynamo://table")
        with pytest.raises(UserError, match=r"unsupported serving_url 'dynamo://table'"):
            with_serving_store(wrong, warehouse, live=True)
        down = Settings(home=tmp_path, serving_url="redis://:s3cret@127.0.0.1:1/0")
        with pytest.raises(UserError, match="serving_url") as info:
            with_serving_store(down, warehouse, live=True)
        assert "s3cret" not in str(info.value)
        assert "***" in str(info.value)
    with pytest.raises(ServingStoreUnavailableError):
        open_serving_store(down)


def test_config_show_masks_a_password_in_serving_url(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, serving_url="redis://:s3cret@cache:6379/0?prefix=ap")
    assert settings.masked()["serving_url"] == "redis://:***@cache:6379/0?prefix=ap"


def test_reads_sum_over_the_key_columns_a_view_does_not_need(store: ServingStore) -> None:
    store.replace(LiveRows(BASE, conversions()), StoreWindow(T0, T0))
    store.apply("run:5", delta(rollups((T0, 2, "Fall", "Mobile", "Miami", 4, 1, 0, 0, "1.5"))))

    def read(*columns: str) -> list[tuple[object, ...]]:
        rows = store.read(T0, None, frozenset(columns))
        assert rows is not None
        return sorted(rows.rollups.drop("latency_sum_seconds").rows(), key=repr)

    one, two = T0, T0 + timedelta(minutes=1)
    assert read() == [
        (one, None, None, None, None, 17, 3, 1, 1, Decimal("21.4900")),
        (two, None, None, None, None, 5, 1, 0, 0, Decimal("0.0000")),
    ]
    assert read("platform") == sorted(
        [
            (one, None, None, "Mobile", None, 14, 3, 1, 1, Decimal("21.4900")),
            (one, None, None, "Web", None, 3, 0, 0, 0, Decimal("0.0000")),
            (two, None, None, "Mobile", None, 5, 1, 0, 0, Decimal("0.0000")),
        ],
        key=repr,
    )
    by_ad = read("ad_id")  # other key columns may be kept or summed over
    assert sorted((r[0], r[1], r[5]) for r in by_ad if r[1] is not None) == [
        (one, 1, 10),
        (one, 2, 4),
        (two, 1, 5),
    ]
    assert [r[5] for r in by_ad if r[1] is None] == [3]


def test_a_large_batch_goes_to_redis_in_parts_and_still_applies_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import adpulse.serving.store.redis as redis_module

    monkeypatch.setattr(redis_module, "APPLY_ROWS", 4)  # 3 rows x 6 projections: 5 parts
    with redis_prefix() as prefix, RedisServingStore(REDIS_URL, prefix=prefix) as store:
        store.replace(LiveRows.empty(), StoreWindow(T0, None))
        batch = delta(BASE, conversions(CONVERSION))
        assert store.apply("run:9", batch) is True
        assert store.apply("run:9", batch) is False
        rows = store.read(T0, None)
        assert rows is not None
        assert sorted_rollups(rows) == sorted(BASE.rows(), key=repr)
        assert rows.conversions.rows() == [CONVERSION]
