"""``./run test`` shares the tests out with ``--dist loadgroup``: a test marked
``xdist_group(G)`` must carry ``@G`` in its id, which is all the scheduler looks at to keep
a group on one worker (``tests/conftest.py`` sets it: pytest-xdist 3.8 no longer can)."""

from __future__ import annotations

import pytest


@pytest.mark.xdist_group("probe")
def test_a_grouped_test_id_carries_its_group(request: pytest.FixtureRequest) -> None:
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("ids carry groups only under --dist loadgroup (./run test)")
    assert (
        request.node.nodeid
        == "tests/test_xdist_groups.py::test_a_grouped_test_id_carries_its_group@probe"
    )


def test_an_ungrouped_test_id_is_left_as_it_is(request: pytest.FixtureRequest) -> None:
    assert (
        request.node.nodeid
        == "tests/test_xdist_groups.py::test_an_ungrouped_test_id_is_left_as_it_is"
    )
