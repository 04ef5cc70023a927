"""The HTTP event collector against a real server (uvicorn on a loopback port) over the
embedded log: bodies, limits, the browser endpoints, and group commit."""

from __future__ import annotations

import asyncio
import gzip
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redistest import REDIS_URL, redis_prefix
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tcpproxy import TcpProxy
from typer.testing import CliRunner

from adpulse.cli.main import app as cli
from adpulse.cli.runtime import UserError
from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.serving.api import bind, create_app, make_server
from adpulse.serving.auth import Access, KeyRing, create_key
from adpulse.sources import collector as collector_module
from adpulse.sources.client import CollectorClient, CollectorSendError
from adpulse.sources.collector import (
    INLINE_RECORDS,
    PIXEL_GIF,
    Collector,
    CollectorError,
    CollectorPaths,
    allowed_redirect,
    append_or_503,
    collector_router,
)
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.transport import framing, open_transport
from adpulse.transport.base import Transport
from adpulse.transport.memory import InMemoryProducer, InMemoryTransport

PARTITIONS = 3


@dataclass
class Served:
    url: str
    transport: Transport
    collector: Collector
    app: Any = None

    def records(self, stream: Stream) -> dict[int, list[tuple[bytes, int | None]]]:
        """What the log holds per partition: (payload, original size if cut) per record."""
        consumer = self.transport.consumer()
        found: dict[int, list[tuple[bytes, int | None]]] = {}
        for partition in range(PARTITIONS):
            chunk = consumer.poll(stream, partition, None, 1 << 24)
            if chunk is not None:
                lines = chunk.data.split(b"\n")[:-1]
                found[partition] = [framing.unframe_line(line) for line in lines]
        consumer.close()
        return found

    def payloads(self, stream: Stream) -> list[bytes]:
        return sorted(p for rows in self.records(stream).values() for p, _ in rows)


@contextmanager
def serve(
    tmp_path: Path,
    wrap: Callable[[ASGIApp], ASGIApp] | None = None,
    keys: Callable[[DuckDBWarehouse], Access] | None = None,
    **settings: Any,
) -> Iterator[Served]:
    config = Settings(home=tmp_path, partitions=PARTITIONS, **settings)
    transport = open_transport(config)
    collector = Collector(transport, config)
    with DuckDBWarehouse(tmp_path / "warehouse.duckdb") as warehouse:
        warehouse.create_schema()
        access = keys(warehouse) if keys is not None else None
        app = create_app(warehouse, config, collector=collector, access=access)
        sock = bind("127.0.0.1", 0)
        server = make_server(app if wrap is None else wrap(app))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            yield Served(url, transport, collector, app)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()
            collector.close()
            transport.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serve(
        tmp_path,
        collector_max_body_bytes=4096,
        collector_max_records=5,
        collector_redirect_hosts=["shop.example", "*.ads.example"],
        max_record_bytes=256,
    ) as served:
        yield served


def _click(user: str, ad: int = 7) -> bytes:
    return orjson.dumps(
        {
            "ad_id": ad,
            "user_id": user,
            "click_timestamp": "2026-11-29 08:00:00",
            "platform": "web",
            "location": "FR",
        }
    )


# --- POST /v1/events/{stream} -------------------------------------------------------------
def test_ndjson_lines_are_appended_byte_for_byte_to_the_partition_of_their_user(
    served: Served,
) -> None:
    lines = [_click("u1"), _click("u2"), b'{"user_id": "u3", broken', _click("u4")]
    body = lines[0] + b"\r\n" + lines[1] + b"\n\n  \n" + lines[2] + b"\n" + lines[3]
    r = httpx.post(f"{served.url}/v1/events/clicks", content=body)
    assert (r.status_code, r.json()) == (202, {"accepted": 4})
    by_partition = served.records(Stream.CLICKS)
    for user, line in (("u1", lines[0]), ("u2", lines[1]), ("u4", lines[3])):
        assert (line, None) in by_partition[framing.partition_of(user, PARTITIONS)]
    assert (lines[2], None) in by_partition[0]  # no readable user id: partition 0
    assert sum(map(len, by_partition.values())) == 4
    assert served.payloads(Stream.IMPRESSIONS) == []
    assert served.collector.accepted[Stream.CLICKS] == 4


def test_a_json_array_gives_one_record_per_element_and_an_object_one_record(
    served: Served,
) -> None:
    items = [orjson.loads(_click("u1")), orjson.loads(_click("u2")), 5]
    r = httpx.post(f"{served.url}/v1/events/clicks", json=items)
    assert (r.status_code, r.json()) == (202, {"accepted": 3})
    r = httpx.post(f"{served.url}/v1/events/clicks", json=items[0])
    assert (r.status_code, r.json()) == (202, {"accepted": 1})
    # Without a JSON content type, a leading "[" still means an array.
    r = httpx.post(f"{served.url}/v1/events/clicks", content=b" [" + _click("u9") + b"]")
    assert (r.status_code, r.json()) == (202, {"accepted": 1})
    assert served.payloads(Stream.CLICKS) == sorted(
        [_click("u1"), _click("u1"), _click("u2"), _click("u9"), b"5"]
    )


def test_a_gzip_body_is_decompressed(served: Served) -> None:
    body = gzip.compress(_click("u1") + b"\n" + _click("u2") + b"\n")
    r = httpx.post(
        f"{served.url}/v1/events/clicks", content=body, headers={"Content-Encoding": "gzip"}
    )
    assert (r.status_code, r.json()) == (202, {"accepted": 2})
    assert served.payloads(Stream.CLICKS) == sorted([_click("u1"), _click("u2")])


def test_an_empty_body_accepts_nothing(served: Served) -> None:
    r = httpx.post(f"{served.url}/v1/events/clicks", content=b"\n")
    assert (r.status_code, r.json()) == (202, {"accepted": 0})


def test_a_record_over_max_record_bytes_is_appended_cut_for_the_dead_letters(
    served: Served,
) -> None:
    big = orjson.dumps({"user_id": "u1", "note": "x" * 400})
    r = httpx.post(f"{served.url}/v1/events/clicks", content=big)
    assert (r.status_code, r.json()) == (202, {"accepted": 1})
    [(payload, original_size)] = served.records(Stream.CLICKS)[framing.partition_of("u1", 3)]
    assert original_size == len(big)  # the processor's payload_too_large dead letter
    assert big.startswith(payload)  # its head is kept as evidence


@pytest.mark.parametrize(
    ("body", "headers", "status", "error"),
    [
        (b"x" * 5000, {}, 413, "body_too_large"),
        (gzip.compress(b"\n" * 5000, mtime=0), {"Content-Encoding": "gzip"}, 413, "body_too_large"),
        (b"\n".join([b"{}"] * 6), {}, 413, "too_many_records"),
        (b"\x1f\x8b not gzip", {"Content-Encoding": "gzip"}, 400, "invalid_body"),
        (
            gzip.compress(b"{}\n" * 20, mtime=0)[:-6],
            {"Content-Encoding": "gzip"},
            400,
            "invalid_body",
        ),
        (b"[{}, ", {}, 400, "invalid_body"),
        (b"{}", {"Content-Type": "application/json", "X": "1"}, 202, None),
        (b"7", {"Content-Type": "application/json"}, 400, "invalid_body"),
        (b"{}", {"Content-Encoding": "br"}, 415, "unsupported_encoding"),
    ],
)
def test_refused_bodies_append_nothing(
    served: Served, body: bytes, headers: dict[str, str], status: int, error: str | None
) -> None:
    r = httpx.post(f"{served.url}/v1/events/clicks", content=body, headers=headers)
    assert r.status_code == status, r.text
    if error is None:
        assert served.payloads(Stream.CLICKS) == [b"{}"]
        return
    assert r.json()["error"] == error
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]
    assert served.payloads(Stream.CLICKS) == []


def test_a_body_over_the_limit_without_content_length_is_refused(served: Served) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"{}\n" * 200

    r = httpx.post(f"{served.url}/v1/events/clicks", content=chunks())
    assert (r.status_code, r.json()["error"]) == (413, "body_too_large")
    assert served.payloads(Stream.CLICKS) == []


def test_an_unknown_stream_is_404(served: Served) -> None:
    r = httpx.post(f"{served.url}/v1/events/views", content=b"{}")
    assert r.status_code == 404
    assert r.json() == {
        "error": "not_found",
        "detail": "unknown stream 'views': use one of impressions, clicks, conversions",
    }


# --- browser endpoints -------------------------------------------------------------------
def test_the_pixel_appends_an_impression_and_answers_an_uncached_gif(served: Served) -> None:
    before = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    params = {"ad_id": "12", "user_id": "u5", "platform": "web", "location": "DE"}
    r = httpx.get(f"{served.url}/v1/pixel.gif", params={**params, "event_id": "imp-1"})
    after = datetime.now(UTC).replace(tzinfo=None)
    assert r.status_code == 200
    assert r.content == PIXEL_GIF and len(PIXEL_GIF) == 43
    assert r.headers["content-type"] == "image/gif"
    assert "no-store" in r.headers["cache-control"] and r.headers["expires"] == "0"
    [payload] = served.payloads(Stream.IMPRESSIONS)
    record = orjson.loads(payload)
    stamp = datetime.strptime(record.pop("impression_timestamp"), "%Y-%m-%d %H:%M:%S")
    assert before <= stamp <= after
    assert record == {**params, "ad_id": 12, "event_id": "imp-1"}
    # Without an event_id, each view gets a new one.
    httpx.get(f"{served.url}/v1/pixel.gif", params=params)
    httpx.get(f"{served.url}/v1/pixel.gif", params=params)
    ids = {orjson.loads(p)["event_id"] for p in served.payloads(Stream.IMPRESSIONS)}
    assert len(ids) == 3


def test_the_fastapi_routes_answer_the_pixel_and_the_click_as_the_served_app(
    served: Served, tmp_path: Path
) -> None:
    """The routes of ``collector_router`` (the API description's; the served app answers
    ahead of them) give the same status, headers and body for the same requests (their
    parameter errors are FastAPI's own 422)."""
    from fastapi import FastAPI

    config = Settings(
        home=tmp_path / "routes",
        partitions=PARTITIONS,
        collector_redirect_hosts=["shop.example", "*.ads.example"],
    )
    transport = open_transport(config)
    collector = Collector(transport, config)
    routes = FastAPI()
    routes.include_router(collector_router(collector))
    shop = "https%3A%2F%2Fshop.example%2Fp"
    queries = [
        "/v1/pixel.gif?ad_id=3&user_id=u1&platform=web&location=FR&event_id=p1",
        f"/v1/click?ad_id=3&user_id=u1&to={shop}&event_id=c1",
        "/v1/click?ad_id=3&to=https://evil.example/",  # 400
    ]

    async def ask() -> list[httpx.Response]:
        asgi = httpx.ASGITransport(app=routes)
        async with httpx.AsyncClient(transport=asgi, base_url="http://127.0.0.1") as client:
            return [await client.get(query) for query in queries]

    def without_time(payloads: list[bytes]) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in orjson.loads(p).items() if not k.endswith("_timestamp")}
            for p in payloads
        ]

    try:
        for query, mine in zip(queries, asyncio.run(ask()), strict=True):
            theirs = httpx.get(served.url + query)
            assert (mine.status_code, mine.content) == (theirs.status_code, theirs.content)
            drop = {"date", "server"}  # uvicorn's own
            assert sorted(h for h in mine.headers.multi_items() if h[0] not in drop) == sorted(
                h for h in theirs.headers.multi_items() if h[0] not in drop
            ), query
        routed = Served("", transport, collector)
        for stream in (Stream.IMPRESSIONS, Stream.CLICKS):
            assert without_time(routed.payloads(stream)) == without_time(served.payloads(stream))
        assert len(routed.payloads(Stream.CLICKS)) == 1
    finally:
        collector.close()
        transport.close()


def test_a_click_is_appended_then_redirected_to_an_allowed_host(served: Served) -> None:
    to = "https://shop.example/landing?x=1&email=a@b.example"
    params = {"ad_id": "3", "user_id": "u1", "platform": "ios", "location": "US", "to": to}
    r = httpx.get(f"{served.url}/v1/click", params=params)
    assert (r.status_code, r.headers["location"]) == (302, to)
    r = httpx.get(f"{served.url}/v1/click", params={**params, "to": "http://a.b.ads.example/"})
    assert (r.status_code, r.headers["location"]) == (302, "http://a.b.ads.example/")
    records = [orjson.loads(p) for p in served.payloads(Stream.CLICKS)]
    assert len(records) == 2
    assert {k: records[0][k] for k in ("ad_id", "user_id", "platform", "location")} == {
        "ad_id": 3,
        "user_id": "u1",
        "platform": "ios",
        "location": "US",
    }
    assert "click_timestamp" in records[0]


def test_a_landing_url_outside_ascii_is_redirected_percent_encoded(served: Served) -> None:
    params = {"ad_id": "3", "user_id": "u1", "to": "https://shop.example/größe?q=ß€#ü"}
    r = httpx.get(f"{served.url}/v1/click", params=params)
    assert r.status_code == 302
    assert r.headers["location"] == "https://shop.example/gr%C3%B6%C3%9Fe?q=%C3%9F%E2%82%AC#%C3%BC"
    assert len(served.payloads(Stream.CLICKS)) == 1


@pytest.mark.parametrize(
    "to",
    [
        "//evil.com",
        "//shop.example",
        "https://evil.com@shop.example",
        "https://shop.example@evil.com",
        "javascript:alert(1)",
        "JavaScript://shop.example/%0aalert(1)",
        "https://shop.example\\@evil.com",
        "https:\\\\evil.com",
        "/\\evil.com",
        "https://evil.com",
        "https://shop.example.evil.com/",
        "https://evilshop.example/",
        "https://ads.example/",  # '*.ads.example' allows subdomains only
        "https:// shop.example/",
        "https://shop.example\t.evil.com/",
        "https://shop.example:99999/",
        "ftp://shop.example/",
        "shop.example",
        "",
    ],
)
def test_a_click_to_a_host_not_allowed_is_refused_and_not_counted(served: Served, to: str) -> None:
    r = httpx.get(f"{served.url}/v1/click", params={"ad_id": "3", "user_id": "u1", "to": to})
    assert r.status_code == 400, r.headers.get("location")
    assert "location" not in r.headers
    assert r.json()["error"] == "redirect_not_allowed"
    assert served.payloads(Stream.CLICKS) == []


def test_no_redirect_is_allowed_without_a_list() -> None:
    with pytest.raises(Exception, match="collector_redirect_hosts"):
        allowed_redirect("https://shop.example/", [])


# --- durability ---------------------------------------------------------------------------
def test_with_fsync_concurrent_requests_share_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: every 202 follows an fsync that began after its append, and 16
    requests at once need far fewer than 16 fsyncs."""
    synced: list[int] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        # os.fsync is patched for every thread of the worker: count this server's only
        if not os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
            real_fsync(fd)
            return
        time.sleep(0.05)  # a disk: requests arriving meanwhile wait for the next round
        real_fsync(fd)
        synced.append(fd)

    statuses: list[int] = []
    with serve(tmp_path, fsync=True) as served:
        monkeypatch.setattr(os, "fsync", slow_fsync)
        start = threading.Barrier(16)

        def post(user: str) -> None:
            start.wait()
            r = httpx.post(f"{served.url}/v1/events/clicks", content=_click(user))
            statuses.append(r.status_code)

        threads = [threading.Thread(target=post, args=(f"u{i}",)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [202] * 16
        assert len(served.payloads(Stream.CLICKS)) == 16
        # Each flush round syncs at most one file per partition.
        assert 1 <= len(synced) <= PARTITIONS * 4, synced


def test_a_failed_fsync_is_not_counted_as_durable(tmp_path: Path) -> None:
    """An append whose fsync failed is answered with the error, and the appends it
    covered wait for a flush that succeeds: none of them is acknowledged by it."""

    class FailingFirstFlush(InMemoryProducer):
        failures = 1

        def flush(self) -> None:
            if FailingFirstFlush.failures:
                FailingFirstFlush.failures -= 1
                raise OSError(5, "Input/output error")

    class Transport(InMemoryTransport):
        def producer(self) -> InMemoryProducer:
            return FailingFirstFlush(self)

    collector = Collector(Transport(PARTITIONS), Settings(home=tmp_path, fsync=True))
    with pytest.raises(OSError, match="Input/output"):
        collector.append(Stream.CLICKS, [_click("u1")])
    assert collector._durable == 0
    assert collector.append(Stream.CLICKS, [_click("u2")]) == 1
    assert collector._durable == 2


# --- the client ---------------------------------------------------------------------------
def test_the_client_sends_records_in_batches_as_they_are(served: Served) -> None:
    records: list[bytes | dict[str, object]] = [_click(f"u{i}") for i in range(10)]
    records[3] = {"event_id": "mine", "user_id": "u3"}
    records[4] = b"not json"
    with CollectorClient(served.url, batch_records=4) as client:
        batches: list[int] = []
        assert client.send("clicks", records, on_batch=batches.append) == 10
    assert batches == [4, 4, 2]
    expected = [r if isinstance(r, bytes) else orjson.dumps(r) for r in records]
    assert served.payloads(Stream.CLICKS) == sorted(expected)


class LostAnswers:
    """Appends the first ``lost`` requests' records, then answers 503 as if the answer
    had been lost on the way: the client must send them again."""

    def __init__(self, app: ASGIApp, lost: int) -> None:
        self.app = app
        self.lost = lost
        self.state = getattr(app, "state", None)  # make_server reads the app's settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.lost == 0:
            await self.app(scope, receive, send)
            return
        self.lost -= 1

        async def swallow(message: Message) -> None:
            pass

        await self.app(scope, receive, swallow)
        body = b'{"error": "unavailable", "detail": "try again"}'
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": body})


def test_a_batch_whose_answer_was_lost_is_sent_again_as_it_was(
    tmp_path: Path,
) -> None:
    wrap: Callable[[ASGIApp], ASGIApp] = lambda app: LostAnswers(app, lost=2)  # noqa: E731
    with serve(tmp_path, wrap=wrap) as served:
        with CollectorClient(served.url, backoff_seconds=0.01) as client:
            assert client.send("clicks", [_click("u1"), _click("u2")]) == 2
            assert client.retries == 2
        stored = served.payloads(Stream.CLICKS)
    # Three identical copies of each: the processor derives one id per content (these
    # records have no event_id) and counts each once (test_collector_serve).
    assert stored == sorted([_click("u1"), _click("u2")] * 3)


def test_connection_errors_are_retried_until_retry_seconds(tmp_path: Path) -> None:
    sock = bind("127.0.0.1", 0)  # bound, never served: connections are refused
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    with CollectorClient(url, retry_seconds=0.5, backoff_seconds=0.02) as client:
        began = time.monotonic()
        with pytest.raises(CollectorSendError, match="gave up after 0.5 s of retries"):
            client.send("clicks", [_click("u1")])
        # It stops before a wait would end past retry_seconds, not after it.
        assert time.monotonic() - began < 0.5
        assert client.retries >= 2


def test_a_refused_batch_is_not_retried(served: Served) -> None:
    with CollectorClient(served.url, batch_records=6) as client:
        with pytest.raises(CollectorSendError, match="HTTP 413: .*too_many_records"):
            client.send("clicks", [_click(f"u{i}") for i in range(6)])
        assert client.retries == 0


def test_send_command_sends_jsonl_files_by_their_stream(served: Served, tmp_path: Path) -> None:
    clicks = tmp_path / "clicks.jsonl.gz"
    clicks.write_bytes(gzip.compress(b"\n".join(_click(f"u{i}") for i in range(7)) + b"\n"))
    other = tmp_path / "more.jsonl"
    other.write_bytes(_click("u8") + b"\n\n")
    result = CliRunner().invoke(
        cli,
        ["send", str(clicks), "--url", served.url, "--batch", "3"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"sent 7 clicks to {served.url} (0 retries)"
    assert len(served.payloads(Stream.CLICKS)) == 7
    result = CliRunner().invoke(cli, ["send", str(other), "--url", served.url])
    assert isinstance(result.exception, UserError)  # one line, from the entry point
    assert str(result.exception).startswith(f"cannot tell the stream of {other}: ")
    assert str(result.exception).endswith("give it with --stream")
    result = CliRunner().invoke(
        cli, ["send", str(other), "--url", served.url, "--stream", "impressions"]
    )
    assert result.exit_code == 0, result.output
    assert len(served.payloads(Stream.IMPRESSIONS)) == 1


# --- over Redis Streams -------------------------------------------------------------------
def test_over_redis_a_batch_the_transport_cannot_take_is_a_503_to_retry(tmp_path: Path) -> None:
    """Redis Streams: 202 after Redis took the records; with Redis unreachable (a proxy
    black-holes it) longer than infra_retry_seconds, 503 with Retry-After and no
    acknowledgement; once it is back, 202 again."""
    with (
        redis_prefix() as prefix,
        TcpProxy.for_url(REDIS_URL) as proxy,
        serve(
            tmp_path,
            transport_url=proxy.url(f"{REDIS_URL}?prefix={prefix}"),
            infra_timeout_seconds=0.5,
            infra_retry_seconds=0,
        ) as served,
    ):
        url = f"{served.url}/v1/events/clicks"
        r = httpx.post(url, content=_click("u1") + b"\n" + _click("u2"))
        assert (r.status_code, r.json()) == (202, {"accepted": 2})
        with proxy.paused():
            r = httpx.post(url, content=_click("u3"), timeout=30)
            assert r.status_code == 503
            assert r.headers["retry-after"] == "5"
            assert r.json()["error"] == "unavailable"
            assert str(tmp_path) not in r.text
            r = httpx.get(f"{served.url}/v1/pixel.gif", params={"user_id": "u4"}, timeout=30)
            assert r.status_code == 503
        r = httpx.post(url, content=_click("u3"), timeout=30)
        assert (r.status_code, r.json()) == (202, {"accepted": 1})
        assert served.payloads(Stream.CLICKS) == sorted([_click("u1"), _click("u2"), _click("u3")])


# --- keys ---------------------------------------------------------------------------------
def test_when_keys_are_required_posting_needs_a_write_key_and_the_pixel_none(
    tmp_path: Path,
) -> None:
    secrets: dict[str, str] = {}

    def required(warehouse: DuckDBWarehouse) -> Access:
        for scope in ("read", "write"):
            secrets[scope] = create_key(warehouse, scope, f"{scope} key")[1]
        return Access(required=True, ring=KeyRing.of(warehouse, 0))

    with serve(tmp_path, keys=required) as served:
        url = f"{served.url}/v1/events/clicks"
        r = httpx.post(url, content=_click("u1"))
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        r = httpx.post(url, content=_click("u1"), headers={"X-API-Key": secrets["read"]})
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        with CollectorClient(served.url, key=secrets["write"]) as client:
            assert client.send("clicks", [_click("u2")]) == 1
        with (
            CollectorClient(served.url) as client,
            pytest.raises(CollectorSendError, match="HTTP 401"),
        ):
            client.send("clicks", [_click("u3")])
        pixel = httpx.get(f"{served.url}/v1/pixel.gif", params={"user_id": "u4"})
        assert pixel.status_code == 200 and pixel.content == PIXEL_GIF
        assert served.payloads(Stream.CLICKS) == [_click("u2")]
        assert len(served.payloads(Stream.IMPRESSIONS)) == 1


# --- the plain ASGI paths and gathered appends ---------------------------------------------
def _without_plain_paths(app: Any) -> Any:
    """``app`` answering from its FastAPI routes only (before its first request): no
    plain ASGI layer, no front path ahead of the app."""
    app.user_middleware = [m for m in app.user_middleware if m.cls is not CollectorPaths]
    app.collector_front = None
    return app


ASGI_REQUESTS: list[tuple[str, str, dict[str, str], bytes]] = [
    ("GET", "/v1/pixel.gif?ad_id=3&user_id=u1&platform=web&location=FR", {}, b""),
    ("GET", "/v1/pixel.gif?user_id=%C3%BCser+1&ad_id=&ad_id=4&flag", {}, b""),
    ("GET", "/v1/pixel.gif?user_id=" + "x" * 257 + "&location=" + "y" * 300, {}, b""),
    ("GET", "/v1/click?ad_id=3&user_id=u1&to=https%3A%2F%2Fshop.example%2Fp%3Fa%3D1", {}, b""),
    ("GET", "/v1/click?ad_id=3&user_id=u1&to=https://evil.example/", {}, b""),
    ("GET", "/v1/click?ad_id=3&user_id=u1&to=//evil.example", {}, b""),
    ("GET", "/v1/click?ad_id=3", {}, b""),
    ("GET", "/v1/click?to=" + "a" * 2049 + "&platform=" + "p" * 257, {}, b""),
    ("POST", "/v1/events/clicks", {}, b'{"user_id": "u1"}\n{"user_id": "u2"}\nnot json'),
    ("POST", "/v1/events/clicks", {"content-type": "application/json"}, b'[{"a": 1}, 2]'),
    ("POST", "/v1/events/clicks", {"content-type": "application/json"}, b'{"a": 1}'),
    ("POST", "/v1/events/clicks", {"content-type": "application/json"}, b"[1, "),
    (
        "POST",
        "/v1/events/clicks",
        {"content-encoding": "gzip"},
        gzip.compress(b'{"a": 1}', mtime=0),
    ),
    ("POST", "/v1/events/clicks", {"content-encoding": "gzip"}, b"not gzip"),
    ("POST", "/v1/events/clicks", {"content-encoding": "br"}, b'{"a": 1}'),
    ("POST", "/v1/events/clicks", {}, b"{}\n" * 6),
    ("POST", "/v1/events/clicks", {}, b"x" * 5000),
    (
        "POST",
        "/v1/events/clicks",
        {"content-encoding": "gzip"},
        gzip.compress(b" " * 9000, mtime=0),
    ),
    ("POST", "/v1/events/views", {}, b'{"a": 1}'),
    ("POST", "/v1/events/", {}, b'{"a": 1}'),
    ("GET", "/v1/events/clicks", {}, b""),
]


def test_the_plain_asgi_paths_answer_as_the_fastapi_routes(tmp_path: Path) -> None:
    """Status, body and headers of every case, byte for byte (event ids aside)."""
    from adpulse.operations.serve import collector_app

    config = Settings(
        home=tmp_path,
        partitions=PARTITIONS,
        collector_max_body_bytes=4096,
        collector_max_records=5,
        collector_redirect_hosts=["shop.example"],
    )
    transport = open_transport(config)
    collector = Collector(transport, config)
    plain = collector_app(collector, config, Access.open())
    routes = _without_plain_paths(collector_app(collector, config, Access.open()))
    assert CollectorPaths in [m.cls for m in plain.user_middleware]
    assert CollectorPaths not in [m.cls for m in routes.user_middleware]

    async def answers(app: Any) -> list[tuple[int, bytes, dict[str, str]]]:
        out = []
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1")
        async with client:
            for method, path, headers, body in ASGI_REQUESTS:
                r = await client.request(method, path, headers=headers, content=body)
                kept = {k: v for k, v in r.headers.items() if k != "content-length"}
                assert r.headers.get("content-length", str(len(r.content))) == str(len(r.content))
                out.append((r.status_code, r.content, kept))
        return out

    try:
        got, expected = asyncio.run(answers(plain)), asyncio.run(answers(routes))
    finally:
        collector.close()
        transport.close()
    assert [g[0] for g in got] == [
        200, 200, 422, 302, 400, 400, 422, 422, 202, 202, 202, 400, 202, 400, 415, 413,
        413, 413, 404, 404, 405,
    ]  # fmt: skip
    assert got == expected
    assert got[3][2]["location"] == "https://shop.example/p?a=1"
    assert got[2][1] == (
        b'{"error":"invalid_parameter","detail":"user_id: String should have at most 256'
        b' characters; location: String should have at most 256 characters"}'
    )
    # Both apps appended the same records (each pixel and click with its own event id).
    records = [
        orjson.loads(p) for rows in _log(transport, config, Stream.IMPRESSIONS) for p in rows
    ]
    assert sorted(r["user_id"] for r in records) == ["u1", "u1", "üser 1", "üser 1"]
    assert {r["ad_id"] for r in records} == {3, 4}


def _log(transport: Transport, config: Settings, stream: Stream) -> list[list[bytes]]:
    reopened = open_transport(config)
    consumer = reopened.consumer()
    found = []
    for partition in range(PARTITIONS):
        chunk = consumer.poll(stream, partition, None, 1 << 24)
        found.append([] if chunk is None else framing.split_lines(chunk.data))
    consumer.close()
    reopened.close()
    return found


@pytest.mark.parametrize(("fsync", "records"), [(False, 2), (False, 70), (True, 2)])
def test_concurrent_requests_share_one_append_and_each_is_answered_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool, records: int
) -> None:
    """Small appends (embedded log, no fsync) gather on the event loop: one append at
    the end of the loop's turn; larger ones in a worker thread, one gathered group at a
    time; with fsync each request appends alone (and shares flushes: see
    test_with_fsync_concurrent_requests_share_fsyncs)."""
    config = Settings(home=tmp_path, partitions=PARTITIONS, fsync=fsync)
    transport = open_transport(config)
    collector = Collector(transport, config)
    assert collector.appends_inline is not fsync
    publishes: list[int] = []
    real_publish = collector_module.publish

    def counting_publish(*args: Any, **kwargs: Any) -> dict[int, int]:
        publishes.append(len(args[2]))
        time.sleep(0.01)  # a slow append: requests arriving meanwhile wait for the next
        return real_publish(*args, **kwargs)

    monkeypatch.setattr(collector_module, "publish", counting_publish)
    consumer = transport.consumer()

    def in_log(record: bytes) -> bool:
        for partition in range(PARTITIONS):
            chunk = consumer.poll(Stream.IMPRESSIONS, partition, None, 1 << 24)
            if chunk is not None and record in framing.split_lines(chunk.data):
                return True
        return False

    async def request(i: int) -> None:
        record = _click(f"u{i}")
        assert await collector.submit(Stream.IMPRESSIONS, [record] * records) == records
        assert in_log(record)  # appended before the answer

    async def requests() -> None:
        await asyncio.gather(*(request(i) for i in range(40)))
        await asyncio.gather(*(request(i) for i in range(40, 45)))

    try:
        asyncio.run(requests())
    finally:
        consumer.close()
        collector.close()
        transport.close()
    assert sum(publishes) == 45 * records
    assert collector.accepted[Stream.IMPRESSIONS] == 45 * records
    if fsync:
        assert publishes == [2] * 45
    elif records <= INLINE_RECORDS:  # one append per turn of the event loop
        assert publishes == [80, 10]
    else:
        assert publishes[0] == 40 * records and len(publishes) <= 3, publishes


def test_a_gathered_append_that_fails_fails_every_request_of_it_then_appends_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = Settings(home=tmp_path, partitions=PARTITIONS)
    transport = open_transport(config)
    collector = Collector(transport, config)
    real_publish = collector_module.publish
    failing = [True]

    def flaky_publish(*args: Any, **kwargs: Any) -> dict[int, int]:
        if failing[0]:
            raise OSError("No space left on device")
        return real_publish(*args, **kwargs)

    monkeypatch.setattr(collector_module, "publish", flaky_publish)

    async def post(i: int) -> int:
        try:
            return await append_or_503(collector, Stream.CLICKS, [_click(f"u{i}")])
        except CollectorError as exc:
            return exc.status

    async def rounds() -> tuple[list[int], list[int]]:
        first = await asyncio.gather(*(post(i) for i in range(5)))
        failing[0] = False
        return first, await asyncio.gather(*(post(i) for i in range(3)))

    try:
        first, second = asyncio.run(rounds())
    finally:
        collector.close()
        transport.close()
    assert (first, second) == ([503] * 5, [1, 1, 1])
    assert collector.accepted[Stream.CLICKS] == 3
    assert "could not append" in caplog.text


TRICKY_LINES = [
    _click("u1"),
    '{"user_id": "üser-日本", "ad_id": 2, "click_timestamp": "2026-11-29 08:00:00"}'.encode(),
    b'{"user_id": "u\\"quoted", "ad_id": 3}',
    b'{"meta": {"user_id": "nested"}, "ad_id": 4}',
    b'{"user_id": null, "ad_id": 5}',
    b'{"user_id": 9101, "ad_id": 6}',
    b'{"user_id": "u7", "ad_id": 7,',
    b"not json at all",
    b'{"a": 1e400, "user_id": "u8"}',
]


def test_tricky_records_are_partitioned_as_before_and_invalid_ones_dead_lettered(
    tmp_path: Path,
) -> None:
    from adpulse.runtime import open_runtime, processor_for

    def old_partition(line: bytes) -> int:  # the record-by-record rule (orjson)
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            return 0
        value = doc.get("user_id")
        if isinstance(value, int):
            value = str(value)
        return framing.partition_of(value if isinstance(value, str) else None, PARTITIONS)

    with serve(tmp_path) as served:
        r = httpx.post(f"{served.url}/v1/events/clicks", content=b"\n".join(TRICKY_LINES))
        assert (r.status_code, r.json()) == (202, {"accepted": len(TRICKY_LINES)})
        by_partition = served.records(Stream.CLICKS)
    for line in TRICKY_LINES:
        assert (line, None) in by_partition[old_partition(line)], line
    with open_runtime(Settings(home=tmp_path, partitions=PARTITIONS)) as rt:
        processor = processor_for(rt)
        processor.run(threading.Event(), until_caught_up=True)
        processor.close()
        letters = rt.warehouse.query(
            "SELECT payload, reason FROM dead_letters WHERE stream = 'clicks'"
        ).rows()
    reasons = {bytes(p): r for p, r in letters}
    for line in TRICKY_LINES[6:]:
        assert reasons[line] == "invalid_json", line
    assert len(reasons) == len(TRICKY_LINES) - 1  # only _click("u1") is a whole click


FRONT_REQUESTS: list[tuple[str, dict[str, str]]] = [
    ("/v1/pixel.gif?ad_id=3&user_id=u1&platform=web&location=FR", {}),  # front
    ("/v1/pixel.gif?user_id=%C3%BCser+1&ad_id=4", {"host": "collector.example"}),  # front
    ("/v1/pixel.gif?user_id=" + "x" * 257, {}),  # front: 422 from the collector
    ("/v1/click?ad_id=3&user_id=u1&to=https%3A%2F%2Fshop.example%2Fp", {}),  # front: 302
    ("/v1/click?ad_id=3&to=https://evil.example/", {}),  # front: 400
    ("/v1/pixel.gif?ad_id=3&user_id=u1", {"origin": "https://pub.example"}),  # CORS
    ("/v1/pixel.gif?ad_id=3&user_id=u1", {"host": "evil.example"}),  # 400 invalid_host
    ("/v1/pixel.gif?ad_id=3&ad_id=4", {}),  # 422 repeated parameter
    ("/v1/pixel.gif?user_id=" + "x" * 4100, {}),  # 414
    ("/v1/click?ad_id=3", {}),  # front: 422, "to" missing
]


def test_the_front_path_answers_and_counts_as_the_layers_of_the_app(tmp_path: Path) -> None:
    """The pixel and the click ahead of the app (``CollectorFront``) give every answer
    and every metric of the app's layers, byte for byte; requests a layer would refuse
    or change (a Host not allowed, an Origin under CORS, a repeated parameter, a long
    query string) go through the layers."""
    from dataclasses import replace

    from scrapes import scrape

    from adpulse.telemetry import new_registry

    config = Settings(
        home=tmp_path,
        partitions=PARTITIONS,
        collector_redirect_hosts=["shop.example"],
        cors_origins=["https://pub.example"],
    )
    transport = open_transport(config)
    collector = Collector(transport, config)
    access = replace(Access.open(), hosts=frozenset({"collector.example"}))
    taken: list[str] = []

    async def answers(app: Any) -> list[tuple[int, bytes, dict[str, str]]]:
        out = []
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1")
        async with client:
            for path, headers in FRONT_REQUESTS:
                r = await client.get(path, headers=headers)
                out.append((r.status_code, r.content, dict(r.headers)))
        return out

    def histogram(registry: Any) -> dict[Any, float]:
        return {
            labels: value
            for (name, labels), value in scrape(registry).items()
            if name == "adpulse_http_request_duration_seconds_count"
        }

    with DuckDBWarehouse(tmp_path / "warehouse.duckdb") as warehouse:
        warehouse.create_schema()
        registries = new_registry(), new_registry()
        fronted, layered = (
            create_app(warehouse, config, collector=collector, access=access, registry=r)
            for r in registries
        )
        front = fronted.collector_front
        assert front is not None
        answer = front.answer

        async def counted(scope: Scope, params: Any, send: Send) -> None:
            taken.append(scope["path"] + "?" + scope["query_string"].decode())
            await answer(scope, params, send)

        front.answer = counted  # type: ignore[method-assign]
        layered.collector_front = None
        try:
            got, expected = asyncio.run(answers(fronted)), asyncio.run(answers(layered))
        finally:
            collector.close()
            transport.close()
    assert [g[0] for g in got] == [200, 200, 422, 302, 400, 200, 400, 422, 414, 422]
    for g, e in zip(got, expected, strict=True):
        assert g == e
    assert got[5][2]["access-control-allow-origin"] == "https://pub.example"
    assert "access-control-allow-origin" not in got[0][2]
    assert taken == [FRONT_REQUESTS[i][0] for i in (0, 1, 2, 3, 4, 9)]
    counts = histogram(registries[0])
    assert counts == histogram(registries[1])
    assert counts[(("method", "GET"), ("route", "/v1/pixel.gif"), ("status", "200"))] == 3
    assert counts[(("method", "GET"), ("route", "/v1/click"), ("status", "422"))] == 1
    assert counts[(("method", "GET"), ("route", "unmatched"), ("status", "400"))] == 1


# --- the front path in uvicorn's protocol (adpulse.serving.http.front.front_protocol) ---
class _Plain:
    """``app`` behind a plain ASGI callable (with its settings): make_server then keeps
    uvicorn's own protocol, and the front path stays the app's (``FrontedFastAPI``)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def _read_answer(conn: Any, head_only: bool = False) -> bytes:
    """One HTTP/1.1 answer read from a socket's file (the head, then
    ``content-length`` bytes), with its ``date`` header's value blanked."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = conn.readline()
        assert line, f"the connection closed after {head!r}"
        head += line
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b": ")
        if name == b"content-length":
            length = int(value)
    body = b"" if head_only else conn.read(length)
    lines = [b"date: -" if x.startswith(b"date: ") else x for x in head.split(b"\r\n")]
    return b"\r\n".join(lines) + body


def _request(target: str, method: str = "GET", version: str = "1.1", **headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "host: 127.0.0.1"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


#: (request, answered without a body) in the order sent; each is compared byte for byte
#: between the server with the front protocol and uvicorn's own.
PROTOCOL_REQUESTS: list[tuple[bytes, bool]] = [
    (_request("/v1/pixel.gif?ad_id=3&user_id=u1&platform=web&location=FR&event_id=p1"), False),
    (_request("/v1/pixel.gif?user_id=%C3%BCser+1&ad_id=4&event_id=p2"), False),
    (_request("/v1/pixel.gif?user_id=" + "x" * 257), False),  # 422
    (_request("/v1/click?ad_id=3&user_id=u1&to=https%3A%2F%2Fshop.example%2Fp&event_id=c1"), False),
    (_request("/v1/click?ad_id=3&to=https://evil.example/"), False),  # 400
    (_request("/v1/click?ad_id=3"), False),  # 422: no "to"
    (_request("/v1/pixel.gif?ad_id=3&event_id=o1", origin="https://pub.example"), False),  # CORS
    (_request("/v1/pixel.gif?ad_id=3").replace(b"127.0.0.1", b"evil.example"), False),  # 400
    (_request("/v1/pixel.gif?ad_id=3&ad_id=4"), False),  # 422 repeated
    (_request("/v1/pixel.gif?user_id=" + "x" * 4100), False),  # 414
    (_request("/v1/pixel.gif?ad_id=3", "POST", content_length="0"), False),  # 405
    (_request("/v1/pixel.gif?ad_id=3&event_id=h1", "HEAD"), True),  # 405 from the app
    (_request("/v1/pixel.gif?ad_id=3&event_id=b1", content_length="0"), False),  # no body
    (_request("/v1/pixel.gif?ad_id=3&event_id=b2", content_length="2") + b"xx", False),  # body
    (_request("/v1/pixel.gif?ad_id=5&event_id=p3"), False),
]
#: The event ids the requests above append to each stream (the front's and the app's).
PROTOCOL_IMPRESSIONS = ["b1", "b2", "o1", "p1", "p2", "p3"]


@contextmanager
def _front_and_plain(tmp_path: Path) -> Iterator[tuple[Served, Served]]:
    from dataclasses import replace

    config: dict[str, Any] = {
        "collector_redirect_hosts": ["shop.example"],
        "cors_origins": ["https://pub.example"],
    }
    access = replace(Access.open(), hosts=frozenset({"collector.example"}))
    with (
        serve(tmp_path / "front", keys=lambda _: access, **config) as front,
        serve(tmp_path / "plain", _Plain, keys=lambda _: access, **config) as plain,
    ):
        yield front, plain


def _event_ids(served: Served, stream: Stream) -> list[str]:
    return sorted(orjson.loads(p)["event_id"] for p in served.payloads(stream))


def _answers(url: str, requests: list[tuple[bytes, bool]], pipelined: bool) -> list[bytes]:
    """The answers to ``requests`` over one keep-alive connection: each sent once the
    previous is answered, or all at once (pipelined)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        conn = sock.makefile("rb")
        if pipelined:
            sock.sendall(b"".join(r for r, _ in requests))
            return [_read_answer(conn, head_only) for _, head_only in requests]
        out = []
        for request, head_only in requests:
            sock.sendall(request)
            out.append(_read_answer(conn, head_only))
        return out


@pytest.mark.parametrize("pipelined", [False, True])
def test_the_protocol_answers_the_pixel_and_the_click_as_the_app_does(
    tmp_path: Path, pipelined: bool
) -> None:
    """The same bytes, statuses and headers (but the date) from the front protocol as
    from uvicorn's own with the app, over one keep-alive connection, one request after
    another or pipelined; every pixel and click acknowledged is in the log, once."""
    with _front_and_plain(tmp_path) as (front, plain):
        taken: list[str] = []
        view = front.app.collector_front.paths.browser_view

        def counted(path: str, params: dict[str, str | None]) -> Any:
            taken.append(path)
            return view(path, params)

        front.app.collector_front.paths.browser_view = counted
        answer = front.app.collector_front.answer

        async def through_app(scope: Scope, params: Any, send: Send) -> None:
            taken.append("app")
            await answer(scope, params, send)

        front.app.collector_front.answer = through_app
        got = _answers(front.url, PROTOCOL_REQUESTS, pipelined)
        expected = _answers(plain.url, PROTOCOL_REQUESTS, pipelined)
        assert [g.split(b"\r\n", 1)[0] for g in got] == [
            b"HTTP/1.1 %d %s" % (status, phrase)
            for status, phrase in [
                (200, b"OK"), (200, b"OK"), (422, b"Unprocessable Entity"), (302, b"Found"),
                (400, b"Bad Request"), (422, b"Unprocessable Entity"), (200, b"OK"),
                (400, b"Bad Request"), (422, b"Unprocessable Entity"),
                (414, b"Request-URI Too Long"), (405, b"Method Not Allowed"),
                (405, b"Method Not Allowed"), (200, b"OK"), (200, b"OK"), (200, b"OK"),
            ]
        ]  # fmt: skip
        assert got == expected
        assert got[0].endswith(b"content-length: 43\r\nvary: Origin\r\n\r\n" + PIXEL_GIF)
        assert b"access-control-allow-origin: https://pub.example" in got[6]
        # The front's requests: answered by the protocol but for the one with a body
        # (the app's front path); the others go through the app's layers (not counted).
        # Pipelined behind a pending answer, a request waits its turn as uvicorn's do.
        pixel, click = "/v1/pixel.gif", "/v1/click"
        if not pipelined:
            assert taken == [pixel] * 3 + [click] * 3 + [pixel, "app", pixel, pixel]
        else:
            assert taken == [pixel] + ["app", pixel] * 2 + ["app", click] * 3 + ["app", pixel] * 3
        for served in (front, plain):
            assert _event_ids(served, Stream.IMPRESSIONS) == PROTOCOL_IMPRESSIONS
            assert _event_ids(served, Stream.CLICKS) == ["c1"]


def test_the_protocol_closes_as_uvicorn_does(tmp_path: Path) -> None:
    """HTTP/1.0 and ``Connection: close`` get ``connection: close`` and the connection
    ends; a client gone before its answer leaves the server answering the others, and
    its acknowledged-or-not pixel appended once."""
    import socket

    requests = [
        _request("/v1/pixel.gif?ad_id=3&event_id=v10", version="1.0"),
        _request("/v1/pixel.gif?ad_id=3&event_id=close", connection="close"),
    ]
    answers_of: dict[str, list[bytes]] = {}
    with _front_and_plain(tmp_path) as (front, plain):
        for served in (front, plain):
            host, port = served.url.removeprefix("http://").split(":")
            answers = []
            for request in requests:
                with socket.create_connection((host, int(port)), timeout=10) as sock:
                    sock.sendall(request)
                    answers.append(_read_answer(sock.makefile("rb")))
                    assert sock.recv(1) == b""  # closed by the server
            assert all(b"\r\nconnection: close\r\n" in a for a in answers)
            answers_of[served.url] = answers
            for i in range(20):  # gone before the answer
                with socket.create_connection((host, int(port)), timeout=10) as sock:
                    sock.sendall(_request(f"/v1/pixel.gif?ad_id=3&event_id=gone{i}"))
            r = httpx.get(f"{served.url}/v1/pixel.gif?event_id=after")
            assert (r.status_code, r.content) == (200, PIXEL_GIF)
        assert answers_of[front.url] == answers_of[plain.url]
        gone = sorted(["after", "close", "v10", *(f"gone{i}" for i in range(20))])
        for served in (front, plain):
            deadline = time.monotonic() + 10
            while _event_ids(served, Stream.IMPRESSIONS) != gone and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _event_ids(served, Stream.IMPRESSIONS) == gone
