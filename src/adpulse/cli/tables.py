"""Query results as terminal tables that fit 80 columns without cutting a number.

Only the ``--format table`` output is shaped here; json and csv print the frame as it is.
A value is formatted by what its column holds (read from the column's name): counts get
thousands separators, rates become percentages, money gets 2 decimals, latencies (seconds)
read as minutes and hours. Numbers never wrap and are never cut; names fold instead. When
a table still cannot fit, its headers get shorter labels, then a result of few rows is
turned on its side (one line per column), so the numbers stay whole.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import polars as pl
from rich import box
from rich.console import Console
from rich.table import Table

RATES = frozenset({"ctr", "conversion_rate", "previous_rate", "latest_rate"})
RATE_CHANGES = frozenset({"change"})  # a difference of two rates: percentage points
MONEY = frozenset({"revenue", "revenue_per_conversion"})
LATENCIES = frozenset({"latency_mean", "latency_p50", "latency_p90"})
IDS = frozenset({"ad_id", "user_id", "partition"})  # numbers that are names, not counts
TURN_AT_MOST = 8  # rows of a result that may be shown on its side (one column per row)

# Shorter header labels, used only when the full names do not fit.
SHORT = {
    "impressions": "impr.",
    "conversions": "conv.",
    "attributed_conversions": "attrib. conv.",
    "conversion_rate": "conv. rate",
    "revenue_per_conversion": "rev. per conv.",
    "previous_clicks": "prev. clicks",
    "previous_conversions": "prev. conv.",
    "previous_rate": "prev. rate",
    "latest_conversions": "latest conv.",
    "duplicates": "dupl.",
}


def format_value(column: str, value: Any) -> str:
    """One cell as a person reads it; ``column`` says what the number means."""
    if value is None:
        return "—"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return str(value)
    if column in RATES:
        return f"{float(value) * 100:,.2f} %"
    if column in RATE_CHANGES:
        return f"{float(value) * 100:+,.2f} pp"
    if column in MONEY:
        return f"{float(value):,.2f}"
    if column in LATENCIES:
        return format_seconds(float(value))
    if isinstance(value, int):
        return str(value) if column in IDS else f"{value:,}"
    return f"{float(value):,.6g}"


def format_seconds(seconds: float) -> str:
    """A duration in its two largest units: ``42 s``, ``12 min 5 s``, ``1 h 29 min``."""
    total = round(seconds)
    if total < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def label(column: str, short: bool = False) -> str:
    """A header: words on their own lines, so a long name costs the width of one word."""
    name = SHORT.get(column, column) if short else column
    return name.replace("_", "\n").replace(" ", "\n")


NAME_MIN = 12  # a folded name column gets at least this many characters


def _words(text: str) -> int:
    return max((len(word) for word in text.split()), default=0)


def _table(frame: pl.DataFrame, short: bool, pad: int = 1) -> tuple[Table, int]:
    """The table and the width it needs with every number (and header word) whole."""
    table = Table(box=box.SIMPLE_HEAD, padding=(0, pad), pad_edge=False, show_edge=False)
    cells = {name: [format_value(name, v) for v in frame[name]] for name in frame.columns}
    needed = 0
    for name, column in cells.items():
        header = label(name, short)
        if frame[name].dtype.is_numeric():
            width = max(_words(header), *(len(cell) for cell in column))
            table.add_column(header, justify="right", no_wrap=True, min_width=width)
        else:
            width = min(NAME_MIN, max(_words(header), *(len(cell) for cell in column)))
            table.add_column(header, overflow="fold")
        needed += width
    for row in zip(*cells.values(), strict=True):
        table.add_row(*row)
    return table, needed + _chrome(len(cells), pad)


def _chrome(columns: int, pad: int = 1) -> int:
    """Separators and padding of a SIMPLE_HEAD table without edges or edge padding."""
    return (2 * pad + 1) * (columns - 1)


def _turned(frame: pl.DataFrame) -> tuple[Table, int]:
    """Few rows on their side: one line per column, one value column per row."""
    key = frame.columns[0]
    many = frame.height > 1  # one row: no header, the names say it all
    table = Table(
        box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False, show_header=many
    )
    columns = frame.columns[1:] if many else frame.columns
    names = [name.replace("_", " ") for name in columns]
    table.add_column("", overflow="fold")
    needed = min(NAME_MIN, max(len(name) for name in names))
    cells = {name: [format_value(name, v) for v in frame[name]] for name in frame.columns}
    for i in range(frame.height):
        heading = cells[key][i] if many else ""
        width = max(len(heading), *(len(cells[name][i]) for name in columns))
        table.add_column(heading, justify="right", no_wrap=True, min_width=width)
        needed += width
    for name, shown in zip(columns, names, strict=True):
        table.add_row(shown, *(cells[name]))
    return table, needed + _chrome(frame.height + 1)


def frame_table(frame: pl.DataFrame, width: int) -> Table:
    """The table of ``frame`` that fits ``width``: full labels, short ones, closer
    columns, or turned on its side."""
    if frame.height == 1:
        return _turned(frame)[0]
    for short, pad in ((False, 1), (True, 1), (True, 0)):
        table, needed = _table(frame, short, pad)
        if needed <= width:
            return table
    if frame.height <= TURN_AT_MOST:
        turned, needed = _turned(frame)
        if needed <= width:
            return turned
    return _table(frame, short=True, pad=0)[0]  # the terminal is too narrow for anything whole


def print_frame(frame: pl.DataFrame, console: Console, empty: str = "no rows") -> None:
    """Print ``frame`` as a table, or the one line ``empty`` saying why there is none."""
    if frame.height == 0:
        console.print(empty, markup=False, highlight=False)
        return
    console.print(frame_table(frame, console.width), crop=False)  # too narrow: wrap, never cut
