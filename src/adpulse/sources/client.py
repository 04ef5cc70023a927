"""A Python client of the event collector (``POST /v1/events/{stream}``).

It batches records, gzips each batch, and retries a batch that got no answer, ``429``,
``502``, ``503`` or ``504``, with exponential backoff and full jitter (honouring
``Retry-After``), for up to ``retry_seconds``. A retried batch may already have been
appended (the answer was lost, not the request); it is counted once all the same: a
record's ``event_id`` identifies it, and a record without one gets an id derived from
its content by the processor (see ``PRODUCT.md``), the same for every copy. The client
adds no ids itself: ids of its own would make two identical records of a file two
events, where ``adpulse replay`` of the same file counts them once.

Usage::

    with CollectorClient("http://127.0.0.1:8080") as client:
        client.send("clicks", [{"ad_id": 1, "user_id": "u1", ...}, b'{"ad_id": 2, ...}'])
"""

from __future__ import annotations

import gzip
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import httpx
import orjson

from adpulse.contracts import Stream

#: Statuses that mean "try again later": overloaded or briefly unavailable.
RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})
DEFAULT_BATCH_RECORDS: Final = 500


class CollectorSendError(RuntimeError):
    """A batch the collector refused (a status that retrying cannot change), or one
    that still failed when ``retry_seconds`` ran out."""


class CollectorClient:
    """Sends records to a collector; one keep-alive connection, safe to retry.

    ``url`` is the server's base URL (``http://HOST:PORT``). ``key``: a write key (sent
    as ``Authorization: Bearer``), needed when the server requires keys. ``headers`` go
    with every request. ``http`` replaces the internal ``httpx.Client`` (tests,
    custom TLS or proxies).
    """

    def __init__(
        self,
        url: str,
        *,
        batch_records: int = DEFAULT_BATCH_RECORDS,
        compress: bool = True,
        retry_seconds: float = 60.0,
        backoff_seconds: float = 0.1,
        max_backoff_seconds: float = 5.0,
        timeout_seconds: float = 30.0,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        if batch_records < 1:
            raise ValueError(f"batch_records must be at least 1, got {batch_records}")
        self.url = url.rstrip("/")
        self.batch_records = batch_records
        self.compress = compress
        self.retry_seconds = retry_seconds
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._http = http or httpx.Client(timeout=timeout_seconds)
        self._own_http = http is None
        self._headers = dict(headers or {})
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        #: Sends retried so far (all batches), for progress displays and tests.
        self.retries = 0

    def __enter__(self) -> CollectorClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def send(
        self,
        stream: Stream | str,
        records: Iterable[bytes | Mapping[str, Any]],
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Send ``records`` (JSON bytes or mappings) in batches; returns how many the
        collector accepted. ``on_batch`` gets each batch's count once it is accepted."""
        accepted = 0
        batch: list[bytes] = []
        for record in records:
            batch.append(record if isinstance(record, bytes) else orjson.dumps(record))
            if len(batch) == self.batch_records:
                accepted += self._send_batch(stream, batch, on_batch)
                batch = []
        if batch:
            accepted += self._send_batch(stream, batch, on_batch)
        return accepted

    def _send_batch(
        self,
        stream: Stream | str,
        batch: list[bytes],
        on_batch: Callable[[int], None] | None,
    ) -> int:
        count = self.post(stream, batch)
        if on_batch is not None:
            on_batch(count)
        return count

    def post(self, stream: Stream | str, payloads: Sequence[bytes]) -> int:
        """POST one batch, retrying as the module doc says; returns the accepted count."""
        body = b"\n".join(payloads) + b"\n"
        headers = {"Content-Type": "application/x-ndjson", **self._headers}
        if self.compress:
            body = gzip.compress(body, compresslevel=1)  # fast: the network is not the limit
            headers["Content-Encoding"] = "gzip"
        target = f"{self.url}/v1/events/{Stream(stream).value}"
        began = time.monotonic()
        attempt = 0
        while True:
            wait: float | None = None
            try:
                response = self._http.post(target, content=body, headers=headers)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 202:
                    return int(response.json()["accepted"])
                problem = f"HTTP {response.status_code}: {response.text[:500]}"
                if response.status_code not in RETRY_STATUSES:
                    raise CollectorSendError(
                        f"the collector at {target} refused a batch of {len(payloads)}"
                        f" records ({problem})"
                    )
                wait = _retry_after(response)
            backoff = min(self.max_backoff_seconds, self.backoff_seconds * 2**attempt)
            delay = max(wait or 0.0, random.uniform(0, backoff))  # full jitter
            if time.monotonic() + delay - began > self.retry_seconds:
                raise CollectorSendError(
                    f"a batch of {len(payloads)} records to {target} failed for"
                    f" {time.monotonic() - began:.0f} s ({problem}); gave up after"
                    f" {self.retry_seconds:g} s of retries. Check that the collector"
                    " runs at that URL, then send again: records already accepted are"
                    " recognised by their event_id and counted once"
                )
            attempt += 1
            self.retries += 1
            time.sleep(delay)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # absent, or an HTTP date: the backoff decides


def stream_of_file(path: Path) -> Stream:
    """The stream a file's name starts with (``clicks.jsonl.gz`` -> clicks)."""
    for stream in Stream:
        if path.name.startswith(stream.value):
            return stream
    raise ValueError(
        f"cannot tell the stream of {path}: its name starts with none of"
        f" {', '.join(s.value for s in Stream)}; give it with --stream"
    )


def send_file(
    client: CollectorClient,
    path: Path,
    stream: Stream | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Send a JSON-lines file (``.gz`` too), one record per non-blank line; returns the
    records accepted. ``on_progress(records, file_bytes_read)`` follows each batch."""
    stream = stream or stream_of_file(path)
    with path.open("rb") as raw:
        lines: Iterable[bytes] = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
        records = (line.rstrip(b"\r\n") for line in lines if line.strip())

        def progress(count: int) -> None:
            if on_progress is not None:
                on_progress(count, raw.tell())

        return client.send(stream, records, on_batch=progress)
