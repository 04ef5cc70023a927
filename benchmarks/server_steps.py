"""Where the time goes: one processor, in this process, over the workload of
``adpulse bench-server`` (the generator's defaults: 0.1 % malformed records) appended to
Redis Streams and committed to PostgreSQL, or with ``--embedded`` to the embedded log
and DuckDB; prints the seconds per step (``Processor.step_seconds``; the commit runs on
the committer thread, overlapped).

Run: ``python benchmarks/server_steps.py [--events 300000] [--embedded] [--redis-url ...]
[--pg-url ...]``.
It creates and drops its own database and Redis key prefix, like ``adpulse bench-server``.
Prints figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

from rich.console import Console

from adpulse.cli.runtime import open_runtime
from adpulse.operations.bench_server import Target, _fill, _fresh_servers
from adpulse.processor.pipeline import Processor
from adpulse.sources.generator import EventGenerator, GeneratorConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--embedded", action="store_true", help="embedded log + DuckDB")
    args = parser.parse_args()
    if args.embedded:
        target = Target("embedded steps", "", "", 1)
    else:
        target = Target("server steps", args.redis_url, args.pg_url, 1)
    gen = EventGenerator(GeneratorConfig(seed=7))
    with (
        TemporaryDirectory(prefix="adpulse-server-steps-") as home,
        _fresh_servers(target, Path(home), args.partitions) as settings,
    ):
        records = _fill(settings, gen, args.events, Console(quiet=True))
        with open_runtime(settings) as rt:
            processor = Processor(settings, rt.transport, rt.warehouse)
            t = time.perf_counter()
            processor.run(threading.Event(), until_caught_up=True)
            processor.close()
            seconds = time.perf_counter() - t
    steps = ", ".join(f"{k} {v:.2f} s" for k, v in processor.step_seconds.items())
    print(f"{records:,} records in {seconds:.2f} s ({records / seconds:,.0f}/s): {steps}")


if __name__ == "__main__":
    main()
