"""The cost model of the store: item sizes, read and write units of an apply, and the
bytes a window of rows stores (``benchmarks/dynamodb_cost.py``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import polars as pl

from adpulse.serving.store.base import (
    PROJECTIONS,
    LiveDelta,
    LiveRows,
    projection_for,
)
from adpulse.serving.store.dynamodb.items import (
    EPOCH,
    HOUR_SHARDS,
    Layout,
    Rows,
    minute_of,
    num,
    shard_of,
)
from adpulse.storage.warehouse.schema import CONVERSION_REATTRIBUTIONS


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


def partition_writes(
    delta: LiveDelta, start: datetime = EPOCH, shards: int = HOUR_SHARDS
) -> Counter[str]:
    """The write units :meth:`~.store.DynamoDBServingStore.apply` of ``delta`` spends on
    each partition key of its data items (rollups, conversions and their index; the
    ``meta`` and batch-key items left out), in a generation of ``shards`` shards per
    hour: what meets DynamoDB's 1,000 write units per second per partition key."""
    first = minute_of(start) if start > EPOCH else 0
    return _partition_writes(Rows.of(delta.rows, delta.reattributions), first, shards)


def _partition_writes(rows: Rows, first: int, shards: int) -> Counter[str]:
    layout = Layout(1, shards)
    expires = {"expires": num(int(time.time()))}
    units: Counter[str] = Counter()
    for minute, projection, sk, values in rows.rollups:
        if minute >= first:
            pk = layout.rollup_key(projection, minute, sk)
            key = {"pk": {"S": pk}, "sk": {"S": sk}}
            units[pk] += _write_units(item_size(key | values | expires))
    for minute, event_id, sk, values in rows.conversions:
        if minute >= first:
            pk = layout.conversion_key(minute, sk)
            item = {"pk": {"S": pk}, "sk": {"S": sk}} | values | expires
            units[pk] += _write_units(item_size(item))
            index_pk = f"g1#i#{shard_of(event_id)}"
            index = {"pk": {"S": index_pk}, "sk": {"S": f"e#{event_id}"}, "m": num(minute)}
            units[index_pk] += _write_units(item_size(index | expires))
    return units


def apply_cost(
    delta: LiveDelta,
    start: datetime = EPOCH,
    meta_bytes: int = META_BYTES,
    shards: int = HOUR_SHARDS,
) -> Capacity:
    """What :meth:`~.store.DynamoDBServingStore.apply` of ``delta`` costs outside rebuilds: the
    ``meta`` read, the claim, one update per rollup item of every projection, two puts
    per conversion (it and its index entry), a read and an update per re-attribution,
    and the ``meta`` updates (offsets and hours; the window when it moves)."""
    rows = Rows.of(delta.rows, delta.reattributions)
    first = minute_of(start) if start > EPOCH else 0
    cost = Capacity(requests=2, read_units=_read_units(meta_bytes), write_units=1)
    rollups = sum(1 for m, *_ in rows.rollups if m >= first)
    data = _partition_writes(rows, first, shards)
    cost += Capacity(rollups, 0, sum(data.values()))
    puts = sum(1 for m, *_ in rows.conversions if m >= first) * 2
    cost.requests += -(-puts // 25)
    cost += Capacity(
        2 * len(rows.reattributions), len(rows.reattributions), len(rows.reattributions)
    )
    meta_updates = 2 if rows.newest(first) is not None else 1
    return cost + Capacity(meta_updates, 0, meta_updates * _write_units(meta_bytes))


def stored_bytes(
    rows: LiveRows, columns: frozenset[str] = PROJECTIONS[-1], shards: int = HOUR_SHARDS
) -> tuple[int, int]:
    """The bytes (DynamoDB's item sizes) of the rollup items a read of ``columns`` returns
    for ``rows``, and of its conversion items: what its queries are charged on."""
    projection = PROJECTIONS.index(projection_for(columns))
    parts = Rows.of(rows, pl.DataFrame(schema=CONVERSION_REATTRIBUTIONS))
    layout = Layout(1, shards)
    expires = {"expires": num(int(time.time()))}
    rollup_bytes = sum(
        item_size(
            {"pk": {"S": layout.rollup_key(index, m, sk)}, "sk": {"S": sk}} | values | expires
        )
        for m, index, sk, values in parts.rollups
        if index == projection
    )
    conversion_bytes = sum(
        item_size({"pk": {"S": layout.conversion_key(m, sk)}, "sk": {"S": sk}} | values | expires)
        for m, _, sk, values in parts.conversions
    )
    return rollup_bytes, conversion_bytes


#: The URL's query parameters.
