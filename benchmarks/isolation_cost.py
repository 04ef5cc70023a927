"""What isolating refused records costs: one batch of ``--events`` impressions into
DuckDB, processed and committed as is, then with ``--refused`` of its records refused
by the warehouse (a real ``ConversionException``, raised when a marked record is in the
commit), which the processor isolates and dead-letters (see docs/robustness.md).

Run: ``python benchmarks/isolation_cost.py [--events 100000] [--refused 1] [--repeat 2]``.
Prints seconds per batch; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import orjson
import polars as pl

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.processor.pipeline import Processor
from adpulse.storage.warehouse.base import BatchOutput
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.transport.memory import InMemoryTransport

MARK = "REFUSED"


class RefusingDuckDB(DuckDBWarehouse):
    """DuckDB that really raises ``ConversionException`` committing a marked record."""

    def _write(self, output: BatchOutput) -> None:
        super()._write(output)
        if output.impressions.filter(pl.col("platform") == MARK).height:
            self._execute("SELECT CAST(? AS INTEGER)", [MARK])


def one_batch(events: int, refused: int) -> tuple[float, int, int]:
    """Seconds to process and commit the batch, facts and dead letters written."""
    with TemporaryDirectory() as tmp, RefusingDuckDB(Path(tmp) / "w.duckdb") as warehouse:
        warehouse.create_schema()
        transport = InMemoryTransport(1)
        marked = {events * (k + 1) // (refused + 1) for k in range(refused)}
        payloads = [
            orjson.dumps(
                {
                    "event_id": f"i-{i}",
                    "ad_id": 1000 + i % 50,
                    "user_id": f"U{i % 5000}",
                    "impression_timestamp": f"2023-09-09 10:{i % 60:02d}:00",
                    "platform": MARK if i in marked else "Web",
                    "location": "Paris",
                }
            )
            for i in range(events)
        ]
        transport.producer().send(Stream.IMPRESSIONS, payloads, [None] * events)
        settings = Settings(
            home=Path(tmp), partitions=1, idle_timeout_seconds=100_000, batch_max_bytes=1 << 30
        )
        processor = Processor(settings, transport, warehouse)
        start = time.perf_counter()
        processor.run(threading.Event(), until_caught_up=True)
        seconds = time.perf_counter() - start
        processor.close()
        facts = int(warehouse.query("SELECT count(*) FROM fact_impressions").item())
        letters = int(warehouse.query("SELECT count(*) FROM dead_letters").item())
        return seconds, facts, letters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--refused", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # one warning per dead letter otherwise
    for _ in range(args.repeat):
        for refused in (0, args.refused):
            seconds, facts, letters = one_batch(args.events, refused)
            print(
                f"{args.events} impressions, {refused} refused: {seconds:.2f} s"
                f" ({facts} facts, {letters} dead letters)"
            )


if __name__ == "__main__":
    main()
