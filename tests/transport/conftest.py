"""Fixtures shared by the transport tests: every transport behind one factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adpulse.transport import EmbeddedTransport, InMemoryTransport, Transport

TransportFactory = Callable[[int], Transport]

# "embedded-tiny-segments" rolls a segment at (almost) every append, so every contract
# test also reads across segment boundaries.
TRANSPORT_KINDS = ("memory", "embedded", "embedded-tiny-segments")


def make_factory(kind: str, log_dir: Path) -> TransportFactory:
    def factory(partitions: int) -> Transport:
        if kind == "memory":
            return InMemoryTransport(partitions)
        if kind == "embedded":
            return EmbeddedTransport(log_dir, partitions)
        return EmbeddedTransport(log_dir, partitions, segment_bytes=1)

    return factory


@pytest.fixture(params=TRANSPORT_KINDS)
def make_transport(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TransportFactory]:
    """Builds a transport of each kind (one log directory per test)."""
    opened: list[Transport] = []
    factory = make_factory(request.param, tmp_path / "log")

    def tracked(partitions: int) -> Transport:
        transport = factory(partitions)
        opened.append(transport)
        return transport

    yield tracked
    for transport in opened:
        transport.close()
