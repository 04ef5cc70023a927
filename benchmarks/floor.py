"""The floor under issue 13's goals 1 and 2: what storing every event costs at the least.

``adpulse bench --compare`` times ``replay`` against a plain DuckDB query computing the
per-ad answers from the same JSON-lines files, and ``adpulse bench`` the pipeline
against Polars' decode of the same bytes (the ceiling). Both yardsticks only read:
the DuckDB query reads two fields of each impression and keeps nothing, the ceiling
decodes and drops. adpulse must also keep every event (the warehouse's denormalized
facts), so a lower bound of any design that does is "decode every field, then write it
once", without the log, validation, dedupe, enrichment, attribution, rollups or commit.

This script generates the ``bench --compare`` workload (seed 7, no malformed records)
and times, in one process on the same files (best of ``--repeat``; wall and CPU
seconds, all threads):

1. the DuckDB per-ad query of ``bench --compare`` (``duckdb_per_ad``);
2. the decode ceiling of ``bench`` (``polars.read_ndjson`` with each stream's schema);
3. the floor in Polars: that decode, then each stream's decoded columns written as
   Parquet, with the codec of the warehouse's impression segments (zstd) and with lz4
   and none (so the codec is not what decides);
4. the floor in DuckDB: ``read_json`` of every field, ``COPY ... TO`` Parquet (zstd);
5. the embedded log, which ``replay`` appends the files to and the pipeline reads: each
   file appended as it is (its lines are already framed records) in 64 MiB chunks,
   then read back chunk by chunk;
6. the steps a DuckDB SQL processor would add for impressions, one statement each
   into a table: read, event time, dedupe (``DISTINCT ON``), the as-of join with users.

It prints the bounds these set, from CPU seconds (which add up, whatever runs at the
same time) and wall seconds no shorter than that CPU spread over every core: the best
``replay / DuckDB`` any such design can reach (replay appends to the log, reads it and
stores the facts: their CPU against the query's), and the best share of the ceiling
``bench`` can report (its pipeline reads a filled log and stores the facts).

Run: ``python benchmarks/floor.py --events 2000000``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import duckdb
import polars as pl

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.operations.bench import (
    WORKLOAD_START,
    _decode_files,
    _event_time,
    duckdb_per_ad,
)
from adpulse.sources.files import iter_stream_files, write_dataset
from adpulse.sources.generator import EventGenerator, GeneratorConfig
from adpulse.transport.embedded import EmbeddedTransport

#: The log's chunk size (the processor's ``batch_max_bytes`` default).
CHUNK_BYTES = 64 << 20


def best(repeat: int, work: Callable[[], object]) -> tuple[float, float]:
    """The fastest of ``repeat`` runs: (wall seconds, CPU seconds of that run)."""
    runs = []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(runs)


def polars_floor(files: dict[Stream, Path], out: Path, codec: str) -> None:
    for stream, path in files.items():
        frame = pl.read_ndjson(path, schema=stream.decode_schema)
        frame.write_parquet(out / f"{stream}.parquet", compression=codec)  # type: ignore[arg-type]


def log_write(files: dict[Stream, Path], log_dir: Path) -> None:
    """Each file appended to a fresh embedded log as it is (its lines are already framed
    records), in chunks of whole lines."""
    shutil.rmtree(log_dir, ignore_errors=True)
    transport = EmbeddedTransport(log_dir, 1)
    producer = transport.producer()
    for stream, path in files.items():
        with path.open("rb") as source:
            rest = b""
            while block := source.read(CHUNK_BYTES):
                block = rest + block
                end = block.rfind(b"\n") + 1
                producer.send_framed(stream, 0, block[:end], 0)
                rest = block[end:]
    producer.close()
    transport.close()


def log_read(files: dict[Stream, Path], log_dir: Path) -> None:
    """Every chunk of the log read back, as the processor polls it."""
    transport = EmbeddedTransport(log_dir, 1)
    consumer = transport.consumer()
    for stream in files:
        after = None
        while (chunk := consumer.poll(stream, 0, after, CHUNK_BYTES)) is not None:
            after = chunk.end_offset
    transport.close()


def duckdb_floor(files: dict[Stream, Path], out: Path) -> None:
    con = duckdb.connect()
    try:
        for stream, path in files.items():
            columns = {name: "VARCHAR" for name in stream.decode_schema}
            columns["ad_id"] = "BIGINT"
            con.execute(
                "COPY (SELECT * FROM read_json(?, format = 'newline_delimited', columns = "
                f"{columns!r})) TO '{out / f'{stream}.duckdb.parquet'}' "
                "(FORMAT parquet, COMPRESSION zstd)",
                [str(path)],
            )
    finally:
        con.close()


def duckdb_sql_steps(files: dict[Stream, Path], repeat: int) -> dict[str, tuple[float, float]]:
    """Impressions through the statements a DuckDB SQL processor would run."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    users = files[Stream.IMPRESSIONS].parent / "users.csv"
    con.execute(
        "CREATE TABLE dim_users AS SELECT trim(user_id) AS user_id, age::INT AS age,"
        " trim(gender) AS gender, trim(interests) AS interests,"
        " TIMESTAMP '1970-01-01' AS valid_from FROM read_csv(?, header = true)",
        [str(users)],
    )
    columns = {name: "VARCHAR" for name in Stream.IMPRESSIONS.decode_schema}
    columns["ad_id"] = "BIGINT"
    path = str(files[Stream.IMPRESSIONS])
    steps = {
        "read every field": "CREATE OR REPLACE TABLE raw AS SELECT * FROM read_json("
        f"'{path}', format = 'newline_delimited', columns = {columns!r})",
        "event time": "CREATE OR REPLACE TABLE timed AS SELECT *, "
        f"{_event_time('impression_timestamp')} AS event_time FROM raw",
        "dedupe (DISTINCT ON)": "CREATE OR REPLACE TABLE unique_events AS"
        " SELECT DISTINCT ON (event_id) * FROM timed",
        "as-of join with users": "CREATE OR REPLACE TABLE enriched AS SELECT e.*, u.gender,"
        " u.age, u.interests FROM unique_events e ASOF LEFT JOIN dim_users u"
        " ON e.user_id = u.user_id AND e.event_time >= u.valid_from",
    }
    try:
        return {name: best(repeat, lambda sql=sql: con.execute(sql)) for name, sql in steps.items()}
    finally:
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="adpulse-floor-", dir=args.workdir))
    try:
        data = root / "files"
        gen = EventGenerator(GeneratorConfig(seed=7, malformed_rate=0.0))
        days = max(1.0, args.events / 3_000_000)
        summary = write_dataset(
            data, gen, args.events, WORKLOAD_START, WORKLOAD_START + timedelta(days=days)
        )
        files = iter_stream_files(data)
        events = sum(summary["records"].values())
        out = root / "out"
        out.mkdir()
        lookback = timedelta(seconds=Settings().attribution_lookback_seconds)

        times: dict[str, tuple[float, float]] = {
            "DuckDB per-ad query (bench --compare)": best(
                args.repeat, lambda: duckdb_per_ad(data, lookback)
            ),
            "decode ceiling (bench)": best(args.repeat, lambda: _decode_files(data)),
        }
        for codec in ("zstd", "lz4", "uncompressed"):
            times[f"floor, Polars: decode + Parquet {codec}"] = best(
                args.repeat, lambda codec=codec: polars_floor(files, out, codec)
            )
        times["floor, DuckDB: read_json + COPY Parquet zstd"] = best(
            args.repeat, lambda: duckdb_floor(files, out)
        )
        times["embedded log: append the files"] = best(
            args.repeat, lambda: log_write(files, root / "log")
        )
        times["embedded log: read them back"] = best(
            args.repeat, lambda: log_read(files, root / "log")
        )
        steps = duckdb_sql_steps(files, args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    query = times["DuckDB per-ad query (bench --compare)"]
    ceiling = times["decode ceiling (bench)"]
    # Lower bounds in CPU seconds (the steps' CPU adds up whatever overlaps), and in wall
    # seconds that CPU spread over every core. bench's pipeline reads a filled log;
    # replay also appends to it.
    fact_cpu = min(c for name, (_, c) in times.items() if name.startswith("floor"))
    read_cpu = times["embedded log: read them back"][1]
    write_cpu = times["embedded log: append the files"][1]
    cores = os.cpu_count() or 1
    bench_cpu = read_cpu + fact_cpu
    replay_cpu = write_cpu + read_cpu + fact_cpu
    result = {
        "events": events,
        "seconds": {
            name: {"wall": round(w, 3), "cpu": round(c, 3)} for name, (w, c) in times.items()
        },
        "duckdb_sql_impressions": {
            name: {"wall": round(w, 3), "cpu": round(c, 3)} for name, (w, c) in steps.items()
        },
        "cores": cores,
        "floor_cpu": {
            "bench (log read + decode + write)": round(bench_cpu, 3),
            "replay (log append + read + decode + write)": round(replay_cpu, 3),
        },
        "best_replay_vs_duckdb": round(query[0] / (replay_cpu / cores), 3),
        "best_replay_vs_duckdb_cpu": round(query[1] / replay_cpu, 3),
        "best_share_of_ceiling": round(ceiling[0] / (bench_cpu / cores), 3),
        "best_share_of_ceiling_cpu": round(ceiling[1] / bench_cpu, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
