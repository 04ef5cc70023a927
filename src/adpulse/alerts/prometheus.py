"""The built-in alert rules (:mod:`.rules`) as Prometheus alerting rules.

For operators who alert from Prometheus (Alertmanager) rather than, or beside, the
process's own notifiers. The rules are built from the same settings as the built-in
ones (``alert_*``), so regenerating the file after a settings change is all it takes to
keep both equal; ``adpulse grafana export DIR --prometheus-url URL`` writes it
(``DIR/prometheus/adpulse-rules.yml``; docs/metrics-prometheus.md).

Where Prometheus can say more than the process: the built-in ``processor_stopped``
cannot fire for a process killed outright, this one can (the last commit time is read
over a window, so the series going away does not clear the condition). Where it can say
less: rules with no metric to express them are listed in :data:`NOT_EXPRESSED` and
written as comments into the file, so a reader of the file knows what it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from adpulse.config import Settings

#: Prometheus' rule group name for adpulse's rules.
GROUP: Final = "adpulse"

#: Built-in rules without a metric to express them, and why (the file's comments).
NOT_EXPRESSED: Final = {
    "commits_failing": "no metric counts failed or retried commits (the retriers only log"
    " and tell the built-in monitor); a commit given up on stops the processor, which"
    " processor_stopped then reports",
    "server_unavailable:SETTING": "no metric counts retried transport or warehouse operations",
    "crash_loop": "the `process --workers N` supervisor, which counts restarts, serves no metrics",
    "store_rebuild": "no metric counts serving-store rebuilds",
}


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
    if s.alert_lag_bytes:
        rules.append(
            PromRule(
                "lag",
                f"adpulse_lag_bytes > {s.alert_lag_bytes}",
                f"{{{{ $labels.instance }}}} is {{{{ $value | humanize1024 }}}}B behind the"
                f" log, more than alert_lag_bytes = {s.alert_lag_bytes} for"
                f" {s.alert_lag_seconds:g} s; add workers or check what slows it",
                for_seconds=s.alert_lag_seconds,
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
        "Built-in rules with no metric to express them (alerted by the process itself only):",
    ]
    lines += [f"  {name}: {why}" for name, why in NOT_EXPRESSED.items()]
    off = [
        name
        for name, bound in (
            ("processor_stopped", settings.alert_processor_silent_seconds),
            ("stream_silent", settings.alert_stream_silent_seconds),
            ("lag", settings.alert_lag_bytes),
        )
        if not bound
    ]
    if off:
        lines.append(f"Turned off by the settings (bound 0): {', '.join(off)}")
    return "".join(f"# {line}\n" for line in lines)
