"""Redis for tests: the server of .ci/run, one fresh key prefix per transport.

``ADPULSE_TEST_REDIS_URL`` names the server (default: the local one, database 0). Each
transport gets a key prefix of its own (its keys are deleted afterwards), so tests run in
parallel (pytest-xdist). If the server is unreachable, tests fail in CI (``CI`` set) and
are skipped locally, saying why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import redis
from servertest import require_server

from adpulse.transport import redis_streams
from adpulse.transport.redis_streams import RedisStreamsTransport

REDIS_URL = os.environ.get("ADPULSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@cache
def _unreachable() -> str | None:
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        return (
            f"Redis at {REDIS_URL} is unreachable ({exc}); start it or set ADPULSE_TEST_REDIS_URL"
        )
    return None


def require_redis() -> None:
    require_server(_unreachable())


def new_prefix() -> str:
    return f"adpulse-test-{uuid.uuid4().hex[:16]}"


def delete_prefix(prefix: str) -> None:
    redis_streams.delete_prefix(REDIS_URL, prefix)


@contextmanager
def redis_prefix() -> Iterator[str]:
    """A fresh key prefix whose keys are deleted on exit."""
    require_redis()
    prefix = new_prefix()
    try:
        yield prefix
    finally:
        delete_prefix(prefix)


@contextmanager
def redis_transport(partitions: int, **kwargs: object) -> Iterator[RedisStreamsTransport]:
    with redis_prefix() as prefix:
        transport = RedisStreamsTransport(REDIS_URL, partitions, prefix=prefix, **kwargs)  # type: ignore[arg-type]
        try:
            yield transport
        finally:
            transport.close()
