"""The DuckDB warehouse's memory settings: ``duckdb_memory_limit`` (default 25 % of RAM,
at most 256 MiB) and ``duckdb_threads``, applied where the warehouse is opened."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from adpulse.config import Settings
from adpulse.storage.warehouse import open_warehouse
from adpulse.storage.warehouse.duckdb import memory_limit

GIB = 1 << 30


def test_the_limit_of_each_setting() -> None:
    assert memory_limit("", total_ram=16 * GIB) == "256MiB"  # 25 % is 4 GiB: capped
    assert memory_limit("", total_ram=GIB // 2) == "128MiB"  # 25 % of a small machine
    assert memory_limit("10%", total_ram=16 * GIB) == "1638MiB"
    assert memory_limit("750MB") == "750MB"  # DuckDB's own units, passed through


def test_the_warehouse_opens_with_the_settings(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, duckdb_memory_limit="300MiB", duckdb_threads=1)
    warehouse = open_warehouse(settings)
    try:
        row = warehouse.query(
            "SELECT current_setting('memory_limit'), current_setting('threads')"
        ).row(0)
        assert row == ("300.0 MiB", 1)
    finally:
        warehouse.close()


def test_a_limit_that_is_no_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="duckdb_memory_limit"):
        Settings(home=tmp_path, duckdb_memory_limit="lots")


@pytest.mark.parametrize(("threshold", "checkpointed"), [("1MiB", True), ("1GiB", False)])
def test_the_wal_is_checkpointed_at_the_threshold(
    tmp_path: Path, threshold: str, checkpointed: bool
) -> None:
    # DuckDB holds what the WAL logs in memory too, until a checkpoint: the threshold
    # bounds that part of its memory under a live run (default 64MB).
    assert Settings(home=tmp_path).duckdb_checkpoint_threshold == "64MB"
    settings = Settings(home=tmp_path, duckdb_checkpoint_threshold=threshold)
    warehouse = open_warehouse(settings)
    wal = Path(f"{settings.warehouse_path}.wal")
    try:
        assert warehouse.query("SELECT current_setting('checkpoint_threshold')").item() == (
            "1.0 MiB" if threshold == "1MiB" else "1.0 GiB"
        )
        cursor = warehouse.cursor()  # type: ignore[attr-defined]
        cursor.execute("CREATE TABLE filler (i BIGINT, s VARCHAR)")
        for n in range(10):  # ~3 MB of WAL in commits of 10,000 rows (each below a row group)
            cursor.execute(
                f"INSERT INTO filler SELECT range, 'row number ' || range FROM range({n * 10_000}, {(n + 1) * 10_000})"
            )
        cursor.close()
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        assert (wal_bytes < 1_000_000) is checkpointed, wal_bytes
        assert warehouse.query("SELECT count(*) FROM filler").item() == 100_000
    finally:
        warehouse.close()


def test_a_threshold_that_is_no_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="duckdb_checkpoint_threshold"):
        Settings(home=tmp_path, duckdb_checkpoint_threshold="often")
