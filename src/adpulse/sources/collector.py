"""The HTTP event collector: the front door for ad servers, apps and web pages.

``POST /v1/events/{stream}`` appends a batch of records (newline-delimited JSON or a JSON
array, optionally gzip-compressed) to the configured transport and answers ``202
{"accepted": N}`` only once they are durably appended; ``GET /v1/pixel.gif`` (an
impression) and ``GET /v1/click`` (a click, then a ``302`` to an allowed landing page)
serve browsers. See ``docs/collector.md``.

The collector stays cheap: records pass through as they came (validation happens in the
processor, which dead-letters what is wrong), partitioned by ``user_id`` with the one
producer code path (:func:`adpulse.sources.producer.publish`).

The endpoints are served twice: as plain ASGI (:class:`CollectorPaths`, mounted ahead of
FastAPI, which answers them in a fraction of FastAPI's time) and as FastAPI routes
(:func:`collector_router`, for the OpenAPI description; their handlers answer through
the same :func:`browser_view` where no :class:`CollectorPaths` is mounted). Appends of
concurrent requests are gathered (:meth:`Collector.submit`): one append per stream for
all the requests of the moment, each answered once its records are appended.

Durability: the embedded log writes with ``write(2)`` straight to the segment files, so
a record is in the operating system's page cache, safe from a ``kill -9`` of the server,
before ``202``. With the ``fsync`` setting on, ``202`` waits for an ``fsync`` as well
(safe from a power loss); concurrent requests share one ``fsync`` (group commit). Over
Redis Streams, ``202`` follows the server's reply to the append; what survives a Redis
crash is Redis's own persistence setting (AOF ``appendfsync``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final
from urllib.parse import parse_qsl, quote, urlsplit

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.params import Depends
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from adpulse.config import Settings
from adpulse.contracts import ORIGINAL_TIMESTAMP_FORMAT, Stream
from adpulse.sources.producer import publish
from adpulse.telemetry import ROUTE_SCOPE
from adpulse.transport.base import Transport
from adpulse.transport.embedded import EmbeddedTransport

log = logging.getLogger(__name__)

COLLECTOR_PREFIX: Final = "/v1"

#: A transparent 1x1 GIF (the smallest valid one, 43 bytes).
PIXEL_GIF: Final = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00"
    b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
#: Browsers and proxies must ask again for every view, or impressions go uncounted.
NO_CACHE_HEADERS: Final = {
    "Cache-Control": "no-cache, no-store, must-revalidate, private, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
_NDJSON_TYPES: Final = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines")
_STREAM_NAMES: Final = frozenset(s.value for s in Stream)
_STREAMS: Final = ", ".join(s.value for s in Stream)


class CollectorError(Exception):
    """A request the collector refuses: answered as ``{"error": code, "detail": ...}``."""

    def __init__(
        self, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})
        if status == 503:
            self.headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))

    def response(self) -> Response:
        body = orjson.dumps({"error": self.code, "detail": self.detail})
        return Response(body, self.status, self.headers or None, media_type="application/json")

    async def send(self, send: Send) -> None:
        """Answer with this error as plain ASGI (the same bytes as :meth:`response`)."""
        headers, body = self.parts()
        await _send(send, self.status, headers, body)

    def parts(self) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The headers (``content-length`` last) and body of this error's answer."""
        body = orjson.dumps({"error": self.code, "detail": self.detail})
        headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()
        ]
        return [*_JSON_HEADERS, *headers, _length(body)], body


# --- request bodies --------------------------------------------------------------------
def gunzip(raw: bytes, max_bytes: int) -> bytes:
    """``raw`` decompressed (gzip), refusing output over ``max_bytes`` without producing
    it (a small "gzip bomb" cannot take the server's memory)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        body = inflater.decompress(raw, max_bytes + 1)
    except zlib.error as exc:
        raise CollectorError(
            400, "invalid_body", f"the body is not valid gzip ({exc}); send it as is, or gzip it"
        ) from None
    if len(body) > max_bytes:
        raise CollectorError(
            413,
            "body_too_large",
            f"the body is over {max_bytes} bytes once decompressed (setting"
            " collector_max_body_bytes); send smaller batches",
        )
    if not inflater.eof or inflater.unused_data:
        raise CollectorError(
            400, "invalid_body", "the gzip body is truncated or has data after its end"
        )
    return body


def split_records(body: bytes, content_type: str) -> list[bytes]:
    """The records of a body, each as raw bytes.

    A JSON array (``Content-Type: application/json``, or a body starting with ``[``
    under any other type but an NDJSON one) gives one record per element, re-encoded
    compactly; a single JSON object there is one record. Anything else is read as
    newline-delimited JSON: one record per non-blank line, passed through byte for byte
    (a broken line is the processor's to dead-letter, not a reason to refuse the batch).
    """
    media = content_type.split(";", 1)[0].strip().lower()
    start = body.lstrip()[:1]
    if media == "application/json" or (start == b"[" and media not in _NDJSON_TYPES):
        if not start:
            return []
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise CollectorError(
                400,
                "invalid_body",
                f"the body is not valid JSON ({exc}); send a JSON array of records, or one"
                " record per line with Content-Type: application/x-ndjson",
            ) from None
        if isinstance(value, list):
            return [orjson.dumps(item) for item in value]
        if isinstance(value, dict):
            return [orjson.dumps(value)]
        raise CollectorError(
            400, "invalid_body", "a JSON body must be an array of records or one record"
        )
    if b"\r" in body:
        body = body.replace(b"\r\n", b"\n")
    return [line for line in body.split(b"\n") if line and not line.isspace()]


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused (413) as soon as it is over ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > max_bytes:
            raise _too_large(max_bytes)
        parts.append(part)
    return b"".join(parts)


def _too_large(max_bytes: int) -> CollectorError:
    return CollectorError(
        413,
        "body_too_large",
        f"the body is over {max_bytes} bytes (setting collector_max_body_bytes); send"
        " smaller batches",
    )


def stream_of(name: str) -> Stream:
    """The stream ``POST /v1/events/{name}`` appends to (404 for another name)."""
    if name not in _STREAM_NAMES:
        raise CollectorError(404, "not_found", f"unknown stream {name!r}: use one of {_STREAMS}")
    return Stream(name)


def records_of(body: bytes, headers: Mapping[str, str], settings: Settings) -> list[bytes]:
    """The records of a posted body (its ``Content-Encoding`` undone), within the limits."""
    limit = settings.collector_max_body_bytes
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding == "gzip":
        body = gunzip(body, limit)
    elif encoding not in ("identity", ""):
        raise CollectorError(
            415,
            "unsupported_encoding",
            f"Content-Encoding {encoding!r}: send gzip or an uncompressed body",
        )
    records = split_records(body, headers.get("content-type", ""))
    if len(records) > settings.collector_max_records:
        raise CollectorError(
            413,
            "too_many_records",
            f"{len(records)} records in one request, at most"
            f" {settings.collector_max_records} (setting collector_max_records);"
            " send smaller batches",
        )
    return records


# --- appending -------------------------------------------------------------------------
class Collector:
    """Appends records to the transport for many concurrent requests.

    One producer (producers are not thread-safe) behind a lock: each append is a few
    ``write(2)`` calls. With ``fsync`` on, an append then waits until a flush that began
    after it has finished: the first waiter flushes for everyone appended so far while
    the others wait for it, so concurrent requests share one ``fsync`` (group commit).

    Requests go through :meth:`submit`, which gathers the records of the requests that
    arrive together into one append per stream (one ``write(2)`` per partition for many
    pixels), and answers each request once that append is durable.
    """

    def __init__(self, transport: Transport, settings: Settings) -> None:
        self.settings = settings
        self._producer = transport.producer()
        self._partitions = transport.partitions
        self._max_record_bytes = transport.max_record_bytes
        self._sync = settings.fsync
        self._append_lock = threading.Lock()
        self._appended = 0  # appends done (under _append_lock)
        self._durable = 0  # appends covered by a finished flush (under _flushed)
        self._flushing = False
        self._flushed = threading.Condition()
        self.accepted = dict.fromkeys(Stream, 0)
        #: An append is a few ``write(2)`` calls to the page cache, never a wait on a
        #: server or a disk: small ones run on the event loop (a hop to a worker thread
        #: costs more than their append).
        self.appends_inline = isinstance(transport, EmbeddedTransport) and not settings.fsync
        #: Requests waiting for the next gathered append (on the event loop's thread).
        self._waiting: list[tuple[Stream, Sequence[bytes], asyncio.Future[int]]] = []
        self._gathering = False  # a task appends self._waiting in worker threads
        self._inline_waiting: list[tuple[Stream, Sequence[bytes], asyncio.Future[int]]] = []

    def append(self, stream: Stream, payloads: Sequence[bytes]) -> int:
        """Append ``payloads`` to ``stream``; returns once they are durable (see module doc)."""
        if not payloads:
            return 0
        ticket = self._publish(stream, payloads)
        if self._sync:
            self._wait_durable(ticket)
        return len(payloads)

    def _publish(self, stream: Stream, payloads: Sequence[bytes]) -> int:
        with self._append_lock:
            publish(self._producer, stream, payloads, self._partitions, self._max_record_bytes)
            self._appended += 1
            self.accepted[stream] += len(payloads)
            return self._appended

    async def submit(self, stream: Stream, payloads: Sequence[bytes]) -> int:
        """:meth:`append`, gathered with the requests that arrive meanwhile (group commit).

        The first request to wait schedules one append for all that are waiting when it
        runs: at the end of this turn of the event loop for small appends that cannot
        block, else in a worker thread, while the requests arriving during it wait for
        the next one. Raises what the append raised, for every request of that append.
        With ``fsync`` each request appends on its own and the flushes are shared
        (:meth:`append`).
        """
        return await self.submit_soon(stream, payloads)

    def submit_soon(self, stream: Stream, payloads: Sequence[bytes]) -> asyncio.Future[int]:
        """:meth:`submit` without waiting: the future of its answer (for callers that
        answer from a callback, not from a coroutine of their own)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        if not payloads:
            done.set_result(0)
            return done
        if self._sync:
            # Each request appends in a worker thread and waits for a flush shared with
            # the others (:meth:`append`): measured faster with fsync than gathering.
            return asyncio.ensure_future(run_in_threadpool(self.append, stream, payloads))
        if self.appends_inline and len(payloads) <= INLINE_RECORDS and not self._gathering:
            # Small appends (pixels, clicks) on the event loop; never beside a worker's
            # append (which holds the producer's lock).
            self._inline_waiting.append((stream, payloads, done))
            if len(self._inline_waiting) == 1:
                loop.call_soon(self._append_waiting_inline)
        else:
            self._waiting.append((stream, payloads, done))
            if not self._gathering:
                self._gathering = True
                loop.create_task(self._append_waiting_in_threads())
        return done

    def _append_waiting_inline(self) -> None:
        waiting, self._inline_waiting = self._inline_waiting, []
        self._answer(waiting, self._publish_gathered(waiting))

    async def _append_waiting_in_threads(self) -> None:
        """Appends one gathered group after another in a worker thread, while the
        requests arriving meanwhile gather for the next one."""
        try:
            while self._waiting:
                waiting, self._waiting = self._waiting, []
                failed = await run_in_threadpool(self._publish_gathered, waiting)
                self._answer(waiting, failed)
        finally:
            self._gathering = False

    def _publish_gathered(
        self, waiting: list[tuple[Stream, Sequence[bytes], asyncio.Future[int]]]
    ) -> dict[Stream, BaseException]:
        """One append per stream for ``waiting``; returns what failed, by stream."""
        by_stream: dict[Stream, list[bytes]] = {}
        for stream, payloads, _ in waiting:
            by_stream.setdefault(stream, []).extend(payloads)
        failed: dict[Stream, BaseException] = {}
        for stream, payloads in by_stream.items():
            try:
                self._publish(stream, payloads)
            except Exception as exc:  # noqa: BLE001 - answered to the requests (503)
                failed[stream] = exc
        return failed

    @staticmethod
    def _answer(
        waiting: list[tuple[Stream, Sequence[bytes], asyncio.Future[int]]],
        failed: dict[Stream, BaseException],
    ) -> None:
        """Each request's answer: its count, or what failed (on the event loop)."""
        for stream, payloads, done in waiting:
            if done.done():  # the request went away (cancelled)
                continue
            error = failed.get(stream)
            if error is None:
                done.set_result(len(payloads))
            else:
                done.set_exception(error)

    def _wait_durable(self, ticket: int) -> None:
        with self._flushed:
            while self._durable < ticket:
                if not self._flushing:
                    self._flushing = True
                    break
                self._flushed.wait()
            else:
                return
        covered = 0
        try:
            with self._append_lock:  # the producer is not thread-safe
                appended = self._appended
                sync = self._producer.flush_in_two()
            sync()  # the fsync: requests arriving meanwhile append, for the next round
            covered = appended
        finally:
            # On failure a waiter takes over and flushes again (or fails in turn).
            with self._flushed:
                self._durable = max(self._durable, covered)
                self._flushing = False
                self._flushed.notify_all()

    def close(self) -> None:
        with self._append_lock:
            self._producer.close()


# --- browser endpoints -------------------------------------------------------------------
def server_time() -> str:
    """Now, in the original's timestamp format (UTC)."""
    second = int(time.time())
    if _server_time[0] != second:  # one strftime a second, not one per pixel
        text = datetime.fromtimestamp(second, UTC).strftime(ORIGINAL_TIMESTAMP_FORMAT)
        _server_time[:] = [second, text]
    return str(_server_time[1])


_server_time: list[Any] = [-1, ""]


#: The query parameters a pixel or a click record is made of (event_id last).
_RECORD_FIELDS: Final = ("ad_id", "user_id", "platform", "location", "event_id")


def browser_record(stream: Stream, params: dict[str, str | None]) -> bytes:
    """The record of a pixel view or a click: the given fields, the server's time, and
    the given ``event_id`` or a new one (each view is its own event). Missing or wrong
    fields are left for the processor to dead-letter, like any record."""
    record: dict[str, Any] = {"event_id": params.get("event_id") or uuid.uuid4().hex}
    for name in _RECORD_FIELDS[:-1]:
        value = params.get(name)
        if value is None:
            continue
        # ad_id is a number in the original's records; other text is the processor's
        # to reject as a wrong type.
        record[name] = int(value) if name == "ad_id" and value.isdigit() else value
    record[stream.timestamp_field] = server_time()
    return orjson.dumps(record)


#: What a URL may hold as it is (RFC 3986 reserved and unreserved, and "%"): every other
#: character of a landing URL is percent-encoded.
_URL_CHARACTERS: Final = ":/?#[]@!$&'()*+,;=%-._~"


def allowed_redirect(url: str, hosts: Sequence[str]) -> str:
    """``url`` if it is an absolute http(s) URL to an allowed host, else a 400.

    Allowed: a host equal to an entry, or a subdomain of an entry ``*.example.com``.
    Refused whatever the list: relative and scheme-relative URLs (``//evil.com``), other
    schemes (``javascript:``), user info (``https://evil.com@good.com``), backslashes,
    whitespace and control characters (which browsers read in their own ways).
    Characters outside ASCII in the path, query or fragment are returned percent-encoded
    (UTF-8), as a ``Location`` header must carry them.
    """

    def refuse(why: str) -> CollectorError:
        return CollectorError(400, "redirect_not_allowed", f"to={url!r}: {why}")

    if "\\" in url or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise refuse("backslashes, whitespace and control characters are not allowed")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        raise refuse(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise refuse("the landing URL must be an absolute http:// or https:// URL")
    if "@" in parts.netloc:
        raise refuse("user info ('name@') is not allowed in the landing URL")
    for entry in hosts:
        entry = entry.strip().lower()
        if host == entry or (entry.startswith("*.") and host.endswith(entry[1:])):
            return url if url.isascii() else quote(url, safe=_URL_CHARACTERS)
    raise refuse(
        f"host {host!r} is not in the setting collector_redirect_hosts; add it there to"
        " allow redirects to it"
    )


# --- the routes ---------------------------------------------------------------------------
#: Seconds a client is asked to wait when the transport did not take a batch.
RETRY_AFTER_SECONDS: Final = 5


#: Requests of at most this many records append on the event loop when appends cannot
#: block (:attr:`Collector.appends_inline`); larger ones in a worker thread, so that the
#: event loop goes on reading requests meanwhile.
INLINE_RECORDS: Final = 64


async def append_or_503(collector: Collector, stream: Stream, records: Sequence[bytes]) -> int:
    """:meth:`Collector.submit`; a transport failure (a server down beyond
    ``infra_retry_seconds``, a full disk) becomes a 503 the client retries, logged here
    with its cause (not sent: it may name server paths)."""
    try:
        return await collector.submit(stream, records)
    except Exception as exc:
        raise append_failed(exc, stream, len(records)) from exc


def append_failed(exc: BaseException, stream: Stream, records: int) -> CollectorError:
    """The 503 of a request whose append raised ``exc``, logged here with its cause (not
    sent: it may name server paths)."""
    log.error("the collector could not append %d %s records", records, stream, exc_info=exc)
    return CollectorError(
        503,
        "unavailable",
        f"the transport did not take the records ({type(exc).__name__}); nothing of"
        " this request is acknowledged: send it again (records with an event_id are"
        " counted once)",
    )


_Text = Annotated[str | None, Query(max_length=256)]


def collector_router(collector: Collector, post_dependencies: Sequence[Depends] = ()) -> APIRouter:
    """The collector's endpoints. ``post_dependencies`` guard ``POST /v1/events`` (the
    server's write key): the pixel and the click stay open, as in any ad tracker, since
    a browser showing an ad cannot keep a secret (a key in a page is public)."""
    router = APIRouter(prefix=COLLECTOR_PREFIX, tags=["collector"])
    settings = collector.settings

    @router.post("/events/{stream}", status_code=202, dependencies=list(post_dependencies))
    async def post_events(stream: str, request: Request) -> Response:
        """Append a batch of records (NDJSON or a JSON array, optionally gzip) to a stream."""
        try:
            known = stream_of(stream)
            body = await read_body(request, settings.collector_max_body_bytes)
            records = records_of(body, request.headers, settings)
            accepted = await append_or_503(collector, known, records)
        except CollectorError as exc:
            return exc.response()
        return Response(orjson.dumps({"accepted": accepted}), 202, media_type="application/json")

    @router.get("/pixel.gif")
    async def pixel(
        ad_id: _Text = None,
        user_id: _Text = None,
        platform: _Text = None,
        location: _Text = None,
        event_id: _Text = None,
    ) -> Response:
        """An impression: appends it, answers a 1x1 transparent GIF that is never cached."""
        params = {"ad_id": ad_id, "user_id": user_id, "platform": platform}
        params |= {"location": location, "event_id": event_id}
        return await _browser_response(collector, PIXEL_PATH, params)

    @router.get("/click")
    async def click(
        to: Annotated[str, Query(max_length=2048)],
        ad_id: _Text = None,
        user_id: _Text = None,
        platform: _Text = None,
        location: _Text = None,
        event_id: _Text = None,
    ) -> Response:
        """A click: appends it, then redirects (302) to ``to`` if its host is allowed."""
        params = {"to": to, "ad_id": ad_id, "user_id": user_id, "platform": platform}
        params |= {"location": location, "event_id": event_id}
        return await _browser_response(collector, CLICK_PATH, params)

    return router


async def _browser_response(
    collector: Collector, path: str, params: dict[str, str | None]
) -> Response:
    """The FastAPI routes' answer to a pixel or click: :func:`browser_view`, appended."""
    try:
        view = browser_view(path, params, collector.settings.collector_redirect_hosts)
        await append_or_503(collector, view.stream, [view.record])
    except CollectorError as exc:
        return exc.response()
    response = Response(view.body, view.status)
    response.raw_headers = list(view.headers)
    return response


# --- the same endpoints as plain ASGI, ahead of FastAPI -------------------------------------
#: Checks a request's write key; raises :class:`CollectorError` (401, 403, 429) to refuse.
WriteKeyCheck = Callable[[Scope], Awaitable[None]]

_EVENTS_PATH: Final = COLLECTOR_PREFIX + "/events/"
_EVENTS_ROUTE: Final = COLLECTOR_PREFIX + "/events/{stream}"
#: The paths of the pixel and the click (:meth:`CollectorPaths.browser_view`).
PIXEL_PATH: Final = COLLECTOR_PREFIX + "/pixel.gif"
CLICK_PATH: Final = COLLECTOR_PREFIX + "/click"
#: (name, longest, required) of the browser endpoints' parameters, in the order of the
#: FastAPI routes' (whose error messages :func:`_check_params` repeats).
_RECORD_PARAMS: Final = tuple((name, 256, False) for name in _RECORD_FIELDS)
_CLICK_PARAMS: Final = (("to", 2048, True), *_RECORD_PARAMS)
_JSON_HEADERS: Final = [(b"content-type", b"application/json")]
_NO_CACHE: Final = [(k.lower().encode(), v.encode()) for k, v in NO_CACHE_HEADERS.items()]
_GIF_HEADERS: Final = [(b"content-type", b"image/gif"), *_NO_CACHE]


def _length(body: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(body)).encode())


_GIF_ANSWER: Final = (200, [*_GIF_HEADERS, _length(PIXEL_GIF)], PIXEL_GIF)


@dataclass(frozen=True, slots=True)
class BrowserView:
    """A pixel view or a click: its record, and the answer once it is appended
    (``headers`` with the ``content-length``)."""

    stream: Stream
    record: bytes
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class CollectorPaths:
    """The collector's endpoints as plain ASGI, mounted ahead of FastAPI (innermost of
    the server's layers, so the ``Host`` check, CORS, the query-string limits and the
    metrics still apply): ``GET /v1/pixel.gif``, ``GET /v1/click`` and ``POST
    /v1/events/{stream}`` answer here, in the same bytes as the FastAPI routes of
    :func:`collector_router`, which serve the rest (other methods get FastAPI's 405; the
    API description). FastAPI's routing, dependencies and parameter validation cost several
    times the pixel's own work. ``write_key`` guards ``POST`` as the routes'
    dependency does."""

    def __init__(
        self, app: ASGIApp, collector: Collector, write_key: WriteKeyCheck | None = None
    ) -> None:
        self.app = app
        self.collector = collector
        self.settings = collector.settings
        self.write_key = write_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method == "GET" and path == PIXEL_PATH:
                scope[ROUTE_SCOPE] = PIXEL_PATH
                await self._pixel(scope, send)
                return
            if method == "GET" and path == CLICK_PATH:
                scope[ROUTE_SCOPE] = CLICK_PATH
                await self._click(scope, send)
                return
            if method == "POST" and path.startswith(_EVENTS_PATH):
                name = path[len(_EVENTS_PATH) :]
                if name and "/" not in name:
                    scope[ROUTE_SCOPE] = _EVENTS_ROUTE
                    await self._post(scope, receive, send, name)
                    return
        await self.app(scope, receive, send)

    async def _pixel(self, scope: Scope, send: Send) -> None:
        await self.pixel(query_fields(scope.get("query_string", b""))[0], send)

    async def _click(self, scope: Scope, send: Send) -> None:
        await self.click(query_fields(scope.get("query_string", b""))[0], send)

    async def pixel(self, params: dict[str, str | None], send: Send) -> int:
        """Answer ``GET /v1/pixel.gif`` with these query parameters; returns the status."""
        return await self._browser(PIXEL_PATH, params, send)

    async def click(self, params: dict[str, str | None], send: Send) -> int:
        """Answer ``GET /v1/click`` with these query parameters; returns the status."""
        return await self._browser(CLICK_PATH, params, send)

    async def _browser(self, path: str, params: dict[str, str | None], send: Send) -> int:
        try:
            view = self.browser_view(path, params)
            await append_or_503(self.collector, view.stream, [view.record])
        except CollectorError as exc:
            await exc.send(send)
            return exc.status
        await _send(send, view.status, view.headers, view.body)
        return view.status

    def browser_view(self, path: str, params: dict[str, str | None]) -> BrowserView:
        """:func:`browser_view` with this server's redirect hosts."""
        return browser_view(path, params, self.settings.collector_redirect_hosts)

    async def _post(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        try:
            if self.write_key is not None:
                await self.write_key(scope)
            stream = stream_of(name)
            headers = Headers(scope=scope)
            body = await _receive_body(receive, headers, self.settings.collector_max_body_bytes)
            if body is None:  # the client went away: nothing to answer
                return
            records = records_of(body, headers, self.settings)
            accepted = await append_or_503(self.collector, stream, records)
        except CollectorError as exc:
            await exc.send(send)
            return
        await _answer(send, 202, orjson.dumps({"accepted": accepted}), _JSON_HEADERS)


def browser_view(
    path: str, params: dict[str, str | None], redirect_hosts: Sequence[str]
) -> BrowserView:
    """The record of a pixel (``path`` :data:`PIXEL_PATH`) or a click
    (:data:`CLICK_PATH`) with these query parameters, and its answer once appended;
    raises :class:`CollectorError` (422, 400) to refuse it. One definition for the
    FastAPI routes, the plain-ASGI paths and the front protocol."""
    if path == PIXEL_PATH:
        _check_params(params, _RECORD_PARAMS)
        return BrowserView(
            Stream.IMPRESSIONS, browser_record(Stream.IMPRESSIONS, params), *_GIF_ANSWER
        )
    _check_params(params, _CLICK_PARAMS)
    target = allowed_redirect(params["to"] or "", redirect_hosts)
    headers = [(b"location", target.encode("latin-1")), *_NO_CACHE, _length(b"")]
    return BrowserView(Stream.CLICKS, browser_record(Stream.CLICKS, params), 302, headers, b"")


def _check_params(
    params: dict[str, str | None], expected: tuple[tuple[str, int, bool], ...]
) -> None:
    """Refuses (422) query parameters as the FastAPI routes refuse them: too long, or
    required and missing."""
    errors = []
    for name, longest, required in expected:
        value = params.get(name)
        if value is None:
            if required:
                errors.append(f"{name}: Field required")
        elif len(value) > longest:
            errors.append(f"{name}: String should have at most {longest} characters")
    if errors:
        raise CollectorError(422, "invalid_parameter", "; ".join(errors))


def query_fields(query: bytes) -> tuple[dict[str, str | None], int]:
    """``dict(parse_qsl(query, keep_blank_values=True))``, as Starlette reads a query
    (the last of a repeated name wins), without its per-pair unquoting when there is
    nothing to unquote (no ``%`` or ``+``); and the number of fields (more than the
    names when a name is repeated)."""
    text = query.decode("latin-1")
    if "%" in text or "+" in text:
        pairs = parse_qsl(text, keep_blank_values=True)
        return dict(pairs), len(pairs)
    params: dict[str, str | None] = {}
    fields = 0
    for field in text.split("&"):
        if field:
            name, _, value = field.partition("=")
            params[name] = value
            fields += 1
    return params, fields


async def _receive_body(
    receive: Receive, headers: Mapping[str, str], max_bytes: int
) -> bytes | None:
    """The request body, refused (413) as soon as it is over ``max_bytes``; None when
    the client disconnected first."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        part = message.get("body", b"")
        size += len(part)
        if size > max_bytes:
            raise _too_large(max_bytes)
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await _send(send, status, [*headers, _length(body)], body)


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """Answer as plain ASGI; ``headers`` with the ``content-length``."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
