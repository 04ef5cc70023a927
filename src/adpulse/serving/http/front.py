"""The collector's browser endpoints answered ahead of the whole app.

``GET /v1/pixel.gif`` and ``GET /v1/click`` come by the thousand a second from browsers,
each a few microseconds of work of its own, and passed through every layer of the app
first: FastAPI's and Starlette's own, then the metrics, the ``Host`` check, CORS, the
read gate, the answer shortcut and the request limits, each a coroutine the request
goes into and out of again when it waits for its append (with uvicorn, about half of a
pixel's time). :class:`CollectorFront` answers those that every one of these layers
would pass unchanged (an allowed ``Host``, no ``Origin`` when CORS is on, a query within
the limits) straight from :class:`~adpulse.sources.collector.CollectorPaths`, in the same
bytes, and counts them in the same metrics; any other request, including every one a
layer would refuse or change, goes through the app as before.

Under uvicorn's httptools protocol (as ``make_server`` runs it), :func:`front_protocol`
answers the same requests one step earlier still, in the protocol, without the ASGI
scope, task and ``send`` calls: the same bytes, rules and metrics.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable
from typing import Any, Final

from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from adpulse.serving.auth import Access, HostGate
from adpulse.serving.http.middleware import MAX_QUERY_STRING
from adpulse.sources.collector import (
    COLLECTOR_PREFIX,
    BrowserView,
    CollectorError,
    CollectorPaths,
    append_failed,
    query_fields,
)
from adpulse.telemetry import RequestMetrics

log = logging.getLogger(__name__)

_PIXEL: Final = COLLECTOR_PREFIX + "/pixel.gif"
_CLICK: Final = COLLECTOR_PREFIX + "/click"


class CollectorFront:
    """Which requests may skip the app's layers (:meth:`params_of`), and their answer.

    ``cors``: the app adds CORS headers to requests with an ``Origin`` (those go through
    it). ``limits``: the app refuses over-long query strings and repeated parameters
    (:class:`~adpulse.serving.http.middleware.RequestLimits`; those go through it).
    ``metrics``: the app's request histogram, if it has one.
    """

    def __init__(
        self,
        paths: CollectorPaths,
        access: Access,
        *,
        cors: bool,
        limits: bool,
        metrics: RequestMetrics | None,
    ) -> None:
        self.paths = paths
        self.hosts = HostGate(paths.app, access)
        self.cors = cors
        self.limits = limits
        self.metrics = metrics

    def params_of(self, scope: Scope) -> dict[str, str | None] | None:
        """The query parameters of a pixel or click request that every layer of the app
        would pass unchanged; None for any other request."""
        if scope["type"] != "http" or scope["method"] != "GET":
            return None
        path = scope["path"]
        if path != _PIXEL and path != _CLICK:
            return None
        return self.params_of_get(scope["headers"], scope.get("query_string", b""))

    def params_of_get(
        self, headers: Iterable[tuple[bytes, bytes]], query: bytes
    ) -> dict[str, str | None] | None:
        """:meth:`params_of` for a ``GET`` of the pixel or the click with these headers
        (names in lower case) and query string."""
        host: bytes | None = None
        for name, value in headers:
            if name == b"host":
                host = value if host is None else host  # the first, as HostGate reads
            elif name == b"origin" and self.cors:
                return None
        if not self.hosts.allows(host or b""):
            return None
        if self.limits and len(query) > MAX_QUERY_STRING:
            return None
        params, fields = query_fields(query)
        if self.limits and fields != len(params):  # a repeated parameter: a 422
            return None
        return params

    async def answer(self, scope: Scope, params: dict[str, str | None], send: Send) -> None:
        """Answer a request :meth:`params_of` took, and count it as the metrics layer
        does (a failure as a 500)."""
        t0 = time.perf_counter()
        path = scope["path"]
        status = 500
        if self.cors:  # Starlette's CORS layer marks every answer as varying by Origin
            send = functools.partial(_vary_by_origin, send)
        try:
            if path == _PIXEL:
                status = await self.paths.pixel(params, send)
            else:
                status = await self.paths.click(params, send)
        finally:
            if self.metrics is not None:
                self.metrics.observe("GET", path, status, time.perf_counter() - t0)


async def _vary_by_origin(send: Send, message: Message) -> None:
    if message["type"] == "http.response.start":
        message["headers"] = [*message["headers"], (b"vary", b"Origin")]
    await send(message)


class FrontedFastAPI(FastAPI):
    """FastAPI with the collector's front path (:class:`CollectorFront`) ahead of it,
    once ``collector_front`` is set."""

    collector_front: CollectorFront | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self.collector_front
        if front is not None:
            params = front.params_of(scope)
            if params is not None:
                await front.answer(scope, params, send)
                return
        await super().__call__(scope, receive, send)


class _FrontCycle:
    """A request :func:`front_protocol` answers itself: what uvicorn's protocol reads of
    its request-response cycle (``response_complete``, ``disconnected``, ``keep_alive``,
    ``message_event``), and the request."""

    __slots__ = ("disconnected", "keep_alive", "params", "path", "response_complete", "started")

    def __init__(self, path: str, params: dict[str, str | None], keep_alive: bool) -> None:
        self.path = path
        self.params = params
        self.keep_alive = keep_alive
        self.started = False
        self.response_complete = False
        self.disconnected = False

    @property
    def message_event(self) -> _FrontCycle:
        return self  # nothing waits on it: set() is uvicorn waking a receive()

    def set(self) -> None:
        pass


_PATHS: Final = {_PIXEL.encode(): _PIXEL, _CLICK.encode(): _CLICK}


def front_protocol(base: type[Any], app: FrontedFastAPI) -> type[Any]:
    """``base`` (uvicorn's httptools protocol, or a subclass) answering the requests
    ``app.collector_front`` takes itself, without the ASGI machinery.

    uvicorn turns every request into an ASGI scope, a task, and ``receive`` and ``send``
    coroutines with their checks of each header: for a pixel, most of its time. Here a
    ``GET`` of the pixel or the click that :meth:`CollectorFront.params_of_get` takes is
    answered when the parser completes it: its record goes to the collector's gathered
    append (:meth:`~adpulse.sources.collector.Collector.submit_soon`), and once that is
    durable the answer goes to the socket in one write, in the bytes uvicorn would send
    for the app's answer (its ``date`` and ``server`` headers, ``connection: close``
    when the connection ends), counted in the same metrics. Any other request goes the
    ASGI way, as do those uvicorn must treat specially: behind another answer still
    pending (pipelined: queued, then started as uvicorn does), with ``Expect:
    100-continue``, an ``Upgrade``, a body, over ``limit_concurrency``, or while the
    socket's write buffer is full.
    """
    import httptools
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE

    class FrontProtocol(base):  # type: ignore[misc,valid-type]
        cycle: Any  # uvicorn's RequestResponseCycle, or a _FrontCycle
        # The keep-alive deadline on one timer per connection, moved by each response
        # (uvicorn makes a timer per response and cancels it at the next request).
        _idle_due: float | None = None
        _idle_timer: asyncio.TimerHandle | None = None

        def _unset_keepalive_if_required(self) -> None:
            self._idle_due = None

        def on_response_complete(self) -> None:
            # uvicorn's (httptools), with the keep-alive deadline of the class comment
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self._idle_due = None
            self.flow.resume_reading()
            if self.pipeline:
                cycle, asgi = self.pipeline.pop()
                self._start_asgi_task(cycle, asgi)
                return
            loop = self.loop
            self._idle_due = loop.time() + self.timeout_keep_alive
            if self._idle_timer is None:
                self._idle_timer = loop.call_at(self._idle_due, self._idle_too_long)

        def _idle_too_long(self) -> None:
            self._idle_timer = None
            due = self._idle_due
            if due is None:
                return
            if self.loop.time() < due - 0.001:  # a response since: wait until then
                self._idle_timer = self.loop.call_at(due, self._idle_too_long)
            else:
                self.timeout_keep_alive_handler()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            front = app.collector_front
            if front is None or not self._take(front):
                super().on_headers_complete()

        def _take(self, front: CollectorFront) -> bool:
            """Whether the request whose headers are complete is the front's (then
            answered once its message is complete)."""
            parser = self.parser
            if parser.get_method() != b"GET" or self.expect_100_continue or self.root_path:
                return False
            cycle = self.cycle
            if (cycle is not None and not cycle.response_complete) or self.flow.write_paused:
                return False
            limit = self.limit_concurrency
            if limit is not None and len(self.connections) >= limit:
                return False  # uvicorn's 503
            url = httptools.parse_url(self.url)
            path = _PATHS.get(url.path)
            if path is None or parser.should_upgrade():
                return False
            headers = self.headers
            for name, value in headers:  # a body (wrk sends "Content-Length: 0")
                if (name == b"content-length" and value != b"0") or name == b"transfer-encoding":
                    return False
            params = front.params_of_get(headers, url.query or b"")
            if params is None:
                return False
            keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
            self.cycle = _FrontCycle(path, params, keep_alive)
            return True

        def on_message_complete(self) -> None:
            cycle = self.cycle
            if type(cycle) is _FrontCycle and not cycle.started:
                cycle.started = True
                self._answer(cycle)
            else:
                super().on_message_complete()

        def _answer(self, cycle: _FrontCycle) -> None:
            front = app.collector_front
            assert front is not None
            t0 = time.perf_counter()
            try:
                view = front.paths.browser_view(cycle.path, cycle.params)
            except CollectorError as exc:
                headers, body = exc.parts()
                self._reply(front, cycle, t0, exc.status, headers, body)
                return
            done = front.paths.collector.submit_soon(view.stream, [view.record])
            done.add_done_callback(functools.partial(self._appended, front, cycle, t0, view))

        def _appended(
            self,
            front: CollectorFront,
            cycle: _FrontCycle,
            t0: float,
            view: BrowserView,
            done: asyncio.Future[int],
        ) -> None:
            if done.cancelled():  # the server is stopping
                self.transport.close()
                return
            try:
                exc = done.exception()
                if exc is None:
                    self._reply(front, cycle, t0, view.status, view.headers, view.body)
                else:
                    error = append_failed(exc, view.stream, 1)
                    headers, body = error.parts()
                    self._reply(front, cycle, t0, error.status, headers, body)
            except Exception:  # a bug: close rather than leave the client waiting
                log.exception("the pixel or click could not be answered")
                self.transport.close()

        def _reply(
            self,
            front: CollectorFront,
            cycle: _FrontCycle,
            t0: float,
            status: int,
            headers: list[tuple[bytes, bytes]],
            body: bytes,
        ) -> None:
            transport = self.transport
            if not transport.is_closing():
                parts = [STATUS_LINE[status]]
                for name, value in self.server_state.default_headers:
                    parts += (name, b": ", value, b"\r\n")
                for name, value in headers:
                    parts += (name, b": ", value, b"\r\n")
                if front.cors:  # as the CORS layer marks every answer
                    parts.append(b"vary: Origin\r\n")
                if not cycle.keep_alive:
                    parts.append(b"connection: close\r\n")
                parts += (b"\r\n", body)
                transport.write(b"".join(parts))
            if front.metrics is not None:
                front.metrics.observe("GET", cycle.path, status, time.perf_counter() - t0)
            cycle.response_complete = True
            if not cycle.keep_alive:
                transport.close()
            self.on_response_complete()

    FrontProtocol.__name__ = f"Front{base.__name__}"
    return FrontProtocol
