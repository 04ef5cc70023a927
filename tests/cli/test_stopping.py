"""SIGINT and SIGTERM stop the long-running commands cleanly: the real command line in a
subprocess, signalled at seeded random moments; each run exits 0 with one line and no
traceback, and the warehouse stays exactly what an uninterrupted run gives."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from builders import generated_dataset
from pgtest import PG_URL, drop_schema, new_schema, require_postgres

from adpulse.cli.stopping import StopRequest, stop_on_signals
from adpulse.config import load_settings
from adpulse.contracts import Stream
from adpulse.serving.api import SHUTDOWN_GRACE_SECONDS
from adpulse.sources.generator import MalformedKind, StreamCounts
from adpulse.sources.producer import replay_directory
from adpulse.storage.warehouse.base import Warehouse
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.storage.warehouse.postgres import PostgresWarehouse
from adpulse.transport import open_transport

#: One xdist worker runs this module: its module-scoped fixtures are built once, not
#: once on each worker.
pytestmark = pytest.mark.xdist_group("stopping")

PARTITIONS = 2
#: Watermarks move with event time only, so that the results cannot depend on how long
#: a run idled (see test_crash); small batches give the signals many moments to land in.
ENV = {
    **os.environ,
    "ADPULSE_PARTITIONS": str(PARTITIONS),
    "ADPULSE_IDLE_TIMEOUT_SECONDS": "100000",
    "ADPULSE_BATCH_MAX_BYTES": str(128 * 1024),
    "COLUMNS": "240",  # the closing line on one line
}


def test_a_signal_sets_the_stop_event_and_the_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stopping:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopping.event.wait(5)
        assert stopping.signal_name == "SIGTERM"
        assert stopping.stopped_line("committed 5 records") == (
            "stopped by SIGTERM: committed 5 records"
        )
    assert signal.getsignal(signal.SIGTERM) is before
    assert StopRequest().stopped_line("committed 5 records") == "committed 5 records"


def test_a_second_signal_stops_at_once() -> None:
    script = (
        "import os, signal, time\n"
        "from adpulse.cli.stopping import stop_on_signals\n"
        "with stop_on_signals() as stopping:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    stopping.event.wait(5)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "print('not reached')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 128 + signal.SIGINT
    assert done.stdout == ""
    assert done.stderr.startswith("stopped at once: nothing committed is lost")


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "adpulse", *args],
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until_running(proc: subprocess.Popen[str], home: Path, timeout: float = 60.0) -> None:
    """Until the command has opened its log or warehouse, which it does after installing
    its stop handlers (before, the interpreter is still starting: a signal then ends it
    with "interrupted" and exit status 130, see adpulse.cli.start)."""
    fds = Path(f"/proc/{proc.pid}/fd")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for fd in fds.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if target.startswith(str(home)) and target.endswith((".duckdb", ".log")):
                return
        time.sleep(0.02)
    raise AssertionError(f"the command opened nothing under {home} in {timeout} s")


def _signal_and_wait(
    proc: subprocess.Popen[str], home: Path, delay: float, sig: signal.Signals = signal.SIGINT
) -> str:
    """Send ``sig`` ``delay`` seconds after the command started working in ``home``; the
    run must end well."""
    _wait_until_running(proc, home)
    time.sleep(delay)
    proc.send_signal(sig)
    return _ended_well(proc, sig)


def _ended_well(proc: subprocess.Popen[str], sig: signal.Signals) -> str:
    """The closing line of a command stopped by ``sig``, which must have ended well."""
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    assert "Traceback" not in err and "Error" not in err, err[-4000:]
    last = out.strip().splitlines()[-1]
    assert f"stopped by {sig.name}: " in last, out[-2000:]  # the one closing line
    return last


def _run(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "adpulse", *args],
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def _results(wh: Warehouse) -> dict[str, Any]:
    """What a run committed, per stream and per rollup key (dimension columns aside)."""
    out: dict[str, Any] = {}
    for s in Stream:
        stats = wh.query(
            "SELECT CAST(COALESCE(SUM(received), 0) AS BIGINT) AS received,"
            " CAST(COALESCE(SUM(duplicates), 0) AS BIGINT) AS duplicates"
            " FROM ingest_stats WHERE stream = ?",
            [s.value],
        ).row(0, named=True)
        facts = wh.query(f"SELECT CAST(count(*) AS BIGINT) FROM fact_{s.value}").item()
        dead = wh.query(
            "SELECT CAST(count(*) AS BIGINT) FROM dead_letters WHERE stream = ?", [s.value]
        ).item()
        out[s.value] = {"facts": facts, "dead": dead, **stats}
    out["rollup"] = wh.query(
        'SELECT minute, ad_id, platform, "location", CAST(SUM(impressions) AS BIGINT) AS i,'
        " CAST(SUM(clicks) AS BIGINT) AS c, CAST(SUM(conversions) AS BIGINT) AS v,"
        " CAST(SUM(attributed_conversions) AS BIGINT) AS a, CAST(SUM(revenue) AS VARCHAR) AS r"
        ' FROM rollup_minute GROUP BY minute, ad_id, platform, "location"'
        ' ORDER BY minute, ad_id, platform, "location"'
    ).rows()
    return out


def _consistent(home: Path, results: dict[str, Any]) -> None:
    """Every record received is a fact, a duplicate or a dead letter; no checkpoint lies
    beyond the end of the log."""
    for s in Stream:
        r = results[s.value]
        assert r["facts"] + r["duplicates"] + r["dead"] == r["received"], (s, r)
    settings = load_settings(home=home, partitions=PARTITIONS)
    transport = open_transport(settings)
    consumer = transport.consumer()
    try:
        with DuckDBWarehouse(home / "warehouse.duckdb", read_only=True) as wh:
            offsets = wh.load_offsets()
        for (stream, partition), offset in offsets.items():
            end = consumer.lag_bytes(stream, partition, None)
            assert 0 <= int(offset) <= end, (stream, partition, offset, end)
    finally:
        consumer.close()
        transport.close()


def _duckdb_results(home: Path) -> dict[str, Any]:
    with DuckDBWarehouse(home / "warehouse.duckdb", read_only=True) as wh:
        return _results(wh)


def _uninterrupted(home: Path, copy: Path) -> dict[str, Any]:
    """The results of processing ``home``'s log in one uninterrupted run."""
    shutil.copytree(home / "log", copy / "log")
    _run("process", "--until-caught-up", "--home", str(copy))
    return _duckdb_results(copy)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    data = tmp_path_factory.mktemp("stopping") / "data"
    summary = generated_dataset(
        data,
        30_000,
        datetime(2023, 9, 9),
        datetime(2023, 9, 10),
        seed=11,
        malformed_rate=0.003,
        duplicate_rate=0.02,
    )
    return data, summary


def _dead_lines(counts: StreamCounts) -> int:
    """Dead letters of a .jsonl replay: a record with a raw line break is two lines."""
    return counts.malformed_total + counts.malformed.get(MalformedKind.EMBEDDED_NEWLINE, 0)


def _fill_log(home: Path, data: Path) -> None:
    transport = open_transport(load_settings(home=home, partitions=PARTITIONS))
    try:
        replay_directory(data, transport.producer(), PARTITIONS)
    finally:
        transport.close()


def test_the_demo_stops_cleanly_on_sigint_at_any_moment(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rng = random.Random(8)
    for _ in range(4):
        demo = _start("demo", "--no-serve", "--home", str(home), "--rate", "3000")
        last = _signal_and_wait(demo, home, rng.uniform(0.0, 2.5))
        assert last.startswith("stopped by SIGINT: committed ")
    before = _duckdb_results(home)
    _consistent(home, before)
    # What the demo left in the log, a later run commits; then the warehouse is what one
    # uninterrupted run over the same log gives.
    _run("process", "--until-caught-up", "--home", str(home))
    after = _duckdb_results(home)
    assert after == _uninterrupted(home, tmp_path / "reference")
    assert sum(after[s.value]["facts"] for s in Stream) > 0


def test_process_stops_cleanly_on_sigint_and_sigterm(
    tmp_path: Path, dataset: tuple[Path, dict[str, Any]]
) -> None:
    data, summary = dataset
    home = tmp_path / "home"
    _fill_log(home, data)
    rng = random.Random(9)
    for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):
        process = _start("process", "--home", str(home))
        last = _signal_and_wait(process, home, rng.uniform(0, 1.5), sig)
        assert last.startswith(f"stopped by {sig.name}: committed ")
        _consistent(home, _duckdb_results(home))
    _run("process", "--until-caught-up", "--home", str(home))
    after = _duckdb_results(home)
    assert after == _uninterrupted(home, tmp_path / "reference")
    # And it is the data set, each record counted once.
    for s in Stream:
        counts = summary["counts"][s.value]
        assert after[s.value]["facts"] == counts.events
        assert after[s.value]["duplicates"] == counts.duplicates
        assert after[s.value]["dead"] == _dead_lines(counts)


def test_replay_and_serve_stop_cleanly(
    tmp_path: Path, dataset: tuple[Path, dict[str, Any]]
) -> None:
    data, summary = dataset
    home = tmp_path / "home"
    replay = _start("replay", str(data), "--home", str(home), "--rate", "20000")
    last = _signal_and_wait(replay, home, random.Random(10).uniform(0.5, 2.0))
    assert last.startswith("stopped by SIGINT: appended ")
    _consistent(home, _duckdb_results(home))
    # The API server over what was committed stops as cleanly (on SIGTERM here), and
    # at once although a client holds a live stream open (it never ends by itself).
    serve = _start("serve", "--home", str(home), "--port", "0")
    assert serve.stdout is not None
    url = serve.stdout.readline().split(" at ")[1].split()[0]
    live = urllib.request.urlopen(f"{url}api/v1/stream", timeout=30)
    assert live.readline() == b"retry: 2000\n"
    _wait_until_running(serve, home)
    began = time.monotonic()
    serve.send_signal(signal.SIGTERM)
    # The server ends the stream itself (a whole chunked body: read() would raise
    # IncompleteRead on a connection closed midway), before the grace would force it.
    live.read()
    assert time.monotonic() - began < SHUTDOWN_GRACE_SECONDS
    live.close()
    # serve also runs the processor: it commits what the stopped replay appended, so
    # how long the whole process takes to end depends on the machine's load
    last = _ended_well(serve, signal.SIGTERM)
    assert last.startswith(f"stopped by SIGTERM: served {home}, committed ")


def test_process_over_postgres_stops_cleanly_on_sigint(
    tmp_path: Path, dataset: tuple[Path, dict[str, Any]]
) -> None:
    require_postgres()
    data, summary = dataset
    home = tmp_path / "home"
    _fill_log(home, data)
    schema = new_schema()
    env = {**ENV, "ADPULSE_WAREHOUSE_URL": f"{PG_URL}?options=-csearch_path%3D{schema}"}
    try:
        with PostgresWarehouse(PG_URL, schema=schema) as wh:
            wh.create_schema()
        worker = _start("process", "--home", str(home), env=env)
        last = _signal_and_wait(worker, home, random.Random(12).uniform(0.5, 1.5))
        assert "stopped by SIGINT: committed " in last
        _run("process", "--until-caught-up", "--home", str(home), env=env)
        with PostgresWarehouse(PG_URL, schema=schema) as wh:
            after = _results(wh)
            leases = wh.query(
                "SELECT CAST(count(*) AS BIGINT) FROM partition_leases WHERE owner IS NOT NULL"
            ).item()
        assert leases == 0  # every lease given back
        for s in Stream:
            counts = summary["counts"][s.value]
            assert after[s.value]["facts"] == counts.events
            assert after[s.value]["duplicates"] == counts.duplicates
            assert after[s.value]["dead"] == _dead_lines(counts)
    finally:
        drop_schema(schema)
