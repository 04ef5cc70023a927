"""The consumer Lambda against the independent oracle: a generated data set is put on the
local Kinesis server (2 shards, 4 partitions) by the Kinesis producer, read back, and
handed to the handler as event-source-mapping deliveries, with the two shards out of
step (one shard's clicks arrive after all its conversions), a cold start half way, and
deliveries retried. The warehouse must then equal the oracle, and a retried delivery
must change nothing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import oracle
import pytest
from awstest import unique_name, use_local_aws
from builders import fixed_clock, generated_dataset, load_dimensions
from kinesistest import kinesis_client, kinesis_transport, kinesis_url
from lambdatest import deliveries, read_back
from pgtest import PG_URL, drop_schema, new_schema, require_postgres

from adpulse.aws.consumer import ConsumerFunction
from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.sources.producer import replay_directory
from adpulse.storage.warehouse.base import Warehouse
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.storage.warehouse.postgres import PostgresWarehouse
from adpulse.transport.kinesis import stream_name

#: One xdist worker runs this module: its module-scoped fixtures are built once, not
#: once on each worker.
pytestmark = pytest.mark.xdist_group("lambda-consumer")

START = datetime(2023, 9, 8)
END = datetime(2023, 9, 9)
NOW = datetime(2026, 1, 1)
PARTITIONS = 4
SHARDS = 2
BATCH = 4


@dataclass
class Run:
    warehouse: Warehouse
    truth: duckdb.DuckDBPyConnection
    received: dict[str, int]
    answers: list[dict[str, Any]]
    retried: list[tuple[Any, Any]]
    summary: dict[str, object]


def _state(wh: Warehouse) -> tuple[Any, ...]:
    """Everything a commit changes."""
    counts = tuple(
        wh.query(f"SELECT count(*) FROM {t}").item()
        for t in (
            "fact_impressions",
            "fact_clicks",
            "fact_conversions",
            "rollup_minute",
            "dead_letters",
            "ingest_stats",
        )
    )
    attributions = wh.query(
        "SELECT event_id, click_event_id FROM fact_conversions ORDER BY 1"
    ).rows()
    return counts, wh.load_offsets(), attributions


def settings_for(home: Path, prefix: str, schema: str | None) -> Settings:
    """The function's settings: a DuckDB file in ``home``, or PostgreSQL's ``schema``."""
    return Settings(
        home=home,
        partitions=PARTITIONS,
        transport_url=kinesis_url(prefix, SHARDS),
        warehouse_url=f"duckdb:///{home / 'warehouse.duckdb'}"
        if schema is None
        else f"{PG_URL}?options=-csearch_path%3D{schema}",
        # Deliveries of a stream may be seconds apart here; watermarks follow event time.
        idle_timeout_seconds=3600,
    )


def put_dataset(data: Path, prefix: str) -> dict[Stream, list[list[dict[str, Any]]]]:
    """Produce the data set into fresh streams; its deliveries per stream and shard."""
    transport = kinesis_transport(PARTITIONS, prefix=prefix, shards=SHARDS)
    try:
        replay_directory(data, transport.producer(), PARTITIONS, chunk_bytes=16 * 1024)
    finally:
        transport.close()
    client = kinesis_client()
    out: dict[Stream, list[list[dict[str, Any]]]] = {}
    for stream in Stream:
        shards = read_back(client, stream_name(prefix, stream))
        assert len(shards) == SHARDS
        out[stream] = [deliveries(s, BATCH) for s in shards]
    return out


def interleave(*queues: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Round robin over the queues (several shards polled at once)."""
    out = []
    for i in range(max(len(q) for q in queues)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def open_warehouse(settings: Settings, schema: str | None) -> Warehouse:
    if schema is None:
        return DuckDBWarehouse(settings.warehouse_path)
    return PostgresWarehouse(PG_URL, schema=schema)


#: DuckDB; PostgreSQL; PostgreSQL with two execution environments taking turns in the
#: second half (each must notice the other's commits and rebuild its state).
RUNS = ["duckdb", "postgres", "postgres-two-environments"]


@pytest.fixture(scope="module", params=RUNS)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    schema = None
    if request.param.startswith("postgres"):
        require_postgres()
        schema = new_schema()
    with pytest.MonkeyPatch.context() as mp:
        use_local_aws(mp)
        data = tmp_path_factory.mktemp("data")
        home = tmp_path_factory.mktemp("home")
        summary = generated_dataset(
            data,
            6_000,
            START,
            END,
            seed=5,
            ads=30,
            campaigns=6,
            users=300,
            ctr_mean=0.2,
            conversion_rate_min=0.3,
            conversion_rate_max=0.5,
            conversion_delay_median_seconds=600.0,
            duplicate_rate=0.02,
            out_of_order_rate=0.05,
            late_rate=0.01,
            malformed_rate=0.004,
        )
        prefix = unique_name("lambda")
        settings = settings_for(home, prefix, schema)
        with open_warehouse(settings, schema) as wh:
            wh.create_schema()
            load_dimensions(wh, data)
        queues = put_dataset(data, prefix)
        imp, clk, conv = (queues[s] for s in Stream)
        # Shard 0: its three streams polled together. Shard 1: out of step, its clicks
        # only after all its impressions and conversions.
        shard0 = interleave(imp[0], clk[0], conv[0])
        shard1_ahead = interleave(imp[1], conv[1])
        half0, half1 = len(shard0) // 2, len(shard1_ahead) // 2
        first = interleave(shard0[:half0], shard1_ahead[:half1])
        second = interleave(shard0[half0:], shard1_ahead[half1:], clk[1])
        answers: list[dict[str, Any]] = []
        retried: list[tuple[Any, Any]] = []
        clock = fixed_clock(NOW)

        function = ConsumerFunction(settings, clock=clock)
        for event in first:
            answers.append(function.handle(event))
        # A redelivery of a batch committed long ago, and of the last one.
        for event in (first[0], first[-1]):
            before = _state(function.runtime.warehouse)
            answers.append(function.handle(event))
            retried.append((before, _state(function.runtime.warehouse)))
        function.close()

        # A cold start: the state is rebuilt from the warehouse.
        functions = [ConsumerFunction(settings, clock=clock)]
        if request.param == "postgres-two-environments":
            functions.append(ConsumerFunction(settings, clock=clock))
        for i, event in enumerate(second):
            function = functions[i % len(functions)]
            answers.append(function.handle(event))
            if i == len(second) // 2:
                before = _state(function.runtime.warehouse)
                answers.append(function.handle(first[len(first) // 2]))
                answers.append(function.handle(event))
                retried.append((before, _state(function.runtime.warehouse)))
        for function in functions:
            function.close()

        truth = duckdb.connect()
        received = oracle.build(truth, data, now=NOW)
        try:
            with open_warehouse(settings, schema) as wh:
                yield Run(wh, truth, received, answers, retried, summary)
        finally:
            if schema is not None:
                drop_schema(schema)


def test_every_delivery_is_answered_without_failures(run: Run) -> None:
    assert len(run.answers) > 40
    assert all(a == {"batchItemFailures": []} for a in run.answers)


def test_a_retried_delivery_changes_nothing(run: Run) -> None:
    assert len(run.retried) == 3
    for before, after in run.retried:
        assert after == before
        assert before[0][0] > 0


def test_counts_reconcile_with_the_oracle(run: Run) -> None:
    stats = {
        r[0]: r[1:]
        for r in run.warehouse.query(
            "SELECT stream, sum(received)::BIGINT, sum(accepted)::BIGINT,"
            " sum(duplicates)::BIGINT FROM ingest_stats GROUP BY 1"
        ).rows()
    }
    for stream in Stream:
        received, accepted, duplicates = stats[stream.value]
        typed = run.truth.execute(f"SELECT count(*) FROM typed_{stream.value}").fetchone()[0]
        unique = run.truth.execute(f"SELECT count(*) FROM dedup_{stream.value}").fetchone()[0]
        assert received == run.received[stream.value]
        assert accepted == typed
        assert duplicates == typed - unique
        facts = run.warehouse.query(f"SELECT count(*) FROM fact_{stream.value}").item()
        assert facts == unique


def test_facts_equal_the_oracle(run: Run) -> None:
    got = [
        (*r[:3], None if r[3] is None else round(r[3], 3), *r[4:])
        for r in run.warehouse.query(
            "SELECT event_id, event_time, click_time, latency_seconds, platform,"
            " campaign, age_band FROM fact_conversions ORDER BY event_id"
        ).rows()
    ]
    want = [
        (*r[:3], None if r[3] is None else round(r[3], 3), *r[4:])
        for r in run.truth.execute(
            "SELECT given_id, event_time, click_time, latency_seconds, platform,"
            " campaign, age_band FROM o_conversions ORDER BY given_id"
        ).fetchall()
    ]
    assert len(got) == len(want) > 100
    assert sum(1 for row in got if row[2] is not None) > 50  # attributed ones
    assert got == want
    for stream in ("impressions", "clicks"):
        got_ids = run.warehouse.query(
            f"SELECT event_id, event_time, campaign, gender FROM fact_{stream} ORDER BY 1"
        ).rows()
        want_ids = run.truth.execute(
            f"SELECT given_id, event_time, campaign, gender FROM o_{stream} ORDER BY 1"
        ).fetchall()
        assert got_ids == want_ids


def test_rollups_equal_the_oracle(run: Run) -> None:
    got = run.warehouse.query(
        "SELECT sum(impressions)::BIGINT, sum(clicks)::BIGINT, sum(conversions)::BIGINT,"
        " sum(attributed_conversions)::BIGINT FROM rollup_minute"
    ).row(0)
    want = run.truth.execute(
        "SELECT (SELECT count(*) FROM o_impressions), (SELECT count(*) FROM o_clicks),"
        " (SELECT count(*) FROM o_conversions),"
        " (SELECT count(*) FROM o_conversions WHERE click_time IS NOT NULL)"
    ).fetchone()
    assert got == want


def test_out_of_step_shards_were_reattributed(run: Run) -> None:
    """Shard 1's conversions came before its clicks: they were attributed late, by the
    re-attribution path (a negative rollup row for each conversion it moved)."""
    moved = run.warehouse.query(
        "SELECT count(*) FROM rollup_minute WHERE attributed_conversions < 0"
    ).item()
    assert moved > 10
    offsets = run.warehouse.load_offsets()
    assert {p for (_, p) in offsets} == set(range(PARTITIONS))
    assert {o.split(":")[0] for o in offsets.values()} == {
        "shardId-000000000000",
        "shardId-000000000001",
    }
