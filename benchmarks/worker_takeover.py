"""Takeover time of workers sharing partitions: kill -9 one worker while events flow and
time (from the kill) until its partitions are leased by survivors and until a survivor's
first commit on them.

Run: ``python benchmarks/worker_takeover.py --pg-url postgresql://postgres@127.0.0.1:5432/test
--redis-url redis://127.0.0.1:6379/0 [--workers 2] [--lease 5] [--rounds 3]``. Each round
uses a fresh PostgreSQL schema and Redis prefix (dropped afterwards), starts the workers
as ``adpulse process`` processes, produces generated events at ``--rate`` and kills the
first worker once it has committed. Prints figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from adpulse.sources.files import write_dataset
from adpulse.sources.generator import EventGenerator, GeneratorConfig
from adpulse.sources.producer import replay_directory
from adpulse.storage.warehouse.postgres import PostgresWarehouse
from adpulse.transport.redis_streams import RedisStreamsTransport

PARTITIONS = 4


def _wait(condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


def one_round(args: argparse.Namespace, data: Path, home: Path) -> tuple[float, float]:
    schema, prefix = f"bench_{uuid.uuid4().hex[:12]}", f"bench-{uuid.uuid4().hex[:12]}"
    wh = PostgresWarehouse(args.pg_url, schema=schema)
    wh.create_schema()
    transport = RedisStreamsTransport(args.redis_url, PARTITIONS, prefix=prefix)
    env = {
        **os.environ,
        "ADPULSE_HOME": str(home),
        "ADPULSE_PARTITIONS": str(PARTITIONS),
        "ADPULSE_WAREHOUSE_URL": f"{args.pg_url}?options=-csearch_path%3D{schema}",
        "ADPULSE_TRANSPORT_URL": f"{args.redis_url}?prefix={prefix}",
        "ADPULSE_WORKER_LEASE_SECONDS": str(args.lease),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "adpulse", "process", "--supervised"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(args.workers)
    ]

    def owners() -> dict[int, int]:
        rows = wh.query(
            'SELECT l."partition", w.pid FROM partition_leases l JOIN workers w'
            " ON w.worker_id = l.owner WHERE l.expires_at > LOCALTIMESTAMP"
        ).rows()
        return {int(p): int(pid) for p, pid in rows}

    try:
        _wait(lambda: len(set(owners().values())) == args.workers, 120)
        producer = threading.Thread(
            target=replay_directory,
            args=(data, transport.producer(), PARTITIONS),
            kwargs={"rate": args.rate},
        )
        producer.start()
        victim = procs[0]
        lost = [p for p, pid in owners().items() if pid == victim.pid]
        marks = ", ".join("?" for _ in lost)

        def last_commit() -> datetime | None:
            value = wh.query(
                f'SELECT MAX(updated_at) FROM checkpoints WHERE "partition" IN ({marks})', lost
            ).item()
            return value if isinstance(value, datetime) else None

        _wait(lambda: last_commit() is not None, 60)
        time.sleep(args.lease)  # a steady state, mid-stream
        victim.send_signal(signal.SIGKILL)
        killed_at, killed = datetime.now(UTC).replace(tzinfo=None), time.monotonic()
        survivors = {p.pid for p in procs[1:]}

        def taken() -> bool:
            now = owners()
            return len(now) == PARTITIONS and set(now.values()) <= survivors

        _wait(taken, 120)
        leased = time.monotonic() - killed
        _wait(lambda: (last_commit() or killed_at) > killed_at, 120)
        committed = time.monotonic() - killed
        producer.join()
        return leased, committed
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        transport.delete_all()
        transport.close()
        wh.close()
        with psycopg.connect(args.pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pg-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lease", type=float, default=5.0, help="worker_lease_seconds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=5_000, help="events/s produced")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        end = datetime(2023, 9, 10)
        seconds = 2 * args.lease + 10  # events keep flowing past the takeover
        write_dataset(
            data,
            EventGenerator(GeneratorConfig(seed=3)),
            int(args.rate * seconds),
            end - timedelta(days=1),
            end,
        )
        print(
            f"{args.workers} workers, {PARTITIONS} partitions, lease {args.lease}s,"
            f" {args.rate:,.0f} events/s"
        )
        for n in range(args.rounds):
            leased, committed = one_round(args, data, Path(tmp))
            print(
                f"round {n + 1}: leased by survivors {leased:.2f}s,"
                f" first commit {committed:.2f}s after kill -9"
            )


if __name__ == "__main__":
    main()
