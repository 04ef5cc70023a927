"""Raw records for the batch job: one row per record, with its arrival order.

Every source gives the same columns (:data:`RAW_COLUMNS`):

- ``stream``: impressions, clicks or conversions;
- ``partition``: the transport partition the record was (or would be) sent to;
- ``source``, ``block``, ``pos``: the arrival order inside a stream and partition
  (file path, byte offset of the Spark split in it, the row's position in that split);
  ordering by the three gives the order the streaming processor read the records in;
- ``line``: the stored line (a string column holding the raw bytes, valid UTF-8 or not);
- ``framed``: True for embedded-log lines (escaped as :mod:`adpulse.transport.framing`
  says), False for a JSON-lines file's lines (each is a payload as is).

Sources: the embedded log's segments (``LOG_DIR/<stream>/<partition>/*.log``), a
directory of ``<stream>.jsonl[.gz]`` files as ``adpulse replay`` reads them (the
partition is computed as replay computes it: ``xxh64(user_id) % partitions``), and
Parquet files with ``stream`` and ``payload`` columns (optionally ``partition`` and
``arrival``, see docs/reprocess.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from adpulse.contracts import PARTITION_KEY, Stream

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

RAW_COLUMNS: Final = ("stream", "partition", "source", "block", "pos", "line", "framed")
#: Text reading splits on ``\n`` only (a ``\r`` alone is part of a record, as in replay).
_LINE_SEP: Final = "\n"


def _text(spark: SparkSession, paths: list[str]) -> DataFrame:
    from pyspark.sql import functions as F

    return (
        spark.read.option("lineSep", _LINE_SEP)
        .text(paths)
        .select(
            F.col("value").alias("line"),
            F.col("_metadata.file_path").alias("source"),
            F.col("_metadata.file_block_start").alias("block"),
            F.monotonically_increasing_id().alias("pos"),
        )
    )


def embedded_log(spark: SparkSession, log_dir: str) -> DataFrame:
    """Every record of an embedded log (all segments of all streams and partitions)."""
    from pyspark.sql import functions as F

    paths = [f"{log_dir.rstrip('/')}/{s.value}/*/*.log" for s in Stream]
    present = [p for p in paths if _exists(spark, p)]
    if not present:
        raise FileNotFoundError(f"no log segments under {log_dir} (expected {paths[0]})")
    lines = _text(spark, present)
    pattern = r"/(impressions|clicks|conversions)/(\d+)/\d+\.log$"
    return lines.select(
        F.regexp_extract("source", pattern, 1).alias("stream"),
        F.regexp_extract("source", pattern, 2).cast("int").alias("partition"),
        "source",
        "block",
        "pos",
        "line",
        F.lit(True).alias("framed"),
    )


def jsonl_directory(spark: SparkSession, directory: str, partitions: int) -> DataFrame:
    """The ``<stream>.jsonl[.gz]`` files of ``directory``, partitioned as replay does."""
    from pyspark.sql import functions as F

    frames = []
    for stream in Stream:
        for suffix in (".jsonl", ".jsonl.gz"):
            path = f"{directory.rstrip('/')}/{stream.value}{suffix}"
            if not _exists(spark, path):
                continue
            # replay accepts \r\n line ends: the \r is not part of the record (cut as
            # bytes: a regular expression would rewrite invalid UTF-8)
            cut = F.expr(
                "cast(substring(cast(line AS binary), 1, octet_length(line) - 1) AS string)"
            )
            lines = _text(spark, [path]).withColumn(
                "line", F.when(F.col("line").endswith("\r"), cut).otherwise(F.col("line"))
            )
            frames.append(
                lines.select(
                    F.lit(stream.value).alias("stream"),
                    partition_of_line(spark, "line", partitions).alias("partition"),
                    "source",
                    "block",
                    "pos",
                    "line",
                    F.lit(False).alias("framed"),
                )
            )
    if not frames:
        raise FileNotFoundError(
            f"no impressions/clicks/conversions .jsonl or .jsonl.gz file in {directory}"
        )
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out


def parquet_records(spark: SparkSession, path: str, partitions: int) -> DataFrame:
    """Parquet with ``stream`` and ``payload`` (string or binary), and optionally
    ``partition`` and ``arrival`` (an orderable column: the arrival order in its
    partition). Without ``arrival`` the records have no arrival order: see
    docs/reprocess.md for what lateness then means."""
    from pyspark.sql import functions as F

    frame = spark.read.parquet(path).withColumn("line", F.col("payload").cast("string"))
    partition = (
        F.col("partition").cast("int")
        if "partition" in frame.columns
        else partition_of_line(spark, "line", partitions)
    )
    order = F.col("arrival").cast("long") if "arrival" in frame.columns else F.lit(None)
    return frame.select(
        F.col("stream").cast("string").alias("stream"),
        partition.alias("partition"),
        F.col("_metadata.file_path").alias("source"),
        F.lit(0).cast("long").alias("block"),
        order.cast("long").alias("pos"),
        "line",
        F.lit(False).alias("framed"),
    )


def partition_of_line(spark: SparkSession, line: str, partitions: int) -> Column:
    """``xxh64(user_id) % partitions`` of the JSON record in column ``line``, as
    ``adpulse replay`` partitions (:func:`adpulse.transport.framing.partition_of`); 0
    when the id is unreadable.

    Spark's SQL ``xxhash64`` has a fixed seed (42); the partitioning uses seed 0, so the
    same Catalyst expression is built with seed 0 (classic Spark only; a JVM expression,
    no Python on the executors).
    """
    from pyspark.sql import functions as F

    if partitions <= 1:
        return F.lit(0).cast("int")
    field = f"variant_get(try_parse_json(`{line}`), '$.{PARTITION_KEY}')"
    kind = F.expr(f"schema_of_variant({field})")
    text = F.expr(f"try_variant_get(try_parse_json(`{line}`), '$.{PARTITION_KEY}', 'string')")
    readable = (
        text.isNotNull()
        & ~kind.startswith("OBJECT")
        & ~kind.startswith("ARRAY")
        & ~(text.startswith("{") | text.startswith("["))
    )
    hashed = xxhash64_seed0(spark, text)
    n = F.lit(partitions)
    wrap = F.lit((1 << 64) % partitions)  # the reference hash is unsigned
    part = F.when(hashed < 0, F.pmod(F.pmod(hashed, n) + wrap, n)).otherwise(F.pmod(hashed, n))
    return F.when(readable, part).otherwise(F.lit(0)).cast("int")


def xxhash64_seed0(spark: SparkSession, column: Column) -> Column:
    """XXH64 with seed 0 of a string column's UTF-8 bytes (signed 64-bit)."""
    from pyspark.sql.classic.column import Column as ClassicColumn

    jvm: Any = spark._jvm
    utils = getattr(jvm.org.apache.spark.sql.classic, "ExpressionUtils$").__getattr__("MODULE$")
    inner = utils.expression(column._jc)  # type: ignore[attr-defined]
    children = jvm.scala.jdk.javaapi.CollectionConverters.asScala(
        jvm.java.util.ArrayList([inner])
    ).toSeq()
    expression = jvm.org.apache.spark.sql.catalyst.expressions.XxHash64(children, 0)
    return ClassicColumn(utils.column(expression))


def _exists(spark: SparkSession, pattern: str) -> bool:
    jvm: Any = spark._jvm
    conf = spark._jsc.hadoopConfiguration()  # type: ignore[attr-defined]
    path = jvm.org.apache.hadoop.fs.Path(pattern)
    found = path.getFileSystem(conf).globStatus(path)
    return found is not None and len(found) > 0
