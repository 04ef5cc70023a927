"""``adpulse bench-server``: the pipeline on servers (Redis Streams transport, PostgreSQL
warehouse) with 1..N worker processes, next to the embedded default on the same events.
A benchmark, not a test: it measures and reports, it asserts nothing.

1. Workload: a fixed set of generated events (deterministic seed) is appended to a fresh
   log for each configuration (an embedded log, or a fresh key prefix in Redis) and the
   generator's dimensions are loaded into a fresh warehouse (DuckDB file, or a fresh
   PostgreSQL database, dropped at the end). Not timed.
2. Throughput: ``adpulse process`` is started as separate processes (``--workers N``
   for the server runs) and timed from launch until every record in the log is
   committed: the embedded run exits by itself (``--until-caught-up``); for the server
   runs the benchmark polls the warehouse's reconciliation counts (``ingest_stats``)
   and stops the workers when all records are in. Process start-up is included.
3. Latency at a fixed rate (server mode, the largest worker count): a producer thread
   appends generated events at ``--rate``/s to Redis and records (wall time,
   cumulative records per stream) after each flush; a poller reads the committed counts
   from PostgreSQL every 50 ms. Whenever a stream's committed count grows, the newest
   record counted was produced at the first producer mark reaching that count:
   event-to-queryable latency = poll time - that mark's time (as in ``bench-api``).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from rich.table import Table

from adpulse.config import Settings, redact_url
from adpulse.contracts import Stream
from adpulse.operations.bench import WORKLOAD_START, scratch_dir
from adpulse.operations.bench_api import LiveProducer, event_to_screen
from adpulse.operations.loadgen import percentiles
from adpulse.runtime import UserError, open_runtime
from adpulse.sources.files import write_csv
from adpulse.sources.generator import EventGenerator, GeneratorConfig
from adpulse.sources.producer import publish
from adpulse.storage.dimensions import read_dimension_csv
from adpulse.storage.warehouse.base import Warehouse
from adpulse.transport import open_transport
from adpulse.transport.redis_streams import delete_prefix

#: Longest a throughput run may take before the benchmark gives up on it.
RUN_TIMEOUT_SECONDS = 900.0
#: How often the committed counts are read from the warehouse.
POLL_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class Target:
    """One configuration to measure."""

    label: str
    transport_url: str
    warehouse_url: str
    workers: int


def run_bench_server(
    *,
    redis_url: str,
    pg_url: str,
    events: int,
    partitions: int,
    workers: list[int],
    rate: float,
    latency_seconds: float,
    seed: int,
    workdir: Path | None,
    console: Console,
    backlog: int = 0,
    pin_cores: bool = False,
) -> dict[str, Any]:
    gen = EventGenerator(GeneratorConfig(seed=seed))
    runs: list[dict[str, Any]] = []
    with scratch_dir(workdir, "adpulse-bench-server-") as root:
        targets = [Target("embedded log + DuckDB, 1 process", "", "", 1)]
        for n in workers:
            targets.append(Target(f"Redis + PostgreSQL, {n} worker(s)", redis_url, pg_url, n))
        for i, target in enumerate(targets):
            with _fresh_servers(target, root / f"run{i}", partitions) as settings:
                cores = target.workers if pin_cores else None
                runs.append(_throughput(settings, target, gen, events, console, cores))
        latency: dict[str, Any] | None = None
        backlogged: list[dict[str, Any]] = []
        if rate > 0 and backlog:
            for cap in (True, False):
                target = Target("embedded log + DuckDB, 1 process", "", "", 1)
                home = root / f"backlog-{'cap' if cap else 'nocap'}"
                with _fresh_servers(target, home, partitions) as settings:
                    run = _backlog_latency(settings, gen, rate, latency_seconds, backlog, cap)
                    backlogged.append(run)
                    console.print(_backlog_line(run))
        elif rate > 0 and workers:
            target = Target(
                f"Redis + PostgreSQL, {max(workers)} worker(s)", redis_url, pg_url, max(workers)
            )
            with _fresh_servers(target, root / "latency", partitions) as settings:
                latency = _latency(settings, target, gen, rate, latency_seconds, console)
    result = {
        "events": runs[0]["records"] if runs else 0,
        "pinned_cores": pin_cores,
        "partitions": partitions,
        "redis_url": redact_url(redis_url),
        "pg_url": redact_url(pg_url),
        "throughput": runs,
        "latency": latency,
        "backlog_latency": backlogged,
    }
    _print(result, console)
    return result


# -- fresh servers ------------------------------------------------------------------------
@contextmanager
def _fresh_servers(target: Target, home: Path, partitions: int) -> Iterator[Settings]:
    """Settings for ``target`` over a fresh log and warehouse, removed afterwards."""
    home.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:10]
    transport_url, cleanup = target.transport_url, []
    if transport_url.startswith("redis://"):
        transport_url = _with_query(transport_url, f"prefix=adpulse-bench-{tag}")
        cleanup.append(lambda: delete_prefix(target.transport_url, f"adpulse-bench-{tag}"))
    warehouse_url = target.warehouse_url
    if warehouse_url.startswith(("postgresql://", "postgres://")):
        database = f"adpulse_bench_{tag}"
        _pg_admin(warehouse_url, f'CREATE DATABASE "{database}"')
        warehouse_url = _with_database(warehouse_url, database)
        cleanup.append(lambda: _pg_admin(target.warehouse_url, f'DROP DATABASE "{database}"'))
    settings = Settings(
        home=home,
        partitions=partitions,
        transport_url=transport_url,
        warehouse_url=warehouse_url,
    )
    try:
        yield settings
    finally:
        for step in cleanup:
            step()


def _with_query(url: str, query: str) -> str:
    parts = urlsplit(url)
    joined = f"{parts.query}&{query}" if parts.query else query
    return urlunsplit(parts._replace(query=joined))


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def _pg_admin(url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        if statement.startswith("DROP DATABASE"):
            conn.execute(statement + " WITH (FORCE)")
        else:
            conn.execute(statement)


# -- throughput ---------------------------------------------------------------------------
def _fill(settings: Settings, gen: EventGenerator, events: int, console: Console) -> int:
    """Append the workload to the configured log and load the dimensions; records."""
    with open_runtime(settings) as rt, console.status(f"appending {events:,} events"):
        _load_dimensions(rt.warehouse, gen, settings.home)
        producer = rt.transport.producer()
        days = max(1.0, events / 3_000_000)
        records = 0
        for part in gen.iter_generate(
            events, WORKLOAD_START, WORKLOAD_START + timedelta(days=days)
        ):
            for stream in Stream:
                publish(producer, stream, part.records[stream], settings.partitions)
                records += len(part.records[stream])
        producer.flush()
        producer.close()
    return records


def _load_dimensions(warehouse: Warehouse, gen: EventGenerator, home: Path) -> None:
    folder = home / "dims"
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in (("campaigns.csv", gen.campaigns()), ("users.csv", gen.users())):
        write_csv(frame, folder / name)
        kind, rows = read_dimension_csv(folder / name)
        warehouse.load_dimension(kind, rows, WORKLOAD_START)


def _throughput(
    settings: Settings,
    target: Target,
    gen: EventGenerator,
    events: int,
    console: Console,
    cores: int | None = None,
) -> dict[str, Any]:
    """Records/s of ``target`` over a fresh log of ``events``; ``cores``: the processes
    may run on CPUs 0..cores-1 only (``--pin-cores``: one core per worker)."""
    records = _fill(settings, gen, events, console)
    embedded = target.transport_url == ""
    args = ["process", *(["--until-caught-up"] if embedded else _workers_args(target))]
    with console.status(f"{target.label}: processing {records:,} records"):
        t = time.perf_counter()
        # Catch-up throughput: the server workers run live (they are stopped by the
        # benchmark), so their live batch cap is lifted to batch like the embedded run.
        process = _start(settings, args, {"ADPULSE_LIVE_BATCH_MAX_BYTES": "0"}, cores)
        try:
            if embedded:
                process.wait(timeout=RUN_TIMEOUT_SECONDS)
                if process.returncode != 0:
                    raise UserError(f"{target.label}: adpulse process exited {process.returncode}")
            else:
                _wait_committed(settings, records, process, target.label)
            seconds = time.perf_counter() - t
        finally:
            _stop(process)
    committed = _committed_counts(settings)
    return {
        "label": target.label,
        "workers": target.workers,
        "records": records,
        "committed": sum(committed.values()),
        "seconds": round(seconds, 3),
        "records_per_s": round(records / seconds),
    }


def _workers_args(target: Target) -> list[str]:
    return ["--workers", str(target.workers)] if target.workers > 1 else []


def _start(
    settings: Settings,
    args: list[str],
    extra_env: dict[str, str] | None = None,
    cores: int | None = None,
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **(extra_env or {}),
        "ADPULSE_HOME": str(settings.home),
        "ADPULSE_PARTITIONS": str(settings.partitions),
        "ADPULSE_TRANSPORT_URL": settings.transport_url,
        "ADPULSE_WAREHOUSE_URL": settings.warehouse_url,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "adpulse", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # Forked workers inherit the affinity: N workers share CPUs 0..N-1.
        preexec_fn=None if cores is None else lambda: os.sched_setaffinity(0, range(cores)),
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.stderr is not None:
        process.stderr.close()


def _wait_committed(
    settings: Settings, records: int, process: subprocess.Popen[bytes], label: str
) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    with open_runtime(settings, read_only=True) as rt:
        while sum(_counts(rt.warehouse).values()) < records:
            if process.poll() is not None:
                detail = (
                    process.stderr.read().decode(errors="replace")[-2000:] if process.stderr else ""
                )
                raise UserError(f"{label}: the workers exited ({process.returncode}): {detail}")
            if time.monotonic() > deadline:
                raise UserError(f"{label}: not all records committed in {RUN_TIMEOUT_SECONDS} s")
            time.sleep(POLL_SECONDS * 4)


def _counts(warehouse: Warehouse) -> dict[str, int]:
    frame = warehouse.query(
        "SELECT stream, SUM(received) AS received FROM ingest_stats GROUP BY stream"
    )
    return {str(s): int(n or 0) for s, n in frame.iter_rows()}


def _committed_counts(settings: Settings) -> dict[str, int]:
    with open_runtime(settings, read_only=True) as rt:
        return _counts(rt.warehouse)


# -- latency ------------------------------------------------------------------------------
def _latency(
    settings: Settings,
    target: Target,
    gen: EventGenerator,
    rate: float,
    seconds: float,
    console: Console,
) -> dict[str, Any]:
    with open_runtime(settings) as rt:
        _load_dimensions(rt.warehouse, gen, settings.home)
        live = LiveProducer(gen, rt.transport.producer(), settings.partitions)
        live.rate = rate
        process = _start(settings, ["process", *_workers_args(target)])
        stop = threading.Event()
        producing = threading.Thread(target=live.run, args=(stop,), daemon=True)
        updates: list[tuple[float, dict[str, int]]] = []
        # Producer counts continue the warehouse's (nothing live committed yet), so a
        # committed count maps onto the producer mark that reached it.
        live.set_baseline(_counts(rt.warehouse))
        try:
            producing.start()
            with console.status(f"{target.label}: warming up at {rate:,.0f} events/s"):
                _wait_backlog(rt.warehouse, live, rate, process)
            start_produced = live.produced()
            start_committed = sum(_counts(rt.warehouse).values())
            t0 = time.time()
            with console.status(f"{target.label}: measuring for {seconds:.0f} s"):
                while time.time() - t0 < seconds:
                    updates.append((time.time(), _counts(rt.warehouse)))
                    time.sleep(POLL_SECONDS)
            elapsed = time.time() - t0
            end_committed = sum(_counts(rt.warehouse).values())
            end_produced = live.produced()
        finally:
            stop.set()
            producing.join(timeout=10)
            _stop(process)
        with live.lock:
            marks = list(live.marks)
    latencies = event_to_screen(marks, updates)
    return {
        "label": target.label,
        "rate": rate,
        "seconds": round(elapsed, 1),
        "produced_per_s": round((end_produced - start_produced) / elapsed) if elapsed else 0,
        "committed_per_s": round((end_committed - start_committed) / elapsed) if elapsed else 0,
        "samples": len(latencies),
        "latency_ms": percentiles(latencies),
    }


def _wait_backlog(
    warehouse: Warehouse, live: LiveProducer, rate: float, process: subprocess.Popen[bytes]
) -> None:
    """Wait until the workers run and the backlog is at most one second of events."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"the workers exited ({process.returncode}) during warm-up")
        committed = sum(_counts(warehouse).values())
        if committed > 0 and live.produced() - committed <= rate:
            return
        time.sleep(0.5)
    raise UserError(f"the workers did not keep up with {rate:,.0f} events/s within 120 s")


# -- latency while a backlog is processed --------------------------------------------------
def _backlog_latency(
    settings: Settings,
    gen: EventGenerator,
    rate: float,
    seconds: float,
    backlog: int,
    cap: bool,
) -> dict[str, Any]:
    """Event-to-queryable latency of ``adpulse process`` (embedded, live) at ``rate``
    while it works off ``backlog`` impressions appended before it started (a replay of
    history). Committed counts come from its Prometheus metrics (counted after each
    commit), read every 50 ms: the DuckDB file is the process's alone. The fresh clicks
    and conversions are behind no backlog: their latency is what the live batch cap
    bounds. Fresh impressions queue behind the backlog in their partitions (a log is
    read in order), so theirs is reported apart, with the time the backlog took."""
    with open_runtime(settings) as rt:
        _load_dimensions(rt.warehouse, gen, settings.home)
        producer = rt.transport.producer()
        queued = 0
        for part in gen.iter_generate(
            backlog, WORKLOAD_START, WORKLOAD_START + timedelta(days=max(1.0, backlog / 3e6))
        ):
            impressions = part.records[Stream.IMPRESSIONS]
            publish(producer, Stream.IMPRESSIONS, impressions, settings.partitions)
            queued += len(impressions)
        producer.flush()
        producer.close()
    port = _free_port()
    env = {"ADPULSE_METRICS_PORT": str(port)}
    if not cap:
        env["ADPULSE_LIVE_BATCH_MAX_BYTES"] = "0"
    transport = open_transport(settings)
    live = LiveProducer(gen, transport.producer(), settings.partitions)
    live.rate = rate
    process = _start(settings, ["process"], env)
    stop = threading.Event()
    producing = threading.Thread(target=live.run, args=(stop,), daemon=True)
    updates: list[tuple[float, dict[str, int]]] = []
    drained_at: float | None = None
    try:
        while _scrape(port) is None:  # until the process serves its metrics
            if process.poll() is not None:
                raise UserError(f"adpulse process exited ({process.returncode}) at start")
            time.sleep(0.05)
        live.set_baseline({Stream.IMPRESSIONS.value: queued})
        t0 = time.time()
        producing.start()
        while time.time() - t0 < seconds:
            counts = _scrape(port)
            if counts is not None:
                updates.append((time.time(), counts))
                if drained_at is None and counts.get(Stream.IMPRESSIONS.value, 0) >= queued:
                    drained_at = time.time() - t0
            time.sleep(POLL_SECONDS)
        elapsed = time.time() - t0
    finally:
        stop.set()
        producing.join(timeout=10)
        _stop(process)
        transport.close()
    with live.lock:
        marks = list(live.marks)

    def only(streams: set[str], rows: list[tuple[float, dict[str, int]]]) -> Any:
        return [(t, {k: v for k, v in c.items() if k in streams}) for t, c in rows]

    fresh = {Stream.CLICKS.value, Stream.CONVERSIONS.value}
    during = [u for u in updates if drained_at is None or u[0] - t0 <= drained_at]
    imp = {Stream.IMPRESSIONS.value}
    return {
        "label": "live batch cap " + ("on" if cap else "off (live_batch_max_bytes = 0)"),
        "rate": rate,
        "backlog_impressions": queued,
        "seconds": round(elapsed, 1),
        "backlog_drained_after_s": None if drained_at is None else round(drained_at, 1),
        "produced": live.produced() - queued,
        "fresh_streams_ms": weighted_percentiles(
            event_latencies(only(fresh, marks), only(fresh, updates))
        ),
        "fresh_streams_during_backlog_ms": weighted_percentiles(
            event_latencies(only(fresh, marks), only(fresh, during))
        ),
        "impressions_ms": weighted_percentiles(
            event_latencies(only(imp, marks), only(imp, updates))
        ),
    }


def event_latencies(
    marks: list[tuple[float, dict[str, int]]], updates: list[tuple[float, dict[str, int]]]
) -> list[tuple[float, int]]:
    """(latency in seconds, how many events) for every event appended after the first
    mark and queryable by the last update: an event is appended at the first producer
    mark whose count reaches it and queryable at the first update whose committed count
    does. Unlike :func:`event_to_screen` (the newest event of each update), every event
    counts, so a long batch weighs by the events it held back."""
    out: list[tuple[float, int]] = []
    for stream in {k for _, c in marks for k in c}:
        appended = [(t, c[stream]) for t, c in marks if stream in c]
        visible = [(t, c[stream]) for t, c in updates if stream in c]
        if not appended or not visible:
            continue
        done = appended[0][1]  # events up to the first mark are not timed
        i = j = 0
        while True:
            while i < len(appended) and appended[i][1] <= done:
                i += 1
            while j < len(visible) and visible[j][1] <= done:
                j += 1
            if i == len(appended) or j == len(visible):
                break
            upto = min(appended[i][1], visible[j][1])
            out.append((visible[j][0] - appended[i][0], upto - done))
            done = upto
    return out


def weighted_percentiles(samples: list[tuple[float, int]]) -> dict[str, float | None]:
    """p50/p90/p99/max in milliseconds over events (``samples`` as from
    :func:`event_latencies`)."""
    total = sum(n for _, n in samples)
    result: dict[str, float | None] = {"p50_ms": None, "p90_ms": None, "p99_ms": None}
    if not total:
        return {**result, "max_ms": None, "events": 0}
    ordered = sorted(samples)
    for name, q in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
        rank, seen = q * total, 0
        for latency, n in ordered:
            seen += n
            if seen >= rank:
                result[name] = round(latency * 1000, 1)
                break
    return {**result, "max_ms": round(ordered[-1][0] * 1000, 1), "events": total}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> dict[str, int] | None:
    """Records received per stream, from the process's /metrics (None: not answering)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    counts: dict[str, int] = {}
    for match in _RECEIVED.finditer(text):
        counts[match["stream"]] = int(float(match["value"]))
    return counts


_RECEIVED = re.compile(
    r'^adpulse_events_received_total\{stream="(?P<stream>\w+)"\} (?P<value>\S+)$', re.M
)


def _backlog_line(run: dict[str, Any]) -> str:
    def s(ms: float | None) -> str:
        return "-" if ms is None else f"{ms / 1000:.2f} s"

    fresh, during, imp = (
        run["fresh_streams_ms"],
        run["fresh_streams_during_backlog_ms"],
        run["impressions_ms"],
    )
    drained = run["backlog_drained_after_s"]
    return (
        f"{run['label']}: {run['rate']:,.0f} events/s for {run['seconds']} s over a backlog of"
        f" {run['backlog_impressions']:,} impressions"
        f" ({'drained after ' + str(drained) + ' s' if drained is not None else 'not drained'});"
        f" clicks + conversions event-to-queryable p50 {s(fresh['p50_ms'])},"
        f" p99 {s(fresh['p99_ms'])} (during the backlog p99 {s(during['p99_ms'])});"
        f" impressions p50 {s(imp['p50_ms'])}, p99 {s(imp['p99_ms'])}"
    )


# -- report -------------------------------------------------------------------------------
def _print(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"adpulse bench-server — {result['events']:,} records")
    table.add_column("configuration")
    table.add_column("seconds", justify="right")
    table.add_column("records/s", justify="right")
    table.add_column("vs embedded", justify="right")
    base = result["throughput"][0]["records_per_s"] if result["throughput"] else 0
    for run in result["throughput"]:
        ratio = f"{run['records_per_s'] / base:.2f}x" if base else "-"
        table.add_row(run["label"], f"{run['seconds']:.1f}", f"{run['records_per_s']:,}", ratio)
    console.print(table)
    latency = result["latency"]
    if latency:
        p = latency["latency_ms"]

        def fmt(ms: float | None) -> str:
            return "-" if ms is None else f"{ms / 1000:.2f} s"

        console.print(
            f"{latency['label']} at {latency['rate']:,.0f} events/s for {latency['seconds']} s: "
            f"produced {latency['produced_per_s']:,}/s, committed {latency['committed_per_s']:,}/s;"
            f" event-to-queryable p50 {fmt(p['p50_ms'])}, p90 {fmt(p['p90_ms'])},"
            f" p99 {fmt(p['p99_ms'])} ({latency['samples']} samples)"
        )
