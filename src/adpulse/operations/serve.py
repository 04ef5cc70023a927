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
from typing import Any

from rich.console import Console

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
from adpulse.sources.collector import Collector, collector_app
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
    verbose: bool = False,
) -> str:
    """Serve until ``stop`` is set (by a signal); returns what the run did, in words.

    ``process``: run the processor in this process (needs the warehouse for writing;
    with DuckDB no other process may hold it). ``collect``: serve the collector's
    endpoints (``/v1/...``). ``api``: serve the query API and the dashboard. With
    ``collect`` alone the warehouse is not opened at all: beside ``adpulse process``
    on the embedded log and DuckDB, the collector then runs as its own process.
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
        try:
            sock = bind(host, port)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc}; choose --port") from exc
        if api and rt is not None:
            app = create_app(
                rt.warehouse, settings, commits=commits, store=rt.store, collector=collector
            )
        else:
            assert collector is not None
            app = collector_app(collector)
        server = make_server(app, "info" if verbose else "warning")
        url = url_of(sock)
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
