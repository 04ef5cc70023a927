"""Bytes the in-process serving store holds per hour of the demo's data, faster than live.

Feeds the demo's generated data (``adpulse demo``'s generator config: seed 7, conversions
90 s after their click at the median) through the real processor and the store sync, as
``adpulse demo --rate RATE`` does, but on a simulated clock: each step of ``--step``
seconds of event time is produced, then processed until the log is drained (one or two
live batches, as the demo's processor commits about once a second). So an hour of event
time takes a few minutes, and the store receives the deltas it receives live.

Every simulated minute it records the store's bytes (``MemoryServingStore.nbytes()``,
Polars' estimate), its rollup parts, rows and conversions, and the process's RSS; at the
end a breakdown of the held rows (distinct keys per minute, bytes per column).

Run: ``.venv/bin/python benchmarks/serving_store_bytes.py --rate 5000 --minutes 30``
(``--window-minutes N``: ``serving_memory_window_seconds`` in minutes).
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.operations.demo import demo_settings, load_generated_dimensions
from adpulse.runtime import open_runtime, processor_for
from adpulse.serving.store.base import PROJECTIONS
from adpulse.serving.store.memory import MemoryServingStore
from adpulse.sources.generator import EventGenerator, GeneratorConfig
from adpulse.sources.producer import publish


def _rss_mb() -> float:
    return int(subprocess.check_output(["ps", "-o", "rss=", "-p", str(os.getpid())])) / 1024


def _rollup_rows(store: MemoryServingStore, conversions: int) -> int:
    """Rollup rows held in all parts (``held()``; the parts themselves before it)."""
    if hasattr(store, "held"):
        return int(store.held()) - conversions
    return sum(f.height for f in store._rollups)  # noqa: SLF001


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--minutes", type=float, default=30, help="minutes of event time")
    parser.add_argument("--step", type=float, default=1.0, help="seconds of events per batch")
    parser.add_argument("--window-minutes", type=float, default=None)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="adpulse-storebytes-"))
    extra = {}
    if args.window_minutes is not None:
        extra["serving_memory_window_seconds"] = round(args.window_minutes * 60)
    settings = demo_settings(Settings(home=home, **extra))  # type: ignore[arg-type]
    gen = EventGenerator(GeneratorConfig(seed=7, conversion_delay_median_seconds=90.0), feed=1)
    start = datetime.now(UTC).replace(tzinfo=None, second=0, microsecond=0)
    now = [start]
    t0, cpu0 = time.monotonic(), time.process_time()
    with open_runtime(settings, live=True) as rt:
        store = rt.store
        assert isinstance(store, MemoryServingStore), store
        load_generated_dimensions(rt, gen, Console(file=open(os.devnull, "w")))  # noqa: SIM115
        producer = rt.transport.producer()
        processor = processor_for(rt, clock=lambda: now[0].replace(tzinfo=UTC))
        step = timedelta(seconds=args.step)
        end = start + timedelta(minutes=args.minutes)
        next_sample = start + timedelta(minutes=1)
        print("event-minutes  store MB  parts  rollup rows  conversions  RSS MB  wall s")
        while now[0] < end:
            last, now[0] = now[0], now[0] + step
            chunk = gen.stream_chunk(last, now[0], max(1, round(args.rate * args.step)))
            for stream in Stream:
                publish(producer, stream, chunk.records[stream], settings.partitions)
            producer.flush()
            while processor.run_once() is not None:
                pass
            if now[0] >= next_sample:
                next_sample += timedelta(minutes=1)
                held = store.read(store.window().start, None)  # type: ignore[union-attr]
                assert held is not None
                print(
                    f"{(now[0] - start) / timedelta(minutes=1):13.0f}"
                    f"  {store.nbytes() / 2**20:8.2f}  {store.parts():5d}"
                    f"  {_rollup_rows(store, held.conversions.height):11,d}"
                    f"  {held.conversions.height:11,d}  {_rss_mb():6.0f}"
                    f"  {time.monotonic() - t0:6.0f}",
                    flush=True,
                )
        processor.close()
        producer.close()
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        window = store.window()
        assert window is not None
        held = store.read(window.start, None)
        assert held is not None
        rollups = held.rollups
        minutes = rollups["minute"].n_unique() or 1
        print(f"\n{args.minutes:.0f} event-minutes in {wall:.0f} s wall, {cpu:.0f} s CPU")
        print(
            f"held: {store.nbytes():,} bytes ({store.nbytes() / 2**20:.1f} MB) for"
            f" {minutes} minutes of rollups: {store.nbytes() / minutes * 60 / 2**20:.1f} MB"
            " per hour of data"
        )
        known = store.keys() if hasattr(store, "keys") else 0
        print(
            f"rollup rows held {_rollup_rows(store, held.conversions.height):,}"
            f" in {store.parts()} parts; summed per key {rollups.height:,}"
            f" ({rollups.height / minutes:,.0f} keys a minute); {known:,} keys known"
        )
        print(f"conversions held {held.conversions.height:,}")
        newest = window.newest
        assert newest is not None
        for label, since in (("15 min", timedelta(minutes=15)), ("window", None)):
            first = window.start if since is None else newest - since
            for columns in (frozenset(), frozenset({"campaign"}), PROJECTIONS[-1]):
                began = time.perf_counter()
                for _ in range(5):
                    store.read(first, None, columns, conversions=False)
                took = (time.perf_counter() - began) / 5 * 1000
                print(f"read {label}, keys {sorted(columns) or '-'}: {took:.1f} ms")
        for name, frame in (("rollups", rollups), ("conversions", held.conversions)):
            sizes = {c: frame[c].estimated_size() for c in frame.columns}
            print(f"{name} as read ({frame.estimated_size() / 2**20:.1f} MB):")
            for c, size in sizes.items():
                print(f"  {c:24s} {frame[c].dtype!s:16s} {size / 2**20:7.2f} MB")


if __name__ == "__main__":
    main()
