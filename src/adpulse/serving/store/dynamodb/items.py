"""The store's items: keys, values as DynamoDB Numbers, the ``meta`` item, and the items
of a delta (see the package docstring for the design).
"""

from __future__ import annotations

import hashlib
import math
import random
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import orjson
import polars as pl

from adpulse.contracts import Stream
from adpulse.serving.store.base import (
    PROJECTIONS,
    WINDOW,
    LiveDelta,
    LiveRows,
    ServingStoreError,
    project,
)

EPOCH: Final = datetime(1970, 1, 1)
HOUR_SECONDS: Final = 3_600
WINDOW_SECONDS: Final = int(WINDOW.total_seconds())
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
#: Shards of each hour's rollup and conversion partition keys in a generation built
#: without ``?shards=`` (docs/dynamodb.md, "Hot partitions", says how it was chosen).
HOUR_SHARDS: Final = 4
#: The most shards ``?shards=`` accepts (a read queries every shard of every hour).
MAX_HOUR_SHARDS: Final = 64
#: The longest key text kept in a sort key (DynamoDB allows 1,024 bytes).
_MAX_SORT_TEXT: Final = 512
#: A journaled delta is split into items of at most this many bytes (DynamoDB: 400 KB
#: per item, 4 MB per transaction).
JOURNAL_PART: Final = 350_000
JOURNAL_PARTS: Final = 10

META_KEY: Final = {"pk": {"S": "meta"}, "sk": {"S": "meta"}}
ITEM_MEASURES: Final = ("im", "cl", "cv", "ac")


def backoff(attempt: int) -> float:
    """Seconds to wait after the ``attempt``-th throttled try (0-based): a random share
    of 50 ms doubled per try, at most 3.2 s (full jitter spreads retrying writers)."""
    return random.uniform(0, min(3.2, 0.05 * 2**attempt))


# --- values -------------------------------------------------------------------------------
def epoch_seconds(value: datetime) -> int:
    return int((value - EPOCH).total_seconds())


def minute_of(value: datetime) -> int:
    seconds = epoch_seconds(value)
    return seconds - seconds % 60


def _micros(value: datetime) -> int:
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def hour_of(minute: int) -> int:
    return minute - minute % HOUR_SECONDS


def num(value: int | Decimal | str) -> dict[str, str]:
    return {"N": value if isinstance(value, str) else _decimal_text(value)}


def _decimal_text(value: int | Decimal) -> str:
    return str(value) if isinstance(value, int) else format(value, "f")


def _float_text(value: float) -> str:
    """The shortest decimal that reads back as ``value`` (no exponent: a DynamoDB Number)."""
    if not math.isfinite(value):
        raise ServingStoreError(f"latency {value!r} cannot be stored")
    return format(Decimal(repr(value)), "f")


def sort_key(minute: int, text: str) -> tuple[str, dict[str, Any]]:
    """``MINUTE#text``, or ``MINUTE#~SHA256`` and the text in ``key`` when it is long."""
    if len(text.encode()) <= _MAX_SORT_TEXT:
        return f"{minute:010d}#{text}", {}
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"{minute:010d}#~{digest}", {"key": {"S": text}}


def text_of(item: Mapping[str, Any]) -> str:
    if "key" in item:
        return str(item["key"]["S"])
    return str(item["sk"]["S"]).split("#", 1)[1]


def shard_of(event_id: str) -> int:
    return zlib.crc32(event_id.encode()) % INDEX_SHARDS


def hour_shard(sk: str, shards: int) -> int:
    """The shard of the item of sort key ``sk`` among ``shards`` (CRC-32: the same in
    every process and run, unlike ``hash()``), so a rollup item is always added to on
    the same shard."""
    return zlib.crc32(sk.encode()) % shards if shards > 1 else 0


@dataclass(frozen=True, slots=True)
class Layout:
    """The partition keys of generation ``gen``, whose hours are split over ``shards``
    partition keys each: ``gG#rP#HOUR#S`` and ``gG#c#HOUR#S``, ``S`` =
    :func:`hour_shard` of the item's sort key; with one shard no ``#S`` (the keys of the
    tables written before hours were sharded, whose ``meta`` records no shard count)."""

    gen: int
    shards: int = 1

    def _suffix(self, shard: int) -> str:
        return f"#{shard}" if self.shards > 1 else ""

    def rollup_key(self, projection: int, minute: int, sk: str) -> str:
        shard = hour_shard(sk, self.shards)
        return f"g{self.gen}#r{projection}#{hour_of(minute)}{self._suffix(shard)}"

    def conversion_key(self, minute: int, sk: str) -> str:
        return f"g{self.gen}#c#{hour_of(minute)}{self._suffix(hour_shard(sk, self.shards))}"

    def rollup_keys(self, projection: int, hour: int) -> list[str]:
        """Every partition key of the rollups of ``projection`` in ``hour``."""
        return [f"g{self.gen}#r{projection}#{hour}{self._suffix(s)}" for s in range(self.shards)]

    def conversion_keys(self, hour: int) -> list[str]:
        """Every partition key of the conversions of ``hour``."""
        return [f"g{self.gen}#c#{hour}{self._suffix(s)}" for s in range(self.shards)]

    def hour_keys(self, hour: int) -> list[str]:
        """Every partition key of ``hour``: rollups of every projection, conversions."""
        keys = [k for p in range(len(PROJECTIONS)) for k in self.rollup_keys(p, hour)]
        return keys + self.conversion_keys(hour)


def _optional(attributes: dict[str, Any], name: str, value: Any, kind: str) -> None:
    if value is not None:
        attributes[name] = {kind: value}


@dataclass(slots=True)
class Meta:
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
    #: The current generation's shards per hour (1 when ``meta`` records none).
    shards: int = 1

    @classmethod
    def of(cls, item: Mapping[str, Any] | None) -> Meta:
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
            shards=int(item["shards"]["N"]) if "shards" in item else 1,
        )
        for name, offset in item.get("offsets", {}).get("M", {}).items():
            stream, _, partition = name.rpartition(":")
            meta.offsets[(Stream(stream), int(partition))] = offset["S"]
        return meta

    def current(self, now: float) -> bool:
        """Ready, and young enough that none of its items can have expired."""
        return self.ready and self.gen is not None and now - self.built < REBUILD_AFTER_SECONDS

    @property
    def layout(self) -> Layout:
        """The current generation's partition keys."""
        assert self.gen is not None
        return Layout(self.gen, self.shards)

    def included(self, delta: LiveDelta) -> bool:
        return delta.included_in(self.batches)


# --- items of a delta ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Rows:
    """A delta's rows as items to add, each with its minute (rows older than a start are
    left out at write time)."""

    rollups: list[tuple[int, int, str, dict[str, Any]]]  # minute, projection, sk, values
    conversions: list[tuple[int, str, str, dict[str, Any]]]  # minute, event_id, sk, values
    reattributions: list[tuple[str, dict[str, Any]]]  # event_id, values to set

    @classmethod
    def of(cls, rows: LiveRows, reattributions: pl.DataFrame) -> Rows:
        rollups = []
        if rows.rollups.height:
            for index, columns in enumerate(PROJECTIONS):
                for row in project(rows.rollups, columns).iter_rows(named=True):
                    minute = minute_of(row["minute"])
                    key = [row["ad_id"], row["campaign"], row["platform"], row["location"]]
                    sk, extra = sort_key(minute, orjson.dumps(key).decode())
                    sums: dict[str, Any] = {
                        "im": num(int(row["impressions"] or 0)),
                        "cl": num(int(row["clicks"] or 0)),
                        "cv": num(int(row["conversions"] or 0)),
                        "ac": num(int(row["attributed_conversions"] or 0)),
                        "rv": num(row["revenue"] if row["revenue"] is not None else 0),
                    }
                    rollups.append((minute, index, sk, sums | extra))
        conversions = []
        for row in rows.conversions.iter_rows(named=True):
            minute = minute_of(row["event_time"])
            sk, extra = sort_key(minute, row["event_id"])
            values: dict[str, Any] = {"t": num(_micros(row["event_time"]))}
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
                        "k": None if click is None else num(_micros(click)),
                        "s": None if latency is None else num(_float_text(latency)),
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
        return {hour_of(m) for m, *_ in self.rollups if m >= start} | {
            hour_of(m) for m, *_ in self.conversions if m >= start
        }
