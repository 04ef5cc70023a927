"""``adpulse bench``, ``bench-api`` and ``bench-server``: the benchmarks. They measure
and print; they assert nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from adpulse.cli.options import FormatOpt, OutputFormat
from adpulse.cli.output import console, err, write_json
from adpulse.cli.runtime import UserError


def _run(fmt: OutputFormat, benchmark: Callable[..., Any], **options: Any) -> None:
    """Run ``benchmark`` with ``options``: its progress and tables on standard output, or
    with ``--format json`` on standard error and its result as JSON on standard output."""
    result = benchmark(console=err if fmt is OutputFormat.json else console, **options)
    if fmt is OutputFormat.json:
        write_json(result)


def bench(
    events: Annotated[int, typer.Option(min=10_000, help="Events in the workload.")] = 3_000_000,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions.")] = 4,
    seed: Annotated[int, typer.Option()] = 7,
    workdir: Annotated[
        Path | None, typer.Option(help="Scratch directory (default: a temporary one).")
    ] = None,
    fmt: FormatOpt = OutputFormat.table,
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

    _run(
        fmt,
        run_compare if compare else run_bench,
        events=events,
        partitions=partitions,
        seed=seed,
        workdir=workdir,
    )


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
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Benchmark the HTTP API while the pipeline ingests: dashboard-query throughput and
    latency at N loopback clients over days of minute data, then event-to-screen latency
    (log append -> SSE update that counts it). Measures; asserts nothing."""
    from adpulse.operations.bench_api import run_bench_api

    if any(r <= 0 for r in e2s_rate or ()):
        raise UserError("--e2s-rate must be positive")
    _run(
        fmt,
        run_bench_api,
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
    )


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
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Benchmark server mode: events/s with the Redis Streams transport and the PostgreSQL
    warehouse for 1..N worker processes next to the embedded default on the same events,
    then p99 event-to-queryable latency at a fixed sustained rate. Needs the servers
    running; creates and drops its own database and key prefix. Measures; asserts nothing."""
    from adpulse.operations.bench_server import run_bench_server

    _run(
        fmt,
        run_bench_server,
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
    )
