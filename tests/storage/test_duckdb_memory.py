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
