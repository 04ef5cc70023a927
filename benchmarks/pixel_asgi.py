"""The pixel's cost in the app alone: ``GET /v1/pixel.gif`` through the whole ASGI app of
``adpulse serve`` (``create_app`` with a collector on the embedded log), 32 requests at
a time as from 32 connections, with no socket and no HTTP server, so that the other
load of the machine (and the kernel's TCP work) weighs less than in
``benchmarks/collector.py``. Prints the CPU time per pixel.

Run: ``python benchmarks/pixel_asgi.py [--pixels 32000]``; with another checkout's
interpreter to compare (it imports whichever adpulse that interpreter has). A
benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from adpulse.config import Settings
from adpulse.runtime import open_runtime
from adpulse.serving.api import create_app
from adpulse.serving.auth import access_of_server
from adpulse.sources.collector import Collector

SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/v1/pixel.gif",
    "raw_path": b"/v1/pixel.gif",
    "root_path": "",
    "query_string": b"ad_id=3&user_id=u1&platform=web&location=FR",
    "headers": [(b"host", b"127.0.0.1:8080"), (b"user-agent", b"wrk")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8080),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pixels", type=int, default=32000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    with tempfile.TemporaryDirectory(prefix="adpulse-pixel-asgi-") as home:
        settings = Settings(home=Path(home))
        with open_runtime(settings, live=True) as rt:
            collector = Collector(rt.transport, settings)
            access = access_of_server(rt.warehouse, settings, "127.0.0.1", False)
            app = create_app(
                rt.warehouse, settings, store=rt.store, access=access, collector=collector
            )

            async def pixels(n: int) -> float:
                cpu = time.process_time()
                for _ in range(n // args.concurrency):
                    requests = (app(dict(SCOPE), receive, send) for _ in range(args.concurrency))
                    await asyncio.gather(*requests)
                return time.process_time() - cpu

            async def run() -> float:
                await pixels(10 * args.concurrency)  # warm up: the middleware stack, caches
                statuses.clear()
                return await pixels(args.pixels)

            try:
                cpu = asyncio.run(run())
            finally:
                collector.close()
    assert set(statuses) == {200}, f"answers other than 200: {set(statuses)}"
    print(f"{len(statuses)} pixels, {cpu * 1e6 / len(statuses):.1f} µs of CPU per pixel")


if __name__ == "__main__":
    main()
