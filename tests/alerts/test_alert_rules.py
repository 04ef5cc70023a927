"""Alerts end to end: a real processor over DuckDB and the embedded log, wired as the
runtime wires it, sends each incident once and its resolution once to a local webhook
receiver, signed; a flapping rule is rate-limited."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from receiver import SECRET, Receiver

from adpulse.alerts import AlertMonitor, open_alerting
from adpulse.alerts.rules import Alert
from adpulse.contracts import Stream
from adpulse.outages import InfrastructureError, Retrier
from adpulse.processor.workers import supervise
from adpulse.runtime import Runtime, open_runtime, processor_for, settings_for
from adpulse.storage.warehouse import schema
from adpulse.storage.warehouse.base import BatchOutput

#: Every rule off; each test turns on the one it checks.
QUIET: dict[str, Any] = {
    "alert_check_seconds": 0.05,
    "alert_min_interval_seconds": 0,
    "alert_processor_silent_seconds": 0,
    "alert_stream_silent_seconds": 0,
    "alert_dead_letter_share": 1.0,
    "alert_lag_bytes": 0,
    "alert_lag_records": 0,
    "alert_lag_age_seconds": 0,
    "alert_webhook_secret": SECRET,
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def runtime(home: Path, receiver: Receiver, **settings: Any) -> Any:
    values = {**QUIET, "alert_webhook_url": receiver.url, **settings}
    return open_runtime(settings_for(home, None, partitions=1, **values))


def impression(n: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"i{n}",
            "user_id": f"u{n}",
            "ad_id": 1,
            "platform": "Web",
            "location": "Berlin",
            "impression_timestamp": "2024-05-01 10:00:00",
        }
    )


def click(n: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"c{n}",
            "user_id": f"u{n}",
            "ad_id": 1,
            "click_timestamp": "2024-05-01 10:00:01",
        }
    )


def send(rt: Runtime, stream: Stream, payloads: list[bytes]) -> None:
    producer = rt.transport.producer()
    producer.send(stream, payloads, [None] * len(payloads))
    producer.flush()


def process(rt: Runtime) -> None:
    processor = processor_for(rt)
    processor.run(threading.Event(), until_caught_up=True)
    processor.committer.drain()


def test_a_dead_letter_burst_alerts_once_and_resolves(tmp_path: Path, receiver: Receiver) -> None:
    with runtime(
        tmp_path,
        receiver,
        alert_dead_letter_share=0.05,
        alert_dead_letter_min_records=10,
        alert_dead_letter_window_seconds=1.0,
    ) as rt:
        # 40 malformed records among 60: 40% dead letters in one batch
        send(rt, Stream.IMPRESSIONS, [impression(n) for n in range(60)] + [b"{not json"] * 40)
        process(rt)
        assert receiver.wait_for(2) == [
            ("dead_letters", "firing"),
            ("dead_letters", "resolved"),  # once the burst left the window
        ]
        firing = receiver.alerts[0]
        assert firing["details"] == {"share": 0.4, "received": 100, "rejected": 40}
        time.sleep(0.5)  # many checks later: nothing more
    assert receiver.seen() == [("dead_letters", "firing"), ("dead_letters", "resolved")]
    assert receiver.bad_signatures == 0


def test_a_stopped_stream_alerts_once_and_resolves_when_events_come_back(
    tmp_path: Path, receiver: Receiver
) -> None:
    with runtime(
        tmp_path, receiver, alert_stream_silent_seconds=2.0, alert_silent_streams=["clicks"]
    ) as rt:
        send(rt, Stream.CLICKS, [click(0)])
        process(rt)
        assert receiver.wait_for(1) == [("stream_silent:clicks", "firing")]
        assert receiver.alerts[0]["details"]["stream"] == "clicks"
        send(rt, Stream.CLICKS, [click(1)])
        process(rt)
        assert receiver.wait_for(2) == [
            ("stream_silent:clicks", "firing"),
            ("stream_silent:clicks", "resolved"),
        ]
        time.sleep(0.5)
    assert receiver.seen() == [
        ("stream_silent:clicks", "firing"),
        ("stream_silent:clicks", "resolved"),
    ]
    assert receiver.bad_signatures == 0


def test_a_stopped_processor_alerts_once_and_resolves_when_it_commits_again(
    tmp_path: Path, receiver: Receiver
) -> None:
    with runtime(
        tmp_path, receiver, alert_processor_silent_seconds=2.5, idle_timeout_seconds=0.1
    ) as rt:
        processor = processor_for(rt)
        stop = threading.Event()
        thread = threading.Thread(target=processor.run, args=(stop,))
        thread.start()
        send(rt, Stream.IMPRESSIONS, [impression(n) for n in range(5)])
        time.sleep(4.0)  # running and idle: its idle ticks keep committing
        assert receiver.seen() == []
        stop.set()
        thread.join()
        assert receiver.wait_for(1) == [("processor_stopped", "firing")]
        send(rt, Stream.IMPRESSIONS, [impression(n) for n in range(5, 10)])
        process(rt)  # a processor again
        assert receiver.wait_for(2) == [
            ("processor_stopped", "firing"),
            ("processor_stopped", "resolved"),
        ]
        assert rt.warehouse.query("SELECT count(*) FROM fact_impressions", []).rows() == [(10,)]
    assert receiver.bad_signatures == 0


def _commit() -> BatchOutput:
    empty = {name: pl.DataFrame(schema=cols) for name, cols in schema.ALL_TABLES.items()}
    return BatchOutput(
        batch_id=1,
        impressions=empty["fact_impressions"],
        clicks=empty["fact_clicks"],
        conversions=empty["fact_conversions"],
        reattributions=pl.DataFrame(schema=schema.CONVERSION_REATTRIBUTIONS),
        rollups=empty["rollup_minute"],
        dead_letters=empty["dead_letters"],
        stats=empty["ingest_stats"],
    )


def test_a_flapping_rule_fires_at_most_once_per_interval(tmp_path: Path) -> None:
    now = [0.0]
    sent: list[Alert] = []
    settings = settings_for(
        tmp_path,
        None,
        **{**QUIET, "alert_processor_silent_seconds": 1.0, "alert_min_interval_seconds": 10.0},
    )
    monitor = AlertMonitor(settings, sent.append, clock=lambda: now[0])

    def at(t: float, commit: bool = False) -> list[tuple[str, str]]:
        now[0] = t
        if commit:
            monitor.on_commit(_commit())
        return [(a.rule, a.state) for a in monitor.check()]

    assert at(0.0, commit=True) == []
    assert at(2.0) == [("processor_stopped", "firing")]
    assert at(2.1, commit=True) == [("processor_stopped", "resolved")]
    assert at(4.0) == []  # stopped again 2 s after the first firing: held back
    assert at(4.1, commit=True) == []  # and its resolution is not sent either
    assert at(6.0) == []
    assert at(12.5) == [("processor_stopped", "firing")]  # still stopped past the interval
    assert at(12.6, commit=True) == [("processor_stopped", "resolved")]
    assert [(a.rule, a.state) for a in sent] == [
        ("processor_stopped", "firing"),
        ("processor_stopped", "resolved"),
        ("processor_stopped", "firing"),
        ("processor_stopped", "resolved"),
    ]


def test_failing_commits_alert_while_retried_and_resolve_when_one_succeeds(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = settings_for(tmp_path, None, **{**QUIET, "alert_webhook_url": receiver.url})
    monitor = open_alerting(settings)
    retrier = Retrier("warehouse (postgresql://db/ads)", "warehouse_url", 30.0, (ConnectionError,))
    back = threading.Event()

    def commit() -> str:
        if not back.is_set():
            raise ConnectionError("server closed the connection")
        return "committed"

    result: list[str] = []
    thread = threading.Thread(
        target=lambda: result.append(retrier.call("the commit of batch 7", commit))
    )
    thread.start()
    assert receiver.wait_for(1) == [("commits_failing", "firing")]
    assert receiver.alerts[0]["details"] == {
        "component": "warehouse (postgresql://db/ads)",
        "operation": "the commit of batch 7",
        "reason": "server closed the connection",
    }
    back.set()
    thread.join()
    assert result == ["committed"]
    assert receiver.wait_for(2) == [("commits_failing", "firing"), ("commits_failing", "resolved")]

    # given up: the process ends, and its last check still tells it
    quick = Retrier("transport (redis://r:6379)", "transport_url", 0.2, (ConnectionError,))
    with pytest.raises(InfrastructureError):
        quick.call("a read of clicks partition 0", _down)
    monitor.close()
    alerts = receiver.wait_for(3)
    assert alerts[2] == ("server_unavailable:transport_url", "firing")
    assert "was given up" in receiver.alerts[2]["summary"]
    assert receiver.bad_signatures == 0


def _down() -> None:
    raise ConnectionError("connection refused")


def test_workers_crashing_again_and_again_alert_a_crash_loop_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = settings_for(
        tmp_path,
        None,
        **{
            **QUIET,
            "alert_webhook_url": receiver.url,
            "alert_crash_restarts": 3,
            "alert_crash_window_seconds": 3.0,
        },
    )
    monitor = open_alerting(settings, watch_streams=False)
    stop = threading.Event()
    crashing = [sys.executable, "-c", "import sys; sys.exit(3)"]
    thread = threading.Thread(
        target=supervise,
        args=(crashing, 1, stop),
        kwargs={"restart_delay": 0.05, "on_crash": monitor.crashed},
    )
    thread.start()
    try:
        assert receiver.wait_for(1) == [("crash_loop", "firing")]
    finally:
        stop.set()
        thread.join()
    details = receiver.alerts[0]["details"]
    assert (details["workers"], details["exit_statuses"]) == ([0], [3])
    assert details["crashes"] >= 3
    # no more crashes: resolved once they left the window
    assert receiver.wait_for(2) == [("crash_loop", "firing"), ("crash_loop", "resolved")]
    monitor.close()
    assert receiver.seen() == [("crash_loop", "firing"), ("crash_loop", "resolved")]


def test_a_lagging_processor_alerts_once_and_resolves_when_it_catches_up(
    tmp_path: Path, receiver: Receiver
) -> None:
    with runtime(tmp_path, receiver, alert_lag_bytes=2000, alert_lag_seconds=0.5) as rt:
        processor = processor_for(rt)  # not running yet: the log fills up
        send(rt, Stream.IMPRESSIONS, [impression(n) for n in range(100)])
        assert receiver.wait_for(1) == [("lag", "firing")]
        assert receiver.alerts[0]["details"]["lag_bytes"] > 2000
        processor.run(threading.Event(), until_caught_up=True)
        processor.committer.drain()
        assert receiver.wait_for(2) == [("lag", "firing"), ("lag", "resolved")]
        time.sleep(0.3)
    assert receiver.seen() == [("lag", "firing"), ("lag", "resolved")]


def test_a_serving_store_rebuild_after_the_start_alerts_until_the_store_is_current(
    tmp_path: Path,
) -> None:
    store = {"repairs": 0, "behind": True}  # (the store sync's repairs and behind)
    sent: list[Alert] = []
    monitor = AlertMonitor(
        settings_for(tmp_path, None, **QUIET),
        sent.append,
        store_rebuilds=lambda: (store["repairs"], store["behind"]),
    )

    def check(repairs: int, behind: bool) -> list[tuple[str, str]]:
        store.update(repairs=repairs, behind=behind)
        return [(a.rule, a.state) for a in monitor.check()]

    assert check(0, True) == []  # starting: the initial rebuild is no repair
    assert check(0, False) == []
    assert check(0, True) == []  # a failed write: behind until the next rebuild
    assert check(1, True) == [("store_rebuild", "firing")]
    assert check(1, True) == []
    assert check(1, False) == [("store_rebuild", "resolved")]
    assert check(2, False) == [("store_rebuild", "firing")]  # rebuilt between two checks
    assert check(2, False) == [("store_rebuild", "resolved")]
