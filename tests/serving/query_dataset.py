"""Hand-built warehouse contents with known query results (see conftest fixtures).

Two committed batches. Batch 1 writes rollups A, B, C, F, G1, G2, H, seven conversions
and one impression fact per impression and one click fact per click of A, B, C, F and
G1 (H's five impressions have no facts: I retracts them, and the facts hold what is
left, nothing; queries with an audience filter read the facts); batch 2 re-attributes conversion ``z`` from a Mobile click (latency 600 s)
to a Web click (latency 400 s), appending the rollup retraction D and correction E, and
retracts H with I (so ad 1004 / campaign Winter sums to zero everywhere).

Rollup rows (minute, ad, campaign, platform, location, then the audience of their
facts, gender/age band/interests, which ``rollup_minute`` does not keep; then
impressions, clicks, conversions, attributed, revenue, latency sum). F = Female/25-34/
Reading;Photography, M = Male/18-24/Music;Travel, G = Male/25-34/Gaming;Cooking,
W = Male/35-44/Music, - = NULL:

    A  10:00 1001 Back-to-School Web    New York      M  100 10  2  2 100.00 1200
    B  10:01 1001 Back-to-School Mobile Los Angeles   F   50  5  1  1  30.50  300
    C  10:00 1002 Summer Sale    Mobile Los Angeles   F   40  8  3  3  75.25 1500
    D  10:00 1002 Summer Sale    Mobile Los Angeles   F    0  0 -1 -1 -25.00 -600
    E  10:00 1002 Summer Sale    Web    Los Angeles   F    0  0  1  1  25.00  400
    F  10:02 1003 Fall Fashion   Tablet San Francisco G   30  0  0  0   0.00    0
    G1 10:03 9999 -              Web    Chicago       -   10  1  0  0   0.00    0
    G2 10:03 9999 -              -      -             -    0  0  1  0   5.00    0
    H  10:04 1004 Winter         Web    Boston        W    5  0  0  0   0.00    0
    I  10:04 1004 Winter         Web    Boston        W   -5  0  0  0   0.00    0

Attributed conversions (latency s): c1 300, c2 900 (1001 Web), c3 300 (1001 Mobile),
x 500, y 400 (1002 Mobile), z 400 (1002 Web after re-attribution); g (9999) has no click.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import polars as pl

from adpulse.contracts import Stream
from adpulse.storage.warehouse import schema
from adpulse.storage.warehouse.base import BatchOutput, PartitionWatermark, Warehouse

M0 = datetime(2023, 9, 9, 10, 0)


def minute(n: int) -> datetime:
    return M0 + timedelta(minutes=n)


BTS = ("Back-to-School", "Male", "18-24", "Music;Travel")
READER = ("Female", "25-34", "Reading;Photography")

#: Rollup columns plus the audience of the facts behind each row.
_AUDIENCE = ["gender", "age_band", "interests"]
_ROLLUP_COLUMNS = [*schema.ROLLUP_KEY, *_AUDIENCE, *schema.ROLLUP_MEASURES]
ROLLUPS: dict[str, tuple[Any, ...]] = {
    "A": (minute(0), 1001, "Back-to-School", "Web", "New York", "Male", "18-24",
          "Music;Travel", 100, 10, 2, 2, "100.00", 1200.0),
    "B": (minute(1), 1001, "Back-to-School", "Mobile", "Los Angeles", *READER,
          50, 5, 1, 1, "30.50", 300.0),
    "C": (minute(0), 1002, "Summer Sale", "Mobile", "Los Angeles", *READER,
          40, 8, 3, 3, "75.25", 1500.0),
    "D": (minute(0), 1002, "Summer Sale", "Mobile", "Los Angeles", *READER,
          0, 0, -1, -1, "-25.00", -600.0),
    "E": (minute(0), 1002, "Summer Sale", "Web", "Los Angeles", *READER,
          0, 0, 1, 1, "25.00", 400.0),
    "F": (minute(2), 1003, "Fall Fashion", "Tablet", "San Francisco", "Male", "25-34",
          "Gaming;Cooking", 30, 0, 0, 0, "0", 0.0),
    "G1": (minute(3), 9999, None, "Web", "Chicago", None, None, None, 10, 1, 0, 0, "0", 0.0),
    "G2": (minute(3), 9999, None, None, None, None, None, None, 0, 0, 1, 0, "5.00", 0.0),
    "H": (minute(4), 1004, "Winter", "Web", "Boston", "Male", "35-44", "Music",
          5, 0, 0, 0, "0", 0.0),
    "I": (minute(4), 1004, "Winter", "Web", "Boston", "Male", "35-44", "Music",
          -5, 0, 0, 0, "0", 0.0),
}  # fmt: skip


def rollups(*names: str) -> pl.DataFrame:
    rows = [dict(zip(_ROLLUP_COLUMNS, ROLLUPS[n], strict=True)) for n in names]
    frame = pl.DataFrame(rows, schema_overrides={"revenue": pl.String}, orient="row")
    return schema.conform(frame, schema.ROLLUP_MINUTE)


def engagement_facts(table: str, *names: str) -> pl.DataFrame:
    """One impression (or click) fact per impression (click) counted in rollups ``names``,
    with the rollup's key and audience, spread over the seconds of its minute."""
    measure = "impressions" if table == "fact_impressions" else "clicks"
    rows = []
    for name in names:
        row = dict(zip(_ROLLUP_COLUMNS, ROLLUPS[name], strict=True))
        for i in range(row[measure]):
            rows.append(
                {
                    "event_id": f"{name}-{measure}-{i}",
                    "event_time": row["minute"] + timedelta(seconds=i % 60),
                    "user_id": "U1",
                    "partition": 0,
                    **{k: row[k] for k in ("ad_id", "campaign", "platform", "location")},
                    **{k: row[k] for k in _AUDIENCE},
                }
            )
    columns = schema.FACT_TABLES[table]
    return schema.conform(pl.DataFrame(rows, schema=columns, strict=False), columns)


def conversion(
    event_id: str,
    at: datetime,
    ad_id: int,
    revenue: str,
    latency: float | None,
    platform: str | None,
    location: str | None,
    campaign: str | None,
    gender: str | None,
    age_band: str | None,
    interests: str | None,
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_time": at,
        "ad_id": ad_id,
        "user_id": "U1",
        "product_id": "P1",
        "revenue": revenue,
        "click_event_id": None if latency is None else f"click-{event_id}",
        "click_time": None if latency is None else at - timedelta(seconds=latency),
        "latency_seconds": latency,
        "platform": platform,
        "location": location,
        "campaign": campaign,
        "gender": gender,
        "age_band": age_band,
        "interests": interests,
        "partition": 0,
    }


def conversions(rows: list[dict[str, Any]]) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema_overrides={"revenue": pl.String})
    return schema.conform(frame, schema.FACT_CONVERSIONS)


def empty_output(batch_id: int) -> BatchOutput:
    return BatchOutput(
        batch_id=batch_id,
        impressions=schema.empty(schema.FACT_IMPRESSIONS),
        clicks=schema.empty(schema.FACT_CLICKS),
        conversions=schema.empty(schema.FACT_CONVERSIONS),
        reattributions=schema.empty(schema.CONVERSION_REATTRIBUTIONS),
        rollups=schema.empty(schema.ROLLUP_MINUTE),
        dead_letters=schema.empty(schema.DEAD_LETTERS),
        stats=schema.empty(schema.INGEST_STATS),
    )


def stats(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return schema.conform(pl.DataFrame(rows), schema.INGEST_STATS)


def dead_letters(rows: list[tuple[str, str]]) -> pl.DataFrame:
    frame = pl.DataFrame(
        [
            {"stream": s, "partition": 0, "reason": r, "payload": b"{", "received_at": M0}
            for s, r in rows
        ]
    )
    return schema.conform(frame, schema.DEAD_LETTERS)


LA = ("Los Angeles", "Summer Sale", *READER)


def build(warehouse: Warehouse) -> None:
    """Commit the two batches described in the module docstring."""
    first = empty_output(1)
    first.rollups = rollups("A", "B", "C", "F", "G1", "G2", "H")
    first.impressions = engagement_facts("fact_impressions", "A", "B", "C", "F", "G1")
    first.clicks = engagement_facts("fact_clicks", "A", "B", "C", "F", "G1")
    bts_web = ("Web", "New York", *BTS)
    first.conversions = conversions(
        [
            conversion("c1", minute(0) + timedelta(seconds=10), 1001, "60", 300, *bts_web),
            conversion("c2", minute(0) + timedelta(seconds=20), 1001, "40", 900, *bts_web),
            conversion(
                "c3", minute(1) + timedelta(seconds=5), 1001, "30.5", 300,
                "Mobile", "Los Angeles", "Back-to-School", *READER,
            ),
            conversion("x", minute(0) + timedelta(seconds=30), 1002, "25", 500, "Mobile", *LA),
            conversion("y", minute(0) + timedelta(seconds=40), 1002, "25.25", 400, "Mobile", *LA),
            conversion("z", minute(0) + timedelta(seconds=50), 1002, "25", 600, "Mobile", *LA),
            conversion("g", minute(3), 9999, "5", None, None, None, None, None, None, None),
        ]
    )  # fmt: skip
    first.stats = stats(
        [
            {"batch_id": 1, "stream": "impressions", "partition": 0, "received": 236,
             "accepted": 235, "rejected": 1, "duplicates": 0, "late": 0, "unknown_ad": 10,
             "unknown_user": 10, "min_event_time": minute(0), "max_event_time": minute(4),
             "committed_at": datetime(2023, 9, 9, 10, 6)},
            {"batch_id": 1, "stream": "conversions", "partition": 1, "received": 9,
             "accepted": 7, "rejected": 2, "duplicates": 0, "late": 0, "unknown_ad": 1,
             "unknown_user": 1, "min_event_time": minute(0), "max_event_time": minute(3),
             "committed_at": datetime(2023, 9, 9, 10, 6)},
        ]
    )  # fmt: skip
    first.dead_letters = dead_letters(
        [
            ("impressions", "invalid_json"),
            ("conversions", "negative_revenue"),
            ("conversions", "negative_revenue"),
        ]
    )
    first.offsets = {(Stream.IMPRESSIONS, 0): "100", (Stream.CONVERSIONS, 1): "7"}
    first.watermarks = {
        (Stream.CLICKS, 0): PartitionWatermark(minute(2), minute(3)),
        (Stream.CLICKS, 1): PartitionWatermark(minute(1), minute(2)),
    }
    warehouse.commit(first)

    second = empty_output(2)
    second.rollups = rollups("D", "E", "I")
    second.reattributions = schema.conform(
        pl.DataFrame(
            {
                "event_id": ["z"],
                "click_event_id": ["click-z2"],
                "click_time": [minute(0) + timedelta(seconds=10)],
                "latency_seconds": [400.0],
                "platform": ["Web"],
                "location": ["Los Angeles"],
            }
        ),
        schema.CONVERSION_REATTRIBUTIONS,
    )
    second.stats = stats(
        [
            {"batch_id": 2, "stream": "clicks", "partition": 0, "received": 25,
             "accepted": 25, "rejected": 0, "duplicates": 1, "late": 2, "unknown_ad": 1,
             "unknown_user": 0, "min_event_time": minute(0), "max_event_time": minute(3),
             "committed_at": datetime(2023, 9, 9, 10, 7)},
            {"batch_id": 2, "stream": "impressions", "partition": 0, "received": 4,
             "accepted": 4, "rejected": 0, "duplicates": 0, "late": 1, "unknown_ad": 0,
             "unknown_user": 0, "min_event_time": minute(4), "max_event_time": minute(4),
             "committed_at": datetime(2023, 9, 9, 10, 7)},
        ]
    )  # fmt: skip
    second.watermarks = {(Stream.CLICKS, 0): PartitionWatermark(minute(3), minute(4))}
    warehouse.commit(second)


def money(value: str) -> Decimal:
    return Decimal(value).quantize(Decimal("0.0001"))
