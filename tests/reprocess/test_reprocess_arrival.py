"""Lateness needs arrival order: Parquet input with an ``arrival`` column flags late
events as the stream does (and late clicks attribute nothing); without it no event is
late (docs/reprocess.md, "Lateness")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from sparktest import requires_spark, rules

from adpulse.reprocess import run
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

pytestmark = requires_spark


def _click(i: int, at: str) -> bytes:
    record = {
        "event_id": f"k{i}",
        "ad_id": 7,
        "user_id": "U1",
        "click_timestamp": f"2024-05-01 {at}",
        "platform": "Web",
        "location": "Berlin",
    }
    return orjson.dumps(record)


RECORDS = [
    ("clicks", _click(0, "10:00:00")),
    ("clicks", _click(1, "10:30:00")),
    ("clicks", _click(2, "10:05:00")),  # 25 min behind the watermark: late (10 min allowed)
    (
        "conversions",
        orjson.dumps(
            {
                "event_id": "v0",
                "ad_id": 7,
                "user_id": "U1",
                "conversion_timestamp": "2024-05-01 10:06:00",
                "product_id": "P",
                "revenue": 5,
            }
        ),
    ),
    ("clicks", b"{not json"),
]


@pytest.mark.parametrize("ordered", [True, False], ids=["arrival", "no-arrival"])
def test_lateness_follows_arrival_order(spark: Any, tmp_path: Path, ordered: bool) -> None:
    frame = pl.DataFrame(
        {
            "stream": [s for s, _ in RECORDS],
            "payload": [p for _, p in RECORDS],
            "partition": [0] * len(RECORDS),
        }
    )
    if ordered:
        frame = frame.with_columns(arrival=pl.int_range(pl.len()))
    frame.write_parquet(tmp_path / "raw.parquet")
    with DuckDBWarehouse(tmp_path / "w.duckdb") as wh:
        wh.create_schema()
        result = run.run_job(
            spark,
            str(tmp_path / "raw.parquet"),
            str(tmp_path / "out"),
            rules(7 * 86_400),
            wh,
            input_format="parquet",
        )
    clicks = pl.read_parquet(f"{result.out_dir}/fact_clicks/*.parquet").sort("event_id")
    conversion = pl.read_parquet(f"{result.out_dir}/fact_conversions/*.parquet").row(0, named=True)
    assert clicks["is_late"].to_list() == ([False, False, True] if ordered else [False] * 3)
    # the late click attributes nothing: the conversion goes to the 10:00 click
    assert conversion["click_event_id"] == ("k0" if ordered else "k2")
    assert conversion["is_late"] is False
    dead = pl.read_parquet(f"{result.out_dir}/dead_letters/*.parquet")
    assert dead.select("stream", "reason").rows() == [("clicks", "invalid_json")]
    assert result.streams["clicks"]["late"] == (1 if ordered else 0)
