"""Fixtures: a warehouse holding the known data of :mod:`query_dataset`, and an empty one,
on every backend (DuckDB and PostgreSQL) with the same expected values; a serving store
on every backend (in-process, Redis and DynamoDB)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import fresh_warehouse
from dynamotest import dynamodb_store
from query_dataset import build
from redistest import REDIS_URL, redis_prefix

from adpulse.serving.store import MemoryServingStore, ServingStore
from adpulse.serving.store.redis import RedisServingStore
from adpulse.storage.warehouse.base import Warehouse


@pytest.fixture(params=["duckdb", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def warehouse(backend: str, tmp_path: Path) -> Iterator[Warehouse]:
    with fresh_warehouse(backend, tmp_path / "warehouse.duckdb") as wh:
        build(wh)
        yield wh


@pytest.fixture
def empty_warehouse(backend: str, tmp_path: Path) -> Iterator[Warehouse]:
    with fresh_warehouse(backend, tmp_path / "empty.duckdb") as wh:
        yield wh


@pytest.fixture(params=["memory", "redis", "dynamodb"])
def store(request: pytest.FixtureRequest) -> Iterator[ServingStore]:
    """An empty serving store of each kind (a fresh Redis key prefix or DynamoDB table,
    deleted after)."""
    if request.param == "memory":
        yield MemoryServingStore()
        return
    if request.param == "dynamodb":
        with dynamodb_store() as dynamodb:
            yield dynamodb
        return
    with redis_prefix() as prefix, RedisServingStore(REDIS_URL, prefix=prefix) as redis_store:
        yield redis_store
