"""Revenue sums in the serving stores stay exact beyond what a double (Lua's numbers, in
Redis) holds exactly, and beyond DECIMAL(18,4) (issue 8, item 1); on every backend."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import polars as pl
from redistest import REDIS_URL, redis_prefix
from store_rows import T0, delta, rollups

from adpulse.serving.store import LiveRows, ServingStore, StoreWindow
from adpulse.serving.store.base import LIVE_CONVERSIONS
from adpulse.serving.store.redis import RedisServingStore
from adpulse.storage.warehouse.schema import REVENUE_SUM


def _revenue(serving: ServingStore) -> list[Decimal]:
    rows = serving.read(T0, None)
    assert rows is not None
    assert rows.rollups.schema["revenue"] == REVENUE_SUM
    return rows.rollups.sort("minute")["revenue"].to_list()


def test_revenue_sums_are_exact_beyond_doubles_and_decimal_18_4(
    store: ServingStore,
) -> None:
    # 6000000000000001 + 6000000000000002 ten-thousandths = 12000000000000003: odd and
    # above 2**53, so a double (one integer of ten-thousandths, in Lua) would round it.
    store.replace(
        LiveRows(
            rollups((T0, 1, "C", "Web", "X", 0, 0, 1, 1, "600000000000.0001")),
            pl.DataFrame(schema=LIVE_CONVERSIONS),
        ),
        StoreWindow(T0 - timedelta(hours=1), T0),
    )
    assert store.apply(
        "b:1", delta(rollups((T0, 1, "C", "Web", "X", 0, 0, 1, 1, "600000000000.0002")))
    )
    assert _revenue(store) == [Decimal("1200000000000.0003")]
    # a retraction crossing zero, and sums far beyond DECIMAL(18,4)
    assert store.apply(
        "b:2", delta(rollups((T0, 1, "C", "Web", "X", 0, 0, -1, -1, "-1200000000000.0004")))
    )
    assert _revenue(store) == [Decimal("-0.0001")]
    big = "99999999999999999.9999"
    for i in range(3):
        assert store.apply(f"c:{i}", delta(rollups((T0, 2, "D", "Web", "X", 0, 0, 1, 1, big))))
    rows = store.read(T0, None, frozenset())  # per-minute totals: both keys summed
    assert rows is not None
    assert rows.rollups["revenue"].to_list() == [Decimal(big) * 3 - Decimal("0.0001")]


def test_a_redis_value_of_the_earlier_layout_reads_and_adds() -> None:
    # Before, a rollup value held one revenue integer (ten-thousandths): five numbers.
    with redis_prefix() as prefix, RedisServingStore(REDIS_URL, prefix=prefix) as redis_store:
        redis_store.replace(
            LiveRows(
                rollups((T0, 1, "C", "Web", "X", 1, 0, 0, 0, "0")),
                pl.DataFrame(schema=LIVE_CONVERSIONS),
            ),
            StoreWindow(T0 - timedelta(hours=1), T0),
        )
        client = redis_store.client
        base = f"{prefix}:serving"
        generation = client.hget(f"{base}:meta", "gen")
        minute = int((T0 - datetime(1970, 1, 1)).total_seconds())
        keys = list(client.scan_iter(match=f"{base}:{generation}:m*:{minute}"))
        assert keys
        for key in keys:
            for field in client.hkeys(key):
                client.hset(key, field, "1,0,1,1,123456")  # 12.3456
        assert _revenue(redis_store) == [Decimal("12.3456")]
        assert redis_store.apply(
            "b:1", delta(rollups((T0, 1, "C", "Web", "X", 0, 0, 1, 1, "0.0001")))
        )
        assert _revenue(redis_store) == [Decimal("12.3457")]
