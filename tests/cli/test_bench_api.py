"""The arithmetic of ``adpulse bench-api`` (what it measures, never how fast)."""

from __future__ import annotations

import http.server
import json
import shutil
import socketserver
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest

from adpulse.operations.bench_api import dashboard_paths, event_to_screen, wrk_script
from adpulse.operations.loadgen import percentiles, run_load


def test_event_to_screen_uses_the_mark_that_first_reached_the_count() -> None:
    marks = [
        (100.0, {"clicks": 10, "impressions": 1000}),  # baseline: all committed
        (101.0, {"clicks": 20, "impressions": 2000}),
        (102.0, {"clicks": 30, "impressions": 3000}),
    ]
    updates = [
        (100.5, {"clicks": 10, "impressions": 1000}),  # first update: no growth to time
        (101.7, {"clicks": 15, "impressions": 2000}),  # clicks 15 <= mark 101 -> 0.7 s
        (102.4, {"clicks": 15, "impressions": 2000}),  # no growth: nothing new counted
        (103.0, {"clicks": 30, "impressions": 3000}),  # both reached at 102 -> 1.0 s each
        (104.0, {"clicks": 31, "impressions": 3000}),  # beyond the producer: skipped
    ]
    got = sorted(round(x, 6) for x in event_to_screen(marks, updates))
    # clicks and impressions: 0.7 s (reached at 101.0) and 1.0 s (reached at 102.0)
    assert got == [0.7, 0.7, 1.0, 1.0]


def test_event_to_screen_ignores_counts_below_the_baseline() -> None:
    marks = [(10.0, {"clicks": 100})]
    assert event_to_screen(marks, [(11.0, {"clicks": 50}), (12.0, {"clicks": 90})]) == []


def test_percentiles_nearest_rank_in_milliseconds() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentiles(values) == {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "max_ms": 100.0}
    assert percentiles([])["p99_ms"] is None


def test_load_generator_is_loopback_only_and_bounded() -> None:
    import asyncio

    with pytest.raises(ValueError, match="loopback"):
        asyncio.run(run_load("http://example.com", 1, 1, ["/"]))
    with pytest.raises(ValueError, match="bounds"):
        asyncio.run(run_load("http://127.0.0.1:1", 1, 5000, ["/"]))


def test_dashboard_mix_is_a_24h_range() -> None:
    from datetime import datetime

    paths = dashboard_paths(datetime(2023, 9, 8, 12, 0))
    assert [p.split("?")[0] for p in paths] == [
        "/api/v1/summary",
        "/api/v1/timeseries",
        "/api/v1/top-ads",
        "/api/v1/trending",
        "/api/v1/breakdown/platform",
    ]
    assert all("from=2023-09-07T12%3A00&to=2023-09-08T12%3A00" in p for p in paths)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt install wrk)")
def test_wrk_script_cycles_the_mix_and_prints_its_summary(tmp_path: Path) -> None:
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            seen.append(self.path)
            status = 500 if self.path == "/broken" else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    paths = ["/api/v1/summary?from=2023-09-07T12%3A00", "/b", "/broken"]
    script = tmp_path / "mix.lua"
    script.write_text(wrk_script(paths))
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        done = subprocess.run(
            ["wrk", "-t1", "-c1", "-d1s", "-s", str(script), f"http://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        server.shutdown()
    summary = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    # a request in flight when wrk stops reaches the server but not the summary
    assert len(seen) - 1 <= summary["requests"] <= len(seen) and len(seen) > 3
    counts = Counter(seen)
    assert set(counts) == set(paths)  # every path, in turn: counts differ by at most one
    assert max(counts.values()) - min(counts.values()) <= 1
    assert counts["/broken"] - 1 <= summary["non_2xx_3xx"] <= counts["/broken"]
    assert 0 < summary["p50_us"] <= summary["p99_us"] <= summary["max_us"]
