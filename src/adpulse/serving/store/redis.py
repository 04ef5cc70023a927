"""The Redis serving store: live aggregates shared by every processor and API process.

Layout (``B`` = ``PREFIX:serving``; ``PREFIX`` defaults to ``adpulse``, set it with
``?prefix=NAME`` in the URL)::

    B:meta              hash   gen, start, newest (epoch seconds of minutes), ready
    B:gen               counter of generations (one per rebuild)
    B:batch:KEY         string with expiry: the batch KEY was applied
    B:lock              rebuild lock (token, expiry)
    B:next              generation being rebuilt (expiry as the lock): journal for it
    B:G:journal         list   arguments of the deltas applied while G is being rebuilt
    B:G:snap            hash   partition -> largest batch id committed in G's snapshot
    B:G:offsets         hash   "stream:partition" -> end offset of what G holds
    B:G:minutes         zset   minutes of generation G that hold data (score = minute)
    B:G:mP:MINUTE       hash   rollup key of projection P (index into PROJECTIONS; JSON
                               {a: ad_id, c: campaign, p: platform, l: location}, NULL
                               where P drops the column)
                               -> "impressions,clicks,conversions,attributed,
                                   revenue_hi,revenue_lo" (revenue: see below)
    B:G:c:MINUTE        hash   conversion event_id -> JSON {t: event_time_us, a: ad_id,
                               c: campaign, p: platform, l: location, k: click_time_us,
                               s: latency_seconds}
    B:G:cidx            hash   conversion event_id -> MINUTE (for re-attributions)

Every value is text, so nothing is rounded: times in microseconds, latency as the
shortest text that reads back as the same float, and revenue (the warehouse's
``DECIMAL(38,4)``) as two integers, ``revenue_hi`` whole multiples of 1e8 and
``revenue_lo`` the rest in ten-thousandths (0 <= lo < 1e12): Lua adds doubles, exact
for integers up to 2**53 (about 9e15), so one integer of ten-thousandths would lose
cents past 900 billion, while the pair stays exact up to 9e23 (the arithmetic of the
bounds: ``storage/warehouse/schema.py``, ``MAX_REVENUE``). A value written by an
earlier version, with one revenue integer, reads as ``revenue_hi`` = 0.

Atomicity: :meth:`apply` is one Lua script, so the batch key (``SET NX``), every
increment, the batch's offsets and the expiry of old minutes happen together or not at
all; a replayed batch finds its key and changes nothing. :meth:`read` is one Lua script
too, so it sees one consistent state. :meth:`rebuild` writes a new generation beside the
current one and switches ``B:meta`` to it in one script (readers see the old or the new
content, never a mix), under a lock so that only one process rebuilds at a time.

Concurrent writers: deltas of different processes commute (sums, per-event upserts), so
any number of processors may apply batches at once, also while one of them rebuilds
(the protocol of :mod:`.base`): once ``B:next`` is set, and before the warehouse is
read, every apply also appends its arguments to ``B:G:journal``; the switch script
replays the journal entries of batches the snapshot does not include (batch id above the
snapshot's largest of its partition, ``B:G:snap``) into G, then makes G current; an
apply after the switch skips G when ``B:G:snap`` says G's snapshot holds the batch. A
failed rebuild deletes ``B:next`` and its generation (the journal with it); a crashed
rebuilder's lock, marker and journal expire after :data:`LOCK_MILLISECONDS`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import orjson
import polars as pl

from adpulse.contracts import Stream
from adpulse.outages import ServerTimeouts
from adpulse.serving.store.base import (
    LIVE_CONVERSIONS,
    LIVE_MEASURES,
    LIVE_ROLLUPS,
    PROJECTIONS,
    WINDOW,
    LiveDelta,
    LiveRows,
    RebuildRunningError,
    ServingStore,
    ServingStoreError,
    ServingStoreUnavailableError,
    StoreSnapshot,
    StoreWindow,
    project,
    projection_for,
)
from adpulse.storage.warehouse.schema import REVENUE_SUM

if TYPE_CHECKING:
    import redis

_EPOCH: Final = datetime(1970, 1, 1)
#: Seconds an applied batch key is remembered: a retried write comes seconds later, and a
#: restarted processor (a new run id) is covered by its rebuild instead.
BATCH_KEY_SECONDS: Final = 3_600
#: A rebuild that takes longer than this loses its lock (a crashed rebuilder's expires).
LOCK_MILLISECONDS: Final = 300_000
#: Rows per script call of :meth:`RedisServingStore.apply` (keeps each call short).
APPLY_ROWS: Final = 20_000
#: Hash fields written per command while rebuilding.
_REBUILD_CHUNK: Final = 5_000

#: Lua shared by the apply and switch scripts: whether a generation's snapshot includes
#: a batch, and adding one delta (the arguments ``A`` from index ``i`` on) to a generation.
_ADD: Final = """
local function included(g, id, partition)
  if id == '' or partition == '' then return false end
  local last = redis.call('HGET', g .. ':snap', partition)
  return last ~= false and tonumber(id) <= tonumber(last)
end

local function add(g, start, newest, A, i, window, projections)
  local n = tonumber(A[i]); i = i + 1
  for _ = 1, n do
    local m = tonumber(A[i + 1])
    if m >= start then
      local key = g .. ':m' .. A[i] .. ':' .. A[i + 1]
      local s = {0, 0, 0, 0, 0, 0}
      local old = redis.call('HGET', key, A[i + 2])
      if old then
        local parts = {}
        for part in string.gmatch(old, '[^,]+') do parts[#parts + 1] = tonumber(part) end
        if #parts == 5 then table.insert(parts, 5, 0) end  -- earlier layout: no revenue_hi
        for k = 1, 6 do s[k] = parts[k] end
      end
      for k = 1, 6 do s[k] = s[k] + tonumber(A[i + 2 + k]) end
      -- revenue_lo back into [0, 1e12), the carry into revenue_hi (all exact integers)
      local carry = math.floor(s[6] / 1e12)
      s[5] = s[5] + carry
      s[6] = s[6] - carry * 1e12
      redis.call('HSET', key, A[i + 2],
        string.format('%.0f,%.0f,%.0f,%.0f,%.0f,%.0f', s[1], s[2], s[3], s[4], s[5], s[6]))
      redis.call('ZADD', g .. ':minutes', m, A[i + 1])
      if newest == nil or m > newest then newest = m end
    end
    i = i + 9
  end
  n = tonumber(A[i]); i = i + 1
  for _ = 1, n do
    local m = tonumber(A[i])
    if m >= start then
      redis.call('HSET', g .. ':c:' .. A[i], A[i + 1], A[i + 2])
      redis.call('HSET', g .. ':cidx', A[i + 1], A[i])
      redis.call('ZADD', g .. ':minutes', m, A[i])
      if newest == nil or m > newest then newest = m end
    end
    i = i + 3
  end
  n = tonumber(A[i]); i = i + 1
  for _ = 1, n do
    local a = cjson.decode(A[i])
    local m = redis.call('HGET', g .. ':cidx', a[1])
    if m then
      local key = g .. ':c:' .. m
      local raw = redis.call('HGET', key, a[1])
      if raw then
        local v = cjson.decode(raw)
        v.k = a[2]; v.s = a[3]; v.p = a[4]; v.l = a[5]
        redis.call('HSET', key, a[1], cjson.encode(v))
      end
    end
    i = i + 1
  end
  n = tonumber(A[i]); i = i + 1
  for _ = 1, n do
    redis.call('HSET', g .. ':offsets', A[i], A[i + 1])
    i = i + 2
  end
  if newest ~= nil then
    local cutoff = newest - window
    if cutoff > start then
      local bound = '(' .. string.format('%.0f', cutoff)
      for _, mm in ipairs(redis.call('ZRANGEBYSCORE', g .. ':minutes', '-inf', bound)) do
        for p = 0, projections - 1 do redis.call('DEL', g .. ':m' .. p .. ':' .. mm) end
        for _, id in ipairs(redis.call('HKEYS', g .. ':c:' .. mm)) do
          redis.call('HDEL', g .. ':cidx', id)
        end
        redis.call('DEL', g .. ':c:' .. mm)
      end
      redis.call('ZREMRANGEBYSCORE', g .. ':minutes', '-inf', bound)
      start = cutoff
    end
  end
  return start, newest
end
"""

#: ARGV: base, batch key, key seconds, window, projections, batch id, partition (both ''
#: when unknown), journal milliseconds, then the delta (see ``_apply_part``). While a
#: rebuild runs (``B:next`` names its generation) the arguments are journaled for it.
_APPLY: Final = (
    _ADD
    + """
local b = ARGV[1]
local meta = b .. ':meta'
local ready = redis.call('HGET', meta, 'ready') == '1'
local rebuilding = redis.call('GET', b .. ':next')
if not ready and not rebuilding then return -1 end
if not redis.call('SET', b .. ':batch:' .. ARGV[2], '1', 'NX', 'EX', ARGV[3]) then return 0 end
if ready then
  local g = b .. ':' .. redis.call('HGET', meta, 'gen')
  if not included(g, ARGV[6], ARGV[7]) then
    local start = tonumber(redis.call('HGET', meta, 'start'))
    local newest = tonumber(redis.call('HGET', meta, 'newest') or '')
    start, newest = add(g, start, newest, ARGV, 9, tonumber(ARGV[4]), tonumber(ARGV[5]))
    redis.call('HSET', meta, 'start', string.format('%.0f', start))
    if newest ~= nil then redis.call('HSET', meta, 'newest', string.format('%.0f', newest)) end
  end
end
if rebuilding then
  local journal = b .. ':' .. rebuilding .. ':journal'
  redis.call('RPUSH', journal, cjson.encode(ARGV))
  redis.call('PEXPIRE', journal, ARGV[8])
end
return 1
"""
)

#: One consistent read, returned as two tab-separated texts built in Redis (one reply
#: instead of a reply element per field: parsing those dominated the read time).
#: Rollup lines: minute, key JSON, five measures; conversion lines: event_id as JSON, value.
#: JSON escapes tabs and newlines, so neither occurs inside a column.
_READ: Final = r"""
local b = ARGV[1]
local info = redis.call('HMGET', b .. ':meta', 'ready', 'gen', 'start', 'newest')
if info[1] ~= '1' then return {0} end
if tonumber(ARGV[2]) < tonumber(info[3]) then return {0} end
local g = b .. ':' .. info[2]
local rollups, conversions = {}, {}
for _, mm in ipairs(redis.call('ZRANGEBYSCORE', g .. ':minutes', ARGV[2], ARGV[3])) do
  local h = redis.call('HGETALL', g .. ':m' .. ARGV[4] .. ':' .. mm)
  for k = 1, #h, 2 do
    local v = h[k + 1]
    -- earlier layout, one revenue integer: revenue_hi = 0
    if select(2, string.gsub(v, ',', ',')) == 4 then v = string.gsub(v, ',([^,]*)$', ',0,%1') end
    rollups[#rollups + 1] = mm .. '\t' .. h[k] .. '\t' .. string.gsub(v, ',', '\t')
  end
  if ARGV[5] == '1' then
    local c = redis.call('HGETALL', g .. ':c:' .. mm)
    for k = 1, #c, 2 do
      conversions[#conversions + 1] = cjson.encode(c[k]) .. '\t' .. c[k + 1]
    end
  end
end
return {1, table.concat(rollups, '\n'), table.concat(conversions, '\n')}
"""

#: ARGV: base, lock token, generation, start, newest ('' for none), window, projections.
#: Replays the journal (deltas applied since the rebuild began) for batches the snapshot
#: does not include, then makes the generation current; all in one step.
_SWITCH: Final = (
    _ADD
    + """
local b = ARGV[1]
if redis.call('GET', b .. ':lock') ~= ARGV[2] then return false end
local g = b .. ':' .. ARGV[3]
local start = tonumber(ARGV[4])
local newest = tonumber(ARGV[5])
local window, projections = tonumber(ARGV[6]), tonumber(ARGV[7])
for _, raw in ipairs(redis.call('LRANGE', g .. ':journal', 0, -1)) do
  local A = cjson.decode(raw)
  if not included(g, A[6], A[7]) then
    start, newest = add(g, start, newest, A, 9, window, projections)
  end
end
redis.call('DEL', g .. ':journal')
if redis.call('GET', b .. ':next') == ARGV[3] then redis.call('DEL', b .. ':next') end
local old = redis.call('HGET', b .. ':meta', 'gen')
redis.call('HSET', b .. ':meta', 'gen', ARGV[3], 'start', string.format('%.0f', start),
  'ready', '1')
if newest == nil then
  redis.call('HDEL', b .. ':meta', 'newest')
else
  redis.call('HSET', b .. ':meta', 'newest', string.format('%.0f', newest))
end
return old or ''
"""
)

_UNLOCK: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _seconds(minute: datetime) -> int:
    return int((minute - _EPOCH).total_seconds())


def _minute(seconds: int) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


def _minute_seconds(column: str) -> pl.Expr:
    """Epoch seconds of the minute of a Datetime column."""
    return pl.col(column).dt.truncate("1m").dt.epoch("s")


def _projected_fields(rollups: pl.DataFrame) -> pl.DataFrame:
    """:func:`_rollup_fields` of every projection, its index first (``projection``)."""
    if rollups.height == 0:
        schema = {"projection": pl.Int32(), "minute": pl.Int64(), "field": pl.String()}
        return pl.DataFrame(schema=schema | dict.fromkeys(_STORED_MEASURES, pl.Int64()))
    return pl.concat(
        _rollup_fields(project(rollups, columns)).select(
            pl.lit(i, dtype=pl.Int32).alias("projection"), pl.all()
        )
        for i, columns in enumerate(PROJECTIONS)
    )


#: The integers stored per rollup key, in order (revenue as two: see the module docs).
_STORED_MEASURES: Final = (*LIVE_MEASURES[:4], "revenue_hi", "revenue_lo")
#: ``revenue_hi`` counts multiples of this much revenue.
_HI_UNIT: Final = 10**8


def _revenue_parts(revenue: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """``revenue_hi`` and ``revenue_lo`` of a ``DECIMAL(38,4)`` revenue (module docs):
    ``revenue = hi * 1e8 + lo / 1e4`` with ``0 <= lo < 1e12``, computed exactly in 128-bit
    integers."""
    unit = pl.lit(_HI_UNIT, dtype=pl.Int128)
    whole = revenue.cast(pl.Int128)  # toward zero
    fraction = ((revenue - whole.cast(REVENUE_SUM)) * 10_000).cast(pl.Int64)
    hi = whole.floordiv(unit)
    lo = ((whole - hi * unit) * 10_000).cast(pl.Int64) + fraction
    # a negative fraction (a retraction) can leave lo just below 0: borrow from hi
    borrow = (lo < 0).cast(pl.Int64)
    return (hi.cast(pl.Int64) - borrow), lo + borrow * (_HI_UNIT * 10_000)


def _revenue_from_parts(hi: pl.Expr, lo: pl.Expr) -> pl.Expr:
    """The ``DECIMAL(38,4)`` revenue of its two stored integers."""
    whole = hi.cast(pl.Decimal(38, 0)) * pl.lit(_HI_UNIT).cast(pl.Decimal(38, 0))
    return whole.cast(REVENUE_SUM) + lo.cast(REVENUE_SUM) / 10_000


def _rollup_fields(rollups: pl.DataFrame) -> pl.DataFrame:
    """``minute`` (epoch seconds), ``field`` (the key as JSON text) and the six integers
    stored per key (:data:`_STORED_MEASURES`)."""
    hi, lo = _revenue_parts(pl.col("revenue").fill_null(0).cast(REVENUE_SUM))
    return rollups.select(
        _minute_seconds("minute").alias("minute"),
        pl.struct(
            pl.col("ad_id").cast(pl.String).alias("a"),
            pl.col("campaign").alias("c"),
            pl.col("platform").alias("p"),
            pl.col("location").alias("l"),
        )
        .struct.json_encode()
        .alias("field"),
        *(pl.col(m).fill_null(0).cast(pl.Int64) for m in LIVE_MEASURES[:4]),
        hi.alias("revenue_hi"),
        lo.alias("revenue_lo"),
    )


#: Conversion value fields (all text: Lua's cjson would round numbers) by column.
_CONVERSION_FIELDS: Final = {
    "event_time": "t",
    "ad_id": "a",
    "campaign": "c",
    "platform": "p",
    "location": "l",
    "click_time": "k",
    "latency_seconds": "s",
}


def _conversion_values(conversions: pl.DataFrame) -> pl.DataFrame:
    """``minute`` (epoch seconds), ``event_id`` and the JSON value of each conversion."""
    as_text = {
        "event_time": pl.col("event_time").dt.epoch("us").cast(pl.String),
        "ad_id": pl.col("ad_id").cast(pl.String),
        "campaign": pl.col("campaign"),
        "platform": pl.col("platform"),
        "location": pl.col("location"),
        "click_time": pl.col("click_time").dt.epoch("us").cast(pl.String),
        # Polars writes the shortest text that reads back as the same float
        "latency_seconds": pl.col("latency_seconds").cast(pl.String),
    }
    return conversions.select(
        _minute_seconds("event_time").alias("minute"),
        "event_id",
        pl.struct(expr.alias(_CONVERSION_FIELDS[name]) for name, expr in as_text.items())
        .struct.json_encode()
        .alias("value"),
    )


def _float_text(value: float) -> str:
    if not math.isfinite(value):
        raise ServingStoreError(f"latency {value!r} cannot be stored")
    return repr(value)


def _tab_separated(text: str, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.read_csv(
        text.encode(), separator="\t", quote_char=None, has_header=False, schema=schema
    )


def _decode_rollups(text: str) -> pl.DataFrame:
    if not text:
        return pl.DataFrame(schema=LIVE_ROLLUPS)
    lines = _tab_separated(
        text,
        {
            "minute": pl.Int64(),
            "field": pl.String(),
            **dict.fromkeys(_STORED_MEASURES, pl.Int64()),
        },
    )
    key = pl.col("field").str.json_decode(
        pl.Struct({"a": pl.String, "c": pl.String, "p": pl.String, "l": pl.String})
    )
    frame = lines.select(
        (pl.lit(_EPOCH) + pl.duration(seconds=pl.col("minute"))).alias("minute"),
        key.struct.field("a").cast(pl.Int64).alias("ad_id"),
        key.struct.field("c").alias("campaign"),
        key.struct.field("p").alias("platform"),
        key.struct.field("l").alias("location"),
        *LIVE_MEASURES[:4],
        _revenue_from_parts(pl.col("revenue_hi"), pl.col("revenue_lo")).alias("revenue"),
        pl.lit(0.0).alias("latency_sum_seconds"),
    )
    return frame.select(pl.col(name).cast(dtype) for name, dtype in LIVE_ROLLUPS.items())


def _decode_conversions(text: str) -> pl.DataFrame:
    if not text:
        return pl.DataFrame(schema=LIVE_CONVERSIONS)
    lines = _tab_separated(text, {"event_id": pl.String(), "value": pl.String()})
    text_fields = pl.Struct(dict.fromkeys(_CONVERSION_FIELDS.values(), pl.String))
    v = pl.col("value").str.json_decode(text_fields)

    def field(column: str) -> pl.Expr:
        return v.struct.field(_CONVERSION_FIELDS[column])

    def micros(column: str) -> pl.Expr:
        return pl.from_epoch(field(column).cast(pl.Int64), time_unit="us").alias(column)

    frame = lines.select(
        pl.col("event_id").str.json_decode(pl.String),
        micros("event_time"),
        field("ad_id").cast(pl.Int64).alias("ad_id"),
        field("campaign").alias("campaign"),
        field("platform").alias("platform"),
        field("location").alias("location"),
        micros("click_time"),
        field("latency_seconds").cast(pl.Float64).alias("latency_seconds"),
    )
    return frame.select(pl.col(name).cast(dtype) for name, dtype in LIVE_CONVERSIONS.items())


class RedisServingStore(ServingStore):
    """A :class:`ServingStore` in Redis (``redis://host:port/db``), keys under
    ``PREFIX:serving``. Raises :class:`ServingStoreUnavailableError` when unreachable."""

    def __init__(
        self, url: str, *, prefix: str = "adpulse", timeouts: ServerTimeouts | None = None
    ) -> None:
        """``timeouts.connect_seconds`` bounds every wait on the server: a store that stops
        answering costs the committer at most that long per try, never a halt (a failed
        write only makes the store rebuild later; see :mod:`.sync`)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        timeouts = timeouts or ServerTimeouts()
        self.url = url
        self.base = f"{prefix}:serving"
        self.client: redis.Redis = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=min(2.0, timeouts.connect_seconds),
            socket_timeout=timeouts.connect_seconds,
            socket_keepalive=True,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 0),  # a failure is handled by a rebuild, not here
        )
        try:
            self.client.ping()
        except redis.ResponseError as exc:  # e.g. a database index the server lacks
            self.client.close()
            raise ServingStoreUnavailableError(f"Redis refused it: {exc}") from exc
        except redis.RedisError as exc:
            self.client.close()
            raise ServingStoreUnavailableError(f"Redis is unreachable: {exc}") from exc
        self._apply = self.client.register_script(_APPLY)
        self._read = self.client.register_script(_READ)
        self._switch = self.client.register_script(_SWITCH)
        self._unlock = self.client.register_script(_UNLOCK)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise ServingStoreError(f"serving store {what} failed: {exc}") from exc

    # -- writes ------------------------------------------------------------------------
    def apply(self, batch_key: str, delta: LiveDelta) -> bool | None:
        """See :meth:`ServingStore.apply`. A large batch (catching up) is applied in
        parts of at most :data:`APPLY_ROWS` rows, one script call each, so Redis is
        never blocked for long; each part has a key of its own (``KEY#i``), so a replay
        is still a no-op; the last part carries the re-attributions and the offsets. A
        failure between parts leaves the batch partly applied (and its offsets not
        recorded), which the caller repairs with a rebuild like any failed write."""
        rollups = list(_projected_fields(delta.rows.rollups).iter_slices(APPLY_ROWS))
        conversions = list(delta.rows.conversions.iter_slices(APPLY_ROWS))
        parts = max(len(rollups), len(conversions), 1)
        results = []
        for i in range(parts):
            last = i == parts - 1
            results.append(
                self._apply_part(
                    f"{batch_key}#{i}",
                    delta,
                    rollups[i] if i < len(rollups) else None,
                    conversions[i] if i < len(conversions) else None,
                    last,
                )
            )
            if results[-1] is None:
                return None
        return any(results)

    def _apply_part(
        self,
        key: str,
        delta: LiveDelta,
        rollups: pl.DataFrame | None,
        conversions: pl.DataFrame | None,
        last: bool,
    ) -> bool | None:
        window = int(WINDOW.total_seconds())
        args: list[Any] = [self.base, key, BATCH_KEY_SECONDS, window, len(PROJECTIONS)]
        args.append("" if delta.batch_id is None else delta.batch_id)
        args.append("" if delta.partition is None else delta.partition)
        args.append(LOCK_MILLISECONDS)
        args.append(0 if rollups is None else rollups.height)
        for row in () if rollups is None else rollups.iter_rows():
            args.extend(row)
        args.append(0 if conversions is None else conversions.height)
        if conversions is not None and conversions.height:
            for row in _conversion_values(conversions).iter_rows():
                args.extend(row)
        # after every conversion: the last part
        moved = list(delta.reattributions.iter_rows()) if last else []
        args.append(len(moved))
        for eid, _click_eid, click_time, latency, platform, location in moved:
            click_us = None if click_time is None else str(_micros(click_time))
            text = None if latency is None else _float_text(latency)
            args.append(orjson.dumps([eid, click_us, text, platform, location]).decode())
        offsets = delta.offsets if last else {}
        args.append(len(offsets))
        for (stream, partition), offset in offsets.items():
            args.extend((_offset_field(stream, partition), offset))
        result = int(self._call("write", self._apply, args=args))
        return None if result < 0 else result == 1

    def rebuild(self, read: Callable[[], StoreSnapshot]) -> None:
        """See :meth:`ServingStore.rebuild`: under the lock, ``B:next`` names the new
        generation (writers journal for it) before ``read`` runs; the new generation is
        written beside the current one, then one script replays the journal and
        switches (module docs)."""
        token = uuid.uuid4().hex
        lock = f"{self.base}:lock"
        rebuilding = f"{self.base}:next"
        if not self._call("lock", self.client.set, lock, token, nx=True, px=LOCK_MILLISECONDS):
            raise RebuildRunningError("another process is rebuilding the serving store")
        generation = None
        try:
            generation = int(self._call("rebuild", self.client.incr, f"{self.base}:gen"))
            self._call(
                "rebuild", self.client.set, rebuilding, str(generation), px=LOCK_MILLISECONDS
            )
            snapshot = read()
            window = snapshot.window
            self._write_generation(f"{self.base}:{generation}", snapshot)
            newest = "" if window.newest is None else str(_seconds(window.newest))
            old = self._call(
                "switch",
                self._switch,
                args=[
                    self.base,
                    token,
                    generation,
                    _seconds(window.start),
                    newest,
                    int(WINDOW.total_seconds()),
                    len(PROJECTIONS),
                ],
            )
            if old is None:
                raise ServingStoreError("the rebuild lock expired before the switch")
            generation = int(old) if old else None  # now the one to delete
        finally:
            if generation is not None:
                with suppress(Exception):  # after a failure: stop the journaling
                    self._unlock(keys=[rebuilding], args=[str(generation)])
                self._delete_generation(generation)
            self._call("unlock", self._unlock, keys=[lock], args=[token])

    def offsets(self) -> dict[tuple[Stream, int], str] | None:
        ready, generation = self._call(
            "read", self.client.hmget, f"{self.base}:meta", ["ready", "gen"]
        )
        if ready != "1":
            return None
        fields = self._call("read", self.client.hgetall, f"{self.base}:{generation}:offsets")
        result = {}
        for name, offset in fields.items():
            stream, _, partition = name.rpartition(":")
            result[(Stream(stream), int(partition))] = offset
        return result

    def _write_generation(self, g: str, snapshot: StoreSnapshot) -> None:
        rows, start = snapshot.rows, snapshot.window.start
        pipe = self.client.pipeline(transaction=False)
        if snapshot.batches:
            batches: dict[Any, Any] = {str(p): str(b) for p, b in snapshot.batches.items()}
            pipe.hset(f"{g}:snap", mapping=batches)
        if snapshot.offsets:
            offsets: dict[Any, Any] = {
                _offset_field(s, p): o for (s, p), o in snapshot.offsets.items()
            }
            pipe.hset(f"{g}:offsets", mapping=offsets)
        rollups = rows.rollups.filter(pl.col("minute") >= start)
        if rollups.height:
            fields = _projected_fields(rollups).select(
                "projection",
                "minute",
                "field",
                pl.concat_str(
                    [pl.col(m).cast(pl.String) for m in _STORED_MEASURES], separator=","
                ).alias("value"),
            )
            for (projection, minute), part in fields.group_by("projection", "minute"):
                for chunk in part.iter_slices(_REBUILD_CHUNK):
                    mapping = dict(zip(chunk["field"], chunk["value"], strict=True))
                    pipe.hset(f"{g}:m{projection}:{minute}", mapping=mapping)
                pipe.zadd(f"{g}:minutes", {str(minute): int(str(minute))})
        conversions = rows.conversions.filter(pl.col("event_time") >= start)
        if conversions.height:
            values = _conversion_values(conversions)
            for (minute,), part in values.group_by("minute"):
                mapping = dict(zip(part["event_id"], part["value"], strict=True))
                pipe.hset(f"{g}:c:{minute}", mapping=mapping)
                pipe.hset(f"{g}:cidx", mapping=dict.fromkeys(part["event_id"], str(minute)))
                pipe.zadd(f"{g}:minutes", {str(minute): int(str(minute))})
        self._call("rebuild", pipe.execute)

    def _delete_generation(self, generation: int) -> None:
        try:
            keys = list(self.client.scan_iter(match=f"{self.base}:{generation}:*", count=1000))
            for i in range(0, len(keys), 1000):
                self.client.unlink(*keys[i : i + 1000])
        except Exception:  # noqa: BLE001 - leftovers of an old generation are harmless
            pass

    # -- reads -------------------------------------------------------------------------
    def read(
        self,
        start: datetime,
        end: datetime | None,
        columns: frozenset[str] = PROJECTIONS[-1],
        *,
        conversions: bool = True,
    ) -> LiveRows | None:
        upper = "+inf" if end is None else f"({_seconds(end)}"
        projection = PROJECTIONS.index(projection_for(columns))
        args = [self.base, _seconds(start), upper, projection, "1" if conversions else "0"]
        reply = self._call("read", self._read, args=args)
        if int(reply[0]) != 1:
            return None
        return LiveRows(_decode_rollups(reply[1]), _decode_conversions(reply[2]))

    def window(self) -> StoreWindow | None:
        ready, start, newest = self._call(
            "read", self.client.hmget, f"{self.base}:meta", ["ready", "start", "newest"]
        )
        if ready != "1":
            return None
        return StoreWindow(_minute(int(start)), None if not newest else _minute(int(newest)))

    def close(self) -> None:
        self.client.close()


def _offset_field(stream: Stream, partition: int) -> str:
    return f"{stream.value}:{partition}"


def _micros(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def open_redis_store(url: str, timeouts: ServerTimeouts | None = None) -> RedisServingStore:
    """Open the store of ``url``; ``?prefix=NAME`` sets the key prefix."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    prefix = next((v for k, v in query if k == "prefix"), "adpulse")
    clean = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "prefix"])))
    return RedisServingStore(clean, prefix=prefix, timeouts=timeouts)
