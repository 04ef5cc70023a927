"""The Kinesis consumer: reads one partition's lineage of shards, returns its lines as
chunks with offsets inside aggregates, and reports its lag.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from adpulse.contracts import Stream
from adpulse.transport.base import (
    Chunk,
    Consumer,
    Lag,
    OffsetOutOfRangeError,
)
from adpulse.transport.kinesis.layout import (
    LIST_INTERVAL_SECONDS,
    check_partition,
    format_offset,
    parse_offset,
    shard_partitions,
)
from adpulse.transport.kinesis.retry import error_code

if TYPE_CHECKING:
    from adpulse.transport.kinesis.transport import KinesisTransport

log = logging.getLogger(__name__)

#: GetRecords calls one ``lag_bytes`` may make before it extrapolates.
LAG_SCAN_CALLS: Final = 4


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
                if error_code(exc) == "ExpiredIteratorException":
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
        check_partition(partition, self._transport.partitions)
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
        check_partition(partition, self._transport.partitions)
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
