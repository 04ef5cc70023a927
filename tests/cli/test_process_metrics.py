"""``adpulse process --metrics-port``: a running worker's /metrics, scraped over HTTP,
counts what `adpulse status` then reports for the same warehouse."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from adpulse.cli.main import app

runner = CliRunner()
ENV = {**os.environ, "COLUMNS": "200"}


def _ok(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_process_metrics_port_counts_what_status_reports(tmp_path: Path) -> None:
    data, home = tmp_path / "data", tmp_path / "home"
    _ok("generate", "--out", str(data), "--events", "5000", "--seed", "7", "--start", "2023-09-01")
    _ok("replay", str(data), "--home", str(home), "--partitions", "2", "--produce-only")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "adpulse", "process", "--home", str(home)]
        + ["--metrics-port", str(port)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # caught up (nothing left in the log) and the last batch committed: two scrapes
        # a moment apart agree
        deadline, last = time.monotonic() + 60, None
        while True:
            assert time.monotonic() < deadline, "the worker did not catch up in 60 s"
            assert proc.poll() is None, proc.communicate()
            try:
                got = _scrape(port)
            except OSError:
                got = None
            counters = None if got is None else {k: v for k, v in got.items() if "_total" in k[0]}
            if got is not None and got.get(("adpulse_lag_bytes", ())) == 0 and counters == last:
                break
            last = counters
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"metrics at http://127.0.0.1:{port}/metrics" in out

    status = json.loads(_ok("status", "--home", str(home), "--format", "json"))
    for row in status["streams"]:
        labels = (("stream", row["stream"]),)
        for name in ("received", "accepted", "rejected", "duplicates", "late"):
            assert got[(f"adpulse_events_{name}_total", labels)] == row[name], (name, labels)
    assert sum(r["received"] for r in status["streams"]) >= 5000
    dead = {
        (dict(labels)["stream"], dict(labels)["reason"]): value
        for (name, labels), value in got.items()
        if name == "adpulse_dead_letters_total"
    }
    assert dead == {(r["stream"], r["reason"]): r["records"] for r in status["dead_letters"]}


def test_workers_cannot_share_one_metrics_port(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["process", "--home", str(tmp_path), "--workers", "2", "--metrics-port", "9400"]
    )
    assert result.exit_code != 0
    assert "--workers 2 with metrics port 9400" in str(result.exception)
