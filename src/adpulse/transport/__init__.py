"""Transports: the partitioned log between sources and the processor.

:func:`open_transport` picks the implementation named by ``settings.transport_url``.
Each transport lives in its own module; to add one (Redis Streams, Kinesis), write
``<name>.py`` implementing :class:`Transport`, import its driver lazily inside its
opener, and register the opener in ``_OPENERS`` below.
"""

from __future__ import annotations

from collections.abc import Callable

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


def _open_embedded(settings: Settings) -> Transport:
    # settings.log_dir already resolves "" and "embedded://" to HOME/log.
    return EmbeddedTransport(
        settings.log_dir,
        settings.partitions,
        fsync=settings.fsync,
        max_record_bytes=settings.max_record_bytes,
    )


def _open_redis(settings: Settings) -> Transport:
    # The driver is imported by the module only when a redis:// URL is used.
    from adpulse.outages import ServerTimeouts
    from adpulse.transport.redis_streams import open_redis_transport

    return open_redis_transport(
        settings.transport_url,
        settings.partitions,
        settings.max_record_bytes,
        timeouts=ServerTimeouts.from_settings(settings),
    )


def _open_memory(settings: Settings) -> Transport:
    return InMemoryTransport(settings.partitions, max_record_bytes=settings.max_record_bytes)


#: URL scheme -> opener; each imports its driver inside the opener, so the embedded
#: default needs none. "kinesis" (AWS Kinesis) goes here next.
_OPENERS: dict[str, Callable[[Settings], Transport]] = {
    "embedded": _open_embedded,
    "memory": _open_memory,
    "redis": _open_redis,
}

_ACCEPTED_FORMS = (
    "'' or 'embedded://DIR' (on-disk log, the default), 'memory://' (in-process), "
    "'redis://HOST:PORT/DB' (Redis Streams)"
)


def open_transport(settings: Settings) -> Transport:
    """Open the transport named by ``settings.transport_url``."""
    url = settings.transport_url
    scheme, separator, _ = url.partition("://")
    if url == "":
        scheme, separator = "embedded", "://"
    opener = _OPENERS.get(scheme) if separator else None
    if opener is None:
        raise ValueError(
            f"Unsupported transport_url {url!r}: the setting `transport_url` "
            f"(ADPULSE_TRANSPORT_URL) accepts {_ACCEPTED_FORMS}."
        )
    return opener(settings)
