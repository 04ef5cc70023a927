"""The Redis Streams transport: one Redis stream per stream and partition.

Layout (``PREFIX`` defaults to ``adpulse``)::

    PREFIX:meta                      hash  {"format": ..., "partitions": N}
    PREFIX:clicks:3                  stream, one entry per record: field ``r`` = framed line
    PREFIX:committed                 hash  {"clicks:3": "<entry id>"}  (see ack)

Each entry holds one framed line of :mod:`adpulse.transport.framing` (without its
``\\n``), so escaped payloads (newlines, NUL, oversized heads) survive byte for byte, and
a chunk is rebuilt as NDJSON by joining the entries' lines. An offset is the entry id of
the last record read (``"1700000000000-0"``); ``poll`` reads with an exclusive start
(``XRANGE key (ID + COUNT n``).

Why no consumer groups: the processor stores its offsets in the warehouse in the same
transaction as its outputs, and restarts from them. That alone gives effectively-once
processing, so the server-side pending-entry lists of consumer groups (XREADGROUP, XACK)
would only duplicate that bookkeeping. What Redis must know is how far it may trim:
:meth:`RedisStreamsConsumer.ack` (called after the commit that contains the entries)
records the committed entry id in ``PREFIX:committed`` and trims the stream with
``XTRIM MINID`` at that id, so entries that are not committed are never removed by it.

Current scope: one processor per partition (that processor's committed id is the
trimming bound). Workers sharing partitions (the minimum over several consumers' commits,
partition leases) and consumer groups with XAUTOCLAIM for a dead consumer's entries are a
later item of issue 4.

``maxlen`` (off by default) adds ``XADD ... MAXLEN ~ N``: a memory cap that *can* drop
uncommitted entries; a consumer whose offset was dropped gets
:class:`OffsetOutOfRangeError`, never a silent gap.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from adpulse.contracts import DEFAULT_MAX_RECORD_BYTES, Stream
from adpulse.transport.base import (
    Chunk,
    Consumer,
    OffsetOutOfRangeError,
    Producer,
    Transport,
)

if TYPE_CHECKING:
    import redis

LOG_FORMAT: Final = "adpulse-redis-streams/1"
FIELD: Final = b"r"
#: XADDs sent per pipeline round trip.
PIPELINE_ENTRIES: Final = 5000
#: Bounds of the COUNT of one XRANGE.
MAX_POLL_ENTRIES: Final = 50_000
#: Entry size assumed before a consumer has read any entry of a partition.
INITIAL_ENTRY_BYTES: Final = 128
_ID = re.compile(r"^(\d+)-(\d+)$")


def _parse_id(stream: Stream, partition: int, offset: str) -> tuple[int, int]:
    match = _ID.match(offset)
    if match is None:
        raise ValueError(
            f"{offset!r} is not an offset of the Redis Streams transport ({stream} partition "
            f"{partition}): offsets are entry ids such as '1700000000000-0', returned as "
            "Chunk.end_offset"
        )
    return int(match[1]), int(match[2])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStreamsTransport(Transport):
    """A partitioned log in Redis Streams (``redis://host:port/db``).

    ``max_record_bytes`` is the framing limit; ``maxlen`` an optional approximate cap of
    entries per partition stream (see the module docstring: it may drop uncommitted
    entries). Raises ``ConnectionError`` naming the URL when the server is unreachable,
    ``ValueError`` when the streams were created with another partition count.
    """

    def __init__(
        self,
        url: str,
        partitions: int,
        *,
        prefix: str = "adpulse",
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        maxlen: int | None = None,
    ) -> None:
        import redis

        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        if maxlen is not None and maxlen < 1:
            raise ValueError(f"maxlen must be at least 1 or None, got {maxlen}")
        self.url = url
        self.partitions = partitions
        self.prefix = prefix
        self.max_record_bytes = max_record_bytes
        self.maxlen = maxlen
        self.client: redis.Redis = redis.Redis.from_url(
            url, socket_connect_timeout=5, health_check_interval=30
        )
        try:
            self._open_meta()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.client.close()
            raise ConnectionError(f"Redis at {url} is unreachable: {exc}") from exc

    def _open_meta(self) -> None:
        meta = f"{self.prefix}:meta"
        self.client.hsetnx(meta, "partitions", str(self.partitions))
        self.client.hsetnx(meta, "format", LOG_FORMAT)
        raw = self.client.hget(meta, "partitions")
        try:
            existing = int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"Redis key {meta!r} at {self.url} holds no valid partition count ({raw!r}); "
                f"set it back (HSET {meta} partitions N) or use another prefix"
            ) from exc
        if existing != self.partitions:
            raise ValueError(
                f"The Redis streams under prefix {self.prefix!r} at {self.url} have {existing} "
                f"partitions per stream, but {self.partitions} were requested. The partition "
                "count of existing streams cannot change (records are placed by user_id hash "
                f"modulo the count): set `partitions` (ADPULSE_PARTITIONS) back to {existing}, "
                f"or delete the keys {self.prefix}:* to start over."
            )

    def key(self, stream: Stream, partition: int) -> str:
        """The Redis key of one partition's stream."""
        self.check_partition(partition)
        return f"{self.prefix}:{Stream(stream).value}:{partition}"

    @property
    def committed_key(self) -> str:
        return f"{self.prefix}:committed"

    def check_partition(self, partition: int) -> None:
        if not 0 <= partition < self.partitions:
            raise ValueError(
                f"partition {partition} does not exist: this log has partitions "
                f"0..{self.partitions - 1}"
            )

    def producer(self) -> RedisStreamsProducer:
        return RedisStreamsProducer(self)

    def consumer(self) -> RedisStreamsConsumer:
        return RedisStreamsConsumer(self)

    def delete_all(self) -> None:
        """Delete every key of this prefix (tests, ``reset``)."""
        keys = [self.key(s, p) for s in Stream for p in range(self.partitions)]
        self.client.delete(*keys, self.committed_key, f"{self.prefix}:meta")

    def close(self) -> None:
        self.client.close()


class RedisStreamsProducer(Producer):
    """XADDs each framed line as one entry, pipelined (many XADDs per round trip).

    Entries are visible to consumers as soon as ``send`` returns; durability is that of
    the Redis server (AOF / replication settings), ``flush`` has nothing to add.
    """

    _transport: RedisStreamsTransport

    def __init__(self, transport: RedisStreamsTransport) -> None:
        self._transport = transport

    def _append(self, stream: Stream, partition: int, framed: bytes) -> None:
        key = self._transport.key(stream, partition)
        lines = framed.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        maxlen = self._transport.maxlen
        for start in range(0, len(lines), PIPELINE_ENTRIES):
            pipe = self._transport.client.pipeline(transaction=False)
            for line in lines[start : start + PIPELINE_ENTRIES]:
                pipe.xadd(key, {FIELD: line}, maxlen=maxlen, approximate=True)
            pipe.execute()


class RedisStreamsConsumer(Consumer):
    """Reads chunks with XRANGE; ``ack`` records the committed id and trims below it."""

    def __init__(self, transport: RedisStreamsTransport) -> None:
        self._transport = transport
        # Typed loosely: redis-py's stubs cannot tell the replies of XRANGE and friends.
        self._client: Any = transport.client
        # Average entry size seen per partition: turns max_bytes into an XRANGE COUNT.
        self._entry_bytes: dict[tuple[str, int], float] = {}

    def poll(
        self, stream: Stream, partition: int, after: str | None, max_bytes: int
    ) -> Chunk | None:
        """The entries after ``after`` (``None``: from the first), about ``max_bytes``.

        At least one entry if any; raises :class:`OffsetOutOfRangeError` when entries
        after ``after`` were trimmed away or ``after`` is beyond the stream's last id.
        """
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        stream = Stream(stream)
        key = self._transport.key(stream, partition)
        if after is not None:
            after_id = _parse_id(stream, partition, after)
        size = self._entry_bytes.get((stream.value, partition), INITIAL_ENTRY_BYTES)
        count = int(min(MAX_POLL_ENTRIES, max(1, max_bytes // max(1.0, size))))
        pipe = self._client.pipeline(transaction=False)
        pipe.xrange(key, "-" if after is None else f"({after}", "+", count=count)
        if after is not None:
            pipe.xrange(key, "-", "+", count=1)  # the first entry: was anything trimmed?
        replies = pipe.execute()
        entries: list[tuple[bytes, dict[bytes, bytes]]] = replies[0]
        if after is not None:
            self._check_offset(stream, partition, key, after, after_id, replies[1], entries)
        if not entries:
            return None
        lines: list[bytes] = []
        used = 0
        end_id: bytes | str | None = after
        while True:
            full = False
            for entry_id, fields in entries:
                line = fields[FIELD]
                if lines and used + len(line) + 1 > max_bytes:
                    full = True
                    break
                lines.append(line)
                used += len(line) + 1
                end_id = entry_id
            # The size guess was too large: fetch more while the budget has room.
            if full or len(entries) < count or used >= max_bytes:
                break
            average = used / len(lines)
            count = int(min(MAX_POLL_ENTRIES, max(1, (max_bytes - used) // average)))
            entries = self._client.xrange(key, f"({_text(end_id)}", "+", count=count)  # type: ignore[arg-type]
            if not entries:
                break
        taken = len(lines)
        self._entry_bytes[(stream.value, partition)] = used / taken
        lines.append(b"")
        return Chunk(
            stream=stream,
            partition=partition,
            start_offset=after,
            end_offset=_text(end_id),  # type: ignore[arg-type]
            data=b"\n".join(lines),
            records=taken,
        )

    def _check_offset(
        self,
        stream: Stream,
        partition: int,
        key: str,
        after: str,
        after_id: tuple[int, int],
        first: list[Any],
        entries: list[Any],
    ) -> None:
        if first:
            first_id = _parse_id(stream, partition, _text(first[0][0]))
            if first_id > after_id and after_id != (0, 0):
                # Trimming keeps the committed entry itself, so a consumer's offset is
                # always in the stream unless entries after it were dropped (maxlen, or
                # a trim driven by a further commit on another warehouse).
                raise OffsetOutOfRangeError(
                    f"offset {after} of {stream} partition {partition} was trimmed from "
                    f"{key}: the stream now starts at {_text(first[0][0])}; entries after "
                    "this offset may be lost (maxlen, or another consumer's commits)"
                )
        if entries:
            return
        last = self._client.xrevrange(key, "+", "-", count=1)
        last_id = _parse_id(stream, partition, _text(last[0][0])) if last else (0, 0)
        if after_id > last_id:
            raise OffsetOutOfRangeError(
                f"offset {after} of {stream} partition {partition} is beyond the end of the "
                f"stream {key} ({_text(last[0][0]) if last else 'empty'}): the stream was "
                "deleted or replaced after this offset was committed. Point transport_url at "
                "the original server, or reset the consumer's checkpoint."
            )

    def lag_bytes(self, stream: Stream, partition: int, after: str | None) -> int:
        """Approximate: entries after ``after`` × average size of the first and last entry.

        Entries after ``after`` = XLEN minus the entries up to ``after``, counted exactly
        when there are at most 1000 of them (the usual case, since acks trim the stream
        to the committed offset), else interpolated from the entry ids' timestamps.
        """
        stream = Stream(stream)
        key = self._transport.key(stream, partition)
        pipe = self._client.pipeline(transaction=False)
        pipe.xlen(key)
        pipe.xrange(key, "-", "+", count=1)
        pipe.xrevrange(key, "+", "-", count=1)
        length, first, last = pipe.execute()
        if not length:
            return 0
        average = (len(first[0][1][FIELD]) + len(last[0][1][FIELD])) / 2 + 1
        if after is None:
            return int(length * average)
        after_id = _parse_id(stream, partition, after)
        first_id = _parse_id(stream, partition, _text(first[0][0]))
        last_id = _parse_id(stream, partition, _text(last[0][0]))
        if after_id >= last_id:
            return 0
        if after_id < first_id:
            return int(length * average)
        upto = self._client.xrange(key, "-", after, count=1001)
        if len(upto) <= 1000:
            behind = len(upto)
        else:
            span = max(1, last_id[0] - first_id[0])
            behind = int(length * (after_id[0] - first_id[0]) / span)
        return int(max(0, length - behind) * average)

    def ack(self, stream: Stream, partition: int, offset: str) -> None:
        """Record ``offset`` as committed and trim the entries below it.

        ``XTRIM MINID ~ offset`` removes only entries with smaller ids (whole radix-tree
        nodes, so a few may stay), never the committed entry itself nor anything after.
        """
        stream = Stream(stream)
        _parse_id(stream, partition, offset)
        key = self._transport.key(stream, partition)
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(self._transport.committed_key, f"{stream.value}:{partition}", offset)
        pipe.xtrim(key, minid=offset, approximate=True)
        pipe.execute()

    def committed(self, stream: Stream, partition: int) -> str | None:
        """The offset last acknowledged for one partition (``None``: none yet)."""
        value = self._client.hget(self._transport.committed_key, f"{stream.value}:{partition}")
        return None if value is None else _text(value)


def open_redis_transport(
    url: str,
    partitions: int,
    max_record_bytes: int,
    *,
    prefix: str = "adpulse",
    setting: str = "transport_url",
) -> RedisStreamsTransport:
    """Open the transport for a setting; one clear error naming the setting on failure.

    A ``prefix=NAME`` query parameter (``redis://host:6379/0?prefix=NAME``) overrides the
    key prefix, so several pipelines can share one database.
    """
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    prefix = next((v for k, v in query if k == "prefix"), prefix)
    url = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "prefix"])))
    try:
        return RedisStreamsTransport(
            url, partitions, prefix=prefix, max_record_bytes=max_record_bytes
        )
    except ConnectionError as exc:
        raise ValueError(
            f"The Redis server of `{setting}` ({_mask(url)}) is unreachable "
            f"({exc.__cause__ or exc}); start it or fix `{setting}` (ADPULSE_{setting.upper()})."
        ) from exc
    except ValueError as exc:
        if "partition" in str(exc):
            raise
        raise ValueError(
            f"Invalid `{setting}` {_mask(url)!r}: {exc}; expected redis://HOST:PORT/DB"
        ) from exc


def _mask(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


__all__: Sequence[str] = [
    "RedisStreamsConsumer",
    "RedisStreamsProducer",
    "RedisStreamsTransport",
    "open_redis_transport",
]
