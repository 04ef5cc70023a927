"""Collector throughput: wrk posting 500-record batches to ``adpulse serve`` (collector,
processor and API in one process, on the embedded log and DuckDB), and the pixel.

Each case starts a fresh ``adpulse serve`` on a scratch directory, runs wrk against it
for ``--seconds``, then reads how many records the processor committed so far. Cases:
``post`` (NDJSON batches, fsync off), ``post-gzip`` (the same, gzip-compressed),
``post-array`` (the same records as a JSON array, ``Content-Type: application/json``),
``post-fsync`` (fsync on: group commit), ``pixel`` (GET /v1/pixel.gif). In ``post``,
``post-array`` and ``post-fsync`` every request carries new event ids; ``post-gzip`` and
``pixel`` repeat one request (the processor then drops the repeated posts as re-sends,
so its figure of committed events is not the throughput there). Besides
requests/s, events/s and latency it prints the CPU time the server used per request
(from /proc), which the machine's other load changes much less, and the processor's
batches committed per second.

Run: ``python benchmarks/collector.py [--seconds 10] [--connections 32] [--batch 500]
[--case post --case pixel ...] [--no-process]``. Needs ``wrk`` (``apt install wrk``).
Prints one JSON line per case; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson

from adpulse.operations.bench_api import WRK_DONE
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

CASES = ("post", "post-gzip", "post-array", "post-fsync", "pixel")

_WRK_SCRIPT = (
    """
wrk.method = "%(method)s"
local f = io.open("%(body)s", "rb")
wrk.body = f:read("*a")
f:close()
%(headers)s
-- Every request gets new event ids ("@R@" in the body -> thread-counter), so that the
-- processor commits every record rather than dropping re-sends.
local vary = %(vary)s
local counter = 0
setup = function(thread)
  thread:set("tid", tostring(thread))
end
request = function()
  if not vary then
    return wrk.format()
  end
  counter = counter + 1
  local body = string.gsub(wrk.body, "@R@", (tid or "t") .. "-" .. counter)
  return wrk.format(nil, nil, nil, body)
end
"""
    + WRK_DONE
)


def batch_body(records: int) -> bytes:
    """``records`` impressions as NDJSON, many users (so every partition gets some);
    ``@R@`` in each event id is replaced per request by the wrk script."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return b"\n".join(
        orjson.dumps(
            {
                "event_id": f"@R@-{i}",
                "ad_id": 1 + i % 50,
                "user_id": f"user-{i * 7919 % 100_000}",
                "impression_timestamp": now,
                "platform": ("web", "ios", "android")[i % 3],
                "location": ("FR", "DE", "US", "BR")[i % 4],
            }
        )
        for i in range(records)
    )


def server_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batches_committed(url: str) -> float:
    """The processor's batches committed so far (its Prometheus counter; 0 without)."""
    text = httpx.get(url + "metrics", timeout=60).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("adpulse_batches_committed_total")
    )


def run_case(case: str, args: argparse.Namespace, scratch: Path, wrk: str) -> dict[str, object]:
    home = scratch / case
    env = {**os.environ, "COLUMNS": "240", "ADPULSE_FSYNC": str(case == "post-fsync").lower()}
    command = ["serve", "--home", str(home), "--port", "0"]
    if not args.process:
        # The collector alone: the API reads an empty warehouse, nothing processes.
        home.mkdir(parents=True)
        with DuckDBWarehouse(home / "warehouse.duckdb") as warehouse:
            warehouse.create_schema()
        command.append("--no-process")
    server = subprocess.Popen(
        [sys.executable, "-m", "adpulse", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split(" at ")[1].split()[0]
        body = batch_body(args.batch)
        headers = ['wrk.headers["Content-Type"] = "application/x-ndjson"']
        if case == "post-array":
            body = b"[" + body.replace(b"\n", b",") + b"]"
            headers = ['wrk.headers["Content-Type"] = "application/json"']
        if case == "post-gzip":
            body = gzip.compress(body, compresslevel=1)
            headers.append('wrk.headers["Content-Encoding"] = "gzip"')
        body_file = scratch / f"{case}.body"
        body_file.write_bytes(b"" if case == "pixel" else body)
        script = scratch / f"{case}.lua"
        script.write_text(
            _WRK_SCRIPT
            % {
                "method": "GET" if case == "pixel" else "POST",
                "body": body_file,
                "headers": "" if case == "pixel" else "\n".join(headers),
                "vary": str(case in ("post", "post-array", "post-fsync")).lower(),
            }
        )
        path = (
            "v1/pixel.gif?ad_id=3&user_id=u1&platform=web&location=FR"
            if case == "pixel"
            else "v1/events/impressions"
        )
        batches = batches_committed(url)
        cpu = server_cpu_seconds(server.pid)
        done = subprocess.run(
            [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{args.seconds}s"]
            + ["--timeout", "30s", "-s", str(script), url + path],
            capture_output=True,
            text=True,
            check=True,
        )
        cpu = server_cpu_seconds(server.pid) - cpu
        batches = batches_committed(url) - batches
        raw = json.loads([x for x in done.stdout.splitlines() if x.startswith("{")][-1])
        seconds = raw["duration_us"] / 1e6
        per_request = 1 if case == "pixel" else args.batch
        time.sleep(1.0)  # the processor's batch in flight
        summary = httpx.get(url + "api/v1/summary", timeout=60).json()["summary"]
        return {
            "case": case,
            "processor": args.process,
            "connections": args.connections,
            "records_per_request": per_request,
            "requests_per_s": round(raw["requests"] / seconds, 1),
            "events_per_s": round(raw["requests"] * per_request / seconds),
            "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000,
            "errors": raw["errors"] + raw["non_2xx_3xx"],
            "server_cpu_ms_per_request": round(cpu * 1000 / max(1, raw["requests"]), 3),
            "committed_within_1s_after": summary["impressions"],
            "processor_batches_per_s": round(batches / seconds, 1),
        }
    finally:
        server.terminate()
        server.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--batch", type=int, default=500, help="records per POST")
    parser.add_argument("--case", action="append", choices=CASES)
    parser.add_argument(
        "--process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the processor in the server (--no-process: the collector's cost alone)",
    )
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (apt install wrk)")
    with tempfile.TemporaryDirectory(prefix="adpulse-collector-bench-") as scratch:
        for case in args.case or CASES:
            print(json.dumps(run_case(case, args, Path(scratch), wrk)), flush=True)


if __name__ == "__main__":
    main()
