"""Operational metrics in the Prometheus text format (``/metrics``; docs/metrics-prometheus.md).

Not to be confused with :mod:`adpulse.metrics`, the catalog of the business numbers
(clicks, CTR, ...): these describe the pipeline and the API themselves.

- :class:`PipelineMetrics` is a commit listener (:mod:`adpulse.processor.listeners`): it
  counts what each committed batch's ``stats`` and dead letters say, so its counters move
  exactly as ``adpulse status`` does, never ahead of the warehouse. Watermark delay and
  lag are computed when scraped (a gauge that only moved on commits would freeze while the
  processor is stuck, which is when it matters).
- the same object counts what the servers' retriers tell (:func:`adpulse.outages.
  observe_retries`: commit failures, retried operations, servers failing now) and, at
  scrape time, the serving-store syncs' rebuilds;
- :class:`SupervisorMetrics`: restarts of ``process --workers N``'s crashed workers;
- :class:`ApiMetrics` is the outermost ASGI layer of the HTTP API: request latency by
  route *template* and status, so unknown paths share one label and a scanner cannot
  grow the series without bound.

Each process makes its own :class:`~prometheus_client.CollectorRegistry` (not the
library's global one), so several apps and processors can live in one test process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import polars as pl
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adpulse.contracts import Stream
from adpulse.outages import Retrier, is_commit, observe_retries
from adpulse.storage.warehouse.base import BatchOutput, PartitionWatermark
from adpulse.transport.base import Lag

if TYPE_CHECKING:
    from adpulse.serving.store.sync import StoreSync

log = logging.getLogger(__name__)

#: Counters of ``ingest_stats`` exported per stream as ``adpulse_events_<name>_total``.
EVENT_COUNTERS: Final = ("received", "accepted", "rejected", "duplicates", "late")
#: Batch step times run from sub-millisecond (dedupe of a small batch) to seconds.
STEP_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: A shared answer costs well under a millisecond; a cold warehouse query, seconds.
REQUEST_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
#: The route label of requests answered before routing matched a route: unknown paths
#: (404), and requests refused by the Host, key or size checks in front of the router.
UNMATCHED_ROUTE: Final = "unmatched"
#: Methods labelled as themselves; any other (a client may send any token) is "other".
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Scope key where a layer that answers without routing (the shared-answer shortcut)
#: records the route template the answer was first routed to.
ROUTE_SCOPE: Final = "adpulse.route_template"
#: The settings of the servers whose operations are retried (:class:`~adpulse.outages.
#: Retrier`), labelled from the start so that ``increase()`` sees their first failure.
RETRIED_SETTINGS: Final = ("warehouse_url", "transport_url")


def new_registry() -> CollectorRegistry:
    """A registry for one process (or one app in a test), never the global default."""
    return CollectorRegistry(auto_describe=True)


class PipelineMetrics:
    """Counts committed batches; a :class:`~adpulse.processor.listeners.CommitListener`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        observe: bool = False,
    ) -> None:
        """``observe``: count the retries of this process's servers until :meth:`close`."""
        self.registry = registry
        self._clock = clock
        self.events = {
            name: Counter(
                f"adpulse_events_{name}",
                f"Records {name} by the processor, per stream (committed batches; as"
                " `adpulse status`).",
                ["stream"],
                registry=registry,
            )
            for name in EVENT_COUNTERS
        }
        for counter in self.events.values():
            for stream in Stream:
                counter.labels(stream.value)  # zeros before the first batch, not absence
        self.dead_letters = Counter(
            "adpulse_dead_letters",
            "Records sent to the dead-letter table, per stream and reason.",
            ["stream", "reason"],
            registry=registry,
        )
        self.batches = Counter(
            "adpulse_batches_committed", "Batches committed to the warehouse.", registry=registry
        )
        self.step_seconds = Histogram(
            "adpulse_batch_step_duration_seconds",
            "Time one batch spent in each processor step (decode, validate, dedupe, enrich,"
            " attribute, aggregate).",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "adpulse_commit_duration_seconds",
            "Time of one batch's warehouse commit and transport acknowledgement.",
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.last_commit = Gauge(
            "adpulse_last_commit_timestamp_seconds",
            "Unix time of the latest committed batch (0 before the first).",
            registry=registry,
        )
        self.commit_failures = Counter(
            "adpulse_commit_failures",
            "Failed attempts of the warehouse commit of a batch (a lost connection): each"
            " one retried, or the last one given up on, which stops the processor.",
            registry=registry,
        )
        self.retries = Counter(
            "adpulse_server_retries",
            "Operations on a server retried after a lost connection, by the setting naming"
            " the server (commits included).",
            ["setting"],
            registry=registry,
        )
        self.failing = Gauge(
            "adpulse_server_failing",
            "1 while operations on a server fail (retried, or given up on) until one"
            " succeeds; operation: commit (the warehouse's commits) or other.",
            ["setting", "operation"],
            registry=registry,
        )
        for setting in RETRIED_SETTINGS:
            self.retries.labels(setting)
            self.failing.labels(setting, "other")
        self.failing.labels("warehouse_url", "commit")
        self._lock = threading.Lock()
        self._watermarks: dict[tuple[Stream, int], PartitionWatermark] = {}
        self._lag: Callable[[], Lag | None] | None = None
        self._stores: list[StoreSync] = []
        registry.register(_ScrapeTimeCollector(self))
        self._stop_observing = observe_retries(self) if observe else None

    def close(self) -> None:
        """Stop counting retries (the runtime closes its metrics with it)."""
        if self._stop_observing is not None:
            self._stop_observing()
            self._stop_observing = None

    # -- the retry observer (any thread; prometheus-client's metrics are thread-safe) --------
    def retrying(self, retrier: Retrier, what: str, reason: str) -> None:
        self.retries.labels(retrier.setting).inc()
        self._failed(retrier, what)

    def gave_up(self, retrier: Retrier, what: str, reason: str) -> None:
        self._failed(retrier, what)

    def _failed(self, retrier: Retrier, what: str) -> None:
        commit = is_commit(retrier, what)
        if commit:
            self.commit_failures.inc()
        self.failing.labels(retrier.setting, "commit" if commit else "other").set(1)

    def recovered(self, retrier: Retrier, what: str) -> None:
        """As the alerts: the first success clears every failure of the server."""
        self.failing.labels(retrier.setting, "other").set(0)
        if retrier.setting == "warehouse_url":
            self.failing.labels(retrier.setting, "commit").set(0)

    # -- the commit listener -------------------------------------------------------------
    def start(self, partitions: object) -> None:
        """Nothing to recover: counters count this process's commits from zero."""

    def on_commit(self, output: BatchOutput) -> None:
        # Summed per stream first: one increment per counter and stream, not per partition.
        totals: dict[tuple[str, str], int] = {}
        for stream, *counts in output.stats.select("stream", *EVENT_COUNTERS).iter_rows():
            for name, n in zip(EVENT_COUNTERS, counts, strict=True):
                totals[(name, stream)] = totals.get((name, stream), 0) + n
        for (name, stream), n in totals.items():
            self.events[name].labels(stream).inc(n)
        if output.dead_letters.height:
            reasons = output.dead_letters.group_by("stream", "reason").agg(pl.len().alias("n"))
            for stream, reason, n in reasons.iter_rows():
                self.dead_letters.labels(stream, reason).inc(n)
        for step, seconds in output.seconds.items():
            if step == "commit":
                self.commit_seconds.observe(seconds)
            else:
                self.step_seconds.labels(step).observe(seconds)
        self.batches.inc()
        self.last_commit.set(time.time())
        with self._lock:
            self._watermarks.update(output.watermarks)

    # -- scrape-time figures -------------------------------------------------------------
    def watch_lag(self, lag: Callable[[], Lag | None]) -> None:
        """Report ``lag()`` (the runtime's :class:`~adpulse.processor.lag.LagProbe`) at
        each scrape; it runs on the scraping thread, so it must be thread-safe."""
        self._lag = lag

    def watch_store(self, sync: StoreSync) -> None:
        """Report the rebuilds of a serving-store sync (every processor's) at each scrape."""
        with self._lock:
            self._stores.append(sync)

    def store_figures(self) -> tuple[int, int, int, bool] | None:
        """(initial rebuilds, repairs, failed writes, behind) summed over the watched
        syncs; ``None`` when no serving store is kept."""
        with self._lock:
            syncs = list(self._stores)
        if not syncs:
            return None
        return (
            sum(s.rebuilds - s.repairs for s in syncs),
            sum(s.repairs for s in syncs),
            sum(s.failures for s in syncs),
            any(s.behind for s in syncs),
        )

    def watermark_delays(self) -> dict[str, float]:
        """Seconds from each stream's oldest partition watermark to now."""
        now = self._clock().replace(tzinfo=None)
        oldest: dict[str, datetime] = {}
        with self._lock:
            for (stream, _), mark in self._watermarks.items():
                if stream.value not in oldest or mark.watermark < oldest[stream.value]:
                    oldest[stream.value] = mark.watermark
        return {s: (now - w).total_seconds() for s, w in oldest.items()}


class _ScrapeTimeCollector(Collector):
    """Watermark delay and lag, computed when scraped."""

    def __init__(self, pipeline: PipelineMetrics) -> None:
        self.pipeline = pipeline

    def describe(self) -> list[Metric]:
        return []  # computed per scrape; nothing to check for name clashes up front

    def collect(self) -> Iterator[Metric]:
        delay = GaugeMetricFamily(
            "adpulse_watermark_delay_seconds",
            "Now minus the stream's watermark (its slowest partition), as of the last commit.",
            labels=["stream"],
        )
        for stream, seconds in sorted(self.pipeline.watermark_delays().items()):
            delay.add_metric([stream], seconds)
        yield delay
        yield from self._lag()
        yield from self._store()

    def _lag(self) -> Iterator[Metric]:
        read = self.pipeline._lag
        if read is None:
            return
        try:
            lag = read()
        except Exception:  # noqa: BLE001 - a scrape must not fail on the transport
            log.warning("lag for /metrics unavailable", exc_info=True)
            return
        if lag is None:
            return  # no processor runs now (a worker holding no partition)
        yield GaugeMetricFamily(
            "adpulse_lag_bytes",
            "Bytes in the log not yet processed by this process's partitions.",
            value=lag.bytes,
        )
        if lag.records is not None:
            yield GaugeMetricFamily(
                "adpulse_lag_records",
                "Records in the log not yet processed by this process's partitions.",
                value=lag.records,
            )
        if lag.seconds is not None:
            yield GaugeMetricFamily(
                "adpulse_lag_seconds",
                "Age of the lag: seconds from the append of the oldest record not yet"
                " processed to the append of the newest (its partition's; the largest).",
                value=lag.seconds,
            )

    def _store(self) -> Iterator[Metric]:
        figures = self.pipeline.store_figures()
        if figures is None:
            return
        initial, repairs, failures, behind = figures
        rebuilds = CounterMetricFamily(
            "adpulse_store_rebuilds",
            "Serving-store rebuilds from the warehouse: kind=initial until the store was"
            " first current, kind=repair after (a failed write, a gap, a flushed store).",
            labels=["kind"],
        )
        rebuilds.add_metric(["initial"], initial)
        rebuilds.add_metric(["repair"], repairs)
        yield rebuilds
        yield CounterMetricFamily(
            "adpulse_store_write_failures",
            "Serving-store writes and rebuilds that failed (reads use the warehouse meanwhile).",
            value=failures,
        )
        yield GaugeMetricFamily(
            "adpulse_store_behind",
            "1 while the serving store misses committed batches (until its next rebuild).",
            value=int(behind),
        )


class SupervisorMetrics:
    """The metrics of ``adpulse process --workers N``'s supervisor, which runs no
    processor: its crashed workers' restarts (the ``crash_loop`` alert's count)."""

    def __init__(self, registry: CollectorRegistry, workers: int) -> None:
        self.registry = registry
        self.restarts = Counter(
            "adpulse_worker_restarts",
            "Worker processes of `process --workers N` that crashed and were restarted.",
            registry=registry,
        )
        Gauge("adpulse_workers", "Worker processes the supervisor runs.", registry=registry).set(
            workers
        )

    def crashed(self, slot: int, status: int) -> None:
        """``supervise``'s ``on_crash``: a worker crashed and will be restarted."""
        self.restarts.inc()


class RequestMetrics:
    """The API's request latency histogram by method, route template and status, with
    its children kept by labels (``labels()`` validates and locks on every call)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram(
            "adpulse_http_request_duration_seconds",
            "HTTP API request time (to the end of the response body), by method, route"
            " template and status. Unknown paths and refused requests: route='unmatched'.",
            ["method", "route", "status"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self._children: dict[tuple[str, str, int], Any] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request (``method`` as sent: any but :data:`METHODS` is "other")."""
        key = (method, route, status)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= 1024:  # routes are templates, but methods any token
                self._children.clear()
            labels = (method if method in METHODS else "other", route, str(status))
            child = self._children[key] = self.seconds.labels(*labels)
        child.observe(seconds)


class ApiMetrics:
    """Request latency by route template and status; the API's outermost layer, so it
    also times requests the Host, key and size checks refuse. Plain ASGI, like the other
    layers of :mod:`adpulse.serving.http.middleware` (no response re-streaming).
    ``metrics``: the histogram to count in (default: a new one in ``registry``)."""

    def __init__(
        self,
        app: ASGIApp,
        registry: CollectorRegistry | None = None,
        metrics: RequestMetrics | None = None,
    ) -> None:
        self.app = app
        if metrics is None:
            assert registry is not None, "ApiMetrics needs a registry or its metrics"
            metrics = RequestMetrics(registry)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.observe(
                scope["method"], route_of(scope), status[0], time.perf_counter() - t0
            )


def route_of(scope: Scope) -> str:
    """The route template a request was routed to (``/api/v1/metrics/{metric}``), never
    the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return str(scope.get(ROUTE_SCOPE, UNMATCHED_ROUTE))


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> object:
    """Start prometheus-client's own HTTP server for ``registry`` on a daemon thread (for
    processes without the API: ``adpulse process`` and its workers). Returns the server."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise OSError(
            f"cannot serve metrics on {host}:{port}: {exc}; choose another --metrics-port"
            " (setting metrics_port), or 0 for none"
        ) from exc
    return server
