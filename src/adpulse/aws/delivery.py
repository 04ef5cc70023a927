"""What a Kinesis event-source mapping hands the consumer Lambda, as the processor reads it.

An invocation carries the records of one shard of one stream (``Records``: base64
``kinesis.data``, ``kinesis.sequenceNumber``, ``kinesis.partitionKey``, the stream in
``eventSourceARN``, the shard in ``eventID``). :func:`decode_event` turns them into
:class:`DeliveredRecord` values, each in its processor partition, the way the Kinesis
transport wrote them (:mod:`adpulse.transport.kinesis`: one record is an aggregate of
framed lines of one partition, its partition key is that partition's number).

:class:`DeliveryTransport` is a read-only :class:`~adpulse.transport.base.Transport`
over the delivery in hand: the processor polls it like any log, from its committed
offsets (the Kinesis transport's ``SHARD_ID:SEQUENCE`` form), so a record at or below
the committed sequence number of its shard is never handed out again, and a retried
delivery changes nothing. Across shards (after a split or merge), order is the
partition's shard lineage (:meth:`~adpulse.transport.kinesis.KinesisTransport.lineage`):
the event-source mapping, too, delivers a parent shard to its end before its children.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adpulse.contracts import Stream
from adpulse.transport import framing
from adpulse.transport.base import Chunk, Consumer, Producer, Transport
from adpulse.transport.kinesis import (
    format_offset,
    parse_offset,
    record_partition,
    sequence_after,
    stream_name,
)

#: The shard ids of a partition's lineage in one stream, oldest first; the third
#: argument asks for a fresh listing rather than a cached one.
Lineage = Callable[[Stream, int, bool], Sequence[str]]


class DeliveryError(ValueError):
    """An event the consumer cannot read: not from this stack's streams, or malformed."""


@dataclass(frozen=True, slots=True)
class DeliveredRecord:
    """One Kinesis record of a delivery."""

    stream: Stream
    shard_id: str
    sequence_number: str
    partition: int
    #: Framed lines (each ending in ``\\n``), as the Kinesis producer put them.
    data: bytes

    @property
    def offset(self) -> str:
        """The offset just after this whole record."""
        return format_offset(self.shard_id, self.sequence_number)


def decode_event(
    event: Mapping[str, Any],
    prefix: str,
    partitions: int,
    foreign_partition: Callable[[Stream, str], int] = lambda stream, shard_id: 0,
) -> list[DeliveredRecord]:
    """The records of a Kinesis event-source-mapping event, in delivery order.

    ``prefix``: the streams' prefix (``PREFIX-clicks`` ...); a record of another stream
    raises :class:`DeliveryError` (the mapping points at a stream this function does not
    own). A record whose partition key is no partition number (another application
    wrote it) goes to ``foreign_partition(stream, shard_id)``: as the Kinesis consumer
    does, the lowest partition its shard holds, where the processor counts and
    dead-letters what it cannot read.
    """
    names = {stream_name(prefix, s): s for s in Stream}
    out: list[DeliveredRecord] = []
    for i, record in enumerate(event.get("Records") or ()):
        try:
            arn = str(record["eventSourceARN"])
            shard_id = str(record["eventID"]).split(":", 1)[0]
            kinesis = record["kinesis"]
            sequence = str(kinesis["sequenceNumber"])
            key = str(kinesis.get("partitionKey", ""))
            data = base64.b64decode(kinesis["data"], validate=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise DeliveryError(
                f"record {i} of the event is not a Kinesis event-source record ({exc!r}):"
                " the consumer handler only takes events of a Kinesis event-source mapping"
            ) from None
        name = arn.rsplit(":stream/", 1)[-1].split("/", 1)[0]
        stream = names.get(name)
        if stream is None:
            raise DeliveryError(
                f"record {i} comes from stream {name!r}, not one of {sorted(names)}: point"
                " the event-source mappings at this stack's streams, or set"
                " ADPULSE_TRANSPORT_URL to kinesis://PREFIX of the streams it reads"
            )
        if key.isascii() and key.isdigit() and int(key) < partitions:
            partition = record_partition(key)
        else:
            partition = foreign_partition(stream, shard_id)
        if data and not data.endswith(b"\n"):
            data += b"\n"  # one bare payload (not from the adpulse producer): one line
        out.append(DeliveredRecord(stream, shard_id, sequence, partition, data))
    return out


def is_after(offset: str | None, record: DeliveredRecord, lineage: Lineage) -> bool:
    """Whether ``record`` holds anything after the committed ``offset`` of its partition.

    Within a shard, by sequence number (an offset inside an aggregate, ``...:N``, means
    the record is only partly done: see :func:`unread_lines`). Across shards, by the
    partition's lineage; a shard outside it (a record another application wrote) counts
    as after, and deduplication by event id still holds.
    """
    if offset is None:
        return True
    committed = parse_offset(offset, record.stream, record.partition)
    if committed.shard_id == record.shard_id:
        return sequence_after(offset, record.shard_id, record.sequence_number)
    for fresh in (False, True):  # a shard made since the cached listing: list again
        shards = list(lineage(record.stream, record.partition, fresh))
        if committed.shard_id in shards and record.shard_id in shards:
            return shards.index(record.shard_id) > shards.index(committed.shard_id)
    return True


def unread_lines(offset: str | None, record: DeliveredRecord) -> bytes:
    """The framed lines of ``record`` after ``offset`` (all, unless the offset points
    inside this very record: then those after its first ``N`` lines)."""
    if offset is None:
        return record.data
    committed = parse_offset(offset, record.stream, record.partition)
    if (
        committed.lines is None
        or committed.shard_id != record.shard_id
        or committed.sequence_number != int(record.sequence_number)
    ):
        return record.data
    lines = framing.split_lines(record.data)[committed.lines :]
    return b"".join(line + b"\n" for line in lines)


class DeliveryTransport(Transport):
    """The delivery in hand, as a read-only log of ``partitions`` partitions.

    :meth:`deliver` hands it an invocation's records; the processor's consumer then polls
    them from its offsets; :attr:`acked` keeps what the processor committed (its
    ``ack`` after each commit), from which :meth:`uncommitted` tells what to retry.
    """

    def __init__(self, partitions: int, max_record_bytes: int, lineage: Lineage) -> None:
        self.partitions = partitions
        self.max_record_bytes = max_record_bytes
        self.lineage = lineage
        self.records: list[DeliveredRecord] = []
        self.acked: dict[tuple[Stream, int], str] = {}

    def deliver(self, records: Sequence[DeliveredRecord]) -> None:
        self.records = list(records)
        self.acked = {}

    def uncommitted(self, committed: Mapping[tuple[Stream, int], str | None]) -> list[str]:
        """Sequence numbers of the delivered records not covered by a commit: those after
        ``committed`` (the offsets the invocation started from) and after what was acked
        since."""
        done = {**committed, **self.acked}
        return [
            r.sequence_number
            for r in self.records
            if is_after(done.get((r.stream, r.partition)), r, self.lineage)
        ]

    def producer(self) -> Producer:
        raise TypeError("a Kinesis delivery is read-only; produce with the Kinesis transport")

    def consumer(self) -> DeliveryConsumer:
        return DeliveryConsumer(self)


class DeliveryConsumer(Consumer):
    """Hands out the delivered records of one partition after a committed offset."""

    def __init__(self, transport: DeliveryTransport) -> None:
        self.transport = transport

    def _pending(self, stream: Stream, partition: int, after: str | None) -> list[DeliveredRecord]:
        return [
            r
            for r in self.transport.records
            if r.stream is stream
            and r.partition == partition
            and is_after(after, r, self.transport.lineage)
        ]

    def poll(
        self, stream: Stream, partition: int, after: str | None, max_bytes: int
    ) -> Chunk | None:
        pending = self._pending(Stream(stream), partition, after)
        if not pending:
            return None
        parts: list[bytes] = []
        size = 0
        last = pending[0]
        for record in pending:
            if parts and size + len(record.data) > max_bytes:
                break
            data = unread_lines(after, record)
            parts.append(data)
            size += len(data)
            last = record
        data = b"".join(parts)
        return Chunk(
            stream=Stream(stream),
            partition=partition,
            start_offset=after,
            end_offset=last.offset,
            data=data,
            records=data.count(b"\n"),
        )

    def lag_bytes(self, stream: Stream, partition: int, after: str | None) -> int:
        """Bytes of the delivery in hand not yet processed (the event-source mapping's
        iterator age is the lag of the streams themselves)."""
        return sum(len(r.data) for r in self._pending(Stream(stream), partition, after))

    def ack(self, stream: Stream, partition: int, offset: str) -> None:
        self.transport.acked[(Stream(stream), partition)] = offset
