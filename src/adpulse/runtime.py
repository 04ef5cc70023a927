"""The composition root: the one place that wires the parts into a running process.

Each layer knows only the layers below it; this module, above them all, opens the
configured parts (:func:`open_runtime`: transport, warehouse, serving store) and
connects them for each kind of process:

- :func:`processor_for`: one processor over all partitions (``adpulse process`` over
  DuckDB, ``adpulse replay``, the demo, the API benchmark);
- :func:`partition_worker_for`: a worker sharing the partitions over PostgreSQL
  (``adpulse process``, ``--workers N``);
- :func:`commit_listeners`: what each processor reports its commits to, the seam where
  capabilities plug in: add a listener here (:mod:`adpulse.processor.listeners`). The
  Prometheus metrics (:mod:`adpulse.telemetry`) listen to every processor; the alert
  monitor (:mod:`adpulse.alerts`) is opened with the first processor of a process and
  closed with the runtime;
- :meth:`Runtime.lag_probe`: the one reader of the running processor's lag (bytes,
  records, age) per process, which the alert monitor and the metrics share;
- serving (``adpulse serve``, ``adpulse query``, the demo's API) hands the query layer
  ``Runtime.warehouse`` and ``Runtime.store`` (the serving store, when one is open).

The CLI (:mod:`adpulse.cli`) keeps argument handling and printing; the operations
(demo, benchmarks) use this module, never the CLI.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adpulse.config import Settings, load_settings
from adpulse.outages import InfrastructureError
from adpulse.storage.warehouse import open_warehouse
from adpulse.storage.warehouse.base import Warehouse
from adpulse.transport import open_transport
from adpulse.transport.base import Consumer, Producer, Transport

if TYPE_CHECKING:
    from adpulse.alerts import AlertMonitor
    from adpulse.commits import CommitSignal
    from adpulse.processor.lag import LagProbe
    from adpulse.processor.listeners import CommitListener
    from adpulse.processor.pipeline import Processor
    from adpulse.processor.workers import PartitionWorker
    from adpulse.serving.store.base import ServingStore
    from adpulse.telemetry import PipelineMetrics


class UserError(Exception):
    """An error the user can fix; printed without a traceback."""


@dataclass
class Runtime:
    """The opened parts of one process. ``store``: the serving store, when this process
    keeps one (:func:`open_store`); readers hand it to the query layer next to the
    warehouse, processors report their commits to it (:func:`commit_listeners`)."""

    settings: Settings
    transport: Transport
    warehouse: Warehouse
    store: ServingStore | None = field(default=None)
    #: The alert monitor, opened with this process's first processor (commit_listeners).
    alerts: AlertMonitor | None = field(default=None)
    #: This process's Prometheus metrics of its processors (:meth:`pipeline_metrics`).
    telemetry: PipelineMetrics | None = field(default=None)
    #: The lag of this process's processor, shared by the alerts and /metrics.
    lag: LagProbe | None = field(default=None)

    def pipeline_metrics(self) -> PipelineMetrics:
        """The commit counters of this process's processors, and the retries of its
        servers, on a registry of this process (made on first use: a read-only server
        has none)."""
        if self.telemetry is None:
            from adpulse.telemetry import PipelineMetrics, new_registry

            self.telemetry = PipelineMetrics(new_registry(), observe=True)
        return self.telemetry

    def lag_probe(self) -> LagProbe:
        """The one lag probe of this process (one consumer), made on first use; the alert
        monitor and the metrics read it (:func:`processor_for` wires them)."""
        if self.lag is None:
            from adpulse.processor.lag import LagProbe

            self.lag = LagProbe()
        return self.lag

    def close(self) -> None:
        try:
            if self.alerts is not None:
                self.alerts.close()  # sends what is queued
        finally:
            self._close_parts()

    def _close_parts(self) -> None:
        try:
            if self.lag is not None:
                self.lag.close()
            if self.telemetry is not None:
                self.telemetry.close()
            self.transport.close()
        finally:
            try:
                if self.store is not None:
                    self.store.close()
            finally:
                self.warehouse.close()


def settings_for(home: Path | None, config: Path | None, **overrides: Any) -> Settings:
    """The effective settings; an existing log's partition count wins over the default."""
    try:
        settings = load_settings(home=home, config=config, **overrides)
    except Exception as exc:  # pydantic ValidationError, TOML errors
        raise UserError(f"invalid configuration: {exc}") from exc
    if "partitions" not in settings.model_fields_set:
        existing = _log_partitions(settings.log_dir)
        if existing is not None:
            settings = settings.model_copy(update={"partitions": existing})
    return settings


def _log_partitions(log_dir: Path) -> int | None:
    """The partition count recorded by an existing embedded log, if any."""
    from adpulse.transport.embedded import META_FILE

    try:
        return int(json.loads((log_dir / META_FILE).read_text())["partitions"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_log(settings: Settings) -> Transport:
    """The configured transport (the home directory is created if needed)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    try:
        return open_transport(settings)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def open_store(settings: Settings, live: bool) -> ServingStore | None:
    """The configured serving store, when there is one to use.

    A Redis store is shared by processes: processors write it, readers read it. The
    in-process store only helps a process that both processes and serves (``live``,
    e.g. the demo); elsewhere it could never be current, so it is not opened.
    """
    from adpulse.serving.store import is_in_process, open_serving_store

    try:
        store = open_serving_store(settings)  # also rejects a malformed serving_url
    except Exception as exc:  # ValueError, ServingStoreUnavailableError: both name it
        raise UserError(str(exc)) from exc
    if is_in_process(settings) and not live:
        store.close()
        return None
    return store


@contextmanager
def open_runtime(
    settings: Settings, read_only: bool = False, live: bool = False
) -> Iterator[Runtime]:
    """Open transport, warehouse (its tables created) and serving store; close them at
    the end.

    ``read_only`` (queries, status) opens the warehouse only and creates nothing.
    ``live``: this process runs the processor and serves reads, so it keeps an
    in-process serving store when no shared one is configured.
    """
    transport = _NoTransport() if read_only else open_log(settings)
    try:
        warehouse = open_warehouse(settings, read_only=read_only)
    except Exception as exc:
        transport.close()
        raise UserError(str(exc)) from exc
    try:
        store = open_store(settings, live)
    except BaseException:
        transport.close()
        warehouse.close()
        raise
    runtime = Runtime(settings, transport, warehouse, store)
    try:
        yield runtime
    finally:
        runtime.close()


def commit_listeners(rt: Runtime, commits: CommitSignal | None = None) -> list[CommitListener]:
    """What a processor of this process reports its commits to: the serving-store sync
    when a store is open, and ``commits`` (the API's cache and live feed) when the API
    runs in this process, always the process's Prometheus metrics, and the alert
    monitor (opened on the first call; its rules and notifiers follow the ``alert_*``
    settings, see docs/alerts.md). New listeners are added here."""
    metrics = rt.pipeline_metrics()
    listeners: list[CommitListener] = [metrics]
    sync = None
    if rt.store is not None:
        from adpulse.serving.store.sync import StoreSync

        sync = StoreSync(rt.store, rt.warehouse)
        listeners.append(sync)
        metrics.watch_store(sync)
    if commits is not None:
        listeners.append(commits)
    if rt.alerts is None:
        from adpulse.alerts import open_alerting

        try:
            rt.alerts = open_alerting(rt.settings, sync)
        except ValueError as exc:  # a webhook without its secret, a malformed ARN
            raise UserError(str(exc)) from exc
    listeners.append(rt.alerts)
    return listeners


def processor_for(
    rt: Runtime,
    commits: CommitSignal | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    partitions: Sequence[int] | None = None,
    transport: Transport | None = None,
) -> Processor:
    """A processor over ``rt``'s transport (or ``transport``: the delivery in hand of a
    Lambda consumer, :mod:`adpulse.aws.delivery`) and warehouse, reporting to
    :func:`commit_listeners`."""
    from adpulse.processor.pipeline import Processor

    processor = Processor(
        rt.settings,
        transport or rt.transport,
        rt.warehouse,
        partitions=partitions,
        clock=clock,
        listeners=commit_listeners(rt, commits),
    )
    _watch_lag(rt, lambda: processor)
    return processor


def _watch_lag(rt: Runtime, source: Callable[[], Processor | None]) -> None:
    """Point the process's lag probe at ``source()`` (the processor running now) and
    hand it to the alert monitor and the metrics, which share it."""
    probe = rt.lag_probe()
    probe.follow(source)
    rt.pipeline_metrics().watch_lag(probe.read)
    if rt.alerts is not None:
        rt.alerts.watch_lag(probe.read)


def partition_worker_for(rt: Runtime) -> PartitionWorker:
    """A worker that shares the partitions with the other processes over ``rt``'s
    warehouse (which must share partitions: PostgreSQL)."""
    from adpulse.processor.workers import PartitionWorker

    worker = PartitionWorker(
        rt.settings, rt.transport, rt.warehouse, listeners=commit_listeners(rt)
    )
    _watch_lag(rt, lambda: worker.processor)  # its partitions, as they move
    return worker


class Worker(threading.Thread):
    """A daemon thread that keeps the exception it died of, for the main thread."""

    def __init__(self, target: Any, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name=name, daemon=True)
        self._call = (target, args, kwargs)
        self.error: BaseException | None = None

    def run(self) -> None:
        target, args, kwargs = self._call
        try:
            target(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported by check()
            if isinstance(exc, InfrastructureError):  # one line from the CLI; trace with -v
                logging.getLogger(__name__).debug("%s failed", self.name, exc_info=True)
            else:
                logging.getLogger(__name__).exception("%s failed", self.name)
            self.error = exc

    def check(self) -> None:
        """Raise a UserError if the thread died of an exception (an
        :class:`InfrastructureError` as it is: it names the server and its setting)."""
        if isinstance(self.error, InfrastructureError):
            raise self.error
        if self.error is not None:
            raise UserError(
                f"the {self.name} stopped: {type(self.error).__name__}: {self.error}. "
                "Committed results are safe; run the command again to resume."
            ) from self.error


class _NoTransport(Transport):
    """Stands in for the transport of read-only commands, which never use it."""

    partitions = 0

    def producer(self) -> Producer:
        raise UserError("this command is read-only and has no transport")

    def consumer(self) -> Consumer:
        raise UserError("this command is read-only and has no transport")
