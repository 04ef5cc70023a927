"""The batch job: raw records -> dead letters, facts and minute rollups, on Spark.

The streaming processor's steps, written as Spark SQL expressions over the whole history
at once (no Python runs on the executors):

1. decode: unframe a log line, then the checks of ``processor/steps/decode.py`` in its
   order (damaged, too large, empty, UTF-8, JSON, object, field types), with JSON read
   as a VARIANT so a field's JSON type is known, as the oracle reads it;
2. validate: the checks of ``processor/steps/validate.py``, first failing check wins;
3. ids and lateness (``steps/dedupe.py``): the producer's ``event_id`` or the same
   derived ``d:`` id (SHA-256 of the same canonical text); ``is_late`` against the
   running maximum event time of the stream and partition *before* the record, in
   arrival order (a window over ``source, block, pos``);
4. dedupe: a record is a duplicate when an earlier arrival with its ``event_id`` has an
   event-time hour at or after the hour of (its own prior watermark - horizon);
5. enrich: dimension versions in effect at the event time (SCD2: ``valid_from`` <=
   time < ``valid_to``), unknown keys kept with NULL fields;
6. attribute: an on-time conversion to the last on-time click of the user on the ad at
   or before it within the lookback, ties to the larger click id (what the streaming
   state converges to once every re-attribution is applied); late conversions stay
   unattributed, as in the stream;
7. aggregate: one rollup row per minute x ad x campaign x platform x location.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

from adpulse.config import Settings
from adpulse.contracts import AGE_BANDS, Reason, Stream
from adpulse.metrics import MEASURES
from adpulse.processor.steps.validate import MAX_ID_CHARS, MAX_TEXT_CHARS
from adpulse.storage.warehouse.schema import MAX_REVENUE
from adpulse.transport.framing import OVERSIZE_KEEP_BYTES

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

#: Output tables, in the warehouse's names.
OUTPUT_TABLES: Final = (
    "fact_impressions",
    "fact_clicks",
    "fact_conversions",
    "rollup_minute",
    "dead_letters",
)
_STRING_FIELDS: Final = {
    Stream.IMPRESSIONS: ("event_id", "user_id", "platform", "location", "impression_timestamp"),
    Stream.CLICKS: ("event_id", "user_id", "platform", "location", "click_timestamp"),
    Stream.CONVERSIONS: ("event_id", "user_id", "conversion_timestamp", "product_id"),
}
_CANONICAL: Final = {
    Stream.IMPRESSIONS: ("ad_id", "user_id", "platform", "location"),
    Stream.CLICKS: ("ad_id", "user_id", "platform", "location"),
    Stream.CONVERSIONS: ("ad_id", "user_id", "product_id", "revenue_text"),
}
_ALL_FIELDS: Final = (
    "event_id",
    "ad_id",
    "user_id",
    "platform",
    "location",
    "product_id",
    "revenue",
    "impression_timestamp",
    "click_timestamp",
    "conversion_timestamp",
)
_ISO_PATTERNS: Final = (
    "yyyy-MM-dd'T'HH:mm:ssXXX",
    "yyyy-MM-dd'T'HH:mm:ssXX",
    "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX",
    "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXX",
)
_HOUR_US: Final = 3_600_000_000
_ORDER: Final = ("source", "block", "pos")


@dataclass(frozen=True, slots=True)
class Rules:
    """The settings that decide the results (the streaming processor's, by name)."""

    now: datetime
    max_future: timedelta
    min_event_time: datetime
    lateness: timedelta
    horizon: timedelta
    lookback: timedelta
    max_record_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings, now: datetime) -> Rules:
        return cls(
            now=now.replace(tzinfo=None),
            max_future=timedelta(seconds=settings.max_future_seconds),
            min_event_time=settings.min_event_time.replace(tzinfo=None),
            lateness=timedelta(seconds=settings.allowed_lateness_seconds),
            horizon=timedelta(seconds=settings.dedupe_horizon_seconds),
            lookback=timedelta(seconds=settings.attribution_lookback_seconds),
            max_record_bytes=settings.max_record_bytes,
        )


@dataclass(slots=True)
class JobOutput:
    """The job's results as DataFrames (lazy), by warehouse table name, and the
    persisted intermediate frames the counts are taken from."""

    tables: dict[str, DataFrame]
    checked: DataFrame
    unique: DataFrame


def _lit_bin(value: bytes) -> Column:
    from pyspark.sql import functions as F

    return F.lit(bytearray(value))


def _kind(name: str) -> Column:
    """The JSON type of field ``name`` (``BIGINT``, ``STRING``, ``OBJECT<...>``...),
    computed once per record into ``_k_<name>`` by :func:`decode_and_validate`."""
    from pyspark.sql import functions as F

    return F.col(f"_k_{name}")


def _json_text(name: str) -> Column:
    from pyspark.sql import functions as F

    text = F.coalesce(F.expr(f"to_json(variant_get(_v, '$.{name}'))"), F.lit(""))
    return F.when(F.length(text) <= 40, text).otherwise(
        F.concat(F.substring(text, 1, 37), F.lit("..."))
    )


def _blank(column: Column) -> Column:
    """Empty or only white space (Unicode), like Polars' ``str.strip_chars() == ""``."""
    return column.rlike(r"(?U)^\s*$")


def decode_and_validate(raw: DataFrame, rules: Rules) -> DataFrame:
    """``raw`` (:data:`adpulse.reprocess.sources.RAW_COLUMNS`) plus ``reason``, ``detail``,
    ``payload`` and the typed fields (``event_time``, ``ad_id``, ...); ``reason`` is
    NULL for a valid record."""
    from pyspark.sql import functions as F

    line = F.col("line")
    escaped = F.col("framed") & line.startswith("\x00")
    unescaped = F.expr("try_to_binary(rtrim(' ', substring(line, 2)), 'base64')")
    frame = raw.withColumn("_raw", F.when(escaped, unescaped))
    marker = F.substring("_raw", 1, 1)
    size = F.octet_length("_raw")
    kept = F.when(escaped & (marker == _lit_bin(b"\x02")), F.expr("substring(_raw, 2)"))
    kept = kept.when(
        escaped & (marker == _lit_bin(b"\x01")) & (size >= 9), F.expr("substring(_raw, 10)")
    )
    frame = frame.withColumn(
        "_bytes", F.when(escaped, kept).otherwise(F.col("line").cast("binary"))
    )
    too_long = ~F.col("framed") & (F.octet_length("line") > rules.max_record_bytes)
    frame = frame.withColumn(
        "payload",
        F.when(too_long, F.substring("_bytes", 1, OVERSIZE_KEEP_BYTES)).otherwise(F.col("_bytes")),
    ).withColumn("_text", F.col("payload").cast("string"))
    frame = frame.withColumn(
        "_v",
        F.when(F.expr("is_valid_utf8(_text)"), F.expr("try_parse_json(_text)")),
    )
    # Each field's JSON type once per record (the checks below read it several times).
    frame = frame.withColumns(
        {
            f"_k_{name}": F.expr(f"schema_of_variant(variant_get(_v, '$.{name}'))")
            for name in _ALL_FIELDS
        }
    )
    lost = F.conv(F.hex(F.substring("_raw", 2, 8)), 16, 10)

    # decode (check_one's order): each (condition, reason, detail)
    checks: list[tuple[Column, Reason, Column]] = [
        (
            F.col("framed") & (line == ""),
            Reason.DAMAGED_RECORD,
            F.lit("an empty line: writers never store one"),
        ),
        (
            escaped & F.col("_raw").isNull(),
            Reason.DAMAGED_RECORD,
            F.format_string(
                "an escaped line of %d bytes that is not valid base64", F.octet_length(line)
            ),
        ),
        (
            escaped & (marker == _lit_bin(b"\x03")) & (size == 9),
            Reason.DAMAGED_RECORD,
            F.format_string(
                "%s bytes of the log were lost here (filled by `adpulse log repair`)", lost
            ),
        ),
        (
            escaped & F.col("_bytes").isNull(),
            Reason.DAMAGED_RECORD,
            F.format_string(
                "an escaped line of %d bytes with an unknown marker", F.octet_length(line)
            ),
        ),
        (
            escaped & (marker == _lit_bin(b"\x01")),
            Reason.PAYLOAD_TOO_LARGE,
            F.concat(F.conv(F.hex(F.substring("_raw", 2, 8)), 16, 10), F.lit(" bytes")),
        ),
        (
            too_long,
            Reason.PAYLOAD_TOO_LARGE,
            F.concat(F.octet_length("line").cast("string"), F.lit(" bytes")),
        ),
        (
            F.col("_text").rlike("^[ \\t\\n\\r\\x0B\\f]*$"),
            Reason.EMPTY_PAYLOAD,
            F.lit("record has no content"),
        ),
        (
            ~F.expr("is_valid_utf8(_text)"),
            Reason.INVALID_UTF8,
            F.lit("invalid UTF-8"),
        ),
        (F.col("_v").isNull(), Reason.INVALID_JSON, F.lit("not valid JSON")),
        (
            ~F.col("_text").rlike("^[ \\t\\n\\r]*\\{"),
            Reason.NOT_AN_OBJECT,
            F.lit("got a JSON value that is not an object"),
        ),
    ]
    per_stream: dict[Stream, list[tuple[Column, Reason, Column]]] = {}
    for stream in Stream:
        own: list[tuple[Column, Reason, Column]] = []
        # decode: field types
        for name, dtype in stream.decode_schema.items():
            kind = _kind(name)
            present = kind.isNotNull() & (kind != "VOID")
            if str(dtype) == "Int64":
                own.append(
                    (
                        present & (kind != "BIGINT"),
                        Reason.WRONG_TYPE,
                        F.concat(F.lit(f"{name} must be an integer, got "), _json_text(name)),
                    )
                )
            elif str(dtype) == "Float64":
                number = (kind == "BIGINT") | (kind == "DOUBLE") | kind.startswith("DECIMAL")
                own.append(
                    (
                        present & ~number,
                        Reason.WRONG_TYPE,
                        F.concat(F.lit(f"{name} must be a number, got "), _json_text(name)),
                    )
                )
            else:
                own.append(
                    (
                        present & (kind.startswith("OBJECT") | kind.startswith("ARRAY")),
                        Reason.WRONG_TYPE,
                        F.concat(F.lit(f"{name} must be a string, got "), _json_text(name)),
                    )
                )
        # validate (steps/validate.py's order)
        for name in stream.required_fields:
            value = F.col(name)
            missing = value.isNull()
            if name != "ad_id":
                missing = missing | _blank(value)
            own.append((missing, Reason.MISSING_FIELD, F.lit(f"{name} is missing or empty")))
        for name in _STRING_FIELDS[stream]:
            own.append(
                (
                    F.col(name).contains("\x00"),
                    Reason.INVALID_CHARACTER,
                    F.format_string(
                        "%s holds a NUL character (U+0000, at byte %d), which a warehouse"
                        " cannot store",
                        F.lit(name),
                        F.octet_length(F.substring_index(F.col(name), "\x00", 1)),
                    ),
                )
            )
        for name in _STRING_FIELDS[stream]:
            if name == stream.timestamp_field:
                continue
            limit = MAX_ID_CHARS if name in ("event_id", "user_id") else MAX_TEXT_CHARS
            own.append(
                (
                    F.octet_length(name) > limit,
                    Reason.BAD_EVENT_ID if name == "event_id" else Reason.WRONG_TYPE,
                    F.lit(f"{name} longer than {limit} bytes"),
                )
            )
        ts = stream.timestamp_field
        head = F.substring(F.col(ts), 1, 40)
        own.append(
            (
                F.col("event_time").isNull(),
                Reason.BAD_TIMESTAMP,
                F.concat(F.lit(f"{ts} is not a timestamp: "), head),
            )
        )
        own.append(
            (
                F.col("event_time") < F.lit(rules.min_event_time),
                Reason.EVENT_TIME_OUT_OF_RANGE,
                F.concat(
                    F.lit(f"{ts} "),
                    head,
                    F.lit(f" is before min_event_time {rules.min_event_time} (UTC)"),
                ),
            )
        )
        seconds = int(rules.max_future.total_seconds())
        own.append(
            (
                F.col("event_time") > F.lit(rules.now + rules.max_future),
                Reason.FUTURE_TIMESTAMP,
                F.concat(
                    F.lit(f"{ts} "),
                    head,
                    F.lit(f" is more than max_future_seconds ({seconds} s) ahead of the clock"),
                ),
            )
        )
        if stream is Stream.CONVERSIONS:
            own.append((F.col("revenue") < 0, Reason.NEGATIVE_REVENUE, F.lit("revenue < 0")))
            own.append(
                (
                    F.col("revenue") > MAX_REVENUE,
                    Reason.REVENUE_OUT_OF_RANGE,
                    F.format_string(
                        "revenue %s is above the maximum of %s per conversion",
                        F.col("revenue").cast("string"),
                        F.lit(f"{MAX_REVENUE:,}"),
                    ),
                )
            )
        per_stream[stream] = own

    # Typed fields (read only where a record is an object; NULL where absent).
    typed = {
        "event_id": F.expr("try_variant_get(_v, '$.event_id', 'string')"),
        "ad_id": F.when(
            _kind("ad_id") == "BIGINT", F.expr("try_variant_get(_v, '$.ad_id', 'bigint')")
        ),
        "revenue": F.expr("try_variant_get(_v, '$.revenue', 'double')"),
    }
    for name in _ALL_FIELDS:
        if name not in typed:
            typed[name] = F.expr(f"try_variant_get(_v, '$.{name}', 'string')")
    frame = frame.withColumns(typed)
    timestamp = F.when(F.col("stream") == "impressions", F.col("impression_timestamp"))
    timestamp = timestamp.when(F.col("stream") == "clicks", F.col("click_timestamp")).otherwise(
        F.col("conversion_timestamp")
    )
    frame = frame.withColumn("_ts", timestamp).withColumn("event_time", _event_time(F.col("_ts")))

    def first(items: list[tuple[Column, Reason, Column]], what: str) -> Column:
        pieces = [
            F.when(cond, F.lit(reason.value) if what == "reason" else text)
            for cond, reason, text in items
        ]
        return F.coalesce(*pieces)

    reason = first(checks, "reason")
    detail = first(checks, "detail")
    by_reason = None
    by_detail = None
    for stream, own in per_stream.items():
        is_it = F.col("stream") == stream.value
        by_reason = (
            F.when(is_it, first(own, "reason"))
            if by_reason is None
            else by_reason.when(is_it, first(own, "reason"))
        )
        by_detail = (
            F.when(is_it, first(own, "detail"))
            if by_detail is None
            else by_detail.when(is_it, first(own, "detail"))
        )
    assert by_reason is not None and by_detail is not None
    return frame.withColumn("reason", F.coalesce(reason, by_reason)).withColumn(
        "detail", F.coalesce(detail, by_detail)
    )


def _event_time(text: Column) -> Column:
    """The original's format (UTC), else ISO-8601 with an offset; TIMESTAMP_NTZ in UTC
    (the session's time zone is UTC)."""
    from pyspark.sql import functions as F

    parsed = [F.expr("try_to_timestamp(_ts, 'yyyy-MM-dd HH:mm:ss')")]
    parsed += [F.expr(f'try_to_timestamp(_ts, "{p}")') for p in _ISO_PATTERNS]
    del text
    return F.coalesce(*parsed).cast("timestamp_ntz")


def with_ids_and_lateness(valid: DataFrame, rules: Rules) -> DataFrame:
    """Add ``event_id`` (given or derived), ``is_late``, ``_wm`` and ``is_duplicate``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    given = F.when(~_blank(F.col("event_id")), F.col("event_id"))
    valid = valid.withColumn("revenue", F.round("revenue", 4).cast("decimal(18,4)"))
    valid = valid.withColumn("revenue_text", F.col("revenue").cast("string"))
    micros = F.expr("unix_micros(cast(event_time AS timestamp))").cast("string")
    canonical: Column | None = None
    for stream in Stream:
        parts = [F.lit(stream.value), micros] + [
            F.col(f).cast("string") for f in _CANONICAL[stream]
        ]
        text = F.concat_ws("|", *parts)
        is_it = F.col("stream") == stream.value
        canonical = F.when(is_it, text) if canonical is None else canonical.when(is_it, text)
    assert canonical is not None
    derived = F.concat(F.lit("d:"), F.substring(F.sha2(canonical, 256), 1, 32))
    valid = valid.withColumn("event_id", F.coalesce(given, derived))

    arrival = Window.partitionBy("stream", "partition").orderBy(*_ORDER)
    before = arrival.rowsBetween(Window.unboundedPreceding, -1)
    # Records without an arrival order (Parquet without ``arrival``) have no watermark:
    # none is late, and a repeated id is a duplicate whatever the time between copies.
    valid = valid.withColumn(
        "_wm", F.when(F.col("pos").isNotNull(), F.max("event_time").over(before))
    )
    late_cut = F.col("_wm") - F.expr(f"INTERVAL {int(rules.lateness.total_seconds())} SECONDS")
    valid = valid.withColumn("is_late", F.coalesce(F.col("event_time") < late_cut, F.lit(False)))

    hour = F.floor(F.expr("unix_micros(cast(event_time AS timestamp))") / _HOUR_US)
    valid = valid.withColumn("_hour", hour)
    cutoff = F.floor(
        F.expr(
            f"unix_micros(cast(_wm - INTERVAL {int(rules.horizon.total_seconds())} SECONDS"
            " AS timestamp))"
        )
        / _HOUR_US
    )
    same_id = (
        Window.partitionBy("stream", "event_id")
        .orderBy("partition", *_ORDER)
        .rowsBetween(Window.unboundedPreceding, -1)
    )
    seen = F.max("_hour").over(same_id)
    # No watermark yet (first record of its partition): any earlier copy counts.
    duplicate = seen.isNotNull() & (F.col("_wm").isNull() | (seen >= cutoff))
    return valid.withColumn("is_duplicate", duplicate)


def _age_band(age: Column) -> Column:
    from pyspark.sql import functions as F

    band: Column | None = None
    for low, high, label in AGE_BANDS:
        hit = (age >= low) & (age < high)
        band = F.when(hit, F.lit(label)) if band is None else band.when(hit, F.lit(label))
    assert band is not None
    return band


def enrich(events: DataFrame, campaigns: DataFrame, users: DataFrame) -> DataFrame:
    """Dimensions as of each event's time (SCD2), NULL for unknown keys; adds
    ``_unknown_ad`` and ``_unknown_user``."""
    from pyspark.sql import functions as F

    def as_of(rows: DataFrame, dim: DataFrame, key: str, fields: list[str]) -> DataFrame:
        d = dim.select(
            F.col(key).alias("_dkey"),
            F.col("valid_from").alias("_from"),
            F.col("valid_to").alias("_to"),
            *[F.col(f).alias(f) for f in fields],
        )
        cond = (
            (F.col(key) == F.col("_dkey"))
            & (F.col("event_time") >= F.col("_from"))
            & (F.col("_to").isNull() | (F.col("event_time") < F.col("_to")))
        )
        joined = rows.join(F.broadcast(d), cond, "left").drop("_dkey", "_from", "_to")
        known = dim.select(F.col(key).alias("_known")).distinct()
        flag = "_unknown_ad" if key == "ad_id" else "_unknown_user"
        return (
            joined.join(F.broadcast(known), F.col(key) == F.col("_known"), "left")
            .withColumn(flag, F.col("_known").isNull())
            .drop("_known")
        )

    events = as_of(events, campaigns, "ad_id", ["campaign", "product"])
    events = as_of(events, users, "user_id", ["gender", "age", "interests"])
    return events.withColumn("age", F.col("age").cast("int")).withColumn(
        "age_band", _age_band(F.col("age"))
    )


def attribute(conversions: DataFrame, clicks: DataFrame, rules: Rules) -> DataFrame:
    """Add ``click_event_id``, ``click_time``, ``latency_seconds``, ``platform`` and
    ``location`` (of the attributed click) to conversions."""
    from pyspark.sql import functions as F

    on_time_clicks = clicks.filter(~F.col("is_late")).select(
        F.col("user_id").alias("_cu"),
        F.col("ad_id").alias("_ca"),
        F.col("event_time").alias("_ct"),
        F.col("event_id").alias("_cid"),
        F.col("platform").alias("_cp"),
        F.col("location").alias("_cl"),
    )
    keys = ["_row"]
    lookback = F.expr(f"INTERVAL {int(rules.lookback.total_seconds())} SECONDS")
    candidates = (
        conversions.filter(~F.col("is_late"))
        .select(*keys, "user_id", "ad_id", "event_time")
        .join(
            on_time_clicks,
            (F.col("user_id") == F.col("_cu"))
            & (F.col("ad_id") == F.col("_ca"))
            & (F.col("_ct") <= F.col("event_time"))
            & (F.col("_ct") >= F.col("event_time") - lookback),
        )
    )
    best = candidates.groupBy(*keys).agg(
        F.max(F.struct("_ct", "_cid", "_cp", "_cl")).alias("_best")
    )
    out = conversions.drop("platform", "location").join(best, keys, "left")
    return out.select(
        "*",
        F.col("_best._cid").alias("click_event_id"),
        F.col("_best._ct").alias("click_time"),
        (
            (
                F.expr("unix_micros(cast(event_time AS timestamp))")
                - F.expr("unix_micros(cast(_best._ct AS timestamp))")
            )
            / 1e6
        ).alias("latency_seconds"),
        F.col("_best._cp").alias("platform"),
        F.col("_best._cl").alias("location"),
    ).drop("_best")


_ENRICHMENT = ("campaign", "product", "gender", "age", "age_band", "interests")
_BOOKKEEPING = ("is_late", "partition", "processed_at")
FACT_COLUMNS: Final = {
    "fact_impressions": (
        "event_id",
        "event_time",
        "ad_id",
        "user_id",
        "platform",
        "location",
        *_ENRICHMENT,
        *_BOOKKEEPING,
    ),
    "fact_conversions": (
        "event_id",
        "event_time",
        "ad_id",
        "user_id",
        "product_id",
        "revenue",
        "click_event_id",
        "click_time",
        "latency_seconds",
        "platform",
        "location",
        *_ENRICHMENT,
        *_BOOKKEEPING,
    ),
}
FACT_COLUMNS["fact_clicks"] = FACT_COLUMNS["fact_impressions"]
ROLLUP_KEY: Final = ("minute", "ad_id", "campaign", "platform", "location")


def rollups(impressions: DataFrame, clicks: DataFrame, conversions: DataFrame) -> DataFrame:
    """One row per minute x ad x campaign x platform x location (NULL keys kept)."""
    from pyspark.sql import functions as F

    def keyed(frame: DataFrame) -> DataFrame:
        return frame.withColumn(
            "minute", F.date_trunc("minute", "event_time").cast("timestamp_ntz")
        )

    # Each measure of the metric catalog (adpulse.metrics), written once for every fact
    # table and summed per key, as the stream's aggregate step and the query layer do.
    facts = {
        "fact_impressions": impressions,
        "fact_clicks": clicks,
        "fact_conversions": conversions,
    }
    latency = {"fact_conversions": F.col("latency_seconds")}
    parts = [
        keyed(frame).select(
            *ROLLUP_KEY,
            *(F.expr(m.fact_sql(table)).cast(m.sql_type).alias(m.name) for m in MEASURES),
            latency.get(table, F.lit(None)).cast("double").alias("latency_sum_seconds"),
        )
        for table, frame in facts.items()
    ]
    union = parts[0].unionByName(parts[1]).unionByName(parts[2])
    return union.groupBy(*ROLLUP_KEY).agg(
        *(F.coalesce(F.sum(m.name), F.lit(0)).cast(m.sql_type).alias(m.name) for m in MEASURES),
        F.coalesce(F.sum("latency_sum_seconds"), F.lit(0.0))
        .cast("double")
        .alias("latency_sum_seconds"),
    )


def build(
    spark: SparkSession,
    raw: DataFrame,
    rules: Rules,
    campaigns: DataFrame,
    users: DataFrame,
    processed_at: datetime,
) -> JobOutput:
    """The job's output tables (lazy)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    spark.conf.set("spark.sql.session.timeZone", "UTC")
    checked = decode_and_validate(raw, rules)
    checked = checked.select(
        *raw.columns,
        "payload",
        "reason",
        "detail",
        "event_time",
        "event_id",
        "ad_id",
        "user_id",
        "platform",
        "location",
        "product_id",
        "revenue",
    ).persist(StorageLevel.MEMORY_AND_DISK)
    at = F.lit(processed_at).cast("timestamp_ntz")
    dead = checked.filter(F.col("reason").isNotNull()).select(
        "stream",
        "partition",
        F.regexp_extract("source", r"([^/]*)$", 1).alias("source_offset"),
        F.expr("cast(pos & 8589934591 AS int)").alias("record_index"),
        "reason",
        F.regexp_replace(F.substring("detail", 1, 500), "\x00", "\\\\x00").alias("detail"),
        F.col("payload").cast("binary").alias("payload"),
        at.alias("received_at"),
    )
    valid = with_ids_and_lateness(checked.filter(F.col("reason").isNull()), rules)
    unique = valid.filter(~F.col("is_duplicate")).drop("_wm", "_hour", "is_duplicate")
    # _row: a key of each record for the attribution join (``pos`` may be NULL)
    enriched = (
        enrich(unique, campaigns, users)
        .withColumn("processed_at", at)
        .withColumn("_row", F.monotonically_increasing_id())
    )
    enriched = enriched.persist(StorageLevel.MEMORY_AND_DISK)
    impressions = enriched.filter(F.col("stream") == "impressions")
    clicks = enriched.filter(F.col("stream") == "clicks")
    conversions = attribute(
        enriched.filter(F.col("stream") == "conversions"), clicks, rules
    ).persist(StorageLevel.MEMORY_AND_DISK)
    facts = {
        "fact_impressions": impressions,
        "fact_clicks": clicks,
        "fact_conversions": conversions,
    }
    tables: dict[str, DataFrame] = {
        name: frame.select(*FACT_COLUMNS[name]) for name, frame in facts.items()
    }
    tables["rollup_minute"] = rollups(impressions, clicks, tables["fact_conversions"])
    tables["dead_letters"] = dead
    return JobOutput(tables, checked, enriched)


def counts(checked: DataFrame, unique: DataFrame) -> dict[str, dict[str, int]]:
    """Per stream: received, rejected, accepted, duplicates, late (small jobs over the
    persisted frames)."""
    from pyspark.sql import functions as F

    out: dict[str, dict[str, int]] = {}
    for row in (
        checked.groupBy("stream")
        .agg(
            F.count(F.lit(1)).alias("received"),
            F.sum(F.col("reason").isNotNull().cast("long")).alias("rejected"),
        )
        .collect()
    ):
        received, rejected = int(row["received"]), int(row["rejected"] or 0)
        out[row["stream"]] = {
            "received": received,
            "rejected": rejected,
            "accepted": received - rejected,
            "unique": 0,
            "duplicates": received - rejected,
            "late": 0,
        }
    for row in (
        unique.groupBy("stream")
        .agg(F.count(F.lit(1)).alias("n"), F.sum(F.col("is_late").cast("long")).alias("late"))
        .collect()
    ):
        entry = out[row["stream"]]
        entry["unique"] = int(row["n"])
        entry["duplicates"] = entry["accepted"] - int(row["n"])
        entry["late"] = int(row["late"] or 0)
    return out
