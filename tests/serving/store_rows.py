"""Rows for the serving-store tests: live rollups, conversions and deltas built by hand."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import polars as pl

from adpulse.serving.store import LiveDelta, LiveRows
from adpulse.serving.store.base import LIVE_CONVERSIONS, LIVE_ROLLUPS
from adpulse.storage.warehouse.schema import CONVERSION_REATTRIBUTIONS

T0 = datetime(2023, 9, 1, 12, 0)


def rollups(*rows: tuple[object, ...]) -> pl.DataFrame:
    """Rows of (minute, ad_id, campaign, platform, location, impressions, clicks,
    conversions, attributed, revenue text)."""
    return pl.DataFrame(
        [(*r[:9], Decimal(str(r[9])), 0.0) for r in rows],
        schema=LIVE_ROLLUPS,
        orient="row",
    )


def conversions(*rows: tuple[object, ...]) -> pl.DataFrame:
    """Rows of the live conversions table, in its column order."""
    return pl.DataFrame(list(rows), schema=LIVE_CONVERSIONS, orient="row")


def no_reattributions() -> pl.DataFrame:
    """An empty re-attributions frame."""
    return pl.DataFrame(schema=CONVERSION_REATTRIBUTIONS)


def delta(r: pl.DataFrame, c: pl.DataFrame | None = None) -> LiveDelta:
    """A store delta of rollups ``r`` and conversions ``c`` (default none)."""
    c = conversions() if c is None else c
    return LiveDelta(LiveRows(r, c), no_reattributions())
