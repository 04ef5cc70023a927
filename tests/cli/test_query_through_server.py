"""``adpulse query``/``status`` while a real ``adpulse serve`` holds the DuckDB file: they
ask its HTTP API (announced next to the warehouse) and print the same answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from adpulse.cli.main import app
from adpulse.config import Settings
from adpulse.serving.http.announce import running_server, server_file

#: One xdist worker runs this module: its module-scoped fixtures are built once, not
#: once on each worker.
pytestmark = pytest.mark.xdist_group("query-through-server")

ENV = {**os.environ, "COLUMNS": "240"}


def adpulse(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adpulse", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("held")
    runner = CliRunner()
    data, home = root / "data", root / "home"
    generated = ["--events", "5000", "--start", "2023-09-01", "--days", "1", "--seed", "5"]
    for args in (
        ["generate", "--out", str(data), *generated],
        ["replay", str(data), "--home", str(home)],
    ):
        result = runner.invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return home


@pytest.fixture
def served(home: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``adpulse serve`` over ``home`` (processor on: it holds the file for writing)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "adpulse", "serve", "--home", str(home), "--port", "0"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert " at " in first, first + proc.communicate(timeout=30)[1]
        yield proc, first.split(" at ")[1].split()[0]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


def test_query_and_status_answer_through_the_running_server(
    home: Path, served: tuple[subprocess.Popen[str], str]
) -> None:
    proc, url = served
    announced = json.loads(server_file(Settings(home=home)).read_text())
    assert (announced["pid"], announced["url"]) == (proc.pid, url)

    done = adpulse("query", "summary", "--platform", "web", "--home", str(home), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"(asking {url}: process {proc.pid} holds the warehouse)\n"
    api = httpx.get(f"{url}api/v1/summary", params={"platform": "Web"}, timeout=30).json()
    assert json.loads(done.stdout) == api and api["summary"]["impressions"] > 0

    args = ["top-ads", "--rank-by", "conversion_rate", "--min-clicks", "1", "--limit", "3"]
    done = adpulse("query", *args, "--home", str(home), "--format", "json")
    params = {"by": "conversion_rate", "min_clicks": "1", "limit": "3"}
    api = httpx.get(f"{url}api/v1/top-ads", params=params, timeout=30).json()
    assert json.loads(done.stdout) == api and len(api["rows"]) == 3

    done = adpulse("query", "ctr", "--by", "campaign", "--home", str(home))
    assert done.returncode == 0, done.stderr
    campaigns = httpx.get(f"{url}api/v1/metrics/ctr?by=campaign", timeout=30).json()["rows"]
    for row in campaigns:
        assert str(row["campaign"] or "—") in done.stdout  # the table of the same rows

    done = adpulse("query", "summary", "--platform", "Mobil", "--home", str(home))
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == "error: unknown platform 'Mobil'; did you mean Mobile?"

    done = adpulse("status", "--home", str(home), "--format", "json")
    assert done.returncode == 0, done.stderr
    streams = {s["stream"]: s["received"] for s in json.loads(done.stdout)["streams"]}
    health = httpx.get(f"{url}api/v1/health", timeout=30).json()
    assert streams == {s["stream"]: s["received"] for s in health["streams"]}
    assert sum(streams.values()) > 5000

    done = adpulse("status", "--home", str(home))
    assert done.returncode == 0 and "dead_letters" in done.stdout, done.stderr

    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert not server_file(Settings(home=home)).exists()  # removed on stop
    done = adpulse("query", "summary", "--home", str(home), "--format", "json")
    assert done.returncode == 0 and done.stderr == "", done.stderr  # the file itself again


def test_a_file_left_by_a_dead_process_is_ignored(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    path = server_file(settings)
    path.write_text(json.dumps({"pid": int(dead.stdout), "url": "http://127.0.0.1:1/"}))
    assert running_server(settings) is None
    path.write_text(json.dumps({"pid": os.getpid(), "url": "http://127.0.0.1:1/"}))
    found = running_server(settings)
    assert found is not None and (found.pid, found.url) == (os.getpid(), "http://127.0.0.1:1/")
