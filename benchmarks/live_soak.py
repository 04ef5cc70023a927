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
import ctypes
import gc
import json
import os
import subprocess
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from adpulse.processor.allocator import limit_arenas

limit_arenas()  # as the command line does before it starts a thread

import duckdb  # noqa: E402
from rich.console import Console  # noqa: E402

import adpulse.operations.demo as demo  # noqa: E402
from adpulse.config import Settings  # noqa: E402
from adpulse.processor.pipeline import Processor  # noqa: E402
from adpulse.runtime import Runtime  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--every", type=float, default=30, help="seconds between samples")
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("soak.jsonl"))
    parser.add_argument(
        "--trim",
        action="store_true",
        help="after each sample call glibc's malloc_trim(0) and record the RSS after it"
        " (how much the allocator keeps of what was freed)",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace Python allocations: NumPy arrays and Python objects apart (slower)",
    )
    args = parser.parse_args()
    if args.tracemalloc:
        tracemalloc.start()
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
                    if args.trim:
                        gc.collect()
                        _LIBC.malloc_trim(0)
                        sample["rss_after_trim_mb"] = round(_rss_kb() / 1024)
                    out.write(json.dumps(sample) + "\n")
                    out.flush()
                    print(_line(sample), flush=True)
                time.sleep(args.every)
        finally:
            stop.set()
            run.join(timeout=120)


_LIBC = ctypes.CDLL("libc.so.6")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_LIBC.mallinfo2.restype = _MallInfo2


def _rss_kb() -> int:
    return int(subprocess.check_output(["ps", "-o", "rss=", "-p", str(os.getpid())]))


def _smaps() -> dict[str, int]:
    """/proc/self/smaps_rollup in MB: anonymous (heap) vs file-backed pages."""
    out: dict[str, int] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        if key in ("Rss", "Anonymous", "Pss_File", "Pss_Anon", "LazyFree", "AnonHugePages"):
            out[key.lower()] = round(int(rest.split()[0]) / 1024)
    return out


def _glibc() -> dict[str, int]:
    """glibc malloc (NumPy, Python objects, most C libraries; not Polars' jemalloc nor
    DuckDB's buffers): bytes in use and bytes free but kept by the allocator, in MB."""
    info = _LIBC.mallinfo2()
    return {
        "in_use_mb": round((info.uordblks + info.hblkhd) / 2**20),
        "free_kept_mb": round(info.fordblks / 2**20),
        "mmapped_mb": round(info.hblkhd / 2**20),
    }


def _duckdb_jemalloc() -> dict[str, int] | None:
    """DuckDB's own allocator (jemalloc, linked into its extension module: everything
    DuckDB allocates, its buffer manager's blocks and the rest), in MB."""
    found = sorted(Path(duckdb.__file__).parent.parent.glob("_duckdb*.so"))
    if not found:
        return None
    mallctl = ctypes.CDLL(str(found[0])).duckdb_je_mallctl
    epoch, size = ctypes.c_uint64(1), ctypes.c_size_t(8)
    mallctl(b"epoch", ctypes.byref(epoch), ctypes.byref(size), ctypes.byref(epoch), 8)
    out = {}
    for name in ("allocated", "resident", "retained"):
        value, size = ctypes.c_size_t(0), ctypes.c_size_t(8)
        if mallctl(f"stats.{name}".encode(), ctypes.byref(value), ctypes.byref(size), None, 0):
            return None
        out[f"{name}_mb"] = round(value.value / 2**20)
    return out


def _traced() -> dict[str, int] | None:
    if not tracemalloc.is_tracing():
        return None
    numpy_domain = 389047  # numpy.lib.tracemalloc_domain
    snap = tracemalloc.take_snapshot()
    numpy_bytes = sum(
        t.size for t in snap.filter_traces([tracemalloc.DomainFilter(True, numpy_domain)]).traces
    )
    total, _ = tracemalloc.get_traced_memory()
    return {
        "numpy_mb": round(numpy_bytes / 2**20),
        "python_mb": round((total - numpy_bytes) / 2**20),
    }


def _sample(rt: Runtime, processor: Processor, elapsed: float) -> dict[str, Any]:
    rss_kb = _rss_kb()
    cursor = rt.warehouse.cursor()  # type: ignore[attr-defined]
    try:
        duck = cursor.sql(
            "SELECT tag, memory_usage_bytes FROM duckdb_memory() WHERE memory_usage_bytes > 0"
        ).fetchall()
        limit = cursor.sql("SELECT current_setting('memory_limit')").fetchall()[0]
        size = cursor.sql("PRAGMA database_size").fetchall()
    finally:
        cursor.close()
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
        "dedupe_spilled_keys": processor.dedupe.spilled_keys,
        "dedupe_mb": round(processor.dedupe.nbytes / 2**20),
        "open_clicks": len(clicks),
        "open_conversions": len(conversions),
        "attribution_mb": round(
            sum(f.estimated_size() for f in (clicks.frame(), conversions.frame()) if f is not None)
            / 2**20
        ),
        "store_mb": round(rt.store.nbytes() / 2**20) if hasattr(rt.store, "nbytes") else None,
        "smaps_mb": _smaps(),
        "glibc": _glibc(),
        "duckdb_jemalloc": _duckdb_jemalloc(),
        "traced": _traced(),
        "committed_batches": processor.batch_id,
    }


def _line(s: dict[str, Any]) -> str:
    return (
        f"{s['seconds']:>6} s  load {s['load']:.1f}  RSS {s['rss_mb']:>5} MB  "
        f"DuckDB {s['duckdb_mb']:>4} MB (limit {s['duckdb_limit']}, file {s['db_size']})  "
        f"dedupe {s['dedupe_keys']:,} keys ({s['dedupe_spilled_keys']:,} on disk) "
        f"{s['dedupe_mb']} MB  "
        f"open clicks {s['open_clicks']:,} / conversions {s['open_conversions']:,} "
        f"{s['attribution_mb']} MB  store {s['store_mb']} MB  "
        f"glibc {s['glibc']['in_use_mb']}+{s['glibc']['free_kept_mb']} free MB"
        + (f"  numpy {s['traced']['numpy_mb']} MB" if s["traced"] else "")
    )


if __name__ == "__main__":
    main()
