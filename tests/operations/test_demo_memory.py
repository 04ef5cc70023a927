"""The demo's DuckDB memory limit: at most 128 MiB unless ``duckdb_memory_limit`` is set."""

from __future__ import annotations

from pathlib import Path

import pytest

from adpulse.config import Settings
from adpulse.operations.demo import DEMO_DUCKDB_MEMORY_CAP, demo_settings
from adpulse.storage.warehouse.duckdb import memory_limit

GIB = 1 << 30


def test_the_demo_caps_duckdb_at_128_mib_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert DEMO_DUCKDB_MEMORY_CAP == 128 << 20
    assert memory_limit("", total_ram=16 * GIB, cap=DEMO_DUCKDB_MEMORY_CAP) == "128MiB"
    assert memory_limit("", total_ram=GIB // 4, cap=DEMO_DUCKDB_MEMORY_CAP) == "64MiB"
    expected = memory_limit("", cap=DEMO_DUCKDB_MEMORY_CAP)  # this machine's
    assert demo_settings(Settings(home=tmp_path)).duckdb_memory_limit == expected
    for given in ("", "1GB", "30%"):
        told = Settings(home=tmp_path, duckdb_memory_limit=given)
        assert demo_settings(told).duckdb_memory_limit == given
    monkeypatch.setenv("ADPULSE_DUCKDB_MEMORY_LIMIT", "300MB")
    assert demo_settings(Settings(home=tmp_path)).duckdb_memory_limit == "300MB"
