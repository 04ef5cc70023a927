"""Where commands print: results on standard output, progress and notes on standard
error; a frame as a table, JSON or CSV."""

from __future__ import annotations

import json
import sys
from typing import Any

import polars as pl
from rich.console import Console

from adpulse.cli import tables
from adpulse.cli.options import OutputFormat

console = Console()
err = Console(stderr=True)


def write_json(value: Any) -> None:
    """``value`` on standard output as indented JSON (non-JSON values as text)."""
    sys.stdout.write(json.dumps(value, default=str, indent=2) + "\n")


def print_frame(frame: pl.DataFrame, fmt: OutputFormat, empty: str = "no rows") -> None:
    if fmt is OutputFormat.json:
        write_json(frame.to_dicts())
    elif fmt is OutputFormat.csv:
        sys.stdout.write(frame.write_csv())
    else:
        tables.print_frame(frame, console, empty)
