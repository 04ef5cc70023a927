"""Step 4, enrich: join campaign and user dimensions as of each event's time (SCD2).

Nearly every key has a single version, joined with a plain hash join; only the events of
keys with several versions take the as-of join on ``valid_from``. Unknown ads or users
keep their events, with NULL dimension fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from adpulse.contracts import age_band_expr

CAMPAIGN_FIELDS = ("campaign", "product")
USER_FIELDS = ("gender", "age", "age_band", "interests")


@dataclass(frozen=True, slots=True)
class DimensionLookup:
    """One dimension prepared for joining: single-version keys and versioned keys."""

    key: str
    fields: tuple[str, ...]
    single: pl.DataFrame  # key + fields, one row per key
    versioned: pl.DataFrame  # key + valid_from + fields, sorted by valid_from
    known: pl.DataFrame  # every key (for the unknown counts)

    @classmethod
    def build(cls, versions: pl.DataFrame, key: str, fields: tuple[str, ...]) -> DimensionLookup:
        if "age" in versions.columns:
            versions = versions.with_columns(age_band=age_band_expr(pl.col("age")))
        counts = versions.group_by(key).len("_n")
        with_n = versions.join(counts, on=key)
        single = with_n.filter(pl.col("_n") == 1).select(key, *fields)
        versioned = (
            with_n.filter(pl.col("_n") > 1).select(key, "valid_from", *fields).sort("valid_from")
        )
        return cls(key, fields, single, versioned, versions.select(key).unique())

    @classmethod
    def empty(
        cls, key: str, key_type: pl.DataType, fields: dict[str, pl.DataType]
    ) -> DimensionLookup:
        schema = {key: key_type, **fields}
        return cls(
            key,
            tuple(fields),
            pl.DataFrame(schema=schema),
            pl.DataFrame(schema={key: key_type, "valid_from": pl.Datetime("us"), **fields}),
            pl.DataFrame(schema={key: key_type}),
        )


def join_dimension(rows: pl.DataFrame, dim: DimensionLookup) -> pl.DataFrame:
    """Add ``dim.fields`` to ``rows`` as of ``event_time`` (NULL when the key is unknown)."""
    if dim.versioned.height == 0:
        return rows.join(dim.single, on=dim.key, how="left", maintain_order="left")
    multi_keys = dim.versioned[dim.key].unique()
    is_multi = pl.col(dim.key).is_in(multi_keys.implode())
    plain = rows.filter(~is_multi).join(dim.single, on=dim.key, how="left", maintain_order="left")
    multi = rows.filter(is_multi)
    if multi.height == 0:
        return plain
    asof = (
        multi.with_row_index("_order")
        .sort("event_time")
        .join_asof(
            dim.versioned,
            left_on="event_time",
            right_on="valid_from",
            by=dim.key,
            strategy="backward",
            check_sortedness=False,
        )
        .sort("_order")
        .drop("_order", "valid_from")
    )
    return pl.concat([plain, asof.select(plain.columns)])


def enrich(rows: pl.DataFrame, campaigns: DimensionLookup, users: DimensionLookup) -> pl.DataFrame:
    """Join both dimensions; ``_unknown_ad``/``_unknown_user`` flag keys with no version."""
    return join_dimension(join_dimension(rows, campaigns), users).with_columns(
        _unknown_ad=~pl.col("ad_id").is_in(campaigns.known["ad_id"].implode()),
        _unknown_user=~pl.col("user_id").is_in(users.known["user_id"].implode()),
    )
