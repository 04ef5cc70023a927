"""Whether the tests of ``adpulse reprocess`` can run here: PySpark (the ``spark``
extra) and a Java runtime. Test modules set ``pytestmark = requires_spark``."""

from __future__ import annotations

import importlib.util
import shutil
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from builders import load_dimensions, open_pipeline

from adpulse.config import Settings
from adpulse.reprocess import job
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.transport.embedded import EmbeddedTransport


def _missing() -> str | None:
    if importlib.util.find_spec("pyspark") is None:
        return "adpulse reprocess needs the spark extra (pyspark): pip install -e '.[dev,spark]'"
    if shutil.which("java") is None:
        return "adpulse reprocess needs a Java 17+ runtime on the PATH"
    return None


#: Skips a test (saying why) where Spark cannot run.
requires_spark = [
    pytest.mark.skipif(_missing() is not None, reason=_missing() or ""),
    # one Spark session per test process: keep these tests on one xdist worker
    pytest.mark.xdist_group("spark"),
]


START = datetime(2023, 9, 8)
END = datetime(2023, 9, 10)
NOW = datetime(2026, 1, 1)
PARTITIONS = 3
WEEK = 7 * 86_400
DAY = 86_400
#: Clicks followed by a conversion 35 hours later: attributed with a 7-day lookback,
#: not with a 1-day one (the generator's own latencies are far shorter).
LONG_LATENCY = timedelta(hours=35)


@dataclass
class Streamed:
    """A streaming run: its home (``home / "log"`` is its embedded log) and warehouse."""

    home: Path
    warehouse: DuckDBWarehouse


def stream(data: Path, home: Path, lookback: int) -> Streamed:
    transport = EmbeddedTransport(home / "log", PARTITIONS)
    warehouse = DuckDBWarehouse(home / "warehouse.duckdb")
    pipeline = open_pipeline(
        data, home, transport, warehouse, NOW, attribution_lookback_seconds=lookback
    )
    pipeline.replay(data)
    processor = pipeline.processor()
    processor.run(threading.Event(), until_caught_up=True)
    processor.close()
    transport.close()
    return Streamed(home, warehouse)


def rules(lookback: int) -> job.Rules:
    return job.Rules.from_settings(
        Settings(attribution_lookback_seconds=lookback, partitions=PARTITIONS), NOW
    )


def dims_warehouse(path: Path, data: Path) -> DuckDBWarehouse:
    """A new DuckDB warehouse holding the data set's dimensions."""
    wh = DuckDBWarehouse(path)
    wh.create_schema()
    load_dimensions(wh, data)
    return wh


FACT_COLUMNS = {
    "fact_impressions": "event_id, event_time, ad_id, user_id, platform, location, campaign,"
    " product, gender, age, age_band, interests, is_late, partition",
    "fact_clicks": "event_id, event_time, ad_id, user_id, platform, location, campaign,"
    " product, gender, age, age_band, interests, is_late, partition",
    "fact_conversions": "event_id, event_time, ad_id, user_id, product_id, revenue,"
    " click_event_id, click_time, round(latency_seconds, 6) AS latency, platform, location,"
    " campaign, product, gender, age, age_band, interests, is_late, partition",
}


def facts_sql(table: str) -> str:
    return f"SELECT {FACT_COLUMNS[table]} FROM {table} ORDER BY event_id"
