"""``adpulse process``: the processor on its own, or ``--workers N`` supervised worker
processes sharing the partitions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from adpulse.cli.options import ConfigOpt, HomeOpt, PartitionsOpt, VerboseOpt
from adpulse.cli.output import console
from adpulse.cli.runtime import (
    Runtime,
    UserError,
    configure_logging,
    open_runtime,
    partition_worker_for,
    processor_for,
    settings_for,
)
from adpulse.cli.stopping import stop_on_signals


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
