"""``adpulse bench-api``: the HTTP API and the live path under load, while the pipeline
ingests. A benchmark, not a test: it measures and reports, it asserts nothing.

1. Warehouse: 7 days of minute data (the generator's events over the last 7 days,
   appended to an embedded log and processed until committed). Reused when
   ``--workdir`` already holds one.
2. Live: a producer thread generates events in-process at a fixed rate (like the demo),
   the processor ingests them, and the API is served by uvicorn in a thread of the same
   process on a free loopback port (exactly how ``adpulse demo`` serves it).
3. Event-to-screen (first, from a drained log, at each ``--e2s-rate``): the producer
   records, after each append to the log, the wall time and the cumulative records
   appended per stream; an SSE client on ``/api/v1/stream`` records the receive time
   and the committed counts (``health.streams[].received``) of every update. For each
   update whose count for a stream grew, the newest counted record of that stream was
   appended at the first producer mark reaching that count: latency = receive time -
   that mark's time.
4. Query load: a separate process (:mod:`adpulse.operations.loadgen`) runs 1, then N
   concurrent keep-alive clients for a fixed time over the dashboard's queries for a
   24 h range, while ingest runs at ``--load-rate``. When ``wrk`` is installed, the same
   N clients and path mix run again from wrk (C, so the load tool takes less of the
   shared CPU than the Python one; overall latency only).

Each phase also reports the processor's batches (how many, mean records per batch), to
see whether readers slow ingest down.
"""

from __future__ import annotations

import bisect
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

from rich.console import Console
from rich.table import Table

from adpulse.commits import CommitSignal
from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.operations.bench import scratch_dir
from adpulse.operations.demo import load_generated_dimensions
from adpulse.operations.loadgen import percentiles
from adpulse.processor.pipeline import BatchReport
from adpulse.runtime import UserError, Worker, open_runtime, processor_for
from adpulse.serving import queries
from adpulse.sources.generator import EventGenerator, GeneratorConfig
from adpulse.sources.producer import publish
from adpulse.storage.warehouse.base import Warehouse

#: Longest window of events the producer generates at once (seconds of the rate): when
#: generation falls behind, the rate sustained drops below the target instead of the
#: chunks growing without bound.
MAX_CHUNK_SECONDS = 1.0


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class BatchCounter:
    """Batches the processor committed and their records (its ``on_batch`` callback)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches = 0
        self.records = 0

    def add(self, report: BatchReport) -> None:
        with self.lock:
            self.batches += 1
            self.records += report.records

    def read(self) -> tuple[int, int]:
        with self.lock:
            return self.batches, self.records


class LiveProducer:
    """Generates and appends events at ``rate``/s; records (wall time, cumulative
    records appended per stream) after each flush."""

    def __init__(self, gen: EventGenerator, producer: Any, partitions: int) -> None:
        self.gen = gen
        self.producer = producer
        self.partitions = partitions
        self.rate = 0.0
        self.lock = threading.Lock()
        self.totals: dict[str, int] = {s.value: 0 for s in Stream}
        self.marks: list[tuple[float, dict[str, int]]] = []
        self.batches = BatchCounter()

    def set_baseline(self, committed: dict[str, int]) -> None:
        """Count on from the committed records (a stream with none committed yet: 0)."""
        with self.lock:
            self.totals = {s.value: committed.get(s.value, 0) for s in Stream}
            self.marks = [(time.time(), dict(self.totals))]

    def produced(self) -> int:
        with self.lock:
            return sum(self.totals.values())

    def run(self, stop: threading.Event) -> None:
        last = _now()
        while not stop.wait(0.25):
            current = _now()
            seconds = min((current - last).total_seconds(), MAX_CHUNK_SECONDS)
            n = round(self.rate * seconds)
            if n < 1:
                last = current
                continue
            chunk = self.gen.stream_chunk(last, current, n)
            for stream in Stream:
                publish(self.producer, stream, chunk.records[stream], self.partitions)
            self.producer.flush()
            appended = time.time()
            with self.lock:
                for stream in Stream:
                    self.totals[stream.value] += len(chunk.records[stream])
                self.marks.append((appended, dict(self.totals)))
            last = current


def event_to_screen(
    marks: list[tuple[float, dict[str, int]]],
    updates: list[tuple[float, dict[str, int]]],
) -> list[float]:
    """Latencies (seconds) from producer ``marks`` and SSE ``updates`` (see module doc).

    Counted per stream and per update in which that stream's committed count grew;
    counts the producer never reached (other writers) are skipped.
    """
    latencies: list[float] = []
    streams = {s for _, counts in marks for s in counts}
    for stream in streams:
        times = [t for t, _ in marks]
        totals = [c.get(stream, 0) for _, c in marks]
        previous: int | None = None
        for received_at, counts in updates:
            count = counts.get(stream)
            if count is None:
                continue
            if previous is not None and count > previous and count > totals[0]:
                i = bisect.bisect_left(totals, count)
                if i < len(totals):
                    latencies.append(received_at - times[i])
            previous = count if previous is None else max(previous, count)
    return latencies


class SseClient:
    """Reads ``/api/v1/stream`` and records (receive time, received per stream)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.updates: list[tuple[float, dict[str, int]]] = []
        self.error: BaseException | None = None

    def run(self, stop: threading.Event) -> None:
        import httpx

        try:
            with (
                httpx.Client(timeout=httpx.Timeout(30.0)) as client,
                client.stream("GET", self.url) as response,
            ):
                for line in response.iter_lines():
                    if stop.is_set():
                        return
                    if not line.startswith("data: "):
                        continue
                    received_at = time.time()
                    payload = json.loads(line[6:])
                    counts = {
                        row["stream"]: int(row["received"]) for row in payload["health"]["streams"]
                    }
                    self.updates.append((received_at, counts))
        except Exception as exc:  # reported in the result
            if not stop.is_set():
                self.error = exc


def _committed(warehouse: Warehouse) -> dict[str, int]:
    streams = queries.pipeline_status(warehouse)["streams"]
    return {row["stream"]: int(row["received"]) for row in streams.to_dicts()}


def dashboard_paths(end: datetime) -> list[str]:
    """The dashboard's queries for its '24 h' quick range ending at ``end``."""
    start = end - timedelta(hours=24)
    q = urlencode({"from": start.strftime("%Y-%m-%dT%H:%M"), "to": end.strftime("%Y-%m-%dT%H:%M")})
    return [
        f"/api/v1/summary?{q}",
        f"/api/v1/timeseries?{q}&bucket=hour",
        f"/api/v1/top-ads?{q}",
        f"/api/v1/trending?{q}",
        f"/api/v1/breakdown/platform?{q}",
    ]


def run_bench_api(
    *,
    workdir: Path | None,
    history_events: int,
    history_days: float,
    partitions: int,
    seed: int,
    load_rate: float,
    clients: int,
    load_seconds: float,
    e2s_rates: list[float],
    e2s_seconds: float,
    console: Console,
) -> dict[str, Any]:
    try:
        import httpx  # noqa: F401
    except ImportError as exc:
        raise UserError("bench-api needs httpx (pip install -e '.[dev]')") from exc
    with scratch_dir(workdir, "adpulse-bench-api-") as root:
        settings = Settings(home=root, partitions=partitions)
        from adpulse.serving.api import bind, create_app, make_server, url_of

        # A live feed of its own per run (see run_demo): on a reused warehouse, the
        # feed of the last run would be taken for re-sends and never reach the facts.
        gen = EventGenerator(
            GeneratorConfig(seed=seed, conversion_delay_median_seconds=90.0),
            feed=time.time_ns() // 1_000_000,
        )
        result: dict[str, Any] = {"home": str(settings.home)}
        with open_runtime(settings) as rt:
            producer = rt.transport.producer()
            commits = CommitSignal()
            processor = processor_for(rt, commits)
            reused = rt.warehouse.next_batch_id() > 1
            if not reused:
                load_generated_dimensions(rt, gen, console)
                end = _now()
                t = time.perf_counter()
                with console.status(
                    f"generating {history_events:,} events over {history_days:g} days"
                ):
                    for part in gen.iter_generate(
                        history_events, end - timedelta(days=history_days), end
                    ):
                        for stream in Stream:
                            publish(producer, stream, part.records[stream], settings.partitions)
                    producer.flush()
                result["history_generate_seconds"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            with console.status("processing the log until everything is committed"):
                processor.run(threading.Event(), until_caught_up=True)
            result["history_process_seconds"] = round(time.perf_counter() - t, 1)
            span = queries.data_range(rt.warehouse)
            committed = _committed(rt.warehouse)
            result["warehouse"] = {
                "reused": reused,
                "records": sum(committed.values()),
                "first_minute": str(span["first_minute"]),
                "last_minute": str(span["last_minute"]),
            }
            console.print(
                f"warehouse {'reused' if reused else 'built'}: "
                f"{sum(committed.values()):,} records, "
                f"{span['first_minute']} .. {span['last_minute']}"
            )

            live = LiveProducer(gen, producer, settings.partitions)
            live.set_baseline(committed)
            live.rate = load_rate
            stop = threading.Event()
            sock = bind("127.0.0.1", 0)
            server = make_server(
                create_app(rt.warehouse, settings, commits=commits, store=rt.store)
            )
            threads = [
                Worker(live.run, "producer", stop),
                Worker(processor.run, "processor", stop, on_batch=live.batches.add),
                Worker(server.run, "http api", sockets=[sock]),
            ]
            for th in threads:
                th.start()
            url = url_of(sock).rstrip("/")
            try:
                _wait_ready(url)
                # Event-to-screen first, from a drained log at its rate; then the query load.
                result["event_to_screen"] = []
                for rate in e2s_rates:
                    settle = _settle(live, rt.warehouse, rate, console)
                    measured = _event_to_screen(url, e2s_seconds, live, rt.warehouse, console)
                    result["event_to_screen"].append({**measured, "settle": settle})
                result["query_settle"] = _settle(live, rt.warehouse, load_rate, console)
                result["query_single_client"] = _query_load(
                    url, 1, min(5.0, load_seconds), live, rt.warehouse, console
                )
                result["query_load"] = _query_load(
                    url, clients, load_seconds, live, rt.warehouse, console
                )
                result["query_load_wrk"] = _query_load_wrk(
                    url, clients, load_seconds, live, rt.warehouse, console
                )
            finally:
                stop.set()
                server.should_exit = True
                for th in threads:
                    th.join(timeout=60)
                sock.close()
                producer.close()
                processor.close()
            for th in threads:
                th.check()
        _print(result, console)
        return result


def _settle(
    live: LiveProducer, warehouse: Warehouse, rate: float, console: Console
) -> dict[str, Any]:
    """Switch to ``rate`` and wait (at most 120 s) until the committed counts are within
    one second of production, so that a phase does not start on a backlog."""
    live.rate = rate
    t = time.perf_counter()
    with console.status(f"settling at {rate:,.0f} events/s"):
        time.sleep(3.0)
        backlog = live.produced() - sum(_committed(warehouse).values())
        while backlog > max(rate, 10_000) and time.perf_counter() - t < 120:
            time.sleep(0.5)
            backlog = live.produced() - sum(_committed(warehouse).values())
    return {"seconds": round(time.perf_counter() - t, 1), "backlog_records": backlog}


def _wait_ready(url: str) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise UserError("the API did not become ready in 30 s")


def _query_load(
    url: str,
    clients: int,
    seconds: float,
    live: LiveProducer,
    warehouse: Warehouse,
    console: Console,
) -> dict[str, Any]:
    end = (_now() + timedelta(minutes=1)).replace(second=0, microsecond=0)
    paths = dashboard_paths(end)
    command = [
        sys.executable,
        "-m",
        "adpulse.operations.loadgen",
        url,
        str(seconds),
        str(clients),
        *paths,
    ]
    status = f"{clients} clients for {seconds:g} s at {live.rate:,.0f} events/s ingest"
    done, ingest = _run_load(command, seconds, live, warehouse, console, status)
    if done.returncode != 0:
        raise UserError(f"the load generator failed: {done.stderr.strip()[-2000:]}")
    load = json.loads(done.stdout)
    load["ingest"] = ingest
    load["paths"] = paths
    return load


def _run_load(
    command: list[str],
    seconds: float,
    live: LiveProducer,
    warehouse: Warehouse,
    console: Console,
    status: str,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run a load tool to completion; its result and what ingest did meanwhile."""
    before = _ingest_marks(live, warehouse)
    t = time.perf_counter()
    with console.status(status):
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    return done, _ingest(live, warehouse, before, time.perf_counter() - t)


#: wrk's ``done`` hook shared by the load scripts (this one and the collector
#: benchmark's): one JSON line, latencies in microseconds. ``%``-escaped: the scripts are
#: rendered with ``%`` formatting.
WRK_DONE: Final = """done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "duration_us": %%d, "errors": %%d, "non_2xx_3xx": %%d, ' ..
    '"p50_us": %%.0f, "p90_us": %%.0f, "p99_us": %%.0f, "max_us": %%.0f}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""

#: wrk script: each connection takes the next path of the mix in turn; ``done`` prints
#: one JSON line (latencies in microseconds). Rendered by :func:`wrk_script`.
WRK_SCRIPT: Final = (
    """
local paths = {%(paths)s}
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1])
end
"""
    + WRK_DONE
)


def wrk_script(paths: list[str]) -> str:
    """The wrk Lua script that requests ``paths`` in turn and prints its summary as JSON."""
    return WRK_SCRIPT % {"paths": ", ".join(json.dumps(p) for p in paths)}


def _query_load_wrk(
    url: str,
    clients: int,
    seconds: float,
    live: LiveProducer,
    warehouse: Warehouse,
    console: Console,
) -> dict[str, Any] | None:
    """The same mix and clients as :func:`_query_load`, from wrk; None without wrk."""
    wrk = shutil.which("wrk")
    if wrk is None:
        console.print("wrk is not installed: query load measured with the Python client only")
        return None
    end = (_now() + timedelta(minutes=1)).replace(second=0, microsecond=0)
    paths = dashboard_paths(end)
    script = wrk_script(paths)
    with tempfile.TemporaryDirectory(prefix="adpulse-wrk-") as folder:
        script_path = Path(folder) / "mix.lua"
        script_path.write_text(script)
        command = [
            wrk,
            "--threads",
            "2",
            "--connections",
            str(clients),
            "--duration",
            f"{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "--script",
            str(script_path),
            url + "/",
        ]
        status = f"wrk: {clients} connections for {seconds:g} s"
        done, ingest = _run_load(command, seconds, live, warehouse, console, status)
    if done.returncode != 0:
        raise UserError(f"wrk failed: {done.stderr.strip()[-2000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise UserError(f"wrk printed no summary: {done.stdout.strip()[-2000:]}")
    raw = json.loads(lines[-1])
    duration = raw["duration_us"] / 1e6
    return {
        "clients": clients,
        "seconds": round(duration, 2),
        "overall": {
            "requests": raw["requests"],
            "errors": raw["errors"] + raw["non_2xx_3xx"],
            "requests_per_s": round(raw["requests"] / duration, 1),
            **{
                f"{name}_ms": round(raw[f"{name}_us"] / 1000, 2)
                for name in ("p50", "p90", "p99", "max")
            },
        },
        "ingest": ingest,
        "paths": paths,
    }


def _ingest_marks(live: LiveProducer, warehouse: Warehouse) -> tuple[int, int, int, int]:
    """(produced, committed, batches, batch records) now, to diff at a phase's end."""
    batches, records = live.batches.read()
    return live.produced(), sum(_committed(warehouse).values()), batches, records


def _ingest(
    live: LiveProducer, warehouse: Warehouse, before: tuple[int, int, int, int], wall: float
) -> dict[str, Any]:
    produced0, committed0, batches0, records0 = before
    produced, committed, batches, records = _ingest_marks(live, warehouse)
    return {
        "target_events_per_s": live.rate,
        "produced_records_per_s": round((produced - produced0) / wall),
        "committed_records_per_s": round((committed - committed0) / wall),
        "backlog_records_at_end": produced - committed,
        "backlog_records_at_start": produced0 - committed0,
        "batches": batches - batches0,
        "records_per_batch": round((records - records0) / max(1, batches - batches0)),
    }


def _event_to_screen(
    url: str, seconds: float, live: LiveProducer, warehouse: Warehouse, console: Console
) -> dict[str, Any]:
    end = (_now() + timedelta(minutes=1)).replace(second=0, microsecond=0)
    q = urlencode({"from": (end - timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M")})
    client = SseClient(f"{url}/api/v1/stream?{q}")
    stop = threading.Event()
    reader = threading.Thread(target=client.run, args=(stop,), daemon=True)
    before = _ingest_marks(live, warehouse)
    t = time.perf_counter()
    with console.status(f"event-to-screen for {seconds:g} s at {live.rate:,.0f} events/s"):
        reader.start()
        time.sleep(seconds)
        stop.set()
    wall = time.perf_counter() - t
    ingest = _ingest(live, warehouse, before, wall)
    with live.lock:
        marks = list(live.marks)
    latencies = event_to_screen(marks, client.updates)
    return {
        "seconds": round(wall, 1),
        "sse_updates": len(client.updates),
        "samples": len(latencies),
        "sse_error": None if client.error is None else repr(client.error),
        **{
            k.replace("_ms", "_s"): (None if v is None else round(v / 1000, 3))
            for k, v in percentiles(latencies).items()
        },
        "ingest": ingest,
    }


def _print(result: dict[str, Any], console: Console) -> None:
    load = result["query_load"]
    table = Table(
        title=f"query API: {load['clients']} clients, {load['seconds']} s, ingest "
        f"{load['ingest']['produced_records_per_s']:,} records/s"
    )
    for col in ("endpoint", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"):
        table.add_column(col, justify="left" if col == "endpoint" else "right")
    rows = [(p.split("?")[0], v) for p, v in load["endpoints"].items()]
    rows.append(("overall", load["overall"]))
    for name, v in rows:
        table.add_row(
            name,
            f"{v['requests_per_s']:,.1f}",
            str(v["p50_ms"]),
            str(v["p90_ms"]),
            str(v["p99_ms"]),
            str(v["max_ms"]),
            str(v["errors"]),
        )
    console.print(table)
    by_wrk = result.get("query_load_wrk")
    if by_wrk is not None:
        w = by_wrk["overall"]
        console.print(
            f"same mix from wrk, {by_wrk['clients']} connections, {by_wrk['seconds']} s: "
            f"{w['requests_per_s']:,.1f} req/s, p50 {w['p50_ms']} ms, p90 {w['p90_ms']} ms, "
            f"p99 {w['p99_ms']} ms, max {w['max_ms']} ms, errors {w['errors']} (ingest "
            f"{by_wrk['ingest']['committed_records_per_s']:,} records/s committed)"
        )
    one = result["query_single_client"]["overall"]
    console.print(
        f"same mix from 1 client: {one['requests_per_s']:,.1f} req/s, p50 {one['p50_ms']} ms, "
        f"p99 {one['p99_ms']} ms"
    )
    for e2s in result["event_to_screen"]:
        console.print(
            f"event-to-screen at {e2s['ingest']['target_events_per_s']:,.0f} events/s target "
            f"({e2s['ingest']['produced_records_per_s']:,} records/s produced, "
            f"{e2s['ingest']['committed_records_per_s']:,} committed): p50 {e2s['p50_s']} s, "
            f"p90 {e2s['p90_s']} s, p99 {e2s['p99_s']} s, max {e2s['max_s']} s "
            f"over {e2s['samples']} samples from {e2s['sse_updates']} SSE updates"
        )
