"""Bytes the in-process serving store holds per hour of the demo's data, faster than live.

Feeds the demo's generated data (``adpulse demo``'s generator config: seed 7, conversions
90 s after their click at the median) through the real processor and the store sync, as
``adpulse demo --rate RATE`` does, but on a simulated clock: each step of ``--step``
seconds of event time is produced, then processed until the log is drained (one or two
live batches, as the demo's processor commits about once a second). So an hour of event
time takes a few minutes, and the store receives the deltas it receives live.

Every simulated minute it prints the store's bytes (``MemoryServingStore.nbytes()``,
Polars' estimate), split into the full-key rollup rows, the smaller projections and the
conversions, and the process's RSS. At the end: MB per hour of data of each, and what
the store holds at 24 h of data: the smaller projections and the conversions for 24 h,
the full key for its window (``serving_memory_window_seconds``, ``--window-minutes``).

It also runs over a source tree without projections (a store of one list of full-key
parts; e.g. main's before this change: ``PYTHONPATH=/tmp/base/src``): then everything
held is full key, for 24 h.

Run: ``.venv/bin/python benchmarks/serving_store_bytes.py --rate 5000 --minutes 20``.
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
from typing import Any, cast

from rich.console import Console

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.operations.demo import demo_settings, load_generated_dimensions
from adpulse.runtime import open_runtime, processor_for
from adpulse.serving.store.base import PROJECTIONS, WINDOW
from adpulse.serving.store.memory import MemoryServingStore
from adpulse.sources.generator import EventGenerator, GeneratorConfig
from adpulse.sources.producer import publish

FULL = PROJECTIONS[-1]


def _rss_mb() -> float:
    return int(subprocess.check_output(["ps", "-o", "rss=", "-p", str(os.getpid())])) / 1024


def _held(store: MemoryServingStore) -> tuple[int, int, int, int]:
    """Bytes of the full key's rollups, of the smaller projections', of the conversions;
    full-key rollup rows."""
    total = store.nbytes()
    if hasattr(store, "bytes_held"):
        by_projection = store.bytes_held()
        full = by_projection.pop(FULL)
        rows = store.rows_held()[FULL]
        small = sum(by_projection.values())
    else:  # one list of full-key parts
        parts: list[Any] = cast(Any, store)._rollups  # noqa: SLF001
        full, small, rows = (
            sum(int(p.estimated_size()) for p in parts),
            0,
            sum(p.height for p in parts),
        )
    return full, small, total - full - small, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--minutes", type=float, default=20, help="minutes of event time")
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
    mb = 2**20
    with open_runtime(settings, live=True) as rt:
        store = rt.store
        assert isinstance(store, MemoryServingStore), store
        full_window = getattr(store, "full_key_window", WINDOW)
        print(f"{datetime.now(UTC):%H:%M} UTC; full key kept for {full_window}")
        load_generated_dimensions(rt, gen, Console(file=open(os.devnull, "w")))  # noqa: SIM115
        producer = rt.transport.producer()
        processor = processor_for(rt, clock=lambda: now[0].replace(tzinfo=UTC))
        step = timedelta(seconds=args.step)
        end = start + timedelta(minutes=args.minutes)
        next_sample = start + timedelta(minutes=1)
        samples: list[tuple[int, int, int]] = []
        print("event-minutes  store MB  full key MB  projections MB  conversions MB"
              "  full-key rows  RSS MB  wall s")  # fmt: skip
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
                full, small, conversions, rows = _held(store)
                samples.append((full, small, conversions))
                print(
                    f"{(now[0] - start) / timedelta(minutes=1):13.0f}"
                    f"  {store.nbytes() / mb:8.2f}  {full / mb:11.2f}  {small / mb:14.2f}"
                    f"  {conversions / mb:14.2f}  {rows:13,d}  {_rss_mb():6.0f}"
                    f"  {time.monotonic() - t0:6.0f}",
                    flush=True,
                )
        processor.close()
        producer.close()
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        # per hour of data: the growth over the second half of the run (the first minutes
        # hold parts not yet compacted, a fixed cost, not one per hour)
        half = len(samples) // 2
        span_hours = (len(samples) - 1 - half) / 60
        names = ("full key", "projections", "conversions")
        per_hour = {
            name: (samples[-1][i] - samples[half][i]) / span_hours for i, name in enumerate(names)
        }
        print(f"\n{args.minutes:.0f} event-minutes in {wall:.0f} s wall, {cpu:.0f} s CPU")
        print(
            f"held {store.nbytes() / mb:.1f} MB; MB per hour of data (growth from minute"
            f" {half + 1} to {len(samples)}): "
            + ", ".join(f"{name} {value / mb:.1f}" for name, value in per_hour.items())
        )
        window = store.window()
        assert window is not None
        small_summed = 0.0
        print("summed per key (the size compaction brings old parts to), per projection:")
        full_start = store.full_key_start() if hasattr(store, "full_key_start") else None
        for columns in PROJECTIONS if hasattr(store, "rows_held") else (FULL,):
            first = full_start if columns == FULL and full_start else window.start
            held_rows = store.read(first, None, columns, conversions=False)
            assert held_rows is not None
            summed = held_rows.rollups
            minutes = summed["minute"].n_unique() or 1
            size = summed.estimated_size()
            if columns != FULL:
                small_summed += size / minutes * 60
            print(
                f"  {', '.join(sorted(columns)) or '(minute only)':40s} {minutes:5d} minutes"
                f" {summed.height / minutes:9,.0f} rows a minute"
                f" {size / max(summed.height, 1):5.0f} B a row"
                f" {size / minutes * 60 / mb:7.1f} MB per hour of data"
            )
        # the projections' slope is blurred by their newest parts (not yet compacted, ~1 MB
        # held whatever the hours): at 24 h, their rows summed per key, and those parts
        held_now = _held(store)
        day = (
            per_hour["full key"] * (full_window / timedelta(hours=1))
            + per_hour["conversions"] * 24
            + small_summed * 24
            + max(0.0, held_now[1] - small_summed * args.minutes / 60)
        )
        print(
            f"at 24 h of data (the full key for {full_window} at its growth per hour, the"
            f" conversions for 24 h at theirs, the projections 24 h summed per key and their"
            f" uncompacted parts): ~{day / mb:,.0f} MB"
        )
        for label, since in (("15 min", timedelta(minutes=15)), ("all held", None)):
            window = store.window()
            assert window is not None and window.newest is not None
            first = window.start if since is None else window.newest - since
            for columns in (frozenset(), frozenset({"campaign"}), FULL):
                began = time.perf_counter()
                for _ in range(5):
                    answered = store.read(first, None, columns, conversions=False)
                took = (time.perf_counter() - began) / 5 * 1000
                answer = "None (the warehouse answers)" if answered is None else f"{took:.1f} ms"
                print(f"read {label}, keys {sorted(columns) or '-'}: {answer}")


if __name__ == "__main__":
    main()
