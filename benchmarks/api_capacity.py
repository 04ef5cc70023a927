"""HTTP API capacity alone: the dashboard's query mix from wrk, no ingest running.

``adpulse bench-api`` measures the API while the pipeline ingests in the same process,
which mixes the API's own cost with ingest and with the machine's other load. This
serves the API (uvicorn in a thread, as ``adpulse demo`` does) over the warehouse that
``bench-api`` built, and runs wrk with N connections over the same five paths (24 h
range), once per ``--cache`` value. Besides req/s and latency it prints the CPU time the
server process used per request, a figure that noisy neighbours change much less.

Run: ``python benchmarks/api_capacity.py --home /tmp/adpulse-bench-api [--seconds 10]
[--connections 100] [--cache 1 --cache 0]``. Needs ``wrk`` (``apt install wrk``).
Prints one JSON line per setting; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from adpulse.config import Settings
from adpulse.operations.bench_api import _WRK_SCRIPT, _dashboard_paths
from adpulse.serving.api import bind, create_app, make_server, url_of
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a bench-api --workdir")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--cache", type=float, action="append", help="api_cache_seconds")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (apt install wrk)")
    end = datetime.now(UTC).replace(tzinfo=None, second=0, microsecond=0) + timedelta(minutes=1)
    paths = _dashboard_paths(end)
    with (
        DuckDBWarehouse(args.home / "warehouse.duckdb") as warehouse,
        tempfile.TemporaryDirectory(prefix="adpulse-capacity-") as scratch,
    ):
        script = Path(scratch) / "mix.lua"
        script.write_text(_WRK_SCRIPT % {"paths": ", ".join(json.dumps(p) for p in paths)})
        for cache in args.cache or [1.0]:
            settings = Settings(home=Path(scratch), api_cache_seconds=cache)
            app = create_app(warehouse, settings)
            sock = bind("127.0.0.1", 0)
            server = make_server(app)
            thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
            thread.start()
            url = url_of(sock)
            while not server.started:
                time.sleep(0.05)
            for path in paths:  # warm: every answer computed once
                httpx.get(url + path.lstrip("/"), timeout=120).raise_for_status()
            computed = app.state.answers.computations
            cpu = time.process_time()
            done = subprocess.run(
                [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{args.seconds}s"]
                + ["--timeout", "30s", "-s", str(script), url],
                capture_output=True,
                text=True,
                check=True,
            )
            cpu = time.process_time() - cpu
            raw = json.loads([x for x in done.stdout.splitlines() if x.startswith("{")][-1])
            requests = max(1, raw["requests"])
            print(
                json.dumps(
                    {
                        "api_cache_seconds": cache,
                        "connections": args.connections,
                        "requests_per_s": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
                        "p50_ms": raw["p50_us"] / 1000,
                        "p90_ms": raw["p90_us"] / 1000,
                        "p99_ms": raw["p99_us"] / 1000,
                        "errors": raw["errors"] + raw["non_2xx_3xx"],
                        "server_cpu_ms_per_request": round(cpu * 1000 / requests, 3),
                        "warehouse_queries": app.state.answers.computations - computed,
                    }
                ),
                flush=True,
            )
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()


if __name__ == "__main__":
    main()
