"""The warehouse schema, shared by every warehouse backend.

Column lists here are the contract between the processor (which builds Polars frames
with exactly these columns, in this order) and the warehouses (which create and fill the
tables). Timestamps are UTC, stored without time zone, microsecond precision.
"""

from __future__ import annotations

import functools
from typing import Final

import polars as pl

# --- money ------------------------------------------------------------------------------
#: Largest revenue one conversion may carry; above it the record is a dead letter
#: (``revenue_out_of_range``). The bound and the types below hold together so that no
#: record and no sum of accepted records can overflow anywhere:
#:
#: - one record: ``0 <= revenue <= 1e9``, kept as :data:`REVENUE` = ``DECIMAL(18,4)``
#:   (values below 1e14): five orders of magnitude to spare. JSON numbers decode as
#:   float64 (15-16 significant digits); 1e9 with 4 decimals has 13, so rounding to 4
#:   decimals gives back exactly the decimal that was written.
#: - sums (rollups, query results, the serving stores): :data:`REVENUE_SUM` =
#:   ``DECIMAL(38,4)`` (values below 1e34; Polars holds it in 128 bits). A sum of
#:   accepted records reaches 1e34 only after 1e25 records at the maximum: at a million
#:   events a second, after 300 billion years. PostgreSQL's NUMERIC and DuckDB's
#:   DECIMAL(38,4) sums have the same bound or a larger one.
#: - the Redis serving store adds in Lua, whose numbers are doubles (integers exact up
#:   to 2**53, about 9e15): it keeps a revenue sum as two integers, whole multiples of
#:   1e8 and the rest in ten-thousandths (see ``serving/store/redis.py``); that is exact
#:   up to 9e23, over 900 million million records at the maximum.
MAX_REVENUE: Final = 1_000_000_000
#: One conversion's revenue (facts, attribution state).
REVENUE: Final = pl.Decimal(18, 4)
#: A sum of revenues (rollups, every query and serving-store result).
REVENUE_SUM: Final = pl.Decimal(38, 4)

# --- dimensions (SCD type 2) -----------------------------------------------------------
#: valid_from is inclusive, valid_to exclusive; valid_to NULL means "current version".
#: The first version of a key is valid from EPOCH so that history joins it.
DIM_CAMPAIGNS: Final = {
    "ad_id": pl.Int64(),
    "campaign": pl.String(),
    "product": pl.String(),
    "target_start_date": pl.Date(),
    "target_end_date": pl.Date(),
    "valid_from": pl.Datetime("us"),
    "valid_to": pl.Datetime("us"),
    "version": pl.Int32(),
    "loaded_at": pl.Datetime("us"),
}
DIM_USERS: Final = {
    "user_id": pl.String(),
    "age": pl.Int32(),
    "gender": pl.String(),
    "interests": pl.String(),  # ';'-separated, as in the source CSV
    "valid_from": pl.Datetime("us"),
    "valid_to": pl.Datetime("us"),
    "version": pl.Int32(),
    "loaded_at": pl.Datetime("us"),
}

# --- denormalized facts ----------------------------------------------------------------
_ENRICHMENT: Final = {
    "campaign": pl.String(),
    "product": pl.String(),
    "gender": pl.String(),
    "age": pl.Int32(),
    "age_band": pl.String(),
    "interests": pl.String(),
}
_BOOKKEEPING: Final = {
    "is_late": pl.Boolean(),
    "partition": pl.Int32(),
    "processed_at": pl.Datetime("us"),
}
FACT_IMPRESSIONS: Final = {
    "event_id": pl.String(),
    "event_time": pl.Datetime("us"),
    "ad_id": pl.Int64(),
    "user_id": pl.String(),
    "platform": pl.String(),
    "location": pl.String(),
    **_ENRICHMENT,
    **_BOOKKEEPING,
}
FACT_CLICKS: Final = dict(FACT_IMPRESSIONS)
#: A conversion carries its attributed click (null when none) and the click's platform
#: and location, so conversions filter by platform/location like clicks do.
FACT_CONVERSIONS: Final = {
    "event_id": pl.String(),
    "event_time": pl.Datetime("us"),
    "ad_id": pl.Int64(),
    "user_id": pl.String(),
    "product_id": pl.String(),
    "revenue": REVENUE,
    "click_event_id": pl.String(),
    "click_time": pl.Datetime("us"),
    "latency_seconds": pl.Float64(),
    "platform": pl.String(),
    "location": pl.String(),
    **_ENRICHMENT,
    **_BOOKKEEPING,
}
#: A late click can change the attribution of an already committed conversion.
CONVERSION_REATTRIBUTIONS: Final = {
    "event_id": pl.String(),
    "click_event_id": pl.String(),
    "click_time": pl.Datetime("us"),
    "latency_seconds": pl.Float64(),
    "platform": pl.String(),
    "location": pl.String(),
}

# --- minute rollups --------------------------------------------------------------------
#: Append-only partial aggregates: each batch appends its own rows (a re-attribution
#: appends a negative row for the old attribution and a positive one for the new), and
#: readers SUM over the key. Key columns may be NULL (unknown ad, unattributed).
#: Audience columns (gender, age band, interests) are not in the key, which would make
#: it nearly unique per event: queries filtering on them read the facts instead.
ROLLUP_KEY: Final = {
    "minute": pl.Datetime("us"),
    "ad_id": pl.Int64(),
    "campaign": pl.String(),
    "platform": pl.String(),
    "location": pl.String(),
}
ROLLUP_MEASURES: Final = {
    "impressions": pl.Int64(),
    "clicks": pl.Int64(),
    "conversions": pl.Int64(),
    "attributed_conversions": pl.Int64(),
    "revenue": REVENUE_SUM,
    "latency_sum_seconds": pl.Float64(),
}
ROLLUP_MINUTE: Final = {**ROLLUP_KEY, **ROLLUP_MEASURES}

# --- operations ------------------------------------------------------------------------
DEAD_LETTERS: Final = {
    "stream": pl.String(),
    "partition": pl.Int32(),
    "source_offset": pl.String(),  # offset of the chunk the record came in
    "record_index": pl.Int32(),  # position of the record in that chunk
    "reason": pl.String(),
    "detail": pl.String(),
    "payload": pl.Binary(),
    "received_at": pl.Datetime("us"),
}
#: Dead-letter text columns: :func:`storable_text` makes them storable on every backend.
DEAD_LETTER_TEXT: Final = ("stream", "source_offset", "reason", "detail")
#: Per batch, stream and partition: received = accepted + rejected, always;
#: accepted = unique + duplicates.
INGEST_STATS: Final = {
    "batch_id": pl.Int64(),
    "stream": pl.String(),
    "partition": pl.Int32(),
    "received": pl.Int64(),
    "accepted": pl.Int64(),
    "rejected": pl.Int64(),
    "duplicates": pl.Int64(),
    "late": pl.Int64(),
    "unknown_ad": pl.Int64(),
    "unknown_user": pl.Int64(),
    "min_event_time": pl.Datetime("us"),
    "max_event_time": pl.Datetime("us"),
    "committed_at": pl.Datetime("us"),
}
#: The counters of ``ingest_stats``, per batch, stream and partition: summed by readers.
STREAM_COUNTERS: Final = (
    "received",
    "accepted",
    "rejected",
    "duplicates",
    "late",
    "unknown_ad",
    "unknown_user",
)
CHECKPOINTS: Final = {
    "stream": pl.String(),
    "partition": pl.Int32(),
    "offset": pl.String(),
    "updated_at": pl.Datetime("us"),
}
#: Per stream and partition: lateness of a click is judged against the clicks watermark,
#: and a conversion's attribution closes when the clicks watermark has passed it.
WATERMARKS: Final = {
    "stream": pl.String(),
    "partition": pl.Int32(),
    "watermark": pl.Datetime("us"),
    "max_event_time": pl.Datetime("us"),
    "updated_at": pl.Datetime("us"),
}

FACT_TABLES: Final = {
    "fact_impressions": FACT_IMPRESSIONS,
    "fact_clicks": FACT_CLICKS,
    "fact_conversions": FACT_CONVERSIONS,
}
ALL_TABLES: Final = {
    "dim_campaigns": DIM_CAMPAIGNS,
    "dim_users": DIM_USERS,
    **FACT_TABLES,
    "rollup_minute": ROLLUP_MINUTE,
    "dead_letters": DEAD_LETTERS,
    "ingest_stats": INGEST_STATS,
    "checkpoints": CHECKPOINTS,
    "watermarks": WATERMARKS,
}


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Select and cast ``df`` to exactly ``schema`` (missing columns become NULL)."""
    return df.select(_conforming(tuple(schema.items()), frozenset(df.columns)))


@functools.lru_cache(maxsize=256)
def _conforming(
    schema: tuple[tuple[str, pl.DataType], ...], present: frozenset[str]
) -> tuple[pl.Expr, ...]:
    # Built once per schema and set of columns: building ~20 expressions costs more
    # than casting a live batch's rows.
    return tuple(
        (pl.col(name) if name in present else pl.lit(None)).cast(dtype).alias(name)
        for name, dtype in schema
    )


def storable_text(text: str) -> str:
    """``text`` as every warehouse can store it: NUL (which PostgreSQL refuses in TEXT)
    written as ``\\x00``, and lone surrogates (not UTF-8) as ``\\udXXX`` escapes.

    For texts that describe a rejected record (a dead letter's detail may quote the bad
    value): storing them must never fail, and a reader still sees what was there.
    """
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def storable_text_expr(column: str) -> pl.Expr:
    """:func:`storable_text` over a Polars string column (Polars strings are UTF-8
    already, so only NUL needs escaping)."""
    return pl.col(column).str.replace_all("\x00", "\\x00", literal=True)
