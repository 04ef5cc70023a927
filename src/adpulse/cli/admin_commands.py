"""``adpulse dims``, ``keys`` and ``config``: what an operator keeps in the warehouse and
the settings (dimension tables, API keys, the effective configuration)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from adpulse.cli.options import ConfigOpt, FormatOpt, HomeOpt, OutputFormat, parse_time
from adpulse.cli.output import console, err, print_frame
from adpulse.cli.runtime import UserError, open_runtime, settings_for

dims_app = typer.Typer(help="Campaign and user dimensions (slowly changing, SCD type 2).")
config_app = typer.Typer(help="Show the effective configuration.")
keys_app = typer.Typer(
    help="API keys: read keys for the query API and dashboard, write keys for the collector."
)


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
    when = parse_time(effective_from, "--effective-from") if effective_from else None
    with open_runtime(settings) as rt:
        for path in files:
            load_dim_file(rt.warehouse, path, when)


def load_dim_file(warehouse: Any, path: Path, when: datetime | None) -> None:
    """Load one dimension CSV into ``warehouse`` as of ``when`` (default: now) and say
    what changed; a :class:`UserError` (exit 2) for an unreadable or invalid file."""
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
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """The API keys: id, name, scope, created, revoked (never a secret)."""
    from adpulse.serving.auth import keys_frame, list_keys

    settings = settings_for(home, config)
    with _open_keys_warehouse(settings, read_only=True) as warehouse:
        empty = "no API keys yet (create one: adpulse keys create --scope read)"
        print_frame(keys_frame(list_keys(warehouse)), fmt, empty)


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
