"""``adpulse bench``: the embedded pipeline's throughput, measured against the same-run
decode ceiling of the same bytes.

1. A fixed workload is generated (deterministic seed) and appended to an embedded log.
   Not timed: the benchmark starts from bytes in the log.
2. Ceiling: every partition of every stream is read from the log and decoded with
   ``polars.read_ndjson`` and the same schema, nothing else (best of 3).
3. Pipeline: a fresh processor consumes the whole log into a fresh DuckDB warehouse
   (decode -> validate -> dedupe -> enrich -> attribute -> aggregate -> commit) until
   everything is committed. Time per step and peak memory are recorded.
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.table import Table

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.processor.pipeline import STEP_NAMES, Processor
from adpulse.sources.files import write_csv
from adpulse.sources.generator import EventGenerator, GeneratorConfig
from adpulse.sources.producer import publish
from adpulse.storage.dimensions import read_dimension_csv
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.transport.embedded import EmbeddedTransport

WORKLOAD_START = datetime(2023, 9, 1)


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
    log = EmbeddedTransport(root / "log", partitions)
    producer = log.producer()
    with console.status(f"generating {events:,} events into the log"):
        t = time.perf_counter()
        days = max(1.0, events / 3_000_000)
        for part in gen.iter_generate(
            events, WORKLOAD_START, WORKLOAD_START + timedelta(days=days)
        ):
            for stream in Stream:
                publish(producer, stream, part.records[stream], partitions)
        producer.flush()
        generate_seconds = time.perf_counter() - t

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
        stop = threading.Event()

        def count(_: object) -> None:
            nonlocal batches
            batches += 1

        processor.run(stop, on_batch=count, until_caught_up=True)
        pipeline_seconds = time.perf_counter() - t
    committed = warehouse.query(
        "SELECT sum(received) AS received, sum(rejected) AS rejected, "
        "sum(duplicates) AS duplicates FROM ingest_stats"
    ).row(0, named=True)
    warehouse.close()

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
        "peak_rss_mb": round(_maxrss() / 1e6),
        "steps_seconds": {k: round(processor.step_seconds.get(k, 0.0), 3) for k in STEP_NAMES},
        "committed": committed,
    }
    _print(result, console)
    return result


def _decode_all(buffers: list[tuple[Stream, bytes, int]]) -> float:
    t = time.perf_counter()
    for stream, data, _ in buffers:
        pl.read_ndjson(data, schema=stream.decode_schema)
    return time.perf_counter() - t


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
    table.add_row("batches", f"{result['batches']:,}")
    table.add_row("peak RSS", f"{result['peak_rss_mb']:,} MB")
    for step, seconds in result["steps_seconds"].items():
        table.add_row(f"  step {step}", f"{seconds:.3f} s")
    console.print(table)
