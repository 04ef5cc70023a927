"""``adpulse generate``, ``replay`` and ``demo``: events made or read from files, pushed
through the pipeline."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from adpulse.cli.admin_commands import load_dim_file
from adpulse.cli.options import (
    ConfigOpt,
    HomeOpt,
    InsecureOpt,
    PartitionsOpt,
    VerboseOpt,
    parse_time,
)
from adpulse.cli.output import console
from adpulse.cli.runtime import (
    UserError,
    Worker,
    configure_logging,
    open_log,
    open_runtime,
    processor_for,
    settings_for,
)
from adpulse.cli.stopping import StopRequest, stop_on_signals


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

    first = parse_time(start, "--start") if start else None
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
        total_bytes = sum(path.stat().st_size for path in found.values())
    except (OSError, ValueError, EOFError) as exc:  # unreadable, bad gzip, ambiguous files
        raise UserError(f"cannot read {directory}: {exc}") from exc
    if not found:
        raise UserError(
            f"{directory} holds no impressions/clicks/conversions .jsonl or .jsonl.gz file"
        )
    settings = settings_for(home, config, partitions=partitions)
    with stop_on_signals() as stopping:
        _replay(directory, settings, rate, load_dims, produce_only, total_bytes, stopping)


def _replay(
    directory: Path,
    settings: Any,
    rate: float | None,
    load_dims: bool,
    produce_only: bool,
    total_bytes: int,
    stopping: StopRequest,
) -> None:
    """``replay``'s work; a stop signal ends appending and committing between batches."""

    if produce_only:
        # No warehouse here: a separate `adpulse process` holds it.
        transport = open_log(settings)
        try:
            counts = _replay_with_progress(
                directory, transport.producer(), settings, rate, total_bytes, stopping.event
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
                    load_dim_file(rt.warehouse, directory / name, None)
        processor = processor_for(rt)
        committed = [0]

        def on_batch(report: Any) -> None:
            committed[0] += report.records

        stop = threading.Event()
        worker = Worker(processor.run, "processor", stop, on_batch=on_batch, bulk=True)
        worker.start()
        try:
            counts = _replay_with_progress(
                directory, rt.transport.producer(), settings, rate, total_bytes, stopping.event
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
                    f"appended {sum(counts.values()):,} records to the log (the files were"
                    f" not all read), committed {committed[0]:,}; `adpulse process`"
                    " commits the rest"
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
    total_bytes: int,
    stop: threading.Event | None = None,
) -> dict[Any, int]:
    """Replay with a progress bar over the ``total_bytes`` bytes of the files."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from adpulse.sources.producer import replay_directory

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[records]:,} records"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("replaying", total=total_bytes, records=0)
        counts = replay_directory(
            directory,
            producer,
            settings.partitions,
            rate=rate,
            on_progress=lambda n, done: progress.update(task, completed=done, records=n),
            stop=stop,
        )
        producer.flush()
    return counts


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
