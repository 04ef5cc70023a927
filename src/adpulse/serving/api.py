"""The HTTP query API: every number of the query layer as JSON, plus a live SSE feed.

No SQL here: each endpoint validates its parameters, builds a
:class:`~adpulse.serving.queries.Filters` and calls the one query layer (which binds
every value as a parameter). JSON conventions: money (Decimal) as a JSON number,
datetimes as ISO-8601 UTC with a ``Z``, undefined ratios and NaN as ``null``. Errors are
``{"error": <code>, "detail": <what was wrong>}`` with a 4xx status.

Live push: ``/api/v1/stream`` is Server-Sent Events. One refresher task per app computes
the pipeline status once per tick and the summary once per distinct filter set in use,
and fans the same payload out to every client with those filters (bounded queues: a
slow client skips ticks instead of growing memory). With the processor's commit signal
(demo, bench) a tick follows each commit, at most one per :data:`MIN_PUSH_GAP`, and at
least one per ``refresh_seconds``; without it (``adpulse serve``) ticks are timed.

Load: time ranges are read as whole minutes (:func:`~adpulse.serving.queries.minute_aligned`),
answers are shared between identical requests for up to ``api_cache_seconds``
(:mod:`adpulse.serving.cache`), and warehouse queries run on a pool of
``api_query_threads`` threads (plus one for the live feed), so that readers cannot take
every core from the processor that shares the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import sys
import threading
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path as FilePath
from typing import Annotated, Any, Final, Literal, cast
from urllib.parse import parse_qsl

import orjson
import polars as pl
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from adpulse.commits import CommitSignal
from adpulse.config import Settings
from adpulse.metrics import GROUPED_NAMES
from adpulse.serving import queries
from adpulse.serving.auth import (
    KEY_ID_SCOPE,
    Access,
    HostGate,
    ReadGate,
    require_write_key,
    session_routes,
)
from adpulse.serving.cache import ResultCache
from adpulse.serving.cors import CollectorCors
from adpulse.serving.queries import FilterError, Filters
from adpulse.serving.store.base import ServingStore
from adpulse.sources.collector import Collector, collector_router
from adpulse.storage.warehouse.base import Warehouse
from adpulse.telemetry import ROUTE_SCOPE, UNMATCHED_ROUTE, ApiMetrics, new_registry, route_of

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1"
#: Longest accepted time range (end - start).
MAX_RANGE: Final = timedelta(days=400)
#: Longest accepted query string, in bytes.
MAX_QUERY_STRING: Final = 4096
#: Most distinct filter sets the live feed refreshes at once, and clients per server.
MAX_STREAM_KEYS: Final = 32
MAX_STREAM_CLIENTS: Final = 256
#: Events buffered per SSE client; older ones are dropped for a slow client.
CLIENT_QUEUE: Final = 4
#: Shortest time between two live-feed ticks when commits come faster.
MIN_PUSH_GAP: Final = 0.25

#: The metrics of ``/api/v1/metrics/{metric}``: the catalog's grouped metrics.
METRICS: Final = GROUPED_NAMES
DIMENSIONS: Final = ("platform", "location", "gender", "age_band", "interest")

#: The dashboard page (static files) and its npm-installed vendor libraries.
WEB_DIR: Final = FilePath(__file__).parent / "web"
STATIC_FILES: Final = {
    "app.js": "text/javascript",
    "app.css": "text/css",
}
#: ``/vendor/<name>`` -> file under ``web/node_modules`` (installed by ``npm ci``): the
#: chart library, and Swagger UI for ``/docs`` (served here: no CDN, works offline).
VENDOR_FILES: Final = {
    "chart.js": "chart.js/dist/chart.umd.min.js",
    "swagger-ui-bundle.js": "swagger-ui-dist/swagger-ui-bundle.js",
    "swagger-ui.css": "swagger-ui-dist/swagger-ui.css",
    "swagger-favicon.png": "swagger-ui-dist/favicon-32x32.png",
}
_VENDOR_MEDIA: Final = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}

StatusSource = Callable[[], Mapping[str, Any]]

_TEXT = 200  # same as queries.MAX_FILTER_LENGTH
_TIME = 40


# --- JSON -----------------------------------------------------------------------------------
def plain(value: Any) -> Any:
    """``value`` as JSON-ready Python: frames as lists of row objects, see module doc."""
    if isinstance(value, pl.DataFrame):
        return [plain(row) for row in value.to_dicts()]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat() + "Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _dumps(value: Any) -> bytes:
    return orjson.dumps(plain(value))


class ORJSONPlainResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _dumps(content)


def ok(content: Any) -> Response:
    return ORJSONPlainResponse(content)


def json_body(body: bytes) -> Response:
    """A response from an already serialized JSON body (no second validation or encoding)."""
    return Response(body, media_type="application/json")


def _error(status: int, error: str, detail: Any) -> JSONResponse:
    return ORJSONPlainResponse({"error": error, "detail": detail}, status_code=status)


# --- parameters -----------------------------------------------------------------------------
def parse_time(value: str, name: str) -> datetime:
    """A time parameter: 'YYYY-MM-DD', 'YYYY-MM-DD HH:MM[:SS]' (UTC) or ISO-8601; a
    :class:`FilterError` (400) for text that is no time or a time out of range."""
    parsed = _parsed_time(value, name)
    if isinstance(parsed, str):
        raise FilterError(parsed)
    return parsed


@functools.lru_cache(maxsize=4096)
def _parsed_time(value: str, name: str) -> datetime | str:
    """The time, or why it is refused (the events' own timestamp parser: one value at a
    time is slow there, and dashboards repeat the same few values, hence the cache)."""
    from adpulse.contracts import parse_time_argument

    try:
        return parse_time_argument(value, name)
    except ValueError as exc:
        return str(exc)


def _text(description: str) -> Any:
    return Query(min_length=1, max_length=_TEXT, description=description)


async def filters_param(  # async: quick, so it runs on the loop, not in a worker thread
    campaign: Annotated[str | None, _text("Only this campaign.")] = None,
    ad: Annotated[
        int | None, Query(ge=-(2**63), le=2**63 - 1, description="Only this ad id.")
    ] = None,
    from_: Annotated[
        str | None,
        Query(
            alias="from",
            max_length=_TIME,
            description="Start, inclusive: 'YYYY-MM-DD[ HH:MM[:SS]]' UTC or ISO-8601.",
        ),
    ] = None,
    to: Annotated[
        str | None, Query(max_length=_TIME, description="End, exclusive (same formats).")
    ] = None,
    platform: Annotated[str | None, _text("Web, Mobile, Tablet...")] = None,
    location: Annotated[str | None, _text("e.g. New York.")] = None,
    gender: Annotated[str | None, _text("e.g. Female.")] = None,
    age_band: Annotated[
        str | None,
        Query(max_length=8, description="One of " + ", ".join(queries.AGE_BAND_LABELS)),
    ] = None,
    interest: Annotated[str | None, _text("One interest, e.g. Travel.")] = None,
) -> Filters:
    start = parse_time(from_, "from") if from_ else None
    end = parse_time(to, "to") if to else None
    if start is not None and end is not None and end - start > MAX_RANGE:
        days = (end - start) / timedelta(days=1)
        raise FilterError(f"the time range is {days:g} days long; at most {MAX_RANGE.days} days")
    # whole minutes: what the rollups read anyway, and requests within one minute share answers
    filters = Filters(
        campaign=campaign,
        ad_id=ad,
        start=start,
        end=end,
        platform=platform,
        location=location,
        gender=gender,
        age_band=age_band,
        interest=interest,
    )
    return queries.minute_aligned(filters)


FiltersDep = Annotated[Filters, Depends(filters_param)]
ByParam = Annotated[Literal["ad", "campaign"] | None, Query(description="Group by ad or campaign.")]
LimitParam = Annotated[int, Query(ge=1, le=1000, description="Rows for rankings.")]
MinClicksParam = Annotated[
    int | None,
    Query(ge=0, le=10**12, description="Minimum clicks for rate rankings (default: settings)."),
]


def _filters_echo(filters: Filters) -> dict[str, Any]:
    return {k: v for k, v in asdict(filters).items() if v is not None}


# --- live feed ------------------------------------------------------------------------------
class LiveFeed:
    """One refresher, many subscribers: see the module doc.

    ``run(fn)`` runs a warehouse read off the event loop. ``commits``, when given, wakes
    the refresher after each commit, so fresh numbers reach the page right after they
    are committed rather than up to ``interval`` later.
    """

    def __init__(
        self,
        compute_status: Callable[[], Any],
        compute_summary: Callable[[Filters], Any],
        interval: float,
        run: Callable[[Callable[[], Any]], Awaitable[Any]],
        commits: CommitSignal | None = None,
        per_address: int = MAX_STREAM_CLIENTS,
        per_key: int = MAX_STREAM_CLIENTS,
    ) -> None:
        self._status = compute_status
        self._summary = compute_summary
        self.interval = interval
        self.min_gap = min(MIN_PUSH_GAP, interval)
        self._run_read = run
        self._commits = commits
        self._unsubscribe: Callable[[], None] | None = None
        self._wake: asyncio.Event | None = None
        self._subscribers: dict[Filters, set[asyncio.Queue[bytes | None]]] = {}
        #: Open streams per client address and per API key, at most ``per_address`` /
        #: ``per_key`` each: one client cannot take every one of the server's streams.
        self.per_address = per_address
        self.per_key = per_key
        self._owners: Counter[tuple[str, str]] = Counter()
        self._owners_of: dict[asyncio.Queue[bytes | None], list[tuple[str, str]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ticks = 0

    @property
    def clients(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        wake = self._wake = asyncio.Event()
        if self._commits is not None:

            def committed(_version: int) -> None:
                # on the committer thread: hand over to the loop, never block there
                loop.call_soon_threadsafe(wake.set)

            self._unsubscribe = self._commits.subscribe(committed)
        self._task = loop.create_task(self._run(wake), name="adpulse-feed")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._end_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def end_streams(self) -> None:
        """From any thread: end every open stream. A stopping server waits for open
        responses before its lifespan ends (and with it :meth:`stop`), so it calls this
        first; a stream never ends by itself."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._end_streams)

    def _end_streams(self) -> None:
        for queues in self._subscribers.values():
            for queue in queues:
                self._offer(queue, None)

    def subscribe(
        self, filters: Filters, address: str = "", key_id: str | None = None
    ) -> asyncio.Queue[bytes | None]:
        owners = [("address", address)] + ([("key", key_id)] if key_id else [])
        for kind, owner in owners:
            cap = self.per_address if kind == "address" else self.per_key
            if self._owners[kind, owner] >= cap:
                where = "from your address" if kind == "address" else f"for key {owner}"
                raise HTTPException(
                    429,
                    f"{cap} live streams are open {where} already, the most allowed"
                    f" (setting stream_clients_per_{kind}); close one",
                    headers={"Retry-After": "10"},
                )
        if self.clients >= MAX_STREAM_CLIENTS:
            raise HTTPException(503, "too many live clients; try again later")
        if filters not in self._subscribers and len(self._subscribers) >= MAX_STREAM_KEYS:
            raise HTTPException(503, "too many distinct live filter sets; try again later")
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=CLIENT_QUEUE)
        self._subscribers.setdefault(filters, set()).add(queue)
        self._owners.update(owners)
        self._owners_of[queue] = owners
        if self._wake is not None:
            self._wake.set()  # a new client gets numbers now, not at the next commit
        return queue

    def unsubscribe(self, filters: Filters, queue: asyncio.Queue[bytes | None]) -> None:
        self._owners.subtract(self._owners_of.pop(queue, ()))
        self._owners = +self._owners  # drop the zeros
        queues = self._subscribers.get(filters)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._subscribers[filters]

    @staticmethod
    def _offer(queue: asyncio.Queue[bytes | None], item: bytes | None) -> None:
        """Put without blocking: a full queue loses its oldest event."""
        while True:
            try:
                queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()

    async def _run(self, wake: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        last = -math.inf
        while True:
            # A commit wakes us; without one, tick anyway after interval (live figures
            # such as events/s and lag move without commits).
            timeout = max(0.0, last + self.interval - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
            gap = last + self.min_gap - loop.time()
            if gap > 0:  # commits come faster than pushes are useful: coalesce them
                await asyncio.sleep(gap)
            wake.clear()  # before reading: a commit from now on wakes the next tick
            last = loop.time()
            if self._subscribers:
                try:
                    await self._tick()
                except Exception:  # keep the feed alive; the next tick retries
                    log.exception("live feed refresh failed")

    async def _tick(self) -> None:
        keys = list(self._subscribers)
        status = await self._run_read(self._status)
        self.ticks += 1
        for filters in keys:
            summary = await self._run_read(functools.partial(self._summary, filters))
            payload = {
                "tick": self.ticks,
                "generated_at": datetime.now(UTC),
                "filters": _filters_echo(filters),
                "summary": summary,
                "health": status,
            }
            message = b"id: %d\nevent: update\ndata: %s\n\n" % (self.ticks, _dumps(payload))
            for queue in list(self._subscribers.get(filters, ())):
                self._offer(queue, message)


class RequestLimits:
    """Rejects an over-long query string (414) or a repeated parameter (400) before routing.

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
                rejection = _error(
                    414, "query_too_long", f"the query string is over {MAX_QUERY_STRING} bytes"
                )
            elif query:
                pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
                repeated = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
                if repeated:
                    detail = f"repeated parameter(s): {', '.join(repeated)}"
                    rejection = _error(400, "invalid_parameter", detail)
            if rejection is not None:
                await rejection(scope, receive, send)
                return
        await self.app(scope, receive, send)


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


# --- the app --------------------------------------------------------------------------------
def create_app(
    warehouse: Warehouse,
    settings: Settings,
    status_source: StatusSource | None = None,
    *,
    refresh_seconds: float = 1.0,
    commits: CommitSignal | None = None,
    store: ServingStore | None = None,
    access: Access | None = None,
    collector: Collector | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The API over ``warehouse`` (shared, read through the query layer only), with
    ``store``, the serving store, for live views when the process keeps one.

    ``status_source`` adds live process figures (events/s per stream, lag) to the
    health payload, e.g. from the running demo. ``commits`` is the processor's commit
    signal when it runs in this process: the live feed then pushes after each commit,
    and shared answers stay current until the next commit. ``access`` says whether keys
    are required (:func:`adpulse.serving.auth.access_for`; default: open). ``/metrics``
    shows ``registry`` (the process's, holding its processors' metrics; default: a new
    one) with the API's own metrics added (:mod:`adpulse.telemetry`).
    """

    def health() -> dict[str, Any]:
        status = queries.pipeline_status(warehouse)
        body: dict[str, Any] = {**status, "data_range": queries.data_range(warehouse)}
        if status_source is not None:
            body["live"] = dict(status_source())
        return cast("dict[str, Any]", plain(body))

    def summary_of(filters: Filters) -> dict[str, Any]:
        return cast(
            "dict[str, Any]",
            plain(queries.summary(warehouse, filters, store=store).row(0, named=True)),
        )

    # Bounded reads: the processor shares this process and its cores, so readers get a
    # few threads (queries beyond that queue here) and the live feed one of its own.
    readers = ThreadPoolExecutor(settings.api_query_threads, thread_name_prefix="adpulse-api")
    feed_reader = ThreadPoolExecutor(1, thread_name_prefix="adpulse-feed")

    async def read(fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(readers, fn)

    async def read_for_feed(fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(feed_reader, fn)

    feed = LiveFeed(
        health,
        summary_of,
        refresh_seconds,
        read_for_feed,
        commits,
        per_address=settings.stream_clients_per_address,
        per_key=settings.stream_clients_per_key,
    )
    answers = ResultCache(
        settings.api_cache_seconds,
        read,
        None if commits is None else (lambda: commits.version),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        feed.start()
        try:
            yield
        finally:
            await feed.stop()
            # wait for reads still running: the warehouse is closed after the app stops
            for pool in (readers, feed_reader):
                await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    app = FastAPI(
        title="adpulse",
        version="1",
        summary="Real-time ad engagement metrics: the query layer of adpulse as JSON.",
        lifespan=lifespan,
        default_response_class=ORJSONPlainResponse,
        docs_url=None,  # below, from /vendor/ rather than a CDN
        redoc_url=None,
        openapi_url="/openapi.json" if settings.api_docs else None,
    )
    app.state.feed = feed
    app.state.answers = answers
    app.state.warehouse = warehouse
    app.state.access = access = access or Access.open()
    app.state.settings = settings
    app.include_router(session_routes())

    # --- errors ---------------------------------------------------------------------------
    @app.exception_handler(FilterError)
    async def _filter_error(request: Request, exc: FilterError) -> Response:
        return _error(400, "invalid_parameter", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        details = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "path"))
            details.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
        return _error(422, "invalid_parameter", "; ".join(details))

    # Starlette's HTTPException: FastAPI's (raised by the routes) is a subclass, and
    # Starlette raises its own for unknown paths and methods; one handler serves both.
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {401: "unauthorized", 403: "forbidden", 404: "not_found"}
        codes |= {405: "method_not_allowed", 429: "too_many_requests", 503: "unavailable"}
        response = _error(exc.status_code, codes.get(exc.status_code, "error"), exc.detail)
        response.headers.update(exc.headers or {})  # WWW-Authenticate, Retry-After
        return response

    if collector is not None:  # POST /v1/events needs the write key when keys are required
        app.include_router(collector_router(collector, [Depends(require_write_key)]))
    app.add_middleware(RequestLimits)
    known = KnownRequests()
    app.state.known_requests = known
    app.add_middleware(AnswerShortcut, known=known, answers=answers)
    app.add_middleware(ReadGate, access=access)  # no answer without a key
    if settings.cors_origins:  # before the key: a browser's preflight carries none
        app.add_middleware(CollectorCors, origins=settings.cors_origins)
    app.add_middleware(HostGate, access=access)  # DNS rebinding
    registry = new_registry() if registry is None else registry
    app.add_middleware(ApiMetrics, registry=registry)  # outermost: times every answer
    live_clients = Gauge(
        "adpulse_live_stream_clients", "Open live-feed (SSE) streams.", registry=registry
    )
    live_clients.set_function(lambda: feed.clients)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """The Prometheus text format; behind a read key when keys are required."""
        body = await asyncio.to_thread(generate_latest, registry)  # lag may ask the log
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # DuckDB reads release the GIL; a thread keeps the event loop (and SSE) responsive
        return await read(functools.partial(fn, *args, **kwargs))

    async def shared(
        request: Request, key: Hashable, build: Callable[[], Any], *, versioned: bool = True
    ) -> Response:
        """The JSON of ``build()``, shared by identical requests (see module doc)."""

        def compute() -> bytes:
            return _dumps(build())

        body = await answers.get(key, compute, versioned=versioned)
        route = route_of(request.scope)
        known.remember(request.scope, SharedRequest(key, compute, versioned, route))
        return json_body(body)

    # --- dashboard ------------------------------------------------------------------------
    no_cache = {"Cache-Control": "no-cache"}

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        """The live dashboard page."""
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=no_cache)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: Annotated[str, Path(max_length=40)]) -> Response:
        media = STATIC_FILES.get(name)
        if media is None:
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(WEB_DIR / name, media_type=media, headers=no_cache)

    @app.get("/vendor/{name}", include_in_schema=False)
    async def vendor(name: Annotated[str, Path(max_length=40)]) -> Response:
        relative = VENDOR_FILES.get(name)
        if relative is None:
            raise HTTPException(404, f"no vendor file {name!r}")
        path = WEB_DIR / "node_modules" / relative
        if not path.is_file():  # no server path in the answer: it is for anyone
            log.warning("%s is missing; run `npm ci` in %s (./run does it)", path, WEB_DIR)
            raise HTTPException(
                404,
                f"vendor file {name!r} is not installed on the server (`npm ci` in"
                " src/adpulse/serving/web; ./run does it)",
            )
        return FileResponse(path, media_type=_VENDOR_MEDIA.get(path.suffix, "text/plain"))

    if settings.api_docs:

        @app.get("/docs", include_in_schema=False)
        async def api_docs() -> Response:
            """Swagger UI over ``/openapi.json``, its files served from ``/vendor/``."""
            from fastapi.openapi.docs import get_swagger_ui_html

            return get_swagger_ui_html(
                openapi_url="/openapi.json",
                title="adpulse API",
                swagger_js_url="/vendor/swagger-ui-bundle.js",
                swagger_css_url="/vendor/swagger-ui.css",
                swagger_favicon_url="/vendor/swagger-favicon.png",
            )

    # --- probes ---------------------------------------------------------------------------
    @app.get("/healthz", tags=["probes"])
    async def healthz() -> Response:
        """Liveness: the process answers."""
        return ok({"status": "ok"})

    @app.get("/readyz", tags=["probes"])
    async def readyz() -> Response:
        """Readiness: the warehouse answers a query."""
        try:
            await run(queries.data_range, warehouse)
        except Exception as exc:  # any warehouse failure means "not ready"
            return _error(503, "not_ready", f"warehouse unavailable: {exc}")
        return ORJSONPlainResponse({"status": "ready"})

    # --- metrics --------------------------------------------------------------------------
    @app.get(f"{API_PREFIX}/metrics/{{metric}}", tags=["metrics"])
    async def metric(
        request: Request,
        filters: FiltersDep,
        metric: Annotated[str, Path(max_length=40, description=" | ".join(METRICS))],
        by: ByParam = None,
    ) -> Response:
        """One metric of ``adpulse query``, optionally grouped by ad or campaign."""
        if metric not in METRICS:
            raise HTTPException(
                404, f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}"
            )
        return await shared(
            request,
            ("metric", metric, by, filters),
            lambda: {
                "metric": metric,
                "by": by,
                "filters": _filters_echo(filters),
                "rows": queries.grouped_metric(warehouse, metric, filters, by, store=store),
            },
        )

    @app.get(f"{API_PREFIX}/summary", tags=["metrics"])
    async def summary(request: Request, filters: FiltersDep) -> Response:
        """Headline numbers (as ``adpulse query summary``)."""
        return await shared(
            request,
            ("summary", filters),
            lambda: {"filters": _filters_echo(filters), "summary": summary_of(filters)},
        )

    @app.get(f"{API_PREFIX}/timeseries", tags=["metrics"])
    async def timeseries(
        request: Request,
        filters: FiltersDep,
        bucket: Annotated[Literal["minute", "hour"], Query()] = "minute",
    ) -> Response:
        """Counts, rates and latency percentiles per minute or hour bucket."""
        return await shared(
            request,
            ("timeseries", bucket, filters),
            lambda: {
                "bucket": bucket,
                "filters": _filters_echo(filters),
                "rows": queries.bucketed_timeseries(warehouse, filters, bucket, store=store),
            },
        )

    @app.get(f"{API_PREFIX}/trending", tags=["metrics"])
    async def trending(
        request: Request,
        filters: FiltersDep,
        window: Annotated[int | None, Query(ge=1, le=1440, description="Minutes.")] = None,
        min_clicks: MinClicksParam = None,
        limit: LimitParam = 10,
    ) -> Response:
        """Campaigns ranked by the change of conversions per click between two windows."""
        minutes = settings.trending_window_minutes if window is None else window
        clicks = settings.min_clicks if min_clicks is None else min_clicks

        def build() -> dict[str, Any]:
            windows = queries.trending_windows(warehouse, filters, minutes)
            return {
                "window_minutes": minutes,
                "min_clicks": clicks,
                "windows": None if windows is None else asdict(windows),
                "filters": _filters_echo(filters),
                "rows": queries.trending(warehouse, filters, minutes, clicks, limit, store=store),
            }

        return await shared(request, ("trending", minutes, clicks, limit, filters), build)

    @app.get(f"{API_PREFIX}/top-ads", tags=["metrics"])
    async def top_ads(
        request: Request,
        filters: FiltersDep,
        by: Annotated[Literal["revenue", "conversion_rate"], Query()] = "revenue",
        min_clicks: MinClicksParam = None,
        limit: LimitParam = 10,
    ) -> Response:
        """The best ads by revenue or by conversion rate."""
        clicks = settings.min_clicks if min_clicks is None else min_clicks
        return await shared(
            request,
            ("top-ads", by, clicks, limit, filters),
            lambda: {
                "by": by,
                "min_clicks": clicks,
                "filters": _filters_echo(filters),
                "rows": queries.top_ads(warehouse, filters, by, clicks, limit, store=store),
            },
        )

    @app.get(f"{API_PREFIX}/latency-histogram", tags=["metrics"])
    async def latency_histogram(request: Request, filters: FiltersDep) -> Response:
        """Attributed conversions by click-to-conversion latency bucket (seconds)."""
        return await shared(
            request,
            ("latency-histogram", filters),
            lambda: {
                "filters": _filters_echo(filters),
                "rows": queries.latency_histogram(warehouse, filters, store=store),
            },
        )

    @app.get(f"{API_PREFIX}/breakdown/{{dimension}}", tags=["metrics"])
    async def breakdown(
        request: Request,
        filters: FiltersDep,
        dimension: Annotated[str, Path(max_length=40, description=" | ".join(DIMENSIONS))],
    ) -> Response:
        """Counts and rates per platform, location, gender, age band or interest."""
        if dimension not in DIMENSIONS:
            raise HTTPException(
                404, f"unknown dimension {dimension!r}; choose one of: {', '.join(DIMENSIONS)}"
            )
        column = cast("queries.BreakdownDimension", dimension)
        return await shared(
            request,
            ("breakdown", dimension, filters),
            lambda: {
                "dimension": dimension,
                "filters": _filters_echo(filters),
                "rows": queries.breakdown(warehouse, filters, column, store=store),
            },
        )

    @app.get(f"{API_PREFIX}/dimensions", tags=["metadata"])
    async def dimensions(request: Request) -> Response:
        """Distinct values for filter pickers, and the span of minutes holding data."""

        def both() -> dict[str, Any]:
            return {
                **queries.dimension_values(warehouse),
                "data_range": queries.data_range(warehouse),
            }

        return await shared(request, ("dimensions",), both)

    @app.get(f"{API_PREFIX}/health", tags=["metadata"])
    async def pipeline_health(request: Request) -> Response:
        """Pipeline status: counters per stream, dead letters by reason, watermarks, last
        commit, data range (and live events/s and lag when the demo serves)."""
        # live figures (events/s, lag) move without commits: shared by age only
        return await shared(request, ("health",), health, versioned=False)

    @app.get(f"{API_PREFIX}/stream", tags=["live"], response_class=StreamingResponse)
    async def stream(
        request: Request,
        filters: FiltersDep,
        max_events: Annotated[
            int | None, Query(ge=1, le=100_000, description="Close after this many events.")
        ] = None,
    ) -> StreamingResponse:
        """Server-Sent Events: an ``update`` event (summary for the filters + pipeline
        health) after each commit (at most 4 a second) and at least once a second, the
        same payload for every client."""
        address = request.client.host if request.client else ""
        queue = feed.subscribe(filters, address, request.scope.get(KEY_ID_SCOPE))

        async def events() -> AsyncIterator[bytes]:
            sent = 0
            try:
                yield b"retry: 2000\n\n"
                while max_events is None or sent < max_events:
                    try:
                        item = await asyncio.wait_for(queue.get(), timeout=15)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if item is None:  # server shutting down
                        return
                    yield item
                    sent += 1
            finally:
                feed.unsubscribe(filters, queue)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


# --- serving --------------------------------------------------------------------------------
def bind(host: str, port: int) -> Any:
    """A listening socket on ``host:port`` (port 0: a free one); OSError when taken."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_of(sock: Any) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


#: How often (seconds) Python hands the GIL between threads while the API serves; the
#: default is 5 ms. In ``adpulse demo`` the processor's threads run Python between their
#: vectorized calls, and each request waits for the GIL: at 0.005 s, 100 wrk connections
#: over the dashboard mix got p99 142 ms; at 0.001 s, p99 64 ms at the same 7.9k
#: requests/s, with ingest keeping pace (``adpulse bench-api``, one run each).
GIL_SWITCH_INTERVAL_SECONDS = 0.001


def make_server(app: FastAPI, log_level: str = "warning") -> Any:
    """A uvicorn server for ``app`` (run it with ``server.run(sockets=[sock])``).

    Also shortens the process's GIL switch interval (see
    :data:`GIL_SWITCH_INTERVAL_SECONDS`): the server shares the process with the
    processor in the demo. Connection limits (:mod:`adpulse.serving.limits`) come from
    the app's settings.
    """
    import uvicorn

    from adpulse.serving.limits import HttpLimits, uvicorn_options

    sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_SECONDS))
    settings = getattr(app.state, "settings", None)
    limits = HttpLimits()
    if isinstance(settings, Settings):
        limits = HttpLimits(
            header_timeout_seconds=settings.http_header_timeout_seconds,
            keep_alive_seconds=settings.http_keep_alive_seconds,
            max_header_bytes=settings.http_max_header_bytes,
            max_connections=settings.http_max_connections,
        )
    config = uvicorn.Config(
        app, log_level=log_level, access_log=False, lifespan="on", **uvicorn_options(limits)
    )
    return uvicorn.Server(config)


#: Seconds a stopping server waits for open requests to finish before it closes them.
SHUTDOWN_GRACE_SECONDS = 3.0


def stop_server(server: Any, thread: threading.Thread) -> None:
    """Stop a server of :func:`make_server` running in ``thread``: graceful first, then,
    after :data:`SHUTDOWN_GRACE_SECONDS`, closing what is still open."""
    feed = getattr(getattr(server.config.app, "state", None), "feed", None)
    if isinstance(feed, LiveFeed):
        feed.end_streams()
    server.should_exit = True
    thread.join(SHUTDOWN_GRACE_SECONDS)
    if thread.is_alive():
        server.force_exit = True
        thread.join(SHUTDOWN_GRACE_SECONDS)
