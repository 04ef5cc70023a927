"""The DynamoDB serving store: live aggregates in one DynamoDB table, shared by every
processor and API process (``dynamodb://TABLE?region=REGION[&endpoint_url=URL]``).

Item design (one table, string keys ``pk`` / ``sk``, TTL attribute ``expires``; ``G`` is
a generation, one per rebuild; ``MINUTE`` and ``HOUR`` are epoch seconds, ``MINUTE``
written with 10 digits so that sort keys order by time)::

    pk             sk                  attributes
    meta           meta                gen, ready, start, newest, built, hours (NS),
                                       snap (M: partition -> largest batch id of the
                                       snapshot), offsets (M: "stream:partition" ->
                                       offset), version (counts writes), gens (counts
                                       generations), and while a rebuild runs: next,
                                       closing, lock, lock_until
    b#KEY          b                   expires: the batch KEY was applied
    gG#rP#HOUR     MINUTE#KEY          im, cl, cv, ac (counts), rv (revenue), expires;
                                       rollups of projection P (index into PROJECTIONS),
                                       KEY = JSON [ad_id, campaign, platform, location],
                                       null where P drops the column
    gG#c#HOUR      MINUTE#EVENT_ID     t, k (event and click time, microseconds), a, c,
                                       p, l (ad, campaign, platform, location),
                                       s (latency seconds), expires: one conversion
    gG#i#SHARD     e#EVENT_ID          m (the conversion's MINUTE), expires; SHARD =
                                       crc32(event_id) % 16 (for re-attributions)
    gG#j           ORDER#PART          n (parts), d (bytes): a delta journaled while G is
                                       being rebuilt (ORDER: batch id, arrival time, key)

A key (or event id) too long for a sort key is written as its SHA-256 and kept in the
attribute ``key``. Every number is a DynamoDB Number, an exact decimal of up to 38
digits: revenue sums (the warehouse's ``DECIMAL(38,4)``) are added by DynamoDB itself
(``ADD``) without rounding, times are integers of microseconds, and a latency is the
shortest decimal that reads back as the same float. Nothing is a binary float.

At most once per batch: a batch first claims its key (a conditional ``PutItem`` of
``b#KEY``, refused when the key is there and not expired: a replay changes nothing),
then adds its rows with one ``UpdateItem ... ADD`` per item (any number of items, in
parallel, no 25- or 100-item limit to mind; ``ADD`` commutes, so concurrent writers
need no locks), then records its offsets, newest minute and hours in ``meta`` in one
conditional update. A failure after the claim leaves the batch partly applied and its
offsets not recorded, which the caller repairs with a rebuild (as for Redis, see
:mod:`.sync`); the key stays claimed, so a retry never adds twice.

The rebuild protocol of :mod:`.base`: under the lock in ``meta`` a rebuild names its new
generation in ``next``; from then on every apply also journals its delta for it, in a
transaction conditioned on ``meta`` (``next`` is G and the journal not closed). The new
generation is written beside the current one (``BatchWriteItem``, 25 items per call),
then the journal is closed (``closing``), replayed for batches the snapshot does not
include, and ``meta`` switched to G in one conditional update: readers see the old or the
new content, never a mix (a read checks that the generation did not change while it
read, and reads again if it did). A writer that finds the journal closed waits for the
switch, then writes to G. An apply after the switch skips G when ``snap`` says G's
snapshot holds the batch. A crashed rebuilder's lock expires after
:data:`LOCK_SECONDS`.

Expiry: minutes older than the window are never read (reads start at the window start);
whole hours below it are deleted by the writer that moves the start past them. Every
data item carries ``expires`` (its write time plus :data:`DATA_TTL_SECONDS`), so
DynamoDB's TTL removes what nobody deletes (an old generation whose deletion failed, a
late write to one); a generation older than :data:`REBUILD_AFTER_SECONDS` (less than the
TTL) counts as not ready, so it is rebuilt before TTL could remove a live item.

Throttling (``ProvisionedThroughputExceededException``, ``ThrottlingException``) is
retried with exponential backoff and full jitter (:data:`ATTEMPTS` tries, :func:`backoff`),
and so are unprocessed (throttled) items of a ``BatchWriteItem``; any other failure (the
service unreachable, a request refused) raises :class:`ServingStoreError` at once, which
the caller logs: reads then use the warehouse, and the store is rebuilt once it answers.

Reads are cached per store client by (generation, ``version``, range, projection):
``version`` in ``meta`` counts the writes, so a view read again over an unchanged store
costs one ``meta`` read.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import random
import struct
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, Final

import orjson
import polars as pl

from adpulse.contracts import Stream
from adpulse.outages import ServerTimeouts
from adpulse.serving.store.base import (
    LIVE_CONVERSIONS,
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
)
from adpulse.storage.warehouse.schema import CONVERSION_REATTRIBUTIONS, REVENUE_SUM

log = logging.getLogger(__name__)

_EPOCH: Final = datetime(1970, 1, 1)
_HOUR: Final = 3_600
_WINDOW_SECONDS: Final = int(WINDOW.total_seconds())
#: Seconds an applied batch key is remembered (as in the Redis store).
BATCH_KEY_SECONDS: Final = 3_600
#: A rebuild that takes longer than this loses its lock (a crashed rebuilder's expires).
LOCK_SECONDS: Final = 300
#: Data items expire (DynamoDB TTL) this long after their last write.
DATA_TTL_SECONDS: Final = 8 * 86_400
#: A generation this old counts as not ready (rebuilt), before any of its items expire.
REBUILD_AFTER_SECONDS: Final = 6 * 86_400
#: Tries per request refused for throttling (exponential backoff with full jitter,
#: :func:`backoff`); other failures are not retried.
ATTEMPTS: Final = 8
#: The error codes of a throttled request.
THROTTLED: Final = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
    }
)
#: Requests in flight at once per store (item writes and reads run in parallel).
PARALLEL: Final = 16
#: Reads kept for reuse while the store does not change (per store client).
READ_CACHE: Final = 32
#: Shards of the conversion index (its writes spread over this many partition keys).
INDEX_SHARDS: Final = 16
#: The longest key text kept in a sort key (DynamoDB allows 1,024 bytes).
_MAX_SORT_TEXT: Final = 512
#: A journaled delta is split into items of at most this many bytes (DynamoDB: 400 KB
#: per item, 4 MB per transaction).
_JOURNAL_PART: Final = 350_000
_JOURNAL_PARTS: Final = 10

_META: Final = {"pk": {"S": "meta"}, "sk": {"S": "meta"}}
_MEASURES: Final = ("im", "cl", "cv", "ac")


def backoff(attempt: int) -> float:
    """Seconds to wait after the ``attempt``-th throttled try (0-based): a random share
    of 50 ms doubled per try, at most 3.2 s (full jitter spreads retrying writers)."""
    return random.uniform(0, min(3.2, 0.05 * 2**attempt))


# --- values -------------------------------------------------------------------------------
def _seconds(value: datetime) -> int:
    return int((value - _EPOCH).total_seconds())


def _minute_of(value: datetime) -> int:
    seconds = _seconds(value)
    return seconds - seconds % 60


def _micros(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _hour(minute: int) -> int:
    return minute - minute % _HOUR


def _n(value: int | Decimal | str) -> dict[str, str]:
    return {"N": value if isinstance(value, str) else _decimal_text(value)}


def _decimal_text(value: int | Decimal) -> str:
    return str(value) if isinstance(value, int) else format(value, "f")


def _float_text(value: float) -> str:
    """The shortest decimal that reads back as ``value`` (no exponent: a DynamoDB Number)."""
    if not math.isfinite(value):
        raise ServingStoreError(f"latency {value!r} cannot be stored")
    return format(Decimal(repr(value)), "f")


def _sort_key(minute: int, text: str) -> tuple[str, dict[str, Any]]:
    """``MINUTE#text``, or ``MINUTE#~SHA256`` and the text in ``key`` when it is long."""
    if len(text.encode()) <= _MAX_SORT_TEXT:
        return f"{minute:010d}#{text}", {}
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"{minute:010d}#~{digest}", {"key": {"S": text}}


def _text_of(item: Mapping[str, Any]) -> str:
    if "key" in item:
        return str(item["key"]["S"])
    return str(item["sk"]["S"]).split("#", 1)[1]


def _shard(event_id: str) -> int:
    return zlib.crc32(event_id.encode()) % INDEX_SHARDS


def _optional(attributes: dict[str, Any], name: str, value: Any, kind: str) -> None:
    if value is not None:
        attributes[name] = {kind: value}


@dataclass(slots=True)
class _Meta:
    """The ``meta`` item, read."""

    gen: int | None = None
    ready: bool = False
    start: int = 0
    newest: int | None = None
    built: float = 0.0
    hours: set[int] = field(default_factory=set)
    batches: dict[int, int] = field(default_factory=dict)
    offsets: dict[tuple[Stream, int], str] = field(default_factory=dict)
    next: int | None = None
    closing: bool = False
    #: Counts the writes to the current generation (keys the read cache).
    version: int = 0

    @classmethod
    def of(cls, item: Mapping[str, Any] | None) -> _Meta:
        if not item:
            return cls()
        meta = cls(
            gen=int(item["gen"]["N"]) if "gen" in item else None,
            ready=bool(item.get("ready", {}).get("BOOL", False)),
            start=int(item["start"]["N"]) if "start" in item else 0,
            newest=int(item["newest"]["N"]) if "newest" in item else None,
            built=float(item["built"]["N"]) if "built" in item else 0.0,
            hours={int(h) for h in item.get("hours", {}).get("NS", [])},
            batches={int(p): int(b["N"]) for p, b in item.get("snap", {}).get("M", {}).items()},
            next=int(item["next"]["N"]) if "next" in item else None,
            closing=bool(item.get("closing", {}).get("BOOL", False)),
            version=int(item["version"]["N"]) if "version" in item else 0,
        )
        for name, offset in item.get("offsets", {}).get("M", {}).items():
            stream, _, partition = name.rpartition(":")
            meta.offsets[(Stream(stream), int(partition))] = offset["S"]
        return meta

    def current(self, now: float) -> bool:
        """Ready, and young enough that none of its items can have expired."""
        return self.ready and self.gen is not None and now - self.built < REBUILD_AFTER_SECONDS

    def included(self, delta: LiveDelta) -> bool:
        return delta.included_in(self.batches)


# --- items of a delta ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Rows:
    """A delta's rows as items to add, each with its minute (rows older than a start are
    left out at write time)."""

    rollups: list[tuple[int, int, str, dict[str, Any]]]  # minute, projection, sk, values
    conversions: list[tuple[int, str, str, dict[str, Any]]]  # minute, event_id, sk, values
    reattributions: list[tuple[str, dict[str, Any]]]  # event_id, values to set

    @classmethod
    def of(cls, rows: LiveRows, reattributions: pl.DataFrame) -> _Rows:
        rollups = []
        if rows.rollups.height:
            for index, columns in enumerate(PROJECTIONS):
                for row in project(rows.rollups, columns).iter_rows(named=True):
                    minute = _minute_of(row["minute"])
                    key = [row["ad_id"], row["campaign"], row["platform"], row["location"]]
                    sk, extra = _sort_key(minute, orjson.dumps(key).decode())
                    sums: dict[str, Any] = {
                        "im": _n(int(row["impressions"] or 0)),
                        "cl": _n(int(row["clicks"] or 0)),
                        "cv": _n(int(row["conversions"] or 0)),
                        "ac": _n(int(row["attributed_conversions"] or 0)),
                        "rv": _n(row["revenue"] if row["revenue"] is not None else 0),
                    }
                    rollups.append((minute, index, sk, sums | extra))
        conversions = []
        for row in rows.conversions.iter_rows(named=True):
            minute = _minute_of(row["event_time"])
            sk, extra = _sort_key(minute, row["event_id"])
            values: dict[str, Any] = {"t": _n(_micros(row["event_time"]))}
            _optional(values, "a", None if row["ad_id"] is None else str(row["ad_id"]), "N")
            _optional(values, "c", row["campaign"], "S")
            _optional(values, "p", row["platform"], "S")
            _optional(values, "l", row["location"], "S")
            click = row["click_time"]
            _optional(values, "k", None if click is None else str(_micros(click)), "N")
            latency = row["latency_seconds"]
            _optional(values, "s", None if latency is None else _float_text(latency), "N")
            conversions.append((minute, row["event_id"], sk, values | extra))
        moved = []
        for row in reattributions.iter_rows(named=True):
            if row["click_event_id"] is None:  # as the warehouse's UPDATE: kept as it is
                continue
            click, latency = row["click_time"], row["latency_seconds"]
            moved.append(
                (
                    row["event_id"],
                    {
                        "k": None if click is None else _n(_micros(click)),
                        "s": None if latency is None else _n(_float_text(latency)),
                        "p": None if row["platform"] is None else {"S": row["platform"]},
                        "l": None if row["location"] is None else {"S": row["location"]},
                    },
                )
            )
        return cls(rollups, conversions, moved)

    def newest(self, start: int) -> int | None:
        minutes = [m for m, *_ in self.rollups if m >= start]
        minutes += [m for m, *_ in self.conversions if m >= start]
        return max(minutes) if minutes else None

    def hours(self, start: int) -> set[int]:
        return {_hour(m) for m, *_ in self.rollups if m >= start} | {
            _hour(m) for m, *_ in self.conversions if m >= start
        }


# --- the journal: a delta as bytes --------------------------------------------------------
def _frame_bytes(frame: pl.DataFrame) -> bytes:
    out = io.BytesIO()
    frame.write_ipc(out, compression="zstd")
    return out.getvalue()


def _encode_delta(delta: LiveDelta) -> bytes:
    header = orjson.dumps(
        {
            "batch_id": delta.batch_id,
            "partition": delta.partition,
            "offsets": [[s.value, p, o] for (s, p), o in delta.offsets.items()],
        }
    )
    parts = [header] + [
        _frame_bytes(f) for f in (delta.rows.rollups, delta.rows.conversions, delta.reattributions)
    ]
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def _decode_delta(data: bytes) -> LiveDelta:
    parts, i = [], 0
    while i < len(data):
        (size,) = struct.unpack_from(">I", data, i)
        parts.append(data[i + 4 : i + 4 + size])
        i += 4 + size
    header = orjson.loads(parts[0])
    rollups, conversions, moved = (pl.read_ipc(io.BytesIO(p)) for p in parts[1:4])
    return LiveDelta(
        LiveRows(rollups.cast(LIVE_ROLLUPS), conversions.cast(LIVE_CONVERSIONS)),  # type: ignore[arg-type]
        moved.cast(CONVERSION_REATTRIBUTIONS),  # type: ignore[arg-type]
        batch_id=header["batch_id"],
        partition=header["partition"],
        offsets={(Stream(s), int(p)): o for s, p, o in header["offsets"]},
    )


def _journal_order(delta: LiveDelta, batch_key: str) -> str:
    """Journal entries sort by batch id (commit order within a partition), then arrival."""
    batch = "~" if delta.batch_id is None else f"{delta.batch_id:020d}"
    return f"{batch}#{time.time_ns():020d}#{batch_key}"


class DynamoDBServingStore(ServingStore):
    """A :class:`ServingStore` in the DynamoDB table ``table`` (created, with its key
    schema and TTL, when missing). Raises :class:`ServingStoreUnavailableError` when the
    service cannot be reached or the table cannot be used."""

    def __init__(
        self,
        table: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        timeouts: ServerTimeouts | None = None,
    ) -> None:
        import boto3
        import botocore.config
        import botocore.exceptions

        timeouts = timeouts or ServerTimeouts()
        self.table = table
        config = botocore.config.Config(
            connect_timeout=min(2.0, timeouts.connect_seconds),
            read_timeout=timeouts.connect_seconds,
            # throttling is retried below; anything else fails at once, as for Redis: the
            # caller rebuilds later, ingestion never waits on a store that is down
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=PARALLEL,
        )
        try:
            self.client: Any = boto3.session.Session().client(
                "dynamodb", region_name=region, endpoint_url=endpoint_url, config=config
            )
        except botocore.exceptions.BotoCoreError as exc:  # e.g. no region configured
            raise ServingStoreUnavailableError(
                f"DynamoDB cannot be used: {exc} (give ?region=REGION in the URL)"
            ) from exc
        self._pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="dynamodb-store")
        #: Reads by (generation, version, start, end, projection): a dashboard refresh
        #: over an unchanged store costs one ``meta`` read per view.
        self._cache: OrderedDict[tuple[Any, ...], LiveRows] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        try:
            self._ensure_table()
        except ServingStoreUnavailableError:
            self.close()
            raise
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            self.close()
            raise ServingStoreUnavailableError(f"DynamoDB table {table!r}: {exc}") from exc

    # -- the table -----------------------------------------------------------------------
    def _ensure_table(self) -> None:
        client = self.client
        try:
            described = client.describe_table(TableName=self.table)["Table"]
        except client.exceptions.ResourceNotFoundException:
            # another process may create it meanwhile
            with suppress(client.exceptions.ResourceInUseException):
                client.create_table(
                    TableName=self.table,
                    KeySchema=[
                        {"AttributeName": "pk", "KeyType": "HASH"},
                        {"AttributeName": "sk", "KeyType": "RANGE"},
                    ],
                    AttributeDefinitions=[
                        {"AttributeName": "pk", "AttributeType": "S"},
                        {"AttributeName": "sk", "AttributeType": "S"},
                    ],
                    BillingMode="PAY_PER_REQUEST",
                )
            client.get_waiter("table_exists").wait(
                TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
            )
            described = client.describe_table(TableName=self.table)["Table"]
        keys = {k["AttributeName"]: k["KeyType"] for k in described["KeySchema"]}
        if keys != {"pk": "HASH", "sk": "RANGE"}:
            raise ServingStoreUnavailableError(
                f"DynamoDB table {self.table!r} has the key schema {keys}, not pk (HASH) and"
                " sk (RANGE) strings: name a table of its own in serving_url"
            )
        ttl = client.describe_time_to_live(TableName=self.table)["TimeToLiveDescription"]
        if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            client.update_time_to_live(
                TableName=self.table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires"},
            )

    # -- requests ------------------------------------------------------------------------
    def _call(self, what: str, operation: str, **kwargs: Any) -> Any:
        import botocore.exceptions

        if operation != "batch_write_item":
            kwargs["TableName"] = self.table
        for attempt in range(ATTEMPTS):
            try:
                return getattr(self.client, operation)(**kwargs)
            except botocore.exceptions.ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("ConditionalCheckFailedException", "TransactionCanceledException"):
                    raise
                if code not in THROTTLED:
                    raise ServingStoreError(f"serving store {what} failed: {exc}") from exc
                if attempt == ATTEMPTS - 1:
                    raise ServingStoreError(
                        f"serving store {what} failed: still throttled after {ATTEMPTS} tries"
                        f" ({code}); raise the table's capacity or use on-demand billing"
                    ) from exc
            except botocore.exceptions.BotoCoreError as exc:
                raise ServingStoreError(f"serving store {what} failed: {exc}") from exc
            time.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    def _conditional(self, what: str, operation: str, **kwargs: Any) -> Any | None:
        """The response, or None when the request's condition did not hold."""
        import botocore.exceptions

        try:
            return self._call(what, operation, **kwargs)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return None
            raise ServingStoreError(f"serving store {what} failed: {exc}") from exc

    def _parallel(self, what: str, calls: Iterable[Callable[[], object]]) -> None:
        """Run ``calls`` on the pool; the first failure is raised once all ended."""
        futures = [self._pool.submit(call) for call in calls]
        errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                if isinstance(error, ServingStoreError):
                    raise error
                raise ServingStoreError(f"serving store {what} failed: {error}") from error

    def _query(self, what: str, pk: str, **condition: str) -> Iterator[dict[str, Any]]:
        """Every item of partition ``pk`` (``sk_from``/``sk_to``: an inclusive sort key
        range), strongly consistent, page after page."""
        expression, values = "pk = :pk", {":pk": {"S": pk}}
        if "sk_from" in condition and "sk_to" in condition:
            expression += " AND sk BETWEEN :a AND :b"
            values[":a"], values[":b"] = {"S": condition["sk_from"]}, {"S": condition["sk_to"]}
        elif "sk_from" in condition:
            expression += " AND sk >= :a"
            values[":a"] = {"S": condition["sk_from"]}
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": expression,
            "ExpressionAttributeValues": values,
            "ConsistentRead": True,
        }
        while True:
            page = self._call(what, "query", **kwargs)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _batch_write(self, what: str, requests: Sequence[dict[str, Any]]) -> None:
        """``BatchWriteItem`` in calls of 25, in parallel; unprocessed items (throttled)
        are sent again with exponential backoff."""

        def send(chunk: Sequence[dict[str, Any]]) -> None:
            pending: Sequence[dict[str, Any]] = chunk
            for attempt in range(ATTEMPTS):
                answer = self._call(
                    what, "batch_write_item", RequestItems={self.table: list(pending)}
                )
                pending = answer.get("UnprocessedItems", {}).get(self.table, [])
                if not pending:
                    return
                time.sleep(backoff(attempt))
            raise ServingStoreError(
                f"serving store {what} failed: {len(pending)} items stayed unprocessed"
                f" (throttled) after {ATTEMPTS} tries; raise the table's write capacity"
            )

        chunks = [requests[i : i + 25] for i in range(0, len(requests), 25)]
        self._parallel(what, [partial(send, c) for c in chunks])

    def _delete_partitions(self, pks: Iterable[str]) -> None:
        """Delete every item of these partitions (best effort: TTL removes leftovers)."""
        try:
            keys: list[dict[str, Any]] = []
            for pk in pks:
                keys.extend(
                    {"DeleteRequest": {"Key": {"pk": item["pk"], "sk": item["sk"]}}}
                    for item in self._query("cleanup", pk)
                )
            self._batch_write("cleanup", keys)
        except Exception as exc:  # noqa: BLE001 - leftovers expire by TTL
            log.info("serving store cleanup left items for TTL to remove: %s", exc)

    def _meta(self) -> _Meta:
        item = self._call("read", "get_item", Key=_META, ConsistentRead=True).get("Item")
        return _Meta.of(item)

    # -- writes --------------------------------------------------------------------------
    def apply(self, batch_key: str, delta: LiveDelta) -> bool | None:
        """See :meth:`ServingStore.apply` and the module docs: claim the batch key, journal
        the delta while a rebuild runs, add the rows, record offsets and window."""
        meta = self._meta()
        if not meta.current(time.time()) and meta.next is None:
            return None
        now = int(time.time())
        claimed = self._conditional(
            "write",
            "put_item",
            Item={"pk": {"S": f"b#{batch_key}"}, "sk": {"S": "b"}}
            | {"expires": _n(now + BATCH_KEY_SECONDS)},
            ConditionExpression="attribute_not_exists(pk) OR expires < :now",
            ExpressionAttributeValues={":now": _n(now)},
        )
        if claimed is None:
            return False
        deadline = time.monotonic() + LOCK_SECONDS
        journaled = False
        while meta.next is not None:
            if not meta.closing and self._journal(meta.next, batch_key, delta):
                journaled = True
                break
            if time.monotonic() > deadline:
                raise ServingStoreError("serving store write failed: a rebuild never ended")
            time.sleep(0.05)  # the rebuild is switching: then write to its generation
            meta = self._meta()
        if not meta.current(time.time()):
            return True if journaled else None  # None: the rebuild failed, another is due
        if not meta.included(delta):
            self._add_to_current(meta, delta)
        return True

    def _journal(self, generation: int, batch_key: str, delta: LiveDelta) -> bool:
        """Journal ``delta`` for ``generation``, unless its journal was closed (False)."""
        import botocore.exceptions

        data = zlib.compress(_encode_delta(delta))
        parts = [data[i : i + _JOURNAL_PART] for i in range(0, len(data), _JOURNAL_PART)] or [b""]
        if len(parts) > _JOURNAL_PARTS:
            raise ServingStoreError(
                f"serving store write failed: a delta of {len(data)} compressed bytes is too"
                " large to journal during a rebuild; the store is rebuilt instead"
            )
        order = _journal_order(delta, batch_key)
        expires = _n(int(time.time()) + 2 * LOCK_SECONDS)
        items: list[dict[str, Any]] = [
            {
                "ConditionCheck": {
                    "TableName": self.table,
                    "Key": _META,
                    "ConditionExpression": "#next = :g AND attribute_not_exists(closing)",
                    "ExpressionAttributeNames": {"#next": "next"},
                    "ExpressionAttributeValues": {":g": _n(generation)},
                }
            }
        ]
        for i, part in enumerate(parts):
            item = {
                "pk": {"S": f"g{generation}#j"},
                "sk": {"S": f"{order}#{i:03d}"},
                "n": _n(len(parts)),
                "d": {"B": part},
                "expires": expires,
            }
            items.append({"Put": {"TableName": self.table, "Item": item}})
        for attempt in range(ATTEMPTS):
            try:
                self.client.transact_write_items(TransactItems=items)
                return True
            except botocore.exceptions.ClientError as exc:
                reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
                if "ConditionalCheckFailed" in reasons:
                    return False
                if "TransactionConflict" not in reasons:
                    raise ServingStoreError(f"serving store journal failed: {exc}") from exc
            except botocore.exceptions.BotoCoreError as exc:
                raise ServingStoreError(f"serving store journal failed: {exc}") from exc
            time.sleep(min(2.0, 0.02 * 2**attempt))
        raise ServingStoreError("serving store journal failed: conflicts on every try")

    def _add_to_current(self, meta: _Meta, delta: LiveDelta) -> None:
        """Add ``delta`` to the current generation, then record its offsets, hours and
        newest minute in ``meta`` (conditioned on the generation: after a switch the new
        one's snapshot holds the batch, see the module docs)."""
        assert meta.gen is not None
        rows = _Rows.of(delta.rows, delta.reattributions)
        generation = meta.gen
        self._write_rows(generation, meta.start, rows)
        names: dict[str, str] = {}
        values: dict[str, Any] = {":g": _n(generation)}
        sets = []
        for i, ((stream, partition), offset) in enumerate(delta.offsets.items()):
            names[f"#o{i}"] = f"{stream.value}:{partition}"
            values[f":o{i}"] = {"S": offset}
            sets.append(f"offsets.#o{i} = :o{i}")
        hours = rows.hours(meta.start)
        values[":one"] = _n(1)
        expression = ("SET " + ", ".join(sets) if sets else "") + " ADD version :one"
        if hours:
            expression += ", hours :h"
            values[":h"] = {"NS": [str(h) for h in sorted(hours)]}
        self._conditional(
            "write",
            "update_item",
            Key=_META,
            UpdateExpression=expression.strip(),
            ConditionExpression="gen = :g",
            **({"ExpressionAttributeNames": names} if names else {}),
            ExpressionAttributeValues=values,
        )
        newest = rows.newest(meta.start)
        if newest is not None:
            self._advance(meta, newest)

    def _advance(self, meta: _Meta, newest: int) -> None:
        """Move the window's newest minute (and its start) forward to ``newest`` unless
        it is there already; delete the hours the start left behind."""
        assert meta.gen is not None
        for _ in range(ATTEMPTS):
            if meta.newest is not None and meta.newest >= newest:
                return
            start = max(meta.start, newest - _WINDOW_SECONDS)
            moved = self._conditional(
                "write",
                "update_item",
                Key=_META,
                UpdateExpression="SET newest = :n, #start = :s ADD version :one",
                ConditionExpression=(
                    "gen = :g AND (attribute_not_exists(newest) OR newest < :n) AND #start <= :s"
                ),
                ExpressionAttributeNames={"#start": "start"},
                ExpressionAttributeValues={
                    ":n": _n(newest),
                    ":s": _n(start),
                    ":g": _n(meta.gen),
                    ":one": _n(1),
                },
            )
            if moved is not None:
                if start > meta.start:
                    self._expire(meta.gen, start)
                return
            current = self._meta()
            if current.gen != meta.gen:
                return
            meta = current
        raise ServingStoreError("serving store write failed: the window kept moving")

    def _expire(self, generation: int, start: int) -> None:
        """Delete the hours of ``generation`` that lie wholly before ``start``."""
        meta = self._meta()
        if meta.gen != generation:
            return
        gone = sorted(h for h in meta.hours if h + _HOUR <= start)
        if not gone:
            return
        pks = [f"g{generation}#r{p}#{h}" for h in gone for p in range(len(PROJECTIONS))]
        conversions = [
            item for h in gone for item in self._query("cleanup", f"g{generation}#c#{h}")
        ]
        index = [
            {
                "DeleteRequest": {
                    "Key": {
                        "pk": {"S": f"g{generation}#i#{_shard(eid)}"},
                        "sk": {"S": f"e#{eid}"},
                    }
                }
            }
            for eid in (_text_of(item) for item in conversions)
        ]
        self._delete_partitions(pks + [f"g{generation}#c#{h}" for h in gone])
        try:
            self._batch_write("cleanup", index)
        except ServingStoreError as exc:
            log.info("serving store cleanup left index items for TTL to remove: %s", exc)
        self._conditional(
            "write",
            "update_item",
            Key=_META,
            UpdateExpression="DELETE hours :h",
            ConditionExpression="gen = :g",
            ExpressionAttributeValues={
                ":h": {"NS": [str(h) for h in gone]},
                ":g": _n(generation),
            },
        )

    def _write_rows(self, generation: int, start: int, rows: _Rows) -> None:
        """Add the rows of minutes from ``start`` on to ``generation``: one ``ADD`` per
        rollup item, a ``PutItem`` per conversion and index item, then re-attributions."""
        expires = _n(int(time.time()) + DATA_TTL_SECONDS)
        calls: list[Callable[[], object]] = []
        for minute, projection, sk, values in rows.rollups:
            if minute < start:
                continue
            key = {"pk": {"S": f"g{generation}#r{projection}#{_hour(minute)}"}, "sk": {"S": sk}}
            calls.append(partial(self._add_rollup, key, values, expires))
        self._parallel("write", calls)
        puts = []
        for minute, event_id, sk, values in rows.conversions:
            if minute < start:
                continue
            item = {"pk": {"S": f"g{generation}#c#{_hour(minute)}"}, "sk": {"S": sk}}
            puts.append({"PutRequest": {"Item": item | values | {"expires": expires}}})
            index = {
                "pk": {"S": f"g{generation}#i#{_shard(event_id)}"},
                "sk": {"S": f"e#{event_id}"},
                "m": _n(minute),
                "expires": expires,
            }
            puts.append({"PutRequest": {"Item": index}})
        self._batch_write("write", puts)
        moves = [partial(self._reattribute, generation, e, v) for e, v in rows.reattributions]
        self._parallel("write", moves)

    def _add_rollup(self, key: dict[str, Any], values: dict[str, Any], expires: Any) -> None:
        adds = ", ".join(f"{m} :{m}" for m in (*_MEASURES, "rv"))
        extra = {k: v for k, v in values.items() if k == "key"}
        self._call(
            "write",
            "update_item",
            Key=key,
            UpdateExpression=f"ADD {adds} SET expires = :e" + (", #key = :key" if extra else ""),
            **({"ExpressionAttributeNames": {"#key": "key"}} if extra else {}),
            ExpressionAttributeValues={f":{m}": values[m] for m in (*_MEASURES, "rv")}
            | {":e": expires}
            | ({":key": extra["key"]} if extra else {}),
        )

    def _reattribute(self, generation: int, event_id: str, values: dict[str, Any]) -> None:
        index = self._call(
            "write",
            "get_item",
            Key={"pk": {"S": f"g{generation}#i#{_shard(event_id)}"}, "sk": {"S": f"e#{event_id}"}},
            ConsistentRead=True,
        ).get("Item")
        if index is None:  # not held (older than the window)
            return
        minute = int(index["m"]["N"])
        sk, _ = _sort_key(minute, event_id)
        sets = [f"{name} = :{name}" for name, value in values.items() if value is not None]
        removes = [name for name, value in values.items() if value is None]
        expression = ("SET " + ", ".join(sets) if sets else "") + (
            " REMOVE " + ", ".join(removes) if removes else ""
        )
        self._conditional(
            "write",
            "update_item",
            Key={"pk": {"S": f"g{generation}#c#{_hour(minute)}"}, "sk": {"S": sk}},
            UpdateExpression=expression.strip(),
            ConditionExpression="attribute_exists(pk)",
            **(
                {"ExpressionAttributeValues": {f":{n}": v for n, v in values.items() if v}}
                if sets
                else {}
            ),
        )

    # -- rebuilds ------------------------------------------------------------------------
    def rebuild(self, read: Callable[[], StoreSnapshot]) -> None:
        """See :meth:`ServingStore.rebuild` and the module docs."""
        token = uuid.uuid4().hex
        now = time.time()
        locked = self._conditional(
            "lock",
            "update_item",
            Key=_META,
            UpdateExpression=(
                "SET #lock = :t, lock_until = :u, #next = if_not_exists(gens, :zero) + :one,"
                " gens = if_not_exists(gens, :zero) + :one REMOVE closing"
            ),
            ConditionExpression="attribute_not_exists(lock_until) OR lock_until < :now",
            ExpressionAttributeNames={"#lock": "lock", "#next": "next"},
            ExpressionAttributeValues={
                ":t": {"S": token},
                ":u": _n(int(now) + LOCK_SECONDS),
                ":now": _n(int(now)),
                ":zero": _n(0),
                ":one": _n(1),
            },
            ReturnValues="UPDATED_NEW",
        )
        if locked is None:
            raise RebuildRunningError("another process is rebuilding the serving store")
        generation = int(locked["Attributes"]["next"]["N"])
        hours: set[int] = set()
        switched = False
        try:
            snapshot = read()
            window = snapshot.window
            start = _seconds(window.start)
            newest = None if window.newest is None else _seconds(window.newest)
            if newest is not None:
                start = max(start, newest - _WINDOW_SECONDS)
            snap = LiveRows(
                snapshot.rows.rollups.filter(pl.col("minute") >= _EPOCH + timedelta(seconds=start)),
                snapshot.rows.conversions.filter(
                    pl.col("event_time") >= _EPOCH + timedelta(seconds=start)
                ),
            )
            rows = _Rows.of(snap, pl.DataFrame(schema=CONVERSION_REATTRIBUTIONS))
            hours |= rows.hours(start)
            self._write_generation(generation, rows)
            if (
                self._conditional(
                    "switch",
                    "update_item",
                    Key=_META,
                    UpdateExpression="SET closing = :yes",
                    ConditionExpression="#lock = :t",
                    ExpressionAttributeNames={"#lock": "lock"},
                    ExpressionAttributeValues={":yes": {"BOOL": True}, ":t": {"S": token}},
                )
                is None
            ):
                raise ServingStoreError("the rebuild lock expired before the switch")
            offsets = dict(snapshot.offsets)
            for delta in self._journaled(generation):
                if delta.included_in(snapshot.batches):
                    continue
                more = _Rows.of(delta.rows, delta.reattributions)
                self._write_rows(generation, start, more)
                hours |= more.hours(start)
                offsets.update(delta.offsets)
                latest = more.newest(start)
                if latest is not None and (newest is None or latest > newest):
                    newest = latest
                    start = max(start, newest - _WINDOW_SECONDS)
            old = self._switch(generation, token, start, newest, hours, offsets, snapshot)
            switched = True
            if old is not None and old.gen is not None:
                self._delete_generation(old.gen, old.hours)
            self._delete_partitions([f"g{generation}#j"])
            if any(h + _HOUR <= start for h in hours):
                self._expire(generation, start)
        finally:
            if not switched:
                self._conditional(
                    "unlock",
                    "update_item",
                    Key=_META,
                    UpdateExpression="REMOVE #lock, lock_until, #next, closing",
                    ConditionExpression="#lock = :t",
                    ExpressionAttributeNames={"#lock": "lock", "#next": "next"},
                    ExpressionAttributeValues={":t": {"S": token}},
                )
                self._delete_generation(generation, hours)

    def _write_generation(self, generation: int, rows: _Rows) -> None:
        expires = _n(int(time.time()) + DATA_TTL_SECONDS)
        puts = []
        for minute, projection, sk, values in rows.rollups:
            pk = f"g{generation}#r{projection}#{_hour(minute)}"
            item = {"pk": {"S": pk}, "sk": {"S": sk}} | values | {"expires": expires}
            puts.append({"PutRequest": {"Item": item}})
        self._batch_write("rebuild", puts)
        self._write_rows(generation, 0, _Rows([], rows.conversions, []))

    def _journaled(self, generation: int) -> list[LiveDelta]:
        entries: dict[str, list[dict[str, Any]]] = {}
        for item in self._query("rebuild", f"g{generation}#j"):
            entries.setdefault(str(item["sk"]["S"]).rsplit("#", 1)[0], []).append(item)
        deltas = []
        for _, parts in sorted(entries.items()):
            if len(parts) != int(parts[0]["n"]["N"]):
                continue  # cannot happen: the parts are written in one transaction
            data = b"".join(p["d"]["B"] for p in sorted(parts, key=lambda p: p["sk"]["S"]))
            deltas.append(_decode_delta(zlib.decompress(data)))
        return deltas

    def _switch(
        self,
        generation: int,
        token: str,
        start: int,
        newest: int | None,
        hours: set[int],
        offsets: Mapping[tuple[Stream, int], str],
        snapshot: StoreSnapshot,
    ) -> _Meta | None:
        """Make ``generation`` current (one conditional update); the previous meta."""
        values: dict[str, Any] = {
            ":g": _n(generation),
            ":yes": {"BOOL": True},
            ":s": _n(start),
            ":built": _n(int(time.time())),
            ":snap": {"M": {str(p): _n(b) for p, b in snapshot.batches.items()}},
            ":offsets": {"M": {f"{s.value}:{p}": {"S": o} for (s, p), o in offsets.items()}},
            ":t": {"S": token},
        }
        sets = ["gen = :g", "ready = :yes", "#start = :s", "built = :built", "snap = :snap"]
        sets.append("offsets = :offsets")
        removes = ["#lock", "lock_until", "#next", "closing"]
        if newest is None:
            removes.append("newest")
        else:
            sets.append("newest = :n")
            values[":n"] = _n(newest)
        if hours:
            sets.append("hours = :h")
            values[":h"] = {"NS": [str(h) for h in sorted(hours)]}
        else:
            removes.append("hours")
        answer = self._conditional(
            "switch",
            "update_item",
            Key=_META,
            UpdateExpression=f"SET {', '.join(sets)} REMOVE {', '.join(removes)}",
            ConditionExpression="#lock = :t",
            ExpressionAttributeNames={"#lock": "lock", "#next": "next", "#start": "start"},
            ExpressionAttributeValues=values,
            ReturnValues="ALL_OLD",
        )
        if answer is None:
            raise ServingStoreError("the rebuild lock expired before the switch")
        return _Meta.of(answer.get("Attributes"))

    def _delete_generation(self, generation: int, hours: Iterable[int]) -> None:
        hours = sorted(hours)
        pks = [f"g{generation}#r{p}#{h}" for h in hours for p in range(len(PROJECTIONS))]
        pks += [f"g{generation}#c#{h}" for h in hours]
        pks += [f"g{generation}#i#{s}" for s in range(INDEX_SHARDS)]
        pks.append(f"g{generation}#j")
        self._delete_partitions(pks)

    # -- reads ---------------------------------------------------------------------------
    def offsets(self) -> dict[tuple[Stream, int], str] | None:
        meta = self._meta()
        return dict(meta.offsets) if meta.current(time.time()) else None

    def window(self) -> StoreWindow | None:
        meta = self._meta()
        if not meta.current(time.time()):
            return None
        newest = None if meta.newest is None else _EPOCH + timedelta(seconds=meta.newest)
        return StoreWindow(_EPOCH + timedelta(seconds=meta.start), newest)

    def read(
        self,
        start: datetime,
        end: datetime | None,
        columns: frozenset[str] = PROJECTIONS[-1],
        *,
        conversions: bool = True,
    ) -> LiveRows | None:
        projection = next(i for i, kept in enumerate(PROJECTIONS) if columns <= kept)
        for _ in range(3):
            meta = self._meta()
            if not meta.current(time.time()) or _seconds(start) < meta.start:
                return None
            key = (meta.gen, meta.version, start, end, projection, conversions)
            with self._lock:
                cached = self._cache.get(key)
            if cached is not None:
                return cached
            rows = self._read_generation(meta, _seconds(start), end, projection, conversions)
            if self._meta().gen == meta.gen:
                with self._lock:
                    self._cache[key] = rows
                    while len(self._cache) > READ_CACHE:
                        self._cache.popitem(last=False)
                return rows
        raise ServingStoreError("serving store read failed: rebuilt three times while reading")

    def _read_generation(
        self, meta: _Meta, start: int, end: datetime | None, projection: int, conversions: bool
    ) -> LiveRows:
        upper = None if end is None else _seconds(end) - 1
        hours = sorted(h for h in meta.hours if h + _HOUR > start and (upper is None or h <= upper))
        bounds = {"sk_from": f"{start:010d}"}
        if upper is not None:
            bounds["sk_to"] = f"{upper:010d}~"
        pks = [f"g{meta.gen}#r{projection}#{h}" for h in hours]
        if conversions:
            pks += [f"g{meta.gen}#c#{h}" for h in hours]
        pages = list(self._pool.map(lambda pk: list(self._query("read", pk, **bounds)), pks))
        rollups = [item for page in pages[: len(hours)] for item in page]
        held = [item for page in pages[len(hours) :] for item in page]
        return LiveRows(_rollup_frame(rollups), _conversion_frame(held))

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._pool.shutdown(wait=True)
            self.client.close()


def _rollup_frame(items: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    if not items:
        return pl.DataFrame(schema=LIVE_ROLLUPS)
    minutes, keys = [], []
    for item in items:
        minutes.append(_EPOCH + timedelta(seconds=int(str(item["sk"]["S"])[:10])))
        keys.append(orjson.loads(_text_of(item)))
    frame = pl.DataFrame(
        {
            "minute": minutes,
            "ad_id": [k[0] for k in keys],
            "campaign": [k[1] for k in keys],
            "platform": [k[2] for k in keys],
            "location": [k[3] for k in keys],
            "impressions": [int(i["im"]["N"]) for i in items],
            "clicks": [int(i["cl"]["N"]) for i in items],
            "conversions": [int(i["cv"]["N"]) for i in items],
            "attributed_conversions": [int(i["ac"]["N"]) for i in items],
            "revenue": pl.Series([i["rv"]["N"] for i in items], dtype=pl.String).cast(REVENUE_SUM),
            "latency_sum_seconds": [0.0] * len(items),
        },
        schema_overrides={"ad_id": pl.Int64, "campaign": pl.String, "platform": pl.String},
    )
    return frame.select(pl.col(name).cast(dtype) for name, dtype in LIVE_ROLLUPS.items())


def _conversion_frame(items: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    if not items:
        return pl.DataFrame(schema=LIVE_CONVERSIONS)

    def number(item: Mapping[str, Any], name: str) -> str | None:
        return item[name]["N"] if name in item else None

    def text(item: Mapping[str, Any], name: str) -> str | None:
        return item[name]["S"] if name in item else None

    def time_of(value: str | None) -> datetime | None:
        return None if value is None else _from_micros(int(value))

    rows = [
        (
            _text_of(item),
            time_of(number(item, "t")),
            None if "a" not in item else int(item["a"]["N"]),
            text(item, "c"),
            text(item, "p"),
            text(item, "l"),
            time_of(number(item, "k")),
            None if "s" not in item else float(item["s"]["N"]),
        )
        for item in items
    ]
    return pl.DataFrame(rows, schema=LIVE_CONVERSIONS, orient="row")


# --- the cost model -----------------------------------------------------------------------
def item_size(item: Mapping[str, Any]) -> int:
    """The size of an item by DynamoDB's rules (what capacity units are charged on):
    attribute names plus values; a Number is about one byte per two significant digits
    plus one; a map or set adds 3 bytes and one per element."""

    def value(v: Mapping[str, Any]) -> int:
        ((kind, x),) = v.items()
        if kind == "S":
            return len(str(x).encode())
        if kind == "N":
            digits = len(str(x).lstrip("-").replace(".", "").strip("0")) or 1
            return (digits + 1) // 2 + 1
        if kind == "B":
            return len(x)
        if kind in ("BOOL", "NULL"):
            return 1
        if kind == "M":
            return 3 + sum(len(k.encode()) + value(e) + 1 for k, e in x.items())
        if kind == "NS":
            return 3 + sum(value({"N": e}) + 1 for e in x)
        return 3 + sum(value(e) + 1 for e in x)  # L and the other sets

    return sum(len(name.encode()) + value(v) for name, v in item.items())


@dataclass(slots=True)
class Capacity:
    """Requests and capacity units (strongly consistent reads: 4 KB per read unit; writes:
    1 KB per write unit, rounded up per item)."""

    requests: int = 0
    read_units: int = 0
    write_units: int = 0

    def __add__(self, other: Capacity) -> Capacity:
        return Capacity(
            self.requests + other.requests,
            self.read_units + other.read_units,
            self.write_units + other.write_units,
        )


def _write_units(size: int) -> int:
    return max(1, -(-size // 1024))


def _read_units(size: int) -> int:
    return max(1, -(-size // 4096))


#: An estimate of the ``meta`` item of a store fed by 16 partitions: three streams'
#: offsets, the snapshot's batch ids and 25 hours.
META_BYTES: Final = 2_048


def apply_cost(
    delta: LiveDelta, start: datetime = _EPOCH, meta_bytes: int = META_BYTES
) -> Capacity:
    """What :meth:`DynamoDBServingStore.apply` of ``delta`` costs outside rebuilds: the
    ``meta`` read, the claim, one update per rollup item of every projection, two puts
    per conversion (it and its index entry), a read and an update per re-attribution,
    and the ``meta`` updates (offsets and hours; the window when it moves)."""
    rows = _Rows.of(delta.rows, delta.reattributions)
    first = _minute_of(start) if start > _EPOCH else 0
    cost = Capacity(requests=2, read_units=_read_units(meta_bytes), write_units=1)
    expires = {"expires": _n(int(time.time()))}
    for minute, projection, sk, values in rows.rollups:
        if minute >= first:
            key = {"pk": {"S": f"g1#r{projection}#{_hour(minute)}"}, "sk": {"S": sk}}
            cost += Capacity(1, 0, _write_units(item_size(key | values | expires)))
    for minute, event_id, sk, values in rows.conversions:
        if minute >= first:
            item = {"pk": {"S": f"g1#c#{_hour(minute)}"}, "sk": {"S": sk}} | values | expires
            index = {"pk": {"S": "g1#i#15"}, "sk": {"S": f"e#{event_id}"}, "m": _n(minute)}
            size = _write_units(item_size(item)) + _write_units(item_size(index | expires))
            cost += Capacity(0, 0, size)
    puts = sum(1 for m, *_ in rows.conversions if m >= first) * 2
    cost.requests += -(-puts // 25)
    cost += Capacity(
        2 * len(rows.reattributions), len(rows.reattributions), len(rows.reattributions)
    )
    meta_updates = 2 if rows.newest(first) is not None else 1
    return cost + Capacity(meta_updates, 0, meta_updates * _write_units(meta_bytes))


def stored_bytes(rows: LiveRows, columns: frozenset[str] = PROJECTIONS[-1]) -> tuple[int, int]:
    """The bytes (DynamoDB's item sizes) of the rollup items a read of ``columns`` returns
    for ``rows``, and of its conversion items: what its queries are charged on."""
    projection = next(i for i, kept in enumerate(PROJECTIONS) if columns <= kept)
    parts = _Rows.of(rows, pl.DataFrame(schema=CONVERSION_REATTRIBUTIONS))
    expires = {"expires": _n(int(time.time()))}
    rollup_bytes = sum(
        item_size({"pk": {"S": f"g1#r{index}#{_hour(m)}"}, "sk": {"S": sk}} | values | expires)
        for m, index, sk, values in parts.rollups
        if index == projection
    )
    conversion_bytes = sum(
        item_size({"pk": {"S": f"g1#c#{_hour(m)}"}, "sk": {"S": sk}} | values | expires)
        for m, _, sk, values in parts.conversions
    )
    return rollup_bytes, conversion_bytes


#: The URL's query parameters.
_PARAMETERS: Final = ("region", "endpoint_url")


def open_dynamodb_store(url: str, timeouts: ServerTimeouts | None = None) -> DynamoDBServingStore:
    """Open the store of ``dynamodb://TABLE?region=REGION&endpoint_url=URL`` (both
    parameters optional: boto3's configuration, e.g. ``AWS_DEFAULT_REGION``, fills in;
    credentials always come from boto3's chain, never from the URL)."""
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    unknown = sorted(set(query) - set(_PARAMETERS))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)}; accepted: region, endpoint_url"
        )
    return DynamoDBServingStore(
        parts.netloc,
        region=query.get("region"),
        endpoint_url=query.get("endpoint_url"),
        timeouts=timeouts,
    )
