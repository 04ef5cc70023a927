"""Transports: the partitioned log between sources and the processor.

:func:`open_transport` opens the implementation named by ``settings.transport_url``.
Each transport lives in its own module with an opener here; the scheme -> opener table,
and how to add a transport, is :mod:`adpulse.backends`.
"""

from __future__ import annotations

from adpulse.config import Settings
from adpulse.transport.base import (
    Chunk,
    Consumer,
    OffsetOutOfRangeError,
    Producer,
    Transport,
)
from adpulse.transport.embedded import EmbeddedTransport
from adpulse.transport.memory import InMemoryTransport

__all__ = [
    "Chunk",
    "Consumer",
    "EmbeddedTransport",
    "InMemoryTransport",
    "OffsetOutOfRangeError",
    "Producer",
    "Transport",
    "open_transport",
]


def open_embedded(settings: Settings) -> Transport:
    """``embedded://DIR`` or ``""``: the on-disk log."""
    # settings.log_dir already resolves "" and "embedded://" to HOME/log.
    return EmbeddedTransport(
        settings.log_dir,
        settings.partitions,
        fsync=settings.fsync,
        max_record_bytes=settings.max_record_bytes,
    )


def open_redis(settings: Settings) -> Transport:
    """``redis://...``: Redis Streams (the driver is imported only here)."""
    from adpulse.outages import ServerTimeouts
    from adpulse.transport.redis_streams import open_redis_transport

    return open_redis_transport(
        settings.transport_url,
        settings.partitions,
        settings.max_record_bytes,
        timeouts=ServerTimeouts.from_settings(settings),
    )


def open_kinesis(settings: Settings) -> Transport:
    """``kinesis://PREFIX?region=...``: Kinesis Data Streams (boto3 is imported only here)."""
    from adpulse.transport.kinesis import open_kinesis_transport

    return open_kinesis_transport(
        settings.transport_url,
        settings.partitions,
        settings.max_record_bytes,
        retry_seconds=settings.infra_retry_seconds,
        connect_seconds=settings.infra_timeout_seconds,
    )


def open_memory(settings: Settings) -> Transport:
    """``memory://``: in-process, for tests."""
    return InMemoryTransport(settings.partitions, max_record_bytes=settings.max_record_bytes)


def open_transport(settings: Settings) -> Transport:
    """Open the transport named by ``settings.transport_url`` (:data:`adpulse.backends.
    TRANSPORT`); an unsupported URL raises :class:`~adpulse.backends.UnsupportedUrlError`."""
    from adpulse.backends import TRANSPORT

    transport: Transport = TRANSPORT.open(settings)
    return transport
