"""What a test does when a server it needs is unreachable: fail in CI (``CI`` set, where
.ci/run started the server), skip locally; either way saying why."""

from __future__ import annotations

import os

import pytest


def require_server(unreachable: str | None) -> None:
    """``unreachable`` is None when the server answered, else the reason it did not."""
    if unreachable is None:
        return
    if os.environ.get("CI"):
        pytest.fail(unreachable)
    pytest.skip(unreachable)
