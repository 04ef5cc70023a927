"""Builders shared by the tests: transports of every kind, batches for the warehouse tests,
generated data sets and the pipeline over them.

Test modules import these instead of importing each other; fixtures built on them live in
the ``conftest.py`` files.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson
import polars as pl
from pgtest import postgres_warehouse
from redistest import REDIS_URL, delete_prefix, new_prefix, require_redis

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.processor.pipeline import Processor
from adpulse.sources.files import write_dataset
from adpulse.sources.generator import EventGenerator, GeneratorConfig
from adpulse.sources.producer import replay_directory
from adpulse.storage.dimensions import read_dimension_csv
from adpulse.storage.warehouse import schema
from adpulse.storage.warehouse.base import BatchOutput, PartitionWatermark, Warehouse
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.transport import EmbeddedTransport, InMemoryTransport, Transport
from adpulse.transport.redis_streams import RedisStreamsTransport

# Transports -------------------------------------------------------------------------------

# "embedded-tiny-segments" rolls a segment at (almost) every append, so every contract
# test also reads across segment boundaries.
BYTE_OFFSET_KINDS = ("memory", "embedded", "embedded-tiny-segments")
TRANSPORT_KINDS = (*BYTE_OFFSET_KINDS, "redis", "kinesis")


@dataclass
class TransportMaker:
    """Opens transports of one kind (``maker(partitions)``) and closes them afterwards."""

    kind: str
    log_dir: Path
    opened: list[Transport] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    kinesis: list[Any] = field(default_factory=list)

    @property
    def exact_lag(self) -> bool:
        """Whether ``lag_bytes`` counts bytes exactly (Redis Streams estimates it from the
        sizes of the first and last entry)."""
        return self.kind != "redis"

    def __call__(self, partitions: int) -> Transport:
        transport: Transport
        if self.kind == "memory":
            transport = InMemoryTransport(partitions)
        elif self.kind == "embedded":
            transport = EmbeddedTransport(self.log_dir, partitions)
        elif self.kind == "embedded-tiny-segments":
            transport = EmbeddedTransport(self.log_dir, partitions, segment_bytes=1)
        elif self.kind == "kinesis":
            from kinesistest import kinesis_transport

            transport = kinesis_transport(partitions)
            self.kinesis.append(transport)
        else:
            require_redis()
            self.prefixes.append(new_prefix())
            transport = RedisStreamsTransport(REDIS_URL, partitions, prefix=self.prefixes[-1])
        self.opened.append(transport)
        return transport

    def close(self) -> None:
        for kinesis in self.kinesis:
            kinesis.delete_streams()
        for transport in self.opened:
            transport.close()
        for prefix in self.prefixes:
            delete_prefix(prefix)


# Warehouse batches: small hand-built BatchOutputs for the warehouse tests -----------------

T0 = datetime(2023, 9, 9, 10, 0)


#: The warehouse backends every storage-facing test runs on.
WAREHOUSES = ("duckdb", "postgres")


@contextmanager
def fresh_warehouse(kind: str, duckdb_file: Path) -> Iterator[Warehouse]:
    """An empty warehouse with its tables: a DuckDB file at ``duckdb_file``, or a new
    PostgreSQL schema (dropped on exit); ``redshift``: the Redshift backend on a new
    PostgreSQL schema, staging on the local S3 (redshifttest), every statement it sent
    checked against Redshift's grammar on exit."""
    if kind == "duckdb":
        with DuckDBWarehouse(duckdb_file) as wh:
            wh.create_schema()
            yield wh
    elif kind == "redshift":
        from redshifttest import StatementLog, redshift_warehouse

        log = StatementLog()
        with redshift_warehouse(log) as redshift:
            yield redshift
        problems = log.problems()
        assert problems == {}, f"statements Redshift would not run: {problems}"
    else:
        with postgres_warehouse() as pg:
            yield pg


def web_impression(n: int) -> dict[str, object]:
    """Impression ``n`` of three users on ad 1 (Web, Berlin), all in one minute."""
    return {
        "event_id": f"i{n}",
        "user_id": f"u{n % 3}",
        "ad_id": 1,
        "platform": "Web",
        "location": "Berlin",
        "impression_timestamp": "2024-05-01 10:00:00",
    }


def at(seconds: float) -> datetime:
    """``seconds`` after :data:`T0`."""
    return T0 + timedelta(seconds=seconds)


def output(batch_id: int, **frames: Any) -> BatchOutput:
    """A batch of ``frames`` (by BatchOutput field name); every other frame empty."""
    base: dict[str, Any] = {
        "impressions": schema.empty(schema.FACT_IMPRESSIONS),
        "clicks": schema.empty(schema.FACT_CLICKS),
        "conversions": schema.empty(schema.FACT_CONVERSIONS),
        "reattributions": schema.empty(schema.CONVERSION_REATTRIBUTIONS),
        "rollups": schema.empty(schema.ROLLUP_MINUTE),
        "dead_letters": schema.empty(schema.DEAD_LETTERS),
        "stats": schema.empty(schema.INGEST_STATS),
    }
    base.update(frames)
    return BatchOutput(batch_id=batch_id, **base)


def clicks(*rows: tuple[str, float, int]) -> pl.DataFrame:
    """(event_id, seconds after T0, partition) rows of fact_clicks."""
    frame = pl.DataFrame(
        {
            "event_id": [r[0] for r in rows],
            "event_time": [at(r[1]) for r in rows],
            "ad_id": [1001] * len(rows),
            "user_id": ["U1234"] * len(rows),
            "platform": ["Web"] * len(rows),
            "location": ["New York"] * len(rows),
            "campaign": ["Back-to-School"] * len(rows),
            "age": [22] * len(rows),
            "is_late": [False] * len(rows),
            "partition": [r[2] for r in rows],
            "processed_at": [T0] * len(rows),
        }
    )
    return schema.conform(frame, schema.FACT_CLICKS)


def conversions(*rows: tuple[str, float, str | None, float | None, str | None]) -> pl.DataFrame:
    """(event_id, seconds after T0, click_event_id, latency, platform) rows."""
    frame = pl.DataFrame(
        {
            "event_id": [r[0] for r in rows],
            "event_time": [at(r[1]) for r in rows],
            "ad_id": [1001] * len(rows),
            "user_id": ["U1234"] * len(rows),
            "product_id": ["P501"] * len(rows),
            "revenue": ["50.00"] * len(rows),
            "click_event_id": [r[2] for r in rows],
            "click_time": [None if r[3] is None else at(r[1] - r[3]) for r in rows],
            "latency_seconds": [r[3] for r in rows],
            "platform": [r[4] for r in rows],
            "location": [None if r[4] is None else "New York" for r in rows],
            "partition": [0] * len(rows),
        },
        schema_overrides={"revenue": pl.String},
    )
    return schema.conform(frame, schema.FACT_CONVERSIONS)


def stats(batch_id: int, received: int) -> pl.DataFrame:
    """One ingest_stats row: ``received`` clicks on partition 0."""
    frame = pl.DataFrame(
        {"batch_id": [batch_id], "stream": ["clicks"], "partition": [0], "received": [received]}
    )
    return schema.conform(frame, schema.INGEST_STATS)


def count(wh: Warehouse, table: str) -> int:
    """Rows in ``table``."""
    return int(wh.query(f"SELECT COUNT(*) FROM {table}").item())


# --- schema --------------------------------------------------------------------------------
def committed_state(wh: Warehouse) -> tuple[Any, ...]:
    """What a commit changes: row counts, offsets, watermarks, attributions (to show
    that a failed commit changed none of it)."""
    return (
        count(wh, "fact_clicks"),
        count(wh, "fact_conversions"),
        count(wh, "rollup_minute"),
        count(wh, "ingest_stats"),
        wh.load_offsets(),
        wh.load_watermarks(),
        wh.query("SELECT event_id, click_event_id FROM fact_conversions").rows(),
    )


def good_then_next(wh: Warehouse) -> BatchOutput:
    """Commit two batches to ``wh``, then return a third touching every table (new facts,
    a re-attribution, rollups, offsets, watermarks), for the rollback tests."""
    first = output(1, clicks=clicks(("k1", 0, 0)), stats=stats(1, 1))
    first.offsets = {(Stream.CLICKS, 0): "1"}
    first.watermarks = {(Stream.CLICKS, 0): PartitionWatermark(at(0), at(0))}
    wh.commit(first)
    first_conv = output(2, conversions=conversions(("v1", 5, "k1", 5.0, "Web")))
    wh.commit(first_conv)
    moves = schema.conform(
        pl.DataFrame({"event_id": ["v1"], "click_event_id": ["k9"], "latency_seconds": [1.0]}),
        schema.CONVERSION_REATTRIBUTIONS,
    )
    nxt = output(
        3,
        clicks=clicks(("k2", 1, 0), ("k3", 2, 0)),
        conversions=conversions(("v2", 9, None, None, None)),
        reattributions=moves,
        rollups=schema.conform(pl.DataFrame({"minute": [T0], "clicks": [2]}), schema.ROLLUP_MINUTE),
        stats=stats(3, 2),
    )
    nxt.offsets = {(Stream.CLICKS, 0): "3"}
    nxt.watermarks = {(Stream.CLICKS, 0): PartitionWatermark(at(2), at(2))}
    return nxt


# Generated data sets and the pipeline over them ---------------------------------------------

#: When the dimensions of a generated data set take effect: before any of its events.
DIMENSIONS_FROM = datetime(2023, 1, 1)


#: The generator's world and disorder of the oracle data set (tests/pipeline/test_oracle.py,
#: and the Spark job's tests on the same data): many clicks and conversions per event,
#: with duplicates, out-of-order, late and malformed records mixed in.
ORACLE_WORLD: Final = {
    "seed": 11,
    "ads": 80,
    "campaigns": 12,
    "users": 3_000,
    "ctr_mean": 0.2,
    "conversion_rate_min": 0.2,
    "conversion_rate_max": 0.4,
    "duplicate_rate": 0.02,
    "out_of_order_rate": 0.05,
    "late_rate": 0.01,
    "malformed_rate": 0.004,
}


def generated_dataset(
    out: Path, events: int, start: datetime, end: datetime, **config: Any
) -> dict[str, object]:
    """Write ``events`` events between ``start`` and ``end``, generated with
    ``GeneratorConfig(**config)``, and their dimension files into ``out``; returns the
    summary of :func:`write_dataset` (what was injected: duplicates, malformed records)."""
    return write_dataset(out, EventGenerator(GeneratorConfig(**config)), events, start, end)


def load_dimensions(warehouse: Warehouse, data: Path) -> None:
    """Load the campaigns and users written beside a generated data set, in effect from
    :data:`DIMENSIONS_FROM`."""
    for name in ("campaigns.csv", "users.csv"):
        kind, rows = read_dimension_csv(data / name)
        warehouse.load_dimension(kind, rows, DIMENSIONS_FROM)


def fixed_clock(now: datetime) -> Callable[[], datetime]:
    """A processor clock that always reads ``now`` (local time, as the processor's own):
    lateness is then judged by event time alone, as the oracle judges it."""
    return lambda: now.astimezone()


@dataclass
class Pipeline:
    """The parts of one pipeline over a generated data set, and processors built on them.

    Built by :func:`open_pipeline`; a test that needs another wiring (a partition worker,
    a serving store) builds it from these same parts.
    """

    settings: Settings
    transport: Transport
    warehouse: Warehouse
    now: datetime

    @property
    def clock(self) -> Callable[[], datetime]:
        return fixed_clock(self.now)

    def processor(self, **options: Any) -> Processor:
        """A processor over all partitions (``options``: further Processor arguments)."""
        return Processor(self.settings, self.transport, self.warehouse, clock=self.clock, **options)

    def replay(self, data: Path) -> None:
        """Send the data set's records into the transport, as ``adpulse replay`` does."""
        replay_directory(data, self.transport.producer(), self.settings.partitions)

    def close(self) -> None:
        self.transport.close()
        self.warehouse.close()


def open_pipeline(
    data: Path,
    home: Path,
    transport: Transport,
    warehouse: Warehouse,
    now: datetime,
    **settings: Any,
) -> Pipeline:
    """A pipeline over ``transport`` and ``warehouse``: the warehouse gets its tables and
    the dimensions of the data set in ``data``; ``settings`` beyond ``home`` and the
    transport's partition count go to :class:`Settings`. Records are not sent yet."""
    warehouse.create_schema()
    load_dimensions(warehouse, data)
    return Pipeline(
        Settings(home=home, partitions=transport.partitions, **settings),
        transport,
        warehouse,
        now,
    )


class MiniPipeline:
    """A small pipeline over the in-memory transport and a warehouse (DuckDB by default):
    send records, run the processor until caught up, read the warehouse. The ``pipeline``
    fixture of ``tests/conftest.py`` is one."""

    def __init__(
        self,
        home: Path,
        partitions: int = 2,
        warehouse: Warehouse | None = None,
        **settings: object,
    ) -> None:
        """``warehouse``: one with its tables created (default: a DuckDB file in ``home``)."""
        self.settings = Settings(home=home, partitions=partitions, **settings)  # type: ignore[arg-type]
        self.transport = InMemoryTransport(partitions)
        self.producer = self.transport.producer()
        if warehouse is None:
            warehouse = DuckDBWarehouse(home / "warehouse.duckdb")
            warehouse.create_schema()
        self.warehouse = warehouse
        self.processor: Processor | None = None

    def load_dims(self, *paths: Path, effective_from: datetime = datetime(1970, 1, 1)) -> None:
        for path in paths:
            kind, rows = read_dimension_csv(path)
            self.warehouse.load_dimension(kind, rows, effective_from)

    def send(self, stream: Stream, records: Iterable[bytes | Mapping[str, object]]) -> None:
        payloads = [r if isinstance(r, bytes) else orjson.dumps(r) for r in records]
        keys = []
        for p in payloads:
            try:
                keys.append(str(orjson.loads(p)["user_id"]))
            except Exception:
                keys.append(None)
        self.producer.send(stream, payloads, keys)

    def run(self) -> None:
        if self.processor is None:
            self.processor = Processor(self.settings, self.transport, self.warehouse)
        self.processor.run(threading.Event(), until_caught_up=True)

    def rows(self, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
        return self.warehouse.query(sql, params or []).rows()
