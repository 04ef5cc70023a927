"""``adpulse serve``: the HTTP API, the event collector and the processor in one process.

On the embedded default (DuckDB holds its file for one process) this is the only way to
have events posted to the collector become queryable without another command: the
collector appends to the log, the processor thread commits them, the API reads them.
Over PostgreSQL and Redis Streams each part may run as its own process instead
(``serve --no-process`` beside ``adpulse process`` workers, or ``--no-collect``).

Stopping (SIGINT/SIGTERM, :mod:`adpulse.cli.stopping`) goes front to back: the server
first (no new ``202`` after it; requests in flight finish within the grace period),
then the collector's producer, then the processor, which commits its batch in flight.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from rich.console import Console
from starlette.exceptions import HTTPException as StarletteHTTPException

from adpulse.commits import CommitSignal
from adpulse.config import Settings
from adpulse.processor.pipeline import Processor
from adpulse.processor.workers import PartitionWorker
from adpulse.runtime import (
    Runtime,
    UserError,
    Worker,
    open_log,
    open_runtime,
    partition_worker_for,
    processor_for,
)
from adpulse.serving.auth import Access, HostGate, InsecureServeError, access_of_server, is_loopback
from adpulse.serving.cors import CollectorCors
from adpulse.serving.http.announce import Announcement
from adpulse.sources.collector import Collector, CollectorError, CollectorPaths, collector_router
from adpulse.transport.base import Transport

#: Seconds the processor gets to commit its batch in flight once told to stop.
PROCESSOR_STOP_SECONDS = 60.0


def run_serve(
    settings: Settings,
    console: Console,
    stop: threading.Event,
    *,
    host: str,
    port: int,
    process: bool = True,
    collect: bool = True,
    api: bool = True,
    insecure: bool = False,
    verbose: bool = False,
) -> str:
    """Serve until ``stop`` is set (by a signal); returns what the run did, in words.

    ``process``: run the processor in this process (needs the warehouse for writing;
    with DuckDB no other process may hold it). ``collect``: serve the collector's
    endpoints (``/v1/...``). ``api``: serve the query API and the dashboard. With
    ``collect`` alone the warehouse is not opened at all: beside ``adpulse process``
    on the embedded log and DuckDB, the collector then runs as its own process; having
    no warehouse, it has no API keys to check either, so it serves loopback only unless
    ``insecure``. Keys: see :func:`adpulse.serving.auth.access_of_server`.
    """
    from adpulse.serving.api import bind, create_app, make_server, stop_server, url_of

    if not (api or collect):
        raise UserError("nothing to serve: --no-api and --no-collect leave no endpoint")
    with contextlib.ExitStack() as opened:
        rt: Runtime | None = None
        if process or api:
            rt = opened.enter_context(open_runtime(settings, read_only=not process, live=process))
        own_transport: Transport | None = None
        if collect and not process:
            own_transport = open_log(settings)
            opened.callback(own_transport.close)
        transport = own_transport or (rt.transport if rt is not None else None)
        collector = Collector(transport, settings) if collect and transport else None
        runner: Processor | PartitionWorker | None = None
        commits: CommitSignal | None = None
        committed = [0]
        if process and rt is not None:
            if rt.warehouse.shares_partitions:  # PostgreSQL: shares with other workers
                runner = partition_worker_for(rt)
            else:
                commits = CommitSignal()  # the API's cache and live feed follow the commits
                runner = processor_for(rt, commits)
        access = _access(rt, settings, host, insecure)
        try:
            sock = bind(host, port)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc}; choose --port") from exc
        if api and rt is not None:
            app = create_app(
                rt.warehouse,
                settings,
                commits=commits,
                store=rt.store,
                access=access,
                collector=collector,
                # the processors' metrics when this process runs one (read-only: API only)
                registry=rt.pipeline_metrics().registry if runner is not None else None,
            )
        else:
            assert collector is not None
            app = collector_app(collector, settings, access)
        server = make_server(app, "info" if verbose else "warning")
        url = url_of(sock)
        if api and rt is not None:  # `adpulse query`/`status` ask here while we hold the file
            opened.enter_context(Announcement(settings, sock))
        console.print(f"serving {settings.home} at {url} (API docs: {url}docs)")
        if collector is not None:
            console.print(f"collecting events at {url}v1/events/{{stream}}")
        console.file.flush()
        # In a thread, uvicorn leaves the signals alone (in the main thread it would
        # raise them again once stopped): this thread waits for one, then stops it.
        server_thread = Worker(server.run, "HTTP API", sockets=[sock])
        threads = [server_thread]
        processing = threading.Event()
        if runner is not None:

            def count(report: Any) -> None:
                committed[0] += report.records

            threads.append(Worker(runner.run, "processor", processing, on_batch=count))
        try:
            for thread in threads:
                thread.start()
            while all(t.is_alive() for t in threads) and not stop.wait(0.5):
                pass
            stop_server(server, server_thread)
            if collector is not None:
                collector.close()
            processing.set()
            for thread in threads[1:]:
                thread.join(PROCESSOR_STOP_SECONDS)
                if thread.is_alive():
                    raise UserError(
                        f"the processor did not stop within {PROCESSOR_STOP_SECONDS:.0f} s;"
                        " committed results are safe, and the next run continues from them"
                    )
        finally:
            processing.set()
            sock.close()
            if runner is not None:
                runner.close()
        for thread in threads:
            thread.check()
    done = f"served {settings.home}"
    if runner is not None:
        done += f", committed {committed[0]:,} records"
    return done


def _access(rt: Runtime | None, settings: Settings, host: str, insecure: bool) -> Access:
    """Who may use the server: API keys off loopback (from the warehouse), or, for the
    collector alone (no warehouse, no keys), loopback only unless ``insecure``."""
    if rt is not None:
        try:
            return access_of_server(rt.warehouse, settings, host, insecure)
        except InsecureServeError as exc:
            raise UserError(str(exc)) from None
    if not is_loopback(host) and not insecure:
        raise UserError(
            f"refusing to serve the collector alone on {host}: it opens no warehouse, so it"
            " has no API keys to check. Serve it on loopback behind a proxy that checks,"
            " or with the API (without --no-api), or give --insecure to accept events"
            " from anyone who can reach it"
        )
    hosts = frozenset(h.lower() for h in settings.allowed_hosts)
    return replace(Access.open(), hosts=hosts if is_loopback(host) else hosts or None)


def collector_app(collector: Collector, settings: Settings, access: Access) -> FastAPI:
    """The collector as an app of its own (``serve --no-api``), with the query API's
    error shape, ``Host`` check and CORS for the collector."""
    from adpulse.serving.http.front import CollectorFront, FrontedFastAPI
    from adpulse.serving.http.server import FASTAPI_TELEMETRY_OFF

    app = FrontedFastAPI(
        title="adpulse collector",
        version="1",
        docs_url=None,
        redoc_url=None,
        telemetry=FASTAPI_TELEMETRY_OFF,
    )
    app.state.access = access
    app.state.settings = settings  # make_server's connection limits
    app.include_router(collector_router(collector))
    app.add_middleware(CollectorPaths, collector=collector)  # innermost: added first

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return CollectorError(422, "invalid_parameter", where).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed"}
        error = CollectorError(exc.status_code, codes.get(exc.status_code, "error"), exc.detail)
        return error.response()

    if settings.cors_origins:
        app.add_middleware(CollectorCors, origins=settings.cors_origins)
    app.add_middleware(HostGate, access=access)
    paths = CollectorPaths(app.router, collector)
    cors = bool(settings.cors_origins)
    app.collector_front = CollectorFront(paths, access, cors=cors, limits=False, metrics=None)
    return app
