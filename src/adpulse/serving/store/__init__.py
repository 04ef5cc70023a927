"""Serving stores: live aggregates of the last 24 h for the query layer's live views.

The contract is :mod:`.base`; :mod:`.memory` (in-process, the default) and :mod:`.redis`
implement it; :mod:`.sync` keeps a store in step with the warehouse. To add a backend
(DynamoDB), write ``<name>.py`` implementing :class:`ServingStore`, import its driver
lazily inside its opener, and register the opener in ``_OPENERS`` below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from adpulse.outages import ServerTimeouts
from adpulse.serving.store.base import (
    WINDOW,
    LiveDelta,
    LiveRows,
    RebuildRunningError,
    ServingStore,
    ServingStoreError,
    ServingStoreUnavailableError,
    StoreSnapshot,
    StoreWindow,
    live_delta,
)
from adpulse.serving.store.memory import MemoryServingStore

if TYPE_CHECKING:
    from adpulse.config import Settings

__all__ = [
    "WINDOW",
    "LiveDelta",
    "LiveRows",
    "MemoryServingStore",
    "RebuildRunningError",
    "ServingStore",
    "ServingStoreError",
    "ServingStoreUnavailableError",
    "StoreSnapshot",
    "StoreWindow",
    "is_in_process",
    "live_delta",
    "open_serving_store",
]


def _open_memory(url: str, timeouts: ServerTimeouts) -> ServingStore:
    return MemoryServingStore()


def _open_redis(url: str, timeouts: ServerTimeouts) -> ServingStore:
    from adpulse.serving.store.redis import open_redis_store

    return open_redis_store(url, timeouts)


_OPENERS: dict[str, Callable[[str, ServerTimeouts], ServingStore]] = {
    "memory": _open_memory,
    "redis": _open_redis,
}
_ACCEPTED = "'' or 'memory://' (in-process, the default), 'redis://HOST:PORT/DB[?prefix=NAME]'"


def is_in_process(settings: Settings) -> bool:
    """Whether ``settings.serving_url`` names the in-process store (only the process that
    runs the processor can keep it current)."""
    return settings.serving_url in ("", "memory://")


def open_serving_store(settings: Settings) -> ServingStore:
    """Open the store named by ``settings.serving_url``.

    Raises ``ValueError`` for a URL of another form and
    :class:`ServingStoreUnavailableError` for an unreachable server; both name the
    setting, with any password masked.
    """
    from adpulse.config import redact_url

    url = settings.serving_url
    scheme, separator, rest = url.partition("://")
    if url == "":
        scheme, separator = "memory", "://"
    opener = _OPENERS.get(scheme) if separator else None
    if opener is None or (scheme == "memory" and rest):
        raise ValueError(
            f"unsupported serving_url {redact_url(url)!r} (setting serving_url, env"
            f" ADPULSE_SERVING_URL); accepted: {_ACCEPTED}"
        )
    try:
        return opener(url, ServerTimeouts.from_settings(settings))
    except ServingStoreUnavailableError as exc:
        raise ServingStoreUnavailableError(
            f"the serving store of serving_url {redact_url(url)!r} is unavailable: {exc};"
            " start it or fix serving_url (ADPULSE_SERVING_URL)"
        ) from exc
    except ValueError as exc:
        raise ValueError(
            f"invalid serving_url {redact_url(url)!r}: {exc}; accepted: {_ACCEPTED}"
        ) from exc
