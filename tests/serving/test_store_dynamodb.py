"""What only the DynamoDB serving store has (its contract runs in test_serving_store.py):
the serving_url form, the table created with its key schema and TTL, throttling retried
with backoff, an unreachable service refused at once, and the item design's numbers."""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import orjson
import polars as pl
import pytest
from awstest import REGION
from botocore.awsrequest import AWSResponse
from dynamotest import TEST_SHARDS, dynamodb_table, open_store
from store_rows import T0, conversions, delta, rollups

from adpulse.config import Settings
from adpulse.runtime import UserError
from adpulse.runtime import open_store as open_runtime_store
from adpulse.serving.store import (
    LiveDelta,
    LiveRows,
    ServingStoreError,
    ServingStoreUnavailableError,
    StoreWindow,
    open_serving_store,
)
from adpulse.serving.store.base import PROJECTIONS, StoreSnapshot
from adpulse.serving.store.dynamodb import (
    HOUR_SHARDS,
    DynamoDBServingStore,
    apply_cost,
    item_size,
    partition_writes,
)
from adpulse.serving.store.dynamodb.items import Rows
from adpulse.storage.warehouse.schema import CONVERSION_REATTRIBUTIONS


@pytest.fixture
def url() -> Iterator[str]:
    with dynamodb_table() as table_url:
        yield table_url


def table_of(url: str) -> str:
    return url.removeprefix("dynamodb://").split("?")[0]


def endpoint_of(url: str) -> str:
    return url.split("endpoint_url=")[1].split("&")[0]


def test_serving_url_opens_a_dynamodb_store_creating_its_table_with_ttl(
    url: str, tmp_path: Path
) -> None:
    with open_serving_store(Settings(home=tmp_path, serving_url=url)) as store:
        assert isinstance(store, DynamoDBServingStore)
        assert store.window() is None  # a new table: not ready until rebuilt
        assert store.shards == TEST_SHARDS  # &shards=2
    without = url.replace(f"&shards={TEST_SHARDS}", "")
    with open_serving_store(Settings(home=tmp_path, serving_url=without)) as default:
        assert isinstance(default, DynamoDBServingStore)
        assert default.shards == HOUR_SHARDS == 4
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint_of(url))
    table = client.describe_table(TableName=table_of(url))["Table"]
    assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {
        "pk": "HASH",
        "sk": "RANGE",
    }
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = client.describe_time_to_live(TableName=table_of(url))["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires")
    with open_store(url) as again:  # an existing table is used as it is
        again.replace(LiveRows.empty(), StoreWindow(T0, None))
    with open_store(url) as third:
        assert third.window() == StoreWindow(T0, None)


def test_a_table_of_another_key_schema_is_refused(url: str) -> None:
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint_of(url))
    client.create_table(
        TableName=table_of(url),
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(ServingStoreUnavailableError, match="key schema .* name a table of its own"):
        open_store(url)


def test_wrong_dynamodb_urls_are_one_clear_error(tmp_path: Path) -> None:
    bad = Settings(home=tmp_path, serving_url="dynamodb://tbl?region=eu-central-1&colour=red")
    with pytest.raises(UserError, match=r"serving_url .*unknown parameter\(s\) colour"):
        open_runtime_store(bad, live=True)
    short = Settings(home=tmp_path, serving_url="dynamodb://x")  # table names: 3+ characters
    with pytest.raises(UserError, match="the part after dynamodb:// does not fit"):
        open_runtime_store(short, live=True)


def test_an_unreachable_service_is_refused_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t"}.items():
        monkeypatch.setenv(name, value)
    down = Settings(
        home=tmp_path,
        serving_url="dynamodb://serving?region=eu-central-1&endpoint_url=http://127.0.0.1:1",
        infra_timeout_seconds=1.0,
    )
    with pytest.raises(ServingStoreUnavailableError, match="serving_url .*start it or fix"):
        open_serving_store(down)


class Throttle:
    """Answers the first ``times`` requests of ``operation`` as DynamoDB does when a
    table's capacity is exceeded (the request never reaches the server)."""

    def __init__(self, operation: str, times: int) -> None:
        self.operation = operation
        self.times = times
        self.refused = 0

    def __call__(self, request: Any, **_: Any) -> AWSResponse | None:
        if self.refused >= self.times:
            return None
        self.refused += 1
        body = orjson.dumps(
            {
                "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                "message": "The level of configured provisioned throughput was exceeded",
            }
        )
        return AWSResponse(request.url, 400, {}, _Body(body))


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


def test_throttled_writes_are_retried_with_backoff_and_apply_once(url: str) -> None:
    with open_store(url) as store:
        store.replace(LiveRows.empty(), StoreWindow(T0 - timedelta(hours=1), None))
        throttle = Throttle("UpdateItem", times=5)
        store.client.meta.events.register("before-send.dynamodb.UpdateItem", throttle)
        row = rollups((T0, 1, "Fall", "Web", "Miami", 3, 1, 0, 0, "2.5"))
        assert store.apply("w:1", delta(row)) is True
        assert throttle.refused == 5
        rows = store.read(T0, None)
        assert rows is not None
        assert rows.rollups.select("impressions", "clicks", "revenue").rows() == [
            (3, 1, Decimal("2.5000"))
        ]
        # throttled on every try: the write fails with what to do, and nothing is doubled
        always = Throttle("PutItem", times=10_000)
        store.client.meta.events.register("before-send.dynamodb.PutItem", always)
        with pytest.raises(ServingStoreError, match="still throttled after 8 tries.*on-demand"):
            store.apply("w:2", delta(row))
        assert always.refused == 8
        store.client.meta.events.unregister("before-send.dynamodb.PutItem", always)
        assert store.apply("w:1", delta(row)) is False  # the replay still changes nothing


def test_items_hold_exact_numbers_and_the_cost_model_counts_them(url: str) -> None:
    with open_store(url) as store:
        store.replace(LiveRows.empty(), StoreWindow(T0 - timedelta(hours=1), None))
        row = rollups((T0, 1, "Fall", "Web", "Miami", 3, 1, 1, 1, "12345678901234567890.1234"))
        conversion = (
            "conv-1",
            T0 + timedelta(seconds=3, microseconds=1),
            1,
            "Fall",
            "Web",
            "Miami",
            T0,
            3.000001,
        )
        batch = delta(row, conversions(conversion))
        assert store.apply("w:1", batch) is True
        client = store.client
        items = client.scan(TableName=store.table)["Items"]
        revenue = {i["rv"]["N"] for i in items if "rv" in i}
        assert revenue == {"12345678901234567890.1234"}  # a decimal Number, every projection
        (stored,) = [i for i in items if i["pk"]["S"].startswith("g1#c#")]
        t0_micros = int((T0 - datetime(1970, 1, 1)).total_seconds()) * 1_000_000
        assert stored["t"]["N"] == str(t0_micros + 3_000_001)  # microseconds, exact
        assert stored["s"]["N"] == "3.000001"
        rollup_items = [i for i in items if "#r" in i["pk"]["S"]]
        assert len(rollup_items) == 6  # one per projection
        assert all("expires" in i for i in rollup_items + [stored])
        cost = apply_cost(batch)
        # meta read; claim; 6 rollup updates; conversion + index puts (one batch call);
        # offsets/version update and the window update (meta of about 2 KB: 2 WCU each)
        assert (cost.requests, cost.read_units, cost.write_units) == (11, 1, 1 + 6 + 2 + 4)
        assert max(item_size(i) for i in rollup_items) < 1_024  # one write unit each


# --- hours sharded over partition keys ---------------------------------------------------
HOUR = int((T0 - datetime(1970, 1, 1)).total_seconds())  # T0 is on the hour
CITIES = [f"City {i:02d}" for i in range(40)]
#: 40 full keys in one minute of T0's hour, and the same keys a minute later.
MANY = rollups(
    *(
        (T0 + timedelta(minutes=m), 7, "Fall", "Web", city, 1 + i, i % 3, 0, 0, f"{i}.25")
        for m in (0, 1)
        for i, city in enumerate(CITIES)
    )
)
CONVERTED = conversions(
    *(
        (f"conv-{i}", T0 + timedelta(seconds=i), 7, "Fall", "Web", CITIES[i], T0, float(i))
        for i in range(12)
    )
)


def keys_of(store: DynamoDBServingStore) -> list[tuple[str, str]]:
    """Every (pk, sk) of the store's table."""
    kwargs: dict[str, Any] = {"TableName": store.table}
    keys = []
    while True:
        page = store.client.scan(**kwargs)
        keys += [(i["pk"]["S"], i["sk"]["S"]) for i in page["Items"]]
        if "LastEvaluatedKey" not in page:
            return sorted(keys)
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def expected_shard(sk: str, shards: int) -> int:
    """The shard the design names: CRC-32 of the sort key's UTF-8 bytes, modulo shards."""
    return zlib.crc32(sk.encode()) % shards


def every_read(store: DynamoDBServingStore) -> list[object]:
    """Each projection's rollups (sorted) and the conversions (sorted) from T0 on."""
    answers: list[object] = []
    for columns in PROJECTIONS:
        rows = store.read(T0, None, columns)
        assert rows is not None
        answers.append(sorted(rows.rollups.rows(), key=repr))
    rows = store.read(T0, None)
    assert rows is not None
    answers.append(sorted(rows.conversions.rows(), key=repr))
    return answers


def test_an_hours_items_spread_over_its_shards_and_read_as_unsharded() -> None:
    with (
        dynamodb_table(shards=4) as url,
        dynamodb_table(shards=1) as plain_url,
        open_store(url) as store,
        open_store(plain_url) as plain,
    ):
        window = StoreWindow(T0 - timedelta(hours=1), None)
        store.replace(LiveRows.empty(), window)
        plain.replace(LiveRows.empty(), window)
        for s in (store, plain):
            assert s.apply("w:1", delta(MANY, CONVERTED)) is True
            assert s.apply("w:2", delta(MANY.head(40))) is True  # the same items again
            assert s.apply("w:1", delta(MANY)) is False
        keys = keys_of(store)
        full = [(pk, sk) for pk, sk in keys if pk.startswith(f"g1#r5#{HOUR}")]
        assert len(full) == 80  # 40 keys x 2 minutes, each one item however often added
        for pk, sk in full:
            assert pk == f"g1#r5#{HOUR}#{expected_shard(sk, 4)}"
        per_shard = Counter(pk for pk, _ in full)
        assert sorted(per_shard) == [f"g1#r5#{HOUR}#{s}" for s in range(4)]
        assert sum(per_shard.values()) == 80 and min(per_shard.values()) >= 10
        held = [(pk, sk) for pk, sk in keys if pk.startswith(f"g1#c#{HOUR}")]
        assert len(held) == 12
        assert all(pk == f"g1#c#{HOUR}#{expected_shard(sk, 4)}" for pk, sk in held)
        assert len({pk for pk, _ in held}) > 1
        # one shard: the keys of before sharding, no suffix
        plain_keys = {pk for pk, _ in keys_of(plain) if pk.startswith("g1#r") or "#c#" in pk}
        assert plain_keys == {f"g1#r{p}#{HOUR}" for p in range(6)} | {f"g1#c#{HOUR}"}
        # the same answers; the full key added twice in minute T0 holds both batches
        assert every_read(store) == every_read(plain)
        rows = store.read(T0, T0 + timedelta(minutes=1))
        assert rows is not None
        by_city = {r[4]: (r[5], r[9]) for r in rows.rollups.rows()}
        assert by_city["City 03"] == (8, Decimal("6.5000"))  # (1 + 3) x 2, 3.25 x 2
        assert len(by_city) == 40
        # a re-attribution finds its conversion on its shard
        moved = pl.DataFrame(
            [("conv-5", "click-9", T0 + timedelta(seconds=2), 3.5, "Tablet", "Denver")],
            schema=CONVERSION_REATTRIBUTIONS,
            orient="row",
        )
        for s in (store, plain):
            assert s.apply("w:3", LiveDelta(LiveRows(rollups(), conversions()), moved))
        assert every_read(store) == every_read(plain)
        after = store.read(T0, None)
        assert after is not None
        (five,) = [r for r in after.conversions.rows() if r[0] == "conv-5"]
        assert five[4:] == ("Tablet", "Denver", T0 + timedelta(seconds=2), 3.5)


def test_a_window_move_deletes_every_shard_of_the_hours_it_leaves() -> None:
    with dynamodb_table(shards=3) as url, open_store(url) as store:
        store.replace(LiveRows(MANY, CONVERTED), StoreWindow(T0, T0))
        held = keys_of(store)
        whole = delta(MANY, CONVERTED)
        full = Rows.of(whole.rows, whole.reattributions)
        assert sorted(k for k in held if k[0].startswith("g1#r")) == sorted(
            (f"g1#r{p}#{HOUR}#{expected_shard(sk, 3)}", sk) for _, p, sk, _ in full.rollups
        )
        assert {pk for pk, _ in held if pk.startswith("g1#r5#")} == {
            f"g1#r5#{HOUR}#{s}" for s in range(3)
        }
        assert len([pk for pk, _ in held if pk.startswith("g1#i#")]) == 12
        later = T0 + timedelta(hours=25)
        new = delta(rollups((later, 7, "Fall", "Web", "Miami", 1, 0, 0, 0, "0")))
        assert store.apply("w:1", new) is True
        hour = HOUR + 25 * 3_600
        rows = Rows.of(new.rows, new.reattributions)
        # only the new minute's items are left (one per projection, on its shard): every
        # shard of T0's hour, its conversions and their index entries are deleted
        assert [k for k in keys_of(store) if k[0].startswith("g1#")] == sorted(
            (f"g1#r{p}#{hour}#{expected_shard(sk, 3)}", sk) for _, p, sk, _ in rows.rollups
        )


def test_each_generation_keeps_the_shard_count_it_was_built_with(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with dynamodb_table(shards=4) as url, open_store(url) as four:
        four.replace(LiveRows(MANY, conversions()), StoreWindow(T0 - timedelta(hours=1), T0))
        answers = every_read(four)
        table = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint_of(url))
        meta = table.get_item(TableName=four.table, Key={"pk": {"S": "meta"}, "sk": {"S": "meta"}})
        assert (meta["Item"]["gen"]["N"], meta["Item"]["shards"]["N"]) == ("1", "4")
        with caplog.at_level(logging.INFO), open_store(url.replace("shards=4", "shards=2")) as two:
            assert "generation 1 has 4 shard(s) per hour, this client builds 2" in caplog.text
            # another setting reads and writes generation 1 by its recorded 4 shards
            assert every_read(two) == answers
            assert two.apply("w:1", delta(MANY.head(1))) is True
            assert {pk for pk, _ in keys_of(two) if pk.startswith("g1#r5#")} == {
                f"g1#r5#{HOUR}#{s}" for s in range(4)
            }

            def read() -> StoreSnapshot:
                held = four.read(T0 - timedelta(hours=1), None)
                assert held is not None
                # a writer of the other setting commits after the snapshot: its delta is
                # journaled, and replayed into generation 2
                assert four.apply("w:2", delta(MANY.head(1))) is True
                return StoreSnapshot(held, StoreWindow(T0 - timedelta(hours=1), T0))

            two.rebuild(read)  # the setting takes effect: generation 2, 2 shards
            keys = keys_of(two)
            assert not any(pk.startswith("g1#") for pk, _ in keys)  # generation 1 deleted
            assert {pk for pk, _ in keys if pk.startswith("g2#r5#")} == {
                f"g2#r5#{HOUR}#0",
                f"g2#r5#{HOUR}#1",
            }
            meta = table.get_item(
                TableName=four.table, Key={"pk": {"S": "meta"}, "sk": {"S": "meta"}}
            )
            assert (meta["Item"]["gen"]["N"], meta["Item"]["shards"]["N"]) == ("2", "2")
            # the 4-shard client now writes and reads generation 2's two shards
            assert four.apply("w:3", delta(MANY.head(1))) is True
            assert {pk for pk, _ in keys_of(four) if pk.startswith("g2#r")} <= {
                f"g2#r{p}#{HOUR}#{s}" for p in range(6) for s in range(2)
            }
            rows = four.read(T0, T0 + timedelta(minutes=1))
            assert rows is not None
            # City 00 at T0: 1 (replace) + 1 (w:1) + 1 (w:2, replayed) + 1 (w:3)
            (first,) = [r for r in rows.rollups.rows() if r[4] == "City 00"]
            assert first[5] == 4
            assert every_read(four) == every_read(two)


def test_the_cost_model_counts_writes_per_shard() -> None:
    batch = delta(MANY)
    whole = partition_writes(batch, shards=1)
    assert whole[f"g1#r5#{HOUR}"] == 80  # one write unit per item of the full key
    assert whole[f"g1#r0#{HOUR}"] == 2  # one item per minute
    sharded = partition_writes(batch, shards=4)
    assert sum(v for k, v in sharded.items() if k.startswith(f"g1#r5#{HOUR}#")) == 80
    rows = Rows.of(batch.rows, batch.reattributions)
    expected = Counter(f"g1#r{p}#{HOUR}#{expected_shard(sk, 4)}" for _, p, sk, _ in rows.rollups)
    assert sharded == expected
    assert apply_cost(batch, shards=4).write_units == apply_cost(batch, shards=1).write_units


@pytest.mark.parametrize("value", ["0", "65", "four", "-1"])
def test_a_wrong_shard_count_is_one_clear_error(value: str, tmp_path: Path) -> None:
    bad = Settings(home=tmp_path, serving_url=f"dynamodb://tbl?region=eu-central-1&shards={value}")
    with pytest.raises(
        UserError, match=f"serving_url .*shards={value}: give a whole number from 1 to 64"
    ):
        open_runtime_store(bad, live=True)
