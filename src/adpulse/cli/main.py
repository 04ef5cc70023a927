"""The ``adpulse`` command line: the typer app, its commands and sub-apps, and the one
place that turns a command's failure into one line and exit status 2.

Each command lives in the module of its topic; this module only registers them, in the
order ``adpulse --help`` lists them.
"""

from __future__ import annotations

import sys

import typer

from adpulse.cli.admin_commands import config_app, dims_app, keys_app
from adpulse.cli.bench_commands import bench, bench_api, bench_server
from adpulse.cli.log_commands import log_app
from adpulse.cli.monitoring_commands import alerts_app, grafana_app
from adpulse.cli.output import err
from adpulse.cli.pipeline_commands import demo, generate, replay
from adpulse.cli.process_command import process
from adpulse.cli.query_commands import query, status
from adpulse.cli.reprocess_command import reprocess
from adpulse.cli.runtime import UserError
from adpulse.cli.serve_commands import send, serve

app = typer.Typer(
    name="adpulse",
    help=(
        "Real-time ad engagement analytics: impressions, clicks and conversions in; CTR, "
        "conversion rate, revenue per conversion, conversion latency and trending "
        "campaigns out.\n\n"
        "Every command works on a data directory (--home or ADPULSE_HOME, default "
        "~/.adpulse) holding the log, the warehouse and adpulse.toml. Settings come from "
        "that TOML file (or --config) and ADPULSE_* environment variables."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
app.add_typer(dims_app, name="dims")
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")
app.add_typer(grafana_app, name="grafana")
app.add_typer(alerts_app, name="alerts")
app.add_typer(log_app, name="log")
app.command("reprocess")(reprocess)
app.command("generate")(generate)
app.command("replay")(replay)
app.command("process")(process)
app.command("query")(query)
app.command("status")(status)
app.command("serve")(serve)
app.command("send")(send)
app.command("demo")(demo)
app.command("bench")(bench)
app.command("bench-api")(bench_api)
app.command("bench-server")(bench_server)


def main() -> None:
    from adpulse.outages import InfrastructureError
    from adpulse.transport.base import OffsetOutOfRangeError
    from adpulse.transport.embedded import LogDamagedError

    try:
        app()
    except UserError as exc:
        err.print(f"[bold red]error:[/] {exc}", soft_wrap=True)  # one line, unwrapped
        sys.exit(2)
    except (InfrastructureError, LogDamagedError, OffsetOutOfRangeError) as exc:
        # A server stayed away past infra_retry_seconds, or the log is damaged: one
        # line that says what to do; the traceback with -v.
        import logging

        from rich.markup import escape

        if logging.getLogger().isEnabledFor(logging.DEBUG):
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
