"""The ``adpulse`` command line."""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import polars as pl
import typer
from rich.console import Console

from adpulse.cli import tables
from adpulse.cli.log_commands import log_app
from adpulse.cli.reprocess_command import reprocess
from adpulse.cli.runtime import (
    Runtime,
    UserError,
    Worker,
    configure_logging,
    open_log,
    open_runtime,
    partition_worker_for,
    processor_for,
    settings_for,
)
from adpulse.cli.stopping import StopRequest, stop_on_signals
from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.metrics import GROUPED_NAMES

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
dims_app = typer.Typer(help="Campaign and user dimensions (slowly changing, SCD type 2).")
config_app = typer.Typer(help="Show the effective configuration.")
keys_app = typer.Typer(
    help="API keys: read keys for the query API and dashboard, write keys for the collector."
)
grafana_app = typer.Typer(help="Grafana provisioning for the PostgreSQL warehouse.")
alerts_app = typer.Typer(help="Alerts to operators: the log, a webhook, an SNS topic.")
app.add_typer(dims_app, name="dims")
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")
app.add_typer(grafana_app, name="grafana")
app.add_typer(alerts_app, name="alerts")
app.add_typer(log_app, name="log")
app.command("reprocess")(reprocess)
console = Console()
err = Console(stderr=True)

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="Data directory (default: $ADPULSE_HOME or ~/.adpulse)."),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML settings file (default: HOME/adpulse.toml).")
]
PartitionsOpt = Annotated[
    int | None, typer.Option("--partitions", min=1, max=1024, help="Partitions per stream.")
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log debug output.")]
InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="Serve on a non-loopback address even though no API key can be checked.",
    ),
]


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


class GroupByOpt(StrEnum):
    none = "none"
    ad = "ad"
    campaign = "campaign"


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


# --------------------------------------------------------------------------- generate
@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the data set into.")],
    events: Annotated[int, typer.Option("--events", min=1, help="Events to generate.")] = 1_000_000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 7,
    days: Annotated[float, typer.Option(help="Days of history the events span.")] = 1.0,
    start: Annotated[
        str | None, typer.Option(help="First event time, e.g. 2023-09-01 (default: now - days).")
    ] = None,
    duplicate_rate: Annotated[
        float | None, typer.Option(min=0, max=1, help="Share of records re-sent [0.01].")
    ] = None,
    out_of_order_rate: Annotated[
        float | None, typer.Option(min=0, max=1, help="Share displaced up to 30 s [0.02].")
    ] = None,
    late_rate: Annotated[
        float | None,
        typer.Option(min=0, max=1, help="Share arriving up to 9 min late [0.002]."),
    ] = None,
    malformed_rate: Annotated[
        float | None, typer.Option(min=0, max=1, help="Share of malformed records [0.001].")
    ] = None,
    clean: Annotated[bool, typer.Option("--clean", help="No faults at all.")] = False,
    no_event_ids: Annotated[
        bool, typer.Option("--no-event-ids", help="Omit event_id, like the original's records.")
    ] = False,
) -> None:
    """Write a realistic data set: impressions/clicks/conversions .jsonl plus campaigns.csv
    and users.csv, in the original's formats."""
    from adpulse.sources.files import write_dataset
    from adpulse.sources.generator import EventGenerator, GeneratorConfig

    first = _parse_time(start, "--start") if start else None
    end = (first + timedelta(days=days)) if first else datetime.now(UTC).replace(tzinfo=None)
    begin = first or end - timedelta(days=days)
    rates: dict[str, Any] = {
        "duplicate_rate": duplicate_rate,
        "out_of_order_rate": out_of_order_rate,
        "late_rate": late_rate,
        "malformed_rate": malformed_rate,
    }
    try:
        gen_config = replace(
            GeneratorConfig(seed=seed, include_event_ids=not no_event_ids),
            **{k: v for k, v in rates.items() if v is not None},
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if clean:
        gen_config = gen_config.without_faults()
    gen = EventGenerator(gen_config)
    with console.status(f"generating {events:,} events"):
        summary = write_dataset(out, gen, events, begin, end)
    console.print(f"wrote {out}:")
    console.print_json(json.dumps({k: v for k, v in summary.items() if k != "counts"}, default=str))


# ----------------------------------------------------------------------------- replay
@app.command()
def replay(
    directory: Annotated[Path, typer.Argument(help="Directory of .jsonl[.gz] stream files.")],
    home: HomeOpt = None,
    config: ConfigOpt = None,
    partitions: PartitionsOpt = None,
    rate: Annotated[
        float | None, typer.Option(help="Events/s overall (default: as fast as possible).")
    ] = None,
    load_dims: Annotated[
        bool, typer.Option(help="Load campaigns.csv/users.csv found in DIRECTORY first.")
    ] = True,
    produce_only: Annotated[
        bool,
        typer.Option(help="Only append to the log (a separate `adpulse process` consumes it)."),
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Push a directory of event files through the pipeline; returns when all is committed."""
    from adpulse.sources.files import iter_stream_files

    configure_logging(verbose)
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory")
    try:
        found = iter_stream_files(directory)
        total = _count_lines(directory) if found else 0
    except (OSError, ValueError, EOFError) as exc:  # unreadable, bad gzip, ambiguous files
        raise UserError(f"cannot read {directory}: {exc}") from exc
    if not found:
        raise UserError(
            f"{directory} holds no impressions/clicks/conversions .jsonl or .jsonl.gz file"
        )
    settings = settings_for(home, config, partitions=partitions)
    with stop_on_signals() as stopping:
        _replay(directory, settings, rate, load_dims, produce_only, total, stopping)


def _replay(
    directory: Path,
    settings: Any,
    rate: float | None,
    load_dims: bool,
    produce_only: bool,
    total: int,
    stopping: StopRequest,
) -> None:
    """``replay``'s work; a stop signal ends appending and committing between batches."""

    if produce_only:
        # No warehouse here: a separate `adpulse process` holds it.
        transport = open_log(settings)
        try:
            counts = _replay_with_progress(
                directory, transport.producer(), settings, rate, total, stopping.event
            )
        finally:
            transport.close()
        appended = "appended " + ", ".join(f"{n:,} {s}" for s, n in counts.items())
        console.print(stopping.stopped_line(appended))
        return
    with open_runtime(settings) as rt:
        _refuse_beside_workers(rt.warehouse)
        if load_dims:
            for name in ("campaigns.csv", "users.csv"):
                if (directory / name).exists():
                    _load_dim_file(rt.warehouse, directory / name, None)
        processor = processor_for(rt)
        committed = [0]

        def on_batch(report: Any) -> None:
            committed[0] += report.records

        stop = threading.Event()
        worker = Worker(processor.run, "processor", stop, on_batch=on_batch, bulk=True)
        worker.start()
        try:
            counts = _replay_with_progress(
                directory, rt.transport.producer(), settings, rate, total, stopping.event
            )
        finally:
            stop.set()
            worker.join()
        try:
            worker.check()
            with console.status("committing what is left"):
                # Ends early, after the batch in flight, when a signal stops the command.
                processor.run(stopping.event, on_batch=on_batch, until_caught_up=True)
        finally:
            processor.close()
        if stopping.is_set():
            console.print(
                stopping.stopped_line(
                    f"appended {sum(counts.values()):,} of {total:,} records to the log,"
                    f" committed {committed[0]:,}; `adpulse process` commits the rest"
                )
            )
            return
        console.print(
            "replayed " + ", ".join(f"{n:,} {s}" for s, n in counts.items()) + " — all committed"
        )


def _refuse_beside_workers(warehouse: Any) -> None:
    """A processor over all partitions must not run while workers hold leases on them."""
    from adpulse.serving.queries import partition_owners

    owners = partition_owners(warehouse)
    if owners.height and owners["live"].any():
        raise UserError(
            "workers are processing this warehouse's partitions (see `adpulse status`):"
            " use `adpulse replay --produce-only` to feed them, or stop them first"
        )


def _replay_with_progress(
    directory: Path,
    producer: Any,
    settings: Any,
    rate: float | None,
    total: int,
    stop: threading.Event | None = None,
) -> dict[Any, int]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from adpulse.sources.producer import replay_directory

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} records"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("replaying", total=total)
        counts = replay_directory(
            directory,
            producer,
            settings.partitions,
            rate=rate,
            on_progress=lambda n: progress.update(task, completed=n),
            stop=stop,
        )
        producer.flush()
    return counts


def _count_lines(directory: Path) -> int:
    from adpulse.sources.files import count_lines, iter_stream_files

    return sum(count_lines(path) for path in iter_stream_files(directory).values())


# ---------------------------------------------------------------------------- process
@app.command()
def process(
    home: HomeOpt = None,
    config: ConfigOpt = None,
    partitions: PartitionsOpt = None,
    until_caught_up: Annotated[
        bool, typer.Option(help="Stop once everything in the log is committed.")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=256,
            help="Worker processes sharing the partitions (PostgreSQL warehouse). Workers "
            "started separately, on any host, share them too.",
        ),
    ] = 1,
    supervised: Annotated[
        bool, typer.Option("--supervised", hidden=True, help="Started by --workers.")
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve Prometheus metrics at http://127.0.0.1:PORT/metrics (0: none;"
            " default: the metrics_port setting). With --workers N: the supervisor's"
            " (worker restarts).",
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the processor on its own: consume the log and commit results until stopped
    (Ctrl-C). Safe to kill at any instant: a restart resumes exactly. Over PostgreSQL,
    every running `adpulse process` shares the partitions (leases; see README)."""
    from adpulse.processor.pipeline import Processor
    from adpulse.processor.workers import PartitionWorker

    configure_logging(verbose)
    overrides: dict[str, Any] = {} if metrics_port is None else {"metrics_port": metrics_port}
    settings = settings_for(home, config, partitions=partitions, **overrides)
    if workers > 1:
        _supervise_workers(settings, workers, home, config, until_caught_up, verbose)
        return
    with stop_on_signals() as stopping, open_runtime(settings) as rt:
        runner: Processor | PartitionWorker
        if rt.warehouse.shares_partitions:
            from adpulse.processor.workers import stop_when_stdin_closes

            if supervised:  # a closed supervisor pipe stops as a signal does
                stop_when_stdin_closes()
            runner = partition_worker_for(rt)
        else:
            runner = processor_for(rt)
        if settings.metrics_port:
            _serve_process_metrics(rt, runner, settings.metrics_port)
        committed = [0]

        def on_batch(report: Any) -> None:
            committed[0] += report.records

        # Stops between batches on SIGINT/SIGTERM; the batch in flight is committed.
        try:
            if supervised:
                runner.run(stopping.event, on_batch=on_batch, until_caught_up=until_caught_up)
            else:
                with console.status("processing (Ctrl-C to stop)") as status:

                    def show(report: Any) -> None:
                        on_batch(report)
                        status.update(
                            f"processing: {committed[0]:,} records committed (Ctrl-C to stop)"
                        )

                    runner.run(stopping.event, on_batch=show, until_caught_up=until_caught_up)
        finally:
            runner.close()
        who = f"worker {runner.worker_id}: " if isinstance(runner, PartitionWorker) else ""
        console.print(who + stopping.stopped_line(f"committed {committed[0]:,} records"))


def _serve_process_metrics(rt: Runtime, runner: Any, port: int) -> None:
    """prometheus-client's own HTTP server for this process's metrics (daemon thread,
    gone with the process); the lag comes from the runtime's probe, shared with the
    alerts (wired by processor_for and partition_worker_for)."""
    from adpulse.telemetry import serve_metrics

    metrics = rt.pipeline_metrics()
    try:
        serve_metrics(metrics.registry, port)
    except OSError as exc:
        raise UserError(str(exc)) from None
    console.print(f"metrics at http://127.0.0.1:{port}/metrics")


def _supervise_workers(
    settings: Any,
    workers: int,
    home: Path | None,
    config: Path | None,
    until_caught_up: bool,
    verbose: bool,
) -> None:
    """``process --workers N``: N child ``adpulse process`` workers, restarted if they
    crash; ``settings.metrics_port`` serves the supervisor's metrics (its restarts), not
    the workers' (N workers cannot share a port: start them separately for theirs)."""
    from adpulse.processor.workers import supervise

    with open_runtime(settings) as rt:  # checks the settings, creates the tables once
        if not rt.warehouse.shares_partitions:
            raise UserError(
                f"--workers {workers} needs a warehouse that several processes can share:"
                f" the {rt.warehouse.dialect} warehouse is opened by one process at a time."
                " Set warehouse_url (ADPULSE_WAREHOUSE_URL) to postgresql://..., or run"
                " one worker (--workers 1)"
            )
    # the workers serve no metrics: the port, if any, is the supervisor's
    command = [sys.executable, "-m", "adpulse", "process", "--supervised", "--metrics-port", "0"]
    for option, value in (("--home", home), ("--config", config)):
        if value is not None:
            command += [option, str(value)]
    command += ["--partitions", str(settings.partitions)]
    if until_caught_up:
        command.append("--until-caught-up")
    if verbose:
        command.append("--verbose")
    console.print(f"running {workers} workers over {settings.partitions} partitions (Ctrl-C)")
    from adpulse.alerts import open_alerting

    alerts = open_alerting(settings, watch_streams=False)  # tells crash loops
    on_crash = alerts.crashed
    if settings.metrics_port:
        from adpulse.telemetry import SupervisorMetrics, new_registry, serve_metrics

        metrics = SupervisorMetrics(new_registry(), workers)
        try:
            serve_metrics(metrics.registry, settings.metrics_port)
        except OSError as exc:
            alerts.close()
            raise UserError(str(exc)) from None
        console.print(f"supervisor metrics at http://127.0.0.1:{settings.metrics_port}/metrics")

        def on_crash(slot: int, status: int) -> None:
            alerts.crashed(slot, status)
            metrics.crashed(slot, status)

    try:
        with stop_on_signals() as stopping:
            code = supervise(
                command,
                workers,
                stopping.event,
                until_caught_up=until_caught_up,
                on_crash=on_crash,
            )
    finally:
        alerts.close()
    if code:
        raise UserError(f"a worker failed (exit status {code}); see its messages above")
    console.print(stopping.stopped_line(f"{workers} workers done"))


# ------------------------------------------------------------------------------- dims
@dims_app.command("load")
def dims_load(
    files: Annotated[list[Path], typer.Argument(help="campaigns.csv and/or users.csv files.")],
    home: HomeOpt = None,
    config: ConfigOpt = None,
    effective_from: Annotated[
        str | None,
        typer.Option(
            help="When changed rows take effect (event time); default: now. Use it to "
            "backfill history, e.g. --effective-from '2023-09-09 12:00:00'."
        ),
    ] = None,
) -> None:
    """Load dimension CSVs (the original's format). Changed rows become new versions;
    a running processor picks them up without a restart."""
    settings = settings_for(home, config)
    when = _parse_time(effective_from, "--effective-from") if effective_from else None
    with open_runtime(settings) as rt:
        for path in files:
            _load_dim_file(rt.warehouse, path, when)


def _load_dim_file(warehouse: Any, path: Path, when: datetime | None) -> None:
    from adpulse.storage.dimensions import DimensionFileError, read_dimension_csv

    try:
        kind, rows = read_dimension_csv(path)
    except (DimensionFileError, OSError) as exc:
        raise UserError(str(exc)) from exc
    try:
        result = warehouse.load_dimension(
            kind, rows, when or datetime.now(UTC).replace(tzinfo=None)
        )
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from exc
    console.print(
        f"{path}: {result.kind} — {result.rows} rows, {result.new_keys} new, "
        f"{result.changed_keys} changed (new versions), {result.unchanged_keys} unchanged"
    )


# ------------------------------------------------------------------------------ query
#: What ``query`` shows: the catalog's grouped metrics, then the rankings and the summary.
METRICS = (*GROUPED_NAMES, "trending", "top-ads", "summary")


@app.command()
def query(
    metric: Annotated[
        str,
        typer.Argument(help=" | ".join(METRICS)),
    ],
    home: HomeOpt = None,
    config: ConfigOpt = None,
    by: Annotated[
        GroupByOpt, typer.Option("--by", help="Group by ad or campaign.")
    ] = GroupByOpt.none,
    campaign: Annotated[str | None, typer.Option(help="Only this campaign.")] = None,
    ad: Annotated[int | None, typer.Option(help="Only this ad id.")] = None,
    from_: Annotated[
        str | None, typer.Option("--from", help="Start (inclusive), e.g. '2023-09-09 10:00'.")
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="End (exclusive).")] = None,
    platform: Annotated[str | None, typer.Option(help="Web, Mobile, Tablet...")] = None,
    location: Annotated[str | None, typer.Option(help="e.g. 'New York'.")] = None,
    gender: Annotated[str | None, typer.Option()] = None,
    age_band: Annotated[str | None, typer.Option(help="<18, 18-24, 25-34, ... 65+")] = None,
    interest: Annotated[str | None, typer.Option(help="One interest, e.g. Travel.")] = None,
    rank_by: Annotated[str, typer.Option(help="top-ads: revenue | conversion_rate.")] = "revenue",
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Rows for rankings.")] = 10,
    min_clicks: Annotated[
        int | None, typer.Option(help="Minimum clicks for rate rankings (default from settings).")
    ] = None,
    window: Annotated[
        int | None,
        typer.Option(min=1, max=1440, help="trending: window in minutes (default from settings)."),
    ] = None,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="table | json | csv")
    ] = OutputFormat.table,
) -> None:
    """Metrics over any time range and filters (the query layer the HTTP API and the
    dashboard also read)."""
    from adpulse.serving import queries

    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    settings = settings_for(home, config)
    try:
        filters = queries.Filters.from_text(
            campaign=campaign,
            ad_id=ad,
            start=from_,
            end=to,
            platform=platform,
            location=location,
            gender=gender,
            age_band=age_band,
            interest=interest,
            start_name="--from",
            end_name="--to",
        )
        filters = queries.minute_aligned(filters)  # whole minutes, as the HTTP API reads them
    except queries.FilterError as exc:
        raise UserError(str(exc)) from exc
    group = cast("queries.GroupBy", None if by is GroupByOpt.none else by.value)
    if rank_by not in ("revenue", "conversion_rate"):
        raise UserError(f"--rank-by must be revenue or conversion_rate, not {rank_by!r}")
    mc = settings.min_clicks if min_clicks is None else min_clicks
    minutes = settings.trending_window_minutes if window is None else window
    try:
        with open_runtime(settings, read_only=True) as rt:
            wh = rt.warehouse
            filters = _checked(rt, filters)
            if fmt is OutputFormat.json:  # the HTTP API's answer, the same shape
                answer = _answer(rt, metric, filters, group, rank_by, mc, minutes, limit)
                sys.stdout.write(_json(answer))
                return
            if metric in GROUPED_NAMES:
                frame = queries.grouped_metric(wh, metric, filters, group, store=rt.store)
            elif metric == "trending":
                frame = queries.trending(
                    wh,
                    filters,
                    window_minutes=minutes,
                    min_clicks=mc,
                    limit=limit,
                    store=rt.store,
                )
            elif metric == "top-ads":
                frame = queries.top_ads(
                    wh,
                    filters,
                    by=cast("Literal['revenue', 'conversion_rate']", rank_by),
                    min_clicks=mc,
                    limit=limit,
                    store=rt.store,
                )
            else:
                frame = queries.summary(wh, filters, store=rt.store)
            empty = "no rows match these filters"
            if frame.height == 0 and fmt is OutputFormat.table:
                empty = _why_nothing(wh, metric, filters, rank_by, mc, minutes)
    except UserError as exc:  # a running demo or server holds the warehouse: ask it
        from adpulse.cli import remote

        server = remote.server_holding(settings, exc)
        path, params = _api_query(metric, group, rank_by, mc, minutes, limit)
        params |= {"campaign": campaign, "ad": ad, "from": from_, "to": to}
        params |= {"platform": platform, "location": location, "gender": gender}
        params |= {"age_band": age_band, "interest": interest}
        err.print(f"(asking {server.url}: process {server.pid} holds the warehouse)")
        answer = remote.get(server, path, params)
        if fmt is OutputFormat.json:
            sys.stdout.write(_json(answer))
            return
        frame = _frame_of(answer)
        empty = "no rows match these filters"
    _print_frame(frame, fmt, empty)


def _api_query(
    metric: str, group: Any, rank_by: str, min_clicks: int, minutes: int, limit: int
) -> tuple[str, dict[str, Any]]:
    """The HTTP API's path and parameters (filters aside) for this ``query``."""
    if metric in GROUPED_NAMES:
        return f"metrics/{metric}", {"by": group}
    if metric == "trending":
        return "trending", {"window": minutes, "min_clicks": min_clicks, "limit": limit}
    if metric == "top-ads":
        return "top-ads", {"by": rank_by, "min_clicks": min_clicks, "limit": limit}
    return "summary", {}


def _frame_of(answer: dict[str, Any]) -> pl.DataFrame:
    """The rows of an API answer (the summary's one object as one row) as a frame."""
    rows = [answer["summary"]] if "summary" in answer else answer.get("rows") or []
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()


#: The CLI's names of the checked filters, for messages.
OPTION_NAMES = {
    "campaign": "--campaign",
    "ad_id": "--ad",
    "platform": "--platform",
    "location": "--location",
    "gender": "--gender",
    "interest": "--interest",
}


def _checked(rt: Runtime, filters: Any) -> Any:
    """``filters`` with stored spellings; a :class:`UserError` (exit 2) naming the close
    matches of a value the data does not hold."""
    from adpulse.serving import queries

    try:
        return queries.known_values(rt.warehouse).check(filters, OPTION_NAMES)
    except queries.FilterError as exc:
        raise UserError(str(exc)) from exc


def _answer(
    rt: Runtime,
    metric: str,
    filters: Any,
    group: Any,
    rank_by: str,
    min_clicks: int,
    minutes: int,
    limit: int,
) -> dict[str, Any]:
    """What ``GET /api/v1/...`` answers for this query (:mod:`adpulse.serving.answers`)."""
    from adpulse.serving import answers

    wh, store = rt.warehouse, rt.store
    if metric in GROUPED_NAMES:
        return answers.metric_answer(wh, metric, filters, group, store)
    if metric == "trending":
        return answers.trending_answer(wh, filters, minutes, min_clicks, limit, store)
    if metric == "top-ads":
        by = cast("Literal['revenue', 'conversion_rate']", rank_by)
        return answers.top_ads_answer(wh, filters, by, min_clicks, limit, store)
    return answers.summary_answer(wh, filters, store)


def _json(value: Any) -> str:
    """``value`` (JSON-ready) as indented JSON and a newline."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def _why_nothing(
    wh: Any, metric: str, filters: Any, rank_by: str, min_clicks: int, minutes: int
) -> str:
    """One line saying why a query has no rows, and what to change."""
    from adpulse.serving import queries

    if queries.data_range(wh)["last_minute"] is None:
        return "no data yet: nothing is committed (run `adpulse replay` or `adpulse demo`)"
    if metric == "trending":
        windows = queries.trending_windows(wh, filters, minutes)
        before = f" before {windows.end:%Y-%m-%d %H:%M}" if windows is not None else ""
        return (
            f"no campaign trending: none has {min_clicks:,}+ clicks in both"
            f" {minutes}-minute windows{before}; try a longer --window or a lower"
            " --min-clicks"
        )
    if metric == "top-ads" and rank_by == "conversion_rate":
        return (
            f"no ad has at least {min_clicks:,} clicks under these filters;"
            " try a lower --min-clicks or a wider --from/--to"
        )
    return "no rows match these filters; try fewer filters or a wider --from/--to"


def _print_frame(frame: pl.DataFrame, fmt: OutputFormat, empty: str = "no rows") -> None:
    if fmt is OutputFormat.json:
        sys.stdout.write(json.dumps(frame.to_dicts(), default=str, indent=2) + "\n")
    elif fmt is OutputFormat.csv:
        sys.stdout.write(frame.write_csv())
    else:
        tables.print_frame(frame, console, empty)


# ----------------------------------------------------------------------------- status
@app.command()
def status(
    home: HomeOpt = None,
    config: ConfigOpt = None,
    fmt: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.table,
) -> None:
    """Pipeline status: records per stream, dead letters by reason, watermarks, and the
    owner of each partition when workers share them."""
    from adpulse.serving import queries

    settings = settings_for(home, config)
    try:
        with open_runtime(settings, read_only=True) as rt:
            info: dict[str, Any] = dict(queries.pipeline_status(rt.warehouse))
            owners = queries.partition_owners(rt.warehouse)
            if owners.height:  # only when workers share the partitions
                info["partition_owners"] = owners
            if settings.transport_url.startswith("kinesis://"):
                info["kinesis_shards"] = _kinesis_shards(
                    settings, rt.warehouse.load_offsets(), owners
                )
    except UserError as exc:  # a running demo or server holds the warehouse: ask it
        from adpulse.cli import remote

        server = remote.server_holding(settings, exc)
        err.print(f"(asking {server.url}: process {server.pid} holds the warehouse)")
        health = remote.get(server, "health", {})
        info = {
            name: pl.DataFrame(value, infer_schema_length=None)
            if isinstance(value, list)
            else value
            for name, value in health.items()
            if name not in ("data_range", "live")  # what `status` shows, no more
        }
    if fmt is OutputFormat.json:
        plain = {k: v.to_dicts() if isinstance(v, pl.DataFrame) else v for k, v in info.items()}
        sys.stdout.write(json.dumps(plain, default=str, indent=2) + "\n")
        return
    for name, value in info.items():
        console.rule(name)
        if isinstance(value, pl.DataFrame):
            _print_frame(value, OutputFormat.table, f"no {name.replace('_', ' ')}")
        else:
            console.print(tables.format_value(name, value))


def _kinesis_shards(
    settings: Settings, committed: dict[tuple[Stream, int], str], owners: pl.DataFrame
) -> pl.DataFrame | str:
    """Shard, owner and iterator age of each stream partition (the streams are not
    created: status only reads); why not, when the streams cannot be read."""
    from adpulse.transport.kinesis import open_kinesis_transport

    by_partition = {
        int(r["partition"]): f"{r['host']}:{r['pid']}"
        for r in (owners.to_dicts() if owners.height else [])
        if r["live"]
    }
    try:
        transport = open_kinesis_transport(
            settings.transport_url, settings.partitions, settings.max_record_bytes, create=False
        )
        try:
            return pl.DataFrame(transport.shard_report(dict(committed), by_partition))
        finally:
            transport.close()
    except Exception as exc:  # noqa: BLE001 - status reports what it cannot read
        return f"unavailable: {exc}"


# ---------------------------------------------------------------------------- grafana
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


# ------------------------------------------------------------------------------ serve
@app.command()
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


@app.command()
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


# ------------------------------------------------------------------------------- demo
@app.command()
def demo(
    home: HomeOpt = None,
    config: ConfigOpt = None,
    partitions: PartitionsOpt = None,
    rate: Annotated[float, typer.Option(min=1, help="Events/s produced (all streams).")] = 2_000,
    seed: Annotated[int, typer.Option(help="Random seed of the generator.")] = 7,
    history_days: Annotated[
        float, typer.Option("--days", help="Days of history to backfill before going live.")
    ] = 0.0,
    duration: Annotated[
        float | None,
        typer.Option(
            help="Produce this many seconds of events, commit them all, then stop "
            "(default: run until Ctrl-C)."
        ),
    ] = None,
    refresh: Annotated[float, typer.Option(help="Seconds between screen refreshes.")] = 2.0,
    serve: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve the HTTP API while running.")
    ] = True,
    host: Annotated[str, typer.Option(help="Address the HTTP API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="HTTP API port (0: free).")] = 8080,
    insecure: InsecureOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """The live demo: loads dimensions, produces impressions, clicks and conversions at
    --rate into the log, processes them, and shows a live status and the headline
    metrics. Ctrl-C stops cleanly; running it again continues where it stopped, with
    the same dimensions and new events."""
    from adpulse.operations.demo import run_demo

    configure_logging(verbose)
    settings = settings_for(home, config, partitions=partitions)
    with stop_on_signals() as stopping:
        done = run_demo(
            settings,
            console,
            rate=rate,
            seed=seed,
            history_days=history_days,
            duration=duration,
            refresh=refresh,
            serve_at=(host, port) if serve else None,
            insecure=insecure,
            stop=stopping.event,
        )
    console.print()  # after the live view's last line
    console.print(stopping.stopped_line(done))


# ------------------------------------------------------------------------------ bench
@app.command()
def bench(
    events: Annotated[int, typer.Option(min=10_000, help="Events in the workload.")] = 3_000_000,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions.")] = 4,
    seed: Annotated[int, typer.Option()] = 7,
    workdir: Annotated[
        Path | None, typer.Option(help="Scratch directory (default: a temporary one).")
    ] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.table,
    compare: Annotated[
        bool,
        typer.Option(
            help="Instead: on the same JSON-lines files, time the decode ceiling, a plain"
            " DuckDB batch query of the per-ad answers, and `replay` end to end."
        ),
    ] = False,
) -> None:
    """Benchmark: end-to-end events/s from bytes in the log to committed results, time per
    step, peak memory, and the same-run Polars decode ceiling of the same bytes."""
    from adpulse.operations.bench import run_bench, run_compare

    result = (run_compare if compare else run_bench)(
        events=events,
        partitions=partitions,
        seed=seed,
        workdir=workdir,
        console=err if fmt is OutputFormat.json else console,
    )
    if fmt is OutputFormat.json:
        sys.stdout.write(json.dumps(result, default=str, indent=2) + "\n")


@app.command("bench-api")
def bench_api(
    workdir: Annotated[
        Path | None,
        typer.Option(help="Data directory to build, or reuse when it holds a warehouse."),
    ] = None,
    history_events: Annotated[
        int, typer.Option(min=10_000, help="Events of history when building.")
    ] = 2_500_000,
    history_days: Annotated[float, typer.Option(min=0.01, help="Days of history.")] = 7.0,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions.")] = 4,
    seed: Annotated[int, typer.Option()] = 7,
    load_rate: Annotated[
        float, typer.Option(min=1, help="Events/s ingested during the query load.")
    ] = 20_000,
    clients: Annotated[int, typer.Option(min=1, max=1000, help="Concurrent clients.")] = 100,
    load_seconds: Annotated[float, typer.Option(min=1, max=600, help="Query load time.")] = 20,
    e2s_rate: Annotated[
        list[float] | None,
        typer.Option(help="Events/s ingested for event-to-screen; repeat for several rates."),
    ] = None,
    e2s_seconds: Annotated[float, typer.Option(min=1, max=600, help="Event-to-screen time.")] = 30,
    fmt: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.table,
) -> None:
    """Benchmark the HTTP API while the pipeline ingests: dashboard-query throughput and
    latency at N loopback clients over days of minute data, then event-to-screen latency
    (log append -> SSE update that counts it). Measures; asserts nothing."""
    from adpulse.operations.bench_api import run_bench_api

    if any(r <= 0 for r in e2s_rate or ()):
        raise UserError("--e2s-rate must be positive")
    result = run_bench_api(
        workdir=workdir,
        history_events=history_events,
        history_days=history_days,
        partitions=partitions,
        seed=seed,
        load_rate=load_rate,
        clients=clients,
        load_seconds=load_seconds,
        e2s_rates=e2s_rate or [50_000.0],
        e2s_seconds=e2s_seconds,
        console=err if fmt is OutputFormat.json else console,
    )
    if fmt is OutputFormat.json:
        sys.stdout.write(json.dumps(result, default=str, indent=2) + "\n")


@app.command("bench-server")
def bench_server(
    redis_url: Annotated[
        str, typer.Option(help="Redis for the transport (a fresh key prefix per run).")
    ] = "redis://127.0.0.1:6379/0",
    pg_url: Annotated[
        str,
        typer.Option(help="PostgreSQL server; a fresh database is created and dropped per run."),
    ] = "postgresql://postgres@127.0.0.1:5432/test",
    events: Annotated[int, typer.Option(min=10_000, help="Events in the workload.")] = 1_000_000,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions.")] = 4,
    workers: Annotated[
        list[int] | None, typer.Option(min=1, help="Worker processes; repeat for several runs.")
    ] = None,
    rate: Annotated[
        float, typer.Option(min=0, help="Events/s for the latency run (0: skip it).")
    ] = 20_000,
    latency_seconds: Annotated[float, typer.Option(min=1, max=600)] = 30,
    backlog: Annotated[
        int,
        typer.Option(
            min=0,
            help="Impressions appended before the latency run, which then runs the embedded"
            " pipeline (live, with and without live_batch_max_bytes) instead of the servers.",
        ),
    ] = 0,
    pin_cores: Annotated[
        bool,
        typer.Option(
            help="Throughput runs: N worker processes on CPUs 0..N-1 only (the embedded run"
            " on CPU 0), so that each worker has a core of its own."
        ),
    ] = False,
    seed: Annotated[int, typer.Option()] = 7,
    workdir: Annotated[Path | None, typer.Option(help="Scratch directory.")] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.table,
) -> None:
    """Benchmark server mode: events/s with the Redis Streams transport and the PostgreSQL
    warehouse for 1..N worker processes next to the embedded default on the same events,
    then p99 event-to-queryable latency at a fixed sustained rate. Needs the servers
    running; creates and drops its own database and key prefix. Measures; asserts nothing."""
    from adpulse.operations.bench_server import run_bench_server

    result = run_bench_server(
        redis_url=redis_url,
        pg_url=pg_url,
        events=events,
        partitions=partitions,
        workers=workers or [1, 2],
        rate=rate,
        latency_seconds=latency_seconds,
        backlog=backlog,
        pin_cores=pin_cores,
        seed=seed,
        workdir=workdir,
        console=err if fmt is OutputFormat.json else console,
    )
    if fmt is OutputFormat.json:
        sys.stdout.write(json.dumps(result, default=str, indent=2) + "\n")


# ----------------------------------------------------------------------------- config
# ------------------------------------------------------------------------------- keys
class KeyScopeOpt(StrEnum):
    read = "read"
    write = "write"


def _open_keys_warehouse(settings: Any, read_only: bool) -> Any:
    from adpulse.storage.warehouse import open_warehouse

    try:
        warehouse = open_warehouse(settings, read_only=read_only)
    except Exception as exc:  # a DuckDB file in use, a server away: the message says what to do
        raise UserError(str(exc)) from exc
    if not read_only:
        warehouse.create_schema()
    return warehouse


@keys_app.command("create")
def keys_create(
    scope: Annotated[
        KeyScopeOpt,
        typer.Option("--scope", help="read: API, stream, dashboard; write: the collector."),
    ],
    name: Annotated[str, typer.Option("--name", help="What the key is for.")] = "",
    home: HomeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create an API key and print it, once: only its salted hash is stored."""
    from adpulse.serving.auth import create_key

    settings = settings_for(home, config)
    with _open_keys_warehouse(settings, read_only=False) as warehouse:
        key, text = create_key(warehouse, scope.value, name)  # type: ignore[arg-type]
    err.print(f"created {key.scope} key {key.key_id}; it is shown once, keep it now:")
    sys.stdout.write(text + "\n")


@keys_app.command("list")
def keys_list(
    home: HomeOpt = None,
    config: ConfigOpt = None,
    fmt: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.table,
) -> None:
    """The API keys: id, name, scope, created, revoked (never a secret)."""
    from adpulse.serving.auth import keys_frame, list_keys

    settings = settings_for(home, config)
    with _open_keys_warehouse(settings, read_only=True) as warehouse:
        empty = "no API keys yet (create one: adpulse keys create --scope read)"
        _print_frame(keys_frame(list_keys(warehouse)), fmt, empty)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see `adpulse keys list`).")],
    home: HomeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke an API key: servers refuse it within auth_refresh_seconds."""
    from adpulse.serving.auth import revoke_key

    settings = settings_for(home, config)
    with _open_keys_warehouse(settings, read_only=False) as warehouse:
        if not revoke_key(warehouse, key_id):
            raise UserError(f"no active key {key_id!r}; see `adpulse keys list`")
    console.print(f"revoked key {key_id}")


@config_app.command("show")
def config_show(home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Print the effective settings (secrets masked) and where they come from."""
    settings = settings_for(home, config)
    console.print_json(json.dumps(settings.masked(), default=str))


# ---------------------------------------------------------------------------- helpers
def _parse_time(value: str, option: str) -> datetime:
    from adpulse.contracts import parse_time_argument

    try:
        return parse_time_argument(value, option)
    except ValueError as exc:
        raise UserError(str(exc)) from None


if __name__ == "__main__":
    main()


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
