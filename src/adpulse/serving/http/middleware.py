"""The layers around the routes, and their order.

Plain ASGI classes rather than ``@app.middleware("http")``: Starlette's
BaseHTTPMiddleware re-streams every response through a task and a queue, which cost
more than a shared answer itself under load. :func:`add_layers` adds them in the one
order that works (see there).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from adpulse.config import Settings
from adpulse.serving.auth import Access, HostGate, ReadGate
from adpulse.serving.cache import ResultCache
from adpulse.serving.cors import CollectorCors
from adpulse.serving.http.encoding import BAD_INPUT, dumps, error_response, json_body
from adpulse.telemetry import (
    ROUTE_SCOPE,
    UNMATCHED_ROUTE,
    ApiMetrics,
    RequestMetrics,
    route_of,
)

log = logging.getLogger(__name__)

#: Longest accepted query string, in bytes.
MAX_QUERY_STRING: Final = 4096


class RequestLimits:
    """Rejects an over-long query string (414) or a repeated parameter (422) before routing.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware
    re-streams every response through a task and a queue, which cost more than a shared
    answer itself under load.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = scope.get("query_string", b"")
            rejection: Response | None = None
            if len(query) > MAX_QUERY_STRING:
                rejection = error_response(
                    414, "query_too_long", f"the query string is over {MAX_QUERY_STRING} bytes"
                )
            elif query:
                repeated = repeated_names(query)
                if repeated:
                    detail = f"repeated parameter(s): {', '.join(repeated)}"
                    rejection = error_response(BAD_INPUT, "invalid_parameter", detail)
            if rejection is not None:
                await rejection(scope, receive, send)
                return
        await self.app(scope, receive, send)


def repeated_names(query: bytes) -> list[str]:
    """The names given more than once in a query string, sorted (as ``parse_qsl`` reads
    them: unquoted, blank values kept), usually none."""
    text = query.decode("latin-1")
    if "%" in text or "+" in text:
        names = [k for k, _ in parse_qsl(text, keep_blank_values=True)]
    else:  # nothing to unquote: the names as they are, without parse_qsl's cost
        names = [field.partition("=")[0] for field in text.split("&") if field]
    if len(set(names)) == len(names):
        return []
    return sorted(k for k, n in Counter(names).items() if n > 1)


@dataclass(frozen=True, slots=True)
class SharedRequest:
    """What a validated request asked: its shared answer's key and how to compute it."""

    key: Hashable
    compute: Callable[[], bytes]
    versioned: bool
    #: The route template it was routed to (the metrics' route label).
    route: str = UNMATCHED_ROUTE


class KnownRequests:
    """Raw GET requests (path and query string, byte for byte) that passed validation,
    with what they asked. Parsing is deterministic, so the same bytes ask the same again.
    Bounded: the oldest are forgotten first."""

    MAX_REQUESTS: Final = 4096

    def __init__(self) -> None:
        self._known: OrderedDict[tuple[str, bytes], SharedRequest] = OrderedDict()

    @staticmethod
    def _raw(scope: Scope) -> tuple[str, bytes]:
        return scope["path"], scope.get("query_string", b"")

    def remember(self, scope: Scope, asked: SharedRequest) -> None:
        raw = self._raw(scope)
        self._known[raw] = asked
        self._known.move_to_end(raw)
        while len(self._known) > self.MAX_REQUESTS:
            self._known.popitem(last=False)

    def lookup(self, scope: Scope) -> SharedRequest | None:
        if scope["type"] != "http" or scope["method"] != "GET":
            return None
        return self._known.get(self._raw(scope))


class AnswerShortcut:
    """Answers a GET seen before (byte for byte) from the shared answers, skipping
    routing, parameter validation and response encoding, which cost more than the
    answer itself; anything else, or any failure, goes through the app as usual."""

    def __init__(self, app: ASGIApp, known: KnownRequests, answers: ResultCache) -> None:
        self.app = app
        self.known = known
        self.answers = answers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        asked = self.known.lookup(scope)
        if asked is not None:
            try:
                body = await self.answers.get(asked.key, asked.compute, versioned=asked.versioned)
            except Exception:  # the app gives the proper error response
                log.debug("shortcut for %s failed; routing it", scope["path"], exc_info=True)
            else:
                scope[ROUTE_SCOPE] = asked.route
                await json_body(body)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SharedAnswers:
    """The answers of the data endpoints, shared by identical requests for up to
    ``api_cache_seconds`` (:mod:`adpulse.serving.cache`), and remembered by the raw
    request that asked them, for :class:`AnswerShortcut`."""

    def __init__(self, answers: ResultCache, known: KnownRequests) -> None:
        self.answers = answers
        self.known = known

    async def respond(
        self, request: Request, key: Hashable, build: Callable[[], Any], *, versioned: bool = True
    ) -> Response:
        """The JSON of ``build()``, shared by identical requests."""

        def compute() -> bytes:
            return dumps(build())

        body = await self.answers.get(key, compute, versioned=versioned)
        route = route_of(request.scope)
        self.known.remember(request.scope, SharedRequest(key, compute, versioned, route))
        return json_body(body)


def add_layers(
    app: FastAPI,
    settings: Settings,
    access: Access,
    shared: SharedAnswers,
    registry: CollectorRegistry,
) -> RequestMetrics:
    """Wrap ``app`` in its layers. Each ``add_middleware`` wraps what is there, so the
    last added runs first: a request meets the metrics layer, the Host check, CORS (when
    origins are set), the read gate, the answer shortcut, then the request limits.
    Returns the metrics layer's histogram (the collector's front path counts there too)."""
    app.add_middleware(RequestLimits)
    app.add_middleware(AnswerShortcut, known=shared.known, answers=shared.answers)
    app.add_middleware(ReadGate, access=access)  # no answer without a key
    if settings.cors_origins:  # before the key: a browser's preflight carries none
        app.add_middleware(CollectorCors, origins=settings.cors_origins)
    app.add_middleware(HostGate, access=access)  # DNS rebinding
    metrics = RequestMetrics(registry)
    app.add_middleware(ApiMetrics, metrics=metrics)  # outermost: times every answer
    return metrics
