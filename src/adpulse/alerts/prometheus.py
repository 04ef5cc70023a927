"""The built-in alert rules (:mod:`.rules`) as Prometheus alerting rules.

For operators who alert from Prometheus (Alertmanager) rather than, or beside, the
process's own notifiers. The rules are built from the same settings as the built-in
ones (``alert_*``), so regenerating the file after a settings change is all it takes to
keep both equal; ``adpulse grafana export DIR --prometheus-url URL`` writes it
(``DIR/prometheus/adpulse-rules.yml``; docs/metrics-prometheus.md).

Where Prometheus can say more than the process: the built-in ``processor_stopped``
cannot fire for a process killed outright, this one can (the last commit time is read
over a window, so the series going away does not clear the condition). Every built-in
rule has a twin here (``server_unavailable:SETTING`` and ``stream_silent:STREAM`` carry
the setting and the stream as labels); should a rule ever lack a metric, it is listed
in :data:`NOT_EXPRESSED` and written as a comment into the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from adpulse.config import Settings

#: Prometheus' rule group name for adpulse's rules.
GROUP: Final = "adpulse"

#: Built-in rules without a metric to express them, and why (the file's comments).
NOT_EXPRESSED: Final[dict[str, str]] = {}
#: How long ``store_rebuild`` holds after a repair rebuild (the built-in one resolves at
#: its next check once the store is current; Prometheus sees only the counter's step).
STORE_REBUILD_WINDOW: Final = 300.0


@dataclass(frozen=True, slots=True)
class PromRule:
    """One alerting rule: ``name`` is the built-in rule's (``stream_silent`` carries the
    stream as a label, for ``stream_silent:STREAM``)."""

    name: str
    expr: str
    summary: str
    for_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_seconds:
            rule["for"] = duration(self.for_seconds)
        rule["labels"] = {"source": "adpulse"}
        rule["annotations"] = {"summary": self.summary}
        return rule


def duration(seconds: float) -> str:
    """``seconds`` as a Prometheus duration (whole seconds, else milliseconds: the format
    takes no fractions)."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def number(value: float) -> str:
    """A bound as PromQL and people read it: ``1000000``, ``0.5`` (never ``1e+06``)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def prometheus_rules(settings: Settings) -> list[PromRule]:
    """The built-in rules that have a metric, with the bounds of ``settings``; a rule the
    settings turn off (bound 0) is left out, as the built-in one never fires."""
    s = settings
    rules: list[PromRule] = []
    silent = s.alert_processor_silent_seconds
    if silent:
        # max_over_time: a killed process's last commit time stays visible for the window
        window = duration(max(3600.0, 2 * silent))
        last = f"max_over_time(adpulse_last_commit_timestamp_seconds[{window}])"
        rules.append(
            PromRule(
                "processor_stopped",
                f"time() - {last} > {silent:g} and {last} > 0",
                "{{ $labels.instance }} committed nothing for {{ $value | humanizeDuration }}"
                f" (alert_processor_silent_seconds = {silent:g}): it stopped, hangs or"
                " cannot commit; check its log and the warehouse",
            )
        )
    window = duration(s.alert_dead_letter_window_seconds)
    received = f"sum(increase(adpulse_events_received_total[{window}]))"
    rejected = f"sum(increase(adpulse_events_rejected_total[{window}]))"
    rules.append(
        PromRule(
            "dead_letters",
            f"{rejected} / {received} > {s.alert_dead_letter_share:g}"
            f" and {received} >= {s.alert_dead_letter_min_records}",
            f"{{{{ $value | humanizePercentage }}}} of the records received in the last"
            f" {s.alert_dead_letter_window_seconds:g} s were dead letters"
            f" (alert_dead_letter_share = {s.alert_dead_letter_share:g}); see"
            " `adpulse dead-letters`",
        )
    )
    bound = s.alert_stream_silent_seconds
    if bound and s.alert_silent_streams:
        # no event in the last `step`, held for the rest of the bound: silent for the bound
        step = min(60.0, bound)
        streams = "|".join(sorted(s.alert_silent_streams))
        rules.append(
            PromRule(
                "stream_silent",
                f'sum by (stream) (increase(adpulse_events_received_total{{stream=~"{streams}"}}'
                f"[{duration(step)}])) == 0",
                f"no {{{{ $labels.stream }}}} events for {bound:g} s"
                f" (alert_stream_silent_seconds = {bound:g}); check the producers",
                for_seconds=bound - step,
            )
        )
    bounds = [
        (metric, setting, bound)
        for metric, setting, bound in (
            ("adpulse_lag_bytes", "alert_lag_bytes", s.alert_lag_bytes),
            ("adpulse_lag_records", "alert_lag_records", s.alert_lag_records),
            ("adpulse_lag_seconds", "alert_lag_age_seconds", s.alert_lag_age_seconds),
        )
        if bound
    ]
    if bounds:
        rules.append(
            PromRule(
                "lag",
                " or ".join(f"{metric} > {number(bound)}" for metric, _, bound in bounds),
                "{{ $labels.instance }} is behind the log ({{ $labels.__name__ }} ="
                " {{ $value }}) over "
                + ", ".join(f"{setting} = {number(bound)}" for _, setting, bound in bounds)
                + f" for {s.alert_lag_seconds:g} s; add workers or check what slows it",
                for_seconds=s.alert_lag_seconds,
            )
        )
    rules.append(
        PromRule(
            "commits_failing",
            'adpulse_server_failing{setting="warehouse_url", operation="commit"} > 0',
            "{{ $labels.instance }}: the warehouse's commits fail and are retried (or were"
            " given up on, which stops the processor); see adpulse_commit_failures_total and"
            " check the warehouse",
        )
    )
    rules.append(
        PromRule(
            "server_unavailable",
            'max by (instance, setting) (adpulse_server_failing{operation="other"}) > 0',
            "{{ $labels.instance }}: operations on the server of {{ $labels.setting }} fail"
            " and are retried (or were given up on); check that server and the setting",
        )
    )
    restarts = s.alert_crash_restarts
    if restarts:
        window = duration(s.alert_crash_window_seconds)
        rules.append(
            PromRule(
                "crash_loop",
                f"max_over_time(adpulse_worker_restarts_total[{window}])"
                f" - min_over_time(adpulse_worker_restarts_total[{window}]) >= {restarts}",
                f"{{{{ $labels.instance }}}}: workers crashed {{{{ $value }}}} times in"
                f" {s.alert_crash_window_seconds:g} s (alert_crash_restarts = {restarts});"
                " see their errors in the log",
            )
        )
    rules.append(
        PromRule(
            "store_rebuild",
            f'increase(adpulse_store_rebuilds_total{{kind="repair"}}'
            f"[{duration(STORE_REBUILD_WINDOW)}]) > 0",
            "{{ $labels.instance }}: the serving store was rebuilt from the warehouse (a"
            " write failed or it fell behind); reads fall back to the warehouse meanwhile",
        )
    )
    return rules


def rules_document(settings: Settings) -> dict[str, Any]:
    """The rule file's content (Prometheus' ``groups`` format)."""
    return {
        "groups": [
            {"name": GROUP, "rules": [rule.to_dict() for rule in prometheus_rules(settings)]}
        ]
    }


def rules_comment(settings: Settings) -> str:
    """The file's leading comment: what is left out, and why (``#`` lines)."""
    lines = [
        "Prometheus alerting rules equal to adpulse's built-in alerts (docs/alerts.md),",
        "with the bounds of the settings they were written from. Check: promtool check rules",
    ]
    if NOT_EXPRESSED:
        lines.append(
            "Built-in rules with no metric to express them (alerted by the process itself only):"
        )
        lines += [f"  {name}: {why}" for name, why in NOT_EXPRESSED.items()]
    off = [
        name
        for name, bound in (
            ("processor_stopped", settings.alert_processor_silent_seconds),
            ("stream_silent", settings.alert_stream_silent_seconds),
            (
                "lag",
                settings.alert_lag_bytes
                or settings.alert_lag_records
                or settings.alert_lag_age_seconds,
            ),
            ("crash_loop", settings.alert_crash_restarts),
        )
        if not bound
    ]
    if off:
        lines.append(f"Turned off by the settings (bound 0): {', '.join(off)}")
    return "".join(f"# {line}\n" for line in lines)
