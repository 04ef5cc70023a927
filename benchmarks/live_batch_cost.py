"""CPU cost of one live micro-batch, as ``adpulse demo`` runs them.

Wires a processor as the demo does (embedded log, DuckDB warehouse in a temporary
directory, the generator's dimensions loaded, the in-process serving store and its
sync, the commit signal, metrics and alerts as listeners), then, every ``--interval``
seconds (the default ``live_batch_interval_seconds``), produces ``--events`` new events
of the demo's generator (about 40 impressions per click) and runs one batch: poll,
every step, the commit and the listeners (the committer thread is drained before the
clock stops). Producing is outside the measurement.

Per batch it records the CPU time of the whole process (every thread: the processor's,
the committer's, Polars' and DuckDB's pools) and of each thread
(``/proc/self/task/*/schedstat``), and the wall time of each step. It prints the mean
and median per batch after ``--warmup`` batches, the CPU split by thread, and the
steps' wall time.

Run: ``.venv/bin/python benchmarks/live_batch_cost.py [--events 200] [--batches 150]``
(``POLARS_MAX_THREADS`` etc. are read from the environment as usual). A benchmark, not
a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console

from adpulse.commits import CommitSignal
from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.operations.demo import demo_settings, load_generated_dimensions
from adpulse.processor.pipeline import STEP_NAMES
from adpulse.runtime import open_runtime, processor_for
from adpulse.sources.generator import EventGenerator, GeneratorConfig
from adpulse.sources.producer import publish


def thread_cpu_ns() -> dict[int, tuple[str, int]]:
    """Nanoseconds on CPU so far, and the name, of every thread of this process."""
    out: dict[int, tuple[str, int]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue  # ended meanwhile
        out[int(tid)] = (name, ns)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200, help="events per batch")
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between batches")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="adpulse-livecost-"))
    settings = demo_settings(Settings(home=home))
    gen = EventGenerator(
        GeneratorConfig(seed=args.seed, conversion_delay_median_seconds=90.0),
        feed=time.time_ns() // 1_000_000,
    )
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    with open_runtime(settings, live=True) as rt:
        load_generated_dimensions(rt, gen, quiet)
        producer = rt.transport.producer()
        processor = processor_for(rt, CommitSignal())
        named = {
            threading.get_native_id(): "processor",
            processor.committer._thread.native_id: "committer",
        }
        cpu: list[float] = []
        main_cpu: list[float] = []
        by_thread: dict[str, int] = defaultdict(int)
        steps: dict[str, float] = defaultdict(float)
        records = 0
        last = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=args.interval)
        try:
            for i in range(args.batches):
                started = time.monotonic()
                now = max(datetime.now(UTC).replace(tzinfo=None), last + timedelta(milliseconds=1))
                chunk = gen.stream_chunk(last, now, args.events)
                last = now
                for stream in Stream:
                    publish(producer, stream, chunk.records[stream], settings.partitions)
                producer.flush()
                before_steps = dict(processor.step_seconds)
                before = thread_cpu_ns()
                c0, t0 = time.process_time(), time.thread_time()
                report = processor.run_once()
                processor.committer.drain()
                c1, t1 = time.process_time(), time.thread_time()
                after = thread_cpu_ns()
                if i >= args.warmup and report is not None:
                    records += report.records
                    cpu.append(c1 - c0)
                    main_cpu.append(t1 - t0)
                    for tid, (name, ns) in after.items():
                        spent = ns - before.get(tid, (name, 0))[1]
                        by_thread[named.get(tid, name)] += spent
                    for name in STEP_NAMES:
                        steps[name] += processor.step_seconds[name] - before_steps.get(name, 0.0)
                time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
        finally:
            producer.close()
            processor.close()
    n = len(cpu)
    print(
        f"{n} batches of ~{records / max(n, 1):,.0f} records, every {args.interval} s"
        f" (POLARS_MAX_THREADS={os.environ.get('POLARS_MAX_THREADS', '-')})"
    )
    print(
        f"process CPU ms/batch: mean {1e3 * statistics.mean(cpu):.1f}"
        f"  median {1e3 * statistics.median(cpu):.1f}"
        f"   processor thread: mean {1e3 * statistics.mean(main_cpu):.1f}"
        f"  median {1e3 * statistics.median(main_cpu):.1f}"
    )
    print(
        "CPU ms/batch by thread: "
        + ", ".join(
            f"{name} {ns / 1e6 / n:.1f}"
            for name, ns in sorted(by_thread.items(), key=lambda kv: -kv[1])
            if ns / 1e6 / n >= 0.05
        )
    )
    print(
        "wall ms/batch by step: "
        + ", ".join(f"{name} {1e3 * s / n:.1f}" for name, s in steps.items() if s)
    )


if __name__ == "__main__":
    main()
