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
from pathlib import Path

from pgtest import PG_URL, drop_schema, new_schema, require_postgres
from scrapes import scrape_port
from typer.testing import CliRunner

from adpulse.cli.main import app
from adpulse.storage.warehouse.postgres import PostgresWarehouse

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
                got = scrape_port(port)
            except OSError:
                got = None
            counters = None if got is None else {k: v for k, v in got.items() if "_total" in k[0]}
            caught_up = got is not None and all(
                got.get((f"adpulse_lag_{unit}", ())) == 0
                for unit in ("bytes", "records", "seconds")
            )
            if caught_up and counters == last:
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


def test_workers_metrics_port_is_the_supervisors(tmp_path: Path) -> None:
    """``process --workers 2 --metrics-port P``: the supervisor serves its own metrics
    (workers run, restarts), the workers none (they cannot share the port)."""
    require_postgres()
    schema = new_schema()
    with PostgresWarehouse(PG_URL, schema=schema) as wh:
        wh.create_schema()
    port = _free_port()
    env = {
        **ENV,
        "ADPULSE_WAREHOUSE_URL": PG_URL + f"?options=-csearch_path%3D{schema}",
        "ADPULSE_METRICS_PORT": str(port),  # the setting, as a TOML file would set it
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "adpulse", "process", "--home", str(tmp_path), "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline, got = time.monotonic() + 60, None
        while got is None:
            assert time.monotonic() < deadline, "no supervisor metrics in 60 s"
            assert proc.poll() is None, proc.communicate()
            try:
                got = scrape_port(port)
            except OSError:
                time.sleep(0.25)
        time.sleep(2)  # the workers are up (a worker on the same port would crash now)
        got = scrape_port(port)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        drop_schema(schema)
    assert proc.returncode == 0, err
    assert got[("adpulse_workers", ())] == 2
    assert got[("adpulse_worker_restarts_total", ())] == 0
    assert not any(name.startswith("adpulse_events_") for name, _ in got)
    assert f"supervisor metrics at http://127.0.0.1:{port}/metrics" in out
    assert "exited with status" not in err
