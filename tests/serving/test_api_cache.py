"""Shared answers of the HTTP API (api_cache_seconds), minute-aligned ranges and the
live feed pushed by commits: exact values, freshness bounds, single flight."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from query_dataset import M0, empty_output, minute, rollups

from adpulse.commits import CommitSignal
from adpulse.config import Settings
from adpulse.serving import queries
from adpulse.serving.api import bind, create_app, make_server, plain
from adpulse.serving.cache import ResultCache
from adpulse.serving.queries import Filters
from adpulse.storage.warehouse.base import Warehouse

V1 = "/api/v1"


# --- the cache alone, on a clock of its own ----------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _inline(compute: Callable[[], bytes]) -> bytes:
    await asyncio.sleep(0)  # a computation always yields once, like a thread would
    return compute()


class Source:
    """A value that changes when told, counting its reads."""

    def __init__(self) -> None:
        self.value = b"A"
        self.reads = 0

    def __call__(self) -> bytes:
        self.reads += 1
        return self.value


async def _settle() -> None:
    for _ in range(5):  # let background computations land
        await asyncio.sleep(0)


def test_fresh_then_stale_while_one_refresh_runs_then_never_served_too_old() -> None:
    async def scenario() -> None:
        clock, source = Clock(), Source()
        cache = ResultCache(1.0, _inline, clock=clock)
        assert await cache.get("k", source) == b"A"
        source.value = b"B"  # the data change; the kept answer is A, taken at 0
        clock.now = 1.0  # exactly api_cache_seconds old: fresh
        assert await cache.get("k", source) == b"A"
        await _settle()
        assert source.reads == 1
        clock.now = 1.5  # stale: still served, and one refresh starts
        assert await cache.get("k", source) == b"A"
        assert await cache.get("k", source) == b"A"  # the refresh is running: no second
        await _settle()
        assert source.reads == 2
        clock.now = 1.6
        assert await cache.get("k", source) == b"B"  # the refreshed answer, taken at 1.5
        source.value = b"C"
        clock.now = 3.5  # twice api_cache_seconds old: the last moment it may be served
        assert await cache.get("k", source) == b"B"  # (and a refresh starts)
        clock.now = 3.51  # older than that: never served; the running refresh is joined
        assert await cache.get("k", source) == b"C"
        assert cache.computations == source.reads == 3
        clock.now = 6.0
        source.value = b"D"
        assert await cache.get("k", source) == b"D"  # nothing running: computed for it
        assert cache.computations == source.reads == 4

    asyncio.run(scenario())


def test_single_flight_for_concurrent_identical_requests() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        source = Source()

        def slow() -> bytes:
            gate.wait(5)
            return source()

        cache = ResultCache(1.0, lambda fn: asyncio.to_thread(fn))
        waiting = [asyncio.ensure_future(cache.get("k", slow)) for _ in range(50)]
        other = asyncio.ensure_future(cache.get("other", slow))
        await asyncio.sleep(0.05)
        gate.set()
        assert await asyncio.gather(*waiting) == [b"A"] * 50
        assert await other == b"A"
        assert source.reads == 2 and cache.computations == 2  # one per key

    asyncio.run(scenario())


def test_seconds_zero_computes_every_request() -> None:
    async def scenario() -> None:
        source = Source()
        cache = ResultCache(0.0, _inline)
        results = await asyncio.gather(*(cache.get("k", source) for _ in range(7)))
        assert results == [b"A"] * 7 and source.reads == 7 and len(cache) == 0

    asyncio.run(scenario())


def test_commit_counter_keeps_answers_current_until_a_commit() -> None:
    async def scenario() -> None:
        clock, source, commits = Clock(), Source(), CommitSignal()
        cache = ResultCache(1.0, _inline, lambda: commits.version, clock=clock)
        assert await cache.get("k", source) == b"A"
        assert await cache.get("live", source, versioned=False) == b"A"
        source.value = b"B"
        clock.now = 100.0  # no commit since: the answer is current, however old
        assert await cache.get("k", source) == b"A"
        # an answer that changes without commits is kept by age only
        assert await cache.get("live", source, versioned=False) == b"B"
        commits.notify()
        assert await cache.get("k", source) == b"B"  # too old and outdated by the commit
        assert source.reads == 4

    asyncio.run(scenario())


def test_failures_are_not_kept() -> None:
    async def scenario() -> None:
        calls = 0

        def flaky() -> bytes:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("warehouse hiccup")
            return b"ok"

        cache = ResultCache(1.0, _inline)
        with pytest.raises(RuntimeError, match="hiccup"):
            await cache.get("k", flaky)
        assert await cache.get("k", flaky) == b"ok"
        assert calls == 2

    asyncio.run(scenario())


def test_kept_bytes_are_bounded_least_recently_used_out() -> None:
    async def scenario() -> None:
        cache = ResultCache(60.0, _inline, max_bytes=10)
        for key in "abc":
            await cache.get(key, lambda: b"1234")
        assert len(cache) == 2  # 12 bytes would exceed 10: "a" went
        assert await cache.get("b", lambda: b"new!") == b"1234"  # still kept
        await cache.get("huge", lambda: b"x" * 11)  # larger than the bound: never kept
        assert len(cache) == 2

    asyncio.run(scenario())


# --- minute-aligned ranges ------------------------------------------------------------------
def test_minute_aligned_rounds_bounds_up() -> None:
    at = M0 + timedelta(minutes=1, seconds=30)
    aligned = queries.minute_aligned(Filters(start=at, end=minute(3) + timedelta(seconds=1)))
    assert (aligned.start, aligned.end) == (minute(2), minute(4))
    whole = Filters(start=minute(1), end=minute(3), platform="Web")
    assert queries.minute_aligned(whole) is whole
    # both bounds within one minute: rounding would leave nothing, so left as given
    narrow = Filters(start=M0 + timedelta(seconds=10), end=M0 + timedelta(seconds=50))
    assert queries.minute_aligned(narrow) is narrow
    assert queries.minute_aligned(Filters(end=datetime.max)).end == datetime.max


def test_rollup_results_are_unchanged_by_alignment(warehouse: Warehouse) -> None:
    for start, end in [
        (M0 + timedelta(seconds=30), minute(3) + timedelta(seconds=59)),
        (M0 - timedelta(seconds=1), minute(1) + timedelta(seconds=1)),
    ]:
        given = Filters(start=start, end=end)
        aligned = queries.minute_aligned(given)
        for fn in (queries.counts, queries.ctr, queries.conversion_rate):
            assert fn(warehouse, given, "ad").equals(fn(warehouse, aligned, "ad"))
        # the series' rollup columns too; its latency percentiles read event times, and
        # with aligned bounds they count the same minutes as the buckets (the point)
        rollup_columns = ["bucket", "impressions", "clicks", "conversions", "revenue", "ctr"]
        assert (
            queries.bucketed_timeseries(warehouse, given)
            .select(rollup_columns)
            .equals(queries.bucketed_timeseries(warehouse, aligned).select(rollup_columns))
        )


@pytest.fixture
def api(warehouse: Warehouse, tmp_path: Path) -> Iterator[tuple[TestClient, CommitSignal, Any]]:
    commits = CommitSignal()
    settings = Settings(home=tmp_path, api_cache_seconds=0.5)
    app = create_app(warehouse, settings, commits=commits)
    with TestClient(app) as client:
        yield client, commits, app


def test_unaligned_requests_in_one_minute_share_one_answer(
    api: tuple[TestClient, CommitSignal, Any], warehouse: Warehouse
) -> None:
    client, _, app = api
    first = client.get(f"{V1}/summary", params={"from": "2023-09-09 10:00:30"}).json()
    assert first["filters"] == {"start": "2023-09-09T10:01:00Z"}
    assert first["summary"] == plain(queries.summary(warehouse, Filters(start=minute(1))))[0]
    bodies = [
        client.get(f"{V1}/summary", params={"to": f"2023-09-09 10:02:{s:02d}"}).json()
        for s in (1, 30, 59)
    ]
    expected = plain(queries.summary(warehouse, Filters(end=minute(3))))[0]
    for body in bodies:
        assert body == {"filters": {"end": "2023-09-09T10:03:00Z"}, "summary": expected}
    assert app.state.answers.computations == 2  # the "from" request, then one for all three


def _endpoints() -> list[tuple[str, dict[str, str], Callable[[Warehouse], Any]]]:
    window = Filters(start=minute(0), end=minute(4))
    q = {"from": "2023-09-09 10:00", "to": "2023-09-09 10:04"}
    return [
        (
            "/summary",
            q,
            lambda wh: {
                "filters": {"start": "2023-09-09T10:00:00Z", "end": "2023-09-09T10:04:00Z"},
                "summary": plain(queries.summary(wh, window))[0],
            },
        ),
        ("/metrics/ctr", {**q, "by": "ad"}, lambda wh: plain(queries.ctr(wh, window, "ad"))),
        ("/top-ads", q, lambda wh: plain(queries.top_ads(wh, window, "revenue", 20, 10))),
        (
            "/timeseries",
            {**q, "bucket": "hour"},
            lambda wh: plain(queries.bucketed_timeseries(wh, window, "hour")),
        ),
        (
            "/breakdown/platform",
            q,
            lambda wh: plain(queries.breakdown(wh, window, "platform")),
        ),
        (
            "/trending",
            {**q, "window": "2", "min_clicks": "0"},
            lambda wh: plain(queries.trending(wh, window, 2, 0)),
        ),
    ]


def _body(response: httpx.Response) -> Any:
    body = response.json()
    return body if "summary" in body else body["rows"]


@pytest.mark.parametrize("seconds", [0.0, 30.0])
def test_answers_equal_the_query_layer_cached_or_not(
    warehouse: Warehouse, tmp_path: Path, seconds: float
) -> None:
    app = create_app(warehouse, Settings(home=tmp_path, api_cache_seconds=seconds))
    with TestClient(app) as client:
        for path, params, expected in _endpoints():
            for _ in range(3):
                r = client.get(V1 + path, params=params)
                assert r.status_code == 200 and r.headers["content-type"] == "application/json"
                assert _body(r) == expected(warehouse), path
        kept = 0 if seconds == 0 else len(_endpoints())
        assert len(app.state.answers) == kept
        assert app.state.answers.computations == (3 if seconds == 0 else 1) * len(_endpoints())


def _commit_more_impressions(warehouse: Warehouse, commits: CommitSignal | None) -> None:
    """Commit rollup A once more (+100 impressions, +10 clicks at 10:00) and signal it."""
    batch = empty_output(3)
    batch.rollups = rollups("A")
    warehouse.commit(batch)
    if commits is not None:
        commits.notify()


@pytest.mark.parametrize("signalled", [True, False])
def test_a_commit_is_visible_within_bounded_staleness(
    warehouse: Warehouse, tmp_path: Path, signalled: bool
) -> None:
    commits = CommitSignal() if signalled else None
    app = create_app(warehouse, Settings(home=tmp_path, api_cache_seconds=0.5), commits=commits)
    with TestClient(app) as client:

        def impressions() -> int:
            return int(client.get(f"{V1}/summary").json()["summary"]["impressions"])

        assert impressions() == 230
        asked = time.monotonic()  # the kept answer was taken at or after this
        _commit_more_impressions(warehouse, commits)
        # steady traffic: the kept answer may be served until 2 x 0.5 s old, and past
        # 0.5 s one refresh replaces it, so the commit shows within 0.5 s + one query
        seen: list[tuple[float, int]] = []
        while time.monotonic() - asked < 1.2:
            seen.append((time.monotonic() - asked, impressions()))
            time.sleep(0.02)
        assert {n for _, n in seen} <= {230, 330}
        assert all(n == 330 for t, n in seen if t > 1.0)  # never served more than 1 s old
        first_new = min(t for t, n in seen if n == 330)
        assert first_new < 1.0
        assert impressions() == int(queries.summary(warehouse, Filters())["impressions"][0])


def test_without_commits_answers_stay_current(
    api: tuple[TestClient, CommitSignal, Any], warehouse: Warehouse
) -> None:
    client, commits, app = api
    assert client.get(f"{V1}/summary").json()["summary"]["impressions"] == 230
    time.sleep(1.1)  # older than twice api_cache_seconds, but no commit since
    assert client.get(f"{V1}/summary").json()["summary"]["impressions"] == 230
    assert app.state.answers.computations == 1
    _commit_more_impressions(warehouse, commits)
    assert client.get(f"{V1}/summary").json()["summary"]["impressions"] == 330
    assert app.state.answers.computations == 2


# --- the live feed pushes after commits ----------------------------------------------------
@pytest.fixture
def pushed_server(warehouse: Warehouse, tmp_path: Path) -> Iterator[tuple[str, CommitSignal]]:
    commits = CommitSignal()
    # a long timer: any prompt update must come from the commit
    app = create_app(warehouse, Settings(home=tmp_path), refresh_seconds=30.0, commits=commits)
    sock = bind("127.0.0.1", 0)
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", commits
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _next_update(lines: Iterator[str]) -> dict[str, Any]:
    for line in lines:
        if line.startswith("data: "):
            return dict(orjson.loads(line[6:]))
    raise AssertionError("the stream ended")


def test_stream_pushes_right_after_a_commit(
    pushed_server: tuple[str, CommitSignal], warehouse: Warehouse
) -> None:
    url, commits = pushed_server
    with (
        httpx.Client(base_url=url, timeout=10) as client,
        client.stream("GET", f"{V1}/stream") as response,
    ):
        lines = response.iter_lines()
        first = _next_update(lines)  # the first tick comes at once
        assert first["summary"]["impressions"] == 230
        t = time.monotonic()
        _commit_more_impressions(warehouse, commits)
        pushed = _next_update(lines)
        waited = time.monotonic() - t
    assert pushed["summary"]["impressions"] == 330
    assert pushed["tick"] == first["tick"] + 1
    assert waited < 2.0  # the timer alone would take 30 s


def test_a_request_seen_before_skips_validation_and_gets_the_same_bytes(
    api: tuple[TestClient, CommitSignal, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _, app = api
    validated: list[Filters] = []
    original = queries.minute_aligned

    def counting(filters: Filters) -> Filters:
        validated.append(filters)
        return original(filters)

    monkeypatch.setattr(queries, "minute_aligned", counting)
    url = f"{V1}/top-ads?from=2023-09-09%2010:00&by=conversion_rate&min_clicks=1"
    first = client.get(url)
    again = client.get(url)
    assert first.status_code == again.status_code == 200
    assert again.content == first.content and again.headers["content-type"] == "application/json"
    assert len(validated) == 1  # the second one never reached the parameter parsing
    # other bytes for the same question: validated, then the same shared answer
    other = client.get(f"{V1}/top-ads?min_clicks=1&by=conversion_rate&from=2023-09-09T10:00:00")
    assert other.content == first.content and len(validated) == 2
    assert app.state.answers.computations == 1
    # a bad request is never remembered: it fails the same way every time
    for _ in range(2):
        assert client.get(f"{V1}/top-ads?limit=0").status_code == 422
    assert client.post(url).status_code == 405  # only GETs are answered from memory
