"""``adpulse log check`` and ``adpulse log repair``: the embedded log's damage, found and
repaired (see :mod:`adpulse.transport.embedded_repair`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from adpulse.cli.options import ConfigOpt, HomeOpt
from adpulse.cli.runtime import UserError, settings_for
from adpulse.config import Settings

log_app = typer.Typer(help="Check and repair the embedded log (damaged or cut files).")
console = Console()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _embedded(settings: Settings) -> Path:
    url = settings.transport_url
    if url and not url.startswith("embedded://"):
        raise UserError(
            f"transport_url is {url.split('://')[0]}://...: only the embedded log is checked"
            " and repaired by adpulse (its server keeps the others)"
        )
    if not settings.log_dir.is_dir():
        raise UserError(f"there is no embedded log at {settings.log_dir} (see --home)")
    return settings.log_dir


def _checkpoints(settings: Settings, read_only: bool = True) -> dict[Any, str]:
    """The warehouse's committed checkpoints (none if there is no warehouse yet)."""
    from adpulse.storage.warehouse import open_warehouse

    if settings.warehouse_url == "" and not settings.warehouse_path.exists():
        return {}
    try:
        with open_warehouse(settings, read_only=read_only) as warehouse:
            return warehouse.load_offsets()
    except Exception as exc:  # DuckDB locked by a running processor, server down
        raise UserError(
            f"cannot read the checkpoints from the warehouse: {exc}. Stop the processor"
            " (it holds the warehouse and reads the log) and run this again"
        ) from exc


@log_app.command("check")
def check(home: HomeOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Check the embedded log: framing, segment continuity, and the warehouse's
    checkpoints against it. Exit status 0 when intact, 1 when damaged."""
    from adpulse.transport.embedded_repair import check_log

    settings = settings_for(home, config)
    log_dir = _embedded(settings)
    result = check_log(log_dir, settings.partitions, _checkpoints(settings))
    records = sum(s.records for s in result.scans.values())
    if as_json:
        sys.stdout.write(json.dumps(_check_json(result), indent=2) + "\n")
    else:
        _print_check(result, records)
    if not result.ok:
        raise typer.Exit(1)


@log_app.command("repair")
def repair(
    home: HomeOpt = None,
    config: ConfigOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Repair without asking.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Repair the embedded log: cut incomplete records, fill bytes missing inside the log
    with a lost-bytes record, and move checkpoints that point past the end or inside a
    record. Reports what is lost, per stream and partition. Stop the processor first."""
    from adpulse.storage.warehouse import open_warehouse
    from adpulse.transport.embedded_repair import check_log, commit_checkpoints, repair_log

    settings = settings_for(home, config)
    log_dir = _embedded(settings)
    checkpoints = _checkpoints(settings)
    found = check_log(log_dir, settings.partitions, checkpoints)
    if found.ok:
        console.print(f"{log_dir}: intact, nothing to repair")
        return
    if not as_json:
        _print_check(found, sum(s.records for s in found.scans.values()))
    if not yes:
        if not sys.stdin.isatty():
            raise UserError("the log is damaged (see above); run again with --yes to repair it")
        typer.confirm("Repair it as described above?", abort=True)
    repairs, moved = repair_log(log_dir, settings.partitions, checkpoints)
    if moved:
        with open_warehouse(settings) as warehouse:
            commit_checkpoints(warehouse, moved)
    after = check_log(log_dir, settings.partitions, {**checkpoints, **moved})
    totals = {
        name: sum(getattr(r, name) for r in repairs)
        for name in (
            "removed_records",
            "removed_bytes",
            "missing_bytes",
            "lost_records",
            "processed_records",
            "filled_bytes",
        )
    }
    if as_json:
        out = {
            "repairs": [_repair_json(r) for r in repairs],
            "totals": totals,
            "remaining": _check_json(after),
        }
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        for r in repairs:
            console.print(escape(r.describe()), soft_wrap=True)
        console.print(
            f"repaired: {totals['lost_records']} record(s) lost (never processed),"
            f" {totals['processed_records']} removed after processing (results kept),"
            f" {totals['removed_bytes']} bytes cut, {totals['missing_bytes']} bytes were"
            " already missing",
            soft_wrap=True,
        )
        if not after.ok:
            console.print("still damaged (not repairable here):")
            for damage in after.damages:
                console.print("  " + escape(damage.describe()), soft_wrap=True)
    if not after.ok:
        raise typer.Exit(1)


def _print_check(result: Any, records: int) -> None:
    scans = result.scans
    console.print(
        f"{result.log_dir}: {len(scans)} partitions (3 streams), {records:,} records",
        soft_wrap=True,
    )
    if result.ok:
        console.print("intact")
        return
    console.print(f"damaged: {len(result.damages)} problem(s)")
    for damage in result.damages:
        console.print("  " + escape(damage.describe()), soft_wrap=True)
    for scan in scans.values():
        extra = scan.damaged_lines - sum(d.kind == "damaged_record" for d in scan.damages)
        if extra > 0:
            console.print(
                f"  {scan.stream} partition {scan.partition}: {extra} more damaged record(s)"
            )


def _check_json(result: Any) -> dict[str, Any]:
    return {
        "log_dir": str(result.log_dir),
        "ok": result.ok,
        "damages": [
            {
                "stream": str(d.stream),
                "partition": d.partition,
                "kind": d.kind,
                "file": None if d.file is None else str(d.file),
                "offset": d.offset,
                "bytes": d.length,
                "repairable": d.repairable,
                "detail": d.detail,
            }
            for d in result.damages
        ],
        "damaged_records": {
            f"{s.stream}/{s.partition}": s.damaged_lines
            for s in result.scans.values()
            if s.damaged_lines
        },
    }


def _repair_json(r: Any) -> dict[str, Any]:
    return {
        "stream": str(r.stream),
        "partition": r.partition,
        "removed_records": r.removed_records,
        "removed_bytes": r.removed_bytes,
        "missing_bytes": r.missing_bytes,
        "lost_records": r.lost_records,
        "processed_records": r.processed_records,
        "filled_bytes": r.filled_bytes,
        "checkpoint": None if r.checkpoint is None else list(r.checkpoint),
    }
