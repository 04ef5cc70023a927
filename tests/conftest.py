"""Shared fixtures: a pipeline over the in-memory transport and a DuckDB warehouse."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from builders import MiniPipeline  # noqa: E402

#: The original's sample records: shared/ lies beside the clone (here and in CI).
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterable[MiniPipeline]:
    mini = MiniPipeline(tmp_path)
    yield mini
    mini.warehouse.close()


@pytest.fixture
def samples() -> Path:
    return SAMPLES
