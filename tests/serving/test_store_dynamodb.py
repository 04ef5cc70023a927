"""What only the DynamoDB serving store has (its contract runs in test_serving_store.py):
the serving_url form, the table created with its key schema and TTL, throttling retried
with backoff, an unreachable service refused at once, and the item design's numbers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from awstest import REGION
from botocore.awsrequest import AWSResponse
from dynamotest import dynamodb_table, open_store
from store_rows import T0, conversions, delta, rollups

from adpulse.config import Settings
from adpulse.runtime import UserError
from adpulse.runtime import open_store as open_runtime_store
from adpulse.serving.store import (
    LiveRows,
    ServingStoreError,
    ServingStoreUnavailableError,
    StoreWindow,
    open_serving_store,
)
from adpulse.serving.store.dynamodb import DynamoDBServingStore, apply_cost, item_size


@pytest.fixture
def url() -> Iterator[str]:
    with dynamodb_table() as table_url:
        yield table_url


def table_of(url: str) -> str:
    return url.removeprefix("dynamodb://").split("?")[0]


def endpoint_of(url: str) -> str:
    return url.split("endpoint_url=")[1]


def test_serving_url_opens_a_dynamodb_store_creating_its_table_with_ttl(
    url: str, tmp_path: Path
) -> None:
    with open_serving_store(Settings(home=tmp_path, serving_url=url)) as store:
        assert isinstance(store, DynamoDBServingStore)
        assert store.window() is None  # a new table: not ready until rebuilt
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
