"""How adpulse's partitions and offsets map onto Kinesis: stream names, partitions as
explicit hash keys, offsets inside aggregates, a partition's lineage of shards, and the
service limits they respect (see the package docstring).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from adpulse.contracts import Stream

#: Size of the hash key space of a Kinesis stream (keys are 0 .. 2**128 - 1).
HASH_KEY_SPACE: Final = 1 << 128
#: Service limits of PutRecords (per request: records, bytes; per record: data + key).
PUT_RECORDS_MAX_RECORDS: Final = 500
PUT_RECORDS_MAX_BYTES: Final = 5 << 20
RECORD_MAX_BYTES: Final = 1 << 20
#: Framed lines per Kinesis record: at most this many bytes of data (whole lines).
AGGREGATE_BYTES: Final = RECORD_MAX_BYTES - 1024
#: The largest ``max_record_bytes`` whose framed (possibly base64-escaped) line still fits
#: one Kinesis record: 4/3 of it plus the escape byte and the newline.
MAX_RECORD_BYTES_LIMIT: Final = 786_000
#: The fewest milliseconds between two GetRecords calls on one shard (5 reads/s a shard).
READ_INTERVAL_SECONDS: Final = 0.2
#: How often a reader at the tip of a shard re-lists the shards to see it closed.
LIST_INTERVAL_SECONDS: Final = 1.0

_OFFSET = re.compile(r"^(shardId-[0-9]{12}):([0-9]{1,128})(?::([1-9][0-9]{0,9}))?$")
PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,115}$")


def stream_name(prefix: str, stream: Stream | str) -> str:
    """The Kinesis stream of one event type: ``PREFIX-impressions`` and so on."""
    return f"{prefix}-{Stream(stream).value}"


def partition_range(partition: int, partitions: int) -> tuple[int, int]:
    """The hash keys ``[start, end]`` of processor partition ``partition``: the
    ``partition``-th of ``partitions`` equal slices of the hash key space (the shards
    of a stream created with ``partitions`` shards have exactly these ranges)."""
    check_partition(partition, partitions)
    start = partition * HASH_KEY_SPACE // partitions
    end = (partition + 1) * HASH_KEY_SPACE // partitions - 1
    return start, end


def partition_hash_key(partition: int, partitions: int) -> int:
    """The explicit hash key every record of ``partition`` is put with: the middle of
    :func:`partition_range`, so that shards split evenly keep it away from their edges."""
    start, end = partition_range(partition, partitions)
    return (start + end) // 2


def partition_key(partition: int) -> str:
    """The partition key of the records of one processor partition: its number.

    The routing is done by the explicit hash key; the key lets a reader of a shard that
    holds several partitions (fewer shards than partitions, or after a merge) tell them
    apart, since GetRecords does not return the hash key.
    """
    return str(partition)


def record_partition(key: str) -> int:
    """The processor partition of a record read back, from its partition key."""
    try:
        return int(key)
    except ValueError:
        raise ValueError(
            f"partition key {key!r} was not written by the adpulse Kinesis producer (its keys "
            "are processor partition numbers); does another application write this stream?"
        ) from None


def shard_partitions(
    starting_hash_key: int | str, ending_hash_key: int | str, partitions: int
) -> list[int]:
    """The processor partitions whose records a shard with this hash key range holds."""
    start, end = int(starting_hash_key), int(ending_hash_key)
    return [p for p in range(partitions) if start <= partition_hash_key(p, partitions) <= end]


@dataclass(frozen=True, slots=True)
class KinesisOffset:
    """A parsed offset: after the first ``lines`` lines of record ``sequence_number`` of
    ``shard_id`` (``lines=None``: after the whole record)."""

    shard_id: str
    sequence_number: int
    lines: int | None = None

    def __str__(self) -> str:
        return format_offset(self.shard_id, self.sequence_number, self.lines)


def format_offset(shard_id: str, sequence_number: int | str, lines: int | None = None) -> str:
    """``SHARD_ID:SEQUENCE`` (after a whole record) or ``SHARD_ID:SEQUENCE:N``."""
    base = f"{shard_id}:{int(sequence_number)}"
    return base if lines is None else f"{base}:{lines}"


def parse_offset(
    offset: str, stream: Stream | str = "", partition: int | None = None
) -> KinesisOffset:
    """Undo :func:`format_offset`; ``ValueError`` saying the expected form otherwise."""
    match = _OFFSET.match(offset)
    if match is None:
        where = f" ({stream} partition {partition})" if partition is not None else ""
        raise ValueError(
            f"{offset!r} is not an offset of the Kinesis transport{where}: offsets are "
            "'shardId-000000000001:SEQUENCE_NUMBER[:LINES]', returned as Chunk.end_offset"
        )
    lines = match[3]
    return KinesisOffset(match[1], int(match[2]), int(lines) if lines else None)


def sequence_after(offset: str, shard_id: str, sequence_number: int | str) -> bool:
    """Whether the whole record ``sequence_number`` of ``shard_id`` lies after ``offset``,
    when both are in the same shard (sequence numbers order records within a shard only;
    across shards, order follows the lineage: see :func:`partition_lineage`)."""
    parsed = parse_offset(offset)
    if parsed.shard_id != shard_id:
        raise ValueError(f"offset {offset!r} is not in shard {shard_id}")
    seq = int(sequence_number)
    return seq > parsed.sequence_number or (
        seq == parsed.sequence_number and parsed.lines is not None
    )


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """One shard as ListShards describes it."""

    shard_id: str
    starting_hash_key: int
    ending_hash_key: int
    parents: tuple[str, ...]
    closed: bool
    ending_sequence_number: int | None = None
    """Set when the shard is closed: no record of it has a higher sequence number."""

    @classmethod
    def from_api(cls, shard: dict[str, Any]) -> ShardInfo:
        hashes = shard["HashKeyRange"]
        ending = shard.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
        parents = tuple(
            shard[k] for k in ("ParentShardId", "AdjacentParentShardId") if shard.get(k)
        )
        return cls(
            shard_id=shard["ShardId"],
            starting_hash_key=int(hashes["StartingHashKey"]),
            ending_hash_key=int(hashes["EndingHashKey"]),
            parents=parents,
            closed=ending is not None,
            ending_sequence_number=None if ending is None else int(ending),
        )

    def holds(self, hash_key: int) -> bool:
        return self.starting_hash_key <= hash_key <= self.ending_hash_key


def partition_lineage(
    shards: Sequence[ShardInfo], partition: int, partitions: int
) -> list[ShardInfo]:
    """The shards that hold (or held) ``partition``, oldest first: its log, in order.

    Exactly one open shard holds the partition's hash key at any time; when it is split or
    merged, the child holding the key continues it. A shard whose parent holding the key
    is no longer listed (expired by retention) starts the lineage.
    """
    key = partition_hash_key(partition, partitions)
    holding = {s.shard_id: s for s in shards if s.holds(key)}
    successor: dict[str | None, ShardInfo] = {}
    for shard in holding.values():
        parent = next((p for p in shard.parents if p in holding), None)
        successor[parent] = shard
    lineage: list[ShardInfo] = []
    current = successor.get(None)
    while current is not None:
        lineage.append(current)
        current = successor.get(current.shard_id)
    return lineage


def check_partition(partition: int, partitions: int) -> None:
    if not 0 <= partition < partitions:
        raise ValueError(
            f"partition {partition} does not exist: this log has partitions 0..{partitions - 1}"
        )
