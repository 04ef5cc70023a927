"""The pipeline with a dedupe memory budget so small that keys spill to disk every few
batches, restarted every few batches: the warehouse still equals the independent oracle
(each unique event once, every duplicate counted)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import oracle
from builders import generated_dataset, open_pipeline

from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.transport.embedded import EmbeddedTransport

START = datetime(2023, 9, 8)
END = datetime(2023, 9, 10)
NOW = datetime(2026, 1, 1)


def test_spilled_keys_dedupe_exactly_across_restarts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    generated_dataset(
        data,
        20_000,
        START,
        END,
        seed=5,
        ads=40,
        users=800,
        ctr_mean=0.2,
        conversion_rate_min=0.2,
        conversion_rate_max=0.4,
        duplicate_rate=0.05,
        out_of_order_rate=0.05,
        late_rate=0.01,
        malformed_rate=0.002,
    )
    home = tmp_path / "home"
    transport = EmbeddedTransport(home / "log", 2)
    warehouse = DuckDBWarehouse(home / "warehouse.duckdb")
    pipeline = open_pipeline(
        data,
        home,
        transport,
        warehouse,
        NOW,
        batch_max_bytes=48_000,
        dedupe_memory_bytes=8192,  # 512 slots: a spill every few batches
        idle_timeout_seconds=100_000,
    )
    pipeline.replay(data)
    spilled = runs = 0
    caught_up = False
    while not caught_up:
        processor = pipeline.processor()
        for _ in range(7):  # a restart every 7 batches
            if processor.run_once() is None and processor.settle() is None:
                caught_up = True
                break
            spilled = max(spilled, processor.dedupe.spilled_keys)
        processor.close()
        runs += 1
    assert runs > 3 and spilled > 1000
    assert not any((home / "dedupe").iterdir())  # closed processors leave no runs
    truth = duckdb.connect()
    received = oracle.build(truth, data, now=NOW)
    oracle.assert_warehouse_equals(warehouse, (truth, received), least_attributed=100)
    pipeline.close()
