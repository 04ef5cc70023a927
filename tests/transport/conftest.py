"""Fixtures shared by the transport tests: every transport behind one factory.

``make_transport`` runs a test against every transport (in-memory, embedded, embedded
with tiny segments, Redis Streams, Kinesis on the local AWS API server); such tests treat offsets as opaque tokens, compared
for equality only. ``make_byte_transport`` covers the transports whose offsets are byte
positions, for the tests of that numbering.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import BYTE_OFFSET_KINDS, TRANSPORT_KINDS, TransportMaker


def _maker(kind: str, tmp_path: Path) -> Iterator[TransportMaker]:
    maker = TransportMaker(kind, tmp_path / "log")
    try:
        yield maker
    finally:
        maker.close()


@pytest.fixture(params=TRANSPORT_KINDS)
def make_transport(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TransportMaker]:
    """Builds a transport of each kind (one log directory or Redis prefix per test)."""
    yield from _maker(request.param, tmp_path)


@pytest.fixture(params=BYTE_OFFSET_KINDS)
def make_byte_transport(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TransportMaker]:
    """Builds a transport of each kind whose offsets are byte positions."""
    yield from _maker(request.param, tmp_path)
