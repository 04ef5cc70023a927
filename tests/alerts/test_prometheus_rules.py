"""The Prometheus rules file: the built-in rules with the settings' bounds, every built-in
rule of docs/alerts.md either expressed or named as not expressible, written by the
Grafana export and by ``adpulse alerts prometheus-rules``."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.testing import CliRunner

from adpulse.alerts.prometheus import NOT_EXPRESSED, duration, prometheus_rules
from adpulse.cli.main import app
from adpulse.config import Settings
from adpulse.operations import grafana

DOCS = Path(__file__).resolve().parents[2] / "docs" / "alerts.md"


def _rules(text: str) -> dict[str, dict[str, object]]:
    (group,) = yaml.safe_load(text)["groups"]
    assert group["name"] == "adpulse"
    return {rule["alert"]: rule for rule in group["rules"]}


def test_rules_carry_the_bounds_of_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        alert_processor_silent_seconds=90,
        alert_dead_letter_share=0.1,
        alert_dead_letter_window_seconds=120,
        alert_dead_letter_min_records=50,
        alert_stream_silent_seconds=30.5,
        alert_silent_streams=["clicks"],
        alert_lag_bytes=1000,
        alert_lag_records=500,
        alert_lag_age_seconds=30,
        alert_lag_seconds=15,
        alert_crash_restarts=4,
        alert_crash_window_seconds=90,
    )
    rules = _rules(grafana.rules_text(settings))
    summaries = {name: str(rule.pop("annotations")) for name, rule in rules.items()}
    assert rules == {
        "processor_stopped": {
            "alert": "processor_stopped",
            "expr": "time() - max_over_time(adpulse_last_commit_timestamp_seconds[3600s]) > 90"
            " and max_over_time(adpulse_last_commit_timestamp_seconds[3600s]) > 0",
            "labels": {"source": "adpulse"},
        },
        "dead_letters": {
            "alert": "dead_letters",
            "expr": "sum(increase(adpulse_events_rejected_total[120s]))"
            " / sum(increase(adpulse_events_received_total[120s])) > 0.1"
            " and sum(increase(adpulse_events_received_total[120s])) >= 50",
            "labels": {"source": "adpulse"},
        },
        "stream_silent": {
            "alert": "stream_silent",
            "expr": 'sum by (stream) (increase(adpulse_events_received_total{stream=~"clicks"}'
            "[30500ms])) == 0",
            "labels": {"source": "adpulse"},
        },
        "lag": {
            "alert": "lag",
            "expr": "adpulse_lag_bytes > 1000 or adpulse_lag_records > 500"
            " or adpulse_lag_seconds > 30",
            "for": "15s",
            "labels": {"source": "adpulse"},
        },
        "commits_failing": {
            "alert": "commits_failing",
            "expr": 'adpulse_server_failing{setting="warehouse_url", operation="commit"} > 0',
            "labels": {"source": "adpulse"},
        },
        "server_unavailable": {
            "alert": "server_unavailable",
            "expr": 'max by (instance, setting) (adpulse_server_failing{operation="other"}) > 0',
            "labels": {"source": "adpulse"},
        },
        "crash_loop": {
            "alert": "crash_loop",
            "expr": "max_over_time(adpulse_worker_restarts_total[90s])"
            " - min_over_time(adpulse_worker_restarts_total[90s]) >= 4",
            "labels": {"source": "adpulse"},
        },
        "store_rebuild": {
            "alert": "store_rebuild",
            "expr": 'increase(adpulse_store_rebuilds_total{kind="repair"}[300s]) > 0',
            "labels": {"source": "adpulse"},
        },
    }
    assert "(alert_processor_silent_seconds = 90)" in summaries["processor_stopped"]
    assert "(alert_dead_letter_share = 0.1)" in summaries["dead_letters"]
    assert "no {{ $labels.stream }} events for 30.5 s" in summaries["stream_silent"]
    assert (
        "alert_lag_bytes = 1000, alert_lag_records = 500, alert_lag_age_seconds = 30 for 15 s"
        in summaries["lag"]
    )
    assert "(alert_crash_restarts = 4)" in summaries["crash_loop"]


def test_default_silence_bound_splits_into_window_and_for(tmp_path: Path) -> None:
    (silent,) = [r for r in prometheus_rules(Settings(home=tmp_path)) if r.name == "stream_silent"]
    assert "[60s]" in silent.expr and 'stream=~"clicks|impressions"' in silent.expr
    assert silent.for_seconds == 540  # 60 s without events, held 540 s: the 600 s bound
    assert (duration(300), duration(0.25), duration(1.5)) == ("300s", "250ms", "1500ms")


def test_rules_turned_off_by_the_settings_are_left_out_and_said_so(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        alert_processor_silent_seconds=0,
        alert_stream_silent_seconds=0,
        alert_lag_bytes=0,
        alert_lag_records=0,
        alert_lag_age_seconds=0,
        alert_crash_restarts=0,
    )
    text = grafana.rules_text(settings)
    assert list(_rules(text)) == [
        "dead_letters",
        "commits_failing",
        "server_unavailable",
        "store_rebuild",
    ]
    assert (
        "# Turned off by the settings (bound 0): processor_stopped, stream_silent, lag,"
        " crash_loop\n" in text
    )
    # one lag bound on is enough for the rule, with that bound only
    lag = _rules(grafana.rules_text(settings.model_copy(update={"alert_lag_records": 7})))["lag"]
    assert lag["expr"] == "adpulse_lag_records > 7"


def test_every_built_in_rule_is_expressed_or_named_as_missing(tmp_path: Path) -> None:
    table = DOCS.read_text().split("\n## Rules\n")[1].split("\n## ")[0]
    documented = set(re.findall(r"^\| `([a-z_:A-Z]+)` \|", table, re.MULTILINE))
    expressed = {r.name for r in prometheus_rules(Settings(home=tmp_path))}
    labelled = {
        "stream_silent": "stream_silent:STREAM",
        "server_unavailable": ("server_unavailable:SETTING"),
    }
    expressed = {labelled.get(n, n) for n in expressed}
    assert "dead_letters" in documented and len(documented) == 8
    assert expressed == documented  # every built-in rule has its Prometheus twin
    assert NOT_EXPRESSED == {}
    assert "no metric to express" not in grafana.rules_text(Settings(home=tmp_path))


def test_the_command_and_the_export_write_the_same_file(tmp_path: Path) -> None:
    pg = "postgresql://grafana@db.example:5432/ads"
    out = tmp_path / "rules.yml"
    env = {"ADPULSE_WAREHOUSE_URL": pg, "ADPULSE_ALERT_LAG_BYTES": "4096"}
    result = CliRunner().invoke(
        app,
        ["alerts", "prometheus-rules", "--home", str(tmp_path), "--out", str(out)],
        env=env,
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert _rules(out.read_text())["lag"]["expr"] == (
        "adpulse_lag_bytes > 4096 or adpulse_lag_records > 1000000 or adpulse_lag_seconds > 300"
    )
    settings = Settings(home=tmp_path, warehouse_url=pg, alert_lag_bytes=4096)
    written = grafana.export(tmp_path / "out", settings, prometheus_url="http://p:9090")
    assert written[-1] == (tmp_path / "out").resolve() / grafana.RULES_FILE
    assert written[-1].read_text() == out.read_text()
    stdout = CliRunner().invoke(
        app, ["alerts", "prometheus-rules", "--home", str(tmp_path)], env=env
    )
    assert stdout.output == out.read_text()
