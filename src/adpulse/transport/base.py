"""The transport contract: a partitioned, durable, at-least-once log of event records.

Every transport (the embedded on-disk log, in-memory for tests, Redis Streams, Kinesis)
implements :class:`Transport`; a new one implements it too and passes the shared
contract tests. Records travel as *framed lines* (see
:mod:`adpulse.transport.framing`): one record per ``\\n``-terminated line, so a chunk of
a partition can be handed to a vectorized NDJSON decoder without copying record by record.

Offsets are opaque strings chosen by the transport: a byte position for the embedded
log, an entry id (``1700000000000-0``) for Redis Streams, a shard id and sequence
number (``shardId-000000000001:4959...``) for Kinesis.
``None`` means "from the beginning". A consumer never interprets another transport's
offsets; it hands back the ``end_offset`` of the last chunk it committed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from adpulse.contracts import Stream


class OffsetOutOfRangeError(LookupError):
    """An offset that is not (or no longer) in the partition's log.

    Raised instead of silently skipping or waiting: the records were deleted by retention
    (offset below the log's start), or the log was replaced (offset beyond its end).
    """


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive records of one partition of one stream, as framed lines."""

    stream: Stream
    partition: int
    start_offset: str | None
    end_offset: str
    data: bytes
    """Framed lines, each terminated by ``\\n``; ``b""`` when empty."""
    records: int


@dataclass(frozen=True, slots=True)
class Lag:
    """How far a consumer position is behind the end of one partition (or of several:
    :meth:`plus`).

    ``bytes``: framed bytes after the position. ``records``: records after it.
    ``seconds``: the *age* of the lag, seconds from the append of the oldest record
    after the position to the append of the newest record of the partition (0 when
    nothing is behind; a partition caught up but for one record is 0 s behind).
    ``None``: the transport cannot tell (the default :meth:`Consumer.lag`).
    """

    bytes: int
    records: int | None = None
    seconds: float | None = None

    def plus(self, other: Lag) -> Lag:
        """Both partitions' lag: bytes and records add up, the age is the larger one;
        a figure unknown on either side is unknown."""
        records: int | None = None
        seconds: float | None = None
        if self.records is not None and other.records is not None:
            records = self.records + other.records
        if self.seconds is not None and other.seconds is not None:
            seconds = max(self.seconds, other.seconds)
        return Lag(self.bytes + other.bytes, records, seconds)


class Producer(ABC):
    """Appends records to a stream, partitioned by ``user_id``.

    Subclasses implement :meth:`_append` (one partition's framed lines); framing and
    partitioning are shared, by the ``partitions`` and ``max_record_bytes`` of the
    transport the producer writes to (``self._transport``).
    """

    _transport: Transport

    @property
    def partitions(self) -> int:
        return self._transport.partitions

    @property
    def max_record_bytes(self) -> int:
        return self._transport.max_record_bytes

    @abstractmethod
    def _append(self, stream: Stream, partition: int, framed: bytes) -> None:
        """Append framed lines (each ending in ``\\n``) to one partition."""

    def send(self, stream: Stream, payloads: Sequence[bytes], keys: Sequence[str | None]) -> None:
        """Append raw payloads; ``keys[i]`` is the record's user id (``None`` if unknown)."""
        from adpulse.transport.framing import frame_by_partition

        groups = frame_by_partition(payloads, keys, self.partitions, self.max_record_bytes)
        for partition, (framed, _records) in sorted(groups.items()):
            self._append(Stream(stream), partition, framed)

    def send_framed(self, stream: Stream, partition: int, framed: bytes, records: int) -> None:
        """Append already-framed lines to one partition (fast path for bulk producers)."""
        if not framed:
            return
        if framed[-1:] != b"\n":
            raise ValueError(
                f"send_framed() needs whole framed lines ending in b'\\n' ({records} records,"
                f" {len(framed)} bytes, ending {framed[-20:]!r}); frame payloads with "
                "adpulse.transport.framing.frame()"
            )
        self._append(Stream(stream), partition, framed)

    def flush(self) -> None:  # noqa: B027
        """Make everything sent so far durable."""

    def flush_in_two(self) -> Callable[[], None]:
        """:meth:`flush` for callers that serialise sends with a lock of their own (the
        collector): called under that lock, it notes what was sent so far and returns
        the slow part, which makes that durable and may run after the lock is released,
        while others send. By default the whole flush happens here."""
        self.flush()
        return _flushed

    def close(self) -> None:
        self.flush()


def _flushed() -> None:
    """The second half of a flush that was done in the first."""


class Consumer(ABC):
    """Reads chunks of partitions from given offsets."""

    @abstractmethod
    def poll(
        self, stream: Stream, partition: int, after: str | None, max_bytes: int
    ) -> Chunk | None:
        """Return the records after ``after`` (at most about ``max_bytes``), or ``None``."""

    @abstractmethod
    def lag_bytes(self, stream: Stream, partition: int, after: str | None) -> int:
        """How many bytes of this partition are not yet consumed after ``after``."""

    def lag(self, stream: Stream, partition: int, after: str | None) -> Lag:
        """Bytes, records and age (:class:`Lag`) of this partition after ``after``.

        The default knows the bytes only (records and age ``None``); a transport that
        can count records or knows append times overrides it.
        """
        return Lag(self.lag_bytes(stream, partition, after))

    def ack(self, stream: Stream, partition: int, offset: str) -> None:  # noqa: B027
        """Called after the outputs up to ``offset`` are committed (retention, XACK...)."""

    def close(self) -> None:  # noqa: B027
        pass


class Transport(ABC):
    """A partitioned log: the same partition count for every stream."""

    partitions: int
    max_record_bytes: int

    @abstractmethod
    def producer(self) -> Producer: ...

    @abstractmethod
    def consumer(self) -> Consumer: ...

    def close(self) -> None:  # noqa: B027
        pass
