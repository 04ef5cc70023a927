"""A real Prometheus (Debian's ``prometheus`` and ``promtool``) against a running
``adpulse process --metrics-port``: the exported rules pass ``promtool check rules``, the
scraped counters in Prometheus equal ``/metrics`` and ``adpulse status``, the
``dead_letters`` rule fires in Prometheus after a burst of dead letters, and
``processor_stopped`` once the worker is gone."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from scrapes import scrape_port
from servertest import require_server
from typer.testing import CliRunner

from adpulse.cli.main import app
from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.runtime import open_log

PROMETHEUS, PROMTOOL = "/usr/bin/prometheus", "/usr/bin/promtool"
#: Bounds for the test: a small dead-letter burst is enough; a stopped worker is told
#: within seconds (a running one commits about every second).
ALERT_ENV = {
    "ADPULSE_ALERT_DEAD_LETTER_MIN_RECORDS": "20",
    "ADPULSE_ALERT_DEAD_LETTER_SHARE": "0.5",
    "ADPULSE_ALERT_PROCESSOR_SILENT_SECONDS": "6",
}
#: The counters compared (not batches_committed, which idle commits move every second).
COUNTER_NAMES = re.compile(r"adpulse_(events_[a-z]+|dead_letters)_total")
COUNTERS = ("received", "accepted", "rejected", "duplicates", "late")
runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _wait(what: str, seconds: float, found: Callable[[], Any]) -> Any:
    """Poll ``found`` until it returns something truthy (connection errors: not yet)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            value = found()
        except OSError:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.25)


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    """The rules file as ``adpulse alerts prometheus-rules`` writes it, with the test's
    bounds; it must pass ``promtool check rules``."""
    missing = [p for p in (PROMETHEUS, PROMTOOL) if not shutil.which(p)]
    require_server(
        f"{' and '.join(missing)} not installed: apt-get install prometheus" if missing else None
    )
    path = tmp_path / "adpulse-rules.yml"
    result = runner.invoke(
        app,
        ["alerts", "prometheus-rules", "--home", str(tmp_path / "home"), "--out", str(path)],
        env=ALERT_ENV,
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 8 rules found" in check.stdout
    return path


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[tuple[Path, int, subprocess.Popen[str]]]:
    """``adpulse process --metrics-port`` on an embedded log: (home, metrics port, the
    process)."""
    home, port = tmp_path / "home", _free_port()
    log = open_log(Settings(home=home, partitions=1))
    producer = log.producer()
    impression = {
        "event_id": "i1",
        "user_id": "u1",
        "ad_id": 1,
        "platform": "Web",
        "location": "Berlin",
        "impression_timestamp": "2024-05-01 10:00:00",
    }
    producer.send(Stream.IMPRESSIONS, [json.dumps(impression).encode()], [None])
    producer.close()
    log.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "adpulse", "process", "--home", str(home)]
        + ["--metrics-port", str(port)],
        env={**os.environ, **ALERT_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield home, port, proc
    finally:
        _stop(proc)


@pytest.fixture
def prometheus(
    tmp_path: Path, rules: Path, pipeline: tuple[Path, int, subprocess.Popen[str]]
) -> Iterator[str]:
    """Our own Prometheus on a free loopback port (1 s scrapes and rule evaluations,
    storage in tmp) scraping the pipeline's metrics port: its base URL."""
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "scrape_configs": [
                    {
                        "job_name": "adpulse",
                        "static_configs": [{"targets": [f"127.0.0.1:{pipeline[1]}"]}],
                    }
                ],
            }
        )
    )
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
        + [f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
        assert proc.poll() is None, proc.communicate()
    finally:
        _stop(proc, signal.SIGTERM)


def _query(base: str, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant query's result: labels (without job and instance) -> value."""
    body = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert body["status"] == "success", body
    return {
        tuple(
            sorted((k, v) for k, v in r["metric"].items() if k not in ("job", "instance"))
        ): float(r["value"][1])
        for r in body["data"]["result"]
    }


def test_prometheus_scrapes_counters_and_fires_the_dead_letter_rule(
    prometheus: str, pipeline: tuple[Path, int, subprocess.Popen[str]]
) -> None:
    home, port, worker = pipeline
    # Prometheus has the first batch's counters (the impression) before the burst, so the
    # burst is an increase it sees
    _wait(
        "Prometheus scraped the first batch",
        20,
        lambda: (
            _query(prometheus, 'adpulse_events_received_total{stream="impressions"}')
            == {(("__name__", "adpulse_events_received_total"), ("stream", "impressions")): 1.0}
        ),
    )
    assert _query(prometheus, 'ALERTS{alertstate="firing"}') == {}

    log = open_log(Settings(home=home, partitions=1))
    producer = log.producer()
    producer.send(Stream.CLICKS, [b"not json"] * 30, [None] * 30)  # a dead-letter burst
    producer.close()
    log.close()

    def firing() -> list[dict[str, Any]]:
        alerts = _get(f"{prometheus}/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["state"] == "firing"]

    alerts = _wait("the dead_letters rule fired in Prometheus", 20, firing)
    assert [(a["labels"]["alertname"], a["labels"]["source"]) for a in alerts] == [
        ("dead_letters", "adpulse")
    ]
    assert (
        "were dead letters (alert_dead_letter_share = 0.5)" in alerts[0]["annotations"]["summary"]
    )

    # the same counters in Prometheus, on /metrics and in `adpulse status`
    def agreed() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        scraped = {k: v for k, v in scrape_port(port).items() if COUNTER_NAMES.fullmatch(k[0])}
        stored = {
            (dict(labels).pop("__name__"), tuple((k, v) for k, v in labels if k != "__name__")): v
            for labels, v in _query(prometheus, f'{{__name__=~"{COUNTER_NAMES.pattern}"}}').items()
        }
        return scraped if scraped == stored else None

    scraped = _wait("Prometheus has the counters /metrics shows", 10, agreed)
    assert worker.poll() is None, worker.communicate()
    _, err = _stop(worker)  # status opens the warehouse file the worker holds
    assert worker.returncode == 0, err
    result = runner.invoke(
        app, ["status", "--home", str(home), "--format", "json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    for row in status["streams"]:
        for name in COUNTERS:
            key = (f"adpulse_events_{name}_total", (("stream", row["stream"]),))
            assert scraped[key] == row[name], (key, row)
    assert scraped[("adpulse_events_rejected_total", (("stream", "clicks"),))] == 30
    assert scraped[("adpulse_events_received_total", (("stream", "impressions"),))] == 1
    dead = {
        (dict(labels)["stream"], dict(labels)["reason"]): value
        for (name, labels), value in scraped.items()
        if name == "adpulse_dead_letters_total"
    }
    assert dead == {(r["stream"], r["reason"]): r["records"] for r in status["dead_letters"]}
    assert sum(dead.values()) == 30

    # the worker is gone (its series with it): Prometheus still tells it stopped
    def stopped() -> list[dict[str, Any]]:
        return [a for a in firing() if a["labels"]["alertname"] == "processor_stopped"]

    (alert,) = _wait("the processor_stopped rule fired in Prometheus", 15, stopped)
    assert "(alert_processor_silent_seconds = 6)" in alert["annotations"]["summary"]


def test_the_rules_without_a_built_in_twin_before_fire_on_their_series(tmp_path: Path) -> None:
    """``promtool test rules``: the twins of the rules added with their metrics fire on
    the series adpulse exports when their condition holds, and only then (expressions
    only: the annotations are left out of the copy tested)."""
    require_server(None if shutil.which(PROMTOOL) else "promtool not installed")
    settings = Settings(
        home=tmp_path,
        alert_processor_silent_seconds=0,
        alert_stream_silent_seconds=0,
        alert_lag_bytes=1000,
        alert_lag_records=50,
        alert_lag_age_seconds=30,
        alert_lag_seconds=60,
        alert_crash_restarts=3,
        alert_crash_window_seconds=600,
    )
    from adpulse.operations import grafana

    document = yaml.safe_load(grafana.rules_text(settings))
    for rule in document["groups"][0]["rules"]:
        del rule["annotations"]
    (tmp_path / "rules.yml").write_text(json.dumps(document))

    def alert(name: str, **labels: str) -> dict[str, Any]:
        return {"alertname": name, "exp_alerts": [{"exp_labels": {**labels, "source": "adpulse"}}]}

    def none(name: str) -> dict[str, Any]:
        return {"alertname": name, "exp_alerts": []}

    def at(seconds: int, *expected: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"eval_time": f"{seconds}s", **e} for e in expected]

    commit = 'setting="warehouse_url", operation="commit"'
    series = {  # one sample every 15 s from 0 s
        f'adpulse_server_failing{{instance="w1", {commit}}}': "0 0 1 1 0x40",
        'adpulse_server_failing{instance="w1", setting="warehouse_url", operation="other"}': "0x45",
        'adpulse_server_failing{instance="w1", setting="transport_url", operation="other"}': (
            "0 1 1 0x40"
        ),
        'adpulse_worker_restarts_total{instance="sup"}': "0 1 2 3x60",
        'adpulse_store_rebuilds_total{instance="w1", kind="initial"}': "1x45",
        'adpulse_store_rebuilds_total{instance="w1", kind="repair"}': "0 0 1x45",
        'adpulse_lag_bytes{instance="w1"}': "0x45",
        'adpulse_lag_records{instance="w1"}': "0 100x45",
        'adpulse_lag_seconds{instance="w1"}': "0x45",
        'adpulse_lag_bytes{instance="w2"}': "0x45",
        'adpulse_lag_seconds{instance="w2"}': "40x45",
    }
    w1 = {"instance": "w1"}
    tests = [
        *at(15, none("commits_failing")),
        *at(30, alert("commits_failing", **w1, setting="warehouse_url", operation="commit")),
        *at(60, none("commits_failing")),
        *at(15, alert("server_unavailable", **w1, setting="transport_url")),
        *at(45, none("server_unavailable")),
        *at(30, none("crash_loop")),  # two restarts
        *at(45, alert("crash_loop", instance="sup")),  # the third within 600 s
        *at(700, none("crash_loop")),  # none in the last 600 s
        *at(15, none("store_rebuild")),  # the initial rebuild is no incident
        *at(30, alert("store_rebuild", **w1, kind="repair")),
        *at(400, none("store_rebuild")),
        *at(60, alert("lag", instance="w2")),  # age 40 s > 30 s since 0 s, for 60 s
        *at(
            75,
            {
                "alertname": "lag",
                "exp_alerts": [
                    {"exp_labels": {"instance": i, "source": "adpulse"}} for i in ("w1", "w2")
                ],
            },
        ),  # 100 records > 50 since 15 s
    ]
    unit = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [{"series": k, "values": v} for k, v in series.items()],
                "alert_rule_test": tests,
            }
        ],
    }
    (tmp_path / "test.yml").write_text(json.dumps(unit))
    done = subprocess.run(
        [PROMTOOL, "test", "rules", "test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
