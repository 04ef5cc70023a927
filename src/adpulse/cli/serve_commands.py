"""``adpulse serve`` (the HTTP API, the dashboard and the event collector) and ``send``
(JSON-lines files to a running collector)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from adpulse.cli.options import ConfigOpt, HomeOpt, InsecureOpt, VerboseOpt
from adpulse.cli.output import console, err
from adpulse.cli.runtime import UserError, configure_logging, settings_for
from adpulse.cli.stopping import stop_on_signals
from adpulse.contracts import Stream


def serve(
    home: HomeOpt = None,
    config: ConfigOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: a free one).")] = 8080,
    process: Annotated[
        bool,
        typer.Option(
            "--process/--no-process",
            help="Run the processor in this process (--no-process: `adpulse process` runs"
            " elsewhere; PostgreSQL warehouse, or the API then reads DuckDB read-only).",
        ),
    ] = True,
    collect: Annotated[
        bool,
        typer.Option("--collect/--no-collect", help="Serve the event collector (/v1/...)."),
    ] = True,
    api: Annotated[
        bool,
        typer.Option(
            "--api/--no-api",
            help="Serve the query API and dashboard (--no-api --no-process: the collector"
            " alone, beside `adpulse process` on the embedded log).",
        ),
    ] = True,
    insecure: InsecureOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Serve the HTTP query API (JSON, OpenAPI at /docs), the event collector
    (POST /v1/events/STREAM, the pixel and the click redirect) and run the processor,
    so that posted events become queryable. Off loopback it needs API keys
    (`adpulse keys create`). Ctrl-C stops."""
    from adpulse.operations.serve import run_serve

    configure_logging(verbose)
    settings = settings_for(home, config)
    with stop_on_signals() as stopping:
        done = run_serve(
            settings,
            console,
            stopping.event,
            host=host,
            port=port,
            process=process,
            collect=collect,
            api=api,
            insecure=insecure,
            verbose=verbose,
        )
    console.print(stopping.stopped_line(done))


def send(
    files: Annotated[list[Path], typer.Argument(help="JSON-lines files (.jsonl, .jsonl.gz).")],
    url: Annotated[str, typer.Option(help="The collector's base URL.")] = "http://127.0.0.1:8080",
    stream: Annotated[
        Stream | None,
        typer.Option(help="Stream of every file (default: from each file's name)."),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            envvar="ADPULSE_KEY",
            help="A write key (`adpulse keys create --scope write`), when the server"
            " requires keys.",
        ),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Records per request.")] = 500,
    gzip_body: Annotated[bool, typer.Option("--gzip/--no-gzip", help="Gzip each request.")] = True,
    retry_seconds: Annotated[
        float, typer.Option(min=0, help="How long a failing batch is retried.")
    ] = 60.0,
    verbose: VerboseOpt = False,
) -> None:
    """Send JSON-lines files to a running collector (`adpulse serve`), in gzipped batches,
    retried on overload or connection errors; sending a file again counts it once."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from adpulse.sources.client import (
        CollectorClient,
        CollectorSendError,
        send_file,
        stream_of_file,
    )

    configure_logging(verbose)
    try:
        streams = {path: stream or stream_of_file(path) for path in files}
        sizes = {path: path.stat().st_size for path in files}
    except (ValueError, OSError) as exc:
        raise UserError(str(exc)) from exc
    totals: dict[str, int] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    with (
        CollectorClient(
            url, batch_records=batch, compress=gzip_body, retry_seconds=retry_seconds, key=key
        ) as client,
        Progress(*columns, TimeRemainingColumn(), console=err) as progress,
    ):
        task = progress.add_task("sending", total=sum(sizes.values()))
        done_bytes = 0
        for path in files:
            try:
                accepted = send_file(
                    client, path, streams[path], _progress_of(progress, task, path, done_bytes)
                )
            except CollectorSendError as exc:
                raise UserError(f"{path}: {exc}") from exc
            totals[streams[path].value] = totals.get(streams[path].value, 0) + accepted
            done_bytes += sizes[path]
            progress.update(task, completed=done_bytes)
    parts = ", ".join(f"{n:,} {s}" for s, n in totals.items())
    console.print(f"sent {parts} to {url} ({client.retries} retries)")


def _progress_of(progress: Any, task: Any, path: Path, base: int) -> Any:
    """The progress callback of one file of `send`: records sent, bytes read so far."""
    sent = [0]

    def show(records: int, read: int) -> None:
        sent[0] += records
        progress.update(task, completed=base + read, description=f"{path.name}: {sent[0]:,}")

    return show
