"""``adpulse demo``: generator -> log -> processor -> warehouse, with a live terminal view."""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import polars as pl
from rich.columns import Columns
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from adpulse.commits import CommitSignal
from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.processor.lag import LagProbe
from adpulse.processor.pipeline import BatchReport, Processor
from adpulse.runtime import Runtime, UserError, Worker, open_runtime, processor_for
from adpulse.serving import queries
from adpulse.serving.http.announce import Announcement
from adpulse.sources.collector import Collector
from adpulse.sources.files import write_csv
from adpulse.sources.generator import EventGenerator, GeneratorConfig, HistoryTier, history_plan
from adpulse.sources.producer import publish
from adpulse.storage.dimensions import read_dimension_csv
from adpulse.storage.warehouse.duckdb import memory_limit

if TYPE_CHECKING:
    from adpulse.serving.auth import Access

#: Most history events the demo backfills (``--days``), whatever the rate: the demo
#: generates them before it starts its live feed (~15 s for 3 M; see
#: docs/dashboard-and-api.md) and the processor then works through them.
MAX_HISTORY_EVENTS = 3_000_000


def load_generated_dimensions(rt: Runtime, gen: EventGenerator, console: Console) -> None:
    """Write the generator's dimensions as the original's CSVs and load them (SCD2)."""
    folder = rt.settings.home / "dims"
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in (("campaigns.csv", gen.campaigns()), ("users.csv", gen.users())):
        path = folder / name
        write_csv(frame, path)
        kind, rows = read_dimension_csv(path)
        result = rt.warehouse.load_dimension(kind, rows, datetime.now(UTC).replace(tzinfo=None))
        console.print(
            f"dimensions {kind}: {result.rows:,} rows ({result.new_keys:,} new, "
            f"{result.changed_keys:,} changed) from {path}"
        )


class _Rates:
    """Events per second per stream over a sliding window of batch reports."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._items: deque[tuple[float, BatchReport]] = deque()
        self.lock = threading.Lock()
        self.totals: dict[str, int] = {}

    def add(self, report: BatchReport) -> None:
        with self.lock:
            self._items.append((time.monotonic(), report))
            for s, n in report.received.items():
                self.totals[s.value] = self.totals.get(s.value, 0) + n

    def per_second(self) -> dict[Stream, float]:
        now = time.monotonic()
        with self.lock:
            while self._items and now - self._items[0][0] > self.window:
                self._items.popleft()
            sums = {s: 0 for s in Stream}
            for _, r in self._items:
                for s, n in r.received.items():
                    sums[s] += n
        return {s: n / self.window for s, n in sums.items()}


#: DuckDB's memory limit in the demo when ``duckdb_memory_limit`` is not set (25 % of RAM,
#: at most this). Under a live run DuckDB fills its limit with cached blocks of the file
#: (~7 MB a minute at 5,000 events/s) besides the rows of its checkpoint interval: 256
#: MiB of the one-hour soak's 1 GB (docs/performance.md, "Memory under live load").
DEMO_DUCKDB_MEMORY_CAP: Final = 128 << 20


def demo_settings(settings: Settings) -> Settings:
    """``settings`` for the demo: DuckDB's memory limit at most
    :data:`DEMO_DUCKDB_MEMORY_CAP` unless ``duckdb_memory_limit`` was given."""
    if "duckdb_memory_limit" in settings.model_fields_set:
        return settings
    limit = memory_limit("", cap=DEMO_DUCKDB_MEMORY_CAP)
    return settings.model_copy(update={"duckdb_memory_limit": limit})


def run_demo(
    settings: Settings,
    console: Console,
    *,
    rate: float,
    seed: int,
    history_days: float,
    duration: float | None,
    refresh: float,
    serve_at: tuple[str, int] | None = None,
    insecure: bool = False,
    stop: threading.Event | None = None,
) -> str:
    """Run until ``stop`` is set or for ``duration`` seconds (``duration`` seconds of
    events at ``rate``); returns what the run committed, in words.

    ``stop`` is set by the command on SIGINT/SIGTERM (tests set it from another thread):
    the producer then sends what its generator still holds back, the processor commits
    the batch in flight, the API closes, and the rest of the log waits for the next run.
    A run of ``duration`` seconds, by contrast, commits everything it produced before it
    returns (a signal during that drain still stops it after the batch in flight).

    Every run is a new feed of the same generated world: the same dimensions (from
    ``seed``), new event ids (the feed number is the run's start time, so a restart is
    never taken for re-sends of an earlier run, see :class:`EventGenerator`).
    """
    # Conversions follow clicks after minutes rather than the default half hour, so that
    # a short demo shows attribution and latency.
    gen = EventGenerator(
        GeneratorConfig(seed=seed, conversion_delay_median_seconds=90.0),
        feed=time.time_ns() // 1_000_000,
    )
    stop = stop if stop is not None else threading.Event()
    rates = _Rates()
    live_figures: dict[str, float] = {}
    sock = None
    if serve_at is not None:
        from adpulse.serving.api import bind

        try:
            sock = bind(*serve_at)
        except OSError as exc:
            raise UserError(
                f"cannot listen on {serve_at[0]}:{serve_at[1]}: {exc}; choose --port or --no-serve"
            ) from exc
    settings = demo_settings(settings)
    with open_runtime(settings, live=True) as rt:
        access = None
        if serve_at is not None:
            from adpulse.serving.auth import InsecureServeError, access_of_server

            try:
                access = access_of_server(rt.warehouse, settings, serve_at[0], insecure)
            except InsecureServeError as exc:
                if sock is not None:
                    sock.close()
                raise UserError(str(exc)) from None
        load_generated_dimensions(rt, gen, console)
        producer = rt.transport.producer()
        now = datetime.now(UTC).replace(tzinfo=None)
        history: dict[str, object] = {}
        if history_days > 0 and rt.warehouse.next_batch_id() <= 1:
            # As dense as live just before it, thinner further back (within the cap).
            tiers = history_plan(now, history_days, rate, MAX_HISTORY_EVENTS)
            n = sum(t.events for t in tiers)
            started = time.monotonic()
            with console.status(f"backfilling {n:,} events of history"):
                for part in gen.iter_history(tiers):
                    if stop.is_set():
                        break
                    for stream in Stream:
                        publish(producer, stream, part.records[stream], settings.partitions)
                producer.flush()
            console.print(
                f"history: {n:,} events in {time.monotonic() - started:,.1f} s; "
                + _describe_history(tiers)
            )
            history = _history_figures(tiers)

        producing, processing = threading.Event(), threading.Event()

        def produce() -> None:
            last = datetime.now(UTC).replace(tzinfo=None)
            # A --duration run produces exactly that many seconds of events.
            end_at = last + timedelta(seconds=duration) if duration is not None else None
            final = False
            while not final:
                # Once told to stop, one last window sends what the generator holds back
                # (re-sends, displaced records): a run's faults stay at their rates.
                final = producing.wait(0.25)
                current = datetime.now(UTC).replace(tzinfo=None)
                if end_at is not None and current >= end_at:
                    current, final = end_at, True
                current = max(current, last + timedelta(milliseconds=1))
                seconds = (current - last).total_seconds()
                chunk = gen.stream_chunk(last, current, max(1, round(rate * seconds)), final)
                for stream in Stream:
                    publish(producer, stream, chunk.records[stream], settings.partitions)
                producer.flush()
                last = current

        commits = CommitSignal()  # the API's cache and live feed follow the commits
        processor = processor_for(rt, commits)  # also points the lag probe at it
        produce_thread = Worker(produce, "producer")
        process_thread = Worker(processor.run, "processor", processing, on_batch=rates.add)
        threads = [produce_thread, process_thread]
        server = server_thread = announcement = None
        if sock is not None:
            server, server_thread = _start_api(
                rt, sock, rates, live_figures, console, commits, access, history
            )
            threads.append(server_thread)
            # `adpulse query`/`status` ask this process while it holds the warehouse
            announcement = Announcement(settings, sock)
        for t in threads:
            t.start()
        lag_probe = rt.lag_probe()  # the process's one, shared with /metrics and the alerts
        console.print(f"demo running at {rate:,.0f} events/s into {settings.home} — Ctrl-C to stop")
        try:
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                while not stop.is_set():
                    if any(t.error is not None for t in threads):
                        break
                    live.update(_screen(rt, processor, rates, settings, lag_probe, live_figures))
                    if duration is not None and not produce_thread.is_alive():
                        break  # it produced its --duration of events
                    stop.wait(refresh)
            # Producer first, so that the processor sees all it sent; then the processor,
            # which commits its batch in flight.
            for thread, told in ((produce_thread, producing), (process_thread, processing)):
                told.set()
                _join(thread)
            failed = any(t.error is not None for t in threads)
            if not stop.is_set() and not failed:
                with console.status("committing what this run produced"):
                    processor.run(stop, on_batch=rates.add, until_caught_up=True)
        finally:
            producing.set()
            processing.set()
            if announcement is not None:
                announcement.close()
            if server is not None and server_thread is not None:
                from adpulse.serving.api import stop_server

                stop_server(server, server_thread)
            if sock is not None:
                sock.close()
            producer.close()
            processor.close()
        for t in threads:
            t.check()
        return f"committed {sum(rates.totals.values()):,} records this run"


def _history_figures(tiers: list[HistoryTier]) -> dict[str, object]:
    """What the dashboard needs to say where the backfill is thinner than live: its
    start, where it runs at the live rate from (``dense_from``), and the thinnest tier."""
    if len(tiers) < 2:
        return {}  # all of it at the live rate
    return {
        "start": _iso(tiers[0].start),
        "dense_from": _iso(tiers[-1].start),
        "end": _iso(tiers[-1].end),
        "live_rate": tiers[-1].events_per_second,
        "thinnest_rate": min(t.events_per_second for t in tiers),
    }


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds") + "Z"


def _describe_history(tiers: list[HistoryTier]) -> str:
    if not tiers:
        return "none"
    dense = tiers[-1]
    text = f"the last {dense.seconds / 60:,.0f} min at {dense.events_per_second:,.0f}/s (live)"
    if len(tiers) > 1:
        text += (
            f", thinner before (down to {tiers[0].events_per_second:,.1f}/s "
            f"{(dense.end - tiers[0].start).total_seconds() / 3600:,.1f} h back)"
        )
    return text


#: Seconds a demo thread gets to finish its batch once told to stop.
STOP_TIMEOUT_SECONDS = 60.0


def _join(thread: Worker) -> None:
    """Wait for a thread told to stop; one still running after the bound is an error
    (the warehouse cannot be closed under it)."""
    thread.join(STOP_TIMEOUT_SECONDS)
    if thread.is_alive():
        raise UserError(
            f"the {thread.name} did not stop within {STOP_TIMEOUT_SECONDS:.0f} s; committed "
            "results are safe, and the next run continues from them"
        )


def _start_api(
    rt: Runtime,
    sock: object,
    rates: _Rates,
    live_figures: dict[str, float],
    console: Console,
    commits: CommitSignal,
    access: Access | None = None,
    history: dict[str, object] | None = None,
) -> tuple[Any, Worker]:
    """The HTTP API server and the thread to run it in (not started), over the demo's
    own warehouse object (DuckDB lets one process hold the file; reads use their own
    cursors). ``history`` (:func:`_history_figures`) tells the dashboard where the
    backfill is thinner than live."""
    from adpulse.serving.api import create_app, make_server, url_of

    def figures() -> dict[str, object]:
        return {
            "events_per_second": {s.value: n for s, n in rates.per_second().items()},
            **live_figures,
            **({"history": history} if history else {}),
        }

    # The collector too: events posted to the demo join the generated ones.
    collector = Collector(rt.transport, rt.settings)
    app = create_app(
        rt.warehouse,
        rt.settings,
        status_source=figures,
        commits=commits,
        store=rt.store,
        access=access,
        collector=collector,
        registry=rt.pipeline_metrics().registry,
    )
    server = make_server(app)
    url = url_of(sock)
    console.print(f"dashboard at {url} · HTTP API at {url}api/v1/summary (docs: {url}docs)")
    return server, Worker(server.run, "http api", sockets=[sock])


def _screen(
    rt: Runtime,
    processor: Processor,
    rates: _Rates,
    settings: Settings,
    lag_probe: LagProbe,
    live_figures: dict[str, float] | None = None,
) -> Group:
    per_second = rates.per_second()
    status = queries.pipeline_status(rt.warehouse)
    pipeline = Table(title="pipeline", expand=True)
    for col in (
        "stream",
        "events/s",
        "received",
        "dead letters",
        "duplicates",
        "late",
        "watermark",
    ):
        pipeline.add_column(col, justify="left" if col in ("stream", "watermark") else "right")
    streams = status.get("streams")
    by_stream = (
        {r["stream"]: r for r in streams.to_dicts()} if isinstance(streams, pl.DataFrame) else {}
    )
    for stream in Stream:
        row = by_stream.get(stream.value, {})
        wm = processor.watermarks
        marks = [wm.get(stream, p) for p in processor.partitions]
        known = [m for m in marks if m is not None]
        pipeline.add_row(
            stream.value,
            f"{per_second[stream]:,.0f}",
            f"{row.get('received', 0) or 0:,}",
            f"{row.get('rejected', 0) or 0:,}",
            f"{row.get('duplicates', 0) or 0:,}",
            f"{row.get('late', 0) or 0:,}",
            str(min(known)) if known else "—",
        )
    dead = Table(title="dead letters by reason")
    dead.add_column("reason")
    dead.add_column("records", justify="right")
    reasons = status["dead_letters"]
    if reasons.height:
        by_reason = reasons.group_by("reason").agg(pl.col("records").sum()).sort("reason")
        for reason, records in by_reason.iter_rows():
            dead.add_row(str(reason), f"{records:,}")
    measured = lag_probe.read()
    lag = 0 if measured is None else measured.bytes
    if live_figures is not None:
        live_figures["lag_bytes"] = float(lag)
    latest = queries.data_range(rt.warehouse)
    end = latest["last_minute"]
    filters = queries.Filters(
        start=(end - timedelta(minutes=15)) if end else None,
        end=(end + timedelta(minutes=1)) if end else None,
    )
    headline = queries.summary(rt.warehouse, filters, store=rt.store).row(0, named=True)
    metrics = Table(title="headline, last 15 minutes of event time", show_header=False)
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    for label, key, unit in _HEADLINE:
        value = headline.get(key)
        metrics.add_row(label, _fmt(value) + (unit if value is not None else ""))
    footer = f"lag: {lag / 1e6:,.1f} MB not yet processed · home: {settings.home}"
    return Group(Panel(pipeline), Columns([metrics, dead]), footer)


_HEADLINE = (
    ("impressions", "impressions", ""),
    ("clicks", "clicks", ""),
    ("conversions", "conversions", ""),
    ("revenue", "revenue", ""),
    ("CTR", "ctr", ""),
    ("conversion rate", "conversion_rate", ""),
    ("revenue / conversion", "revenue_per_conversion", ""),
    ("latency p50", "latency_p50", " s"),
    ("latency p90", "latency_p90", " s"),
)


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 1 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Decimal):
        return f"{value:,.2f}"
    return str(value)
