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
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlsplit

from adpulse.contracts import DEFAULT_MAX_RECORD_BYTES, Stream
from adpulse.transport.base import (
    Chunk,
    Consumer,
    Lag,
    OffsetOutOfRangeError,
    Producer,
    Transport,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

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
#: GetRecords calls one ``lag_bytes`` may make before it extrapolates.
LAG_SCAN_CALLS: Final = 4
#: How often a reader at the tip of a shard re-lists the shards to see it closed.
LIST_INTERVAL_SECONDS: Final = 1.0

_OFFSET = re.compile(r"^(shardId-[0-9]{12}):([0-9]{1,128})(?::([1-9][0-9]{0,9}))?$")
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{1,115}$")
_THROTTLED = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
        "KMSThrottlingException",
        "InternalFailure",
        "ServiceUnavailable",
    }
)


# Public helpers: names, partition mapping, offsets (also used by adpulse.aws) -------------


def stream_name(prefix: str, stream: Stream | str) -> str:
    """The Kinesis stream of one event type: ``PREFIX-impressions`` and so on."""
    return f"{prefix}-{Stream(stream).value}"


def partition_range(partition: int, partitions: int) -> tuple[int, int]:
    """The hash keys ``[start, end]`` of processor partition ``partition``: the
    ``partition``-th of ``partitions`` equal slices of the hash key space (the shards
    of a stream created with ``partitions`` shards have exactly these ranges)."""
    _check_partition(partition, partitions)
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


def _check_partition(partition: int, partitions: int) -> None:
    if not 0 <= partition < partitions:
        raise ValueError(
            f"partition {partition} does not exist: this log has partitions 0..{partitions - 1}"
        )


# Backoff ------------------------------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential backoff with full jitter (sleep a random time up to base x 2^attempt,
    capped), given up after ``deadline_seconds`` of consecutive failures."""

    base_seconds: float = 0.05
    cap_seconds: float = 5.0
    deadline_seconds: float = 60.0
    sleep: Callable[[float], None] = time.sleep
    attempt: int = 0
    started: float | None = None

    def reset(self) -> None:
        self.attempt = 0
        self.started = None

    def wait(self, what: str) -> None:
        """Sleep before the next attempt; ``TimeoutError`` once the deadline passed."""
        now = time.monotonic()
        if self.started is None:
            self.started = now
        if now - self.started > self.deadline_seconds:
            raise TimeoutError(
                f"{what} kept failing for {now - self.started:.0f} s; check the stream's "
                "shard limits (add shards) and the AWS endpoint, then restart"
            )
        delay = random.uniform(0, min(self.cap_seconds, self.base_seconds * 2**self.attempt))
        self.attempt += 1
        self.sleep(delay)


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


# The transport ------------------------------------------------------------------------------


class KinesisTransport(Transport):
    """A partitioned log on three Kinesis streams (see the module docstring).

    ``partitions``: the processor's partition count (independent of the shard count);
    ``shards``: the shard count of streams this creates; ``client``: a boto3 Kinesis
    client (made from ``region`` and ``endpoint_url`` when ``None``).
    """

    def __init__(
        self,
        prefix: str,
        partitions: int,
        *,
        region: str | None = None,
        shards: int | None = None,
        endpoint_url: str | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        retry_seconds: float = 60.0,
        connect_seconds: float = 10.0,
        read_interval: float = READ_INTERVAL_SECONDS,
        client: Any = None,
        create: bool = True,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        if not _PREFIX.match(prefix):
            raise ValueError(
                f"stream prefix {prefix!r} cannot name Kinesis streams: use 1 to 115 letters, "
                "digits, '_', '.' or '-'"
            )
        if max_record_bytes > MAX_RECORD_BYTES_LIMIT:
            raise ValueError(
                f"max_record_bytes {max_record_bytes} is too large for Kinesis: a framed "
                f"record must fit one 1 MiB Kinesis record; set it to at most "
                f"{MAX_RECORD_BYTES_LIMIT}"
            )
        self.prefix = prefix
        self.partitions = partitions
        self.shards = shards if shards is not None else partitions
        if self.shards < 1:
            raise ValueError(f"shards must be at least 1, got {self.shards}")
        self.max_record_bytes = max_record_bytes
        self.retry_seconds = retry_seconds
        self.read_interval = read_interval
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "kinesis",
                region_name=region,
                endpoint_url=endpoint_url,
                config=Config(
                    # Our own backoff (with jitter and a deadline) is the only retry loop.
                    retries={"max_attempts": 1, "mode": "standard"},
                    connect_timeout=connect_seconds,
                    read_timeout=max(connect_seconds, 30.0),
                ),
            )
        self.client = client
        self._listings: dict[Stream, tuple[float, list[ShardInfo]]] = {}
        if create:
            self.ensure_streams()

    def stream_name(self, stream: Stream) -> str:
        return stream_name(self.prefix, stream)

    def backoff(self) -> Backoff:
        return Backoff(deadline_seconds=self.retry_seconds)

    def call(self, what: str, operation: Callable[[], T]) -> T:
        """Run one API call, retrying throttling and lost connections with backoff."""
        from botocore.exceptions import ClientError, ConnectionError, ReadTimeoutError

        backoff = self.backoff()
        while True:
            try:
                return operation()
            except ClientError as exc:
                if _error_code(exc) not in _THROTTLED:
                    raise
                log.debug("%s throttled (%s); backing off", what, _error_code(exc))
                backoff.wait(what)
            except (ConnectionError, ReadTimeoutError) as exc:
                log.warning("%s: %s; retrying", what, exc)
                backoff.wait(what)

    def ensure_streams(self) -> None:
        """Create the missing streams with ``shards`` shards; wait until all are ACTIVE."""
        from botocore.exceptions import ClientError

        deadline = time.monotonic() + max(self.retry_seconds, 30.0)
        for stream in Stream:
            name = self.stream_name(stream)
            while True:
                try:
                    summary = self.call(
                        f"describing {name}",
                        partial(self.client.describe_stream_summary, StreamName=name),
                    )
                except ClientError as exc:
                    if _error_code(exc) != "ResourceNotFoundException":
                        raise
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"Kinesis stream {name} was created but is not found; check it "
                            "in the AWS console and retry"
                        ) from exc
                    self._create(name)
                    time.sleep(0.1)
                    continue
                status = summary["StreamDescriptionSummary"]["StreamStatus"]
                if status in ("ACTIVE", "UPDATING"):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"Kinesis stream {name} is still {status}; wait and retry, or check "
                        "it in the AWS console"
                    )
                time.sleep(0.5)

    def _create(self, name: str) -> None:
        """CreateStream (only for a missing stream: existing ones need no such right)."""
        from botocore.exceptions import ClientError

        try:
            self.call(
                f"creating {name}",
                partial(self.client.create_stream, StreamName=name, ShardCount=self.shards),
            )
            log.info("created Kinesis stream %s with %d shards", name, self.shards)
        except ClientError as exc:
            if _error_code(exc) != "ResourceInUseException":  # created meanwhile
                raise

    def list_shards(self, stream: Stream, *, max_age: float = 0.0) -> list[ShardInfo]:
        """Every shard of the stream (open and closed), re-listed if older than ``max_age``."""
        stream = Stream(stream)
        cached = self._listings.get(stream)
        now = time.monotonic()
        if cached is not None and now - cached[0] <= max_age:
            return cached[1]
        shards: list[ShardInfo] = []
        token: str | None = None
        name = self.stream_name(stream)
        while True:
            kwargs: dict[str, Any] = {"NextToken": token} if token else {"StreamName": name}
            page = self.call(
                f"listing the shards of {name}",
                partial(self.client.list_shards, **kwargs),
            )
            shards.extend(ShardInfo.from_api(s) for s in page.get("Shards", []))
            token = page.get("NextToken")
            if not token:
                break
        self._listings[stream] = (now, shards)
        return shards

    def lineage(self, stream: Stream, partition: int, *, max_age: float = 0.0) -> list[ShardInfo]:
        """The shards of ``partition`` in ``stream``, oldest first (:func:`partition_lineage`)."""
        return partition_lineage(
            self.list_shards(stream, max_age=max_age), partition, self.partitions
        )

    def shard_report(
        self,
        committed: Mapping[tuple[Stream, int], str | None],
        owners: Mapping[int, str] | None = None,
    ) -> list[dict[str, Any]]:
        """One row per stream and partition: the shard its committed offset is in (the
        one its owner reads next), the shard's state, the partition's owner (``owners``:
        partition -> worker, from the leases) and the iterator age there
        (``millis_behind_latest``: how far the committed position trails the shard's
        newest record, by one GetRecords of a single record; ``None`` when unknown)."""
        rows: list[dict[str, Any]] = []
        for stream in Stream:
            for partition in range(self.partitions):
                offset = committed.get((stream, partition))
                lineage = self.lineage(stream, partition, max_age=LIST_INTERVAL_SECONDS)
                kwargs: dict[str, Any] = {"StreamName": self.stream_name(stream)}
                shard: ShardInfo | None = lineage[0] if lineage else None
                if offset is not None:
                    parsed = parse_offset(offset, stream, partition)
                    shard = next((s for s in lineage if s.shard_id == parsed.shard_id), None)
                    kwargs["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
                    kwargs["StartingSequenceNumber"] = str(parsed.sequence_number)
                else:
                    kwargs["ShardIteratorType"] = "TRIM_HORIZON"
                behind: int | None = None
                if shard is not None:
                    kwargs["ShardId"] = shard.shard_id
                    what = f"the iterator age of {kwargs['StreamName']} {shard.shard_id}"
                    iterator = self.call(what, partial(self.client.get_shard_iterator, **kwargs))
                    answer = self.call(
                        what,
                        partial(
                            self.client.get_records,
                            ShardIterator=iterator["ShardIterator"],
                            Limit=1,
                        ),
                    )
                    behind = int(answer.get("MillisBehindLatest", 0))
                rows.append(
                    {
                        "stream": stream.value,
                        "partition": partition,
                        "shard": None if shard is None else shard.shard_id,
                        "state": None if shard is None else ("closed" if shard.closed else "open"),
                        "owner": (owners or {}).get(partition),
                        "committed_offset": offset,
                        "millis_behind_latest": behind,
                    }
                )
        return rows

    def producer(self) -> KinesisProducer:
        return KinesisProducer(self)

    def consumer(self) -> KinesisConsumer:
        return KinesisConsumer(self)

    def delete_streams(self) -> None:
        """Delete the three streams (for tests and benchmarks that made them)."""
        for stream in Stream:
            try:
                self.client.delete_stream(
                    StreamName=self.stream_name(stream), EnforceConsumerDeletion=True
                )
            except Exception as exc:  # noqa: BLE001 - best effort clean-up
                log.debug("could not delete %s: %s", self.stream_name(stream), exc)

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


# Producer -----------------------------------------------------------------------------------


def aggregates(framed: bytes, limit: int = AGGREGATE_BYTES) -> Iterator[bytes]:
    """Cut framed lines into pieces of whole lines of at most ``limit`` bytes (a longer
    line alone)."""
    start = 0
    while start < len(framed):
        end = start + limit
        if end >= len(framed):
            yield framed[start:]
            return
        cut = framed.rfind(b"\n", start, end)
        if cut < 0:
            cut = framed.index(b"\n", start)
        yield framed[start : cut + 1]
        start = cut + 1


class KinesisProducer(Producer):
    """Puts framed lines as aggregates with PutRecords; durable when ``send`` returns."""

    _transport: KinesisTransport

    def __init__(self, transport: KinesisTransport) -> None:
        self._transport = transport
        self._pending: dict[Stream, dict[int, deque[bytes]]] = {}
        #: Records (aggregates) put, and failed records that were retried.
        self.records_put = 0
        self.records_retried = 0

    def _append(self, stream: Stream, partition: int, framed: bytes) -> None:
        _check_partition(partition, self.partitions)
        queue = self._pending.setdefault(Stream(stream), {}).setdefault(partition, deque())
        queue.extend(aggregates(framed))

    def send(self, stream: Stream, payloads: Sequence[bytes], keys: Sequence[str | None]) -> None:
        super().send(stream, payloads, keys)
        self.flush()

    def send_framed(self, stream: Stream, partition: int, framed: bytes, records: int) -> None:
        super().send_framed(stream, partition, framed, records)
        self.flush()

    def flush(self) -> None:
        for stream in list(self._pending):
            self._put_all(stream, self._pending.pop(stream))

    def _put_all(self, stream: Stream, queues: dict[int, deque[bytes]]) -> None:
        """PutRecords until every queue is empty, at most one aggregate per partition in a
        request (the order argument of the module docstring)."""
        transport = self._transport
        name = transport.stream_name(stream)
        keys = {p: str(partition_hash_key(p, self.partitions)) for p in queues}
        backoff = transport.backoff()
        while any(queues.values()):
            batch: list[int] = []
            size = 0
            for partition, queue in queues.items():
                if not queue:
                    continue
                cost = len(queue[0]) + len(partition_key(partition))
                if batch and (
                    len(batch) == PUT_RECORDS_MAX_RECORDS or size + cost > PUT_RECORDS_MAX_BYTES
                ):
                    break
                batch.append(partition)
                size += cost
            entries = [
                {
                    "Data": queues[p][0],
                    "PartitionKey": partition_key(p),
                    "ExplicitHashKey": keys[p],
                }
                for p in batch
            ]
            response = transport.call(
                f"PutRecords to {name}",
                partial(transport.client.put_records, StreamName=name, Records=entries),
            )
            failed = 0
            for partition, result in zip(batch, response["Records"], strict=True):
                if result.get("ErrorCode"):
                    failed += 1
                else:
                    queues[partition].popleft()
            self.records_put += len(batch) - failed
            if failed:
                self.records_retried += failed
                backoff.wait(f"PutRecords to {name} ({failed} of {len(batch)} records failed)")
            else:
                backoff.reset()


# Consumer -----------------------------------------------------------------------------------


@dataclass
class _Record:
    """A Kinesis record of the partition being read, with its lines not yet returned."""

    shard_id: str
    sequence_number: int
    lines: list[bytes]
    taken: int = 0
    """Lines of the record already returned (``lines`` still holds them all)."""
    arrival: float | None = None
    """``ApproximateArrivalTimestamp`` in epoch seconds (``None``: the service sent none)."""


@dataclass
class _Reading:
    """Where one consumer reads one partition of one stream."""

    offset: str | None
    """The offset the last chunk ended at (what the next poll passes as ``after``)."""
    lineage_index: int
    shard_id: str
    iterator: str | None
    cursor: int | None
    """Sequence number of the last record of the shard fetched (``None``: none yet)."""
    skip: int = 0
    """Lines to drop from the first record fetched (offsets inside an aggregate)."""
    at_sequence: int | None = None
    shard_closed: bool = False
    foreign_partition: int | None = None
    """Where records of this shard not put by adpulse go (see ``_partition_of``)."""
    """The shard is closed (split or merged): once read to its end, its child follows."""
    shard_ended: bool = False
    buffer: deque[_Record] = field(default_factory=deque)
    last_read: float = 0.0


class KinesisConsumer(Consumer):
    """Reads one partition's lineage of shards, filtering other partitions' records."""

    def __init__(self, transport: KinesisTransport) -> None:
        self._transport = transport
        self._readings: dict[tuple[Stream, int], _Reading] = {}

    # -- positions ----------------------------------------------------------------------

    def _start(self, stream: Stream, partition: int, after: str | None) -> _Reading | None:
        """A reading positioned at ``after``; ``None`` when the partition has no shard yet."""
        transport = self._transport
        parsed = None if after is None else parse_offset(after, stream, partition)
        # A listing of the last second will do unless it lacks what we look for.
        lineage = transport.lineage(stream, partition, max_age=LIST_INTERVAL_SECONDS)
        if parsed is None and not lineage:
            lineage = transport.lineage(stream, partition)
        if parsed is None:
            if not lineage:
                return None
            return _Reading(None, 0, lineage[0].shard_id, None, None)
        index = next((i for i, s in enumerate(lineage) if s.shard_id == parsed.shard_id), None)
        if index is None:
            lineage = transport.lineage(stream, partition)
            index = next((i for i, s in enumerate(lineage) if s.shard_id == parsed.shard_id), None)
        if index is None:
            listed = {s.shard_id for s in transport.list_shards(stream)}
            why = (
                "which does not hold this partition (an offset of another partition or "
                "stream, or a stream re-created since)"
                if parsed.shard_id in listed
                else "which the stream no longer lists (expired by retention, or the stream "
                "was re-created)"
            )
            raise OffsetOutOfRangeError(
                f"offset {after} of {stream} partition {partition} is beyond the end of the "
                f"partition's shards in {transport.stream_name(stream)}: it names shard "
                f"{parsed.shard_id}, {why}. Reset the consumer's checkpoint, or point "
                "transport_url at the original streams."
            )
        reading = _Reading(after, index, parsed.shard_id, None, parsed.sequence_number)
        if parsed.lines is not None:
            reading.cursor = None
            reading.at_sequence = parsed.sequence_number
            reading.skip = parsed.lines
        return reading

    def _iterator(self, stream: Stream, reading: _Reading) -> str | None:
        transport = self._transport
        name = transport.stream_name(stream)
        kwargs: dict[str, Any] = {"StreamName": name, "ShardId": reading.shard_id}
        if reading.at_sequence is not None:
            kwargs["ShardIteratorType"] = "AT_SEQUENCE_NUMBER"
            kwargs["StartingSequenceNumber"] = str(reading.at_sequence)
        elif reading.cursor is not None:
            kwargs["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            kwargs["StartingSequenceNumber"] = str(reading.cursor)
        else:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        response = transport.call(
            f"GetShardIterator of {name} {reading.shard_id}",
            lambda: transport.client.get_shard_iterator(**kwargs),
        )
        iterator: str | None = response.get("ShardIterator")
        return iterator

    def _fetch(
        self,
        stream: Stream,
        partition: int,
        reading: _Reading,
        list_max_age: float = LIST_INTERVAL_SECONDS,
    ) -> int:
        """One GetRecords into the buffer; returns MillisBehindLatest (0 at the tip).

        Renews an expired iterator, waits out the per-shard read rate and backs off on
        throttling; marks the shard ended when it is closed and read to its end.
        """
        from botocore.exceptions import ClientError

        transport = self._transport
        name = transport.stream_name(stream)
        while True:
            wait = reading.last_read + transport.read_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if reading.iterator is None:
                reading.iterator = self._iterator(stream, reading)
            reading.last_read = time.monotonic()
            try:
                iterator = reading.iterator
                response = transport.call(
                    f"GetRecords of {name} {reading.shard_id}",
                    partial(transport.client.get_records, ShardIterator=iterator),
                )
            except ClientError as exc:
                if _error_code(exc) == "ExpiredIteratorException":
                    reading.iterator = None  # renewed from the cursor on the next turn
                    continue
                raise
            break
        reading.iterator = response.get("NextShardIterator")
        behind = int(response.get("MillisBehindLatest", 0))
        records = response.get("Records", [])
        for record in records:
            sequence = int(record["SequenceNumber"])
            reading.cursor = sequence
            arrival = record.get("ApproximateArrivalTimestamp")
            skip = 0
            if reading.at_sequence is not None:
                if sequence != reading.at_sequence:
                    raise OffsetOutOfRangeError(
                        f"record {reading.at_sequence} of {name} {reading.shard_id} is gone "
                        "(expired by retention); reset the consumer's checkpoint"
                    )
                reading.at_sequence = None
                skip = reading.skip
                reading.skip = 0
            if self._partition_of(stream, reading, record["PartitionKey"]) != partition:
                continue
            lines = _lines(record["Data"])
            if skip >= len(lines):
                continue
            reading.buffer.append(
                _Record(
                    reading.shard_id,
                    sequence,
                    lines,
                    skip,
                    None if arrival is None else arrival.timestamp(),
                )
            )
        if reading.iterator is None:
            reading.shard_ended = True
        elif behind == 0:
            # At the tip of the shard. The service ends a closed shard with a null
            # NextShardIterator; without one (moto), an empty answer at the tip of a
            # closed shard, or its ending sequence number read, ends it too.
            shards = transport.list_shards(stream, max_age=list_max_age)
            shard = next((s for s in shards if s.shard_id == reading.shard_id), None)
            if shard is not None and shard.closed:
                reading.shard_closed = True
                ending = shard.ending_sequence_number
                read_all = ending is not None and (reading.cursor or 0) >= ending
                if not records or read_all:
                    reading.shard_ended = True
        return behind

    def _partition_of(self, stream: Stream, reading: _Reading, key: str) -> int:
        """The partition of a record read from the reading's shard.

        A record another application put (its key is no partition number of ours) goes
        to the lowest partition the shard holds: one reader gets it, and the processor
        dead-letters what it cannot read instead of the poll failing.
        """
        if key.isascii() and key.isdigit() and int(key) < self._transport.partitions:
            return int(key)
        if reading.foreign_partition is None:
            shards = self._transport.list_shards(stream, max_age=LIST_INTERVAL_SECONDS)
            shard = next(s for s in shards if s.shard_id == reading.shard_id)
            held = shard_partitions(
                shard.starting_hash_key, shard.ending_hash_key, self._transport.partitions
            )
            reading.foreign_partition = held[0] if held else -1
            log.warning(
                "%s %s holds records not put by adpulse (partition key %r); they go to "
                "partition %d",
                self._transport.stream_name(stream),
                reading.shard_id,
                key[:40],
                reading.foreign_partition,
            )
        return reading.foreign_partition

    def _next_shard(self, stream: Stream, partition: int, reading: _Reading) -> bool:
        """Move an ended reading to the next shard of the lineage; ``False`` if none yet."""
        lineage = self._transport.lineage(stream, partition)
        index = next((i for i, s in enumerate(lineage) if s.shard_id == reading.shard_id), None)
        if index is None or index + 1 >= len(lineage):
            return False
        child = lineage[index + 1]
        reading.lineage_index = index + 1
        reading.shard_id = child.shard_id
        reading.iterator = None
        reading.cursor = None
        reading.at_sequence = None
        reading.shard_ended = False
        reading.shard_closed = False
        reading.foreign_partition = None
        reading.last_read = 0.0
        return True

    # -- the contract -------------------------------------------------------------------

    def poll(
        self, stream: Stream, partition: int, after: str | None, max_bytes: int
    ) -> Chunk | None:
        """Whole lines after ``after``: about ``max_bytes``, at least one if any."""
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        stream = Stream(stream)
        _check_partition(partition, self._transport.partitions)
        key = (stream, partition)
        reading = self._readings.get(key)
        if reading is None or reading.offset != after:
            reading = self._start(stream, partition, after)
            if reading is None:
                return None
            self._readings[key] = reading
        while not reading.buffer:
            if reading.shard_ended:
                if not self._next_shard(stream, partition, reading):
                    return None
                continue
            behind = self._fetch(stream, partition, reading)
            if not reading.buffer and behind == 0 and not reading.shard_closed:
                return None
        parts: list[bytes] = []
        size = 0
        end: str | None = None
        while reading.buffer:
            record = reading.buffer[0]
            first = record.taken
            while record.taken < len(record.lines):
                line = record.lines[record.taken]
                if parts and size + len(line) > max_bytes:
                    break
                parts.append(line)
                size += len(line)
                record.taken += 1
            if record.taken == first:
                break  # the budget ended with the previous record
            done = record.taken == len(record.lines)
            end = format_offset(
                record.shard_id, record.sequence_number, None if done else record.taken
            )
            if not done:
                break
            reading.buffer.popleft()
        assert end is not None
        reading.offset = end
        return Chunk(
            stream=stream,
            partition=partition,
            start_offset=after,
            end_offset=end,
            data=b"".join(parts),
            records=len(parts),
        )

    def lag_bytes(self, stream: Stream, partition: int, after: str | None) -> int:
        """Bytes of this partition after ``after`` (see :meth:`lag`)."""
        return self.lag(stream, partition, after).bytes

    def lag(self, stream: Stream, partition: int, after: str | None) -> Lag:
        """Bytes, records and age of this partition after ``after``.

        Counted exactly when they are read by at most :data:`LAG_SCAN_CALLS` GetRecords
        calls. Beyond, bytes and records are what was read plus the rest estimated from
        MillisBehindLatest at the rates of what was read (the service tells how far
        behind in time, not in bytes or records; see docs/kinesis.md), and never 0
        (callers take 0 as caught up). The age runs from the arrival of the oldest record
        behind to the tip: the arrivals read, plus MillisBehindLatest of the last call.
        """
        stream = Stream(stream)
        _check_partition(partition, self._transport.partitions)
        reading = self._start(stream, partition, after)
        if reading is None:
            return Lag(0, 0, 0.0)
        size = records = 0
        first: float | None = None
        last: float | None = None
        behind = 0
        at_tip = False
        for _ in range(LAG_SCAN_CALLS):
            while reading.shard_ended:
                if not self._next_shard(stream, partition, reading):
                    at_tip = True
                    break
            if at_tip:
                break
            behind = self._fetch(stream, partition, reading, list_max_age=0.0)
            for record in reading.buffer:
                size += sum(len(line) for line in record.lines[record.taken :])
                records += len(record.lines) - record.taken
                if record.arrival is not None:
                    first = record.arrival if first is None else first
                    last = record.arrival
            reading.buffer.clear()
            if behind == 0 and not reading.shard_closed:
                at_tip = True
                break
        span = 0.0 if first is None or last is None else last - first
        if at_tip:
            return Lag(size, records, span if records else 0.0)
        seconds = span + behind / 1000
        if span <= 0:
            return Lag(max(1, size), max(1, records), seconds)
        ahead = behind / (1000 * span)
        rest_bytes, rest_records = int(size * ahead), int(records * ahead)
        return Lag(max(1, size + rest_bytes), max(1, records + rest_records), seconds)


def _lines(data: bytes) -> list[bytes]:
    """The framed lines of one aggregate, each with its ``\\n``."""
    if not data:
        return []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line + b"\n" for line in lines]


# Opening --------------------------------------------------------------------------------------


def open_kinesis_transport(
    url: str,
    partitions: int,
    max_record_bytes: int,
    *,
    retry_seconds: float = 60.0,
    connect_seconds: float = 10.0,
    setting: str = "transport_url",
    create: bool = True,
) -> KinesisTransport:
    """Open ``kinesis://PREFIX?region=REGION&shards=N&endpoint_url=URL``; one clear error
    naming the setting when the URL is malformed."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    known = {"region", "shards", "endpoint_url", "read_interval"}
    unknown = sorted(set(query) - known)
    form = "kinesis://PREFIX?region=REGION&shards=N[&endpoint_url=URL]"
    if parts.scheme != "kinesis" or not parts.netloc or parts.path not in ("", "/") or unknown:
        raise ValueError(
            f"Invalid `{setting}` {url!r}: expected {form}"
            + (f" (unknown parameters: {', '.join(unknown)})" if unknown else "")
        )
    try:
        shards = int(query["shards"]) if "shards" in query else None
        read_interval = float(query.get("read_interval", READ_INTERVAL_SECONDS))
    except ValueError:
        raise ValueError(f"Invalid `{setting}` {url!r}: shards must be a whole number") from None
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return KinesisTransport(
            parts.netloc,
            partitions,
            region=query.get("region"),
            shards=shards,
            endpoint_url=query.get("endpoint_url"),
            max_record_bytes=max_record_bytes,
            retry_seconds=retry_seconds,
            connect_seconds=connect_seconds,
            read_interval=read_interval,
            create=create,
        )
    except (BotoCoreError, ClientError, TimeoutError) as exc:
        raise ValueError(
            f"The Kinesis streams of `{setting}` ({url}) cannot be opened: "
            f"{str(exc).rstrip('.')}. Give the "
            "region (?region=, or AWS_REGION), AWS credentials (AWS_PROFILE, or "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an instance role) allowed "
            f"kinesis:CreateStream/DescribeStreamSummary/ListShards/PutRecords/GetRecords, "
            f"or fix `{setting}` (ADPULSE_{setting.upper()})."
        ) from exc


__all__: Sequence[str] = [
    "HASH_KEY_SPACE",
    "KinesisConsumer",
    "KinesisOffset",
    "KinesisProducer",
    "KinesisTransport",
    "ShardInfo",
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
