"""Partition leases: how worker processes (on one host or many) share the partitions.

Two tables in the warehouse database coordinate the workers; no other service is needed:

- ``workers(worker_id, host, pid, started_at, expires_at)``: one row per running worker,
  kept alive by its heartbeat; the live ones (``expires_at`` in the future) decide each
  worker's fair share of the partitions;
- ``partition_leases(partition, owner, epoch, expires_at, acquired_at)``: one row per
  partition. A worker may process a partition while it owns the row; ``epoch`` grows by
  one at every change of owner.

Rules (the worker loop is :mod:`adpulse.processor.workers`):

- acquire: one ``UPDATE`` that succeeds only on a free row (no owner, or its lease
  expired), bumping the epoch; only then does the worker read the partition's committed
  offsets and state;
- renew: the heartbeat (every third of the TTL) and every commit extend the lease;
- fence: every commit first runs :func:`fence_statements` in its own transaction: an
  ``UPDATE`` of the worker's lease rows matching owner AND epoch, then a count of them.
  The ``UPDATE`` holds the rows' locks until the commit ends, so an acquirer's
  ``UPDATE`` waits for an in-flight commit (and then finds the lease renewed); a worker
  whose lease was taken finds fewer rows than it holds and its commit is rolled back
  (:class:`~.base.LeaseLostError`), before anything of it is written;
- time is the database's clock (:class:`DatabaseClock`: ``LOCALTIMESTAMP`` on PostgreSQL,
  ``GETDATE()`` on Redshift; UTC sessions), never a worker's, so workers on hosts with
  skewed clocks agree on expiry.

Every statement here locks at most one lease row, except the fence of a commit (one
per worker, on its own rows): two workers can therefore never deadlock on leases.
The SQL stays in the Redshift-minded subset (``?`` placeholders, no ``ON CONFLICT``,
no ``RETURNING``, no advisory locks); it runs on PostgreSQL. DuckDB allows one process per
file, so it has no use for leases. Redshift (see docs/redshift.md): its clock is
``GETDATE()`` (``LOCALTIMESTAMP`` is a leader-node-only function there), and its
serializable transactions abort a conflicting writer instead of making it wait, so a
fenced commit and a takeover there are decided by one of them failing.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import polars as pl

from adpulse.storage.warehouse.base import LeaseFence

if TYPE_CHECKING:
    import psycopg

PARTITION_LEASES: Final = {
    "partition": pl.Int32(),
    "owner": pl.String(),
    "epoch": pl.Int64(),
    "expires_at": pl.Datetime("us"),
    "acquired_at": pl.Datetime("us"),
}
WORKERS: Final = {
    "worker_id": pl.String(),
    "host": pl.String(),
    "pid": pl.Int32(),
    "started_at": pl.Datetime("us"),
    "expires_at": pl.Datetime("us"),
}
LEASE_TABLES: Final = {"partition_leases": PARTITION_LEASES, "workers": WORKERS}
LEASE_KEYS: Final = {"partition_leases": ("partition",), "workers": ("worker_id",)}


@dataclass(frozen=True, slots=True)
class DatabaseClock:
    """How one database spells its own current time (UTC sessions), in lease SQL."""

    #: The current time, a TIMESTAMP without time zone.
    now: str

    @property
    def later(self) -> str:
        """``now`` plus a number of seconds bound as the statement's next parameter."""
        return f"{self.now} + ? * INTERVAL '1 second'"


#: PostgreSQL's clock (the default); Redshift's is in :mod:`.redshift`.
POSTGRES_CLOCK: Final = DatabaseClock("LOCALTIMESTAMP")
#: PostgreSQL's current time, as lease SQL spells it there.
NOW: Final = POSTGRES_CLOCK.now


def fence_statements(
    fence: LeaseFence, clock: DatabaseClock = POSTGRES_CLOCK
) -> tuple[tuple[str, list[Any]], tuple[str, list[Any]]]:
    """The fence of a commit: (renew-and-lock statement, count query), with parameters.

    Run both first in the commit's transaction; the count must equal the number of
    leases in the fence, else the commit must roll back (the lease was taken).
    """
    matches = " OR ".join('("partition" = ? AND epoch = ?)' for _ in fence.epochs)
    pairs: list[Any] = [v for p, e in sorted(fence.epochs.items()) for v in (p, e)]
    renew = (
        f"UPDATE partition_leases SET expires_at = {clock.later} WHERE owner = ? AND ({matches})",
        [fence.ttl_seconds, fence.owner, *pairs],
    )
    count = (
        f"SELECT COUNT(*) AS held FROM partition_leases WHERE owner = ? AND ({matches})",
        [fence.owner, *pairs],
    )
    return renew, count


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """Who a worker is: a unique id, plus where it runs (for ``adpulse status``)."""

    worker_id: str
    host: str
    pid: int

    @classmethod
    def of_this_process(cls) -> WorkerIdentity:
        host, pid = socket.gethostname(), os.getpid()
        # The random part tells a restarted worker from its predecessor with the same pid.
        return cls(f"{host}:{pid}:{uuid.uuid4().hex[:6]}", host, pid)


class PartitionLeases:
    """One worker's view of the lease tables, on a database connection of its own.

    Statements run in autocommit mode, each its own transaction, so none holds a lease
    row's lock for longer than one statement. Thread-safe (the heartbeat thread and the
    worker loop share it).
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        to_driver: Callable[[str], str],
        worker: WorkerIdentity,
        partitions: int,
        ttl_seconds: float,
        guard: Callable[[psycopg.Connection[Any]], AbstractContextManager[None]] | None = None,
        retry: Callable[[str, Callable[[], Any]], Any] | None = None,
        clock: DatabaseClock = POSTGRES_CLOCK,
    ) -> None:
        """``guard(conn)`` bounds each statement's wait on the server, ``retry(what,
        operation)`` retries it on a lost connection (see :mod:`adpulse.outages`),
        ``clock`` spells the database's time."""
        self.clock = clock
        self._connect = connect
        self._guard = guard or (lambda conn: nullcontext())
        self._retry = retry or (lambda what, operation: operation())
        self._to_driver = to_driver
        self.worker = worker
        self.partitions = partitions
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    # -- plumbing ------------------------------------------------------------------------
    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""

        def once() -> int:
            with self._lock:
                conn = self._connection()
                with self._guard(conn):
                    return conn.execute(self._to_driver(sql), list(params)).rowcount

        return int(self._retry("a partition lease statement", once))

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def once() -> list[tuple[Any, ...]]:
            with self._lock:
                conn = self._connection()
                with self._guard(conn):
                    return conn.execute(self._to_driver(sql), list(params)).fetchall()

        rows: list[tuple[Any, ...]] = self._retry("a partition lease read", once)
        return rows

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @property
    def owner(self) -> str:
        return self.worker.worker_id

    # -- membership ----------------------------------------------------------------------
    def register(self) -> None:
        """Create the missing lease rows and announce this worker (idempotent)."""
        import psycopg

        for partition in range(self.partitions):
            # Two workers starting together: one of them creates the row, the other
            # fails on its key and finds it there.
            with suppress(psycopg.errors.UniqueViolation):
                self._run(
                    'INSERT INTO partition_leases ("partition", owner, epoch)'
                    " SELECT ?, NULL, 0 WHERE NOT EXISTS"
                    ' (SELECT 1 FROM partition_leases WHERE "partition" = ?)',
                    [partition, partition],
                )
        self.heartbeat()

    def heartbeat(self) -> dict[int, int]:
        """Extend this worker's membership and leases; the leases held, as {partition: epoch}.

        A lease that expired but was not taken by anyone is renewed too: nobody else
        committed for it meanwhile, so this worker's state is still exact.
        """
        w = self.worker
        renewed = self._run(
            f"UPDATE workers SET expires_at = {self.clock.later} WHERE worker_id = ?",
            [self.ttl_seconds, w.worker_id],
        )
        if renewed == 0:
            self._run(
                "INSERT INTO workers (worker_id, host, pid, started_at, expires_at)"
                f" VALUES (?, ?, ?, {self.clock.now}, {self.clock.later})",
                [w.worker_id, w.host, w.pid, self.ttl_seconds],
            )
        held = self.held()
        for partition in held:
            # One row per statement: never two lease locks at once (no deadlocks).
            self._run(
                f'UPDATE partition_leases SET expires_at = {self.clock.later} WHERE "partition" = ?'
                " AND owner = ?",
                [self.ttl_seconds, partition, self.owner],
            )
        return held

    def held(self) -> dict[int, int]:
        """The leases this worker owns, as {partition: epoch}."""
        rows = self._rows(
            'SELECT "partition", epoch FROM partition_leases WHERE owner = ? AND "partition" < ?'
            ' ORDER BY "partition"',
            [self.owner, self.partitions],
        )
        return {int(p): int(e) for p, e in rows}

    def live_workers(self) -> list[str]:
        """Ids of the workers whose heartbeat has not expired, in a fixed order."""
        rows = self._rows(
            f"SELECT worker_id FROM workers WHERE expires_at > {self.clock.now} ORDER BY worker_id"
        )
        return [str(r[0]) for r in rows]

    def fair_share(self) -> int:
        """How many partitions this worker should hold, given the live workers.

        The first ``P mod L`` live workers (by id) hold ``ceil(P / L)``, the others
        ``floor(P / L)``: the shares add up to P, so every partition finds an owner.
        """
        live = self.live_workers()
        if self.owner not in live:
            live = sorted([*live, self.owner])
        base, extra = divmod(self.partitions, len(live))
        return base + (1 if live.index(self.owner) < extra else 0)

    def free(self) -> list[int]:
        """Partitions without a live owner (never owned, released, or expired)."""
        rows = self._rows(
            'SELECT "partition" FROM partition_leases WHERE "partition" < ?'
            f" AND (owner IS NULL OR expires_at IS NULL OR expires_at < {self.clock.now})"
            ' ORDER BY "partition"',
            [self.partitions],
        )
        return [int(r[0]) for r in rows]

    # -- leases --------------------------------------------------------------------------
    def acquire(self, partition: int) -> int | None:
        """Take the lease of a free partition; its new epoch, or None if it is not free.

        If the previous owner is committing, this waits for that commit to end (its
        fence holds the row) and then finds the lease renewed: not free.
        """
        now, later = self.clock.now, self.clock.later
        taken = self._run(
            f"UPDATE partition_leases SET owner = ?, epoch = epoch + 1, expires_at = {later},"
            f' acquired_at = {now} WHERE "partition" = ?'
            f" AND (owner IS NULL OR expires_at IS NULL OR expires_at < {now})",
            [self.owner, self.ttl_seconds, partition],
        )
        if taken != 1:
            return None
        rows = self._rows(
            'SELECT epoch FROM partition_leases WHERE "partition" = ? AND owner = ?',
            [partition, self.owner],
        )
        return int(rows[0][0]) if rows else None

    def release(self, partition: int, epoch: int) -> None:
        """Give a lease back at once (the caller has committed everything it processed)."""
        self._run(
            "UPDATE partition_leases SET owner = NULL, expires_at = NULL"
            ' WHERE "partition" = ? AND owner = ? AND epoch = ?',
            [partition, self.owner, epoch],
        )

    def leave(self) -> None:
        """Release every lease of this worker and remove it from the live workers."""
        for partition, epoch in self.held().items():
            self.release(partition, epoch)
        self._run("DELETE FROM workers WHERE worker_id = ?", [self.owner])
        # Rows of workers gone for long (killed) are of no use to anyone any more.
        self._run(f"DELETE FROM workers WHERE expires_at < {self.clock.now} - INTERVAL '1 hour'")

    def fence(self, epochs: dict[int, int]) -> LeaseFence:
        return LeaseFence(self.owner, dict(epochs), self.ttl_seconds)
