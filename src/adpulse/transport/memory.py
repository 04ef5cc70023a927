"""An in-process transport with the embedded log's semantics, for tests of other layers.

Each stream partition is a ``bytearray`` of framed lines; an offset is
``str(byte position in the partition's log)``, exactly as in the embedded log, so code
tested against this transport handles real offsets. Thread-safe (a generator thread and
a processor thread may share one instance); nothing survives the process.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from adpulse.contracts import DEFAULT_MAX_RECORD_BYTES, Stream
from adpulse.transport.base import (
    Chunk,
    Consumer,
    Lag,
    OffsetOutOfRangeError,
    Producer,
    Transport,
)


@dataclass(slots=True)
class _PartitionLog:
    data: bytearray = field(default_factory=bytearray)
    start: int = 0
    """Log position of ``data[0]``; moved forward by ``truncate_before``."""
    appends: list[tuple[int, float]] = field(default_factory=list)
    """(end position, clock time) of each append, for the lag's age."""

    @property
    def end(self) -> int:
        return self.start + len(self.data)


class InMemoryTransport(Transport):
    """A partitioned log held in memory; same offsets and chunks as the embedded log."""

    def __init__(
        self,
        partitions: int,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock``: the append time of records (seconds), for the lag's age."""
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        self.partitions = partitions
        self.max_record_bytes = max_record_bytes
        self._logs: dict[tuple[str, int], _PartitionLog] = {}
        self._lock = threading.Lock()
        self.clock = clock

    def producer(self) -> InMemoryProducer:
        return InMemoryProducer(self)

    def consumer(self) -> InMemoryConsumer:
        return InMemoryConsumer(self)

    def check_partition(self, partition: int) -> None:
        if not 0 <= partition < self.partitions:
            raise ValueError(
                f"partition {partition} does not exist: this log has partitions "
                f"0..{self.partitions - 1}"
            )

    def truncate_before(self, stream: Stream, partition: int, offset: str) -> str:
        """Forget the log before ``offset`` (a record boundary); return the log's start."""
        stream = Stream(stream)
        with self._lock:
            log = self._log(stream, partition)
            position = _parse_offset(stream, partition, offset)
            position = min(position, log.end)
            if position > log.start:
                _check_boundary(log, position, stream, partition)
                del log.data[: position - log.start]
                log.start = position
                kept = bisect.bisect_right(log.appends, position, key=lambda a: a[0])
                del log.appends[:kept]  # appends wholly before the start
            return str(log.start)

    # Used by the producer and consumer, always under ``_lock``.
    def _log(self, stream: Stream, partition: int) -> _PartitionLog:
        self.check_partition(partition)
        key = (str(stream), partition)
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = _PartitionLog()
        return log

    def _append(self, stream: Stream, partition: int, framed: bytes) -> None:
        with self._lock:
            log = self._log(stream, partition)
            log.data += framed
            log.appends.append((log.end, self.clock()))


def _parse_offset(stream: Stream, partition: int, offset: str) -> int:
    try:
        position = int(offset)
    except ValueError:
        position = -1
    if position < 0:
        raise ValueError(
            f"{offset!r} is not an offset of the in-memory log ({stream} partition "
            f"{partition}): offsets are the decimal byte positions returned as "
            "Chunk.end_offset"
        )
    return position


def _check_boundary(log: _PartitionLog, position: int, stream: Stream, partition: int) -> None:
    if position < log.start:
        raise OffsetOutOfRangeError(
            f"offset {position} of {stream} partition {partition} was deleted by retention: "
            f"the log now starts at offset {log.start}"
        )
    if position > log.end:
        raise OffsetOutOfRangeError(
            f"offset {position} of {stream} partition {partition} is beyond the end of the "
            f"log ({log.end})"
        )
    if position > log.start and log.data[position - log.start - 1] != 0x0A:
        raise ValueError(
            f"offset {position} of {stream} partition {partition} is not at a record "
            "boundary; use an end_offset returned by poll()"
        )


class InMemoryProducer(Producer):
    """Appends to an :class:`InMemoryTransport`."""

    _transport: InMemoryTransport

    def __init__(self, transport: InMemoryTransport) -> None:
        self._transport = transport

    def _append(self, stream: Stream, partition: int, framed: bytes) -> None:
        self._transport._append(stream, partition, framed)


class InMemoryConsumer(Consumer):
    """Reads chunks from an :class:`InMemoryTransport`."""

    def __init__(self, transport: InMemoryTransport) -> None:
        self._transport = transport

    def poll(
        self, stream: Stream, partition: int, after: str | None, max_bytes: int
    ) -> Chunk | None:
        """Complete lines after ``after``: about ``max_bytes``, at least one if any."""
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        stream = Stream(stream)
        with self._transport._lock:
            log = self._transport._log(stream, partition)
            if after is None:
                position = log.start
            else:
                position = _parse_offset(stream, partition, after)
                _check_boundary(log, position, stream, partition)
            begin = position - log.start
            if begin == len(log.data):
                return None
            # The last '\n' within the budget; if the first line alone exceeds it, that
            # line (the log only holds whole lines, so a '\n' follows).
            cut = log.data.rfind(b"\n", begin, begin + max_bytes)
            if cut < 0:
                cut = log.data.index(b"\n", begin)
            data = bytes(log.data[begin : cut + 1])
        return Chunk(
            stream=stream,
            partition=partition,
            start_offset=after,
            end_offset=str(position + len(data)),
            data=data,
            records=data.count(b"\n"),
        )

    def lag_bytes(self, stream: Stream, partition: int, after: str | None) -> int:
        """Bytes appended after ``after``."""
        stream = Stream(stream)
        with self._transport._lock:
            log = self._transport._log(stream, partition)
            if after is None:
                return len(log.data)
            return max(0, log.end - _parse_offset(stream, partition, after))

    def lag(self, stream: Stream, partition: int, after: str | None) -> Lag:
        """Bytes and records after ``after``, and the age (:class:`Lag`) from the
        appends' clock times."""
        stream = Stream(stream)
        with self._transport._lock:
            log = self._transport._log(stream, partition)
            position = log.start if after is None else _parse_offset(stream, partition, after)
            begin = max(0, position - log.start)
            behind = len(log.data) if after is None else max(0, log.end - position)
            records = log.data.count(b"\n", begin)
            oldest = bisect.bisect_right(log.appends, position, key=lambda a: a[0])
            seconds = (
                log.appends[-1][1] - log.appends[oldest][1] if oldest < len(log.appends) else 0.0
            )
        return Lag(behind, records, seconds)
