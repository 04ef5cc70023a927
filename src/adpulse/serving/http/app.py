"""``create_app``: the API composed from its parts (see the package doc)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, cast

from fastapi import Depends, FastAPI, Request
from prometheus_client import CollectorRegistry, Gauge

from adpulse.commits import CommitSignal
from adpulse.config import Settings
from adpulse.serving import queries
from adpulse.serving.auth import (
    Access,
    KeyRejectedError,
    check,
    presented_key,
    require_write_key,
    session_routes,
)
from adpulse.serving.cache import ResultCache
from adpulse.serving.http.encoding import ORJSONPlainResponse, plain
from adpulse.serving.http.errors import add_error_handlers
from adpulse.serving.http.feed import LiveFeed
from adpulse.serving.http.front import CollectorFront, FrontedFastAPI
from adpulse.serving.http.middleware import KnownRequests, SharedAnswers, add_layers
from adpulse.serving.http.params import CheckedFilters
from adpulse.serving.http.routes import (
    Reads,
    data_routes,
    page_routes,
    probe_routes,
    prometheus_routes,
)
from adpulse.serving.http.server import FASTAPI_TELEMETRY_OFF
from adpulse.serving.queries import Filters
from adpulse.serving.store.base import ServingStore
from adpulse.sources.collector import Collector, CollectorError, CollectorPaths, collector_router
from adpulse.storage.warehouse.base import Warehouse
from adpulse.telemetry import new_registry

StatusSource = Callable[[], Mapping[str, Any]]


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

    async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # DuckDB reads release the GIL; a thread keeps the event loop (and SSE) responsive
        return await read(functools.partial(fn, *args, **kwargs))

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

    app = FrontedFastAPI(
        title="adpulse",
        version="1",
        summary="Real-time ad engagement metrics: the query layer of adpulse as JSON.",
        lifespan=lifespan,
        default_response_class=ORJSONPlainResponse,
        docs_url=None,  # in page_routes, from /vendor/ rather than a CDN
        redoc_url=None,
        openapi_url="/openapi.json" if settings.api_docs else None,
        telemetry=FASTAPI_TELEMETRY_OFF,
    )
    app.state.feed = feed
    app.state.answers = answers
    app.state.warehouse = warehouse
    app.state.access = access = access or Access.open()
    app.state.settings = settings
    app.include_router(session_routes())
    add_error_handlers(app)
    if collector is not None:  # POST /v1/events needs the write key when keys are required
        app.include_router(collector_router(collector, [Depends(require_write_key)]))
        # The same endpoints as plain ASGI ahead of FastAPI (innermost layer: added first).
        app.add_middleware(CollectorPaths, collector=collector, write_key=write_key_check(access))

    known = KnownRequests()
    app.state.known_requests = known
    shared = SharedAnswers(answers, known)
    registry = new_registry() if registry is None else registry
    metrics = add_layers(app, settings, access, shared, registry)
    if collector is not None:  # the pixel and the click ahead of every layer, when they may
        app.collector_front = CollectorFront(
            CollectorPaths(app.router, collector),
            access,
            cors=bool(settings.cors_origins),
            limits=True,
            metrics=metrics,
        )
    live_clients = Gauge(
        "adpulse_live_stream_clients", "Open live-feed (SSE) streams.", registry=registry
    )
    live_clients.set_function(lambda: feed.clients)

    app.state.checked_filters = CheckedFilters(
        functools.partial(queries.known_values, warehouse),
        read,
        None if commits is None else (lambda: commits.version),
        max(settings.api_cache_seconds, 1.0),
    )
    reads = Reads(warehouse, store, settings, shared, feed, run, health, summary_of)
    app.include_router(prometheus_routes(registry))
    app.include_router(page_routes(settings))
    app.include_router(probe_routes(reads))
    app.include_router(data_routes(reads))
    return app


def write_key_check(access: Access) -> Callable[[Any], Awaitable[None]]:
    """The collector's plain-ASGI ``POST`` check: what ``require_write_key`` asks, with
    its answers (401, 403, 429 and their headers) as the collector's errors."""

    async def check_write_key(scope: Any) -> None:
        if not access.required:
            return
        request = Request(scope)
        try:
            await check(access, "write", presented_key(request.headers, request.cookies))
        except KeyRejectedError as exc:
            raise CollectorError(exc.status, exc.error, exc.detail, exc.headers) from None

    return check_write_key
