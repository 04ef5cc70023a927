"""What a cold start of the consumer Lambda costs, against a warm invocation.

A warehouse first gets ``--events`` events of history (generated over ``--days`` days,
processed as ``adpulse replay`` would). Then, with the local AWS API server (moto) as
Kinesis, ``--delivery`` events are put on the streams and read back as event-source-
mapping deliveries, and the benchmark measures:

- importing ``adpulse.aws.consumer`` in a fresh interpreter (the init phase's imports);
- the cold start: opening the runtime (transport, warehouse) and rebuilding the
  processor's state (dedupe keys, open clicks and conversions) from the warehouse;
- the first delivery after it, then the same amount again on the warm state.

Run: ``.venv/bin/python benchmarks/lambda_cold_start.py [--events 1000000] [--days 2]
[--delivery 2000] [--warehouse duckdb|postgresql://...] [--profile]``. It also times the producer
(``ProducerFunction``: init, then invocations of 1,000 events). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import logging
import os
import pstats
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from adpulse.aws.consumer import ConsumerFunction
from adpulse.aws.producer import ProducerFunction
from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.processor.pipeline import Processor
from adpulse.sources.files import write_dataset
from adpulse.sources.generator import EventGenerator, GeneratorConfig
from adpulse.sources.producer import replay_directory
from adpulse.storage.dimensions import read_dimension_csv
from adpulse.storage.warehouse import open_warehouse
from adpulse.transport.kinesis import KinesisTransport, stream_name
from adpulse.transport.memory import InMemoryTransport

REGION = "eu-central-1"
PARTITIONS = 2
START = datetime(2023, 9, 1)


def history(settings: Settings, data: Path, events: int, days: int) -> None:
    """Generate and process ``events`` events of history into the warehouse."""
    gen = EventGenerator(GeneratorConfig(seed=7))
    write_dataset(data, gen, events, START, START + timedelta(days=days))
    with open_warehouse(settings) as wh:
        for name in ("campaigns.csv", "users.csv"):
            kind, rows = read_dimension_csv(data / name)
            wh.load_dimension(kind, rows, datetime(2023, 1, 1))
        transport = InMemoryTransport(PARTITIONS)
        replay_directory(data, transport.producer(), PARTITIONS)
        processor = Processor(settings, transport, wh)
        processor.run(threading.Event(), until_caught_up=True)
        processor.close()
    # The history's offsets are the in-memory log's; the Kinesis streams start afresh.
    if settings.warehouse_url.startswith("duckdb"):
        import duckdb

        with duckdb.connect(str(settings.warehouse_path)) as con:
            con.execute("DELETE FROM checkpoints")
    else:
        import psycopg

        with psycopg.connect(settings.warehouse_url, autocommit=True) as con:
            con.execute("DELETE FROM checkpoints")


def deliveries(endpoint: str, prefix: str, events: int, days: int) -> list[dict[str, Any]]:
    """``events`` events just after the history, put on Kinesis and read back as events
    of at most 10 Kinesis records (one shard of one stream each)."""
    client = boto3.client("kinesis", region_name=REGION, endpoint_url=endpoint)
    transport = KinesisTransport(prefix, PARTITIONS, client=client, shards=PARTITIONS)
    with TemporaryDirectory() as tmp:
        end = START + timedelta(days=days)
        write_dataset(
            Path(tmp),
            EventGenerator(GeneratorConfig(seed=8)),
            events,
            end,
            end + timedelta(minutes=10),
        )
        replay_directory(Path(tmp), transport.producer(), PARTITIONS, chunk_bytes=16 * 1024)
    out = []
    for stream in Stream:
        name = stream_name(prefix, stream)
        for shard in client.list_shards(StreamName=name)["Shards"]:
            it = client.get_shard_iterator(
                StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            rows = client.get_records(ShardIterator=it, Limit=10_000)["Records"]
            records = [
                {
                    "eventSourceARN": f"arn:aws:kinesis:{REGION}:123456789012:stream/{name}",
                    "eventID": f"{shard['ShardId']}:{r['SequenceNumber']}",
                    "kinesis": {
                        "sequenceNumber": r["SequenceNumber"],
                        "partitionKey": r["PartitionKey"],
                        "data": base64.b64encode(r["Data"]).decode(),
                    },
                }
                for r in rows
            ]
            out.extend({"Records": records[i : i + 10]} for i in range(0, len(records), 10))
    return out


def import_seconds() -> float:
    code = (
        "import time; t = time.perf_counter(); import adpulse.aws.consumer;"
        " print(time.perf_counter() - t)"
    )
    return float(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )


def producer_seconds(settings: Settings, events: int = 1000, runs: int = 6) -> None:
    """The producer: its cold start, then invocations of ``events`` events each."""
    t = time.perf_counter()
    producer = ProducerFunction(settings)
    init = time.perf_counter() - t
    seconds = []
    now = datetime.now(UTC)
    for i in range(runs):
        t = time.perf_counter()
        producer.generate(events, now + timedelta(minutes=i))
        seconds.append(time.perf_counter() - t)
    producer.close()
    warm = sorted(seconds[1:])
    print(
        f"producer: init {init:.3f} s, first invocation of {events} events {seconds[0]:.3f} s,"
        f" warm median {warm[len(warm) // 2]:.3f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--delivery", type=int, default=2_000)
    parser.add_argument("--warehouse", default="duckdb")
    parser.add_argument(
        "--profile", action="store_true", help="print where the cold start's time goes (cProfile)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        os.environ.setdefault(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        with TemporaryDirectory() as tmp:
            home = Path(tmp)
            prefix = "coldstart"
            settings = Settings(
                home=home,
                partitions=PARTITIONS,
                transport_url=f"kinesis://{prefix}?region={REGION}&shards={PARTITIONS}&endpoint_url={endpoint}",
                warehouse_url=f"duckdb:///{home / 'warehouse.duckdb'}"
                if args.warehouse == "duckdb"
                else args.warehouse,
            )
            t = time.perf_counter()
            history(settings, home / "data", args.events, args.days)
            print(f"history: {args.events:,} events processed in {time.perf_counter() - t:.1f} s")
            events = deliveries(endpoint, prefix, args.delivery, args.days)
            print(f"import adpulse.aws.consumer (fresh interpreter): {import_seconds():.3f} s")
            profiler = cProfile.Profile() if args.profile else None
            if profiler is not None:
                profiler.enable()
            function = ConsumerFunction(settings)
            if profiler is not None:
                profiler.disable()
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
            cold = function.cold_start
            print(f"cold start: open {cold['open']:.3f} s, rebuild state {cold['rebuild']:.3f} s")
            print(
                f"state rebuilt: {len(function.processor.dedupe):,} dedupe keys, "
                f"{len(function.processor.clicks):,} clicks, "
                f"{len(function.processor.open_conversions):,} open conversions"
            )
            seconds = []
            for event in events:
                t = time.perf_counter()
                assert function.handle(event) == {"batchItemFailures": []}
                seconds.append(time.perf_counter() - t)
            warm = sorted(seconds[1:])
            print(
                f"first invocation (cold state): {seconds[0]:.3f} s; the {len(warm)} warm ones:"
                f" median {warm[len(warm) // 2]:.3f} s, max {warm[-1]:.3f} s"
                f" ({sum(len(e['Records']) for e in events)} Kinesis records in all)"
            )
            function.close()
            producer_seconds(settings)
    finally:
        server.stop()
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
