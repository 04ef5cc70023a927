"""Prometheus metrics of failures and lag (/metrics, parsed with the Prometheus parser):
commit failures and retries equal what the retriers did (a real PostgreSQL whose commit
answer is lost, and retriers failing a known number of times), serving-store rebuilds
are counted once each, worker restarts equal the supervisor's crashes, and the lag in
bytes, records and age equals the log's, read by one probe the alerts share."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from builders import MiniPipeline, web_impression
from pgtest import PG_URL, drop_schema, new_schema, require_postgres
from scrapes import Samples, scrape
from tcpproxy import TcpProxy

from adpulse.alerts import AlertMonitor
from adpulse.contracts import Stream
from adpulse.outages import InfrastructureError, Retrier, ServerTimeouts, observe_retries
from adpulse.processor.pipeline import Processor
from adpulse.processor.workers import supervise
from adpulse.runtime import open_runtime, processor_for, settings_for
from adpulse.serving.store.base import LiveDelta
from adpulse.serving.store.memory import MemoryServingStore
from adpulse.serving.store.sync import StoreSync
from adpulse.storage.warehouse.postgres import PostgresWarehouse
from adpulse.telemetry import PipelineMetrics, SupervisorMetrics, new_registry
from adpulse.transport.base import Lag

FAILING_COMMIT = ("adpulse_server_failing", (("operation", "commit"), ("setting", "warehouse_url")))
FAILING_TRANSPORT = (
    "adpulse_server_failing",
    (("operation", "other"), ("setting", "transport_url")),
)
RETRIES_WAREHOUSE = ("adpulse_server_retries_total", (("setting", "warehouse_url"),))
RETRIES_TRANSPORT = ("adpulse_server_retries_total", (("setting", "transport_url"),))
COMMIT_FAILURES = ("adpulse_commit_failures_total", ())


class Told:
    """An independent record of what the retriers told (the oracle)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def retrying(self, retrier: Retrier, what: str, reason: str) -> None:
        self.events.append(("retrying", what))

    def gave_up(self, retrier: Retrier, what: str, reason: str) -> None:
        self.events.append(("gave_up", what))

    def recovered(self, retrier: Retrier, what: str) -> None:
        self.events.append(("recovered", what))


def test_retries_commit_failures_and_failing_servers_follow_the_retriers() -> None:
    metrics = PipelineMetrics(new_registry(), observe=True)
    before = scrape(metrics.registry)
    assert (before[COMMIT_FAILURES], before[RETRIES_WAREHOUSE], before[FAILING_COMMIT]) == (0, 0, 0)
    warehouse = Retrier(
        "warehouse (postgresql://db/ads)", "warehouse_url", 30, (ConnectionError,), 0.001, 0.001
    )
    during: list[Samples] = []
    attempts = [0]

    def commit() -> str:
        attempts[0] += 1
        if attempts[0] <= 4:
            if attempts[0] == 4:
                during.append(scrape(metrics.registry))
            raise ConnectionError("server closed the connection")
        return "committed"

    assert warehouse.call("the commit of batch 7", commit) == "committed"
    assert during[0][FAILING_COMMIT] == 1  # failing while it is retried
    got = scrape(metrics.registry)
    assert got[COMMIT_FAILURES] == 4
    assert got[RETRIES_WAREHOUSE] == 4
    assert got[FAILING_COMMIT] == 0  # recovered

    # a transport read given up on: failing until a success, not a commit failure
    told = Told()
    stop = observe_retries(told)
    transport = Retrier("transport (redis://r:6379)", "transport_url", 0.05, (ConnectionError,))
    transport = Retrier(
        transport.component, transport.setting, 0.05, transport.transient, 0.01, 0.01
    )
    with pytest.raises(InfrastructureError):
        transport.call("a read of clicks partition 0", _down)
    stop()
    retried = sum(1 for event, _ in told.events if event == "retrying")
    assert told.events[-1] == ("gave_up", "a read of clicks partition 0") and retried >= 1
    got = scrape(metrics.registry)
    assert got[RETRIES_TRANSPORT] == retried
    assert got[FAILING_TRANSPORT] == 1
    assert got[COMMIT_FAILURES] == 4
    metrics.close()  # no longer counting
    with pytest.raises(InfrastructureError):
        transport.call("a read of clicks partition 0", _down)
    assert scrape(metrics.registry)[RETRIES_TRANSPORT] == retried


def _down() -> None:
    raise ConnectionError("connection refused")


def test_a_postgres_commit_whose_answer_was_lost_counts_one_commit_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_postgres()
    schema = new_schema()
    proxy = TcpProxy.for_url(PG_URL)
    timeouts = ServerTimeouts(connect_seconds=1, statement_seconds=2, retry_seconds=20)
    metrics = PipelineMetrics(new_registry(), observe=True)
    try:
        with (
            caplog.at_level(logging.WARNING, logger="adpulse.outages"),
            PostgresWarehouse(proxy.url(PG_URL), schema=schema, timeouts=timeouts) as wh,
        ):
            wh.create_schema()
            pipeline = MiniPipeline(tmp_path, partitions=1, warehouse=wh)
            pipeline.processor = Processor(
                pipeline.settings, pipeline.transport, wh, listeners=[metrics]
            )
            pipeline.send(Stream.IMPRESSIONS, [web_impression(n) for n in range(3)])
            pipeline.run()
            assert scrape(metrics.registry)[COMMIT_FAILURES] == 0
            proxy.drop_after(b"COMMIT")
            pipeline.send(Stream.IMPRESSIONS, [web_impression(n) for n in range(3, 7)])
            pipeline.run()
            pipeline.processor.close()
            assert proxy.dropped_after.is_set()
            received = wh.query("SELECT sum(received) AS n FROM ingest_stats").item()
    finally:
        metrics.close()
        proxy.close()
        drop_schema(schema)
    retried = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    commits = [m for m in retried if "retrying the commit of batch" in m]
    got = scrape(metrics.registry)
    assert len(commits) == 1, retried
    assert got[COMMIT_FAILURES] == 1
    assert got[RETRIES_WAREHOUSE] == len(retried)
    assert got[FAILING_COMMIT] == 0
    assert received == 7  # committed once, not twice
    assert got[("adpulse_events_received_total", (("stream", "impressions"),))] == 7


class FailingOnce(MemoryServingStore):
    """An in-process store whose next write fails when ``fail`` is set."""

    fail = False

    def apply(self, batch_key: str, delta: LiveDelta) -> Any:
        if self.fail:
            self.fail = False
            raise ConnectionError("the store went away")
        return super().apply(batch_key, delta)


def test_store_rebuilds_are_counted_once_each_as_the_alert_sees_them(tmp_path: Path) -> None:
    pipeline = MiniPipeline(tmp_path, partitions=1)
    store = FailingOnce()
    sync = StoreSync(store, pipeline.warehouse, retry_seconds=0)
    metrics = PipelineMetrics(new_registry())
    metrics.watch_store(sync)
    sent: list[Any] = []
    monitor = AlertMonitor(
        settings_for(tmp_path, None, alert_stream_silent_seconds=0, alert_lag_bytes=0),
        sent.append,
        store_rebuilds=lambda: (sync.repairs, sync.behind),
    )
    pipeline.processor = Processor(
        pipeline.settings, pipeline.transport, pipeline.warehouse, listeners=[metrics, sync]
    )
    pipeline.send(Stream.IMPRESSIONS, [web_impression(0)])
    pipeline.run()

    def figures() -> tuple[float, ...]:
        got = scrape(metrics.registry)
        return (
            got[("adpulse_store_rebuilds_total", (("kind", "initial"),))],
            got[("adpulse_store_rebuilds_total", (("kind", "repair"),))],
            got[("adpulse_store_write_failures_total", ())],
            got[("adpulse_store_behind", ())],
        )

    assert figures() == (1, 0, 0, 0)  # the start's rebuild (a fresh store)
    assert [a.rule for a in monitor.check()] == []
    store.fail = True
    pipeline.send(Stream.IMPRESSIONS, [web_impression(1)])
    pipeline.run()
    assert figures() == (1, 0, 1, 1)  # the write failed: behind
    pipeline.send(Stream.IMPRESSIONS, [web_impression(2)])
    pipeline.run()
    pipeline.processor.close()
    assert figures() == (1, 1, 1, 0)  # one repair, which brought it up to date
    assert [(a.rule, a.state) for a in monitor.check()] == [("store_rebuild", "firing")]
    assert [(a.rule, a.state) for a in monitor.check()] == [("store_rebuild", "resolved")]
    assert figures() == (1, 1, 1, 0)  # counted once


def test_worker_restarts_equal_the_supervisors_crashes() -> None:
    metrics = SupervisorMetrics(new_registry(), workers=1)
    assert scrape(metrics.registry)[("adpulse_worker_restarts_total", ())] == 0
    crashes: list[tuple[int, int]] = []

    def on_crash(slot: int, status: int) -> None:
        crashes.append((slot, status))
        metrics.crashed(slot, status)
        if len(crashes) == 3:
            stop.set()

    stop = threading.Event()
    supervise(
        [sys.executable, "-c", "import sys; sys.exit(3)"],
        1,
        stop,
        restart_delay=0.05,
        on_crash=on_crash,
    )
    got = scrape(metrics.registry)
    assert crashes == [(0, 3)] * 3
    assert got[("adpulse_worker_restarts_total", ())] == 3
    assert got[("adpulse_workers", ())] == 1


def test_lag_metrics_and_the_alert_read_one_probe(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path,
        None,
        partitions=1,
        alert_check_seconds=3600,  # checked by hand
        alert_stream_silent_seconds=0,
        alert_processor_silent_seconds=0,
        alert_lag_bytes=0,
        alert_lag_records=4,
        alert_lag_age_seconds=0,
        alert_lag_seconds=0,
    )
    with open_runtime(settings) as rt:
        consumers = [0]
        opened = rt.transport.consumer

        def counted() -> Any:
            consumers[0] += 1
            return opened()

        rt.transport.consumer = counted  # type: ignore[method-assign]
        clock = rt.transport.clock  # type: ignore[attr-defined]
        producer = rt.transport.producer()
        payloads = [web_impression(n) for n in range(5)]
        for at, batch in ((1000.0, payloads[:2]), (1012.5, payloads[2:])):
            rt.transport.clock = lambda at=at: at  # type: ignore[attr-defined]
            producer.send(Stream.IMPRESSIONS, [orjson.dumps(p) for p in batch], [None] * len(batch))
        producer.close()
        rt.transport.clock = clock  # type: ignore[attr-defined]
        size = sum(p.stat().st_size for p in settings.log_dir.rglob("*.log"))

        processor = processor_for(rt)  # not running yet: the log is behind
        metrics = rt.pipeline_metrics()
        for _ in range(2):
            got = scrape(metrics.registry)
            assert got[("adpulse_lag_records", ())] == 5
            assert got[("adpulse_lag_seconds", ())] == 12.5
            assert got[("adpulse_lag_bytes", ())] == size
            assert rt.alerts is not None
            active = rt.alerts.active()
            assert active["lag"][1] | {"behind_seconds": 0} == {
                "lag_bytes": size,
                "lag_records": 5,
                "lag_seconds": 12.5,
                "behind_seconds": 0,
            }
        assert consumers[0] == 2  # the processor's own, and the one probe's

        rt.lag_probe().max_age = 0  # no reuse of the last reading from here
        processor.run(threading.Event(), until_caught_up=True)
        processor.committer.drain()
        got = scrape(metrics.registry)
        assert (
            got[("adpulse_lag_records", ())],
            got[("adpulse_lag_seconds", ())],
            got[("adpulse_lag_bytes", ())],
        ) == (0, 0.0, 0)
        assert "lag" not in rt.alerts.active()
        processor.close()
        assert consumers[0] == 2


def test_a_lag_without_records_and_age_exports_bytes_only() -> None:
    metrics = PipelineMetrics(new_registry())
    metrics.watch_lag(lambda: Lag(7, None, None))
    names = {name for name, _ in scrape(metrics.registry)}
    assert "adpulse_lag_bytes" in names
    assert not names & {"adpulse_lag_records", "adpulse_lag_seconds"}
    metrics.watch_lag(lambda: None)  # no processor runs now
    assert not {name for name, _ in scrape(metrics.registry)} & {"adpulse_lag_bytes"}
