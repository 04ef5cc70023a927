"""``adpulse reprocess``: recompute history on Apache Spark and swap it into the warehouse
(see docs/reprocess.md)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console

from adpulse.cli.options import ConfigOpt, HomeOpt
from adpulse.cli.runtime import UserError, configure_logging, settings_for

console = Console(stderr=True)


def reprocess(
    source: Annotated[
        str,
        typer.Argument(
            help="Raw events: an embedded log directory, a directory of STREAM.jsonl[.gz]"
            " files (as `adpulse replay` reads them), or Parquet (stream, payload[, partition,"
            " arrival]); default: the log of HOME."
        ),
    ] = "",
    out: Annotated[
        str, typer.Option(help="Where the Parquet outputs go (default: HOME/reprocess).")
    ] = "",
    master: Annotated[
        str,
        typer.Option(
            help="Spark master, e.g. local[2] or spark://host:7077 (default: what"
            " spark-submit or the cluster sets, else local[*])."
        ),
    ] = "",
    input_format: Annotated[
        str, typer.Option("--input-format", help="auto, log, jsonl or parquet.")
    ] = "auto",
    start: Annotated[
        str | None,
        typer.Option("--from", help="Replace event times from here (UTC, whole minute)."),
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="... up to here, exclusive (UTC, whole minute).")
    ] = None,
    lookback_seconds: Annotated[
        int | None,
        typer.Option(help="Attribution lookback for this run (default: the setting)."),
    ] = None,
    now: Annotated[
        str | None,
        typer.Option(help="The clock future timestamps are judged against (default: now)."),
    ] = None,
    load: Annotated[
        bool, typer.Option("--load/--no-load", help="Load the outputs into the warehouse.")
    ] = True,
    load_only: Annotated[
        bool,
        typer.Option(
            "--load-only", help="Skip Spark: load the Parquet already in --out (a cluster's)."
        ),
    ] = False,
    home: HomeOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug output.")] = False,
) -> None:
    """Recompute facts, minute rollups and dead letters from raw events on Spark (same
    rules as the stream), write them as Parquet, and replace the --from/--to range of
    the warehouse with them in one transaction."""
    from adpulse.contracts import parse_time_argument

    configure_logging(verbose)
    try:
        from adpulse.reprocess import job, run
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise UserError(
            f"adpulse reprocess needs the spark extra: pip install 'adpulse[spark]' ({exc})"
        ) from None
    overrides: dict[str, Any] = {}
    if lookback_seconds is not None:
        overrides["attribution_lookback_seconds"] = lookback_seconds
    settings = settings_for(home, config, **overrides)
    try:
        bounds = [
            None if v is None else parse_time_argument(v, name)
            for v, name in ((start, "--from"), (end, "--to"))
        ]
        clock = (
            datetime.now(UTC).replace(tzinfo=None)
            if now is None
            else parse_time_argument(now, "--now")
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    for bound in bounds:
        if bound is not None and (bound.second or bound.microsecond):
            raise UserError(f"--from/--to must be whole minutes (rollups are), got {bound}")
    if input_format not in ("auto", "log", "jsonl", "parquet"):
        raise UserError(f"--input-format: expected auto, log, jsonl or parquet, not {input_format}")
    source = source or str(settings.log_dir)
    out = out or str(settings.home / "reprocess")
    from adpulse.storage.warehouse import open_warehouse

    try:
        warehouse = open_warehouse(settings)
    except Exception as exc:
        raise UserError(str(exc)) from exc
    try:
        if load_only:
            loaded = run.load_outputs(warehouse, out, bounds[0], bounds[1])
            console.print("loaded: " + ", ".join(f"{k} {v}" for k, v in loaded.items()))
            return
        spark = run.spark_session(master or None)
        result = run.run_job(
            spark,
            source,
            out,
            job.Rules.from_settings(settings, clock),
            warehouse,
            input_format=input_format,  # type: ignore[arg-type]
            partitions=settings.partitions,
        )
        if load:
            result.loaded = run.load_outputs(warehouse, out, bounds[0], bounds[1])
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    finally:
        warehouse.close()
    summary = {
        "out": result.out_dir,
        "rows": result.rows,
        "streams": result.streams,
        "loaded": result.loaded,
        "seconds": {k: round(v, 2) for k, v in result.seconds.items()},
    }
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    for stream, c in sorted(result.streams.items()):
        console.print(
            f"{stream}: received {c.get('received', 0)}, rejected {c.get('rejected', 0)},"
            f" duplicates {c['duplicates']}, late {c['late']}"
        )
    console.print(
        f"Parquet in {result.out_dir}: " + ", ".join(f"{k} {v}" for k, v in result.rows.items())
    )
    if load:
        console.print("loaded: " + ", ".join(f"{k} {v}" for k, v in result.loaded.items()))
