"""An independent oracle: every metric recomputed with plain DuckDB SQL over the raw files.

It shares no code with the pipeline: raw lines are loaded as text, and validation,
timestamp parsing, deduplication, the dimension join, attribution and the metrics are
all written here in SQL, straight from the product's semantics.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from adpulse.contracts import Stream

if TYPE_CHECKING:
    from adpulse.storage.warehouse.base import Warehouse

MAX_RECORD_BYTES = 64 * 1024
STREAMS = {
    "impressions": "impression_timestamp",
    "clicks": "click_timestamp",
    "conversions": "conversion_timestamp",
}


def load_raw(con: duckdb.DuckDBPyConnection, data_dir: Path) -> dict[str, int]:
    """raw_<stream>(line_no, doc): every line of each file; returns lines per stream."""
    received: dict[str, int] = {}
    for stream in STREAMS:
        path = data_dir / f"{stream}.jsonl"
        lines = path.read_bytes().split(b"\n") if path.exists() else []
        if lines and lines[-1] == b"":
            lines.pop()
        received[stream] = len(lines)
        rows = []
        for i, raw in enumerate(lines):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = None  # rejected: not UTF-8
            if len(raw) > MAX_RECORD_BYTES:
                text = None  # rejected: too large
            rows.append((i, text))
        table = pa.table(
            {
                "line_no": pa.array([r[0] for r in rows], pa.int32()),
                "doc": pa.array([r[1] for r in rows], pa.string()),
            }
        )
        con.register("raw_lines", table)
        con.execute(f"CREATE OR REPLACE TABLE raw_{stream} AS SELECT * FROM raw_lines")
        con.unregister("raw_lines")
    return received


def build(
    con: duckdb.DuckDBPyConnection,
    data_dir: Path,
    now: datetime,
    lookback: timedelta = timedelta(days=7),
    max_future: timedelta = timedelta(seconds=900),
) -> dict[str, int]:
    """Create o_impressions, o_clicks, o_conversions (valid, deduplicated, enriched,
    attributed) and o_rejected counts. Returns received lines per stream."""
    received = load_raw(con, data_dir)
    horizon = now + max_future
    for stream, ts in STREAMS.items():
        strings = (
            ["user_id", "product_id"]
            if stream == "conversions"
            else ["user_id", "platform", "location"]
        )
        not_container = " AND ".join(
            f"coalesce(json_type(j, '$.{f}') NOT IN ('OBJECT', 'ARRAY'), true)"
            for f in strings + ["event_id"]
        )
        present = " AND ".join(
            f"(j->>'$.{f}') IS NOT NULL AND trim(j->>'$.{f}') <> ''" for f in strings + [ts]
        )
        extra_cols = (
            "j->>'$.product_id' AS product_id, CAST(j->>'$.revenue' AS DECIMAL(18,4)) AS revenue"
            if stream == "conversions"
            else "j->>'$.platform' AS platform, j->>'$.location' AS location"
        )
        extra_checks = (
            "AND json_type(j, '$.revenue') IN ('BIGINT', 'UBIGINT', 'DOUBLE') "
            "AND CAST(j->>'$.revenue' AS DOUBLE) >= 0"
            if stream == "conversions"
            else ""
        )
        con.execute(
            f"""
            CREATE OR REPLACE TABLE typed_{stream} AS
            WITH parsed AS (
                SELECT line_no, doc::JSON AS j FROM raw_{stream}
                WHERE doc IS NOT NULL AND json_valid(doc) AND json_type(doc::JSON) = 'OBJECT'
            ), timed AS (
                SELECT *, coalesce(
                    try_strptime(j->>'$.{ts}', '%Y-%m-%d %H:%M:%S'),
                    CAST(try_strptime(j->>'$.{ts}', '%Y-%m-%dT%H:%M:%S%z') AT TIME ZONE 'UTC' AS TIMESTAMP),
                    CAST(try_strptime(j->>'$.{ts}', '%Y-%m-%dT%H:%M:%S.%f%z') AT TIME ZONE 'UTC' AS TIMESTAMP)
                ) AS event_time FROM parsed
            )
            SELECT line_no, j->>'$.event_id' AS given_id, CAST(j->>'$.ad_id' AS BIGINT) AS ad_id,
                   j->>'$.user_id' AS user_id, event_time, {extra_cols}
            FROM timed
            WHERE json_type(j, '$.ad_id') IN ('BIGINT', 'UBIGINT')
              AND {present} AND {not_container} {extra_checks}
              AND event_time IS NOT NULL AND event_time <= ?
            """,
            [horizon],
        )
        content = (
            "concat_ws('|', ad_id, user_id, epoch_us(event_time), product_id, revenue)"
            if stream == "conversions"
            else "concat_ws('|', ad_id, user_id, epoch_us(event_time), platform, location)"
        )
        # Dedupe: the first arrival of each event id (or of each content, without an id).
        con.execute(
            f"""
            CREATE OR REPLACE TABLE dedup_{stream} AS
            SELECT * EXCLUDE (rn) FROM (
                SELECT *, coalesce(given_id, 'content:' || {content}) AS dedupe_key,
                       row_number() OVER (PARTITION BY coalesce(given_id, 'content:' || {content})
                                          ORDER BY line_no) AS rn
                FROM typed_{stream}
            ) WHERE rn = 1
            """
        )
    # Dimensions: the original's CSV (", " separators), one version per key.
    con.execute(
        f"""
        CREATE OR REPLACE TABLE o_campaigns AS
        SELECT CAST(trim(ad_id) AS BIGINT) AS ad_id, trim(campaign) AS campaign,
               trim(product) AS product
        FROM read_csv('{data_dir / "campaigns.csv"}', header = true, all_varchar = true,
                      normalize_names = true)
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TABLE o_users AS
        SELECT trim(user_id) AS user_id, CAST(trim(age) AS INTEGER) AS age,
               trim(gender) AS gender, trim(interests) AS interests
        FROM read_csv('{data_dir / "users.csv"}', header = true, all_varchar = true,
                      normalize_names = true)
        """
    )
    band = """CASE WHEN u.age < 18 THEN '<18' WHEN u.age < 25 THEN '18-24'
                   WHEN u.age < 35 THEN '25-34' WHEN u.age < 45 THEN '35-44'
                   WHEN u.age < 55 THEN '45-54' WHEN u.age < 65 THEN '55-64'
                   WHEN u.age IS NOT NULL THEN '65+' END"""
    for stream in ("impressions", "clicks"):
        con.execute(
            f"""
            CREATE OR REPLACE TABLE o_{stream} AS
            SELECT e.dedupe_key, e.given_id, e.ad_id, e.user_id, e.event_time, e.platform,
                   e.location, c.campaign, u.gender, {band} AS age_band, u.interests
            FROM dedup_{stream} e
            LEFT JOIN o_campaigns c USING (ad_id) LEFT JOIN o_users u USING (user_id)
            """
        )
    # Attribution: last click (same user and ad) at or before the conversion, within the
    # lookback; ties on time broken by the larger click id.
    con.execute(
        f"""
        CREATE OR REPLACE TABLE o_conversions AS
        WITH cand AS (
            SELECT v.dedupe_key, k.event_time AS click_time, k.platform, k.location,
                   row_number() OVER (PARTITION BY v.dedupe_key
                                      ORDER BY k.event_time DESC, k.dedupe_key DESC) AS rn
            FROM dedup_conversions v JOIN dedup_clicks k
              ON k.user_id = v.user_id AND k.ad_id = v.ad_id
             AND k.event_time <= v.event_time
             AND k.event_time >= v.event_time - INTERVAL '{int(lookback.total_seconds())} seconds'
        )
        SELECT v.dedupe_key, v.given_id, v.ad_id, v.user_id, v.event_time, v.revenue,
               a.click_time, epoch_us(v.event_time) / 1e6 - epoch_us(a.click_time) / 1e6
                 AS latency_seconds,
               a.platform, a.location, c.campaign, u.gender, {band} AS age_band, u.interests
        FROM dedup_conversions v
        LEFT JOIN (SELECT * FROM cand WHERE rn = 1) a USING (dedupe_key)
        LEFT JOIN o_campaigns c USING (ad_id) LEFT JOIN o_users u USING (user_id)
        """
    )
    return received


def where(
    *,
    campaign: str | None = None,
    ad_id: int | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    platform: str | None = None,
    location: str | None = None,
    gender: str | None = None,
    age_band: str | None = None,
    interest: str | None = None,
) -> tuple[str, list[object]]:
    """A WHERE clause over an o_* table (ranges are minute-aligned like the rollups)."""
    clauses, params = ["true"], []
    for column, value in (
        ("campaign", campaign),
        ("ad_id", ad_id),
        ("platform", platform),
        ("location", location),
        ("gender", gender),
        ("age_band", age_band),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if start is not None:
        clauses.append("date_trunc('minute', event_time) >= ?")
        params.append(start)
    if end is not None:
        clauses.append("date_trunc('minute', event_time) < ?")
        params.append(end)
    if interest is not None:
        clauses.append("list_contains(string_split(interests, ';'), ?)")
        params.append(interest)
    return " AND ".join(clauses), params


def metrics(
    con: duckdb.DuckDBPyConnection, group: str | None = None, **filters: object
) -> dict[object, dict[str, object]]:
    """Counts and rates per group (None: one overall row keyed by None)."""
    w, params = where(**filters)  # type: ignore[arg-type]
    key = group or "NULL"
    rows = con.execute(
        f"""
        WITH i AS (SELECT {key} AS g, count(*) AS impressions FROM o_impressions WHERE {w} GROUP BY 1),
             k AS (SELECT {key} AS g, count(*) AS clicks FROM o_clicks WHERE {w} GROUP BY 1),
             v AS (SELECT {key} AS g, count(*) AS conversions,
                          count(click_time) AS attributed_conversions,
                          sum(revenue) AS revenue,
                          avg(latency_seconds) AS latency_mean,
                          quantile_cont(latency_seconds, 0.5) AS latency_p50,
                          quantile_cont(latency_seconds, 0.9) AS latency_p90
                   FROM o_conversions WHERE {w} GROUP BY 1)
        SELECT coalesce(i.g, k.g, v.g) AS g, coalesce(impressions, 0) AS impressions,
               coalesce(clicks, 0) AS clicks, coalesce(conversions, 0) AS conversions,
               coalesce(attributed_conversions, 0) AS attributed_conversions,
               revenue, latency_mean, latency_p50, latency_p90
        FROM i FULL JOIN k ON i.g IS NOT DISTINCT FROM k.g
               FULL JOIN v ON coalesce(i.g, k.g) IS NOT DISTINCT FROM v.g
        """,
        params * 3,
    ).fetchall()
    out: dict[object, dict[str, object]] = {}
    names = (
        "impressions",
        "clicks",
        "conversions",
        "attributed_conversions",
        "revenue",
        "latency_mean",
        "latency_p50",
        "latency_p90",
    )
    for row in rows:
        values = dict(zip(names, row[1:], strict=True))
        imp, clk, conv = values["impressions"], values["clicks"], values["conversions"]
        values["ctr"] = clk / imp if imp else None  # type: ignore[operator]
        values["conversion_rate"] = values["attributed_conversions"] / clk if clk else None  # type: ignore[operator]
        values["revenue_per_conversion"] = (
            float(values["revenue"]) / conv if conv and values["revenue"] is not None else None  # type: ignore[operator, arg-type]
        )
        out[row[0]] = values
    return out


def assert_warehouse_equals(
    wh: Warehouse,
    truth: tuple[duckdb.DuckDBPyConnection, dict[str, int]],
    least_attributed: int = 50,
) -> None:
    """The warehouse holds exactly the oracle's facts (each unique event once, with its
    dimensions and attribution), counts that reconcile, and rollups committed once.

    ``truth`` is a connection on which :func:`build` ran and what it returned;
    ``least_attributed`` guards that attribution was exercised.
    """
    con, received = truth
    for stream in Stream:
        s = stream.value
        got = wh.query(
            f"SELECT event_id, event_time, campaign, gender FROM fact_{s} ORDER BY event_id"
        ).rows()
        want = con.execute(
            f"SELECT given_id, event_time, campaign, gender FROM o_{s} ORDER BY given_id"
        ).fetchall()
        assert got == want, s  # each unique event exactly once
        stats = wh.query(
            "SELECT SUM(received), SUM(duplicates) FROM ingest_stats WHERE stream = ?", [s]
        ).row(0)
        dead = wh.query("SELECT COUNT(*) FROM dead_letters WHERE stream = ?", [s]).item()
        assert stats[0] == received[s]
        typed = con.execute(f"SELECT count(*) FROM typed_{s}").fetchone()[0]  # type: ignore[index]
        assert stats[1] == typed - len(want)
        assert len(got) + stats[1] + dead == received[s]  # facts + duplicates + dead
    conversions = wh.query(
        "SELECT event_id, click_event_id IS NOT NULL, click_time, platform, campaign, age_band,"
        " ROUND(CAST(latency_seconds AS NUMERIC), 3) FROM fact_conversions ORDER BY event_id"
    ).rows()
    want_conversions = con.execute(
        "SELECT given_id, click_time IS NOT NULL, click_time, platform, campaign, age_band,"
        " ROUND(latency_seconds, 3) FROM o_conversions ORDER BY given_id"
    ).fetchall()
    assert [(*r[:6], None if r[6] is None else float(r[6])) for r in conversions] == [
        (*r[:6], None if r[6] is None else float(r[6])) for r in want_conversions
    ]
    # Rollups are append-only: a batch committed twice would show here.
    totals = wh.query(
        "SELECT SUM(impressions), SUM(clicks), SUM(conversions), SUM(attributed_conversions)"
        " FROM rollup_minute"
    ).row(0)
    want_totals = con.execute(
        "SELECT (SELECT count(*) FROM o_impressions), (SELECT count(*) FROM o_clicks),"
        " (SELECT count(*) FROM o_conversions),"
        " (SELECT count(*) FROM o_conversions WHERE click_time IS NOT NULL)"
    ).fetchone()
    assert tuple(totals) == want_totals
    assert want_totals[3] > least_attributed  # type: ignore[index]  # attribution was exercised
