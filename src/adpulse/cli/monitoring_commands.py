"""``adpulse grafana`` and ``alerts``: what operators watch the pipeline with (Grafana
provisioning, Prometheus alerting rules, notifiers)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from adpulse.cli.options import ConfigOpt, HomeOpt
from adpulse.cli.output import console
from adpulse.cli.runtime import UserError, settings_for

grafana_app = typer.Typer(help="Grafana provisioning for the PostgreSQL warehouse.")
alerts_app = typer.Typer(help="Alerts to operators: the log, a webhook, an SNS topic.")


@grafana_app.command("export")
def grafana_export(
    directory: Annotated[Path, typer.Argument(help="Directory to write the files into.")],
    home: HomeOpt = None,
    config: ConfigOpt = None,
    schema: Annotated[
        str | None,
        typer.Option(help="Schema of the tables (default: the URL's search_path, if any)."),
    ] = None,
    dashboards_path: Annotated[
        str | None,
        typer.Option(help="DIR/dashboards as Grafana sees it (e.g. inside a container)."),
    ] = None,
    prometheus_url: Annotated[
        str | None,
        typer.Option(
            help="Prometheus scraping adpulse (e.g. http://127.0.0.1:9090): adds its data"
            " source, the pipeline-health dashboard and DIR/prometheus/adpulse-rules.yml"
            " (the built-in alerts as Prometheus alerting rules, from these settings)."
        ),
    ] = None,
) -> None:
    """Write Grafana provisioning files for the PostgreSQL warehouse: a data source
    (password from $ADPULSE_WAREHOUSE_PASSWORD in Grafana's environment) and a dashboard
    with every metric, filterable by campaign, platform, location and time range."""
    from adpulse.operations.grafana import PASSWORD_ENV, GrafanaExportError, export

    settings = settings_for(home, config)
    try:
        written = export(
            directory,
            settings,
            schema=schema,
            dashboards_path=dashboards_path,
            prometheus_url=prometheus_url,
        )
    except GrafanaExportError as exc:
        raise UserError(str(exc)) from exc
    for path in written:
        console.print(f"wrote {path}")
    console.print(
        f"point Grafana's provisioning path (paths.provisioning) at {written[0].parents[1]}"
        f" and set {PASSWORD_ENV} in Grafana's environment if the warehouse needs a password"
    )


@alerts_app.command("test")
def alerts_test(home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Send a test alert through every configured notifier and say which succeeded
    (exit status 1 if one failed)."""
    from adpulse.alerts import Alert
    from adpulse.alerts.notifiers import notifiers_for, send_all

    settings = settings_for(home, config)
    try:
        notifiers = notifiers_for(settings)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    alert = Alert("test", "firing", "a test alert from `adpulse alerts test`; no action needed")
    results = send_all(notifiers, alert)
    for name, error in results.items():
        if error is None:
            console.print(f"{name}: sent", soft_wrap=True)
        else:
            console.print(f"{name}: FAILED: {error}", soft_wrap=True, markup=False)
    if any(error is not None for error in results.values()):
        raise typer.Exit(1)


@alerts_app.command("prometheus-rules")
def alerts_prometheus_rules(
    out: Annotated[
        Path | None, typer.Option("--out", help="File to write (default: standard output).")
    ] = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write the built-in alerts as Prometheus alerting rules, with the bounds of these
    settings (also written by `grafana export --prometheus-url`; any warehouse here)."""
    from adpulse.operations.grafana import rules_text

    text = rules_text(settings_for(home, config))
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write the rules to {out}: {exc}; choose another --out") from exc
    console.print(f"wrote {out}; check it with: promtool check rules {out}", soft_wrap=True)
