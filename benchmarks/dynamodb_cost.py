"""What the DynamoDB serving store costs: capacity units per event and per dashboard
refresh, at given event rates (the figures of docs/dynamodb.md).

For each rate R (events/s), generates ``--seconds`` of traffic at R in the default world
(300 ads, 30 campaigns), feeds it to the processor one second of event time at a time
(one batch per second, as a live processor commits: the generated records, in arrival
order, cut into one slice per second), and prices each committed batch's
store write with :func:`adpulse.serving.store.dynamodb.apply_cost` (the very items the
store writes, sized by DynamoDB's rules). A dashboard refresh is the 15 live views of
the live-view equality test over the newest 24 h; its reads (which projection each view
asks for, and whether it reads conversions: only the latency views do) are recorded,
and priced at steady state: 24 h of rollup items at the measured items per minute of
that projection, and 24 h of conversions at the measured rate for the reads that take
them.

No AWS account or server is needed: the cost is computed from the items, not measured
on a bill. Run::

    python benchmarks/dynamodb_cost.py --rates 1000 10000 100000 --seconds 60
"""

from __future__ import annotations

import argparse
import math
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.processor.pipeline import Processor
from adpulse.serving import queries
from adpulse.serving.store import LiveRows, MemoryServingStore, live_delta
from adpulse.serving.store.base import PROJECTIONS
from adpulse.serving.store.dynamodb import (
    HOUR_SHARDS,
    Capacity,
    apply_cost,
    partition_writes,
    stored_bytes,
)
from adpulse.serving.store.sync import StoreSync
from adpulse.sources.files import write_csv
from adpulse.sources.generator import EventGenerator, GeneratorConfig
from adpulse.sources.producer import publish
from adpulse.storage.dimensions import read_dimension_csv
from adpulse.storage.warehouse.base import BatchOutput
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.transport.memory import InMemoryTransport

START = datetime(2023, 9, 1, 12)
PARTITIONS = 1
DAY_MINUTES = 1_440


class PricedSync(StoreSync):
    """A store sync that also prices each batch's DynamoDB write (in a generation of
    ``shards`` shards per hour), and counts the write units per partition key, sharded
    and not."""

    def __init__(self, *args: object, shards: int) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.shards = shards
        self.cost = Capacity()
        self.batches = 0
        self.per_key: Counter[str] = Counter()
        self.per_key_unsharded: Counter[str] = Counter()

    def on_commit(self, output: BatchOutput) -> None:
        delta = live_delta(output)
        if not delta.is_empty:
            self.cost += apply_cost(delta, shards=self.shards)
            self.per_key.update(partition_writes(delta, shards=self.shards))
            self.per_key_unsharded.update(partition_writes(delta, shards=1))
            self.batches += 1
        super().on_commit(output)


@dataclass
class RecordingStore(MemoryServingStore):
    """The in-process store, recording the key columns of every read and whether it
    read the conversions."""

    reads: list[tuple[frozenset[str], bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def read(
        self,
        start: datetime,
        end: datetime | None,
        columns: frozenset[str] = PROJECTIONS[-1],
        *,
        conversions: bool = True,
    ) -> LiveRows | None:
        self.reads.append((columns, conversions))
        return super().read(start, end, columns, conversions=conversions)


def refresh_views(
    store: RecordingStore, warehouse: DuckDBWarehouse
) -> list[tuple[frozenset[str], bool]]:
    """The key columns of each store read one dashboard refresh makes (the 15 views),
    and whether it reads the conversions."""
    last = queries.data_range(warehouse)["last_minute"]
    assert last is not None
    end = last + timedelta(minutes=1)
    f = queries.Filters(start=end - timedelta(hours=24), end=end)
    store.reads.clear()
    s = store
    queries.summary(warehouse, f, store=s)
    queries.timeseries(warehouse, f, store=s)
    queries.bucketed_timeseries(warehouse, f, "minute", store=s)
    queries.bucketed_timeseries(warehouse, f, "hour", store=s)
    queries.top_ads(warehouse, f, "revenue", store=s)
    queries.top_ads(warehouse, f, "conversion_rate", min_clicks=5, store=s)
    queries.counts(warehouse, f, "ad", store=s)
    queries.ctr(warehouse, f, "campaign", store=s)
    queries.conversion_rate(warehouse, f, store=s)
    queries.revenue_per_conversion(warehouse, f, "campaign", store=s)
    queries.conversion_latency(warehouse, f, "campaign", store=s)
    queries.latency_histogram(warehouse, f, store=s)
    queries.trending(warehouse, f, 60, min_clicks=1, store=s)
    queries.breakdown(warehouse, f, "platform", store=s)
    queries.breakdown(warehouse, f, "location", store=s)
    return list(store.reads)


def conversion_share() -> float:
    """Conversions per event of the default world at steady state (3 days generated)."""
    gen = EventGenerator(GeneratorConfig(seed=5))
    counts = dict.fromkeys(Stream, 0)
    for part in gen.iter_generate(300_000, START, START + timedelta(days=3)):
        for stream in Stream:
            counts[stream] += len(part.records[stream])
    return counts[Stream.CONVERSIONS] / sum(counts.values())


def day_read(
    rows: LiveRows,
    columns: frozenset[str],
    conversions: bool,
    conversions_per_second: float,
    conversion_bytes: float,
    shards: int,
) -> Capacity:
    """One store read of the newest 24 h at steady state: two ``meta`` reads, and per
    hour and shard one query of rollups and, for a view that reads them, one of
    conversions (a page per MB), each charged on its bytes (strongly consistent: 4 KB
    per read unit, rounded up per query). The hash spreads an hour's items evenly over
    its shards. Rollup bytes per minute are measured over the run's whole minutes."""
    minutes = rows.rollups["minute"].unique().sort().to_list()
    whole = minutes[1:-1] or minutes  # the first and last minute may be partial
    in_whole = LiveRows(rows.rollups.filter(pl.col("minute").is_in(whole)), rows.conversions)
    rollup_bytes, _ = stored_bytes(in_whole, columns, shards)
    shard_rollups = 60 * rollup_bytes / len(whole) / shards
    shard_conversions = (
        3_600 * conversions_per_second * conversion_bytes / shards if conversions else 0
    )
    per_shard = math.ceil(shard_rollups / 4_096) + (
        math.ceil(shard_conversions / 4_096) if conversions else 0
    )
    pages = math.ceil(shard_rollups / 2**20) + math.ceil(shard_conversions / 2**20)
    queries = max(1 + conversions, pages)
    return Capacity(requests=2 + 24 * shards * queries, read_units=2 + 24 * shards * per_shard)


def measure(rate: int, seconds: int, share: float, shards: int) -> None:
    gen = EventGenerator(GeneratorConfig(seed=5))
    with tempfile.TemporaryDirectory(prefix="adpulse-dynamodb-cost-") as tmp:
        home = Path(tmp)
        warehouse = DuckDBWarehouse(home / "w.duckdb")
        warehouse.create_schema()
        for kind, frame in (("campaigns", gen.campaigns()), ("users", gen.users())):
            path = home / f"{kind}.csv"
            write_csv(frame, path)
            dim_kind, rows = read_dimension_csv(path)
            warehouse.load_dimension(dim_kind, rows, datetime(2023, 1, 1))
        transport = InMemoryTransport(PARTITIONS)
        producer = transport.producer()
        store = RecordingStore()
        sync = PricedSync(store, warehouse, shards=shards)
        processor = Processor(
            Settings(home=home, partitions=PARTITIONS),
            transport,
            warehouse,
            clock=lambda: (START + timedelta(seconds=seconds)).astimezone(),
            listeners=[sync],
        )
        records: dict[Stream, list[bytes]] = {stream: [] for stream in Stream}
        end = START + timedelta(seconds=seconds)
        for part in gen.iter_generate(rate * seconds, START, end):
            for stream in Stream:
                records[stream].extend(part.records[stream])
        events = sum(len(r) for r in records.values())
        for second in range(seconds):  # records are in arrival order: a slice per second
            for stream, lines in records.items():
                n = len(lines)
                chunk = lines[second * n // seconds : (second + 1) * n // seconds]
                publish(producer, stream, chunk, PARTITIONS)
            producer.flush()
            processor.run(threading.Event(), until_caught_up=True)
        reads = refresh_views(store, warehouse)
        held = store.read(START - timedelta(hours=1), None)
        assert held is not None
        processor.close()
        warehouse.close()
    # conversions come minutes to days after their click: a short run holds few of them,
    # so they are priced at the steady-state share (two puts each: it and its index entry)
    per_second = rate * share
    one = stored_bytes(LiveRows(held.rollups.clear(), held.conversions.head(1)), shards=shards)[1]
    conversion_bytes = one or 150
    refresh, cached = Capacity(), Capacity()
    for columns, with_conversions in reads:
        refresh += day_read(held, columns, with_conversions, per_second, conversion_bytes, shards)
    # the store's read cache: views asking for the same projection of the same range
    # (with or without conversions), with no write in between, share one read
    distinct = {
        (next(i for i, kept in enumerate(PROJECTIONS) if c <= kept), with_conversions)
        for c, with_conversions in reads
    }
    for projection, with_conversions in distinct:
        cached += day_read(
            held, PROJECTIONS[projection], with_conversions, per_second, conversion_bytes, shards
        )
    w = sync.cost
    wcu = w.write_units / seconds + 2 * per_second
    # the hottest partition keys, in write units per second over the run (conversions'
    # come at the steady-state rate, spread by the hash like the rollups')
    hot = max(sync.per_key.values(), default=0) / seconds
    hot_unsharded = max(sync.per_key_unsharded.values(), default=0) / seconds
    hot_conversions = per_second * math.ceil(conversion_bytes / 1_024)
    print(
        f"rate {rate:>7,}/s: {events:,} events in {sync.batches} batches over {seconds} s;"
        f" conversions {per_second:,.1f}/s of {conversion_bytes} B;"
        f" writes {wcu:,.0f} WCU/s = {wcu / rate:.4f} WCU/event,"
        f" {w.read_units / seconds:,.1f} RCU/s, {w.requests / seconds + per_second / 12.5:,.0f}"
        f" requests/s; dashboard refresh (24 h, {len(reads)} reads,"
        f" {sum(c for _, c in reads)} with conversions): {refresh.read_units:,} RCU,"
        f" {refresh.requests:,} requests; with the read cache ({len(distinct)} distinct reads):"
        f" {cached.read_units:,} RCU, {cached.requests:,} requests;"
        f" hottest partition key: {hot_unsharded:,.0f} WCU/s with one shard per hour,"
        f" {hot:,.0f} with {shards} (conversions of an hour: {hot_conversions:,.0f} WCU/s"
        f" in one key, {hot_conversions / shards:,.0f} per shard)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument(
        "--shards", type=int, default=HOUR_SHARDS, help="shards per hour (the store's ?shards=)"
    )
    args = parser.parse_args()
    share = conversion_share()
    print(f"conversions per event at steady state: {share:.5f}")
    for rate in args.rates:
        measure(rate, args.seconds, share, args.shards)


if __name__ == "__main__":
    main()
