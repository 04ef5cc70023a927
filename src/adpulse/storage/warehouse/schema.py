"""The warehouse schema, shared by every warehouse backend.

Column lists here are the contract between the processor (which builds Polars frames
with exactly these columns, in this order) and the warehouses (which create and fill the
tables). Timestamps are UTC, stored without time zone, microsecond precision.
"""

from __future__ import annotations

from typing import Final

import polars as pl

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
    "revenue": pl.Decimal(18, 4),
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
    "revenue": pl.Decimal(18, 4),
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
    return df.select(
        [
            (pl.col(name) if name in df.columns else pl.lit(None)).cast(dtype).alias(name)
            for name, dtype in schema.items()
        ]
    )
