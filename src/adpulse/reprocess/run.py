"""The driver of ``adpulse reprocess``: Spark session, inputs, the job, Parquet, the load.

Only the driver runs Python: it builds the plan, reads the dimension versions from the
warehouse (small, broadcast to the executors), has Spark write the outputs as Parquet,
then loads them into the warehouse replacing the chosen event-time range in one
transaction. The executors run the plan in the JVM, so a cluster needs no Python
packages beyond PySpark's own on its workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from adpulse.reprocess import job, sources

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from adpulse.storage.warehouse.base import Warehouse

InputFormat = Literal["auto", "log", "jsonl", "parquet"]

#: Settings of every session the job opens (a cluster's own defaults are kept otherwise).
SESSION_CONFIG: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    # orjson (the streaming decoder) takes the last of repeated keys; so does this
    "spark.sql.variant.allowDuplicateKeys": "true",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}


@dataclass(slots=True)
class ReprocessResult:
    """What a run produced: rows per output table, counts per stream, seconds."""

    out_dir: str
    rows: dict[str, int]
    streams: dict[str, dict[str, int]]
    loaded: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def spark_session(
    master: str | None, app_name: str = "adpulse-reprocess", **conf: str
) -> SparkSession:
    """The session (``master`` None: whatever spark-submit or the cluster set)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for key, value in {**SESSION_CONFIG, **conf}.items():
        builder = builder.config(key, value)
    if master and master.startswith("local"):
        # one machine: a few shuffle partitions (adaptive execution coalesces further)
        builder = builder.config(
            "spark.sql.shuffle.partitions", conf.get("spark.sql.shuffle.partitions", "8")
        )
    session = builder.getOrCreate()
    for key, value in SESSION_CONFIG.items():
        session.conf.set(key, value)
    return session


def detect_format(path: str) -> InputFormat:
    """``log`` for an embedded log directory (it has ``meta.json``), ``jsonl`` for a
    directory of ``<stream>.jsonl[.gz]``, ``parquet`` otherwise."""
    local = Path(path)
    if (local / "meta.json").is_file():
        return "log"
    if any(local.glob("*.jsonl")) or any(local.glob("*.jsonl.gz")):
        return "jsonl"
    return "parquet"


def read_input(spark: SparkSession, path: str, fmt: InputFormat, partitions: int) -> DataFrame:
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "log":
        return sources.embedded_log(spark, path)
    if fmt == "jsonl":
        return sources.jsonl_directory(spark, path, partitions)
    return sources.parquet_records(spark, path, partitions)


def dimension_frames(spark: SparkSession, warehouse: Warehouse) -> tuple[DataFrame, DataFrame]:
    """The campaign and user versions of ``warehouse`` as Spark DataFrames."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import (
        IntegerType,
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampNTZType,
    )

    def frame(kind: Literal["campaigns", "users"], key: str, fields: dict[str, Any]) -> DataFrame:
        versions = warehouse.dimension(kind).select(key, *fields, "valid_from", "valid_to")
        struct = StructType(
            [
                StructField(key, LongType() if key == "ad_id" else StringType()),
                *[StructField(name, t) for name, t in fields.items()],
                StructField("valid_from", TimestampNTZType()),
                StructField("valid_to", TimestampNTZType()),
            ]
        )
        rows = [tuple(r) for r in versions.iter_rows()]
        return spark.createDataFrame(rows, struct).withColumn(
            key, F.col(key).cast("bigint" if key == "ad_id" else "string")
        )

    campaigns = frame("campaigns", "ad_id", {"campaign": StringType(), "product": StringType()})
    users = frame(
        "users",
        "user_id",
        {"gender": StringType(), "age": IntegerType(), "interests": StringType()},
    )
    return campaigns, users


def run_job(
    spark: SparkSession,
    input_path: str,
    out_dir: str,
    rules: job.Rules,
    warehouse: Warehouse,
    *,
    input_format: InputFormat = "auto",
    partitions: int = 4,
) -> ReprocessResult:
    """Read, compute and write every output table as Parquet under ``out_dir``."""
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    raw = read_input(spark, input_path, input_format, partitions)
    campaigns, users = dimension_frames(spark, warehouse)
    processed_at = datetime.now(UTC).replace(tzinfo=None)
    output = job.build(spark, raw, rules, campaigns, users, processed_at)
    for name, frame in output.tables.items():
        frame.write.mode("overwrite").parquet(f"{out_dir.rstrip('/')}/{name}")
    seconds["spark"] = time.perf_counter() - began
    rows = {
        name: spark.read.parquet(f"{out_dir.rstrip('/')}/{name}").count() for name in output.tables
    }
    streams = job.counts(output.checked, output.unique)
    output.checked.unpersist()
    output.unique.unpersist()
    seconds["total"] = time.perf_counter() - began
    return ReprocessResult(out_dir, rows, streams, seconds=seconds)


def parquet_batches(path: str, batch_rows: int = 500_000) -> Iterator[pl.DataFrame]:
    """The rows of a Parquet directory written by the job, a batch at a time."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(path, format="parquet")
    for batch in dataset.to_batches(batch_size=batch_rows):
        if batch.num_rows:
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            yield frame


def load_outputs(
    warehouse: Warehouse, out_dir: str, start: datetime | None, end: datetime | None
) -> dict[str, int]:
    """Replace ``[start, end)`` of the facts and rollups with the job's Parquet, in one
    transaction of ``warehouse``."""
    from adpulse.storage.warehouse.replace import REPLACED, replace_event_range
    from adpulse.storage.warehouse.sql import SqlWarehouse

    if not isinstance(warehouse, SqlWarehouse):
        raise TypeError(f"cannot load into {type(warehouse).__name__}: not a SQL warehouse")
    tables = {name: parquet_batches(f"{out_dir.rstrip('/')}/{name}") for name in REPLACED}
    return replace_event_range(warehouse, start, end, tables)
