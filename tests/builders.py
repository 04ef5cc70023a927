"""Builders shared by the tests: transports of every kind, warehouses with their tables
and dimensions, generated data sets and the pipeline over them.

Test modules import these instead of importing each other; fixtures built on them live in
the ``conftest.py`` files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from redistest import REDIS_URL, delete_prefix, new_prefix, require_redis

from adpulse.transport import EmbeddedTransport, InMemoryTransport, Transport
from adpulse.transport.redis_streams import RedisStreamsTransport

# Transports -------------------------------------------------------------------------------

# "embedded-tiny-segments" rolls a segment at (almost) every append, so every contract
# test also reads across segment boundaries.
BYTE_OFFSET_KINDS = ("memory", "embedded", "embedded-tiny-segments")
TRANSPORT_KINDS = (*BYTE_OFFSET_KINDS, "redis")


@dataclass
class TransportMaker:
    """Opens transports of one kind (``maker(partitions)``) and closes them afterwards."""

    kind: str
    log_dir: Path
    opened: list[Transport] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)

    @property
    def exact_lag(self) -> bool:
        """Whether ``lag_bytes`` counts bytes exactly (Redis Streams estimates it from the
        sizes of the first and last entry)."""
        return self.kind != "redis"

    def __call__(self, partitions: int) -> Transport:
        transport: Transport
        if self.kind == "memory":
            transport = InMemoryTransport(partitions)
        elif self.kind == "embedded":
            transport = EmbeddedTransport(self.log_dir, partitions)
        elif self.kind == "embedded-tiny-segments":
            transport = EmbeddedTransport(self.log_dir, partitions, segment_bytes=1)
        else:
            require_redis()
            self.prefixes.append(new_prefix())
            transport = RedisStreamsTransport(REDIS_URL, partitions, prefix=self.prefixes[-1])
        self.opened.append(transport)
        return transport

    def close(self) -> None:
        for transport in self.opened:
            transport.close()
        for prefix in self.prefixes:
            delete_prefix(prefix)
