"""The Kinesis Data Streams transport (boto3): ``kinesis://PREFIX?region=R&shards=N``.

One Kinesis stream per event type (:func:`stream_name`: ``PREFIX-impressions``,
``PREFIX-clicks``, ``PREFIX-conversions``), created with ``N`` shards when missing (and
waited for until ACTIVE) or used as they are. ``endpoint_url=`` points boto3 at a local
API server (moto in the tests). The design is in ``docs/kinesis.md``; in short:

**Partitions are hash keys, not shards.** The processor's contract is a fixed number of
partitions per stream, ``partition = xxh64(user_id) % partitions``
(:func:`~adpulse.transport.framing.partition_of`), the same for every stream. Every
Kinesis record of processor partition ``p`` is put with the *explicit hash key*
:func:`partition_hash_key` ``(p)`` (the middle of the ``p``-th of ``partitions`` equal
slices of the 128-bit hash key space), on all three streams. So at any moment exactly one
open shard of each stream holds partition ``p`` (the one whose hash key range contains
that key), a user's impressions, clicks and conversions all belong to partition ``p``, and
the worker holding the partition lease of ``p`` reads them all. After a split or merge,
the key lies in exactly one child: partition ``p``'s log is the *lineage* of shards that
contain its key (:func:`partition_lineage`), read parent to its end, then the child.

**Records are aggregates.** One Kinesis record holds whole framed lines of one partition
(:mod:`adpulse.transport.framing`; its data is NDJSON, up to :data:`AGGREGATE_BYTES`),
its partition key is the partition number (:func:`partition_key`, read back with
:func:`record_partition`). The 1,000 records/s write limit of a shard then never binds
(1 MiB/s does), and an aggregate is written or refused as a whole.

**Offsets** (:func:`format_offset`, :func:`parse_offset`): ``SHARD_ID:SEQUENCE`` names the
end of a whole Kinesis record (the form of a Lambda event's ``eventID``);
``SHARD_ID:SEQUENCE:N`` the point after its first ``N`` lines, when a chunk ended inside an
aggregate. Reading resumes ``AFTER_SEQUENCE_NUMBER`` (or ``AT_SEQUENCE_NUMBER`` and skips
``N`` lines).

**Order.** A ``PutRecords`` request carries at most one aggregate per partition, and the
next aggregate of a partition is sent only after the previous one succeeded: retrying just
the failed records (``FailedRecordCount``) can then never put a later record of a
partition before an earlier one. Throttling and failed records are retried with
exponential backoff and full jitter, for ``retry_seconds``.

The package: :mod:`.layout` (names, hash keys, offsets, lineage, service limits),
:mod:`.retry` (throttling and backoff), :mod:`.transport` (the streams and the client),
:mod:`.producer` and :mod:`.consumer`.
"""

from __future__ import annotations

from collections.abc import Sequence

from adpulse.transport.kinesis.consumer import KinesisConsumer
from adpulse.transport.kinesis.layout import (
    AGGREGATE_BYTES,
    HASH_KEY_SPACE,
    MAX_RECORD_BYTES_LIMIT,
    PUT_RECORDS_MAX_BYTES,
    PUT_RECORDS_MAX_RECORDS,
    RECORD_MAX_BYTES,
    KinesisOffset,
    ShardInfo,
    format_offset,
    parse_offset,
    partition_hash_key,
    partition_key,
    partition_lineage,
    partition_range,
    record_partition,
    sequence_after,
    shard_partitions,
    stream_name,
)
from adpulse.transport.kinesis.producer import KinesisProducer, aggregates
from adpulse.transport.kinesis.retry import Backoff
from adpulse.transport.kinesis.transport import KinesisTransport, open_kinesis_transport

__all__: Sequence[str] = [
    "AGGREGATE_BYTES",
    "HASH_KEY_SPACE",
    "MAX_RECORD_BYTES_LIMIT",
    "PUT_RECORDS_MAX_BYTES",
    "PUT_RECORDS_MAX_RECORDS",
    "RECORD_MAX_BYTES",
    "Backoff",
    "KinesisConsumer",
    "KinesisOffset",
    "KinesisProducer",
    "KinesisTransport",
    "ShardInfo",
    "aggregates",
    "format_offset",
    "open_kinesis_transport",
    "parse_offset",
    "partition_hash_key",
    "partition_key",
    "partition_lineage",
    "partition_range",
    "record_partition",
    "sequence_after",
    "shard_partitions",
    "stream_name",
]
