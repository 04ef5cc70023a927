"""Memory of the embedded pipeline, batch by batch: what each state holds.

Generates ``--events`` (seed 7, the ``adpulse bench`` workload) into an embedded log in a
child process, then runs one processor in this process into a fresh DuckDB warehouse
and prints after each committed batch: the process's resident memory and its
high-water mark since the pipeline started, DuckDB's own memory (``duckdb_memory()``),
the dedupe key tables' bytes, and the rows of the click state. At the end: bytes per
key or row of each state.

Run: ``python benchmarks/pipeline_memory.py --events 6000000``. Prints figures; it is a
benchmark, not a test.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import tempfile
import threading
from pathlib import Path

from adpulse.config import Settings
from adpulse.operations.bench import PeakMemory, generate_log
from adpulse.processor.pipeline import BatchReport, Processor
from adpulse.sources.generator import GeneratorConfig
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.transport.embedded import EmbeddedTransport


def resident_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return -1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="adpulse-memory-"))
    child = multiprocessing.get_context("spawn").Process(
        target=generate_log,
        args=(
            root / "log",
            args.events,
            args.partitions,
            GeneratorConfig(seed=7, malformed_rate=0.0),
        ),
    )
    child.start()
    child.join()
    log = EmbeddedTransport(root / "log", args.partitions)
    warehouse = DuckDBWarehouse(root / "warehouse.duckdb")
    warehouse.create_schema()
    processor = Processor(Settings(home=root, partitions=args.partitions), log, warehouse)
    peak = PeakMemory()
    print(f"before the pipeline: {resident_mb()} MB")

    def report(batch: BatchReport) -> None:
        duck = warehouse.query("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").item()
        keys = sum(s.nbytes for s in processor.dedupe.sets.values())
        print(
            f"batch {batch.batch_id}: {batch.records:,} records; RSS {resident_mb()} MB,"
            f" peak {peak.bytes() // 1_000_000} MB; DuckDB {int(duck or 0) // 1_000_000} MB;"
            f" dedupe keys {keys // 1_000_000} MB; clicks kept {len(processor.clicks):,}"
        )

    processor.run(threading.Event(), on_batch=report, until_caught_up=True)
    for stream, ids in processor.dedupe.sets.items():
        print(
            f"dedupe keys {stream.value}: {len(ids.table):,} in memory in"
            f" {ids.table.capacity:,} slots ({ids.table.nbytes / max(1, len(ids.table)):.0f} B"
            f" per key held), {len(ids) - len(ids.table):,} spilled to disk"
        )
    processor.close()
    print(f"peak RSS of the pipeline: {peak.bytes() // 1_000_000} MB")
    clicks = processor.clicks.frame()
    if clicks is not None:
        print(
            f"click state: {clicks.height:,} rows,"
            f" {clicks.estimated_size() / clicks.height:.0f} B/row"
        )
    warehouse.close()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
