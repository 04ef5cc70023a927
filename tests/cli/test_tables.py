"""The CLI's tables at 80 columns: every number whole and formatted, every line fits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console

from adpulse.cli.tables import format_seconds, format_value, print_frame

#: One xdist worker runs this module: its module-scoped fixtures are built once, not
#: once on each worker.
pytestmark = pytest.mark.xdist_group("tables")


def _cli(*args: str) -> str:
    """The real CLI in a child process at 80 columns (rich reads COLUMNS when it starts)."""
    done = subprocess.run(
        [sys.executable, "-m", "adpulse", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _fits(out: str) -> None:
    assert "…" not in out, out
    assert max(len(line) for line in out.splitlines()) <= 80, out


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> str:
    """20,000 generated events of 2023-09-01 (seed 3): the same bytes, the same numbers."""
    root = tmp_path_factory.mktemp("tables")
    data, home = str(root / "data"), str(root / "home")
    _cli(
        "generate",
        "--out",
        data,
        "--events",
        "20000",
        "--start",
        "2023-09-01",
        "--days",
        "1",
        "--seed",
        "3",
    )
    _cli("replay", data, "--home", home, "--partitions", "3")
    return home


def test_summary_is_vertical_with_formatted_values(home: str) -> None:
    out = _cli("query", "summary", "--home", home)
    _fits(out)
    rows = [line.rsplit("  ", 1) for line in out.splitlines() if line.strip()]
    assert [(name.strip(), value.strip()) for name, value in rows] == [
        ("impressions", "19,461"),
        ("clicks", "448"),
        ("conversions", "45"),
        ("attributed conversions", "44"),
        ("revenue", "3,123.53"),
        ("ctr", "2.30 %"),
        ("conversion rate", "9.82 %"),
        ("revenue per conversion", "69.41"),
        ("latency mean", "1 h 29 min"),
        ("latency p50", "40 min 6 s"),
        ("latency p90", "3 h 26 min"),
    ]


def test_top_ads_keeps_every_number_and_name_whole(home: str) -> None:
    out = _cli("query", "top-ads", "--home", home)
    _fits(out)
    first = next(line for line in out.splitlines() if line.startswith("1232"))
    assert first.split() == ["1232", "Fall", "Fashion", "2,540", "63", "6", "6", "888.11"] + [
        "2.48",
        "%",
        "9.52",
        "%",
    ]


def test_trending_rates_and_change_in_points(home: str) -> None:
    out = _cli("query", "trending", "--window", "600", "--min-clicks", "5", "--home", home)
    _fits(out)
    assert "Music Fest           5       0    0.00 %       10        3   30.00 %   +30.00 pp" in out


def test_status_columns_are_told_apart(home: str) -> None:
    out = _cli("status", "--home", home)
    _fits(out)
    assert "unknown ad" in out and "unknown user" in out
    assert "received                      19,677                   452                    45" in out


def test_empty_trending_says_why(home: str) -> None:
    out = _cli("query", "trending", "--home", home)
    _fits(out)
    assert " ".join(out.split()) == (
        "no campaign trending: none has 20+ clicks in both 15-minute windows before"
        " 2023-09-02 00:00; try a longer --window or a lower --min-clicks"
    )


def test_json_and_csv_are_unchanged(home: str) -> None:
    assert _cli("query", "summary", "--home", home, "--format", "csv").splitlines()[1] == (
        "19461,448,45,44,3123.5300,0.023020399773906786,0.09821428571428571,"
        "69.41177777777779,5349.704545454545,2406.5,12399.600000000008"
    )


def test_help_fits_and_reads_in_paragraphs() -> None:
    out = _cli("--help")
    _fits(out)
    assert "restart resumes exactly. Over PostgreSQL, every running" in out
    assert "coming" not in _cli("query", "--help")


@pytest.mark.parametrize(
    ("column", "value", "shown"),
    [
        ("clicks", 1234, "1,234"),
        ("ad_id", 1234, "1234"),
        ("ctr", 0.04781, "4.78 %"),
        ("change", -0.0123, "-1.23 pp"),
        ("revenue", 62.5, "62.50"),
        ("latency_p50", 42.4, "42 s"),
        ("latency_p50", 725.0, "12 min 5 s"),
        ("latency_p90", 90061.0, "1 d 1 h"),
        ("revenue", None, "—"),
    ],
)
def test_format_value(column: str, value: object, shown: str) -> None:
    assert format_value(column, value) == shown


def test_format_seconds_below_ten_keeps_a_decimal() -> None:
    assert format_seconds(2.35) == "2.4 s"


def test_many_wide_rows_fall_back_without_cutting_numbers(tmp_path: Path) -> None:
    frame = pl.DataFrame({f"count_{i}": [10**9 + i] * 20 for i in range(8)})
    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    print_frame(frame, console)
    assert "1,000,000,007" in console.export_text()
