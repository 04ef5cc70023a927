"""The command line end to end: generate -> replay -> query/status, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adpulse.cli.main import app

#: One xdist worker runs this module: its module-scoped fixtures are built once, not
#: once on each worker.
pytestmark = pytest.mark.xdist_group("cli")

runner = CliRunner()


def _ok(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    _ok(
        "generate",
        "--out",
        str(root / "data"),
        "--events",
        "20000",
        "--start",
        "2023-09-01",
        "--days",
        "1",
        "--seed",
        "3",
    )
    _ok("replay", str(root / "data"), "--home", str(root / "home"), "--partitions", "3")
    return root


def test_replay_commits_every_line(home: Path) -> None:
    lines = sum(
        len((home / "data" / f"{s}.jsonl").read_bytes().splitlines())
        for s in ("impressions", "clicks", "conversions")
    )
    status = json.loads(_ok("status", "--home", str(home / "home"), "--format", "json"))
    streams = status["streams"]
    assert sum(s["received"] for s in streams) == lines
    # Nothing lost: every line received is a fact, a counted duplicate or a dead letter
    # (accepted is stored as received - rejected, so comparing those would prove nothing).
    from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

    with DuckDBWarehouse(home / "home" / "warehouse.duckdb", read_only=True) as wh:
        for s in streams:
            facts = wh.query(f"SELECT count(*) FROM fact_{s['stream']}").item()
            dead = wh.query(
                "SELECT count(*) FROM dead_letters WHERE stream = ?", [s["stream"]]
            ).item()
            assert facts + s["duplicates"] + dead == s["received"], s["stream"]
    assert sum(r["records"] for r in status["dead_letters"]) == sum(s["rejected"] for s in streams)


def test_query_json_matches_the_query_layer(home: Path) -> None:
    from adpulse.serving import queries
    from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

    out = json.loads(
        _ok(
            "query",
            "ctr",
            "--by",
            "campaign",
            "--platform",
            "Web",
            "--home",
            str(home / "home"),
            "--format",
            "json",
        )
    )
    with DuckDBWarehouse(home / "home" / "warehouse.duckdb", read_only=True) as wh:
        want = queries.ctr(wh, queries.Filters(platform="Web"), "campaign").to_dicts()
    assert out["filters"] == {"platform": "Web"}
    assert out["rows"] == json.loads(json.dumps(want, default=str))
    assert len(out["rows"]) > 5


#: (CLI arguments, the same query as an API path and parameters).
SAME_QUERIES: list[tuple[list[str], str, dict[str, str]]] = [
    (["summary"], "/summary", {}),
    (
        [
            "summary",
            "--platform",
            "Mobile",
            "--from",
            "2023-09-01 06:00",
            "--to",
            "2023-09-01 18:00",
        ],
        "/summary",
        {"platform": "Mobile", "from": "2023-09-01 06:00", "to": "2023-09-01 18:00"},
    ),
    (
        ["summary", "--gender", "Female", "--interest", "Travel"],
        "/summary",
        {"gender": "Female", "interest": "Travel"},
    ),
    (
        ["ctr", "--by", "campaign", "--location", "New York"],
        "/metrics/ctr",
        {"by": "campaign", "location": "New York"},
    ),
    (
        ["conversion-rate", "--by", "ad", "--from", "2023-09-01 10:00:30"],
        "/metrics/conversion-rate",
        {"by": "ad", "from": "2023-09-01 10:00:30"},
    ),
    (
        ["revenue-per-conversion", "--age-band", "25-34"],
        "/metrics/revenue-per-conversion",
        {"age_band": "25-34"},
    ),
    (["conversion-latency", "--by", "campaign"], "/metrics/conversion-latency", {"by": "campaign"}),
    (
        ["top-ads", "--rank-by", "conversion_rate", "--min-clicks", "5", "--platform", "Web"],
        "/top-ads",
        {"by": "conversion_rate", "min_clicks": "5", "platform": "Web"},
    ),
    (["top-ads", "--limit", "3"], "/top-ads", {"limit": "3"}),
    (
        ["trending", "--window", "120", "--min-clicks", "2"],
        "/trending",
        {"window": "120", "min_clicks": "2"},
    ),
]


def test_cli_json_equals_the_api_answer(home: Path) -> None:
    """``adpulse query --format json`` prints exactly what the HTTP API answers."""
    from fastapi.testclient import TestClient

    from adpulse.config import Settings
    from adpulse.serving.api import create_app
    from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

    settings = Settings(home=home / "home")
    api = []
    with (
        DuckDBWarehouse(home / "home" / "warehouse.duckdb", read_only=True) as wh,
        TestClient(create_app(wh, settings)) as client,
    ):
        for _, path, params in SAME_QUERIES:
            response = client.get("/api/v1" + path, params=params)
            assert response.status_code == 200, response.text
            api.append(response.json())
    for (args, path, _), answer in zip(SAME_QUERIES, api, strict=True):
        cli = json.loads(_ok("query", *args, "--home", str(home / "home"), "--format", "json"))
        assert cli == answer, (args, path)
    summary = api[0]["summary"]
    assert isinstance(summary["revenue"], float) and summary["revenue"] > 0  # money: a number
    assert api[3]["rows"] and api[7]["rows"] and api[9]["rows"]  # not equal by being empty
    assert api[4]["filters"] == {"start": "2023-09-01T10:01:00Z"}  # whole minutes, both


def test_filter_values_match_the_data_without_regard_to_case(home: Path) -> None:
    at = ["--home", str(home / "home"), "--format", "json"]
    lower = json.loads(
        _ok("query", "summary", "--platform", "mobile", "--location", "NEW YORK", *at)
    )
    exact = json.loads(
        _ok("query", "summary", "--platform", "Mobile", "--location", "New York", *at)
    )
    assert lower == exact and lower["filters"] == {"platform": "Mobile", "location": "New York"}
    assert lower["summary"]["impressions"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--platform", "Mobil"], "unknown --platform 'Mobil'; did you mean Mobile?"),
        (["--interest", "travl"], "unknown --interest 'travl'; did you mean Travel?"),
        (["--ad", "-1"], "unknown --ad -1; none of the 320 stored values is close"),
        (
            ["--from", "2023-13-01"],
            "--from: cannot read '2023-13-01'; use 'YYYY-MM-DD', 'YYYY-MM-DD HH:MM[:SS]'"
            " (UTC) or ISO-8601 with an offset",
        ),
    ],
)
def test_unknown_filter_values_name_close_matches(
    home: Path, args: list[str], message: str
) -> None:
    from adpulse.runtime import UserError

    result = runner.invoke(app, ["query", "summary", *args, "--home", str(home / "home")])
    assert isinstance(result.exception, UserError) and str(result.exception) == message


def test_an_unknown_value_exits_2_with_one_line(home: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "adpulse", "query", "ctr", "--location", "new yrok"]
        + ["--home", str(home / "home")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "error: unknown --location 'new yrok'; did you mean New York?\n"


def test_unknown_options_are_refused(home: Path) -> None:
    result = runner.invoke(
        app, ["query", "summary", "--platfrom", "Web", "--home", str(home / "home")]
    )
    assert result.exit_code == 2 and "No such option: --platfrom" in result.output


def test_csv_output_has_a_header(home: Path) -> None:
    out = _ok("query", "summary", "--home", str(home / "home"), "--format", "csv")
    assert out.splitlines()[0].startswith("impressions,clicks,conversions")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "nope"], "unknown metric"),
        (["query", "ctr", "--age-band", "99"], "age_band must be one of"),
        (["query", "ctr", "--from", "yesterday"], "--from: cannot read"),
        (["query", "top-ads", "--rank-by", "clicks"], "--rank-by must be"),
    ],
)
def test_errors_say_what_to_do(home: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, [*args, "--home", str(home / "home")])
    assert result.exit_code != 0
    assert message in str(result.exception) or message in result.output


def test_help_explains_every_command() -> None:
    out = _ok("--help")
    for command in (
        "generate",
        "replay",
        "process",
        "dims",
        "query",
        "status",
        "demo",
        "bench",
        "bench-api",
    ):
        assert command in out


@pytest.mark.parametrize(
    "args",
    [
        ["query", "ctr"],  # no warehouse yet
        ["query", "ctr", "--from", "yesterday"],
        ["replay", "/nonexistent-dir"],
        ["dims", "load", "/nonexistent.csv"],
    ],
)
def test_the_user_sees_a_message_not_a_traceback(tmp_path: Path, args: list[str]) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "adpulse", *args, "--home", str(tmp_path / "home")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "error:" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    if args[0] == "query":
        assert not (tmp_path / "home").exists()  # read-only commands create nothing


def test_bench_json_is_only_json_on_stdout(tmp_path: Path) -> None:
    """``--format json`` output can be piped: the progress and the table go to stderr."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "adpulse", "bench", "--events", "10000", "--partitions", "2"]
        + ["--workdir", str(tmp_path / "bench"), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(done.stdout)
    assert int(result["committed"]["received"]) == result["events"]
