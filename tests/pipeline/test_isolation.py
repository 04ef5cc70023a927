"""A batch that fails for a reason in its data never halts the processor: the records at
fault are isolated and dead-lettered (``commit_rejected`` / ``processing_failed``), the
rest of the batch lands with its offsets, and the state never holds a dead letter.

The trigger is a test double: warehouses whose commit runs a statement the database
really refuses (DuckDB's ``ConversionException``, PostgreSQL's ``DataError``) when a
marked record is in the batch, and a rollup step that runs a Polars cast that really
fails. Everything else (transport, processor, databases) is real.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import orjson
import polars as pl
import psycopg
import pytest
from pgtest import PG_URL, drop_schema, new_schema, require_postgres
from redistest import redis_transport

from adpulse.config import Settings
from adpulse.contracts import Reason, Stream
from adpulse.processor.isolation import Failure, bisect, describe, step_refuses_data
from adpulse.processor.pipeline import Processor
from adpulse.processor.steps import aggregate
from adpulse.storage.warehouse.base import BatchOutput, Warehouse
from adpulse.storage.warehouse.duckdb import DUCKDB, DuckDBWarehouse
from adpulse.storage.warehouse.postgres import PostgresWarehouse
from adpulse.storage.warehouse.schema import FACT_CLICKS
from adpulse.transport.base import Transport
from adpulse.transport.framing import partition_of
from adpulse.transport.memory import InMemoryTransport

#: A platform (impressions, clicks) or product (conversions) the test warehouses refuse.
POISON = "POISON"
#: A platform the test's rollup step fails on.
STEP_POISON = "STEP-POISON"


def _poisoned(output: BatchOutput) -> bool:
    return bool(
        output.impressions.filter(pl.col("platform") == POISON).height
        or output.clicks.filter(pl.col("platform") == POISON).height
        or output.conversions.filter(pl.col("product_id") == POISON).height
    )


class RefusingDuckDB(DuckDBWarehouse):
    """DuckDB that really raises ``ConversionException`` committing a marked record."""

    def _write(self, output: BatchOutput) -> None:
        super()._write(output)
        if _poisoned(output):
            self._execute("SELECT CAST(? AS INTEGER)", [f"refused {POISON}"])


class RefusingPostgres(PostgresWarehouse):
    """PostgreSQL that really raises ``InvalidTextRepresentation`` (a ``DataError``)."""

    def _write(self, output: BatchOutput) -> None:
        super()._write(output)
        if _poisoned(output):
            self._execute("SELECT CAST(? AS INTEGER)", [f"refused {POISON}"])


@contextmanager
def refusing_warehouse(backend: str, tmp_path: Path) -> Iterator[Warehouse]:
    if backend == "duckdb":
        with RefusingDuckDB(tmp_path / "warehouse.duckdb") as wh:
            wh.create_schema()
            yield wh
        return
    require_postgres()
    schema = new_schema()
    wh = RefusingPostgres(PG_URL, schema=schema)
    try:
        wh.create_schema()
        yield wh
    finally:
        wh.close()
        drop_schema(schema)


@dataclass
class Rig:
    """An in-memory log, a warehouse and the processor over them."""

    warehouse: Warehouse
    transport: Transport
    settings: Settings
    processor: Processor | None = None

    def send(self, stream: Stream, records: list[dict[str, object]]) -> None:
        payloads = [orjson.dumps(r) for r in records]
        self.transport.producer().send(stream, payloads, [str(r["user_id"]) for r in records])

    def run(self) -> None:
        if self.processor is None:
            self.processor = Processor(self.settings, self.transport, self.warehouse)
        self.processor.run(threading.Event(), until_caught_up=True)

    def rows(self, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
        return self.warehouse.query(sql, params or []).rows()

    def count(self, table: str) -> int:
        return int(self.warehouse.query(f"SELECT count(*) AS n FROM {table}").item())

    def stats(self, stream: Stream) -> tuple[int, ...]:
        [row] = self.rows(
            "SELECT sum(received), sum(accepted), sum(rejected), sum(duplicates)"
            " FROM ingest_stats WHERE stream = ?",
            [stream.value],
        )
        return tuple(int(v) for v in row)  # type: ignore[call-overload]

    def lag(self) -> int:
        consumer = self.transport.consumer()
        offsets = self.warehouse.load_offsets()
        return sum(
            consumer.lag_bytes(s, p, offsets.get((s, p)))
            for s in Stream
            for p in range(self.transport.partitions)
        )


@pytest.fixture(params=["duckdb", "postgres"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    with refusing_warehouse(request.param, tmp_path) as wh:
        settings = Settings(home=tmp_path, partitions=3, idle_timeout_seconds=100_000)
        rig = Rig(wh, InMemoryTransport(3), settings)
        yield rig
        if rig.processor is not None:
            rig.processor.close()


def impression(i: int, platform: str = "Web", user: str | None = None) -> dict[str, object]:
    return {
        "event_id": f"i-{i}",
        "ad_id": 1000 + i % 5,
        "user_id": user or f"U{i % 7}",
        "impression_timestamp": f"2023-09-09 10:{i % 60:02d}:00",
        "platform": platform,
        "location": "Paris",
    }


def click(
    i: int, platform: str = "Web", user: str | None = None, minute: int = 0
) -> dict[str, object]:
    return {
        "event_id": f"c-{i}",
        "ad_id": 1000 + i % 5,
        "user_id": user or f"U{i % 7}",
        "click_timestamp": f"2023-09-09 10:{minute or i % 60:02d}:00",
        "platform": platform,
        "location": "Paris",
    }


def conversion(i: int, product: str = "P1", user: str | None = None) -> dict[str, object]:
    return {
        "event_id": f"v-{i}",
        "ad_id": 1000 + i % 5,
        "user_id": user or f"U{i % 7}",
        "conversion_timestamp": f"2023-09-09 11:{i % 60:02d}:00",
        "product_id": product,
        "revenue": 10.5,
    }


def test_refused_records_are_dead_lettered_and_the_rest_lands(rig: Rig) -> None:
    impressions = [impression(i) for i in range(40)]
    impressions[7] = impression(7, platform=POISON)
    impressions[31] = impression(31, platform=POISON)
    clicks = [click(i) for i in range(12)]
    clicks[11] = click(11, platform=POISON)
    conversions = [conversion(i) for i in range(6)]
    conversions[0] = conversion(0, product=POISON)
    bad_type = {**impression(35), "ad_id": "abc"}  # rejected by validation, after a poison
    impressions[35] = bad_type
    rig.send(Stream.IMPRESSIONS, impressions)
    rig.send(Stream.CLICKS, clicks)
    rig.send(Stream.CONVERSIONS, conversions)
    rig.run()

    # each dead letter names its record's place: its partition and index there
    sent = {Stream.IMPRESSIONS: impressions, Stream.CLICKS: clicks, Stream.CONVERSIONS: conversions}
    by_partition = {
        (s.value, p): [orjson.dumps(r) for r in sent[s] if partition_of(str(r["user_id"]), 3) == p]
        for s in Stream
        for p in range(3)
    }
    places = rig.rows("SELECT stream, partition, record_index, reason, payload FROM dead_letters")
    assert len(places) == 5
    for stream, partition, index, _, payload in places:
        assert by_partition[(stream, partition)][index] == bytes(payload)  # type: ignore[index, arg-type]
    assert ("impressions", "wrong_type", orjson.dumps(bad_type)) in {
        (s, r, bytes(p))
        for s, _, _, r, p in places  # type: ignore[arg-type]
    }
    letters = [
        row
        for row in rig.rows(
            "SELECT stream, reason, detail, payload FROM dead_letters ORDER BY payload"
        )
        if row[1] == "commit_rejected"
    ]

    assert rig.count("fact_impressions") == 37
    assert rig.count("fact_clicks") == 11
    assert rig.count("fact_conversions") == 5
    expected_detail = (
        "ConversionException" if rig.warehouse.dialect == "duckdb" else "InvalidTextRepresentation"
    )
    assert sorted((s, r, bytes(p)) for s, r, _, p in letters) == sorted(  # type: ignore[arg-type]
        [
            ("impressions", "commit_rejected", orjson.dumps(impressions[7])),
            ("impressions", "commit_rejected", orjson.dumps(impressions[31])),
            ("clicks", "commit_rejected", orjson.dumps(clicks[11])),
            ("conversions", "commit_rejected", orjson.dumps(conversions[0])),
        ]
    )
    assert all(
        str(d).startswith(expected_detail) and f"refused {POISON}" in str(d)
        for _, _, d, _ in letters
    )
    # received = accepted + rejected; nothing is left behind in the log
    assert rig.stats(Stream.IMPRESSIONS) == (40, 37, 3, 0)
    assert rig.stats(Stream.CLICKS) == (12, 11, 1, 0)
    assert rig.stats(Stream.CONVERSIONS) == (6, 5, 1, 0)
    assert rig.rows(
        "SELECT sum(impressions), sum(clicks), sum(conversions) FROM rollup_minute"
    ) == [(37, 11, 5)]
    assert rig.lag() == 0
    ids = {r[0] for r in rig.rows("SELECT event_id FROM fact_impressions")}
    assert ids == {f"i-{i}" for i in range(40)} - {"i-7", "i-31", "i-35"}

    # and the processor goes on with the next batch, on the fast path
    rig.send(Stream.IMPRESSIONS, [impression(i) for i in range(40, 45)])
    rig.run()
    assert rig.count("fact_impressions") == 42
    assert rig.count("dead_letters") == 5


def test_a_step_that_raises_on_a_record_dead_letters_it(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = aggregate.engagement_rollup

    def failing_rollup(rows: pl.DataFrame, measure: str) -> pl.DataFrame:
        if rows.height and (rows["platform"] == STEP_POISON).any():
            # a real Polars failure: a strict cast of text to a number
            rows.select(pl.col("platform").cast(pl.Int64, strict=True))
        return real(rows, measure)

    monkeypatch.setattr(aggregate, "engagement_rollup", failing_rollup)
    clicks = [click(i) for i in range(9)]
    clicks[4] = click(4, platform=STEP_POISON)
    rig.send(Stream.CLICKS, clicks)
    rig.run()

    assert rig.count("fact_clicks") == 8
    [(reason, detail, payload)] = rig.rows("SELECT reason, detail, payload FROM dead_letters")
    assert (reason, bytes(payload)) == ("processing_failed", orjson.dumps(clicks[4]))  # type: ignore[arg-type]
    assert str(detail).startswith("InvalidOperationError: conversion from `str` to `i64`")
    assert rig.stats(Stream.CLICKS) == (9, 8, 1, 0)
    assert rig.rows("SELECT sum(clicks) FROM rollup_minute") == [(8,)]


def test_state_never_holds_a_dead_lettered_record(rig: Rig) -> None:
    """The refused click's id is not remembered (the same id, clean, is new later) and
    no conversion is attributed to it."""
    rig.send(Stream.CLICKS, [click(1, platform=POISON, user="U1"), click(2, user="U2")])
    rig.run()
    assert rig.rows("SELECT event_id FROM fact_clicks") == [("c-2",)]

    rig.send(Stream.CONVERSIONS, [conversion(1, user="U1")])
    rig.run()
    assert rig.rows("SELECT event_id, click_event_id FROM fact_conversions") == [("v-1", None)]

    rig.send(Stream.CLICKS, [click(1, user="U1")])  # same id and time, now storable
    rig.run()
    assert sorted(rig.rows("SELECT event_id FROM fact_clicks")) == [("c-1",), ("c-2",)]
    assert rig.stats(Stream.CLICKS) == (3, 2, 1, 0)
    # the open conversion now takes its click (same user and ad, 10:01 <= 11:01)
    assert rig.rows("SELECT event_id, click_event_id FROM fact_conversions") == [("v-1", "c-1")]


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
def test_a_value_the_database_itself_refuses_is_isolated(backend: str, tmp_path: Path) -> None:
    """No test double: a warehouse whose ``location`` column is narrower than what
    validation accepts (a CHECK constraint in DuckDB, VARCHAR(16) in PostgreSQL, as a
    DBA might set them) really refuses a 40-character location."""
    settings = Settings(home=tmp_path, partitions=3, idle_timeout_seconds=100_000)
    long_location = "L" * 40
    clicks = [click(i) for i in range(10)]
    clicks[6] = {**click(6), "location": long_location}
    if backend == "duckdb":
        path = tmp_path / "warehouse.duckdb"
        create = DUCKDB.create_table("fact_clicks", FACT_CLICKS)
        with duckdb.connect(str(path)) as con:
            con.execute(create[:-1] + ", CHECK (length(location) <= 16))")
        warehouse: Warehouse = DuckDBWarehouse(path)
        warehouse.create_schema()  # keeps the narrower fact_clicks
        schema = None
    else:
        require_postgres()
        schema = new_schema()
        warehouse = PostgresWarehouse(PG_URL, schema=schema)
        warehouse.create_schema()
        with psycopg.connect(PG_URL, autocommit=True) as con:
            con.execute(
                f'ALTER TABLE "{schema}".fact_clicks ALTER COLUMN location TYPE VARCHAR(16)'
            )
    try:
        rig = Rig(warehouse, InMemoryTransport(3), settings)
        rig.send(Stream.CLICKS, clicks)
        rig.run()
        assert sorted(r[0] for r in rig.rows("SELECT event_id FROM fact_clicks")) == sorted(
            f"c-{i}" for i in range(10) if i != 6
        )
        [(reason, detail, payload)] = rig.rows("SELECT reason, detail, payload FROM dead_letters")
        assert (reason, bytes(payload)) == ("commit_rejected", orjson.dumps(clicks[6]))  # type: ignore[arg-type]
        expected = (
            "ConstraintException: Constraint Error: CHECK constraint failed"
            if backend == "duckdb"
            else "StringDataRightTruncation: value too long for type character varying(16)"
        )
        assert str(detail).startswith(expected)
        assert rig.stats(Stream.CLICKS) == (10, 9, 1, 0)
        assert rig.lag() == 0
        assert rig.processor is not None
        rig.processor.close()
    finally:
        warehouse.close()
        if schema is not None:
            drop_schema(schema)


def test_isolation_reads_the_batch_again_from_redis_streams(tmp_path: Path) -> None:
    """The refused batch is read again from the committed offsets (a rewind of the
    consumer group's reading), and everything ends acknowledged."""
    settings = Settings(home=tmp_path, partitions=2, idle_timeout_seconds=100_000)
    with redis_transport(2) as transport, refusing_warehouse("duckdb", tmp_path) as wh:
        rig = Rig(wh, transport, settings)
        clicks = [click(i, platform=POISON if i in (2, 9) else "Web") for i in range(14)]
        rig.send(Stream.CLICKS, clicks)
        rig.run()
        assert rig.count("fact_clicks") == 12
        assert sorted(bytes(p) for (p,) in rig.rows("SELECT payload FROM dead_letters")) == sorted(  # type: ignore[arg-type]
            orjson.dumps(clicks[i]) for i in (2, 9)
        )
        rig.send(Stream.CLICKS, [click(i) for i in range(14, 20)])
        rig.run()
        assert rig.count("fact_clicks") == 18
        assert rig.stats(Stream.CLICKS) == (20, 18, 2, 0)
        assert rig.lag() == 0
        assert rig.processor is not None
        rig.processor.close()


class Crash(BaseException):
    """Stands for the process dying mid-isolation."""


def _snapshot(rig: Rig) -> dict[str, list[tuple[object, ...]]]:
    out = {}
    for table in ("fact_impressions", "fact_clicks", "fact_conversions"):
        out[table] = rig.rows(
            f"SELECT event_id, event_time, ad_id, user_id, is_late, partition FROM {table}"
            " ORDER BY event_id"
        )
    out["attribution"] = rig.rows(
        "SELECT event_id, click_event_id, latency_seconds FROM fact_conversions ORDER BY event_id"
    )
    out["dead_letters"] = rig.rows(
        "SELECT stream, partition, reason, detail, payload FROM dead_letters"
        " ORDER BY stream, payload"
    )
    out["stats"] = rig.rows(
        "SELECT stream, partition, sum(received), sum(accepted), sum(rejected),"
        " sum(duplicates), sum(late) FROM ingest_stats GROUP BY stream, partition"
        " ORDER BY stream, partition"
    )
    out["rollups"] = rig.rows(
        "SELECT minute, ad_id, platform, sum(impressions), sum(clicks), sum(conversions),"
        " sum(attributed_conversions), sum(revenue) FROM rollup_minute"
        " GROUP BY minute, ad_id, platform ORDER BY minute, ad_id, platform"
    )
    out["checkpoints"] = rig.rows(
        'SELECT stream, partition, "offset" FROM checkpoints ORDER BY stream, partition'
    )
    return out


def _send_mixed(rig: Rig) -> None:
    rig.send(
        Stream.IMPRESSIONS,
        [impression(i, platform=POISON if i % 29 == 5 else "Web") for i in range(60)],
    )
    rig.send(Stream.CLICKS, [click(i, platform=POISON if i == 3 else "Web") for i in range(20)])
    rig.send(
        Stream.CONVERSIONS, [conversion(i, product=POISON if i == 2 else "P1") for i in range(8)]
    )


@pytest.mark.parametrize("crash_at", [1, 6])
def test_a_crash_mid_isolation_then_restart_gives_the_same_results(
    tmp_path: Path, crash_at: int
) -> None:
    settings = Settings(home=tmp_path, partitions=3, idle_timeout_seconds=100_000)
    with refusing_warehouse("duckdb", tmp_path / "reference") as reference_wh:
        (tmp_path / "reference").mkdir(exist_ok=True)
        reference = Rig(reference_wh, InMemoryTransport(3), settings)
        _send_mixed(reference)
        reference.run()
        want = _snapshot(reference)
        assert reference.processor is not None
        reference.processor.close()

    calls = 0

    class CrashingDuckDB(RefusingDuckDB):
        def check_commit(self, output: BatchOutput) -> None:
            nonlocal calls
            calls += 1
            if calls == crash_at:
                raise Crash
            super().check_commit(output)

    (tmp_path / "crashed").mkdir()
    with CrashingDuckDB(tmp_path / "crashed" / "warehouse.duckdb") as wh:
        wh.create_schema()
        crashed = Rig(wh, InMemoryTransport(3), settings)
        _send_mixed(crashed)
        with pytest.raises(Crash):
            crashed.run()
        assert crashed.count("dead_letters") == 0  # nothing of the batch was committed
        crashed.processor = None  # the dead process's state is gone with it
        crashed.run()
        got = _snapshot(crashed)
        assert crashed.processor is not None
        crashed.processor.close()
    assert calls > crash_at
    assert sum(len(v) for v in want.values()) > 80
    assert [r[2] for r in want["dead_letters"]] == ["commit_rejected"] * 4
    for key in want:
        assert got[key] == want[key], key


def test_bisect_finds_each_failing_record_in_order() -> None:
    bad = {3, 4, 17}
    attempts: list[tuple[int, int]] = []

    def attempt(lo: int, hi: int) -> Failure | None:
        attempts.append((lo, hi))
        hit = bad & set(range(lo, hi))
        return Failure(Reason.COMMIT_REJECTED, str(min(hit))) if hit else None

    found = bisect(0, 32, attempt)
    assert [(i, f.detail) for i, f in found] == [(3, "3"), (4, "4"), (17, "17")]
    # passed pieces come in arrival order and cover every good record exactly once
    passed = [r for r in attempts if not bad & set(range(*r))]
    covered = [i for lo, hi in passed for i in range(lo, hi)]
    assert covered == sorted(set(range(32)) - bad)
    assert len(attempts) == 23


def test_a_failure_that_needs_two_records_keeps_both() -> None:
    """Like a sum that overflows only when both records are in one piece."""

    def attempt(lo: int, hi: int) -> Failure | None:
        return Failure(Reason.PROCESSING_FAILED, "sum") if lo <= 0 and hi >= 2 else None

    assert bisect(0, 2, attempt) == []


def test_which_errors_are_the_data_s_fault(tmp_path: Path) -> None:
    with DuckDBWarehouse(tmp_path / "w.duckdb") as wh:
        with pytest.raises(duckdb.ConversionException) as conversion:
            wh.query("SELECT CAST('x' AS INTEGER)")
        assert wh.refuses_data(conversion.value)
        assert not wh.refuses_data(duckdb.IOException("disk full"))
        assert not wh.refuses_data(duckdb.CatalogException("no such table"))
        assert not wh.refuses_data(OSError(28, "No space left on device"))
    require_postgres()
    schema = new_schema()
    pg = PostgresWarehouse(PG_URL, schema=schema)
    try:
        with pytest.raises(psycopg.DataError) as nul:
            pg.query("SELECT CAST(? AS TEXT)", ["a\x00b"])
        assert pg.refuses_data(nul.value)
        with pytest.raises(psycopg.DataError) as overflow:
            pg.query("SELECT CAST(? AS NUMERIC(18, 4))", [10**15])
        assert pg.refuses_data(overflow.value)
        with pytest.raises(psycopg.OperationalError) as gone:
            psycopg.connect("postgresql://postgres@127.0.0.1:1/test", connect_timeout=2)
        assert not pg.refuses_data(gone.value)
        with pytest.raises(psycopg.errors.UndefinedTable) as missing:
            pg.query("SELECT * FROM no_such_table")
        assert not pg.refuses_data(missing.value)
    finally:
        pg.close()
        drop_schema(schema)
    with pytest.raises(pl.exceptions.InvalidOperationError) as polars_error:
        pl.Series(["x"]).cast(pl.Int64, strict=True)
    assert step_refuses_data(polars_error.value)
    assert step_refuses_data(ValueError("year 0 is out of range"))
    assert step_refuses_data(OverflowError())
    assert not step_refuses_data(TypeError("a bug"))
    assert not step_refuses_data(OSError("disk"))
    assert not step_refuses_data(KeyboardInterrupt())
    assert describe(ValueError("a\x00b\nc")) == "ValueError: a\\x00b c"
    assert describe(ValueError("x\udc80")) == "ValueError: x\\udc80"
