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
"""

from __future__ import annotations

import functools
import time
from typing import Final

from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from adpulse.serving.auth import Access, HostGate
from adpulse.serving.http.middleware import MAX_QUERY_STRING
from adpulse.sources.collector import COLLECTOR_PREFIX, CollectorPaths, query_fields
from adpulse.telemetry import RequestMetrics

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
        host: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value if host is None else host  # the first, as HostGate reads
            elif name == b"origin" and self.cors:
                return None
        if not self.hosts.allows(host or b""):
            return None
        query = scope.get("query_string", b"")
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
