"""CPU of the in-process serving store's writes and reads, on a synthetic window.

Applies 20 minutes of 1-second deltas of 2,500 rollup rows (300 ads, 40 campaigns, 3
platforms, 30 locations: ~16k keys a minute, as the demo at 5,000 events/s) to a
``MemoryServingStore``, then times reads of the newest 15 minutes and of all 20 by
minute only, by campaign and by every key (CPU time, 5 reads each after one warm-up).

Run: ``.venv/bin/python benchmarks/serving_store_reads.py``; to compare with other code,
put its ``src`` first on ``PYTHONPATH`` and alternate the runs. A benchmark, not a test.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from decimal import Decimal

import numpy as np
import polars as pl

from adpulse.serving.store import LiveDelta, LiveRows, MemoryServingStore, StoreWindow
from adpulse.serving.store.base import LIVE_CONVERSIONS, LIVE_ROLLUPS, PROJECTIONS
from adpulse.storage.warehouse.schema import CONVERSION_REATTRIBUTIONS

T0 = datetime(2026, 1, 1)
CAMPAIGNS = [f"Campaign-{i}" for i in range(40)]
PLATFORMS = ["Mobile", "Web", "Tablet"]
LOCATIONS = [f"City {i:02d}" for i in range(30)]


def main() -> None:
    rng = np.random.default_rng(1)
    store = MemoryServingStore()
    store.replace(LiveRows.empty(), StoreWindow(T0, None))
    began = time.process_time()
    for second in range(20 * 60):
        n = 2500
        ads = rng.integers(1000, 1300, n)
        rollups = pl.DataFrame(
            {
                "minute": [T0 + timedelta(minutes=second // 60)] * n,
                "ad_id": ads,
                "campaign": [CAMPAIGNS[a % 40] for a in ads],
                "platform": [PLATFORMS[i] for i in rng.integers(0, 3, n)],
                "location": [LOCATIONS[i] for i in rng.integers(0, 30, n)],
                "impressions": rng.integers(0, 5, n),
                "clicks": rng.integers(0, 2, n),
                "conversions": np.zeros(n, int),
                "attributed_conversions": np.zeros(n, int),
                "revenue": [Decimal("1.25")] * n,
                "latency_sum_seconds": [0.0] * n,
            }
        ).cast(LIVE_ROLLUPS)  # type: ignore[arg-type]
        rows = LiveRows(rollups, pl.DataFrame(schema=LIVE_CONVERSIONS))
        store.apply(f"k{second}", LiveDelta(rows, pl.DataFrame(schema=CONVERSION_REATTRIBUTIONS)))
    print(
        f"apply: {time.process_time() - began:.1f} s CPU for {20 * 60} deltas;"
        f" {store.nbytes() / 2**20:.1f} MB in {store.parts()} parts"
    )
    window = store.window()
    assert window is not None and window.newest is not None
    for label, first in (("15 min", window.newest - timedelta(minutes=15)), ("20 min", T0)):
        for columns in (frozenset(), frozenset({"campaign"}), PROJECTIONS[-1]):
            store.read(first, None, columns, conversions=False)
            began = time.process_time()
            for _ in range(5):
                store.read(first, None, columns, conversions=False)
            took = (time.process_time() - began) / 5 * 1000
            print(f"read {label}, keys {sorted(columns) or '-'}: {took:.0f} ms CPU")


if __name__ == "__main__":
    main()
