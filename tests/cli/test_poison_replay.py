"""The poison records of issue 8 end to end through the command line: replayed from files
among valid records, they become dead letters, and `status` and `query` still answer
(a committed year-0 click made `adpulse status` crash)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
from typer.testing import CliRunner

from adpulse.cli.main import app

runner = CliRunner()


def _ok(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_poison_records_replayed_from_files_are_dead_letters(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    base = {"ad_id": 1001, "user_id": "U1", "platform": "Web", "location": "Boston"}
    clicks = [
        {**base, "event_id": "y0", "click_timestamp": "0000-01-01 00:00:00"},
        {**base, "event_id": "y0-offset", "click_timestamp": "0001-01-01T00:00:00+05:00"},
        {**base, "event_id": "nul", "click_timestamp": "2023-09-09 10:00:00", "location": "\x00"},
        {**base, "event_id": "ok-1", "click_timestamp": "2023-09-09 10:00:00"},
        {**base, "event_id": "ok-2", "click_timestamp": "2023-09-09 10:01:00"},
    ]
    conversion = {
        "ad_id": 1001,
        "user_id": "U1",
        "conversion_timestamp": "2023-09-09 10:05:00",
        "product_id": "P1",
    }
    conversions = [
        {**conversion, "event_id": "big-1", "revenue": 60000000000000},
        {**conversion, "event_id": "big-2", "revenue": 60000000000000},
        {**conversion, "event_id": "ok", "revenue": 25.5},
    ]
    for name, records in (("clicks", clicks), ("conversions", conversions)):
        (data / f"{name}.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in records) + b"\n")
    home = str(tmp_path / "home")
    _ok("replay", str(data), "--home", home, "--partitions", "2")

    status = json.loads(_ok("status", "--home", home, "--format", "json"))
    received = {s["stream"]: (s["received"], s["rejected"]) for s in status["streams"]}
    assert received == {"impressions": (0, 0), "clicks": (5, 3), "conversions": (3, 2)}
    assert sorted((d["stream"], d["reason"], d["records"]) for d in status["dead_letters"]) == [
        ("clicks", "event_time_out_of_range", 2),
        ("clicks", "invalid_character", 1),
        ("conversions", "revenue_out_of_range", 2),
    ]
    summary = json.loads(_ok("query", "summary", "--home", home, "--format", "json"))
    row = summary["summary"]
    assert (row["clicks"], row["conversions"], row["revenue"]) == (2, 1, 25.5)
