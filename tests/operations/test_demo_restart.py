"""``adpulse demo`` run twice on one home: the second run continues with new events."""

from __future__ import annotations

import io
import math
from pathlib import Path

import polars as pl
from rich.console import Console

from adpulse.config import load_settings
from adpulse.contracts import Stream
from adpulse.operations.demo import run_demo
from adpulse.sources.generator import GeneratorConfig
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

RATE = 2_000.0
SECONDS = 3.0


def _counts(home: Path) -> pl.DataFrame:
    """Per stream: facts, duplicates, dead letters and records received so far."""
    with DuckDBWarehouse(home / "warehouse.duckdb", read_only=True) as wh:
        rows = []
        for stream in Stream:
            stats = wh.query(
                "SELECT COALESCE(SUM(received), 0) AS received,"
                " COALESCE(SUM(duplicates), 0) AS duplicates FROM ingest_stats WHERE stream = ?",
                [stream.value],
            ).row(0, named=True)
            rows.append(
                {
                    "stream": stream.value,
                    "facts": wh.query(f"SELECT count(*) FROM fact_{stream.value}").item(),
                    "dead": wh.query(
                        "SELECT count(*) FROM dead_letters WHERE stream = ?", [stream.value]
                    ).item(),
                    **stats,
                }
            )
        namespaces = pl.concat(
            wh.query(f"SELECT split_part(event_id, '-', 1) AS ns FROM fact_{s.value}")
            for s in Stream
        )
    frame = pl.DataFrame(rows).with_columns(pl.exclude("stream").cast(pl.Int64))
    return frame.with_columns(namespaces=pl.lit(namespaces["ns"].n_unique()))


def _run(home: Path) -> str:
    settings = load_settings(home=home, partitions=2)
    return run_demo(
        settings,
        Console(file=io.StringIO(), width=120),
        rate=RATE,
        seed=7,
        history_days=0,
        duration=SECONDS,
        refresh=0.5,
    )


def test_a_restarted_demo_continues_with_new_events_at_the_same_rates(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first_line = _run(home)
    first = _counts(home)
    second_line = _run(home)
    second = _counts(home).with_columns(
        pl.col(c) - first[c] for c in ("facts", "dead", "received", "duplicates")
    )
    assert first_line.startswith("committed ") and second_line.startswith("committed ")
    defaults = GeneratorConfig()
    for run in (first, second):
        for row in run.iter_rows(named=True):
            # A --duration run commits all it produced, and its generator sent every
            # record it held back: each fault is exactly at its injected rate.
            assert row["received"] == row["facts"] + row["duplicates"] + row["dead"], row
            assert row["duplicates"] == math.floor(defaults.duplicate_rate * row["facts"] + 0.5)
            assert row["dead"] == math.floor(defaults.malformed_rate * row["facts"] + 0.5)
    # Same dimensions, same traffic: the second run's accepted rate is the first's
    # (before the fix it re-sent the first run's event ids: nearly all duplicates).
    accepted = [int(run["facts"].sum()) for run in (first, second)]
    assert accepted[0] > 0.5 * RATE * SECONDS
    assert abs(accepted[1] - accepted[0]) <= 0.1 * accepted[0], accepted
    # Each run drew its event ids from a namespace of its own.
    assert first["namespaces"][0] == 1
    assert second["namespaces"][0] == 2
