"""Shared fixtures: a pipeline over the in-memory transport and a DuckDB warehouse."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
from _pytest.nodeid import NodeId
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


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Make ``--dist loadgroup`` group again: pytest-xdist 3.8 marks a test of group G by
    setting ``item._nodeid`` to ``<nodeid>@G``, which pytest 9 no longer reads (the node id
    lives in ``item._id``), so every ``xdist_group`` mark was ignored and both workers ran
    tests of every group (each starting its own Spark session, building each module's
    fixtures). The same suffix, set where pytest 9 keeps it; nothing when xdist did it."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        names = sorted(
            {
                str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                for m in item.iter_markers("xdist_group")
            }
        )
        suffix = "@" + "_".join(names)
        if not names or item.nodeid.endswith(suffix):
            continue
        item._id = NodeId.parse(item.nodeid + suffix)
