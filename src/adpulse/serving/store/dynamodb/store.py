"""The DynamoDB serving store: applying deltas at most once per batch, rebuilding a
generation beside the current one, reading views with a cache (see the package docstring).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import datetime, timedelta
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
    LiveDelta,
    LiveRows,
    RebuildRunningError,
    ServingStore,
    ServingStoreError,
    ServingStoreUnavailableError,
    StoreSnapshot,
    StoreWindow,
    projection_for,
)
from adpulse.serving.store.dynamodb.items import (
    ATTEMPTS,
    BATCH_KEY_SECONDS,
    DATA_TTL_SECONDS,
    EPOCH,
    HOUR_SECONDS,
    HOUR_SHARDS,
    INDEX_SHARDS,
    ITEM_MEASURES,
    JOURNAL_PART,
    JOURNAL_PARTS,
    LOCK_SECONDS,
    MAX_HOUR_SHARDS,
    META_KEY,
    PARALLEL,
    READ_CACHE,
    THROTTLED,
    WINDOW_SECONDS,
    Layout,
    Meta,
    Rows,
    backoff,
    epoch_seconds,
    from_micros,
    num,
    shard_of,
    sort_key,
    text_of,
)
from adpulse.serving.store.dynamodb.journal import decode_delta, encode_delta, journal_order
from adpulse.storage.warehouse.schema import CONVERSION_REATTRIBUTIONS, REVENUE_SUM

log = logging.getLogger(__name__)


class DynamoDBServingStore(ServingStore):
    """A :class:`ServingStore` in the DynamoDB table ``table`` (created, with its key
    schema and TTL, when missing). Raises :class:`ServingStoreUnavailableError` when the
    service cannot be reached or the table cannot be used.

    ``shards``: the partition keys per hour (of each projection's rollups, and of the
    conversions) of the generations this client builds. Each generation's count is
    recorded in ``meta`` and every writer and reader uses the current generation's, so
    clients of other settings miss nothing; a changed setting takes effect at the next
    rebuild."""

    def __init__(
        self,
        table: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        timeouts: ServerTimeouts | None = None,
        shards: int = HOUR_SHARDS,
    ) -> None:
        import boto3
        import botocore.config
        import botocore.exceptions

        if not 1 <= shards <= MAX_HOUR_SHARDS:
            raise ValueError(f"shards={shards}: give 1 to {MAX_HOUR_SHARDS} shards per hour")
        timeouts = timeouts or ServerTimeouts()
        self.table = table
        self.shards = shards
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
        with suppress(ServingStoreError):  # a notice only: reads and writes check again
            recorded = self._meta()
            if recorded.gen is not None and recorded.shards != shards:
                log.info(
                    "DynamoDB table %r: generation %d has %d shard(s) per hour, this client"
                    " builds %d: used from the next rebuild on",
                    table,
                    recorded.gen,
                    recorded.shards,
                    shards,
                )

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
            pages = self._pool.map(lambda pk: list(self._query("cleanup", pk)), list(pks))
            keys = [
                {"DeleteRequest": {"Key": {"pk": item["pk"], "sk": item["sk"]}}}
                for page in pages
                for item in page
            ]
            self._batch_write("cleanup", keys)
        except Exception as exc:  # noqa: BLE001 - leftovers expire by TTL
            log.info("serving store cleanup left items for TTL to remove: %s", exc)

    def _meta(self) -> Meta:
        item = self._call("read", "get_item", Key=META_KEY, ConsistentRead=True).get("Item")
        return Meta.of(item)

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
            | {"expires": num(now + BATCH_KEY_SECONDS)},
            ConditionExpression="attribute_not_exists(pk) OR expires < :now",
            ExpressionAttributeValues={":now": num(now)},
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

        data = zlib.compress(encode_delta(delta))
        parts = [data[i : i + JOURNAL_PART] for i in range(0, len(data), JOURNAL_PART)] or [b""]
        if len(parts) > JOURNAL_PARTS:
            raise ServingStoreError(
                f"serving store write failed: a delta of {len(data)} compressed bytes is too"
                " large to journal during a rebuild; the store is rebuilt instead"
            )
        order = journal_order(delta, batch_key)
        expires = num(int(time.time()) + 2 * LOCK_SECONDS)
        items: list[dict[str, Any]] = [
            {
                "ConditionCheck": {
                    "TableName": self.table,
                    "Key": META_KEY,
                    "ConditionExpression": "#next = :g AND attribute_not_exists(closing)",
                    "ExpressionAttributeNames": {"#next": "next"},
                    "ExpressionAttributeValues": {":g": num(generation)},
                }
            }
        ]
        for i, part in enumerate(parts):
            item = {
                "pk": {"S": f"g{generation}#j"},
                "sk": {"S": f"{order}#{i:03d}"},
                "n": num(len(parts)),
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

    def _add_to_current(self, meta: Meta, delta: LiveDelta) -> None:
        """Add ``delta`` to the current generation, then record its offsets, hours and
        newest minute in ``meta`` (conditioned on the generation: after a switch the new
        one's snapshot holds the batch, see the module docs)."""
        assert meta.gen is not None
        rows = Rows.of(delta.rows, delta.reattributions)
        generation = meta.gen
        self._write_rows(meta.layout, meta.start, rows)
        names: dict[str, str] = {}
        values: dict[str, Any] = {":g": num(generation)}
        sets = []
        for i, ((stream, partition), offset) in enumerate(delta.offsets.items()):
            names[f"#o{i}"] = f"{stream.value}:{partition}"
            values[f":o{i}"] = {"S": offset}
            sets.append(f"offsets.#o{i} = :o{i}")
        hours = rows.hours(meta.start)
        values[":one"] = num(1)
        expression = ("SET " + ", ".join(sets) if sets else "") + " ADD version :one"
        if hours:
            expression += ", hours :h"
            values[":h"] = {"NS": [str(h) for h in sorted(hours)]}
        self._conditional(
            "write",
            "update_item",
            Key=META_KEY,
            UpdateExpression=expression.strip(),
            ConditionExpression="gen = :g",
            **({"ExpressionAttributeNames": names} if names else {}),
            ExpressionAttributeValues=values,
        )
        newest = rows.newest(meta.start)
        if newest is not None:
            self._advance(meta, newest)

    def _advance(self, meta: Meta, newest: int) -> None:
        """Move the window's newest minute (and its start) forward to ``newest`` unless
        it is there already; delete the hours the start left behind."""
        assert meta.gen is not None
        for _ in range(ATTEMPTS):
            if meta.newest is not None and meta.newest >= newest:
                return
            start = max(meta.start, newest - WINDOW_SECONDS)
            moved = self._conditional(
                "write",
                "update_item",
                Key=META_KEY,
                UpdateExpression="SET newest = :n, #start = :s ADD version :one",
                ConditionExpression=(
                    "gen = :g AND (attribute_not_exists(newest) OR newest < :n) AND #start <= :s"
                ),
                ExpressionAttributeNames={"#start": "start"},
                ExpressionAttributeValues={
                    ":n": num(newest),
                    ":s": num(start),
                    ":g": num(meta.gen),
                    ":one": num(1),
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
        """Delete the hours of ``generation`` that lie wholly before ``start`` (every
        shard of them, by the shard count ``meta`` records for it)."""
        meta = self._meta()
        if meta.gen != generation:
            return
        gone = sorted(h for h in meta.hours if h + HOUR_SECONDS <= start)
        if not gone:
            return
        layout = meta.layout
        held = [pk for h in gone for pk in layout.conversion_keys(h)]
        pages = self._pool.map(lambda pk: list(self._query("cleanup", pk)), held)
        conversions = [item for page in pages for item in page]
        index = [
            {
                "DeleteRequest": {
                    "Key": {
                        "pk": {"S": f"g{generation}#i#{shard_of(eid)}"},
                        "sk": {"S": f"e#{eid}"},
                    }
                }
            }
            for eid in (text_of(item) for item in conversions)
        ]
        self._delete_partitions(pk for h in gone for pk in layout.hour_keys(h))
        try:
            self._batch_write("cleanup", index)
        except ServingStoreError as exc:
            log.info("serving store cleanup left index items for TTL to remove: %s", exc)
        self._conditional(
            "write",
            "update_item",
            Key=META_KEY,
            UpdateExpression="DELETE hours :h",
            ConditionExpression="gen = :g",
            ExpressionAttributeValues={
                ":h": {"NS": [str(h) for h in gone]},
                ":g": num(generation),
            },
        )

    def _write_rows(self, layout: Layout, start: int, rows: Rows) -> None:
        """Add the rows of minutes from ``start`` on to the generation of ``layout``: one
        ``ADD`` per rollup item, a ``PutItem`` per conversion and index item, then
        re-attributions."""
        generation = layout.gen
        expires = num(int(time.time()) + DATA_TTL_SECONDS)
        calls: list[Callable[[], object]] = []
        for minute, projection, sk, values in rows.rollups:
            if minute < start:
                continue
            key = {"pk": {"S": layout.rollup_key(projection, minute, sk)}, "sk": {"S": sk}}
            calls.append(partial(self._add_rollup, key, values, expires))
        self._parallel("write", calls)
        puts = []
        for minute, event_id, sk, values in rows.conversions:
            if minute < start:
                continue
            item = {"pk": {"S": layout.conversion_key(minute, sk)}, "sk": {"S": sk}}
            puts.append({"PutRequest": {"Item": item | values | {"expires": expires}}})
            index = {
                "pk": {"S": f"g{generation}#i#{shard_of(event_id)}"},
                "sk": {"S": f"e#{event_id}"},
                "m": num(minute),
                "expires": expires,
            }
            puts.append({"PutRequest": {"Item": index}})
        self._batch_write("write", puts)
        moves = [partial(self._reattribute, layout, e, v) for e, v in rows.reattributions]
        self._parallel("write", moves)

    def _add_rollup(self, key: dict[str, Any], values: dict[str, Any], expires: Any) -> None:
        adds = ", ".join(f"{m} :{m}" for m in (*ITEM_MEASURES, "rv"))
        extra = {k: v for k, v in values.items() if k == "key"}
        self._call(
            "write",
            "update_item",
            Key=key,
            UpdateExpression=f"ADD {adds} SET expires = :e" + (", #key = :key" if extra else ""),
            **({"ExpressionAttributeNames": {"#key": "key"}} if extra else {}),
            ExpressionAttributeValues={f":{m}": values[m] for m in (*ITEM_MEASURES, "rv")}
            | {":e": expires}
            | ({":key": extra["key"]} if extra else {}),
        )

    def _reattribute(self, layout: Layout, event_id: str, values: dict[str, Any]) -> None:
        generation = layout.gen
        index = self._call(
            "write",
            "get_item",
            Key={
                "pk": {"S": f"g{generation}#i#{shard_of(event_id)}"},
                "sk": {"S": f"e#{event_id}"},
            },
            ConsistentRead=True,
        ).get("Item")
        if index is None:  # not held (older than the window)
            return
        minute = int(index["m"]["N"])
        sk, _ = sort_key(minute, event_id)
        sets = [f"{name} = :{name}" for name, value in values.items() if value is not None]
        removes = [name for name, value in values.items() if value is None]
        expression = ("SET " + ", ".join(sets) if sets else "") + (
            " REMOVE " + ", ".join(removes) if removes else ""
        )
        self._conditional(
            "write",
            "update_item",
            Key={"pk": {"S": layout.conversion_key(minute, sk)}, "sk": {"S": sk}},
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
            Key=META_KEY,
            UpdateExpression=(
                "SET #lock = :t, lock_until = :u, #next = if_not_exists(gens, :zero) + :one,"
                " gens = if_not_exists(gens, :zero) + :one REMOVE closing"
            ),
            ConditionExpression="attribute_not_exists(lock_until) OR lock_until < :now",
            ExpressionAttributeNames={"#lock": "lock", "#next": "next"},
            ExpressionAttributeValues={
                ":t": {"S": token},
                ":u": num(int(now) + LOCK_SECONDS),
                ":now": num(int(now)),
                ":zero": num(0),
                ":one": num(1),
            },
            ReturnValues="UPDATED_NEW",
        )
        if locked is None:
            raise RebuildRunningError("another process is rebuilding the serving store")
        generation = int(locked["Attributes"]["next"]["N"])
        layout = Layout(generation, self.shards)
        hours: set[int] = set()
        switched = False
        try:
            snapshot = read()
            window = snapshot.window
            start = epoch_seconds(window.start)
            newest = None if window.newest is None else epoch_seconds(window.newest)
            if newest is not None:
                start = max(start, newest - WINDOW_SECONDS)
            snap = LiveRows(
                snapshot.rows.rollups.filter(pl.col("minute") >= EPOCH + timedelta(seconds=start)),
                snapshot.rows.conversions.filter(
                    pl.col("event_time") >= EPOCH + timedelta(seconds=start)
                ),
            )
            rows = Rows.of(snap, pl.DataFrame(schema=CONVERSION_REATTRIBUTIONS))
            hours |= rows.hours(start)
            self._write_generation(layout, rows)
            if (
                self._conditional(
                    "switch",
                    "update_item",
                    Key=META_KEY,
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
                more = Rows.of(delta.rows, delta.reattributions)
                self._write_rows(layout, start, more)
                hours |= more.hours(start)
                offsets.update(delta.offsets)
                latest = more.newest(start)
                if latest is not None and (newest is None or latest > newest):
                    newest = latest
                    start = max(start, newest - WINDOW_SECONDS)
            old = self._switch(layout, token, start, newest, hours, offsets, snapshot)
            switched = True
            if old is not None and old.gen is not None:
                self._delete_generation(old.layout, old.hours)
            self._delete_partitions([f"g{generation}#j"])
            if any(h + HOUR_SECONDS <= start for h in hours):
                self._expire(generation, start)
        finally:
            if not switched:
                self._conditional(
                    "unlock",
                    "update_item",
                    Key=META_KEY,
                    UpdateExpression="REMOVE #lock, lock_until, #next, closing",
                    ConditionExpression="#lock = :t",
                    ExpressionAttributeNames={"#lock": "lock", "#next": "next"},
                    ExpressionAttributeValues={":t": {"S": token}},
                )
                self._delete_generation(layout, hours)

    def _write_generation(self, layout: Layout, rows: Rows) -> None:
        expires = num(int(time.time()) + DATA_TTL_SECONDS)
        puts = []
        for minute, projection, sk, values in rows.rollups:
            pk = layout.rollup_key(projection, minute, sk)
            item = {"pk": {"S": pk}, "sk": {"S": sk}} | values | {"expires": expires}
            puts.append({"PutRequest": {"Item": item}})
        self._batch_write("rebuild", puts)
        self._write_rows(layout, 0, Rows([], rows.conversions, []))

    def _journaled(self, generation: int) -> list[LiveDelta]:
        entries: dict[str, list[dict[str, Any]]] = {}
        for item in self._query("rebuild", f"g{generation}#j"):
            entries.setdefault(str(item["sk"]["S"]).rsplit("#", 1)[0], []).append(item)
        deltas = []
        for _, parts in sorted(entries.items()):
            if len(parts) != int(parts[0]["n"]["N"]):
                continue  # cannot happen: the parts are written in one transaction
            data = b"".join(p["d"]["B"] for p in sorted(parts, key=lambda p: p["sk"]["S"]))
            deltas.append(decode_delta(zlib.decompress(data)))
        return deltas

    def _switch(
        self,
        layout: Layout,
        token: str,
        start: int,
        newest: int | None,
        hours: set[int],
        offsets: Mapping[tuple[Stream, int], str],
        snapshot: StoreSnapshot,
    ) -> Meta | None:
        """Make the generation of ``layout`` current, with its shard count (one
        conditional update); the previous meta."""
        values: dict[str, Any] = {
            ":g": num(layout.gen),
            ":shards": num(layout.shards),
            ":yes": {"BOOL": True},
            ":s": num(start),
            ":built": num(int(time.time())),
            ":snap": {"M": {str(p): num(b) for p, b in snapshot.batches.items()}},
            ":offsets": {"M": {f"{s.value}:{p}": {"S": o} for (s, p), o in offsets.items()}},
            ":t": {"S": token},
        }
        sets = ["gen = :g", "ready = :yes", "#start = :s", "built = :built", "snap = :snap"]
        sets += ["offsets = :offsets", "shards = :shards"]
        removes = ["#lock", "lock_until", "#next", "closing"]
        if newest is None:
            removes.append("newest")
        else:
            sets.append("newest = :n")
            values[":n"] = num(newest)
        if hours:
            sets.append("hours = :h")
            values[":h"] = {"NS": [str(h) for h in sorted(hours)]}
        else:
            removes.append("hours")
        answer = self._conditional(
            "switch",
            "update_item",
            Key=META_KEY,
            UpdateExpression=f"SET {', '.join(sets)} REMOVE {', '.join(removes)}",
            ConditionExpression="#lock = :t",
            ExpressionAttributeNames={"#lock": "lock", "#next": "next", "#start": "start"},
            ExpressionAttributeValues=values,
            ReturnValues="ALL_OLD",
        )
        if answer is None:
            raise ServingStoreError("the rebuild lock expired before the switch")
        return Meta.of(answer.get("Attributes"))

    def _delete_generation(self, layout: Layout, hours: Iterable[int]) -> None:
        generation = layout.gen
        pks = [pk for h in sorted(hours) for pk in layout.hour_keys(h)]
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
        newest = None if meta.newest is None else EPOCH + timedelta(seconds=meta.newest)
        return StoreWindow(EPOCH + timedelta(seconds=meta.start), newest)

    def read(
        self,
        start: datetime,
        end: datetime | None,
        columns: frozenset[str] = PROJECTIONS[-1],
        *,
        conversions: bool = True,
    ) -> LiveRows | None:
        projection = PROJECTIONS.index(projection_for(columns))
        for _ in range(3):
            meta = self._meta()
            if not meta.current(time.time()) or epoch_seconds(start) < meta.start:
                return None
            key = (meta.gen, meta.version, start, end, projection, conversions)
            with self._lock:
                cached = self._cache.get(key)
            if cached is not None:
                return cached
            rows = self._read_generation(meta, epoch_seconds(start), end, projection, conversions)
            if self._meta().gen == meta.gen:
                with self._lock:
                    self._cache[key] = rows
                    while len(self._cache) > READ_CACHE:
                        self._cache.popitem(last=False)
                return rows
        raise ServingStoreError("serving store read failed: rebuilt three times while reading")

    def _read_generation(
        self, meta: Meta, start: int, end: datetime | None, projection: int, conversions: bool
    ) -> LiveRows:
        upper = None if end is None else epoch_seconds(end) - 1
        hours = sorted(
            h for h in meta.hours if h + HOUR_SECONDS > start and (upper is None or h <= upper)
        )
        bounds = {"sk_from": f"{start:010d}"}
        if upper is not None:
            bounds["sk_to"] = f"{upper:010d}~"
        layout = meta.layout  # every shard of every hour, in parallel
        pks = [pk for h in hours for pk in layout.rollup_keys(projection, h)]
        rollup_pages = len(pks)
        if conversions:
            pks += [pk for h in hours for pk in layout.conversion_keys(h)]
        pages = list(self._pool.map(lambda pk: list(self._query("read", pk, **bounds)), pks))
        rollups = [item for page in pages[:rollup_pages] for item in page]
        held = [item for page in pages[rollup_pages:] for item in page]
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
        minutes.append(EPOCH + timedelta(seconds=int(str(item["sk"]["S"])[:10])))
        keys.append(orjson.loads(text_of(item)))
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
        return None if value is None else from_micros(int(value))

    rows = [
        (
            text_of(item),
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


_PARAMETERS: Final = ("region", "endpoint_url", "shards")


def open_dynamodb_store(url: str, timeouts: ServerTimeouts | None = None) -> DynamoDBServingStore:
    """Open the store of ``dynamodb://TABLE?region=REGION&endpoint_url=URL&shards=N``
    (every parameter optional: boto3's configuration, e.g. ``AWS_DEFAULT_REGION``, fills
    in region and endpoint; credentials always come from boto3's chain, never from the
    URL; ``shards``: partition keys per hour of the generations this client builds,
    default :data:`~.items.HOUR_SHARDS`)."""
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    unknown = sorted(set(query) - set(_PARAMETERS))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(_PARAMETERS)}"
        )
    shards = query.get("shards", str(HOUR_SHARDS))
    if not shards.isdigit() or not 1 <= int(shards) <= MAX_HOUR_SHARDS:
        raise ValueError(f"shards={shards}: give a whole number from 1 to {MAX_HOUR_SHARDS}")
    return DynamoDBServingStore(
        parts.netloc,
        region=query.get("region"),
        endpoint_url=query.get("endpoint_url"),
        timeouts=timeouts,
        shards=int(shards),
    )
