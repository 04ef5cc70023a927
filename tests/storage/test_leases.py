"""Partition leases on the real PostgreSQL server: acquisition, fair shares, fencing (a
worker whose lease was taken cannot commit, and nothing of its batch lands), an
acquirer waiting for an in-flight commit, and batch ids unique across processes; with
the PostgreSQL backend's SQL and the Redshift backend's (run on PostgreSQL)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime

import orjson
import psycopg
import pytest
from pgtest import PG_URL, postgres_warehouse
from redshifttest import TEST_MARK

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.processor.pipeline import Processor
from adpulse.storage.warehouse.base import LeaseLostError
from adpulse.storage.warehouse.leases import PartitionLeases, WorkerIdentity
from adpulse.storage.warehouse.postgres import PostgresWarehouse
from adpulse.transport.memory import InMemoryTransport

PARTITIONS = 4
TTL = 30.0  # long: these tests expire leases explicitly, never by waiting


@pytest.fixture(params=["postgres", "redshift"])
def warehouses(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[PostgresWarehouse, PostgresWarehouse]]:
    """Two warehouse handles on one schema, as two worker processes would have; the
    Redshift backend's lease SQL (its clock) runs on PostgreSQL too, each statement
    checked against Redshift's grammar (see redshifttest.py)."""
    if request.param == "redshift":
        from redshifttest import IAM_ROLE, ParquetCopyShim, StatementLog, redshift_warehouse

        log = StatementLog()
        with redshift_warehouse(log) as first:
            second = ParquetCopyShim(PG_URL, first.staging, IAM_ROLE, schema=first.schema, log=log)
            try:
                yield first, second
            finally:
                second.close()
        assert log.problems() == {}
        return
    with postgres_warehouse() as first:
        second = PostgresWarehouse(PG_URL, schema=first.schema)
        try:
            yield first, second
        finally:
            second.close()


def _leases(wh: PostgresWarehouse, name: str, partitions: int = PARTITIONS) -> PartitionLeases:
    leases = wh.partition_leases(WorkerIdentity(name, "host-" + name, 100), partitions, TTL)
    leases.register()
    return leases


def _expire(wh: PostgresWarehouse, partition: int) -> None:
    """What the clock does to the lease of a paused worker: it runs out."""
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{wh.schema}"')
        conn.execute(
            f"{TEST_MARK} UPDATE partition_leases"
            " SET expires_at = LOCALTIMESTAMP - INTERVAL '1 second'"
            ' WHERE "partition" = %s',
            [partition],
        )


def test_acquire_only_free_partitions_and_epochs_grow(warehouses) -> None:  # type: ignore[no-untyped-def]
    wh_a, wh_b = warehouses
    a, b = _leases(wh_a, "a"), _leases(wh_b, "b")
    assert a.free() == [0, 1, 2, 3]
    assert a.acquire(0) == 1
    assert b.acquire(0) is None  # held and not expired
    assert b.acquire(1) == 1
    assert a.held() == {0: 1} and b.held() == {1: 1}
    assert a.free() == [2, 3]
    a.release(0, 1)
    assert b.acquire(0) == 2  # every change of owner bumps the epoch
    _expire(wh_b, 0)
    assert a.acquire(0) == 3
    assert b.heartbeat() == {1: 1}  # the expired-and-taken lease is not renewed
    a.leave()
    b.leave()
    assert a.free() == [0, 1, 2, 3]
    assert wh_a.query("SELECT COUNT(*) FROM workers").item() == 0
    a.close()
    b.close()


def test_fair_shares_add_up_to_the_partitions(warehouses) -> None:  # type: ignore[no-untyped-def]
    wh_a, _ = warehouses
    with ExitStack() as stack:
        workers = []
        for name in ("w1", "w2", "w3"):
            leases = _leases(wh_a, name, partitions=8)
            stack.callback(leases.close)
            workers.append(leases)
            # 8 partitions: 8 | 4+4 | 3+3+2, the first workers by id taking the extra
            want = {1: [8], 2: [4, 4], 3: [3, 3, 2]}[len(workers)]
            assert [w.fair_share() for w in workers] == want
        workers[0].leave()  # gone: the others share its partitions
        assert [w.fair_share() for w in workers[1:]] == [4, 4]


def _click_batch(processor: Processor, transport: InMemoryTransport, user: str) -> None:
    record = {
        "ad_id": 1,
        "user_id": user,
        "click_timestamp": "2023-09-09 10:00:00",
        "platform": "Web",
        "location": "Paris",
        "event_id": f"click-{user}",
    }
    transport.producer().send(Stream.CLICKS, [orjson.dumps(record)], [user])
    assert processor.run_once() is not None


def test_a_worker_whose_lease_was_taken_cannot_commit(tmp_path, warehouses) -> None:  # type: ignore[no-untyped-def]
    wh_a, wh_b = warehouses
    settings = Settings(home=tmp_path, partitions=1, idle_timeout_seconds=100_000)
    transport = InMemoryTransport(1)
    a, b = _leases(wh_a, "a", partitions=1), _leases(wh_b, "b", partitions=1)
    epoch = a.acquire(0)
    assert epoch == 1
    old_owner = Processor(settings, transport, wh_a, partitions=[0], fence=a.fence({0: epoch}))
    _click_batch(old_owner, transport, "u1")
    old_owner.committer.drain()
    assert wh_a.query("SELECT COUNT(*) FROM fact_clicks").item() == 1
    checkpoint = wh_a.load_offsets()

    # The old owner pauses past its TTL; another worker takes the partition over.
    _expire(wh_a, 0)
    assert b.acquire(0) == 2
    _click_batch(old_owner, transport, "u2")
    with pytest.raises(RuntimeError) as failed:
        old_owner.committer.drain()
    assert isinstance(failed.value.__cause__, LeaseLostError)
    # Nothing of the fenced batch landed: no fact, no stats, the checkpoint unchanged.
    assert wh_a.query("SELECT event_id FROM fact_clicks").rows() == [("click-u1",)]
    assert wh_a.query("SELECT SUM(received) FROM ingest_stats").item() == 1
    assert wh_a.load_offsets() == checkpoint
    with pytest.raises(RuntimeError):
        old_owner.close()  # the failure is reported, and the committer thread stops
    assert not old_owner.committer._thread.is_alive()

    # The new owner recovers from the committed state and processes the second click.
    new_owner = Processor(settings, transport, wh_b, partitions=[0], fence=b.fence({0: 2}))
    assert new_owner.offsets == {(s, 0): checkpoint.get((s, 0)) for s in Stream}
    assert new_owner.run_once() is not None
    new_owner.close()
    assert wh_b.query("SELECT event_id FROM fact_clicks ORDER BY 1").rows() == [
        ("click-u1",),
        ("click-u2",),
    ]
    a.close()
    b.close()


def test_an_acquirer_waits_for_the_owners_commit_in_flight(warehouses) -> None:  # type: ignore[no-untyped-def]
    wh_a, wh_b = warehouses
    a, b = _leases(wh_a, "a"), _leases(wh_b, "b")
    epoch = a.acquire(2)
    assert epoch is not None
    _expire(wh_a, 2)  # expired, but its owner is committing right now
    fenced = threading.Event()

    def commit_slowly() -> None:
        with wh_a._transaction():
            wh_a._check_fence(a.fence({2: epoch}))  # the commit's first step
            fenced.set()
            time.sleep(1.0)  # writing the batch

    committer = threading.Thread(target=commit_slowly)
    committer.start()
    assert fenced.wait(10)
    started = time.monotonic()
    taken = b.acquire(2)
    waited = time.monotonic() - started
    committer.join()
    # The acquirer waited for the commit, then found the lease renewed by it.
    assert taken is None
    assert waited >= 0.8
    assert a.held() == {2: epoch}
    a.close()
    b.close()


def _reserve(wh: PostgresWarehouse, start: threading.Barrier, firsts: list[int]) -> None:
    start.wait()
    for _ in range(5):
        firsts.append(wh.reserve_batch_ids(10))


def test_batch_ids_are_unique_across_processes(warehouses) -> None:  # type: ignore[no-untyped-def]
    wh_a, wh_b = warehouses
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{wh_a.schema}"')
        # Batches committed before the counter existed: ids continue after them.
        conn.execute(
            'INSERT INTO ingest_stats (batch_id, stream, "partition", received, committed_at)'
            " VALUES (41, 'clicks', 0, 1, %s)",
            [datetime(2023, 9, 9)],
        )
        for _ in range(8):  # the counter's creation is the racy moment: race it 8 times
            conn.execute("DELETE FROM meta")
            firsts: list[int] = []
            start = threading.Barrier(2)
            threads = [
                threading.Thread(target=_reserve, args=(wh, start, firsts)) for wh in (wh_a, wh_b)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(firsts) == list(range(42, 42 + 100, 10))
