"""The pipeline against the independent SQL oracle (tests/oracle.py), on a seeded data set
with duplicates, out-of-order and late events (within the allowed lateness) and malformed
records, for several partition counts and batch sizes, and over every warehouse backend
(the Redshift one on PostgreSQL and a local S3, every statement it sent checked against
Redshift's grammar: redshifttest.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import duckdb
import oracle
import pytest
from builders import ORACLE_WORLD, generated_dataset, open_pipeline
from pgtest import PG_URL, drop_schema, new_schema, require_postgres
from redistest import REDIS_URL, delete_prefix, new_prefix, require_redis
from redshifttest import (
    IAM_ROLE,
    ParquetCopyShim,
    StatementLog,
    new_bucket,
    prepare_schema,
    staging,
)

from adpulse.contracts import Stream
from adpulse.serving import queries
from adpulse.sources.generator import EXPECTED_REASON, MalformedKind
from adpulse.sources.producer import replay_directory
from adpulse.storage.warehouse.base import Warehouse
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.storage.warehouse.postgres import PostgresWarehouse
from adpulse.transport.base import Transport
from adpulse.transport.embedded import EmbeddedTransport
from adpulse.transport.redis_streams import RedisStreamsTransport

#: One xdist worker runs this module: its module-scoped fixtures are built once, not
#: once on each worker.
pytestmark = pytest.mark.xdist_group("oracle")

START = datetime(2023, 9, 8)
END = datetime(2023, 9, 10)
EVENTS = 120_000
NOW = datetime(2026, 1, 1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    data = tmp_path_factory.mktemp("data")
    summary = generated_dataset(
        data,
        EVENTS,
        START,
        END,
        **ORACLE_WORLD,
    )
    return data, summary


@pytest.fixture(scope="module")
def truth(
    dataset: tuple[Path, dict[str, object]],
) -> tuple[duckdb.DuckDBPyConnection, dict[str, int]]:
    con = duckdb.connect()
    received = oracle.build(con, dataset[0], now=NOW)
    return con, received


def _run(
    data: Path,
    home: Path,
    partitions: int,
    batch_bytes: int,
    pg_schema: str | None = None,
    redis_prefix: str | None = None,
    redshift_log: StatementLog | None = None,
) -> Warehouse:
    transport: Transport
    if redis_prefix is None:
        transport = EmbeddedTransport(home / "log", partitions)
    else:
        # Packed entries, as transport_url opens them (smaller, for several per batch).
        transport = RedisStreamsTransport(
            REDIS_URL, partitions, prefix=redis_prefix, entry_bytes=4096
        )
    warehouse: Warehouse
    if pg_schema is None:
        warehouse = DuckDBWarehouse(home / "warehouse.duckdb")
    elif redshift_log is not None:
        prepare_schema(pg_schema)
        warehouse = ParquetCopyShim(
            PG_URL, staging(new_bucket()), IAM_ROLE, schema=pg_schema, log=redshift_log
        )
    else:
        warehouse = PostgresWarehouse(PG_URL, schema=pg_schema)
    pipeline = open_pipeline(data, home, transport, warehouse, NOW, batch_max_bytes=batch_bytes)
    producer = transport.producer()
    processor = pipeline.processor()
    stop = threading.Event()
    # Produce and process concurrently, as in production.
    worker = threading.Thread(target=processor.run, args=(stop,))
    worker.start()
    replay_directory(data, producer, partitions)
    producer.flush()
    stop.set()
    worker.join()
    processor.run(threading.Event(), until_caught_up=True)
    processor.close()
    transport.close()
    return warehouse


#: (backend, partitions, batch bytes): DuckDB at three shapes, PostgreSQL once, Redshift
#: once, and DuckDB over the Redis Streams transport once.
RUNS = [
    ("duckdb", 1, 32 * 1024 * 1024),
    ("duckdb", 3, 200_000),
    ("duckdb", 8, 48_000),
    ("postgres", 3, 200_000),
    ("redshift", 3, 200_000),
    ("redis", 3, 200_000),
]
#: The statements the Redshift run sent, from its first commit to its last query.
REDSHIFT_LOG = StatementLog()


def _run_id(run: tuple[str, int, int]) -> str:
    backend, partitions, batch = run
    suffix = {"postgres": "-pg", "redshift": "-redshift", "redis": "-redis"}.get(backend, "")
    return f"p{partitions}-b{batch}{suffix}"


@pytest.fixture(scope="module", params=RUNS, ids=_run_id)
def warehouse(
    request: pytest.FixtureRequest,
    dataset: tuple[Path, dict[str, object]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Warehouse]:
    backend, partitions, batch = request.param
    pg_schema = None
    prefix = None
    if backend in ("postgres", "redshift"):
        require_postgres()
        pg_schema = new_schema()
    if backend == "redis":
        require_redis()
        prefix = new_prefix()
    try:
        home = tmp_path_factory.mktemp("home")
        if backend == "redshift":
            with REDSHIFT_LOG.recording():
                wh = _run(dataset[0], home, partitions, batch, pg_schema, prefix, REDSHIFT_LOG)
                yield wh
                wh.close()
        else:
            wh = _run(dataset[0], home, partitions, batch, pg_schema, prefix)
            yield wh
            wh.close()
    finally:
        if pg_schema is not None:
            drop_schema(pg_schema)
        if prefix is not None:
            delete_prefix(prefix)


def _close(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))  # type: ignore[arg-type]


def test_counts_reconcile(warehouse: Warehouse, truth, dataset) -> None:  # type: ignore[no-untyped-def]
    con, received = truth
    stats = {
        r[0]: r[1:]
        for r in warehouse.query(
            "SELECT stream, sum(received)::BIGINT, sum(accepted)::BIGINT, sum(rejected)::BIGINT,"
            " sum(duplicates)::BIGINT FROM ingest_stats GROUP BY 1"
        ).rows()
    }
    for stream in Stream:
        got_received, accepted, rejected, duplicates = stats[stream.value]
        typed = con.execute(f"SELECT count(*) FROM typed_{stream.value}").fetchone()[0]
        unique = con.execute(f"SELECT count(*) FROM dedup_{stream.value}").fetchone()[0]
        assert got_received == received[stream.value]
        assert accepted == typed
        assert duplicates == typed - unique
        facts = warehouse.query(f"SELECT count(*) FROM fact_{stream.value}").item()
        assert facts == unique
        dead = warehouse.query(
            "SELECT count(*) FROM dead_letters WHERE stream = ?", [stream.value]
        ).item()
        # Nothing lost: every line is a fact, a counted duplicate or a dead letter.
        assert facts + duplicates + dead == received[stream.value]
    # Every injected malformed record is a dead letter with its expected reason.
    reasons = dict(warehouse.query("SELECT reason, count(*) FROM dead_letters GROUP BY 1").rows())
    want: dict[str, int] = {}
    counts = dataset[1]["counts"]
    if counts is not None:
        for stream_counts in counts.values():  # type: ignore[union-attr]
            for kind, n in stream_counts.malformed.items():
                per = 2 if kind is MalformedKind.EMBEDDED_NEWLINE else 1
                reason = EXPECTED_REASON[kind].value
                want[reason] = want.get(reason, 0) + n * per
        assert reasons == want


def test_facts_equal_oracle(warehouse: Warehouse, truth) -> None:  # type: ignore[no-untyped-def]
    con, _ = truth
    got = warehouse.query(
        "SELECT event_id, event_time, click_time, latency_seconds, platform, campaign, "
        "age_band FROM fact_conversions ORDER BY event_id"
    ).rows()
    want = con.execute(
        "SELECT given_id, event_time, click_time, latency_seconds, platform, campaign, age_band "
        "FROM o_conversions ORDER BY given_id"
    ).fetchall()
    assert len(got) == len(want) > 1000
    for g, w in zip(got, want, strict=True):
        assert g[:3] == w[:3] and g[4:] == w[4:], (g, w)
        assert _close(g[3], w[3])
    for stream in ("impressions", "clicks"):
        got_ids = warehouse.query(
            f"SELECT event_id, event_time, campaign, gender FROM fact_{stream} ORDER BY 1"
        ).rows()
        want_ids = con.execute(
            f"SELECT given_id, event_time, campaign, gender FROM o_{stream} ORDER BY 1"
        ).fetchall()
        assert got_ids == want_ids


FILTERS = [
    {},
    {"platform": "Mobile"},
    {"gender": "Female", "age_band": "25-34"},
    {"interest": "Travel"},
    {"location": "New York"},
    {"start": datetime(2023, 9, 8, 12, 0), "end": datetime(2023, 9, 9, 6, 30)},
    {"campaign": "__first__"},
]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f) or "all")
@pytest.mark.parametrize("group", [None, "ad", "campaign"])
def test_metrics_equal_oracle(warehouse, truth, filters, group) -> None:  # type: ignore[no-untyped-def]
    con, _ = truth
    filters = dict(filters)
    if filters.get("campaign") == "__first__":
        filters["campaign"] = con.execute("SELECT min(campaign) FROM o_campaigns").fetchone()[0]
    want = oracle.metrics(con, {"ad": "ad_id", "campaign": "campaign"}.get(group), **filters)
    f = queries.Filters(
        campaign=filters.get("campaign"),
        start=filters.get("start"),
        end=filters.get("end"),
        platform=filters.get("platform"),
        location=filters.get("location"),
        gender=filters.get("gender"),
        age_band=filters.get("age_band"),
        interest=filters.get("interest"),
    )
    key = {"ad": "ad_id", "campaign": "campaign"}.get(group)
    checks = {
        "ctr": ("impressions", "clicks", "ctr"),
        "conversion_rate": ("clicks", "attributed_conversions", "conversion_rate"),
        "revenue_per_conversion": ("conversions", "revenue", "revenue_per_conversion"),
        "conversion_latency": ("latency_mean", "latency_p50", "latency_p90"),
    }
    for name, columns in checks.items():
        frame = getattr(queries, name)(warehouse, f, group)
        got = {(r[key] if key else None): r for r in frame.to_dicts()}
        relevant = {
            g: w
            for g, w in want.items()
            if (name != "conversion_latency" or w["latency_mean"] is not None)
            and any(w[c] not in (None, 0) for c in columns)
        }
        assert set(got) == set(relevant), name
        for g, w in relevant.items():
            for c in columns:
                assert _close(got[g][c], w[c]), (name, g, c, got[g][c], w[c])
    summary = queries.summary(warehouse, f).row(0, named=True)
    total = want.get(None) if group is None else None
    if total is not None:
        for c in ("impressions", "clicks", "conversions", "attributed_conversions"):
            assert summary[c] == total[c], c
        for c in ("ctr", "conversion_rate", "revenue_per_conversion", "latency_p50", "latency_p90"):
            assert _close(summary[c], total[c]), c


def test_trending_and_top_ads_equal_oracle(warehouse, truth) -> None:  # type: ignore[no-untyped-def]
    con, _ = truth
    end = datetime(2023, 9, 9, 18, 0)
    w = 60
    rows = con.execute(
        """
        WITH k AS (SELECT campaign, sum(CASE WHEN event_time >= ?::TIMESTAMP - INTERVAL 60 MINUTE THEN 1 ELSE 0 END) AS c_now,
                          sum(CASE WHEN event_time < ?::TIMESTAMP - INTERVAL 60 MINUTE THEN 1 ELSE 0 END) AS c_prev
                   FROM o_clicks WHERE event_time >= ?::TIMESTAMP - INTERVAL 120 MINUTE AND event_time < ?
                   GROUP BY 1),
             v AS (SELECT campaign, count(*) FILTER (WHERE event_time >= ?::TIMESTAMP - INTERVAL 60 MINUTE) AS v_now,
                          count(*) FILTER (WHERE event_time < ?::TIMESTAMP - INTERVAL 60 MINUTE) AS v_prev
                   FROM o_conversions WHERE click_time IS NOT NULL
                     AND event_time >= ?::TIMESTAMP - INTERVAL 120 MINUTE AND event_time < ?
                   GROUP BY 1)
        SELECT k.campaign, c_now, c_prev, coalesce(v_now, 0), coalesce(v_prev, 0),
               coalesce(v_now, 0) / c_now - coalesce(v_prev, 0) / c_prev AS change
        FROM k LEFT JOIN v USING (campaign)
        WHERE c_now >= 5 AND c_prev >= 5 AND k.campaign IS NOT NULL
        ORDER BY change DESC, k.campaign
        """,
        [end] * 8,
    ).fetchall()
    got = queries.trending(
        warehouse, queries.Filters(end=end), window_minutes=w, min_clicks=5, limit=100
    ).to_dicts()
    assert [r["campaign"] for r in got] == [r[0] for r in rows]
    for g, r in zip(got, rows, strict=True):
        assert _close(g["change"], r[5])

    top = con.execute(
        "SELECT ad_id, sum(revenue) AS rev FROM o_conversions GROUP BY 1 ORDER BY rev DESC, ad_id LIMIT 5"
    ).fetchall()
    got_top = queries.top_ads(warehouse, queries.Filters(), by="revenue", min_clicks=0, limit=5)
    assert [(r["ad_id"], float(r["revenue"])) for r in got_top.to_dicts()] == [
        (a, float(v)) for a, v in top
    ]


def test_redshift_was_sent_only_redshift_sql(warehouse: Warehouse) -> None:
    """Last in the module: the Redshift run's commits, loads, offsets and every query of
    the tests above, each statement parsed with sqlglot's Redshift dialect."""
    if warehouse.dialect != "redshift":
        pytest.skip("checks the statements of the Redshift run")
    assert isinstance(warehouse, ParquetCopyShim)
    assert len(warehouse.copies) > 100  # every batch went through S3
    assert warehouse.staging.keys() == []  # and its objects were deleted
    sent = " ".join(REDSHIFT_LOG.statements)
    assert "MERGE INTO" in sent and "percentile_cont" in sent.lower()
    assert REDSHIFT_LOG.problems() == {}
