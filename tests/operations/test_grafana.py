"""`adpulse grafana export`: the provisioning files, and every panel's SQL run against a
PostgreSQL warehouse of known contents with Grafana's variables and macros substituted,
giving the same numbers as the query layer (and the HTTP API) for the same range and
filters.

No Grafana binary is installable here, so the substitution Grafana does before a panel's
SQL reaches PostgreSQL is reproduced by :func:`interpolate`, following Grafana's code:

1. frontend, template variables (``public/app/features/templating/template_srv.ts``):
   ``${name:sqlstring}`` becomes the selected values, each in single quotes with ``'``
   doubled (and ``"`` written ``\\"``), joined by commas (``sqlStringFormatter``); when
   "All" is selected and the variable has a custom all value, that value is inserted as
   it is, unformatted ("skip formatting of custom all values");
2. backend, macros (``pkg/tsdb/grafana-postgresql-datasource/macros.go``): any
   ``$name(args)``; ``$__timeFrom()`` / ``$__timeTo()`` become the range's ends in UTC,
   ``'<RFC 3339 with nanoseconds, trailing zeros dropped>'`` (Go's ``time.RFC3339Nano``),
   and ``$__timeFilter(col)`` becomes ``col BETWEEN 'from' AND 'to'``; any other macro
   fails here, so a panel cannot use one this test does not know.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest
import yaml
from builders import generated_dataset, load_dimensions
from fastapi.testclient import TestClient
from pgtest import PG_URL, postgres_warehouse
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "serving"))  # the query-layer data set
from query_dataset import M0, build, minute  # noqa: E402

from adpulse.cli.main import app  # noqa: E402
from adpulse.cli.runtime import UserError  # noqa: E402
from adpulse.config import Settings  # noqa: E402
from adpulse.operations import grafana  # noqa: E402
from adpulse.processor.pipeline import Processor  # noqa: E402
from adpulse.serving import queries  # noqa: E402
from adpulse.serving.api import create_app, plain  # noqa: E402
from adpulse.serving.queries import Filters  # noqa: E402
from adpulse.sources.producer import replay_directory  # noqa: E402
from adpulse.storage.warehouse.postgres import PostgresWarehouse  # noqa: E402
from adpulse.transport.memory import InMemoryTransport  # noqa: E402

#: One xdist worker runs this module: its module-scoped fixtures are built once, not
#: once on each worker.
pytestmark = pytest.mark.xdist_group("grafana")

ALL = "$__all"  # what Grafana stores as the value of "All"

# --- Grafana's substitution -------------------------------------------------------------------
_VARIABLE = re.compile(r"\$\{(\w+):sqlstring\}")
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")  # macros.go's sExpr


def rfc3339nano(value: datetime) -> str:
    """Go's ``t.UTC().Format(time.RFC3339Nano)`` for a naive UTC datetime."""
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += "." + f"{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def sqlstring(values: str | Sequence[str]) -> str:
    """Grafana's ``sqlStringFormatter``."""
    items = [values] if isinstance(values, str) else list(values)
    return ",".join("'" + v.replace("'", "''").replace('"', '\\"') + "'" for v in items)


def interpolate(
    sql: str,
    dashboard: Mapping[str, Any],
    selected: Mapping[str, str | Sequence[str]],
    start: datetime,
    end: datetime,
) -> str:
    """``sql`` as Grafana sends it to PostgreSQL (see the module docstring)."""
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}

    def variable(match: re.Match[str]) -> str:
        name = match.group(1)
        value = selected[name] if name in selected else variables[name]["current"]["value"]
        is_all = value == ALL or (not isinstance(value, str) and list(value) == [ALL])
        if is_all and variables[name].get("allValue"):
            return str(variables[name]["allValue"])
        assert not is_all, f"${name}: All without a custom all value is not used"
        return sqlstring(value)

    def macro(match: re.Match[str]) -> str:
        name, args = match.group(1), [a.strip() for a in match.group(2).split(",")]
        if name == "__timeFrom":
            return f"'{rfc3339nano(start)}'"
        if name == "__timeTo":
            return f"'{rfc3339nano(end)}'"
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{rfc3339nano(start)}' AND '{rfc3339nano(end)}'"
        raise AssertionError(f"macro ${name} is not supported by this test")

    text = _MACRO.sub(macro, _VARIABLE.sub(variable, sql))
    assert "$" not in text, f"unsubstituted variable or macro in: {text}"
    return text


def test_interpolate_follows_grafana() -> None:
    board = {"templating": {"list": [{"name": "c", "allValue": "'__all__'", "current": {}}]}}
    start, end = datetime(2023, 9, 9, 10, 0), datetime(2023, 9, 9, 10, 5, 0, 250_000)
    sql = "$__timeFilter(minute) AND x IN (${c:sqlstring}) AND $__timeTo()"
    assert interpolate(sql, board, {"c": ["a", "O'Brien"]}, start, end) == (
        "minute BETWEEN '2023-09-09T10:00:00Z' AND '2023-09-09T10:05:00.25Z'"
        " AND x IN ('a','O''Brien') AND '2023-09-09T10:05:00.25Z'"
    )
    assert interpolate("${c:sqlstring}", board, {"c": [ALL]}, start, end) == "'__all__'"
    assert interpolate("${c:sqlstring}", board, {"c": "x"}, start, end) == "'x'"
    with pytest.raises(AssertionError):
        interpolate("$__timeGroup(minute, 1m)", board, {}, start, end)


# --- fixtures -----------------------------------------------------------------------------
@dataclass
class Exported:
    warehouse: PostgresWarehouse
    directory: Path
    dashboard: dict[str, Any]
    panels: dict[str, dict[str, Any]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    directory = tmp_path_factory.mktemp("grafana")
    with postgres_warehouse() as warehouse:
        build(warehouse)
        settings = Settings(home=directory / "home", warehouse_url=PG_URL)
        grafana.export(directory, settings, schema=warehouse.schema)
        board = json.loads((directory / grafana.DASHBOARD_FILE).read_text())
        panels = {p["title"]: p for p in board["panels"]}
        yield Exported(warehouse, directory, board, panels)


def run(sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on a plain connection (no search_path, as Grafana connects)."""
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        return [tuple(row) for row in conn.execute(sql).fetchall()]


# --- what each panel must equal -----------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """A dashboard state: range, variable selections; and the same as query-layer filters."""

    name: str
    start: datetime
    end: datetime
    selected: dict[str, str | list[str]]
    window: int = 2
    min_clicks: int = 1

    @property
    def filters(self) -> Filters:
        """The query layer filters one value at a time: single selections only."""
        assert all(len(v) == 1 for v in self.selected.values()), "no query-layer twin"
        single = {
            k: v[0]
            for k, v in self.selected.items()
            if k in grafana.FILTER_VARIABLES and v != [ALL]
        }
        return Filters(start=self.start, end=self.end, **single)

    @property
    def variables(self) -> dict[str, str | list[str]]:
        return {
            **{name: [ALL] for name in grafana.FILTER_VARIABLES},
            **self.selected,
            "trending_window": str(self.window),
            "min_clicks": str(self.min_clicks),
        }


def rows(frame: pl.DataFrame, *columns: str) -> list[tuple[Any, ...]]:
    return frame.select(columns).rows() if columns else frame.rows()


_HEADLINE_COLUMNS = {title: column for title, column, _ in grafana.HEADLINES}
_PER_MINUTE = {
    "Events per minute": ("impressions", "clicks", "conversions"),
    "Revenue per minute": ("revenue",),
    "Rates per minute": ("ctr", "conversion_rate"),
    "Conversion latency per minute": ("latency_p50", "latency_p90"),
}
_COUNTS = ("impressions", "clicks", "conversions", "attributed_conversions", "revenue")
_STREAM_COUNTS = ("received", "accepted", "rejected", "duplicates", "late")
_STREAM_COUNTS += ("unknown_ad", "unknown_user")


def query_layer(title: str, wh: PostgresWarehouse, s: Scenario) -> list[tuple[Any, ...]]:
    """What the panel ``title`` shows in scenario ``s``, from the query layer."""
    f = s.filters
    if title in _HEADLINE_COLUMNS:
        return rows(queries.summary(wh, f), _HEADLINE_COLUMNS[title])
    if title in _PER_MINUTE:
        return rows(queries.bucketed_timeseries(wh, f, "minute"), "bucket", *_PER_MINUTE[title])
    if title == "Trending campaigns":
        return rows(queries.trending(wh, f, s.window, s.min_clicks, grafana.RANKING_LIMIT))
    if title == "Top ads by revenue":
        return rows(queries.top_ads(wh, f, "revenue", s.min_clicks, grafana.RANKING_LIMIT))
    if title == "Top ads by conversion rate":
        frame = queries.top_ads(wh, f, "conversion_rate", s.min_clicks, grafana.RANKING_LIMIT)
        return rows(frame)
    if title == "Campaigns":
        frame = queries.counts(wh, f, "campaign")
        for metric in (queries.ctr, queries.conversion_rate, queries.revenue_per_conversion):
            rate = metric(wh, f, "campaign")
            frame = frame.join(
                rate.select("campaign", rate.columns[-1]),
                on="campaign",
                how="left",
                nulls_equal=True,
                maintain_order="left",
            )
        return rows(frame)
    if title in ("By platform", "By location"):
        dimension = "platform" if title == "By platform" else "location"
        return rows(queries.breakdown(wh, f, dimension))
    status = queries.pipeline_status(wh)
    if title == "Records per stream":
        return rows(status["streams"], "stream", *_STREAM_COUNTS, "last_committed_at")
    if title == "Last commit":
        return [(status["last_commit"],)]
    if title == "Dead letters by reason":
        return rows(status["dead_letters"])
    if title == "Watermarks":
        return rows(status["watermarks"])
    if title == "Dead letters per minute":
        # no query-layer twin: the data set's three dead letters all arrived at M0
        if not s.start <= M0 < s.end:
            return []
        return [(M0, "conversions", 2), (M0, "impressions", 1)]
    raise AssertionError(f"no expectation for panel {title!r}: add one")


SCENARIOS = [
    Scenario("all", minute(0), minute(5), {}, window=2),
    Scenario("whole-hour", M0 - timedelta(minutes=30), M0 + timedelta(minutes=30), {}, 15, 0),
    Scenario("campaign", minute(0), minute(5), {"campaign": ["Back-to-School"]}),
    Scenario("platform", minute(0), minute(5), {"platform": ["Web"]}, window=1, min_clicks=0),
    Scenario("location", minute(0), minute(5), {"location": ["Los Angeles"]}),
    Scenario(
        "campaign+platform",
        minute(0),
        minute(5),
        {"campaign": ["Summer Sale"], "platform": ["Mobile"]},
    ),
    Scenario("narrow range", minute(1), minute(3), {}, window=1, min_clicks=0),
    # not minute-aligned: buckets 10:01..10:03 by minute, latency by event time
    Scenario(
        "unaligned range", minute(0) + timedelta(seconds=30), minute(3) + timedelta(seconds=1), {}
    ),
    Scenario("no data", minute(10), minute(20), {}),
    # quotes are escaped by sqlstring: matches nothing, breaks nothing
    Scenario("quoted value", minute(0), minute(5), {"campaign": ['O\'Brien "Deals"']}),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_every_panel_equals_the_query_layer(exported: Exported, scenario: Scenario) -> None:
    checked = 0
    for title, panel in exported.panels.items():
        (target,) = panel["targets"]
        sql = interpolate(
            target["rawSql"], exported.dashboard, scenario.variables, scenario.start, scenario.end
        )
        assert run(sql) == query_layer(title, exported.warehouse, scenario), title
        checked += 1
    assert checked == len(exported.dashboard["panels"]) == 25


def test_the_data_set_is_not_trivial(exported: Exported) -> None:
    """A few absolute numbers, so the comparisons above are not between two empty sets."""
    board, all_data = exported.dashboard, SCENARIOS[0]

    def value(title: str) -> Any:
        sql = exported.panels[title]["targets"][0]["rawSql"]
        return run(interpolate(sql, board, all_data.variables, all_data.start, all_data.end))

    assert value("Impressions") == [(230,)]
    assert value("Clicks") == [(24,)]
    assert value("Conversions") == [(7,)]
    assert value("Revenue") == [(Decimal("210.7500"),)]
    assert value("Latency p50") == [(400.0,)]
    trending = value("Trending campaigns")
    assert [r[0] for r in trending] == []  # nothing with clicks in both 2-minute windows
    by_revenue = value("Top ads by revenue")
    assert [(r[0], r[6]) for r in by_revenue] == [
        (1001, Decimal("130.5000")),
        (1002, Decimal("75.2500")),
        (9999, Decimal("5.0000")),
        (1003, Decimal("0.0000")),
    ]
    # the minute bucket starting at the range's end is outside it (no $__timeFilter BETWEEN)
    half = Scenario("to 10:02", minute(0), minute(2), {})
    sql = exported.panels["Events per minute"]["targets"][0]["rawSql"]
    buckets = run(interpolate(sql, board, half.variables, half.start, half.end))
    assert [b[0] for b in buckets] == [minute(0), minute(1)]


def test_trending_windows_end_at_the_range_end(exported: Exported) -> None:
    board = exported.dashboard
    s = Scenario("trending", minute(0), minute(2), {}, window=1, min_clicks=1)
    sql = exported.panels["Trending campaigns"]["targets"][0]["rawSql"]
    got = run(interpolate(sql, board, s.variables, s.start, s.end))
    # 1001: 10 clicks / 2 attributed at 10:00 -> 5 / 1 at 10:01
    assert got == [("Back-to-School", 10, 2, 0.2, 5, 1, 0.2, 0.0)]
    assert got == query_layer("Trending campaigns", exported.warehouse, s)


def _sum_rows(parts: Sequence[list[tuple[Any, ...]]], keys: int) -> list[tuple[Any, ...]]:
    """Rows of several single-value results added up per key (first ``keys`` columns)."""
    totals: dict[tuple[Any, ...], list[Any]] = {}
    for part in parts:
        for row in part:
            key, values = row[:keys], row[keys:]
            if key in totals:
                totals[key] = [a + b for a, b in zip(totals[key], values, strict=True)]
            else:
                totals[key] = list(values)
    return sorted((*k, *v) for k, v in totals.items())


def test_multi_value_selection_adds_up_the_single_values(exported: Exported) -> None:
    """Two campaigns x two platforms: additive panels equal the sum of the four
    single-value query-layer results (the query layer filters one value at a time)."""
    campaigns, platforms = ["Back-to-School", "Summer Sale"], ["Web", "Mobile"]
    multi = Scenario("multi", minute(0), minute(5), {"campaign": campaigns, "platform": platforms})
    singles = [
        Scenario("one", minute(0), minute(5), {"campaign": [c], "platform": [p]})
        for c in campaigns
        for p in platforms
    ]
    board, wh = exported.dashboard, exported.warehouse

    def panel(title: str) -> list[tuple[Any, ...]]:
        sql = exported.panels[title]["targets"][0]["rawSql"]
        return run(interpolate(sql, board, multi.variables, multi.start, multi.end))

    for title in ("Impressions", "Clicks", "Conversions", "Revenue"):
        expected = _sum_rows([query_layer(title, wh, s) for s in singles], 0)
        assert panel(title) == expected, title
    expected = _sum_rows([query_layer("Events per minute", wh, s) for s in singles], 1)
    assert panel("Events per minute") == expected
    assert panel("Events per minute") == [
        (minute(0), 140 + 0, 18, 2 + 3 - 1 + 1),
        (minute(1), 50, 5, 1),
    ]
    campaigns_rows = panel("Campaigns")
    counts = [r[: 1 + len(_COUNTS)] for r in campaigns_rows]
    expected = _sum_rows(
        [[r[: 1 + len(_COUNTS)] for r in query_layer("Campaigns", wh, s)] for s in singles], 1
    )
    assert counts == expected
    # rates are recomputed from the summed counts, not summed
    for row in campaigns_rows:
        impressions, clicks, conversions, attributed, revenue = row[1:6]
        assert row[6:] == (
            clicks / impressions,
            attributed / clicks,
            float(revenue) / conversions,
        )


def test_all_platforms_equal_no_platform_filter_for_latency(exported: Exported) -> None:
    """Every attributed conversion has its click's platform, so selecting every platform
    gives the unfiltered latency (percentiles do not add up, so this is how multi-value
    latency is checked)."""
    every = Scenario("every", minute(0), minute(5), {"platform": ["Mobile", "Tablet", "Web"]})
    for title in ("Latency mean", "Latency p50", "Latency p90", "Conversion latency per minute"):
        sql = exported.panels[title]["targets"][0]["rawSql"]
        got = run(interpolate(sql, exported.dashboard, every.variables, every.start, every.end))
        assert got == query_layer(title, exported.warehouse, SCENARIOS[0]), title


def test_headlines_equal_the_http_api(exported: Exported, tmp_path: Path) -> None:
    s = SCENARIOS[2]  # one campaign
    app_ = create_app(exported.warehouse, Settings(home=tmp_path), refresh_seconds=0.05)
    with TestClient(app_) as client:
        response = client.get(
            "/api/v1/summary",
            params={
                "campaign": "Back-to-School",
                "from": "2023-09-09 10:00",
                "to": "2023-09-09 10:05",
            },
        )
    assert response.status_code == 200
    body = response.json()["summary"]
    for title, column, _ in grafana.HEADLINES:
        sql = exported.panels[title]["targets"][0]["rawSql"]
        ((value,),) = run(interpolate(sql, exported.dashboard, s.variables, s.start, s.end))
        assert plain(value) == body[column], title
    assert body["clicks"] == 15 and body["impressions"] == 150


# --- the files ------------------------------------------------------------------------------
def test_provisioning_files_have_what_grafana_requires(exported: Exported) -> None:
    d = exported.directory
    datasources = yaml.safe_load((d / grafana.DATASOURCE_FILE).read_text())
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    conn = psycopg.conninfo.conninfo_to_dict(PG_URL)
    assert source == {
        "name": grafana.DATASOURCE_NAME,
        "uid": grafana.DATASOURCE_UID,
        "type": "grafana-postgresql-datasource",
        "access": "proxy",
        "url": f"{conn['host']}:{conn.get('port', 5432)}",
        "user": conn["user"],
        "isDefault": False,
        "editable": False,
        "jsonData": {
            "database": conn["dbname"],
            "sslmode": "disable",
            "postgresVersion": 1500,
            "timescaledb": False,
        },
        "secureJsonData": {"password": "$ADPULSE_WAREHOUSE_PASSWORD"},
    }
    providers = yaml.safe_load((d / grafana.PROVIDER_FILE).read_text())
    (provider,) = providers["providers"]
    assert providers["apiVersion"] == 1
    assert provider["type"] == "file"
    assert provider["options"]["path"] == str(d.resolve() / "dashboards")
    assert (Path(provider["options"]["path"]) / "adpulse.json").is_file()

    board = exported.dashboard
    assert board["uid"] == grafana.DASHBOARD_UID and board["title"]
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["refresh"] == "5s"
    assert board["time"] == {"from": "now-1h", "to": "now"}
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"campaign", "platform", "location", "trending_window", "min_clicks"}
    for name in grafana.FILTER_VARIABLES:
        v = variables[name]
        assert v["type"] == "query" and v["multi"] and v["includeAll"]
        assert v["allValue"] == "'__all__'"
        assert v["datasource"] == {"type": source["type"], "uid": source["uid"]}
        assert sorted(r[0] for r in run(v["query"])) == sorted(
            queries.dimension_values(exported.warehouse)[f"{name}s"]  # type: ignore[literal-required]
        )
    assert variables["min_clicks"]["current"]["value"] == "20"
    assert variables["trending_window"]["current"]["value"] == "15"

    ids, cells = set(), set()
    for panel in board["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        assert panel["type"] in ("stat", "timeseries", "table")
        assert panel["datasource"] == {"type": source["type"], "uid": source["uid"]}
        grid = panel["gridPos"]
        assert {k: type(v) for k, v in grid.items()} == {"h": int, "w": int, "x": int, "y": int}
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        (target,) = panel["targets"]
        assert target["datasource"] == panel["datasource"]
        assert target["refId"] == "A" and target["rawQuery"] is True
        assert target["format"] == ("time_series" if panel["type"] == "timeseries" else "table")
        assert "$__timeFilter" not in target["rawSql"]  # BETWEEN: inclusive end bucket


def test_no_clear_text_password(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        warehouse_url="postgresql://grafana:hunter2@db.example:6543/ads?sslmode=require"
        "&options=-csearch_path%3Dadpulse",
        warehouse_password="also-secret",  # type: ignore[arg-type]
    )
    written = grafana.export(tmp_path / "out", settings)
    text = "".join(path.read_text() for path in written)
    assert "hunter2" not in text and "also-secret" not in text
    (source,) = yaml.safe_load(written[0].read_text())["datasources"]
    assert source["url"] == "db.example:6543"
    assert source["user"] == "grafana"
    assert source["jsonData"]["database"] == "ads"
    assert source["jsonData"]["sslmode"] == "require"
    assert source["secureJsonData"] == {"password": "$ADPULSE_WAREHOUSE_PASSWORD"}
    board = json.loads(written[2].read_text())
    sql = board["panels"][0]["targets"][0]["rawSql"]
    assert 'FROM "adpulse".rollup_minute' in sql  # the URL's search_path schema


def grafana_provisioning_value(value: str, environ: Mapping[str, str]) -> str:
    """Grafana's ``interpolateValue`` (pkg/services/provisioning/values/values.go): split
    on ``$$``, expand ``$NAME`` / ``${NAME}`` in each part (Go's os.ExpandEnv: unset is
    empty), join with ``$``."""
    name = re.compile(r"\$\{(\w+)\}|\$(\w+)")
    parts = value.split("$$")
    return "$".join(name.sub(lambda m: environ.get(m.group(1) or m.group(2), ""), p) for p in parts)


def test_grafana_reads_the_values_back_and_the_password_from_its_environment(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path, warehouse_url="postgresql://us$er@h/db$HOME")
    (datasource, *_) = grafana.export(tmp_path / "out", settings)
    (source,) = yaml.safe_load(datasource.read_text())["datasources"]
    environ = {"ADPULSE_WAREHOUSE_PASSWORD": "pw", "er": "X", "HOME": "/root"}
    assert grafana_provisioning_value(source["user"], environ) == "us$er"
    assert grafana_provisioning_value(source["jsonData"]["database"], environ) == "db$HOME"
    password = source["secureJsonData"]["password"]
    assert grafana_provisioning_value(password, environ) == "pw"


def test_cli_export_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.setenv("ADPULSE_WAREHOUSE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    result = runner.invoke(app, ["grafana", "export", str(tmp_path / "g"), "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g" / "dashboards" / "adpulse.json").is_file()
    assert "ADPULSE_WAREHOUSE_PASSWORD" in result.output

    monkeypatch.setenv("ADPULSE_WAREHOUSE_URL", "")  # the DuckDB default
    result = runner.invoke(app, ["grafana", "export", str(tmp_path / "h"), "--home", str(tmp_path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, UserError)
    assert "PostgreSQL warehouse" in str(result.exception)
    assert "warehouse_url" in str(result.exception)
    assert not (tmp_path / "h").exists()


# --- a generated data set, through the real pipeline ---------------------------------------
GENERATED_START = datetime(2023, 9, 9, 8, 0)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    """Generated events (duplicates, out-of-order, late and malformed records included)
    replayed through the processor into PostgreSQL, then exported."""
    directory = tmp_path_factory.mktemp("generated")
    data = directory / "data"
    generated_dataset(
        data,
        30_000,
        GENERATED_START,
        GENERATED_START + timedelta(hours=2),
        seed=5,
        ads=40,
        campaigns=6,
        users=1_500,
        ctr_mean=0.2,
    )
    with postgres_warehouse() as warehouse:
        load_dimensions(warehouse, data)
        settings = Settings(home=directory / "home", partitions=2, warehouse_url=PG_URL)
        transport = InMemoryTransport(2)
        replay_directory(data, transport.producer(), 2)
        processor = Processor(settings, transport, warehouse)
        processor.run(threading.Event(), until_caught_up=True)
        processor.close()
        grafana.export(directory / "out", settings, schema=warehouse.schema)
        board = json.loads((directory / "out" / grafana.DASHBOARD_FILE).read_text())
        yield Exported(warehouse, directory, board, {p["title"]: p for p in board["panels"]})


def close_rows(got: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]) -> bool:
    """Equal rows, floats within 1e-9 relative (sums may add up in another order)."""
    if len(got) != len(expected):
        return False
    for a_row, b_row in zip(got, expected, strict=True):
        if len(a_row) != len(b_row):
            return False
        for a, b in zip(a_row, b_row, strict=True):
            if isinstance(a, float) and isinstance(b, float):
                if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
                    return False
            elif a != b:
                return False
    return True


def test_every_panel_on_pipeline_output(generated: Exported) -> None:
    wh = generated.warehouse
    last = queries.data_range(wh)["last_minute"]
    assert last is not None
    end = last + timedelta(minutes=1)
    values = queries.dimension_values(wh)
    scenarios = [
        Scenario("last hour", end - timedelta(hours=1), end, {}, window=15, min_clicks=20),
        Scenario(
            "everything", GENERATED_START - timedelta(days=1), end + timedelta(days=1), {}, 30, 50
        ),
        Scenario(
            "campaign", end - timedelta(hours=2), end, {"campaign": [values["campaigns"][0]]}, 15, 5
        ),
        Scenario(
            "platform+location",
            end - timedelta(minutes=90),
            end - timedelta(minutes=7, seconds=30),
            {"platform": [values["platforms"][0]], "location": [values["locations"][0]]},
            10,
            2,
        ),
    ]
    nonempty: dict[str, int] = {}
    for scenario in scenarios:
        for title, panel in generated.panels.items():
            sql = interpolate(
                panel["targets"][0]["rawSql"],
                generated.dashboard,
                scenario.variables,
                scenario.start,
                scenario.end,
            )
            got = run(sql)
            if title == "Dead letters per minute":
                continue  # arrival times are the wall clock here; checked on the fixed set
            assert close_rows(got, query_layer(title, wh, scenario)), (scenario.name, title)
            nonempty[title] = nonempty.get(title, 0) + bool(got)
    # the rankings and their guards were exercised with real content
    assert nonempty["Trending campaigns"] >= 2
    assert nonempty["Top ads by conversion rate"] >= 3
    assert nonempty["Conversion latency per minute"] == len(scenarios)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u:topsecret@h:notaport/db", "has port 'notaport'"),
        ("postgresql://u:topsecret@[::1/db", "is not a valid PostgreSQL URL"),
        ("postgresql://u:topsecret@h/db?bogus=1", 'invalid URI query parameter: "bogus"'),
        ("duckdb:///tmp/w.duckdb", "Grafana provisioning is for the PostgreSQL warehouse"),
    ],
)
def test_unusable_urls_say_why_without_the_password(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(grafana.GrafanaExportError) as caught:
        grafana.export(tmp_path / "out", Settings(home=tmp_path, warehouse_url=url))
    assert message in str(caught.value)
    assert "warehouse_url" in str(caught.value)
    assert "topsecret" not in str(caught.value)
    assert not (tmp_path / "out").exists()
