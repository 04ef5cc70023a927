"""How the in-process store holds its rollup rows: compactly, read back exactly.

Where the bytes went (``benchmarks/serving_store_bytes.py --rate 5000``, the demo's
generated data): ~16,500 rollup rows a minute (one per minute, ad, campaign, platform
and location with traffic), ~90 bytes each as delivered (:data:`.base.LIVE_ROLLUPS`):
the minute, ``ad_id`` and five measures 8 bytes each, ``revenue`` 16 (a 128-bit
decimal), three text columns ~30 (16-byte views, longer text in buffers), and
``latency_sum_seconds``, always 0 in a store. Conversions are a few hundred a minute:
about 2 % of the bytes. Held here instead:

- ``key``: the rollup key (ad, campaign, platform, location) as a ``UInt32`` id into a
  :class:`KeyDictionary`: the same few thousand keys come back every minute;
- each count in the smallest integer type that holds a part's values (``Int8`` mostly),
  ``revenue`` as ``Int32`` or ``Int64`` ten-thousandths (the decimal's scale: exact)
  when they fit (else the decimal); ``latency_sum_seconds`` not at all;

about 20 bytes a row (the minute 8, the key 4, the measures 1 to 4 each). Sums are always
taken in the delivered types (:func:`widen` first): Polars sums an ``Int32`` column in
``Int32``, wrapping around on overflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Final

import polars as pl

from adpulse.metrics import MEASURES
from adpulse.processor.state import own_strings
from adpulse.serving.store.base import KEY_COLUMNS, LIVE_ROLLUPS, ServingStoreError

#: The counts among the measures (the rest is ``revenue``).
COUNTS: Final = tuple(m.name for m in MEASURES if m.dtype == pl.Int64)
REVENUE: Final = "revenue"
_REVENUE_TYPE: Final = LIVE_ROLLUPS[REVENUE]
_SCALE: Final = 10**_REVENUE_TYPE.scale  # type: ignore[attr-defined]
#: One ten-thousandth: what an ``Int64`` revenue counts.
_UNIT: Final = Decimal(1).scaleb(-_REVENUE_TYPE.scale)  # type: ignore[attr-defined]
#: The integer types a held count may take, smallest first (most counts of a key in a
#: minute are single digits), and those of revenue in ten-thousandths.
_COUNT_TYPES: Final = ((pl.Int8(), 8), (pl.Int16(), 16), (pl.Int32(), 32))
_REVENUE_TYPES: Final = ((pl.Int32(), 32), (pl.Int64(), 64))
#: A held part: the minute, the key's id and the measures (types per part, see above).
HELD: Final = {
    "minute": LIVE_ROLLUPS["minute"],
    "key": pl.UInt32(),
    **{m.name: m.dtype for m in MEASURES},
}
#: The dictionary's columns.
KEYS: Final = {"key": pl.UInt32(), **{c: LIVE_ROLLUPS[c] for c in KEY_COLUMNS}}
_MAX_KEYS: Final = 2**32 - 1


def _smallest(values: pl.Series, types: Sequence[tuple[pl.DataType, int]]) -> pl.DataType | None:
    """The first of the signed integer ``types`` (with their bits) that holds every one
    of ``values``."""
    low, high = values.min(), values.max()
    for dtype, bits in types:
        if low is None or (-(2 ** (bits - 1)) <= low and high < 2 ** (bits - 1)):  # type: ignore[operator]
            return dtype
    return None


def shrink(part: pl.DataFrame) -> pl.DataFrame:
    """``part`` (per :data:`HELD`, measures in any held type) with each count in the
    smallest of ``Int8``, ``Int16`` or ``Int32`` that holds its values, and revenue in
    ``Int32`` or ``Int64`` ten-thousandths; a column with a value too large for those
    stays as it is."""
    narrow = []
    for name in COUNTS:
        dtype = _smallest(part[name], _COUNT_TYPES)
        if dtype is not None and dtype != part[name].dtype:
            narrow.append(pl.col(name).cast(dtype))
    revenue = part[REVENUE]
    if not revenue.dtype.is_integer():
        units = (revenue * _SCALE).cast(pl.Int64, strict=False)
        if units.null_count() == revenue.null_count():  # none overflowed
            revenue = units
    dtype = _smallest(revenue, _REVENUE_TYPES) if revenue.dtype.is_integer() else None
    if dtype is not None and dtype != part[REVENUE].dtype:
        narrow.append(pl.lit(revenue.cast(dtype)).alias(REVENUE))
    return part.with_columns(narrow) if narrow else part


def widen(part: pl.DataFrame) -> pl.DataFrame:
    """``part`` with its measures in the delivered types (Int64, Decimal(38, 4))."""
    revenue = pl.col(REVENUE)
    if part[REVENUE].dtype.is_integer():
        revenue = (revenue.cast(_REVENUE_TYPE) * _UNIT).cast(_REVENUE_TYPE)
    return part.with_columns(*(pl.col(c).cast(pl.Int64) for c in COUNTS), revenue.alias(REVENUE))


def sum_parts(parts: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """One held part: ``parts`` summed per minute and key, then :func:`shrink`-ed."""
    summed = (
        pl.concat([widen(p) for p in parts])
        .group_by("minute", "key")
        .agg(m.sum_expr() for m in MEASURES)
        .select(list(HELD))
    )
    return shrink(summed)


class KeyDictionary:
    """Rollup keys (ad, campaign, platform, location; NULLs included) and their ids.

    Ids are handed out in order and never reused until :meth:`keep_only` renumbers the
    keys still in use (when at most half of those known are), so the dictionary stays
    bounded by the keys of the window, not by every key ever seen."""

    def __init__(self) -> None:
        #: One row per key; replaced, never changed in place (readers keep a reference).
        self.keys = pl.DataFrame(schema=KEYS)

    def encode(self, rollups: pl.DataFrame) -> pl.DataFrame:
        """``rollups`` (per :data:`.base.LIVE_ROLLUPS`) as a held part (:data:`HELD`,
        measures as delivered), adding the keys not yet known."""
        rows = rollups.select(*KEY_COLUMNS, "minute", *(m.name for m in MEASURES))
        ids = rows.join(self.keys, on=list(KEY_COLUMNS), how="left", nulls_equal=True)
        new = ids.filter(pl.col("key").is_null()).select(KEY_COLUMNS).unique()
        if new.height:
            first = self.keys.height
            if first + new.height > _MAX_KEYS:
                raise ServingStoreError(
                    f"the in-process store knows {first:,} rollup keys, the most it can hold;"
                    " it is rebuilt from the warehouse"
                )
            added = own_strings(new).with_row_index("key", offset=first).cast(KEYS)  # type: ignore[arg-type]
            self.keys = pl.concat([self.keys, added])
            ids = rows.join(self.keys, on=list(KEY_COLUMNS), how="left", nulls_equal=True)
        return ids.select(list(HELD))

    def decode(self, part: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
        """``part`` with the key ``columns`` of each row's key."""
        if not columns:
            return part
        return part.join(self.keys.select("key", *columns), on="key", how="left")

    def keep_only(self, parts: list[pl.DataFrame]) -> list[pl.DataFrame]:
        """``parts`` with their keys renumbered 0..n-1 and the dictionary cut to those
        keys, when it knows more than twice as many (and 1,024 more) as they use;
        otherwise ``parts`` as they are. The cost is amortized over the keys added."""
        used = pl.concat([p.select("key") for p in parts]).unique() if parts else None
        in_use = 0 if used is None else used.height
        if self.keys.height <= 2 * in_use + 1024:
            return parts
        kept = own_strings(
            self.keys.join(used, on="key", how="semi") if used is not None else self.keys.clear()
        ).sort("key")
        renumbered = pl.Series("key", range(kept.height), dtype=pl.UInt32)
        old = kept["key"]
        self.keys = kept.with_columns(renumbered)
        return [
            p.with_columns(pl.col("key").replace_strict(old, renumbered, return_dtype=pl.UInt32))
            for p in parts
        ]
