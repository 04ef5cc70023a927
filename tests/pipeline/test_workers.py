"""Workers sharing the partitions, as real ``adpulse process`` processes over Redis
Streams and PostgreSQL: kill -9 one of two or three workers mid-stream and the final
warehouse equals the independent oracle (nothing lost, nothing counted twice); the dead
worker's partitions move to the survivors within the lease TTL (plus slack) and back
when it returns; ``process --workers N`` runs and finishes; DuckDB refuses more than one
worker. Fencing and lease rules are tested in tests/storage/test_leases.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import oracle
import pytest
from builders import generated_dataset, load_dimensions
from pgtest import PG_URL, drop_schema, new_schema, require_postgres
from redistest import REDIS_URL, delete_prefix, new_prefix, require_redis
from typer.testing import CliRunner

from adpulse.cli.main import app
from adpulse.cli.runtime import UserError
from adpulse.contracts import Stream
from adpulse.sources.producer import replay_directory
from adpulse.storage.warehouse.postgres import PostgresWarehouse
from adpulse.transport.redis_streams import RedisStreamsTransport

# Not concurrently with the other crash test: both time processes on 2 shared cores.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("crash")]

PARTITIONS = 4
LEASE_SECONDS = 1.5
#: What a loaded 2-core machine may add to the lease TTL before a takeover shows.
SLACK_SECONDS = 6.0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    generated_dataset(
        data,
        30_000,
        datetime(2023, 9, 9),
        datetime(2023, 9, 10),
        seed=17,
        ads=40,
        campaigns=8,
        users=1_500,
        ctr_mean=0.2,
        conversion_rate_min=0.2,
        conversion_rate_max=0.4,
        duplicate_rate=0.02,
        out_of_order_rate=0.05,
        late_rate=0.01,
        malformed_rate=0.004,
    )
    return data


@pytest.fixture(scope="module")
def truth(dataset: Path) -> Iterator[tuple[duckdb.DuckDBPyConnection, dict[str, int]]]:
    con = duckdb.connect()
    received = oracle.build(con, dataset, now=datetime.now(UTC).replace(tzinfo=None))
    yield con, received
    con.close()


@dataclass
class Cluster:
    """One PostgreSQL schema and Redis prefix, and the worker processes started on them."""

    home: Path
    env: dict[str, str]
    warehouse: PostgresWarehouse
    transport: RedisStreamsTransport
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = (self.home / f"worker-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "adpulse", "process", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text()[-2000:] for p in sorted(self.home.glob("worker-*.log")))

    def owners(self) -> dict[int, int]:
        """Partition -> pid of the worker holding a live lease on it."""
        rows = self.warehouse.query(
            'SELECT l."partition", w.pid FROM partition_leases l'
            " JOIN workers w ON w.worker_id = l.owner WHERE l.expires_at > LOCALTIMESTAMP"
        ).rows()
        return {int(p): int(pid) for p, pid in rows}

    def shares(self) -> dict[int, int]:
        return dict(Counter(self.owners().values()))

    def received(self, partitions: list[int]) -> int:
        marks = ", ".join("?" for _ in partitions)
        total = self.warehouse.query(
            f'SELECT SUM(received) FROM ingest_stats WHERE "partition" IN ({marks})', partitions
        ).item()
        return int(total or 0)

    def last_commit(self, partitions: list[int]) -> datetime | None:
        marks = ", ".join("?" for _ in partitions)
        value = self.warehouse.query(
            f'SELECT MAX(updated_at) FROM checkpoints WHERE "partition" IN ({marks})', partitions
        ).item()
        return value if isinstance(value, datetime) else None

    def caught_up(self) -> bool:
        committed = self.warehouse.load_offsets()
        consumer = self.transport.consumer()
        return all(
            consumer.lag_bytes(s, p, committed.get((s, p))) == 0
            for s in Stream
            for p in range(PARTITIONS)
        )

    def stop_all(self) -> None:
        """Ctrl-C every live worker; each must drain, release and exit 0."""
        live = [p for p in self.procs if p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGINT)
        for proc in live:
            assert proc.wait(timeout=30) == 0, self.logs()
        free = self.warehouse.query(
            "SELECT COUNT(*) FROM partition_leases WHERE owner IS NULL"
        ).item()
        assert free == PARTITIONS  # every lease given back
        live = "SELECT COUNT(*) FROM workers WHERE expires_at > LOCALTIMESTAMP"
        assert self.warehouse.query(live).item() == 0  # (a killed one's row stays, expired)


@contextmanager
def cluster(tmp_path: Path, dims_from: Path | None = None) -> Iterator[Cluster]:
    require_postgres()
    require_redis()
    schema, prefix = new_schema(), new_prefix()
    warehouse = PostgresWarehouse(PG_URL, schema=schema)
    transport = RedisStreamsTransport(REDIS_URL, PARTITIONS, prefix=prefix)
    c = Cluster(
        home=tmp_path,
        env={
            **os.environ,
            "ADPULSE_HOME": str(tmp_path),
            "ADPULSE_PARTITIONS": str(PARTITIONS),
            "ADPULSE_WAREHOUSE_URL": f"{PG_URL}?options=-csearch_path%3D{schema}",
            "ADPULSE_TRANSPORT_URL": f"{REDIS_URL}?prefix={prefix}",
            "ADPULSE_WORKER_LEASE_SECONDS": str(LEASE_SECONDS),
            # Watermarks move with event time only, as in the oracle (see test_crash).
            "ADPULSE_IDLE_TIMEOUT_SECONDS": "100000",
            "ADPULSE_BATCH_MAX_BYTES": str(64 * 1024),
        },
        warehouse=warehouse,
        transport=transport,
    )
    try:
        warehouse.create_schema()
        if dims_from is not None:
            load_dimensions(warehouse, dims_from)
        yield c
    finally:
        for proc in c.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        transport.close()
        warehouse.close()
        drop_schema(schema)
        delete_prefix(prefix)


def _wait(condition: Callable[[], bool], timeout: float, what: str, c: Cluster) -> float:
    """Seconds until ``condition`` held (polled every 50 ms); fails after ``timeout``."""
    start = time.monotonic()
    while not condition():
        for proc in c.procs:
            code = proc.poll()
            assert code in (None, -signal.SIGKILL), f"a worker exited ({code}):\n{c.logs()}"
        assert time.monotonic() - start < timeout, f"{what}: not after {timeout} s\n{c.logs()}"
        time.sleep(0.05)
    return time.monotonic() - start


def _shares(workers: int) -> list[int]:
    base, extra = divmod(PARTITIONS, workers)
    return sorted([base + 1] * extra + [base] * (workers - extra))


def _produce(c: Cluster, data: Path, rate: float | None) -> threading.Thread:
    def run() -> None:
        transport = RedisStreamsTransport(REDIS_URL, PARTITIONS, prefix=c.transport.prefix)
        try:
            replay_directory(data, transport.producer(), PARTITIONS, rate=rate)
        finally:
            transport.close()

    thread = threading.Thread(target=run, name="producer")
    thread.start()
    return thread


@pytest.mark.parametrize("workers", [2, 3])
def test_kill_9_one_worker_mid_stream_equals_oracle(
    workers: int,
    dataset: Path,
    truth: tuple[duckdb.DuckDBPyConnection, dict[str, int]],
    tmp_path: Path,
) -> None:
    """With 2 workers the killed one also comes back, and gets its share back."""
    with cluster(tmp_path, dims_from=dataset) as c:
        for _ in range(workers):
            c.start()
        _wait(lambda: sorted(c.shares().values()) == _shares(workers), 60, "fair shares", c)
        producer = _produce(c, dataset, rate=6_000)
        victim = c.procs[0]
        lost = sorted(p for p, pid in c.owners().items() if pid == victim.pid)
        _wait(lambda: c.received(lost) > 0, 30, "the victim's first commit", c)
        assert producer.is_alive()  # mid-stream
        victim.send_signal(signal.SIGKILL)
        killed_at, killed = datetime.now(UTC).replace(tzinfo=None), time.monotonic()
        assert victim.wait() == -signal.SIGKILL
        survivors = {p.pid for p in c.procs[1:]}

        def owned_by_survivors() -> bool:
            owners = c.owners()
            return len(owners) == PARTITIONS and set(owners.values()) <= survivors

        _wait(owned_by_survivors, LEASE_SECONDS + SLACK_SECONDS, "owned by survivors", c)
        moved = time.monotonic() - killed

        def taken_over() -> bool:
            last = c.last_commit(lost)
            return last is not None and last > killed_at

        _wait(taken_over, LEASE_SECONDS + SLACK_SECONDS, "takeover", c)
        takeover = time.monotonic() - killed
        assert takeover <= LEASE_SECONDS + SLACK_SECONDS
        print(
            f"{workers} workers, lease {LEASE_SECONDS}s: partitions owned again"
            f" {moved:.2f}s, first commit on them {takeover:.2f}s after kill -9"
        )
        if workers == 2:
            returned = c.start()
            survivor = c.procs[1]
            _wait(lambda: c.shares() == {survivor.pid: 2, returned.pid: 2}, 60, "share back", c)
            epochs = dict(
                c.warehouse.query('SELECT "partition", epoch FROM partition_leases').rows()
            )
            assert all(epochs[p] >= 2 for p in lost)  # the dead worker's changed owner
            status = CliRunner().invoke(app, ["status", "--format", "json"], env=c.env)
            assert status.exit_code == 0, status.output
            owners = json.loads(status.output)["partition_owners"]
            assert [o["partition"] for o in owners] == list(range(PARTITIONS))
            assert Counter(o["pid"] for o in owners) == {survivor.pid: 2, returned.pid: 2}
            assert all(o["live"] and o["host"] and o["worker_id"] for o in owners)
            # A processor over all partitions beside the workers would count twice.
            with pytest.raises(UserError, match="workers are processing"):
                CliRunner().invoke(app, ["replay", str(dataset)], env=c.env, catch_exceptions=False)
        producer.join(timeout=60)
        _wait(c.caught_up, 60, "everything committed", c)
        c.stop_all()
        oracle.assert_warehouse_equals(c.warehouse, truth, least_attributed=100)


def test_workers_option_processes_everything(
    dataset: Path, truth: tuple[duckdb.DuckDBPyConnection, dict[str, int]], tmp_path: Path
) -> None:
    with cluster(tmp_path, dims_from=dataset) as c:
        _produce(c, dataset, rate=None).join()
        supervisor = c.start("--workers", "2", "--until-caught-up")
        assert supervisor.wait(timeout=120) == 0, c.logs()
        assert c.logs().count("committed") == 2  # one line per worker
        oracle.assert_warehouse_equals(c.warehouse, truth, least_attributed=100)
        assert c.warehouse.query("SELECT COUNT(*) FROM workers").item() == 0


def test_several_workers_need_a_shared_warehouse(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--workers 2 needs a warehouse that several processes"):
        CliRunner().invoke(
            app, ["process", "--home", str(tmp_path), "--workers", "2"], catch_exceptions=False
        )
