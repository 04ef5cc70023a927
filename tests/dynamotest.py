"""DynamoDB serving stores for tests: a fresh table on a local AWS API server (moto, in a
process of its own: :func:`awstest.aws_endpoint_own_process`), deleted afterwards."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Final

import boto3
import pytest
from awstest import REGION, unique_name, use_local_aws

from adpulse.outages import ServerTimeouts
from adpulse.serving.store.dynamodb import DynamoDBServingStore, open_dynamodb_store

logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise


#: Shards per hour of the test stores: more than one, so every contract test reads and
#: writes across shards, but fewer than the default 4, whose 4 queries per hour the
#: local server answers slowly (the count changes no path; the live-view tests use 1).
TEST_SHARDS: Final = 2


@contextmanager
def dynamodb_table(shards: int = TEST_SHARDS) -> Iterator[str]:
    """The ``serving_url`` of a fresh table (created by the first store opened on it),
    whose stores build generations of ``shards`` shards per hour."""
    with pytest.MonkeyPatch.context() as patch:
        endpoint = use_local_aws(patch, own_process=True)
        table = unique_name("serving")
        try:
            yield f"dynamodb://{table}?region={REGION}&endpoint_url={endpoint}&shards={shards}"
        finally:
            client = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint)
            with suppress(client.exceptions.ResourceNotFoundException):
                client.delete_table(TableName=table)


#: The local server answers a large query slowly on a loaded machine: wait long enough.
PATIENT: Final = ServerTimeouts(connect_seconds=300.0)


def open_store(url: str) -> DynamoDBServingStore:
    """A store (one process's client) on the table of ``url``."""
    return open_dynamodb_store(url, PATIENT)


@contextmanager
def dynamodb_store() -> Iterator[DynamoDBServingStore]:
    """A store on a fresh table."""
    with dynamodb_table() as url, open_store(url) as store:
        yield store
