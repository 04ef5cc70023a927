"""The HTTP event collector: the front door for ad servers, apps and web pages.

``POST /v1/events/{stream}`` appends a batch of records (newline-delimited JSON or a JSON
array, optionally gzip-compressed) to the configured transport and answers ``202
{"accepted": N}`` only once they are durably appended; ``GET /v1/pixel.gif`` (an
impression) and ``GET /v1/click`` (a click, then a ``302`` to an allowed landing page)
serve browsers. See ``docs/collector.md``.

The collector stays cheap: records pass through as they came (validation happens in the
processor, which dead-letters what is wrong), partitioned by ``user_id`` with the one
producer code path (:func:`adpulse.sources.producer.publish`).

Durability: the embedded log writes with ``write(2)`` straight to the segment files, so
a record is in the operating system's page cache, safe from a ``kill -9`` of the server,
before ``202``. With the ``fsync`` setting on, ``202`` waits for an ``fsync`` as well
(safe from a power loss); concurrent requests share one ``fsync`` (group commit). Over
Redis Streams, ``202`` follows the server's reply to the append; what survives a Redis
crash is Redis's own persistence setting (AOF ``appendfsync``).
"""

from __future__ import annotations

import logging
import threading
import uuid
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.params import Depends
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from adpulse.config import Settings
from adpulse.contracts import ORIGINAL_TIMESTAMP_FORMAT, Stream
from adpulse.sources.producer import publish
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

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail

    def response(self) -> Response:
        body = orjson.dumps({"error": self.code, "detail": self.detail})
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if self.status == 503 else None
        return Response(body, self.status, headers, media_type="application/json")


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


# --- appending -------------------------------------------------------------------------
class Collector:
    """Appends records to the transport for many concurrent requests.

    One producer (producers are not thread-safe) behind a lock: each append is a few
    ``write(2)`` calls. With ``fsync`` on, an append then waits until a flush that began
    after it has finished: the first waiter flushes for everyone appended so far while
    the others wait for it, so concurrent requests share one ``fsync`` (group commit).
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
        #: server or a disk: small ones may run on the event loop.
        self.appends_inline = isinstance(transport, EmbeddedTransport) and not settings.fsync

    def append(self, stream: Stream, payloads: Sequence[bytes]) -> int:
        """Append ``payloads`` to ``stream``; returns once they are durable (see module doc)."""
        if not payloads:
            return 0
        with self._append_lock:
            publish(self._producer, stream, payloads, self._partitions, self._max_record_bytes)
            self._appended += 1
            ticket = self._appended
            self.accepted[stream] += len(payloads)
        if self._sync:
            self._wait_durable(ticket)
        return len(payloads)

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
                covered = self._appended
                self._producer.flush()
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
    return datetime.now(UTC).strftime(ORIGINAL_TIMESTAMP_FORMAT)


def browser_record(stream: Stream, params: dict[str, str | None]) -> bytes:
    """The record of a pixel view or a click: the given fields, the server's time, and
    the given ``event_id`` or a new one (each view is its own event). Missing or wrong
    fields are left for the processor to dead-letter, like any record."""
    record: dict[str, Any] = {"event_id": params.get("event_id") or uuid.uuid4().hex}
    for name in ("ad_id", "user_id", "platform", "location"):
        value = params.get(name)
        if value is None:
            continue
        # ad_id is a number in the original's records; other text is the processor's
        # to reject as a wrong type.
        record[name] = int(value) if name == "ad_id" and value.isdigit() else value
    record[stream.timestamp_field] = server_time()
    return orjson.dumps(record)


def allowed_redirect(url: str, hosts: Sequence[str]) -> str:
    """``url`` if it is an absolute http(s) URL to an allowed host, else a 400.

    Allowed: a host equal to an entry, or a subdomain of an entry ``*.example.com``.
    Refused whatever the list: relative and scheme-relative URLs (``//evil.com``), other
    schemes (``javascript:``), user info (``https://evil.com@good.com``), backslashes,
    whitespace and control characters (which browsers read in their own ways).
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
            return url
    raise refuse(
        f"host {host!r} is not in the setting collector_redirect_hosts; add it there to"
        " allow redirects to it"
    )


# --- the routes ---------------------------------------------------------------------------
#: Seconds a client is asked to wait when the transport did not take a batch.
RETRY_AFTER_SECONDS: Final = 5


#: Appends of at most this many records run on the event loop when they cannot block
#: (:attr:`Collector.appends_inline`): the hop to a worker thread costs more (~0.3 ms).
INLINE_RECORDS: Final = 64


async def append_or_503(collector: Collector, stream: Stream, records: Sequence[bytes]) -> int:
    """:meth:`Collector.append`, in a worker thread unless it is small and cannot block
    the event loop; a transport failure (a server down
    beyond ``infra_retry_seconds``, a full disk) becomes a 503 the client retries,
    logged here with its cause (not sent: it may name server paths)."""
    try:
        if collector.appends_inline and len(records) <= INLINE_RECORDS:
            return collector.append(stream, records)
        return await run_in_threadpool(collector.append, stream, records)
    except Exception as exc:
        log.exception("the collector could not append %d %s records", len(records), stream)
        raise CollectorError(
            503,
            "unavailable",
            f"the transport did not take the records ({type(exc).__name__}); nothing of"
            " this request is acknowledged: send it again (records with an event_id are"
            " counted once)",
        ) from exc


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
            if stream not in _STREAM_NAMES:
                raise CollectorError(
                    404, "not_found", f"unknown stream {stream!r}: use one of {_STREAMS}"
                )
            limit = settings.collector_max_body_bytes
            body = await read_body(request, limit)
            encoding = request.headers.get("content-encoding", "identity").strip().lower()
            if encoding == "gzip":
                body = gunzip(body, limit)
            elif encoding not in ("identity", ""):
                raise CollectorError(
                    415,
                    "unsupported_encoding",
                    f"Content-Encoding {encoding!r}: send gzip or an uncompressed body",
                )
            records = split_records(body, request.headers.get("content-type", ""))
            if len(records) > settings.collector_max_records:
                raise CollectorError(
                    413,
                    "too_many_records",
                    f"{len(records)} records in one request, at most"
                    f" {settings.collector_max_records} (setting collector_max_records);"
                    " send smaller batches",
                )
            accepted = await append_or_503(collector, Stream(stream), records)
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
        record = browser_record(Stream.IMPRESSIONS, params)
        try:
            await append_or_503(collector, Stream.IMPRESSIONS, [record])
        except CollectorError as exc:
            return exc.response()
        return Response(PIXEL_GIF, media_type="image/gif", headers=NO_CACHE_HEADERS)

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
        params = {"ad_id": ad_id, "user_id": user_id, "platform": platform}
        params |= {"location": location, "event_id": event_id}
        try:
            target = allowed_redirect(to, settings.collector_redirect_hosts)
            await append_or_503(collector, Stream.CLICKS, [browser_record(Stream.CLICKS, params)])
        except CollectorError as exc:
            return exc.response()
        return Response(status_code=302, headers={"Location": target, **NO_CACHE_HEADERS})

    return router
