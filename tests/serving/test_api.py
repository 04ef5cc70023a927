"""The HTTP API against the hand-built warehouse: same numbers as the query layer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from query_dataset import M0, build, minute

from adpulse.config import Settings
from adpulse.serving import queries
from adpulse.serving.api import bind, create_app, make_server, plain
from adpulse.serving.queries import Filters
from adpulse.storage.dimensions import parse_dimension_csv
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

V1 = "/api/v1"


@pytest.fixture
def client(warehouse: DuckDBWarehouse, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(warehouse, Settings(home=tmp_path), refresh_seconds=0.05)
    with TestClient(app) as c:
        yield c


def rows(frame: Any) -> Any:
    return plain(frame)


FILTER_CASES: list[tuple[dict[str, str], Filters]] = [
    ({}, Filters()),
    ({"campaign": "Back-to-School"}, Filters(campaign="Back-to-School")),
    ({"ad": "1002"}, Filters(ad_id=1002)),
    ({"platform": "Web"}, Filters(platform="Web")),
    ({"location": "Los Angeles"}, Filters(location="Los Angeles")),
    ({"gender": "Female"}, Filters(gender="Female")),
    ({"age_band": "18-24"}, Filters(age_band="18-24")),
    ({"interest": "Travel"}, Filters(interest="Travel")),
    (
        {"from": "2023-09-09 10:01", "to": "2023-09-09T10:03:00"},
        Filters(start=minute(1), end=minute(3)),
    ),
    ({"from": "2023-09-09T10:01:00Z"}, Filters(start=minute(1))),
    ({"to": "2023-09-09T12:02:00+02:00"}, Filters(end=minute(2))),
    ({"campaign": "Summer Sale", "platform": "Mobile"}, Filters("Summer Sale", platform="Mobile")),
]


@pytest.mark.parametrize(("params", "filters"), FILTER_CASES)
def test_every_metric_matches_query_layer(
    client: TestClient, warehouse: DuckDBWarehouse, params: dict[str, str], filters: Filters
) -> None:
    functions = {
        "ctr": queries.ctr,
        "conversion-rate": queries.conversion_rate,
        "revenue-per-conversion": queries.revenue_per_conversion,
        "conversion-latency": queries.conversion_latency,
    }
    for name, fn in functions.items():
        for by in (None, "ad", "campaign"):
            query = {**params, **({"by": by} if by else {})}
            r = client.get(f"{V1}/metrics/{name}", params=query)
            assert r.status_code == 200, r.text
            assert r.json()["rows"] == rows(fn(warehouse, filters, by))  # type: ignore[arg-type]
    r = client.get(f"{V1}/summary", params=params)
    assert r.json()["summary"] == rows(queries.summary(warehouse, filters))[0]
    for bucket in ("minute", "hour"):
        r = client.get(f"{V1}/timeseries", params={**params, "bucket": bucket})
        expected = queries.bucketed_timeseries(warehouse, filters, bucket)  # type: ignore[arg-type]
        assert r.json()["rows"] == rows(expected)
    r = client.get(f"{V1}/latency-histogram", params=params)
    assert r.json()["rows"] == rows(queries.latency_histogram(warehouse, filters))
    for dimension in ("platform", "location", "gender", "age_band", "interest"):
        r = client.get(f"{V1}/breakdown/{dimension}", params=params)
        assert r.json()["rows"] == rows(queries.breakdown(warehouse, filters, dimension))  # type: ignore[arg-type]
    for by in ("revenue", "conversion_rate"):
        r = client.get(f"{V1}/top-ads", params={**params, "by": by, "min_clicks": "1"})
        expected = queries.top_ads(warehouse, filters, by, min_clicks=1)  # type: ignore[arg-type]
        assert r.json()["rows"] == rows(expected)
    r = client.get(f"{V1}/trending", params={**params, "min_clicks": "0", "window": "2"})
    assert r.json()["rows"] == rows(queries.trending(warehouse, filters, 2, 0))


def test_exact_values(client: TestClient) -> None:
    summary = client.get(f"{V1}/summary").json()["summary"]
    assert summary == {
        "impressions": 230,
        "clicks": 24,
        "conversions": 7,
        "attributed_conversions": 6,
        "revenue": 210.75,
        "ctr": 24 / 230,
        "conversion_rate": 0.25,
        "revenue_per_conversion": 210.75 / 7,
        "latency_mean": 2800 / 6,
        "latency_p50": 400.0,
        "latency_p90": 700.0,
    }
    ctr = client.get(f"{V1}/metrics/ctr", params={"by": "campaign"}).json()["rows"]
    assert ctr == [
        {"campaign": "Back-to-School", "impressions": 150, "clicks": 15, "ctr": 0.1},
        {"campaign": "Fall Fashion", "impressions": 30, "clicks": 0, "ctr": 0.0},
        {"campaign": "Summer Sale", "impressions": 40, "clicks": 8, "ctr": 0.2},
        {"campaign": None, "impressions": 10, "clicks": 1, "ctr": 0.1},
    ]
    hourly = client.get(f"{V1}/timeseries", params={"bucket": "hour"}).json()["rows"]
    assert hourly == [
        {
            "bucket": "2023-09-09T10:00:00Z",
            "impressions": 230,
            "clicks": 24,
            "conversions": 7,
            "attributed_conversions": 6,
            "revenue": 210.75,
            "ctr": 24 / 230,
            "conversion_rate": 0.25,
            "revenue_per_conversion": 210.75 / 7,
            "latency_p50": 400.0,
            "latency_p90": 700.0,
        }
    ]
    histogram = client.get(f"{V1}/latency-histogram").json()["rows"]
    assert {
        (h["low_seconds"], h["high_seconds"]): h["conversions"]
        for h in histogram
        if h["conversions"]
    } == {(300, 600): 5, (900, 1800): 1}
    interests = client.get(f"{V1}/breakdown/interest").json()["rows"]
    assert [(r["value"], r["impressions"]) for r in interests] == [
        ("Cooking", 30),
        ("Gaming", 30),
        ("Music", 100),
        ("Photography", 90),
        ("Reading", 90),
        ("Travel", 100),
        (None, 10),
    ]
    trending = client.get(f"{V1}/trending", params={"min_clicks": "0", "window": "2"}).json()
    assert trending["windows"] == {
        "previous_start": "2023-09-09T10:01:00Z",
        "latest_start": "2023-09-09T10:03:00Z",
        "end": "2023-09-09T10:05:00Z",
    }


def test_dimensions_health_probes(client: TestClient, warehouse: DuckDBWarehouse) -> None:
    dims = client.get(f"{V1}/dimensions").json()
    assert dims["campaigns"] == ["Back-to-School", "Fall Fashion", "Summer Sale", "Winter"]
    assert dims["ad_ids"] == [1001, 1002, 1003, 1004, 9999]
    assert dims["platforms"] == ["Mobile", "Tablet", "Web"]
    assert dims["age_bands"] == list(queries.AGE_BAND_LABELS)
    assert dims["data_range"] == {
        "first_minute": "2023-09-09T10:00:00Z",
        "last_minute": "2023-09-09T10:04:00Z",
    }
    health = client.get(f"{V1}/health").json()
    status = queries.pipeline_status(warehouse)
    assert health["streams"] == plain(status["streams"])
    assert health["dead_letters"] == [
        {"stream": "conversions", "reason": "negative_revenue", "records": 2},
        {"stream": "impressions", "reason": "invalid_json", "records": 1},
    ]
    assert health["last_commit"] == "2023-09-09T10:07:00Z"
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    assert "/api/v1/summary" in client.get("/openapi.json").json()["paths"]


def test_status_source_is_merged(warehouse: DuckDBWarehouse, tmp_path: Path) -> None:
    app = create_app(warehouse, Settings(home=tmp_path), status_source=lambda: {"lag_bytes": 3})
    with TestClient(app) as c:
        assert c.get(f"{V1}/health").json()["live"] == {"lag_bytes": 3}


BAD = [
    ("/metrics/bogus", {}, 404),
    ("/breakdown/ssn", {}, 404),
    ("/metrics/ctr", {"by": "user"}, 422),
    ("/summary", {"age_band": "17-19"}, 422),
    ("/summary", {"ad": "1 OR 1=1"}, 422),
    ("/summary", {"ad": str(2**64)}, 422),
    ("/summary", {"from": "yesterday"}, 422),
    ("/summary", {"from": "2023-09-09 10:05", "to": "2023-09-09 10:00"}, 422),
    ("/summary", {"from": "2022-01-01", "to": "2023-09-09"}, 422),
    ("/summary", {"campaign": "x" * 201}, 422),
    ("/summary", {"campaign": ""}, 422),
    ("/summary", {"interest": "a;b"}, 422),
    ("/summary", {"from": "2023-09-09" + " " * 50}, 422),
    ("/timeseries", {"bucket": "second"}, 422),
    ("/top-ads", {"by": "clicks"}, 422),
    ("/top-ads", {"limit": "0"}, 422),
    ("/top-ads", {"limit": "100000"}, 422),
    ("/trending", {"window": "99999"}, 422),
    ("/stream", {"max_events": "0"}, 422),
]


@pytest.mark.parametrize(("path", "params", "status"), BAD)
def test_bad_input_is_a_clear_4xx(
    client: TestClient, path: str, params: dict[str, str], status: int
) -> None:
    r = client.get(V1 + path, params=params)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and body["detail"]


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"platform": "Mobil"}, "unknown platform 'Mobil'; did you mean Mobile?"),
        ({"platform": "mobile "}, "unknown platform 'mobile '; did you mean Mobile?"),
        ({"location": "Los Angles"}, "unknown location 'Los Angles'; did you mean Los Angeles?"),
        ({"campaign": "Summer"}, "unknown campaign 'Summer'; did you mean Summer Sale?"),
        ({"gender": "F"}, "unknown gender 'F'; the data holds Female, Male"),
        ({"ad": "99"}, "unknown ad 99; did you mean 9999?"),
        ({"ad": "5"}, "unknown ad 5; the data holds 1001, 1002, 1003, 1004, 9999"),
        ({"interest": "Photo"}, "unknown interest 'Photo'; did you mean Photography?"),
        (
            {"platfrom": "Web"},
            "unknown parameter(s) platfrom; this endpoint takes: ad, age_band,"
            " campaign, from, gender, interest, location, platform, to",
        ),
    ],
)
def test_unknown_values_and_parameters_are_refused(
    client: TestClient, warehouse: DuckDBWarehouse, params: dict[str, str], detail: str
) -> None:
    load_users(warehouse)
    r = client.get(f"{V1}/summary", params=params)
    assert r.status_code == 422, r.text
    assert r.json() == {"error": "invalid_parameter", "detail": detail}


def load_users(warehouse: DuckDBWarehouse) -> None:
    """The user dimension behind the facts of query_dataset (its genders and interests)."""
    _, users = parse_dimension_csv(
        "user_id, age, gender, interests\n"
        "m, 20, Male, Music;Travel\n"
        "f, 30, Female, Reading;Photography\n"
        "g, 30, Male, Gaming;Cooking\n"
    )
    warehouse.load_dimension("users", users, datetime(2023, 9, 1))


def test_filter_values_match_without_regard_to_case(
    client: TestClient, warehouse: DuckDBWarehouse
) -> None:
    load_users(warehouse)
    params = {"platform": "web", "campaign": "SUMMER SALE", "interest": "travel"}
    r = client.get(f"{V1}/summary", params=params)
    assert r.status_code == 200, r.text
    stored = Filters(campaign="Summer Sale", platform="Web", interest="Travel")
    assert r.json()["filters"] == {
        "campaign": "Summer Sale",
        "platform": "Web",
        "interest": "Travel",
    }
    assert r.json()["summary"] == rows(queries.summary(warehouse, stored))[0]
    r = client.get(f"{V1}/breakdown/gender", params={"gender": "female"})
    assert r.status_code == 200 and [row["value"] for row in r.json()["rows"]] == ["Female"]


def test_known_values_are_reloaded_after_a_commit_only(
    warehouse: DuckDBWarehouse, tmp_path: Path
) -> None:
    from adpulse.commits import CommitSignal

    load_users(warehouse)
    commits = CommitSignal()
    app = create_app(warehouse, Settings(home=tmp_path), commits=commits)
    with TestClient(app) as c:
        assert c.get(f"{V1}/summary", params={"gender": "Robot"}).status_code == 422
        _, robot = parse_dimension_csv("user_id, age, gender, interests\nr, 40, Robot, Chess\n")
        warehouse.load_dimension("users", robot, datetime(2023, 9, 1))
        # no commit signalled: the values loaded before still hold, no query per request
        assert c.get(f"{V1}/summary", params={"gender": "robot"}).status_code == 422
        commits.notify()
        r = c.get(f"{V1}/summary", params={"gender": "robot"})
        assert r.status_code == 200 and r.json()["filters"] == {"gender": "Robot"}


def test_known_values_check() -> None:
    known = queries.KnownValues({"platform": ["Web", "WEB", "Mobile"], "ad_id": [1, 2]})
    assert known.check(Filters(platform="mobile", ad_id=2)) == Filters(platform="Mobile", ad_id=2)
    assert known.check(Filters(platform="WEB")) == Filters(platform="WEB")  # exact first
    with pytest.raises(queries.UnknownValueError) as ambiguous:
        known.check(Filters(platform="web"))
    assert str(ambiguous.value) == (
        "platform 'web' is ambiguous: the data holds 'WEB', 'Web'; give one exactly"
    )
    assert known.check(Filters(location="Nowhere")) == Filters(location="Nowhere")  # none stored
    with pytest.raises(queries.UnknownValueError, match=r"^unknown --ad 3; the data holds 1, 2$"):
        known.check(Filters(ad_id=3), {"ad_id": "--ad"})


def test_other_endpoints_refuse_parameters_they_do_not_take(client: TestClient) -> None:
    assert client.get(f"{V1}/health", params={"platform": "Web"}).status_code == 422
    r = client.get(f"{V1}/top-ads", params={"rank_by": "revenue"})
    assert r.status_code == 422 and "unknown parameter(s) rank_by" in r.json()["detail"]
    assert client.get(f"{V1}/top-ads", params={"by": "revenue", "limit": "2"}).status_code == 200


def test_oversized_and_repeated_query(client: TestClient) -> None:
    r = client.get(f"{V1}/summary?campaign=a&campaign=b")
    assert r.status_code == 422 and "campaign" in r.json()["detail"]
    r = client.get(f"{V1}/summary?junk=" + "x" * 5000)
    assert r.status_code == 414 and r.json()["error"] == "query_too_long"


INJECTIONS = [
    "x' OR '1'='1",
    "'; DROP TABLE rollup_minute; --",
    'Web" OR 1=1 --',
    "%' UNION SELECT * FROM dead_letters --",
    "\\'; SELECT 1; --",
    "Web\x00",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_shaped_values_match_nothing(
    client: TestClient, warehouse: DuckDBWarehouse, value: str
) -> None:
    for name in ("campaign", "platform", "location", "gender", "interest"):
        r = client.get(f"{V1}/summary", params={name: value})
        if r.status_code != 200:
            assert 400 <= r.status_code < 500
            continue
        assert r.json()["summary"]["impressions"] == 0
        for path in ("/metrics/ctr", "/top-ads", "/breakdown/platform", "/timeseries"):
            r = client.get(V1 + path, params={name: value})
            assert r.status_code == 200 and r.json()["rows"] == []
    assert queries.summary(warehouse, Filters()).row(0)[0] == 230  # nothing dropped


# --- live feed ----------------------------------------------------------------------------
@pytest.fixture
def live_server(warehouse: DuckDBWarehouse, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    app = create_app(warehouse, Settings(home=tmp_path), refresh_seconds=0.2)
    sock = bind("127.0.0.1", 0)
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield url, app
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
    assert not thread.is_alive()


def _events(response: httpx.Response, count: int) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    event_id, data = None, None
    for line in response.iter_lines():
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and event_id is not None and data is not None:
            found.append((event_id, data))
            event_id, data = None, None
            if len(found) == count:
                break
    return found


def test_stream_fans_one_payload_out(live_server: tuple[str, Any], monkeypatch: Any) -> None:
    url, app = live_server
    calls = []
    original = queries.summary

    def counting(warehouse: Any, filters: Filters, **options: Any) -> Any:
        calls.append(filters)
        return original(warehouse, filters, **options)

    monkeypatch.setattr(queries, "summary", counting)
    with (
        httpx.Client(base_url=url, timeout=10) as a,
        httpx.Client(base_url=url, timeout=10) as b,
        a.stream("GET", f"{V1}/stream") as ra,
        b.stream("GET", f"{V1}/stream") as rb,
    ):
        assert ra.headers["content-type"].startswith("text/event-stream")
        deadline = time.monotonic() + 5
        while app.state.feed.clients < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        ticks_before = app.state.feed.ticks
        got_a = dict(_events(ra, 3))
        got_b = dict(_events(rb, 3))
        ticks_after = app.state.feed.ticks
    shared = set(got_a) & set(got_b)
    assert shared, (got_a.keys(), got_b.keys())
    for tick in shared:
        assert got_a[tick] == got_b[tick]
    import orjson

    payload = orjson.loads(got_a[max(got_a)])
    assert payload["summary"]["impressions"] == 230
    assert payload["health"]["last_commit"] == "2023-09-09T10:07:00Z"
    # one summary per tick for both clients (same filters), not one per client
    assert len(calls) <= ticks_after - ticks_before + 2


def test_stream_max_events_and_filters(client: TestClient) -> None:
    r = client.get(f"{V1}/stream", params={"max_events": "2", "campaign": "Summer Sale"})
    assert r.status_code == 200
    data = [line for line in r.text.splitlines() if line.startswith("data: ")]
    assert len(data) == 2 and '"impressions":40' in data[0]


# --- the command -----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_command(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with DuckDBWarehouse(home / "warehouse.duckdb") as wh:
        wh.create_schema()
        build(wh)
    port = _free_port()
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "adpulse", "serve", "--home", str(home), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        proc.stdout.read().decode() if proc.stdout else ""
                    ) from None
                time.sleep(0.1)
        assert r.json() == {"status": "ok"}
        summary = httpx.get(f"http://127.0.0.1:{port}{V1}/summary", timeout=5).json()
        assert summary["summary"]["impressions"] == 230
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_m0_is_what_the_dataset_says() -> None:
    assert M0.isoformat() == "2023-09-09T10:00:00"
