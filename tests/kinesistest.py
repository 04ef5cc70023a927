"""Kinesis transports on the local AWS API server (tests/awstest.py), for the tests.

:func:`kinesis_transport` opens a :class:`KinesisTransport` on fresh streams (a unique
prefix) with the dummy credentials of :mod:`awstest` passed to boto3 directly, so no
environment is needed. :func:`realistic_resharding` makes moto's SplitShard and
MergeShards behave as the service does (see its docstring).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from operator import attrgetter
from typing import Any

import boto3
from awstest import CREDENTIALS, REGION, aws_endpoint, unique_name
from botocore.config import Config

from adpulse.transport.kinesis import KinesisTransport


def kinesis_client() -> Any:
    """A boto3 Kinesis client of the local server (no retries of its own)."""
    return boto3.client(
        "kinesis",
        region_name=REGION,
        endpoint_url=aws_endpoint(),
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


def kinesis_transport(
    partitions: int, prefix: str | None = None, **options: Any
) -> KinesisTransport:
    """A Kinesis transport on fresh streams (``prefix`` given: those streams)."""
    options.setdefault("client", kinesis_client())
    return KinesisTransport(prefix or unique_name("adpulse"), partitions, **options)


def kinesis_url(prefix: str, shards: int) -> str:
    """The ``transport_url`` of streams on the local server."""
    return f"kinesis://{prefix}?region={REGION}&shards={shards}&endpoint_url={aws_endpoint()}"


@contextmanager
def realistic_resharding() -> Iterator[None]:
    """Make moto's SplitShard and MergeShards behave as the service does.

    moto (5.x) moves a parent's records into its children with new sequence numbers, so a
    reader that had read part of the parent would read those records again, and it keeps
    putting records into the closed parent; the service keeps the parent's records in the
    closed parent (until retention), starts the children empty and puts only into open
    shards. The server runs in this process (ThreadedMotoServer), so patching its model
    class works.
    """
    from moto.kinesis.models import Shard
    from moto.kinesis.models import Stream as MotoStream

    def split_shard(self: MotoStream, shard_to_split: str, new_starting_hash_key: str) -> None:
        shard = self.shards[shard_to_split]
        start = int(new_starting_hash_key)
        if not shard.starting_hash < start < shard.ending_hash or not shard.is_open:
            raise ValueError(f"cannot split {shard_to_split} at {start}")
        last = sorted(self.shards.values(), key=attrgetter("_shard_id"))[-1]._shard_id
        first = Shard(last + 1, shard.starting_hash, start - 1, parent=shard.shard_id)
        second = Shard(last + 2, start, shard.ending_hash, parent=shard.shard_id)
        for child in (first, second):
            self.shards[child.shard_id] = child
        shard.is_open = False

    def merge_shards(self: MotoStream, shard_to_merge: str, adjacent_shard_to_merge: str) -> None:
        one, two = self.shards[shard_to_merge], self.shards[adjacent_shard_to_merge]
        if one.ending_hash + 1 != two.starting_hash:
            raise ValueError(f"{shard_to_merge} and {adjacent_shard_to_merge} are not adjacent")
        last = sorted(self.shards.values(), key=attrgetter("_shard_id"))[-1]._shard_id
        child = Shard(last + 1, one.starting_hash, two.ending_hash, one.shard_id, two.shard_id)
        self.shards[child.shard_id] = child
        one.is_open = two.is_open = False

    original_shard_for_key = MotoStream.get_shard_for_key

    def get_shard_for_key(self: MotoStream, partition_key: str, explicit_hash_key: str) -> Any:
        # moto puts into the first shard of the key's range, closed ones included.
        shard = original_shard_for_key(self, partition_key, explicit_hash_key)
        if shard is None or shard.is_open:
            return shard
        key = int(explicit_hash_key) if explicit_hash_key else None
        if key is None:
            raise NotImplementedError("resharding tests put with explicit hash keys")
        return next(
            s for s in self.shards.values() if s.is_open and s.starting_hash <= key <= s.ending_hash
        )

    saved = MotoStream.split_shard, MotoStream.merge_shards, MotoStream.get_shard_for_key
    MotoStream.split_shard = split_shard  # type: ignore[method-assign]
    MotoStream.merge_shards = merge_shards  # type: ignore[method-assign]
    MotoStream.get_shard_for_key = get_shard_for_key  # type: ignore[method-assign]
    try:
        yield
    finally:
        split, merge, shard_for_key = saved
        MotoStream.split_shard = split  # type: ignore[method-assign]
        MotoStream.merge_shards = merge  # type: ignore[method-assign]
        MotoStream.get_shard_for_key = shard_for_key  # type: ignore[method-assign]
