"""Fixtures: a warehouse holding the known data of :mod:`query_dataset`, and an empty one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from query_dataset import build

from adpulse.storage.warehouse.duckdb import DuckDBWarehouse


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[DuckDBWarehouse]:
    with DuckDBWarehouse(tmp_path / "warehouse.duckdb") as wh:
        wh.create_schema()
        build(wh)
        yield wh


@pytest.fixture
def empty_warehouse(tmp_path: Path) -> Iterator[DuckDBWarehouse]:
    with DuckDBWarehouse(tmp_path / "empty.duckdb") as wh:
        wh.create_schema()
        yield wh
