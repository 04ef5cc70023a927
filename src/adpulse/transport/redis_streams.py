"""The Redis Streams transport: one Redis stream per stream and partition, read through
a consumer group.

Layout (``PREFIX`` and ``GROUP`` both default to ``adpulse``)::

    PREFIX:meta                  hash  {"format": ..., "partitions": N}
    PREFIX:clicks:3              stream, one entry per record: field ``r`` = framed line,
                                 with the consumer group GROUP (one group per stream key)
    PREFIX:committed             hash  {"GROUP:clicks:3": "<entry id>"}  (see ack)

Each entry holds one framed line of :mod:`adpulse.transport.framing` (without its
``\\n``), so escaped payloads (newlines, NUL, oversized heads) survive byte for byte, and
a chunk is rebuilt as NDJSON by joining the entries' lines. An offset is the entry id of
the last record read (``"1700000000000-0"``). Each :class:`RedisStreamsConsumer` is one
consumer of the group, named ``host:pid:random`` unless given a name.

**The warehouse is the authority.** The processor stores its offsets in the warehouse in
the same transaction as its outputs and restarts from them: that is what makes processing
effectively-once. ``poll(after=offset)`` therefore returns exactly the entries after
``offset``, in order, with no gap and no repeat. The consumer group is Redis's record of
the same progress, kept in step with the warehouse beneath that contract:

- New entries are read with ``XREADGROUP GROUP GROUP NAME ... >``: Redis records which
  consumer holds each delivered entry in the group's pending entry list (PEL).
- :meth:`RedisStreamsConsumer.ack` is called after the warehouse commit that contains the
  entries: it XACKs the pending entries with ids <= the committed id, records that id in
  ``PREFIX:committed`` and trims the stream (below).
- **Invariant:** XACK happens only after the commit, so for every partition
  ``PEL ⊇ (committed id, last-delivered-id]``: each entry delivered but not committed is
  still pending, under some consumer, alive or dead.
- **Taking a partition over.** At most one consumer owns a partition at a time (the
  workers' partition leases guarantee it); its first poll of the partition (first start,
  restart, or takeover from a dead worker) passes the committed offset. The consumer then
  creates the group if needed (``XGROUP CREATE key GROUP <offset or 0> MKSTREAM``), moves
  it up to the offset when it lags (``XGROUP SETID``: entries up to the offset are
  committed, there is nothing to deliver there), XACKs the pending entries <= the offset
  (committed, only their ack was lost), claims every other pending entry
  (``XAUTOCLAIM`` with min-idle-time 0: ownership comes from the lease, not from
  idleness; the dead consumer's entries and its own), and forgets the consumers left with
  nothing pending. It then re-delivers its pending entries after the offset in id order
  (``XREADGROUP`` with the offset as id reads the consumer's own PEL) and, once they are
  exhausted, new ones (``>``). By the invariant these are exactly the entries after the
  offset.
- **Verified, not assumed.** Every read runs in one ``MULTI`` with an ``XRANGE`` of the
  entries after the position: a re-delivery must equal them id for id, and a read of new
  entries must start with the first one. If not (the invariant was broken: another
  consumer read the partition, or entries were acknowledged without a commit), the poll
  logs a warning, falls back to ``XRANGE`` from the position and moves the group there
  (``XGROUP SETID``), so a broken group costs a round trip, never a gap or a repeat.
  (Entries read by the fallback are not pending; should this consumer die before they
  are committed, the next owner's check falls back once more, just as correctly.)
- **Trimming** (in ``ack``): ``XTRIM MINID ~ m`` where ``m`` is the minimum, over every
  consumer group of the stream, of its committed offset (kept, since the group restarts
  from it), its first pending entry, or its last-delivered id when nothing is pending;
  and of the offset being acknowledged. So nothing above the committed id is removed, nor
  anything another group has not committed or acknowledged: a second pipeline reading
  the same streams under another group name (``?group=NAME``) holds trimming back while
  it lags. A group that is no longer used holds it back forever: ``XGROUP DESTROY`` it.
  Acknowledging and trimming run in one Lua script: one round trip, atomic, at most
  20,000 XACKs per call (a large backlog takes several calls, never blocks the server).

**Producers** append by batches: one Lua script call XADDs up to 5,000 lines (8 MB), and
all the batches of one append go in one pipelined round trip. The client packs one
command per batch instead of one per entry, which cuts its CPU about tenfold; the server
does the same XADDs. The cost of the consumer group is on the server: a pending-list
insert per entry read and an XPENDING + XACK per entry acknowledged (about 4 µs per
entry in all, see the README).

``maxlen`` (off by default) adds ``XADD ... MAXLEN ~ N``: a memory cap that *can* drop
uncommitted entries; a consumer whose offset was dropped gets
:class:`OffsetOutOfRangeError`, never a silent gap.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from adpulse.contracts import DEFAULT_MAX_RECORD_BYTES, Stream
from adpulse.outages import Retrier, ServerTimeouts
from adpulse.transport.base import (
    Chunk,
    Consumer,
    Lag,
    OffsetOutOfRangeError,
    Producer,
    Transport,
)

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

LOG_FORMAT: Final = "adpulse-redis-streams/1"
#: The entry field holding the framed line (also spelled out in APPEND_SCRIPT).
FIELD: Final = b"r"
DEFAULT_GROUP: Final = "adpulse"
#: Entries and bytes appended by one call of the append script (several per round trip).
APPEND_ENTRIES: Final = 5000
APPEND_BYTES: Final = 8 << 20
#: Bounds of the COUNT of one read.
MAX_POLL_ENTRIES: Final = 50_000
#: Pending entries claimed per XAUTOCLAIM call.
CLAIM_ENTRIES: Final = 1000
#: XPENDING + XACK rounds of 1000 entries per call of the ack script (~10 ms of server).
ACK_BATCHES: Final = 20
#: Entry size assumed before a consumer has read any entry of a partition.
INITIAL_ENTRY_BYTES: Final = 128
_ID = re.compile(r"^(\d+)-(\d+)$")

# KEYS: stream key, committed hash. ARGV: group, offset, "stream:partition", "1" to
# record the offset as committed and trim. XACKs the group's pending entries <= offset,
# at most ACK_BATCHES x 1000 per call so that a huge backlog does not block the server
# (the caller calls again while the second reply is 0); returns {acked, done}. Trimming
# bound (module docstring): the minimum over the groups of the stream of their committed
# offset (kept: a group restarts from it), their first pending entry, or their
# last-delivered id when nothing is pending.
ACK_SCRIPT: Final = """
local key, group, offset, suffix = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local finish = ARGV[4] == '1'
local function less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
if finish then redis.call('HSET', KEYS[2], group .. ':' .. suffix, offset) end
local acked, minid, done, batches = 0, offset, 1, 0
if redis.call('EXISTS', key) == 1 then
  for _, flat in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local info = {}
    for i = 1, #flat, 2 do info[flat[i]] = flat[i + 1] end
    local name = info['name']
    if name == group and info['pending'] > 0 then
      repeat
        local pending = redis.call('XPENDING', key, group, '-', offset, 1000)
        if #pending > 0 then
          local ids = {}
          for i, entry in ipairs(pending) do ids[i] = entry[1] end
          acked = acked + redis.call('XACK', key, group, unpack(ids))
        end
        batches = batches + 1
        if #pending == 1000 and batches == ACK_BATCHES then done = 0 end
      until #pending < 1000 or done == 0
    end
    if finish then
      local bound = info['last-delivered-id']
      local summary = redis.call('XPENDING', key, name)
      if summary[1] > 0 then bound = summary[2] end
      local committed = redis.call('HGET', KEYS[2], name .. ':' .. suffix)
      if committed and less(committed, bound) then bound = committed end
      if less(bound, minid) then minid = bound end
    end
  end
end
if finish then redis.call('XTRIM', key, 'MINID', '~', minid) end
return {acked, done}
""".replace("ACK_BATCHES", str(ACK_BATCHES))


# KEYS: stream key. ARGV: maxlen ("0": none), then one framed line per entry. Appends
# them in order, one XADD each; returns how many. One script call replaces thousands of
# pipelined XADDs: the client packs one command and parses one reply (12x less client
# CPU for 150-byte records), the server does the same XADDs.
APPEND_SCRIPT: Final = """
local key, maxlen = KEYS[1], tonumber(ARGV[1])
for i = 2, #ARGV do
  if maxlen > 0 then
    redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'r', ARGV[i])
  else
    redis.call('XADD', key, '*', 'r', ARGV[i])
  end
end
return #ARGV - 1
"""


def _parse_id(stream: Stream, partition: int, offset: str) -> tuple[int, int]:
    match = _ID.match(offset)
    if match is None:
        raise ValueError(
            f"{offset!r} is not an offset of the Redis Streams transport ({stream} partition "
            f"{partition}): offsets are entry ids such as '1700000000000-0', returned as "
            "Chunk.end_offset"
        )
    return int(match[1]), int(match[2])


def _id(value: bytes | str) -> tuple[int, int]:
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq or 0)


def _partition_name(stream: Stream, partition: int) -> str:
    return f"{Stream(stream).value}:{partition}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def default_consumer_name() -> str:
    """``host:pid:random``: unique per Consumer object, and says where it ran."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class RedisStreamsTransport(Transport):
    """A partitioned log in Redis Streams (``redis://host:port/db``).

    ``max_record_bytes`` is the framing limit; ``maxlen`` an optional approximate cap of
    entries per partition stream (see the module docstring: it may drop uncommitted
    entries); ``group`` the consumer group its consumers read in; ``timeouts`` how long
    to wait for the server and to retry on a lost connection (:mod:`adpulse.outages`:
    polls, acks, lag reads and appends are retried; a repeated append may store its
    records twice, which the processor's deduplication counts once). Raises
    ``ConnectionError`` naming the URL when the server is unreachable, ``ValueError``
    when the streams were created with another partition count.
    """

    def __init__(
        self,
        url: str,
        partitions: int,
        *,
        prefix: str = "adpulse",
        group: str = DEFAULT_GROUP,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        maxlen: int | None = None,
        timeouts: ServerTimeouts | None = None,
    ) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        if maxlen is not None and maxlen < 1:
            raise ValueError(f"maxlen must be at least 1 or None, got {maxlen}")
        if not group:
            raise ValueError("the consumer group name must not be empty")
        self.url = url
        self.partitions = partitions
        self.prefix = prefix
        self.group = group
        self.max_record_bytes = max_record_bytes
        self.maxlen = maxlen
        self.timeouts = timeouts or ServerTimeouts()
        self.retrier = Retrier(
            component=f"transport ({_mask(url)})",
            setting="transport_url",
            seconds=self.timeouts.retry_seconds,
            transient=(redis.ConnectionError, redis.TimeoutError),
        )
        self.client: redis.Redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=self.timeouts.connect_seconds,
            socket_timeout=self.timeouts.connect_seconds,
            socket_keepalive=True,
            health_check_interval=30,
            # No hidden retries of its own: the retrier's bound and log are the only ones.
            retry=Retry(NoBackoff(), 0),
        )
        self.ack_script = self.client.register_script(ACK_SCRIPT)
        self.append_script = self.client.register_script(APPEND_SCRIPT)
        try:
            self._open_meta()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.client.close()
            raise ConnectionError(f"Redis at {_mask(url)} is unreachable: {exc}") from exc
        except redis.ResponseError as exc:  # e.g. a database index the server lacks
            self.client.close()
            raise ValueError(f"the Redis server refused it: {exc}") from exc

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

    def committed_field(self, stream: Stream, partition: int) -> str:
        """The field of ``committed_key`` holding this group's offset of one partition."""
        return f"{self.group}:{_partition_name(stream, partition)}"

    def acknowledge(self, stream: Stream, partition: int, offset: str, *, finish: bool) -> int:
        """XACK the group's pending entries <= ``offset``; with ``finish``, also record
        ``offset`` as committed and trim (ACK_SCRIPT). Returns how many were acked."""
        acked = 0
        while True:
            count, done = self.ack_script(
                keys=[self.key(stream, partition), self.committed_key],
                args=[self.group, offset, _partition_name(stream, partition), int(finish)],
            )
            acked += count
            if done:
                return acked

    def check_partition(self, partition: int) -> None:
        if not 0 <= partition < self.partitions:
            raise ValueError(
                f"partition {partition} does not exist: this log has partitions "
                f"0..{self.partitions - 1}"
            )

    def producer(self) -> RedisStreamsProducer:
        return RedisStreamsProducer(self)

    def consumer(self, name: str | None = None) -> RedisStreamsConsumer:
        """A consumer of the group; ``name`` defaults to ``host:pid:random``."""
        return RedisStreamsConsumer(self, name)

    def delete_all(self) -> None:
        """Delete every key of this prefix (tests, ``reset``); the groups go with them."""
        keys = [self.key(s, p) for s in Stream for p in range(self.partitions)]
        self.client.delete(*keys, self.committed_key, f"{self.prefix}:meta")

    def close(self) -> None:
        self.client.close()


class RedisStreamsProducer(Producer):
    """Appends each framed line as one entry: batches of lines per script call (one XADD
    each, server-side), all the batches of one append in one pipelined round trip.

    Entries are visible to consumers as soon as ``send`` returns; durability is that of
    the Redis server (AOF / replication settings), ``flush`` has nothing to add. A batch
    is atomic (a script), so consumers see it whole or not at all.
    """

    _transport: RedisStreamsTransport

    def __init__(self, transport: RedisStreamsTransport) -> None:
        self._transport = transport

    def _append(self, stream: Stream, partition: int, framed: bytes) -> None:
        self._transport.retrier.call(
            f"an append to {stream} partition {partition}",
            lambda: self._append_once(stream, partition, framed),
        )

    def _append_once(self, stream: Stream, partition: int, framed: bytes) -> None:
        key = self._transport.key(stream, partition)
        lines = framed.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        maxlen = str(self._transport.maxlen or 0)
        pipe = self._transport.client.pipeline(transaction=False)
        batch: list[bytes] = []
        size = 0
        for line in lines:
            if batch and (len(batch) == APPEND_ENTRIES or size + len(line) > APPEND_BYTES):
                self._transport.append_script(keys=[key], args=[maxlen, *batch], client=pipe)
                batch, size = [], 0
            batch.append(line)
            size += len(line)
        if batch:
            self._transport.append_script(keys=[key], args=[maxlen, *batch], client=pipe)
        pipe.execute()


Entry = tuple[bytes, bytes]
"""(entry id, framed line without its ``\\n``)."""


@dataclass(slots=True)
class _Reading:
    """How far this consumer has handed out one partition."""

    key: str
    position: str | None
    """Id of the last entry handed to the caller (``None``: none, from the start)."""
    redelivering: bool = True
    """Still re-delivering this consumer's pending entries (right after a takeover)."""
    buffered: deque[Entry] = field(default_factory=deque)
    """Read from Redis after ``position`` but over the byte budget of the last poll."""


class RedisStreamsConsumer(Consumer):
    """One consumer of the transport's group; see the module docstring.

    Not thread-safe for ``poll``; ``ack`` keeps no state, so the processor's committer
    thread may call it while the processing thread polls.
    """

    def __init__(self, transport: RedisStreamsTransport, name: str | None = None) -> None:
        if name is not None and not name:
            raise ValueError("a consumer name must not be empty")
        self._transport = transport
        self.group = transport.group
        self.name = name or default_consumer_name()
        # Typed loosely: redis-py's stubs cannot tell the replies of XRANGE and friends.
        self._client: Any = transport.client
        # Average entry size seen per partition: turns max_bytes into a read COUNT.
        self._entry_bytes: dict[tuple[str, int], float] = {}
        self._readings: dict[tuple[str, int], _Reading] = {}

    def poll(
        self, stream: Stream, partition: int, after: str | None, max_bytes: int
    ) -> Chunk | None:
        """See :meth:`_poll_once`; retried on a lost connection (``timeouts``). A retry
        takes the partition over again from ``after``: what the lost read delivered is
        still pending under this consumer, and the verified read sorts it out."""
        stream = Stream(stream)

        def forget(_error: BaseException) -> None:
            self._readings.pop((stream.value, partition), None)

        return self._transport.retrier.call(
            f"a read of {stream} partition {partition}",
            lambda: self._poll_once(stream, partition, after, max_bytes),
            forget,
        )

    def _poll_once(
        self, stream: Stream, partition: int, after: str | None, max_bytes: int
    ) -> Chunk | None:
        """The entries after ``after`` (``None``: from the first), about ``max_bytes``.

        At least one entry if any; raises :class:`OffsetOutOfRangeError` when entries
        after ``after`` were trimmed away or ``after`` is beyond the stream's last id. An
        ``after`` other than the end of this consumer's last chunk of the partition (its
        first poll of it, or a rewind) takes the partition over: ``after`` must then be
        the committed offset.
        """
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        stream = Stream(stream)
        key = self._transport.key(stream, partition)
        if after is not None:
            _parse_id(stream, partition, after)
        reading = self._readings.get((stream.value, partition))
        if reading is None or reading.position != after:
            reading = self._take_over(stream, partition, key, after)
            self._readings[(stream.value, partition)] = reading
        size = self._entry_bytes.get((stream.value, partition), INITIAL_ENTRY_BYTES)
        lines: list[bytes] = []
        used = 0
        while True:
            more = True
            if not reading.buffered:
                # The size guess may be off: read what the remaining budget should hold.
                average = used / len(lines) if lines else size
                count = int(min(MAX_POLL_ENTRIES, max(1, (max_bytes - used) // max(1.0, average))))
                redelivering = reading.redelivering
                entries = self._read(stream, partition, reading, count)
                reading.buffered.extend(entries)
                # A short re-delivery ends the consumer's pending entries, not the stream.
                more = len(entries) == count or (redelivering and not reading.redelivering)
            while reading.buffered:
                entry_id, line = reading.buffered[0]
                if lines and used + len(line) + 1 > max_bytes:
                    break
                reading.buffered.popleft()
                lines.append(line)
                used += len(line) + 1
                reading.position = _text(entry_id)
            if reading.buffered or not more or used >= max_bytes:
                break
        if not lines:
            return None
        taken = len(lines)
        self._entry_bytes[(stream.value, partition)] = used / taken
        lines.append(b"")
        assert reading.position is not None
        return Chunk(
            stream=stream,
            partition=partition,
            start_offset=after,
            end_offset=reading.position,
            data=b"\n".join(lines),
            records=taken,
        )

    def _create_group(self, key: str, at: str | None) -> bool:
        """Create the group at ``at`` (and the stream if needed); False if it exists."""
        import redis

        try:
            self._client.xgroup_create(key, self.group, id=at or "0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    def _take_over(self, stream: Stream, partition: int, key: str, after: str | None) -> _Reading:
        """Start reading a partition at its committed offset ``after`` (module docstring)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.xrange(key, "-", "+", count=1)
        pipe.xrevrange(key, "+", "-", count=1)
        first, last = pipe.execute()
        self._check_offset(stream, partition, key, after, first, last)
        if not self._create_group(key, after) and after is not None:
            (info,) = (g for g in self._client.xinfo_groups(key) if _text(g["name"]) == self.group)
            if _id(info["last-delivered-id"]) < _id(after):
                # The group lags the committed offset: nothing up to it is to be delivered.
                self._client.xgroup_setid(key, self.group, after)
        if after is not None:
            self._transport.acknowledge(stream, partition, after, finish=False)
        claimed = 0
        cursor: bytes | str = "0-0"
        while True:
            cursor, entries, *_deleted = self._client.xautoclaim(
                key, self.group, self.name, 0, start_id=cursor, count=CLAIM_ENTRIES
            )
            claimed += len(entries)
            if _text(cursor) == "0-0":
                break
        for consumer in self._client.xinfo_consumers(key, self.group):
            if _text(consumer["name"]) != self.name and consumer["pending"] == 0:
                self._client.xgroup_delconsumer(key, self.group, consumer["name"])
        if claimed:
            log.info(
                "%s partition %d: consumer %s took over %d pending entries after %s",
                stream,
                partition,
                self.name,
                claimed,
                after,
            )
        return _Reading(key=key, position=after)

    def _read(self, stream: Stream, partition: int, reading: _Reading, count: int) -> list[Entry]:
        """Up to ``count`` entries after ``reading.position``, through the group."""
        import redis

        position = reading.position
        key = reading.key
        start = "-" if position is None else f"({position}"
        pipe = self._client.pipeline(transaction=True)
        pipe.xrange(key, "-", "+", count=1)
        pipe.xrevrange(key, "+", "-", count=1)
        if reading.redelivering:
            pipe.xrange(key, start, "+", count=count)
            pipe.xreadgroup(self.group, self.name, {key: position or "0"}, count=count)
        else:
            pipe.xrange(key, start, "+", count=1)
            pipe.xreadgroup(self.group, self.name, {key: ">"}, count=count)
        try:
            first, last, expected, reply = pipe.execute()
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The group was destroyed (XGROUP DESTROY, or the stream deleted) while this
            # consumer read: nothing of it is pending any more, so it restarts here.
            log.warning(
                "%s partition %d: consumer group %r of %s vanished; created it again at %s",
                stream,
                partition,
                self.group,
                key,
                position,
            )
            self._create_group(key, position)
            reading.redelivering = False
            return self._read(stream, partition, reading, count)
        self._check_offset(stream, partition, key, position, first, last)
        delivered: list[tuple[bytes, dict[bytes, bytes] | None]] = reply[0][1] if reply else []
        if reading.redelivering:
            if len(delivered) < count:
                reading.redelivering = False
            ids = [entry_id for entry_id, _ in delivered]
            if ids != [entry_id for entry_id, _ in expected[: len(ids)]]:
                return self._fall_back(stream, partition, reading, count, "re-delivered")
            if not delivered:
                return self._read(stream, partition, reading, count)
            return [(entry_id, fields[FIELD]) for entry_id, fields in expected[: len(ids)]]
        if (delivered[0][0] if delivered else None) != (expected[0][0] if expected else None):
            return self._fall_back(stream, partition, reading, count, "new")
        return [(entry_id, fields[FIELD]) for entry_id, fields in delivered]  # type: ignore[index]

    def _fall_back(
        self, stream: Stream, partition: int, reading: _Reading, count: int, what: str
    ) -> list[Entry]:
        """XRANGE from the position, and the group moved to what it returned."""
        position = reading.position
        start = "-" if position is None else f"({position}"
        entries = self._client.xrange(reading.key, start, "+", count=count)
        log.warning(
            "%s partition %d: the %s entries of consumer group %r did not continue at %s "
            "(another consumer read this partition, or entries were acknowledged without a "
            "commit); read %d entries with XRANGE instead and moved the group there",
            stream,
            partition,
            what,
            self.group,
            position,
            len(entries),
        )
        reading.redelivering = False
        if entries:
            self._client.xgroup_setid(reading.key, self.group, entries[-1][0])
        return [(entry_id, fields[FIELD]) for entry_id, fields in entries]

    def _check_offset(
        self,
        stream: Stream,
        partition: int,
        key: str,
        after: str | None,
        first: list[Any],
        last: list[Any],
    ) -> None:
        if after is None:
            return
        after_id = _parse_id(stream, partition, after)
        if first and _id(first[0][0]) > after_id and after_id != (0, 0):
            # Trimming keeps the committed entry itself, so a consumer's offset is
            # always in the stream unless entries after it were dropped (maxlen, or
            # a trim driven by a further commit on another warehouse).
            raise OffsetOutOfRangeError(
                f"offset {after} of {stream} partition {partition} was trimmed from "
                f"{key}: the stream now starts at {_text(first[0][0])}; entries after "
                "this offset may be lost (maxlen, or another consumer's commits)"
            )
        if after_id > (_id(last[0][0]) if last else (0, 0)):
            raise OffsetOutOfRangeError(
                f"offset {after} of {stream} partition {partition} is beyond the end of the "
                f"stream {key} ({_text(last[0][0]) if last else 'empty'}): the stream was "
                "deleted or replaced after this offset was committed. Point transport_url at "
                "the original server, or reset the consumer's checkpoint."
            )

    def lag_bytes(self, stream: Stream, partition: int, after: str | None) -> int:
        """See :meth:`_lag_bytes_once`; retried on a lost connection."""
        return self._transport.retrier.call(
            f"a lag read of {stream} partition {partition}",
            lambda: self._lag_bytes_once(stream, partition, after),
        )

    def _lag_bytes_once(self, stream: Stream, partition: int, after: str | None) -> int:
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

    def lag(self, stream: Stream, partition: int, after: str | None) -> Lag:
        """Bytes as :meth:`lag_bytes`; records and age from the entries after ``after``
        (:func:`entry_lag`). Retried on a lost connection."""
        stream = Stream(stream)
        if after is not None:
            _parse_id(stream, partition, after)
        behind = self.lag_bytes(stream, partition, after)
        key = self._transport.key(stream, partition)
        records, seconds = self._transport.retrier.call(
            f"a lag read of {stream} partition {partition}",
            lambda: entry_lag(self._client, key, after),
        )
        return Lag(behind, records, seconds)

    def ack(self, stream: Stream, partition: int, offset: str) -> None:
        """After the commit up to ``offset``: XACK, record ``offset`` as committed, trim.

        XACKs this group's pending entries with ids <= ``offset`` (whoever holds them),
        records ``offset`` in ``PREFIX:committed``, and trims with ``XTRIM MINID ~`` at
        the bound of the module docstring: never the committed entry itself, nothing
        after it, nothing another group has not acknowledged (approximate: whole
        radix-tree nodes, so a few entries below the bound may stay).
        """
        stream = Stream(stream)
        _parse_id(stream, partition, offset)
        # Idempotent: acknowledging again what is acknowledged changes nothing.
        self._transport.retrier.call(
            f"the acknowledgement of {stream} partition {partition} up to {offset}",
            lambda: self._transport.acknowledge(stream, partition, offset, finish=True),
        )

    def committed(self, stream: Stream, partition: int) -> str | None:
        """The offset this group last acknowledged for one partition (``None``: none)."""
        value = self._client.hget(
            self._transport.committed_key, self._transport.committed_field(stream, partition)
        )
        return None if value is None else _text(value)

    def close(self) -> None:
        """Leave the groups of the partitions read where nothing is pending any more.

        What is still pending stays under this consumer's name, for the next owner of
        the partition to claim. Best effort: with the server gone, the names stay (the
        next owner forgets those with nothing pending).
        """
        import redis

        try:
            for reading in self._readings.values():
                mine = self._client.xpending_range(
                    reading.key, self.group, "-", "+", 1, consumername=self.name
                )
                if not mine:
                    self._client.xgroup_delconsumer(reading.key, self.group, self.name)
        except redis.RedisError as exc:
            log.warning(
                "%s: could not leave the consumer group: %s", self._transport.retrier.component, exc
            )
        finally:
            self._readings.clear()


def entry_lag(client: Any, key: str, after: str | None) -> tuple[int, float]:
    """The records of stream ``key`` after entry id ``after`` (``None``: all), and their
    age: seconds from the oldest one's entry id to the newest entry's (ids carry the
    server's append time in milliseconds).

    One record per entry, so records = entries: XLEN minus the entries up to ``after``,
    counted exactly when there are at most 1000 of them (the usual case: acks trim the
    stream to the committed offset), else interpolated from the ids' times. A format
    packing several records per entry counts its records here instead.
    """
    pipe = client.pipeline(transaction=False)
    pipe.xlen(key)
    pipe.xrange(key, "-" if after is None else f"({after}", "+", count=1)
    pipe.xrevrange(key, "+", "-", count=1)
    length, oldest, newest = pipe.execute()
    if not oldest:
        return 0, 0.0
    newest_ms, oldest_ms = _id(newest[0][0])[0], _id(oldest[0][0])[0]
    upto = [] if after is None else client.xrange(key, "-", after, count=1001)
    if len(upto) <= 1000:
        records = length - len(upto)
    else:
        first_ms = _id(client.xrange(key, "-", "+", count=1)[0][0])[0]
        span = max(1, newest_ms - first_ms)
        records = max(1, int(length * (newest_ms - oldest_ms) / span))
    return records, (newest_ms - oldest_ms) / 1000


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``PREFIX:`` (streams, groups' bookkeeping, a serving store
    sharing the prefix): for tests and benchmarks that made the prefix for themselves."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def open_redis_transport(
    url: str,
    partitions: int,
    max_record_bytes: int,
    *,
    prefix: str = "adpulse",
    group: str = DEFAULT_GROUP,
    setting: str = "transport_url",
    timeouts: ServerTimeouts | None = None,
) -> RedisStreamsTransport:
    """Open the transport for a setting; one clear error naming the setting on failure.

    Query parameters override the key prefix (``?prefix=NAME``: several pipelines in one
    database) and the consumer group (``?group=NAME``).
    """
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    ours = ("prefix", "group")
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    prefix = next((v for k, v in query if k == "prefix"), prefix)
    group = next((v for k, v in query if k == "group"), group)
    url = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k not in ours])))
    try:
        return RedisStreamsTransport(
            url,
            partitions,
            prefix=prefix,
            group=group,
            max_record_bytes=max_record_bytes,
            timeouts=timeouts,
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
