"""The serving-store contract, on every backend (in-process and real Redis) with the same
expected values: readiness, exact round trip, idempotent deltas, re-attribution, expiry
of minutes older than 24 h, and the serving_url setting."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Final

import polars as pl
import pytest
from redistest import REDIS_URL, redis_prefix
from store_rows import T0, conversions, delta, no_reattributions, rollups

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.runtime import UserError, open_store
from adpulse.serving.store import (
    LiveDelta,
    LiveRows,
    MemoryServingStore,
    ServingStore,
    ServingStoreError,
    ServingStoreUnavailableError,
    StoreWindow,
    open_serving_store,
)
from adpulse.serving.store.base import (
    LIVE_CONVERSIONS,
    LIVE_ROLLUPS,
    StoreSnapshot,
    projection_for,
)
from adpulse.serving.store.redis import RedisServingStore
from adpulse.storage.warehouse.schema import CONVERSION_REATTRIBUTIONS


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
    without = store.read(T0, None, conversions=False)  # for views that read none
    assert without is not None and sorted_rollups(without) == sorted_rollups(rows)
    assert without.conversions.height == 0
    assert without.conversions.schema == pl.Schema(LIVE_CONVERSIONS)
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


# --- offsets and the rebuild protocol ----------------------------------------------------
def impressions_of(ad_id: int, batch_id: int, partition: int, offset: str) -> LiveDelta:
    """The delta of batch ``batch_id``: one impression of ``ad_id`` at T0, read from
    ``partition`` of the impressions stream up to ``offset``."""
    row = rollups((T0, ad_id, "Fall", "Web", "Miami", 1, 0, 0, 0, "0"))
    return LiveDelta(
        LiveRows(row, conversions()),
        no_reattributions(),
        batch_id=batch_id,
        partition=partition,
        offsets={(Stream.IMPRESSIONS, partition): offset},
    )


def impressions_by_ad(store: ServingStore) -> dict[int, int]:
    rows = store.read(T0, None)
    assert rows is not None
    return {ad: n for ad, n in rows.rollups.select("ad_id", "impressions").rows()}


def test_offsets_are_recorded_with_each_delta_and_come_from_a_rebuild(
    store: ServingStore,
) -> None:
    assert store.offsets() is None  # not ready
    store.rebuild(
        lambda: StoreSnapshot(
            LiveRows.empty(),
            StoreWindow(T0, None),
            offsets={(Stream.IMPRESSIONS, 0): "0-5", (Stream.CLICKS, 0): "0-2"},
        )
    )
    assert store.offsets() == {(Stream.IMPRESSIONS, 0): "0-5", (Stream.CLICKS, 0): "0-2"}
    assert store.apply("w:1", impressions_of(1, 1, 0, "0-9")) is True
    assert store.apply("w:2", impressions_of(1, 2, 1, "1-4")) is True
    assert store.offsets() == {
        (Stream.IMPRESSIONS, 0): "0-9",
        (Stream.IMPRESSIONS, 1): "1-4",
        (Stream.CLICKS, 0): "0-2",
    }
    no_rows = LiveDelta(
        LiveRows(rollups(), conversions()),
        no_reattributions(),
        batch_id=3,
        partition=1,
        offsets={(Stream.IMPRESSIONS, 1): "1-7"},
    )
    assert not no_rows.is_empty  # offsets alone are worth a write
    assert store.apply("w:3", no_rows) is True
    assert store.offsets() == {
        (Stream.IMPRESSIONS, 0): "0-9",
        (Stream.IMPRESSIONS, 1): "1-7",
        (Stream.CLICKS, 0): "0-2",
    }
    assert impressions_by_ad(store) == {1: 2}


def test_a_rebuild_neither_loses_nor_doubles_deltas_written_meanwhile(
    store: ServingStore,
) -> None:
    store.replace(LiveRows.empty(), StoreWindow(T0 - timedelta(hours=1), None))

    def read() -> StoreSnapshot:
        # other workers write while the rebuild reads the warehouse:
        # batch 5 (partition 0) was committed before the snapshot: the snapshot holds it
        assert store.apply("w0:5", impressions_of(1, 5, 0, "0-5")) is True
        # batch 6 (partition 1) is committed after the snapshot: only its delta has it
        assert store.apply("w1:6", impressions_of(2, 6, 1, "1-6")) is True
        assert impressions_by_ad(store) == {1: 1, 2: 1}  # readers see the old content
        with pytest.raises(ServingStoreError, match="rebuild"):
            store.replace(LiveRows.empty(), StoreWindow(T0, None))  # one at a time
        held = rollups(
            (T0, 1, "Fall", "Web", "Miami", 1, 0, 0, 0, "0"),  # batch 5
            (T0, 4, "Fall", "Web", "Miami", 1, 0, 0, 0, "0"),  # batch 3 (partition 2)
        )
        return StoreSnapshot(
            LiveRows(held, conversions()),
            StoreWindow(T0 - timedelta(hours=1), T0),
            offsets={
                (Stream.IMPRESSIONS, 0): "0-5",
                (Stream.IMPRESSIONS, 1): "1-5",
                (Stream.IMPRESSIONS, 2): "2-3",
            },
            batches={0: 5, 1: 5, 2: 3},
        )

    store.rebuild(read)
    # batch 5 once (snapshot, its journaled delta skipped), batch 6 replayed, batch 3 held
    assert impressions_by_ad(store) == {1: 1, 2: 1, 4: 1}
    # batch 3's delta arrives after the switch (its writer was slow): the snapshot has it
    assert store.apply("w2:3", impressions_of(4, 3, 2, "2-3")) is True
    assert impressions_by_ad(store) == {1: 1, 2: 1, 4: 1}
    # a batch committed after the snapshot is added
    assert store.apply("w0:8", impressions_of(1, 8, 0, "0-8")) is True
    assert impressions_by_ad(store) == {1: 2, 2: 1, 4: 1}
    assert store.offsets() == {
        (Stream.IMPRESSIONS, 0): "0-8",
        (Stream.IMPRESSIONS, 1): "1-6",
        (Stream.IMPRESSIONS, 2): "2-3",
    }
    assert store.window() == StoreWindow(T0 - timedelta(hours=1), T0)


def test_deltas_written_during_the_first_rebuild_are_kept(store: ServingStore) -> None:
    def read() -> StoreSnapshot:
        # the store is not ready yet, but a rebuild runs: the delta is journaled
        assert store.apply("w1:2", impressions_of(2, 2, 1, "1-2")) is True
        return StoreSnapshot(
            LiveRows(rollups((T0, 1, "Fall", "Web", "Miami", 1, 0, 0, 0, "0")), conversions()),
            StoreWindow(T0, T0),
            offsets={(Stream.IMPRESSIONS, 0): "0-1"},
            batches={0: 1},
        )

    store.rebuild(read)
    assert impressions_by_ad(store) == {1: 1, 2: 1}
    assert store.offsets() == {(Stream.IMPRESSIONS, 0): "0-1", (Stream.IMPRESSIONS, 1): "1-2"}


def test_a_failed_rebuild_stops_journaling_and_keeps_the_content(store: ServingStore) -> None:
    store.replace(LiveRows.empty(), StoreWindow(T0, None))
    assert store.apply("w:1", impressions_of(1, 1, 0, "0-1")) is True

    def read() -> StoreSnapshot:
        raise RuntimeError("warehouse down")

    with pytest.raises(RuntimeError, match="warehouse down"):
        store.rebuild(read)
    assert store.apply("w:2", impressions_of(1, 2, 0, "0-2")) is True
    assert impressions_by_ad(store) == {1: 2}
    store.replace(LiveRows.empty(), StoreWindow(T0, None))  # the next rebuild may run
    assert impressions_by_ad(store) == {}


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
    wrong = Settings(home=tmp_path, serving_url="dynamo://table")
    with pytest.raises(UserError, match=r"unsupported serving_url 'dynamo://table'"):
        open_store(wrong, live=True)
    down = Settings(home=tmp_path, serving_url="redis://:s3cret@127.0.0.1:1/0")
    with pytest.raises(UserError, match="serving_url") as info:
        open_store(down, live=True)
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


def test_redis_keeps_no_journal_once_a_rebuild_ends() -> None:
    with redis_prefix() as prefix, RedisServingStore(REDIS_URL, prefix=prefix) as store:
        store.replace(LiveRows.empty(), StoreWindow(T0, None))

        def failing() -> StoreSnapshot:
            store.apply("w:1", impressions_of(1, 1, 0, "0-1"))
            raise RuntimeError("warehouse down")

        with pytest.raises(RuntimeError):
            store.rebuild(failing)

        def read() -> StoreSnapshot:
            store.apply("w:2", impressions_of(1, 2, 0, "0-2"))
            return StoreSnapshot(LiveRows.empty(), StoreWindow(T0, None))

        store.rebuild(read)
        keys = set(store.client.scan_iter(match=f"{store.base}:*"))
        assert not any(k.endswith(":journal") for k in keys)
        assert f"{store.base}:next" not in keys and f"{store.base}:lock" not in keys
        generation = store.client.hget(f"{store.base}:meta", "gen")
        generations = {k.split(":")[2] for k in keys if k.split(":")[2].isdigit()}
        assert generations == {generation}  # the old and the failed one are deleted
        assert impressions_by_ad(store) == {1: 1}  # batch 2, replayed from the journal


def test_the_in_process_store_sums_many_deltas_exactly_in_few_parts() -> None:
    from adpulse.serving.store import memory

    store = MemoryServingStore()
    store.replace(LiveRows.empty(), StoreWindow(T0, None))
    expected: dict[tuple[datetime, int], int] = {}
    for i in range(1, 1001):
        minute = T0 + timedelta(minutes=i % 90)
        batch = rollups(
            (minute, 1, "Fall", "Web", "Miami", i, 0, 0, 0, "0"),
            (T0, 2, "Fall", "Web", "Miami", 1, 0, 0, 0, "0"),  # one key in every delta
        )
        assert store.apply(f"run:{i}", delta(batch)) is True
        for key, n in (((minute, 1), i), ((T0, 2), 1)):
            expected[key] = expected.get(key, 0) + n
        # merged: the newest 32 parts and the older ones at most twice their size
        assert store.parts() <= memory.MAX_PARTS + 8
    rows = store.read(T0, None)
    assert rows is not None
    assert {(r[0], r[1]): r[5] for r in rows.rollups.rows()} == expected
    assert expected[(T0, 2)] == 1000
    assert expected[(T0, 1)] == sum(range(90, 1001, 90))


def test_moving_the_window_copies_only_frames_with_expired_rows() -> None:
    from adpulse.serving.store.memory import rows_since

    frame = rollups(
        (T0, 1, "Fall", "Web", "Miami", 1, 0, 0, 0, "0"),
        (T0 + timedelta(minutes=5), 1, "Fall", "Web", "Miami", 2, 0, 0, 0, "0"),
    )
    assert rows_since(frame, "minute", T0) is frame  # nothing to drop: the same frame
    assert rows_since(frame.clear(), "minute", T0).height == 0
    kept = rows_since(frame, "minute", T0 + timedelta(minutes=1))
    assert kept.rows() == frame.rows()[1:]


def test_the_in_process_store_keeps_its_own_text_not_the_batches() -> None:
    store = MemoryServingStore()
    store.replace(LiveRows.empty(), StoreWindow(T0, None))
    many = pl.DataFrame(
        [(f"conv-{i:030d}", *CONVERSION[1:]) for i in range(50_000)],
        schema=LIVE_CONVERSIONS,
        orient="row",
    )
    kept = many.head(2)  # a view: it holds the text of all 50,000
    assert store.apply("run:1", delta(rollups(), kept)) is True
    rows = store.read(T0, None)
    assert rows is not None and rows.conversions["event_id"].to_list() == [
        f"conv-{i:030d}" for i in range(2)
    ]
    held = rows.conversions.to_arrow(compat_level=pl.CompatLevel.newest())["event_id"]
    assert sum(b.size for c in held.chunks for b in c.buffers() if b is not None) < 1_000


# --- the in-process store's projections -------------------------------------------------
#: (ad, campaign) of the projection tests: 4 ads, 2 campaigns; each ad on 2 platforms in
#: 2 locations, so 16 full keys a minute, 1/2/2/2/4 for the smaller projections.
ADS: Final = ((1, "Fall"), (2, "Fall"), (3, "Spring"), (4, "Spring"))
KEYS: Final = tuple(
    (ad, campaign, platform, location)
    for ad, campaign in ADS
    for platform in ("Web", "Mobile")
    for location in ("Miami", "Boston")
)
NONE: Final = frozenset[str]()
CAMPAIGN, PLATFORM, LOCATION = (frozenset({c}) for c in ("campaign", "platform", "location"))
AD: Final = frozenset({"ad_id", "campaign"})
FULL: Final = frozenset({"ad_id", "campaign", "platform", "location"})


def minute_rows(minute: datetime) -> pl.DataFrame:
    """Every key's rollup row of ``minute``: impressions = ad id, 1 click, revenue 0.5."""
    return rollups(*((minute, *key, key[0], 1, 0, 0, "0.5") for key in KEYS))


def test_the_in_process_store_keeps_24_h_per_projection_and_the_full_key_for_its_window() -> None:
    """Fed 26 hours a minute at a time, a store whose full key covers 30 minutes holds
    24 h (and at most EXPIRE_SLACK of it more) of each small projection, and no more
    full-key rows after 26 hours than after 1; a 24 h read by platform is answered (by
    the platform projection: the full key no longer holds those minutes), a read needing
    two key columns from before the full key's window is not (the warehouse answers)."""
    from adpulse.serving.store import memory

    store = MemoryServingStore(timedelta(minutes=30))
    store.replace(LiveRows.empty(), StoreWindow(T0, None))
    full_rows = []
    for i in range(26 * 60):
        minute = T0 + timedelta(minutes=i)
        assert store.apply(f"run:{i}", delta(minute_rows(minute))) is True
        # 30 minutes and the newest, and 1 expired minute not yet dropped (slack 1.875)
        assert store.rows_held()[FULL] <= 32 * len(KEYS)
        if i % 60 == 59:
            full_rows.append(store.rows_held()[FULL])
    assert memory.EXPIRE_SLACK == 1 / 16
    assert full_rows == [32 * len(KEYS)] * 26  # flat: bounded by its window
    newest = T0 + timedelta(minutes=26 * 60 - 1)
    start = newest - timedelta(hours=24)
    assert store.window() == StoreWindow(start, newest)
    assert store.full_key_start() == newest - timedelta(minutes=30)
    # the small projections' expired rows are dropped once they span 90 minutes: the
    # last drop was at minute 1530 (start T0 + 90), so minutes [T0 + 90, newest] are held
    held = 26 * 60 - 90
    assert store.rows_held() == rows_per_projection(held, full=32 * len(KEYS))
    by_platform = store.read(start, None, PLATFORM, conversions=False)
    assert by_platform is not None
    day = [start + timedelta(minutes=m) for m in range(24 * 60 + 1)]
    assert sorted(
        by_platform.rollups.select(
            "minute", "platform", "ad_id", "campaign", "location", "impressions", "clicks"
        ).rows()
    ) == sorted((m, p, None, None, None, 20, 8) for m in day for p in ("Web", "Mobile"))
    assert by_platform.rollups["revenue"].sum() == Decimal("4.0") * 2 * len(day)
    by_ad = store.read(start, None, frozenset({"ad_id"}))
    assert by_ad is not None
    assert sorted(by_ad.rollups.group_by("ad_id").agg(pl.col("impressions").sum()).rows()) == [
        (ad, ad * 4 * len(day)) for ad, _ in ADS
    ]
    assert store.read(start, None, frozenset({"campaign", "platform"})) is None
    assert store.read(start, None) is None  # the full key
    window = store.read(newest - timedelta(minutes=30), None, frozenset({"campaign", "platform"}))
    assert window is not None
    assert sorted(
        window.rollups.select("minute", "campaign", "platform", "impressions").rows()
    ) == (
        sorted(
            (newest - timedelta(minutes=m), c, p, 6 if c == "Fall" else 14)
            for m in range(31)
            for c in ("Fall", "Spring")
            for p in ("Web", "Mobile")
        )
    )
    assert store.read(newest - timedelta(minutes=31), None, FULL) is None


def rows_per_projection(minutes: int, full: int) -> dict[frozenset[str], int]:
    """Rows held per projection for ``minutes`` minutes of :func:`minute_rows` (the
    values of :data:`KEYS`), and ``full`` at the full key."""
    return {
        NONE: minutes,
        CAMPAIGN: 2 * minutes,
        PLATFORM: 2 * minutes,
        LOCATION: 2 * minutes,
        AD: 4 * minutes,
        FULL: full,
    }


def test_a_read_takes_the_smallest_projection_holding_its_columns() -> None:
    assert [projection_for(frozenset(c)) for c in ((), ("platform",), ("ad_id",))] == [
        NONE,
        PLATFORM,
        AD,
    ]
    assert projection_for(frozenset({"campaign", "location"})) == FULL
    assert projection_for(frozenset({"ad_id", "campaign"})) == AD
    assert projection_for(FULL) == FULL
    assert projection_for(frozenset({"gender"})) == FULL  # no key column


def test_a_rebuild_fills_every_projection_from_the_full_key_snapshot() -> None:
    """The snapshot's full-key rows of 5 hours fill every projection; the full key keeps
    its last hour; a delta applied while the snapshot is read (journaled, not in the
    snapshot) is in every projection after the switch."""
    store = MemoryServingStore(timedelta(hours=1))
    minutes = [T0 + timedelta(minutes=m) for m in range(5 * 60)]
    snapshot = pl.concat(minute_rows(m) for m in minutes)
    newest = minutes[-1]
    late = newest + timedelta(minutes=1)

    def read() -> StoreSnapshot:
        assert store.apply("w:1", delta(minute_rows(late))) is True  # journaled
        return StoreSnapshot(LiveRows(snapshot, conversions()), StoreWindow(T0, newest))

    store.replace(LiveRows.empty(), StoreWindow(T0, None))
    store.rebuild(read)
    assert store.window() == StoreWindow(T0, late)
    assert store.full_key_start() == late - timedelta(hours=1)
    held = 5 * 60 + 1
    # full key: the snapshot's last hour and the newest minute, one expired one not yet
    # dropped
    assert store.rows_held() == rows_per_projection(held, full=62 * len(KEYS))
    totals = store.read(T0, None, NONE)
    assert totals is not None
    assert totals.rollups.select("impressions", "clicks").sum().row(0) == (
        40 * held,
        16 * held,
    )
    by_campaign = store.read(T0, None, CAMPAIGN)
    assert by_campaign is not None
    assert sorted(
        by_campaign.rollups.group_by("campaign").agg(pl.col("impressions").sum()).rows()
    ) == [("Fall", 12 * held), ("Spring", 28 * held)]
    assert store.read(T0, None, FULL) is None
    full = store.read(late - timedelta(hours=1), None, FULL)
    assert full is not None and full.rollups.height == 61 * len(KEYS)
    assert sorted(full.rollups.rows(), key=repr) == sorted(
        pl.concat(minute_rows(late - timedelta(minutes=m)) for m in range(61)).rows(), key=repr
    )


def test_the_in_process_store_full_key_window_comes_from_the_setting(tmp_path: Path) -> None:
    ten = open_serving_store(Settings(home=tmp_path, serving_memory_window_seconds=600))
    assert isinstance(ten, MemoryServingStore)
    assert ten.full_key_window == timedelta(minutes=10)
    default = open_serving_store(Settings(home=tmp_path))
    assert isinstance(default, MemoryServingStore)
    assert default.full_key_window == timedelta(hours=2)
    assert MemoryServingStore().full_key_window == timedelta(hours=24)  # the contract's
    with pytest.raises(ValueError, match="a minute or more"):
        MemoryServingStore(timedelta(seconds=59))
