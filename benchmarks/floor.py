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
5. the Polars floor (uncompressed) with the durable log that ``replay`` goes through:
   each file appended to a fresh embedded log as it is (its lines are already framed
   records) in 64 MiB chunks, read back, and each chunk decoded and written;
6. the steps a DuckDB SQL processor would add for impressions, one statement each
   into a table: read, event time, dedupe (``DISTINCT ON``), the as-of join with users.

It prints the bounds these floors set: DuckDB query / the floor through the log, the
best ``replay / DuckDB`` any such design can reach (replay goes through the log);
ceiling / the cheapest floor without it, the best share of the ceiling ``bench`` can
report (its pipeline starts from a filled log).

Run: ``python benchmarks/floor.py --events 2000000``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import io
import json
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
from adpulse.operations.bench import WORKLOAD_START, _event_time, duckdb_per_ad
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


def log_floor(files: dict[Stream, Path], out: Path, log_dir: Path) -> None:
    shutil.rmtree(log_dir, ignore_errors=True)
    transport = EmbeddedTransport(log_dir, 1)
    producer, consumer = transport.producer(), transport.consumer()
    for stream, path in files.items():
        with path.open("rb") as source:
            rest = b""
            while block := source.read(CHUNK_BYTES):
                block = rest + block
                end = block.rfind(b"\n") + 1
                producer.send_framed(stream, 0, block[:end], 0)
                rest = block[end:]
        producer.flush()
        after, part = None, 0
        while (chunk := consumer.poll(stream, 0, after, CHUNK_BYTES)) is not None:
            frame = pl.read_ndjson(io.BytesIO(chunk.data), schema=stream.decode_schema)
            frame.write_parquet(out / f"{stream}-{part}.parquet", compression="uncompressed")
            after, part = chunk.end_offset, part + 1
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
        write_dataset(data, gen, args.events, WORKLOAD_START, WORKLOAD_START + timedelta(days=days))
        files = iter_stream_files(data)
        events = sum(
            pl.scan_ndjson(p, schema={"x": pl.Int8}).select(pl.len()).collect().item()
            for p in files.values()
        )
        out = root / "out"
        out.mkdir()
        lookback = timedelta(seconds=Settings().attribution_lookback_seconds)

        times: dict[str, tuple[float, float]] = {
            "DuckDB per-ad query (bench --compare)": best(
                args.repeat, lambda: duckdb_per_ad(data, lookback)
            ),
            "decode ceiling (bench)": best(
                args.repeat,
                lambda: [pl.read_ndjson(p, schema=s.decode_schema) for s, p in files.items()],
            ),
        }
        for codec in ("zstd", "lz4", "uncompressed"):
            times[f"floor, Polars: decode + Parquet {codec}"] = best(
                args.repeat, lambda codec=codec: polars_floor(files, out, codec)
            )
        times["floor, DuckDB: read_json + COPY Parquet zstd"] = best(
            args.repeat, lambda: duckdb_floor(files, out)
        )
        times["floor, Polars, uncompressed, through the embedded log"] = best(
            args.repeat, lambda: log_floor(files, out, root / "log")
        )
        steps = duckdb_sql_steps(files, args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    query = times["DuckDB per-ad query (bench --compare)"]
    ceiling = times["decode ceiling (bench)"]
    # replay goes through the log; bench's pipeline starts from a filled log.
    through_log = times["floor, Polars, uncompressed, through the embedded log"]
    floor = min(
        (t for name, t in times.items() if name.startswith("floor") and "log" not in name),
        key=lambda t: t[0],
    )
    result = {
        "events": events,
        "seconds": {
            name: {"wall": round(w, 3), "cpu": round(c, 3)} for name, (w, c) in times.items()
        },
        "duckdb_sql_impressions": {
            name: {"wall": round(w, 3), "cpu": round(c, 3)} for name, (w, c) in steps.items()
        },
        "best_replay_vs_duckdb": round(query[0] / through_log[0], 3),
        "best_replay_vs_duckdb_cpu": round(query[1] / through_log[1], 3),
        "best_share_of_ceiling": round(ceiling[0] / floor[0], 3),
        "best_share_of_ceiling_cpu": round(ceiling[1] / floor[1], 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
