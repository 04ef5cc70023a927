"""``adpulse reprocess`` against the streaming processor, on the same events.

    .venv/bin/python benchmarks/reprocess.py --events 300000 --master 'local[2]'

Generates a data set, replays it into an embedded log once, then times on that same log
(a) the streaming processor (decode -> commit into DuckDB, one process) and (b) the Spark
job in ``--master`` (read -> Parquet; the load into the warehouse is timed apart).
Prints events/s of both, their ratio, and the CPU seconds each spent (the Spark JVM's
from /proc), and from those where the crossover lies: the cores at which the Spark job's
CPU time, spread evenly, would take as long as the streaming processor's wall time.
Figures on a shared machine are loaded: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from builders import generated_dataset, load_dimensions, open_pipeline  # noqa: E402

from adpulse.reprocess import job, run  # noqa: E402
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse  # noqa: E402
from adpulse.transport.embedded import EmbeddedTransport  # noqa: E402

NOW = datetime(2026, 1, 1)


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="adpulse-reprocess-bench-"))
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    generated_dataset(
        data, args.events, datetime(2023, 9, 8), datetime(2023, 9, 10), seed=7, users=20_000
    )
    home = work / "stream"
    transport = EmbeddedTransport(home / "log", args.partitions)
    warehouse = DuckDBWarehouse(home / "warehouse.duckdb")
    pipeline = open_pipeline(data, home, transport, warehouse, NOW)
    pipeline.replay(data)
    records = sum(
        (data / f"{s}.jsonl").read_bytes().count(b"\n")
        for s in ("impressions", "clicks", "conversions")
    )

    cpu0, t0 = _cpu_self(), time.perf_counter()
    processor = pipeline.processor()
    processor.run(threading.Event(), until_caught_up=True)
    processor.close()
    stream_wall, stream_cpu = time.perf_counter() - t0, _cpu_self() - cpu0

    spark = run.spark_session(
        args.master, **{"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}
    )
    spark.sparkContext.setLogLevel("ERROR")
    jvm_pid = int(spark._jvm.ProcessHandle.current().pid())  # type: ignore[attr-defined]
    target = DuckDBWarehouse(work / "spark.duckdb")
    target.create_schema()
    load_dimensions(target, data)
    rules = job.Rules.from_settings(pipeline.settings, NOW)
    jvm0, cpu0, t0 = _cpu_of(jvm_pid), _cpu_self(), time.perf_counter()
    result = run.run_job(spark, str(home / "log"), str(work / "out"), rules, target)
    spark_wall = time.perf_counter() - t0
    spark_cpu = _cpu_of(jvm_pid) - jvm0 + _cpu_self() - cpu0
    t0 = time.perf_counter()
    run.load_outputs(target, str(work / "out"), None, None)
    load_wall = time.perf_counter() - t0
    same = (
        warehouse.query("SELECT count(*) FROM fact_conversions").item()
        == (result.rows["fact_conversions"])
    )
    report = {
        "records": records,
        "master": args.master,
        "stream_events_per_s": round(records / stream_wall),
        "stream_cpu_s": round(stream_cpu, 1),
        "spark_events_per_s": round(records / spark_wall),
        "spark_cpu_s": round(spark_cpu, 1),
        "spark_load_s": round(load_wall, 1),
        "spark_over_stream": round(stream_wall / spark_wall, 3),
        "spark_cpu_over_stream_cpu": round(spark_cpu / max(stream_cpu, 1e-9), 1),
        "crossover_cores": round(spark_cpu / stream_wall, 1),
        "same_conversions": same,
    }
    print(json.dumps(report, indent=2))
    spark.stop()


if __name__ == "__main__":
    main()
