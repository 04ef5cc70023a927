"""A bounded loopback HTTP load generator (asyncio + httpx), run as a subprocess by
``adpulse bench-api`` so that its CPU does not share the server process's GIL.

``python -m adpulse.operations.loadgen URL SECONDS CLIENTS PATH...`` issues GET requests
to ``URL + PATH`` from ``CLIENTS`` concurrent connections for ``SECONDS`` seconds, each
client cycling through the paths in order (a fixed mix), and prints one JSON object:
requests, errors, requests/s and latency percentiles per path and overall.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

#: Hard bounds: this is a loopback benchmark, not a stress tool.
MAX_CLIENTS = 1000
MAX_SECONDS = 600.0


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/max in milliseconds (nearest rank) of ``values`` in seconds."""
    if not values:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        index = min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))
        return round(ordered[index] * 1000, 2)

    return {
        "p50_ms": rank(0.50),
        "p90_ms": rank(0.90),
        "p99_ms": rank(0.99),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def run_load(base: str, seconds: float, clients: int, paths: list[str]) -> dict[str, Any]:
    import httpx

    host = urlsplit(base).hostname
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise ValueError(f"loopback only, not {host!r}")
    if not 1 <= clients <= MAX_CLIENTS or not 0 < seconds <= MAX_SECONDS or not paths:
        raise ValueError("clients, seconds or paths out of bounds")
    latencies: dict[str, list[float]] = {p: [] for p in paths}
    errors: dict[str, int] = {p: 0 for p in paths}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def worker(offset: int) -> None:
            i = offset
            while time.perf_counter() < deadline:
                path = paths[i % len(paths)]
                i += 1
                t = time.perf_counter()
                try:
                    response = await client.get(path)
                    await response.aread()
                    failed = response.status_code != 200
                except httpx.HTTPError:
                    failed = True
                elapsed = time.perf_counter() - t
                if failed:
                    errors[path] += 1
                else:
                    latencies[path].append(elapsed)

        await asyncio.gather(*(worker(c) for c in range(clients)))
        wall = time.perf_counter() - started
    every = [v for values in latencies.values() for v in values]
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "overall": {
            "requests": len(every),
            "errors": sum(errors.values()),
            "requests_per_s": round(len(every) / wall, 1),
            **percentiles(every),
        },
        "endpoints": {
            p: {
                "requests": len(latencies[p]),
                "errors": errors[p],
                "requests_per_s": round(len(latencies[p]) / wall, 1),
                **percentiles(latencies[p]),
            }
            for p in paths
        },
    }


def main(argv: list[str]) -> None:
    base, seconds, clients, *paths = argv
    result = asyncio.run(run_load(base, float(seconds), int(clients), paths))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
