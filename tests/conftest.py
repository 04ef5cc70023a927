"""Shared fixtures: a pipeline over the in-memory transport and a DuckDB warehouse."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

#: Property tests (tests/pipeline/test_hostile_input.py): a bounded run in the normal
#: suite; ADPULSE_HYPOTHESIS_PROFILE=long for a longer one.
settings.register_profile(
    "quick",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("ADPULSE_HYPOTHESIS_PROFILE", "quick"))

sys.path.insert(0, str(Path(__file__).parent))

from minipipeline import MiniPipeline  # noqa: E402

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
