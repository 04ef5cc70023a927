"""The options and arguments several ``adpulse`` commands share, parsed one way."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from adpulse.cli.runtime import UserError

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


FormatOpt = Annotated[OutputFormat, typer.Option("--format")]


def parse_time(value: str, option: str) -> datetime:
    """``value`` of ``option`` as a UTC time; a :class:`UserError` (exit 2) if unreadable."""
    from adpulse.contracts import parse_time_argument

    try:
        return parse_time_argument(value, option)
    except ValueError as exc:
        raise UserError(str(exc)) from None
