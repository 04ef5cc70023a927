"""``adpulse serve`` runs the collector, the processor and the API in one process: events
posted to it become queryable, a re-send is counted once, and an event acknowledged
with ``202`` survives a ``kill -9`` of the server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import orjson
from pgtest import PG_URL, drop_schema, new_schema, require_postgres
from redistest import REDIS_URL, redis_prefix

from adpulse.storage.warehouse.postgres import PostgresWarehouse

ENV = {
    **os.environ,
    "ADPULSE_PARTITIONS": "2",
    "ADPULSE_BATCH_INTERVAL_SECONDS": "0.05",
    "COLUMNS": "240",  # the URL line on one line
}


@contextmanager
def running_serve(
    home: Path, *options: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``adpulse serve`` on a free loopback port; yields the process and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "adpulse", "serve", "--home", str(home), "--port", "0", *options],
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert " at " in first, first + proc.communicate(timeout=30)[1]
        yield proc, first.split(" at ")[1].split()[0].rstrip("/")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, and the closing line of a clean stop."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return out.strip().splitlines()[-1]


def impression(event_id: str, user: str, at: datetime) -> dict[str, object]:
    return {
        "event_id": event_id,
        "ad_id": 1 + len(user) % 5,
        "user_id": user,
        "impression_timestamp": at.strftime("%Y-%m-%d %H:%M:%S"),
        "platform": "web",
        "location": "FR",
    }


def impressions_counted(url: str, expected: int, timeout: float = 30.0) -> int:
    """The summary's impressions once they reach ``expected`` (or the last seen)."""
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/api/v1/summary", timeout=10)
        seen = r.json()["summary"]["impressions"] or 0
        if seen >= expected:
            return int(seen)
        time.sleep(0.1)
    return seen


def fact_ids(home: Path) -> list[str]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as db:
        rows = db.execute("SELECT event_id FROM fact_impressions").fetchall()
    return [row[0] for row in rows]


def test_events_posted_to_serve_become_queryable_and_a_resend_counts_once(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    at = datetime.now(UTC) - timedelta(minutes=1)
    batch = [impression(f"e{i}", f"u{i}", at) for i in range(40)]
    body = b"\n".join(orjson.dumps(r) for r in batch)
    with running_serve(home) as (proc, url):
        r = httpx.post(f"{url}/v1/events/impressions", content=body, timeout=10)
        assert (r.status_code, r.json()) == (202, {"accepted": 40})
        assert impressions_counted(url, 40) == 40
        # The same batch again (a client retrying after a lost answer): counted once.
        r = httpx.post(f"{url}/v1/events/impressions", content=body, timeout=10)
        assert (r.status_code, r.json()) == (202, {"accepted": 40})
        # Records without an event_id: a retried batch is recognised by content.
        bare = [{k: v for k, v in r.items() if k != "event_id"} for r in batch[:5]]
        bare = [{**r, "user_id": f"bare{i}"} for i, r in enumerate(bare)]
        for _ in range(2):
            r = httpx.post(f"{url}/v1/events/impressions", json=bare, timeout=10)
            assert (r.status_code, r.json()) == (202, {"accepted": 5})
        pixel = {"ad_id": "2", "user_id": "p1", "platform": "web", "location": "FR"}
        assert httpx.get(f"{url}/v1/pixel.gif", params=pixel, timeout=10).status_code == 200
        assert impressions_counted(url, 46) == 46
        time.sleep(0.5)  # the re-sent batches are surely processed by now: still 46
        assert impressions_counted(url, 46) == 46
        last = stop(proc)
    assert last.startswith(f"stopped by SIGTERM: served {home}, committed ")
    ids = fact_ids(home)
    assert len(ids) == 46 and set(ids) >= {r["event_id"] for r in batch}


def test_every_event_acknowledged_before_a_kill_9_is_in_the_warehouse_once(
    tmp_path: Path,
) -> None:
    """Clients post batches as fast as they can; the server is killed (SIGKILL) under
    that load, then started again. Every event whose request got 202 is committed
    exactly once (events of requests cut off may be there too, never twice)."""
    home = tmp_path / "home"
    at = datetime.now(UTC) - timedelta(minutes=1)
    acknowledged: list[str] = []
    lock = threading.Lock()
    cut_off = threading.Event()

    def client(number: int, url: str) -> None:
        sent = 0
        with httpx.Client(timeout=10) as http:
            while not cut_off.is_set():
                ids = [f"c{number}-{sent + i}" for i in range(200)]
                sent += 200
                body = b"\n".join(
                    orjson.dumps(impression(i, f"u{number}-{n % 97}", at))
                    for n, i in enumerate(ids)
                )
                try:
                    r = http.post(f"{url}/v1/events/impressions", content=body)
                except httpx.TransportError:
                    return  # the server is gone: this request's fate is unknown
                if r.status_code == 202:
                    with lock:
                        acknowledged.extend(ids)

    with running_serve(home) as (proc, url):
        clients = [threading.Thread(target=client, args=(n, url)) for n in range(4)]
        for c in clients:
            c.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 4000 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        proc.kill()  # SIGKILL: no flush, no goodbye
        proc.wait(timeout=30)
        cut_off.set()
        for c in clients:
            c.join(timeout=30)
    assert len(acknowledged) >= 4000
    with running_serve(home) as (proc, url):
        impressions_counted(url, len(acknowledged), timeout=60)
        stop(proc)
    ids = fact_ids(home)
    assert len(ids) == len(set(ids)), "an event was committed twice"
    missing = set(acknowledged) - set(ids)
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"


def test_over_redis_and_postgres_the_collector_and_the_processor_run_apart(
    tmp_path: Path,
) -> None:
    """``serve --no-process`` (collector and API) beside an ``adpulse process`` worker:
    what is posted to the one is committed by the other and read back by the first."""
    require_postgres()
    schema = new_schema()
    home = tmp_path / "home"
    at = datetime.now(UTC) - timedelta(minutes=1)
    body = b"\n".join(orjson.dumps(impression(f"r{i}", f"u{i}", at)) for i in range(30))
    try:
        with PostgresWarehouse(PG_URL, schema=schema) as wh:
            wh.create_schema()
        with redis_prefix() as prefix:
            env = {
                **ENV,
                "ADPULSE_TRANSPORT_URL": f"{REDIS_URL}?prefix={prefix}",
                "ADPULSE_WAREHOUSE_URL": f"{PG_URL}?options=-csearch_path%3D{schema}",
            }
            worker = subprocess.Popen(
                [sys.executable, "-m", "adpulse", "process", "--home", str(home)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                with running_serve(home, "--no-process", env=env) as (proc, url):
                    r = httpx.post(f"{url}/v1/events/impressions", content=body, timeout=10)
                    assert (r.status_code, r.json()) == (202, {"accepted": 30})
                    assert impressions_counted(url, 30) == 30
                    assert stop(proc) == f"stopped by SIGTERM: served {home}"
            finally:
                worker.send_signal(signal.SIGTERM)
                out, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err[-3000:]
            assert "committed 30 records" in out
    finally:
        drop_schema(schema)


def test_on_the_embedded_log_the_collector_runs_alone_beside_a_processor(
    tmp_path: Path,
) -> None:
    """``serve --no-api --no-process`` opens no warehouse, so ``adpulse process`` can hold
    the DuckDB file at the same time; what was posted is committed by the processor."""
    home = tmp_path / "home"
    at = datetime.now(UTC) - timedelta(minutes=1)
    batch = [impression(f"a{i}", f"u{i}", at) for i in range(25)]
    worker = subprocess.Popen(
        [sys.executable, "-m", "adpulse", "process", "--home", str(home)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with running_serve(home, "--no-api", "--no-process") as (proc, url):
            r = httpx.post(f"{url}/v1/events/impressions", json=batch, timeout=10)
            assert (r.status_code, r.json()) == (202, {"accepted": 25})
            r = httpx.post(f"{url}/v1/events/views", content=b"{}", timeout=10)
            assert r.status_code == 404 and r.json()["error"] == "not_found"
            assert httpx.get(f"{url}/api/v1/summary", timeout=10).status_code == 404
            assert stop(proc) == f"stopped by SIGTERM: served {home}"
        assert worker.poll() is None  # both held their files at the same time
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err[-3000:]
    # Whatever the stopped worker had not reached yet, a catch-up run commits.
    subprocess.run(
        [sys.executable, "-m", "adpulse", "process", "--until-caught-up", "--home", str(home)],
        env=ENV,
        check=True,
        capture_output=True,
    )
    assert sorted(fact_ids(home)) == sorted(r["event_id"] for r in batch)


def test_the_collector_alone_refuses_to_serve_off_loopback_without_insecure(
    tmp_path: Path,
) -> None:
    """Without a warehouse there are no keys to check: off loopback it needs --insecure."""
    home = tmp_path / "home"
    done = subprocess.run(
        [sys.executable, "-m", "adpulse", "serve", "--home", str(home), "--no-api"]
        + ["--no-process", "--host", "0.0.0.0", "--port", "0"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr  # a user error, as for the API off loopback
    assert done.stderr.startswith("error: refusing to serve the collector alone on 0.0.0.0")
    assert "--insecure" in done.stderr and "Traceback" not in done.stderr
