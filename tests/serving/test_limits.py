"""Connection limits of a real uvicorn server (:mod:`adpulse.serving.limits`): slow or
oversized request headers, idle connections, and live streams per client address."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from adpulse.config import Settings
from adpulse.serving import api
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A server with short limits; yields (host, port)."""
    settings = Settings(
        home=tmp_path,
        http_header_timeout_seconds=0.5,
        http_keep_alive_seconds=0.3,
        http_max_header_bytes=4096,
        stream_clients_per_address=2,
    )
    with DuckDBWarehouse(tmp_path / "w.duckdb") as wh:
        wh.create_schema()
        app = api.create_app(wh, settings, refresh_seconds=0.1)
        sock = api.bind("127.0.0.1", 0)
        srv = api.make_server(app)
        thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        host, port = sock.getsockname()[:2]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{host}:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        try:
            yield host, port
        finally:
            api.stop_server(srv, thread)
            sock.close()


def _closed_after(conn: socket.socket, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closed ``conn`` (reading everything it sent)."""
    conn.settimeout(limit)
    start = time.monotonic()
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
    return time.monotonic() - start, received


def test_a_connection_that_sends_nothing_is_closed(server: tuple[str, int]) -> None:
    with socket.create_connection(server) as conn:
        took, received = _closed_after(conn, 5)
    assert received == b""
    assert 0.4 < took < 2.0


def test_headers_sent_slowly_are_cut_off(server: tuple[str, int]) -> None:
    """One header line every 0.1 s keeps the connection busy, but not past the deadline."""
    with socket.create_connection(server) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        with pytest.raises(OSError):  # broken pipe / reset once the server closed it
            for i in range(50):
                conn.sendall(b"X-Slow-%d: y\r\n" % i)
                time.sleep(0.1)
        assert 0.4 < time.monotonic() - start < 2.0


def test_a_complete_request_is_answered_then_idle_connection_closed(
    server: tuple[str, int],
) -> None:
    with socket.create_connection(server) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        took, received = _closed_after(conn, 5)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.endswith(b'{"status":"ok"}')
    assert took < 1.5  # keep-alive 0.3 s


def test_each_response_restarts_the_keep_alive(server: tuple[str, int]) -> None:
    """Requests 0.2 s apart keep a connection open past the keep-alive (0.3 s) and the
    header deadline (0.5 s), each counted from the last response; idle, it closes."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(server) as conn:
        conn.settimeout(5)
        for _ in range(4):
            conn.sendall(request)
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):
                answer += conn.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
            time.sleep(0.2)
        took, received = _closed_after(conn, 5)
    assert received == b""
    assert took < 1.5  # closed 0.3 s after the last response (0.2 s slept of it)


def test_oversized_headers_get_431(server: tuple[str, int]) -> None:
    with socket.create_connection(server) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000)
        _, received = _closed_after(conn, 5)
    assert received.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")


def test_a_large_body_is_not_taken_for_large_headers(server: tuple[str, int]) -> None:
    host, port = server
    response = httpx.post(
        f"http://{host}:{port}/api/v1/session",
        content=b'{"key": "' + b"k" * 20_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422  # validation, not 431


def test_a_live_stream_outlives_the_header_deadline(server: tuple[str, int]) -> None:
    host, port = server
    with httpx.stream("GET", f"http://{host}:{port}/api/v1/stream", timeout=5) as response:
        assert response.status_code == 200
        start, updates = time.monotonic(), 0
        for line in response.iter_lines():
            updates += line.startswith("event: update")
            if time.monotonic() - start > 1.5:
                break
    assert updates >= 3


def test_live_streams_per_address_are_capped(server: tuple[str, int]) -> None:
    host, port = server
    url = f"http://{host}:{port}/api/v1/stream"
    with ExitStack() as streams:
        for _ in range(2):
            opened = streams.enter_context(httpx.stream("GET", url, timeout=5))
            assert opened.status_code == 200
        refused = httpx.get(url, timeout=5)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "10"
        assert refused.json()["error"] == "too_many_requests"
        assert "stream_clients_per_address" in refused.json()["detail"]
    # closed streams free their places (the server notices the disconnect shortly)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with httpx.stream("GET", url + "?max_events=1", timeout=5) as again:
            if again.status_code == 200:
                break
        time.sleep(0.1)
    assert again.status_code == 200


def test_live_streams_per_key_and_address_are_capped() -> None:
    from fastapi import HTTPException

    from adpulse.serving.queries import Filters

    async def run(fn: object) -> None:
        return None

    feed = api.LiveFeed(dict, lambda f: {}, 1.0, run, per_address=3, per_key=2)
    f = Filters()
    first = feed.subscribe(f, "10.0.0.1", "key1")
    feed.subscribe(f, "10.0.0.1", "key1")
    with pytest.raises(HTTPException) as by_key:
        feed.subscribe(f, "10.0.0.2", "key1")
    assert (by_key.value.status_code, by_key.value.headers) == (429, {"Retry-After": "10"})
    assert by_key.value.detail.startswith("2 live streams are open for key key1 already")
    assert "stream_clients_per_key" in by_key.value.detail
    feed.subscribe(f, "10.0.0.1", "key2")  # another key, third stream of this address
    with pytest.raises(HTTPException) as by_address:
        feed.subscribe(f, "10.0.0.1", None)
    assert by_address.value.detail.startswith("3 live streams are open from your address")
    feed.subscribe(f, "10.0.0.2", None)
    assert feed.clients == 4
    feed.unsubscribe(f, first)  # frees a place of its key and of its address
    feed.subscribe(f, "10.0.0.1", "key1")
    assert feed.clients == 4


def test_the_stream_counts_streams_by_the_key_it_was_opened_with(tmp_path: Path) -> None:
    from adpulse.serving.auth import KeyRing, access_for, create_key

    settings = Settings(home=tmp_path, stream_clients_per_key=1)
    with DuckDBWarehouse(tmp_path / "w.duckdb") as wh:
        wh.create_schema()
        keys = [create_key(wh, "read")[1] for _ in range(2)]
        access = access_for("required", "127.0.0.1", KeyRing.of(wh, 5))
        app = api.create_app(wh, settings, refresh_seconds=0.1, access=access)
        sock = api.bind("127.0.0.1", 0)
        srv = api.make_server(app)
        thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        url = api.url_of(sock) + "api/v1/stream"
        try:
            with httpx.stream("GET", url, headers={"X-API-Key": keys[0]}, timeout=5) as one:
                assert one.status_code == 200
                again = httpx.get(url, headers={"X-API-Key": keys[0]}, timeout=5)
                assert again.status_code == 429
                assert "for key " in again.json()["detail"]
                with httpx.stream("GET", url, headers={"X-API-Key": keys[1]}, timeout=5) as two:
                    assert two.status_code == 200
        finally:
            api.stop_server(srv, thread)
            sock.close()


class _Recorded:
    """A transport that records what is written and whether it was closed."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_a_response_head_leaves_with_its_body_in_one_write() -> None:
    import asyncio

    from adpulse.serving.limits import OneWriteResponses

    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"

    async def run() -> list[list[bytes]]:
        seen = []
        inner = _Recorded()
        transport = OneWriteResponses(inner)
        transport.write(head)  # held...
        seen.append(list(inner.writes))
        transport.write(b"ok")  # ...and sent with the body
        seen.append(list(inner.writes))
        transport.write(head)  # a head with no body at once (HEAD, a stream)...
        await asyncio.sleep(0)  # ...leaves at the event loop's next turn
        seen.append(list(inner.writes))
        transport.write(b"data: 1\n\n")  # a body part alone goes at once
        transport.write(head)
        transport.close()  # closing sends what is held first
        seen.append(list(inner.writes))
        assert inner.closed and transport.is_closing()  # delegated to the transport
        return seen

    seen = asyncio.run(run())
    assert seen == [
        [],
        [head + b"ok"],
        [head + b"ok", head],
        [head + b"ok", head, b"data: 1\n\n", head],
    ]
