"""The endpoints, as routers: the dashboard page and its files, the probes, the data
endpoints under :data:`API_PREFIX`, and ``/metrics``.

No SQL here: each data endpoint validates its parameters (:mod:`.params`), builds a
:class:`~adpulse.serving.queries.Filters` and calls the one query layer (which binds
every value as a parameter), its answer shared by identical requests
(:class:`~adpulse.serving.http.middleware.SharedAnswers`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Annotated, Any, Final, Literal, cast

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from adpulse.config import Settings
from adpulse.serving import answers, queries
from adpulse.serving.answers import filters_echo
from adpulse.serving.auth import KEY_ID_SCOPE
from adpulse.serving.http.encoding import ORJSONPlainResponse, error_response, ok
from adpulse.serving.http.feed import LiveFeed
from adpulse.serving.http.middleware import SharedAnswers
from adpulse.serving.http.params import (
    DIMENSIONS,
    METRICS,
    ByParam,
    FiltersDep,
    LimitParam,
    MinClicksParam,
    refuse_unknown_parameters,
)
from adpulse.serving.queries import Filters
from adpulse.serving.store.base import ServingStore
from adpulse.storage.warehouse.base import Warehouse

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1"

#: The dashboard page (static files) and its npm-installed vendor libraries.
WEB_DIR: Final = FilePath(__file__).parents[1] / "web"
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


@dataclass(frozen=True, slots=True)
class Reads:
    """What the data endpoints and probes read, and how: ``run`` runs a warehouse read
    on the API's reader threads; ``health`` and ``summary_of`` build the payloads the
    live feed pushes too."""

    warehouse: Warehouse
    store: ServingStore | None
    settings: Settings
    shared: SharedAnswers
    feed: LiveFeed
    run: Callable[..., Awaitable[Any]]
    health: Callable[[], dict[str, Any]]
    summary_of: Callable[[Filters], dict[str, Any]]


def prometheus_routes(registry: CollectorRegistry) -> APIRouter:
    """``/metrics``: ``registry`` in the Prometheus text format."""
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """The Prometheus text format; behind a read key when keys are required."""
        body = await asyncio.to_thread(generate_latest, registry)  # lag may ask the log
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router


def page_routes(settings: Settings) -> APIRouter:
    """The dashboard page, its files, and Swagger UI when ``settings.api_docs``."""
    router = APIRouter()
    no_cache = {"Cache-Control": "no-cache"}

    @router.get("/", include_in_schema=False)
    async def index() -> Response:
        """The live dashboard page."""
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=no_cache)

    @router.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        """The page's icon (SVG, which browsers take at this path too)."""
        return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")

    @router.get("/static/{name}", include_in_schema=False)
    async def static(name: Annotated[str, Path(max_length=40)]) -> Response:
        media = STATIC_FILES.get(name)
        if media is None:
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(WEB_DIR / name, media_type=media, headers=no_cache)

    @router.get("/vendor/{name}", include_in_schema=False)
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

        @router.get("/docs", include_in_schema=False)
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

    return router


def probe_routes(ctx: Reads) -> APIRouter:
    """Liveness and readiness."""
    router = APIRouter()

    @router.get("/healthz", tags=["probes"])
    async def healthz() -> Response:
        """Liveness: the process answers."""
        return ok({"status": "ok"})

    @router.get("/readyz", tags=["probes"])
    async def readyz() -> Response:
        """Readiness: the warehouse answers a query."""
        try:
            await ctx.run(queries.data_range, ctx.warehouse)
        except Exception as exc:  # any warehouse failure means "not ready"
            return error_response(503, "not_ready", f"warehouse unavailable: {exc}")
        return ORJSONPlainResponse({"status": "ready"})

    return router


def data_routes(ctx: Reads) -> APIRouter:
    """The data endpoints under :data:`API_PREFIX`, the live stream among them; each
    refuses query parameters it does not take."""
    router = APIRouter(dependencies=[Depends(refuse_unknown_parameters)])

    @router.get(f"{API_PREFIX}/metrics/{{metric}}", tags=["metrics"])
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
        return await ctx.shared.respond(
            request,
            ("metric", metric, by, filters),
            lambda: answers.metric_answer(ctx.warehouse, metric, filters, by, ctx.store),
        )

    @router.get(f"{API_PREFIX}/summary", tags=["metrics"])
    async def summary(request: Request, filters: FiltersDep) -> Response:
        """Headline numbers (as ``adpulse query summary``)."""
        return await ctx.shared.respond(
            request,
            ("summary", filters),
            lambda: answers.summary_answer(ctx.warehouse, filters, ctx.store),
        )

    @router.get(f"{API_PREFIX}/timeseries", tags=["metrics"])
    async def timeseries(
        request: Request,
        filters: FiltersDep,
        bucket: Annotated[Literal["minute", "hour"], Query()] = "minute",
    ) -> Response:
        """Counts, rates and latency percentiles per minute or hour bucket."""
        return await ctx.shared.respond(
            request,
            ("timeseries", bucket, filters),
            lambda: {
                "bucket": bucket,
                "filters": filters_echo(filters),
                "rows": queries.bucketed_timeseries(
                    ctx.warehouse, filters, bucket, store=ctx.store
                ),
            },
        )

    @router.get(f"{API_PREFIX}/trending", tags=["metrics"])
    async def trending(
        request: Request,
        filters: FiltersDep,
        window: Annotated[int | None, Query(ge=1, le=1440, description="Minutes.")] = None,
        min_clicks: MinClicksParam = None,
        limit: LimitParam = 10,
    ) -> Response:
        """Campaigns ranked by the change of conversions per click between two windows."""
        minutes = ctx.settings.trending_window_minutes if window is None else window
        clicks = ctx.settings.min_clicks if min_clicks is None else min_clicks

        return await ctx.shared.respond(
            request,
            ("trending", minutes, clicks, limit, filters),
            lambda: answers.trending_answer(
                ctx.warehouse, filters, minutes, clicks, limit, ctx.store
            ),
        )

    @router.get(f"{API_PREFIX}/top-ads", tags=["metrics"])
    async def top_ads(
        request: Request,
        filters: FiltersDep,
        by: Annotated[Literal["revenue", "conversion_rate"], Query()] = "revenue",
        min_clicks: MinClicksParam = None,
        limit: LimitParam = 10,
    ) -> Response:
        """The best ads by revenue or by conversion rate."""
        clicks = ctx.settings.min_clicks if min_clicks is None else min_clicks
        return await ctx.shared.respond(
            request,
            ("top-ads", by, clicks, limit, filters),
            lambda: answers.top_ads_answer(ctx.warehouse, filters, by, clicks, limit, ctx.store),
        )

    @router.get(f"{API_PREFIX}/latency-histogram", tags=["metrics"])
    async def latency_histogram(request: Request, filters: FiltersDep) -> Response:
        """Attributed conversions by click-to-conversion latency bucket (seconds)."""
        return await ctx.shared.respond(
            request,
            ("latency-histogram", filters),
            lambda: {
                "filters": filters_echo(filters),
                "rows": queries.latency_histogram(ctx.warehouse, filters, store=ctx.store),
            },
        )

    @router.get(f"{API_PREFIX}/breakdown/{{dimension}}", tags=["metrics"])
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
        return await ctx.shared.respond(
            request,
            ("breakdown", dimension, filters),
            lambda: {
                "dimension": dimension,
                "filters": filters_echo(filters),
                "rows": queries.breakdown(ctx.warehouse, filters, column, store=ctx.store),
            },
        )

    @router.get(f"{API_PREFIX}/dimensions", tags=["metadata"])
    async def dimensions(request: Request) -> Response:
        """Distinct values for filter pickers, and the span of minutes holding data."""

        def both() -> dict[str, Any]:
            return {
                **queries.dimension_values(ctx.warehouse),
                "data_range": queries.data_range(ctx.warehouse),
            }

        return await ctx.shared.respond(request, ("dimensions",), both)

    @router.get(f"{API_PREFIX}/health", tags=["metadata"])
    async def pipeline_health(request: Request) -> Response:
        """Pipeline status: counters per stream, dead letters by reason, watermarks, last
        commit, data range (and live events/s and lag when the demo serves)."""
        # live figures (events/s, lag) move without commits: shared by age only
        return await ctx.shared.respond(request, ("health",), ctx.health, versioned=False)

    @router.get(f"{API_PREFIX}/stream", tags=["live"], response_class=StreamingResponse)
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
        queue = ctx.feed.subscribe(filters, address, request.scope.get(KEY_ID_SCOPE))

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
                ctx.feed.unsubscribe(filters, queue)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router
