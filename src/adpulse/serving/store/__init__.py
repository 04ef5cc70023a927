"""Serving stores: live aggregates of the last 24 h for the query layer's live views.

The contract is :mod:`.base`; :mod:`.memory` (in-process, the default), :mod:`.redis` and
:mod:`.dynamodb` implement it; :mod:`.sync` keeps a store in step with the warehouse. The
openers are below; to add a backend, see :mod:`adpulse.backends`.
"""

from __future__ import annotations

from datetime import timedelta
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


def open_memory_store(settings: Settings) -> ServingStore:
    """``memory://`` or ``""``: the in-process store, keeping the full rollup key for
    ``serving_memory_window_seconds`` of event time."""
    return MemoryServingStore(timedelta(seconds=settings.serving_memory_window_seconds))


def open_redis_serving_store(settings: Settings) -> ServingStore:
    """``redis://...``: the Redis store (the driver is imported only here)."""
    from adpulse.serving.store.redis import open_redis_store

    return open_redis_store(settings.serving_url, ServerTimeouts.from_settings(settings))


def open_dynamodb_serving_store(settings: Settings) -> ServingStore:
    """``dynamodb://TABLE?region=REGION&endpoint_url=URL``: the DynamoDB store (boto3 is
    imported only here)."""
    from adpulse.serving.store.dynamodb import open_dynamodb_store

    return open_dynamodb_store(settings.serving_url, ServerTimeouts.from_settings(settings))


def is_in_process(settings: Settings) -> bool:
    """Whether ``settings.serving_url`` names the in-process store (only the process that
    runs the processor can keep it current)."""
    return settings.serving_url in ("", "memory://")


def open_serving_store(settings: Settings) -> ServingStore:
    """Open the store named by ``settings.serving_url`` (the scheme -> opener table:
    :data:`adpulse.backends.SERVING`).

    Raises :class:`~adpulse.backends.UnsupportedUrlError` (a ``ValueError``) for a URL
    no backend opens or a malformed one, and :class:`ServingStoreUnavailableError` for an
    unreachable server; both name the setting, with any password masked.
    """
    from adpulse.backends import SERVING
    from adpulse.config import redact_url

    url = settings.serving_url
    backend = SERVING.backend(url)
    try:
        store: ServingStore = backend.load()(settings)
    except ServingStoreUnavailableError as exc:
        raise ServingStoreUnavailableError(
            f"the serving store of serving_url {redact_url(url)!r} is unavailable: {exc};"
            " start it or fix serving_url (ADPULSE_SERVING_URL)"
        ) from exc
    except ValueError as exc:  # e.g. a malformed query parameter
        raise SERVING.refusal(url, str(exc)) from exc
    return store
