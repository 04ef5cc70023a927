"""``adpulse bench``: the embedded pipeline's throughput, measured against the same-run
decode ceiling of the same bytes.

1. A fixed workload is generated (deterministic seed) and appended to an embedded log,
   in a child process. Not timed: the benchmark starts from bytes in the log.
2. Pipeline: a fresh processor consumes the whole log into a fresh DuckDB warehouse
   (decode -> validate -> dedupe -> enrich -> attribute -> aggregate -> commit) until
   everything is committed. Time per step, CPU time and peak memory are recorded.
3. Ceiling: every partition of every stream is read from the log and decoded with
   ``polars.read_ndjson`` and the same schema, nothing else (best of 3).

``adpulse bench --compare`` (:func:`run_compare`) compares ``replay`` with a plain
DuckDB batch query over the same JSON-lines files.
"""

from __future__ import annotations

import multiprocessing
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import duckdb
import polars as pl
from rich.console import Console
from rich.table import Table

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.processor.pipeline import STEP_NAMES, Processor
from adpulse.runtime import Worker, open_runtime, processor_for
from adpulse.sources.files import (
    CAMPAIGNS_FILE,
    USERS_FILE,
    iter_stream_files,
    write_csv,
    write_dataset,
)
from adpulse.sources.generator import EventGenerator, GeneratorConfig
from adpulse.sources.producer import publish, replay_directory
from adpulse.storage.dimensions import read_dimension_csv
from adpulse.storage.warehouse.base import Warehouse
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.transport.embedded import EmbeddedTransport

WORKLOAD_START = datetime(2023, 9, 1)
T = TypeVar("T")


def run_bench(
    *,
    events: int,
    partitions: int,
    seed: int,
    workdir: Path | None,
    console: Console,
    malformed_rate: float = 0.0,
) -> dict[str, Any]:
    if workdir is not None and workdir.exists():
        shutil.rmtree(workdir)  # a benchmark starts from an empty log and warehouse
    with scratch_dir(workdir, "adpulse-bench-") as root:
        return _bench(root, events, partitions, seed, console, malformed_rate)


@contextmanager
def scratch_dir(workdir: Path | None, prefix: str) -> Iterator[Path]:
    """``workdir`` (created, kept afterwards), or a temporary directory removed at the end."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _bench(
    root: Path, events: int, partitions: int, seed: int, console: Console, malformed_rate: float
) -> dict[str, Any]:
    config = GeneratorConfig(seed=seed, malformed_rate=malformed_rate)
    gen = EventGenerator(config)
    settings = Settings(home=root, partitions=partitions)
    with console.status(f"generating {events:,} events into the log"):
        t = time.perf_counter()
        # In a process of its own: what generation allocates is not the pipeline's.
        worker = multiprocessing.get_context("spawn").Process(
            target=generate_log, args=(root / "log", events, partitions, config)
        )
        worker.start()
        worker.join()
        if worker.exitcode != 0:
            raise RuntimeError(f"generating the workload failed (exit code {worker.exitcode})")
        generate_seconds = time.perf_counter() - t
    log = EmbeddedTransport(root / "log", partitions)

    # The pipeline runs first: what the ceiling run allocates is then not counted in
    # the pipeline's peak memory (an allocator keeps freed pages for a while).
    pipeline_peak = PeakMemory()

    warehouse = DuckDBWarehouse(root / "warehouse.duckdb")
    warehouse.create_schema()
    dims = root / "dims"
    dims.mkdir()
    for name, frame in (("campaigns.csv", gen.campaigns()), ("users.csv", gen.users())):
        write_csv(frame, dims / name)
        kind, rows = read_dimension_csv(dims / name)
        warehouse.load_dimension(kind, rows, WORKLOAD_START)

    processor = Processor(settings, log, warehouse)
    processor.step_seconds.clear()
    batches = 0
    with console.status("running the pipeline"):
        t = time.perf_counter()
        cpu = time.process_time()
        stop = threading.Event()

        def count(_: object) -> None:
            nonlocal batches
            batches += 1

        processor.run(stop, on_batch=count, until_caught_up=True)
        pipeline_seconds = time.perf_counter() - t
        cpu_seconds = time.process_time() - cpu
    committed = warehouse.query(
        "SELECT sum(received) AS received, sum(rejected) AS rejected, "
        "sum(duplicates) AS duplicates FROM ingest_stats"
    ).row(0, named=True)
    pipeline_rss = pipeline_peak.bytes()
    warehouse.close()

    consumer = log.consumer()
    buffers: list[tuple[Stream, bytes, int]] = []
    for stream in Stream:
        for p in range(partitions):
            chunk = consumer.poll(stream, p, None, 1 << 40)
            if chunk is not None:
                buffers.append((stream, chunk.data, chunk.records))
    records = sum(n for _, _, n in buffers)
    total_bytes = sum(len(b) for _, b, _ in buffers)
    with console.status("measuring the decode ceiling (polars.read_ndjson alone)"):
        ceiling_seconds = min(_decode_all(buffers) for _ in range(3))
    del buffers

    result: dict[str, Any] = {
        "events": records,
        "bytes": total_bytes,
        "partitions": partitions,
        "batches": batches,
        "generate_seconds": round(generate_seconds, 3),
        "decode_ceiling_seconds": round(ceiling_seconds, 3),
        "decode_ceiling_events_per_s": round(records / ceiling_seconds),
        "pipeline_seconds": round(pipeline_seconds, 3),
        "pipeline_events_per_s": round(records / pipeline_seconds),
        "pipeline_vs_ceiling": round(ceiling_seconds / pipeline_seconds, 3),
        # CPU time of every thread: steadier than wall time on a shared machine
        "pipeline_cpu_seconds": round(cpu_seconds, 3),
        "cpu_us_per_event": round(cpu_seconds / records * 1e6, 3),
        "peak_rss_mb": round(pipeline_rss / 1e6),
        "process_peak_rss_mb": round(_maxrss() / 1e6),
        "steps_seconds": {k: round(processor.step_seconds.get(k, 0.0), 3) for k in STEP_NAMES},
        "committed": committed,
    }
    _print(result, console)
    return result


def generate_log(directory: Path, events: int, partitions: int, config: GeneratorConfig) -> None:
    """Append the benchmark's workload (``events`` over a day per 3M) to an embedded log."""
    log = EmbeddedTransport(directory, partitions)
    producer = log.producer()
    days = max(1.0, events / 3_000_000)
    for part in EventGenerator(config).iter_generate(
        events, WORKLOAD_START, WORKLOAD_START + timedelta(days=days)
    ):
        for stream in Stream:
            publish(producer, stream, part.records[stream], partitions)
    producer.flush()
    log.close()


def _decode_all(buffers: list[tuple[Stream, bytes, int]]) -> float:
    t = time.perf_counter()
    for stream, data, _ in buffers:
        pl.read_ndjson(data, schema=stream.decode_schema)
    return time.perf_counter() - t


class PeakMemory:
    """Peak resident memory from now on: on Linux the kernel's high-water mark is reset
    (``/proc/self/clear_refs``) and read back (``VmHWM``), so what came before (the
    workload's generation, the ceiling run) does not count; elsewhere, the process's
    peak so far."""

    def __init__(self) -> None:
        self.reset = False
        with suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True

    def bytes(self) -> int:
        if self.reset:
            with suppress(OSError, ValueError):
                for line in Path("/proc/self/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        return _maxrss()


def _maxrss() -> int:
    """Peak resident memory of this process so far (the kernel keeps it: no sampling)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _print(result: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"adpulse bench — {result['events']:,} events, {result['partitions']} partitions"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("log bytes", f"{result['bytes'] / 1e6:,.1f} MB")
    table.add_row(
        "decode ceiling (polars.read_ndjson only)",
        f"{result['decode_ceiling_events_per_s']:,} events/s",
    )
    table.add_row(
        "pipeline end to end (log -> committed)", f"{result['pipeline_events_per_s']:,} events/s"
    )
    table.add_row("pipeline / ceiling", f"{result['pipeline_vs_ceiling']:.0%}")
    table.add_row("pipeline CPU time (all threads)", f"{result['cpu_us_per_event']:.2f} µs/event")
    table.add_row("batches", f"{result['batches']:,}")
    table.add_row("peak RSS of the pipeline", f"{result['peak_rss_mb']:,} MB")
    table.add_row("peak RSS of the process", f"{result['process_peak_rss_mb']:,} MB")
    for step, seconds in result["steps_seconds"].items():
        table.add_row(f"  step {step}", f"{seconds:.3f} s")
    console.print(table)


# --- bench --compare: adpulse against a plain DuckDB batch query over the same files -----
#: The answers compared per ad: counts, revenue and the sum of attributed latencies
#: (CTR, conversion rate, revenue per conversion and mean latency are ratios of these).
PER_AD_COLUMNS: Final = (
    "ad_id",
    "impressions",
    "clicks",
    "conversions",
    "attributed_conversions",
    "revenue",
    "latency_sum_seconds",
)


def run_compare(
    *,
    events: int,
    partitions: int,
    seed: int,
    workdir: Path | None,
    console: Console,
) -> dict[str, Any]:
    """Generate ``events`` into JSON-lines files (the original's format, untimed), then
    time on those files, in this process: the Polars decode ceiling, a plain DuckDB
    batch query computing the per-ad answers, and ``replay`` end to end (files -> log ->
    committed). Returns the times, their ratios and whether the per-ad answers agree."""
    if workdir is not None and workdir.exists():
        shutil.rmtree(workdir)
    with scratch_dir(workdir, "adpulse-compare-") as root:
        files = root / "files"
        gen = EventGenerator(GeneratorConfig(seed=seed, malformed_rate=0.0))
        with console.status(f"writing {events:,} events as JSON lines"):
            days = max(1.0, events / 3_000_000)
            summary = write_dataset(
                files, gen, events, WORKLOAD_START, WORKLOAD_START + timedelta(days=days)
            )
        records = sum(summary["records"].values())
        total_bytes = sum(p.stat().st_size for p in iter_stream_files(files).values())
        settings = Settings(home=root / "home", partitions=partitions)
        lookback = timedelta(seconds=settings.attribution_lookback_seconds)

        cpu: dict[str, float] = {}
        with console.status("decode ceiling (polars.read_ndjson of each file)"):
            ceiling_seconds = min(
                _timed(lambda: _decode_files(files), cpu, "decode_ceiling")[0] for _ in range(3)
            )
        with console.status("plain DuckDB batch SQL over the files"):
            duckdb_seconds, batch = _timed(lambda: duckdb_per_ad(files, lookback), cpu, "duckdb")
        with console.status("adpulse replay: files -> log -> committed"):
            replay_peak = PeakMemory()
            replay_seconds, ours = _timed(lambda: replay_per_ad(files, settings), cpu, "replay")
        agree = per_ad_equal(ours, batch)

    result: dict[str, Any] = {
        "events": records,
        "bytes": total_bytes,
        "partitions": partitions,
        "ads": batch.height,
        "decode_ceiling_seconds": round(ceiling_seconds, 3),
        "duckdb_batch_seconds": round(duckdb_seconds, 3),
        "replay_seconds": round(replay_seconds, 3),
        "replay_events_per_s": round(records / replay_seconds),
        "replay_vs_duckdb": round(duckdb_seconds / replay_seconds, 3),
        "replay_vs_ceiling": round(ceiling_seconds / replay_seconds, 3),
        "cpu_seconds": cpu,
        "replay_vs_duckdb_cpu": round(cpu["duckdb"] / cpu["replay"], 3),
        "answers_equal": agree,
        "replay_peak_rss_mb": round(replay_peak.bytes() / 1e6),
    }
    _print_compare(result, console)
    return result


def _timed(
    work: Callable[[], T], cpu: dict[str, float] | None = None, key: str = ""
) -> tuple[float, T]:
    """Wall seconds of ``work()`` and its value; its CPU seconds (all threads) into
    ``cpu[key]``, a figure that other load on the machine changes less."""
    t, c = time.perf_counter(), time.process_time()
    value = work()
    if cpu is not None:
        cpu[key] = round(time.process_time() - c, 3)
    return time.perf_counter() - t, value


def _decode_files(directory: Path) -> None:
    for stream, path in iter_stream_files(directory).items():
        pl.read_ndjson(path, schema=stream.decode_schema)


def duckdb_per_ad(directory: Path, lookback: timedelta) -> pl.DataFrame:
    """The per-ad answers as a user would compute them in one DuckDB batch query over
    the JSON-lines files: dedupe by event id (first occurrence), timestamps in either
    of the original's formats read as UTC, last-click attribution by an as-of join on
    (user, ad) within ``lookback``. Clean input is assumed (``bench --compare`` writes
    no malformed records): no validation or dead letters, which adpulse does on top."""
    paths = iter_stream_files(directory)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        frame: pl.DataFrame = con.sql(
            _PER_AD_SQL,
            params={
                "impressions": str(paths[Stream.IMPRESSIONS]),
                "clicks": str(paths[Stream.CLICKS]),
                "conversions": str(paths[Stream.CONVERSIONS]),
                "lookback_us": int(lookback / timedelta(microseconds=1)),
            },
        ).pl()
    finally:
        con.close()
    return frame


def _event_time(column: str) -> str:
    return (
        f"coalesce(try_strptime({column}, '%Y-%m-%d %H:%M:%S'),"
        f" CAST(try_strptime({column}, '%Y-%m-%dT%H:%M:%S%z') AT TIME ZONE 'UTC' AS TIMESTAMP),"
        f" CAST(try_strptime({column}, '%Y-%m-%dT%H:%M:%S.%f%z') AT TIME ZONE 'UTC'"
        " AS TIMESTAMP))"
    )


_PER_AD_SQL: Final = f"""
WITH impressions AS (
    SELECT DISTINCT ON (event_id) event_id, ad_id
    FROM read_json($impressions, format = 'newline_delimited',
                   columns = {{event_id: 'VARCHAR', ad_id: 'BIGINT'}})
), clicks AS (
    SELECT DISTINCT ON (event_id) event_id, ad_id, user_id,
           {_event_time("click_timestamp")} AS t
    FROM read_json($clicks, format = 'newline_delimited',
                   columns = {{event_id: 'VARCHAR', ad_id: 'BIGINT', user_id: 'VARCHAR',
                               click_timestamp: 'VARCHAR'}})
), conversions AS (
    SELECT DISTINCT ON (event_id) event_id, ad_id, user_id, revenue,
           {_event_time("conversion_timestamp")} AS t
    FROM read_json($conversions, format = 'newline_delimited',
                   columns = {{event_id: 'VARCHAR', ad_id: 'BIGINT', user_id: 'VARCHAR',
                               conversion_timestamp: 'VARCHAR', revenue: 'DECIMAL(18,4)'}})
), attributed AS (
    SELECT v.ad_id, v.revenue,
           CASE WHEN epoch_us(v.t) - epoch_us(k.t) <= $lookback_us
                THEN (epoch_us(v.t) - epoch_us(k.t)) / 1e6 END AS latency_seconds
    FROM conversions v ASOF LEFT JOIN clicks k
      ON v.user_id = k.user_id AND v.ad_id = k.ad_id AND v.t >= k.t
), per_impression AS (
    SELECT ad_id, count(*) AS impressions FROM impressions GROUP BY ad_id
), per_click AS (
    SELECT ad_id, count(*) AS clicks FROM clicks GROUP BY ad_id
), per_conversion AS (
    SELECT ad_id, count(*) AS conversions, count(latency_seconds) AS attributed_conversions,
           sum(revenue) AS revenue, coalesce(sum(latency_seconds), 0) AS latency_sum_seconds
    FROM attributed GROUP BY ad_id
)
SELECT ad_id,
       coalesce(i.impressions, 0) AS impressions,
       coalesce(c.clicks, 0) AS clicks,
       coalesce(v.conversions, 0) AS conversions,
       coalesce(v.attributed_conversions, 0) AS attributed_conversions,
       coalesce(v.revenue, 0) AS revenue,
       coalesce(v.latency_sum_seconds, 0) AS latency_sum_seconds
FROM per_impression i FULL JOIN per_click c USING (ad_id) FULL JOIN per_conversion v USING (ad_id)
ORDER BY ad_id
"""


def replay_per_ad(directory: Path, settings: Settings) -> pl.DataFrame:
    """``adpulse replay DIRECTORY`` in this process, as the command runs it (dimension
    files loaded, the processor on a thread while the files are appended to a fresh
    embedded log, then until everything is committed); returns the per-ad answers
    from the committed rollups."""
    with open_runtime(settings) as rt:
        now = datetime.now(UTC).replace(tzinfo=None)
        for name in (CAMPAIGNS_FILE, USERS_FILE):
            kind, rows = read_dimension_csv(directory / name)
            rt.warehouse.load_dimension(kind, rows, now)
        processor = processor_for(rt)
        stop = threading.Event()
        worker = Worker(processor.run, "processor", stop, bulk=True)
        worker.start()
        try:
            replay_directory(directory, rt.transport.producer(), settings.partitions)
        finally:
            stop.set()
            worker.join()
        try:
            worker.check()
            processor.run(threading.Event(), until_caught_up=True)
        finally:
            processor.close()
        return adpulse_per_ad(rt.warehouse)


def adpulse_per_ad(warehouse: Warehouse) -> pl.DataFrame:
    """The per-ad answers from a warehouse's committed minute rollups."""
    frame = warehouse.query(
        "SELECT ad_id, sum(impressions) AS impressions, sum(clicks) AS clicks,"
        " sum(conversions) AS conversions,"
        " sum(attributed_conversions) AS attributed_conversions,"
        " sum(revenue) AS revenue, sum(latency_sum_seconds) AS latency_sum_seconds"
        " FROM rollup_minute GROUP BY ad_id ORDER BY ad_id"
    )
    return frame.select(PER_AD_COLUMNS)


def per_ad_equal(left: pl.DataFrame, right: pl.DataFrame) -> bool:
    """Same ads, same counts and revenue; latency sums equal to a microsecond per
    conversion (floating-point sums in a different order)."""
    exact = [c for c in PER_AD_COLUMNS if c != "latency_sum_seconds"]
    a = left.select(PER_AD_COLUMNS).with_columns(pl.col("revenue").cast(pl.Float64))
    b = right.select(PER_AD_COLUMNS).with_columns(pl.col("revenue").cast(pl.Float64))
    cast = [pl.col(c).cast(pl.Int64) for c in exact if c not in ("ad_id", "revenue")]
    a, b = a.with_columns(cast).sort("ad_id"), b.with_columns(cast).sort("ad_id")
    if a.height != b.height or not a.select(exact).equals(b.select(exact)):
        return False
    tolerance = 1e-6 * (a["attributed_conversions"].cast(pl.Float64) + 1)
    gap = (a["latency_sum_seconds"] - b["latency_sum_seconds"]).abs()
    return bool((gap <= tolerance).all())


def _print_compare(result: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"adpulse bench --compare — {result['events']:,} events,"
        f" {result['bytes'] / 1e6:,.1f} MB of JSON lines, {result['ads']} ads"
    )
    table.add_column("run (same files, same process)")
    table.add_column("seconds", justify="right")
    table.add_column("events/s", justify="right")
    table.add_column("CPU s", justify="right")
    for label, key, cpu in (
        ("decode ceiling (polars.read_ndjson)", "decode_ceiling_seconds", "decode_ceiling"),
        ("DuckDB batch SQL (per-ad answers)", "duckdb_batch_seconds", "duckdb"),
        ("adpulse replay (files -> log -> committed)", "replay_seconds", "replay"),
    ):
        seconds = result[key]
        table.add_row(
            label,
            f"{seconds:.2f}",
            f"{round(result['events'] / seconds):,}",
            f"{result['cpu_seconds'][cpu]:.2f}",
        )
    console.print(table)
    console.print(
        f"replay / DuckDB batch: {result['replay_vs_duckdb']:.2f}x"
        f" (in CPU time {result['replay_vs_duckdb_cpu']:.2f}x)"
        f"   replay / decode ceiling: {result['replay_vs_ceiling']:.2f}x"
        f"   per-ad answers equal: {'yes' if result['answers_equal'] else 'NO'}"
        f"   replay's peak RSS {result['replay_peak_rss_mb']:,} MB"
    )
