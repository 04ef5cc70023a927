"""Times out of any sane range (issue 8, item 2) never reach a 500: the API answers 422
for them as query parameters, and every reader keeps answering after the processor met
them in events (they are dead letters, not committed). On DuckDB and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from builders import MiniPipeline
from fastapi.testclient import TestClient

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.serving.api import create_app
from adpulse.storage.warehouse.base import Warehouse

V1 = "/api/v1"
OUT_OF_RANGE = [
    ("from", "0001-01-01T00:00:00+05:00"),
    ("to", "9999-12-31T23:59:59-05:00"),
    ("from", "0000-01-01"),
    ("to", "0999-12-31 23:59"),
    ("from", "9000-01-01"),
]
ENDPOINTS = [
    "/summary",
    "/timeseries",
    "/metrics/ctr",
    "/metrics/conversion-latency",
    "/top-ads",
    "/trending",
    "/breakdown/platform",
    "/latency-histogram",
]


@pytest.fixture
def client(warehouse: Warehouse, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(warehouse, Settings(home=tmp_path), refresh_seconds=0.05)
    with TestClient(app) as c:
        yield c


def test_times_out_of_range_are_a_422_naming_the_parameter(client: TestClient) -> None:
    for endpoint in ENDPOINTS:
        for name, value in OUT_OF_RANGE:
            r = client.get(V1 + endpoint, params={name: value})
            assert r.status_code == 422, (endpoint, r.text)
            assert r.json() == {
                "error": "invalid_parameter",
                "detail": f"{name}: {value!r} is outside the supported range 1000-01-01 to"
                " 9000-01-01 (UTC)",
            }
    # the edges of the range are answered
    for params in ({"from": "1000-01-01"}, {"to": "8999-12-31 23:59"}):
        r = client.get(V1 + "/summary", params=params)
        assert r.status_code == 200, r.text


def test_readers_answer_after_the_processor_met_out_of_range_times(
    backend: str, tmp_path: Path, warehouse: Warehouse
) -> None:
    # Once committed, a year-0 click broke /readyz (503), /health, /dimensions and
    # /timeseries (500). Now it is a dead letter and every reader answers.
    del warehouse  # only its backend matters here: a fresh one for the pipeline below
    if backend == "duckdb":
        mini = MiniPipeline(tmp_path / "p")
    else:
        from pgtest import postgres_warehouse

        with postgres_warehouse() as pg:
            _check_readers(MiniPipeline(tmp_path / "p", warehouse=pg), tmp_path)
        return
    try:
        _check_readers(mini, tmp_path)
    finally:
        mini.warehouse.close()


def _check_readers(mini: MiniPipeline, tmp_path: Path) -> None:
    base = {"ad_id": 1001, "user_id": "U1", "platform": "Web", "location": "Boston"}
    mini.send(
        Stream.CLICKS,
        [
            orjson.dumps({**base, "event_id": "y0", "click_timestamp": "0000-01-01 00:00:00"}),
            orjson.dumps(
                {**base, "event_id": "y1", "click_timestamp": "0001-01-01T00:00:00+05:00"}
            ),
            orjson.dumps({**base, "event_id": "ok", "click_timestamp": "2023-09-09 10:00:00"}),
        ],
    )
    mini.run()
    app = create_app(mini.warehouse, Settings(home=tmp_path), refresh_seconds=0.05)
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        health = c.get(V1 + "/health")
        assert health.status_code == 200, health.text
        reasons = {(d["stream"], d["reason"], d["records"]) for d in health.json()["dead_letters"]}
        assert reasons == {("clicks", "event_time_out_of_range", 2)}
        assert c.get(V1 + "/dimensions").status_code == 200
        series = c.get(V1 + "/timeseries")
        assert series.status_code == 200, series.text
        assert sum(row["clicks"] for row in series.json()["rows"]) == 1
