"""Fixtures of the ``adpulse reprocess`` tests: one Spark session for the whole run, the
oracle's data set (with a few conversions more than a day after their click), the
streaming pipeline's results on it, and the Spark job's.

The tests are skipped, saying why, without PySpark (the ``spark`` extra) or without Java
(``tests/sparktest.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import oracle
import pytest
from builders import ORACLE_WORLD, generated_dataset
from sparktest import (
    DAY,
    END,
    LONG_LATENCY,
    NOW,
    PARTITIONS,
    START,
    WEEK,
    Streamed,
    dims_warehouse,
    rules,
    stream,
)

from adpulse.reprocess import run  # PySpark is imported only when a job runs


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    session = run.spark_session(
        "local[2]",
        **{
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": "4",
            "spark.driver.memory": "1g",
        },
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _insert_long_latency(data: Path) -> int:
    """Put 6 click -> conversion pairs 35 h apart into the files, each at its place in
    time order (so none arrives late)."""
    import orjson

    pairs = []
    for i in range(6):
        click_at = START + timedelta(minutes=5 + 7 * i)
        pairs.append((f"U{1000 + i}", 1001 + i, click_at, click_at + LONG_LATENCY, i))
    for name, ts_field, make in (
        (
            "clicks.jsonl",
            "click_timestamp",
            lambda u, a, c, v, i: (
                c,
                {
                    "event_id": f"long-click-{i}",
                    "ad_id": a,
                    "user_id": u,
                    "click_timestamp": f"{c:%Y-%m-%d %H:%M:%S}",
                    "platform": "Web",
                    "location": "Berlin",
                },
            ),
        ),
        (
            "conversions.jsonl",
            "conversion_timestamp",
            lambda u, a, c, v, i: (
                v,
                {
                    "event_id": f"long-conv-{i}",
                    "ad_id": a,
                    "user_id": u,
                    "conversion_timestamp": f"{v:%Y-%m-%d %H:%M:%S}",
                    "product_id": "P1",
                    "revenue": 10.5,
                },
            ),
        ),
    ):
        path = data / name
        lines = path.read_bytes().split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        extra = sorted(make(*p) for p in pairs)
        out: list[bytes] = []
        for line in lines:
            try:
                when = datetime.strptime(orjson.loads(line)[ts_field], "%Y-%m-%d %H:%M:%S")
            except Exception:  # noqa: BLE001 - malformed lines stay where they are
                when = None
            while extra and when is not None and extra[0][0] <= when:
                out.append(orjson.dumps(extra.pop(0)[1]))
            out.append(line)
        out.extend(orjson.dumps(e[1]) for e in extra)
        path.write_bytes(b"\n".join(out) + b"\n")
    return len(pairs)


def _insert_late(data: Path) -> None:
    """In the middle of the clicks and of the conversions, records 2 hours older than
    their neighbours: late in any partition (the generator's own late records stay
    within the allowed lateness). Their users have no other click or conversion, so the
    oracle, which knows no lateness, attributes as the pipeline does."""
    import orjson

    for name, ts_field, extra in (
        ("clicks.jsonl", "click_timestamp", {"platform": "Web", "location": "Paris"}),
        ("conversions.jsonl", "conversion_timestamp", {"product_id": "P2", "revenue": 3}),
    ):
        path = data / name
        lines = path.read_bytes().split(b"\n")
        middle = len(lines) // 2
        for offset in range(4):
            i = middle + 40 * offset
            while True:
                try:
                    at = datetime.strptime(orjson.loads(lines[i])[ts_field], "%Y-%m-%d %H:%M:%S")
                    break
                except Exception:  # noqa: BLE001 - a malformed neighbour: try the next
                    i += 1
            record = {
                "event_id": f"late-{name[:5]}-{offset}",
                "ad_id": 1010,
                "user_id": f"L{name[:2]}{offset}",
                ts_field: f"{at - timedelta(hours=2):%Y-%m-%d %H:%M:%S}",
                **extra,
            }
            lines.insert(i + 1, orjson.dumps(record))
        path.write_bytes(b"\n".join(lines))


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("reprocess-data")
    generated_dataset(
        data,
        20_000,
        START,
        END,
        **ORACLE_WORLD,
    )
    _insert_long_latency(data)
    _insert_late(data)
    return data


@pytest.fixture(scope="session")
def streamed_week(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Streamed]:
    s = stream(dataset, tmp_path_factory.mktemp("stream-week"), WEEK)
    yield s
    s.warehouse.close()


@pytest.fixture(scope="session")
def streamed_day(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Streamed]:
    s = stream(dataset, tmp_path_factory.mktemp("stream-day"), DAY)
    yield s
    s.warehouse.close()


@pytest.fixture(scope="session")
def spark_week(
    spark: Any, dataset: Path, streamed_week: Streamed, tmp_path_factory: pytest.TempPathFactory
) -> run.ReprocessResult:
    """The job over the streaming run's embedded log, 7-day lookback."""
    base = tmp_path_factory.mktemp("spark-week")
    with dims_warehouse(base / "dims.duckdb", dataset) as wh:
        return run.run_job(
            spark,
            str(streamed_week.home / "log"),
            str(base / "out"),
            rules(WEEK),
            wh,
            input_format="log",
        )


@pytest.fixture(scope="session")
def spark_day(
    spark: Any, dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> run.ReprocessResult:
    """The job over the JSON-lines files (partitioned as replay does), 1-day lookback."""
    base = tmp_path_factory.mktemp("spark-day")
    with dims_warehouse(base / "dims.duckdb", dataset) as wh:
        return run.run_job(
            spark,
            str(dataset),
            str(base / "out"),
            rules(DAY),
            wh,
            input_format="jsonl",
            partitions=PARTITIONS,
        )


@pytest.fixture(scope="session")
def truth_week(dataset: Path) -> tuple[duckdb.DuckDBPyConnection, dict[str, int]]:
    con = duckdb.connect()
    return con, oracle.build(con, dataset, now=NOW, lookback=timedelta(seconds=WEEK))


@pytest.fixture(scope="session")
def truth_day(dataset: Path) -> tuple[duckdb.DuckDBPyConnection, dict[str, int]]:
    con = duckdb.connect()
    return con, oracle.build(con, dataset, now=NOW, lookback=timedelta(seconds=DAY))
