"""Memory of ``adpulse demo`` under live load, sampled over time.

Runs the demo in this process (as ``adpulse demo --rate RATE`` does: generator -> log ->
processor -> warehouse, the HTTP API on a free port, the status screen rendered to
nowhere) and every ``--every`` seconds records:

- the process's RSS (``ps -o rss``) and the load average;
- DuckDB's own accounting: ``SUM(memory_usage_bytes)`` of ``duckdb_memory()`` (its
  buffer manager: cached blocks of the file, indexes, query state) and the
  ``memory_limit`` in force, and the file's size (``PRAGMA database_size``);
- the processor's state: the dedupe key tables (their NumPy arrays, allocated capacity)
  and the attribution state (open clicks, open conversions: ``estimated_size`` of the
  frames), with their entry counts.

Run: ``.venv/bin/python benchmarks/live_soak.py --rate 5000 --minutes 30 --out soak.jsonl``
(``--home DIR``: the demo's data directory, default a fresh temporary one). One JSON
object per sample goes to ``--out`` and a line to stdout. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

import adpulse.operations.demo as demo
from adpulse.config import Settings
from adpulse.processor.pipeline import Processor
from adpulse.runtime import Runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--every", type=float, default=30, help="seconds between samples")
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("soak.jsonl"))
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="adpulse-soak-"))
    settings = Settings(home=home)
    seen: dict[str, Any] = {}
    opened = demo.processor_for

    def processor_for(rt: Runtime, *a: Any, **k: Any) -> Processor:
        # The demo builds its processor here: keep it (and its runtime) to sample them.
        processor = opened(rt, *a, **k)
        seen["rt"], seen["processor"] = rt, processor
        return processor

    demo.processor_for = processor_for  # type: ignore[assignment]
    stop = threading.Event()
    run = threading.Thread(
        target=demo.run_demo,
        kwargs={
            "settings": settings,
            "console": Console(file=open(os.devnull, "w")),  # noqa: SIM115
            "rate": args.rate,
            "seed": 7,
            "history_days": 0.0,
            "duration": None,
            "refresh": 2.0,
            "serve_at": ("127.0.0.1", 0),
            "stop": stop,
        },
        daemon=True,
    )
    t0 = time.monotonic()
    run.start()
    print(f"soak of the demo at {args.rate:,.0f} events/s into {home}, {args.minutes} min")
    with args.out.open("w") as out:
        try:
            while time.monotonic() - t0 < args.minutes * 60 and run.is_alive():
                if "processor" in seen:
                    sample = _sample(seen["rt"], seen["processor"], time.monotonic() - t0)
                    out.write(json.dumps(sample) + "\n")
                    out.flush()
                    print(_line(sample), flush=True)
                time.sleep(args.every)
        finally:
            stop.set()
            run.join(timeout=120)


def _sample(rt: Runtime, processor: Processor, elapsed: float) -> dict[str, Any]:
    rss_kb = int(subprocess.check_output(["ps", "-o", "rss=", "-p", str(os.getpid())]))
    cursor = rt.warehouse.cursor()  # type: ignore[attr-defined]
    try:
        duck = cursor.sql(
            "SELECT tag, memory_usage_bytes FROM duckdb_memory() WHERE memory_usage_bytes > 0"
        ).fetchall()
        limit = cursor.sql("SELECT current_setting('memory_limit')").fetchall()[0]
        size = cursor.sql("PRAGMA database_size").fetchall()
    finally:
        cursor.close()
    dedupe = processor.dedupe.sets
    clicks, conversions = processor.clicks.copy(), processor.open_conversions.copy()
    return {
        "seconds": round(elapsed),
        "load": os.getloadavg()[0],
        "rss_mb": round(rss_kb / 1024),
        "duckdb_mb": round(sum(n for _, n in duck) / 2**20),
        "duckdb_tags_mb": {t: round(n / 2**20, 1) for t, n in duck},
        "duckdb_limit": limit[0] if limit else None,
        "db_size": size[0][2] if size else None,
        "dedupe_keys": len(processor.dedupe),
        # Each slot of a key table: two uint64 halves of the key and an int32 hour.
        "dedupe_mb": round(sum(s.capacity * 20 for s in dedupe.values()) / 2**20),
        "open_clicks": len(clicks),
        "open_conversions": len(conversions),
        "attribution_mb": round(
            sum(f.estimated_size() for f in (clicks.frame(), conversions.frame()) if f is not None)
            / 2**20
        ),
        "committed_batches": processor.batch_id,
    }


def _line(s: dict[str, Any]) -> str:
    return (
        f"{s['seconds']:>6} s  load {s['load']:.1f}  RSS {s['rss_mb']:>5} MB  "
        f"DuckDB {s['duckdb_mb']:>4} MB (limit {s['duckdb_limit']}, file {s['db_size']})  "
        f"dedupe {s['dedupe_keys']:,} keys {s['dedupe_mb']} MB  "
        f"open clicks {s['open_clicks']:,} / conversions {s['open_conversions']:,} "
        f"{s['attribution_mb']} MB"
    )


if __name__ == "__main__":
    main()
