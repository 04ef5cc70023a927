"""Workers that share the partitions: several ``adpulse process`` processes, on one host
or many, each processing a disjoint set of partitions over one PostgreSQL warehouse.

A :class:`PartitionWorker` holds partition leases (:mod:`adpulse.storage.warehouse.leases`)
and runs one :class:`~adpulse.processor.pipeline.Processor` over exactly the partitions
it holds. Every lease interval (a third of ``worker_lease_seconds``) it rebalances:

- it computes its fair share from the live workers (shares add up to the partition
  count), releases what it holds beyond it and acquires free partitions (never owned,
  released, or whose owner's lease expired: a killed worker's) up to it;
- when its set changes, it drains the running processor (everything processed is
  committed), releases the leases it gives up, and builds a new processor for the new
  set, which recovers offsets and state from the committed facts: state is never
  handed over between workers, so nothing but the warehouse needs to be trusted (a
  serving store is rebuilt only if it misses a committed batch of the new set, see
  :mod:`adpulse.serving.store.sync`);
- every commit carries a :class:`~adpulse.storage.warehouse.base.LeaseFence`: a worker
  that lost a lease (paused past its TTL, cut off from the database) cannot commit
  afterwards; its commit fails, writes nothing, and the worker drops its in-memory
  state and rebalances.

A heartbeat thread renews the leases in between, so a long batch does not lose them.
:func:`supervise` runs N such workers as child processes (``adpulse process --workers
N``): it restarts a crashed one and stops them all on Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.processor.listeners import CommitListener
from adpulse.processor.pipeline import BatchReport, Processor
from adpulse.storage.warehouse.base import LeaseLostError, Warehouse
from adpulse.storage.warehouse.leases import WorkerIdentity
from adpulse.transport.base import Transport

log = logging.getLogger(__name__)


class PartitionWorker:
    """Processes the partitions whose leases it holds, rebalancing as workers come and go.

    Same interface as :class:`Processor` for the command line: :meth:`run` until
    ``stop`` (or until everything in the log is committed), then :meth:`close`.
    """

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        warehouse: Warehouse,
        worker: WorkerIdentity | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        listeners: Sequence[CommitListener] = (),
    ) -> None:
        """``listeners``: handed to each processor this worker builds (each is told of
        its start with the new partition set, then of its commits)."""
        self.settings = settings
        self.transport = transport
        self.warehouse = warehouse
        self.clock = clock
        self.listeners = tuple(listeners)
        self.leases = warehouse.partition_leases(
            worker or WorkerIdentity.of_this_process(),
            transport.partitions,
            settings.worker_lease_seconds,
        )
        self.interval = settings.worker_lease_seconds / 3
        self.processor: Processor | None = None
        #: The leases the running processor commits under, {partition: epoch}.
        self.epochs: dict[int, int] = {}
        self._lost = threading.Event()
        self._closed = False

    @property
    def worker_id(self) -> str:
        return self.leases.owner

    # -- the loop ----------------------------------------------------------------------
    def run(
        self,
        stop: threading.Event,
        on_batch: Callable[[BatchReport], None] | None = None,
        until_caught_up: bool = False,
    ) -> None:
        """Process until ``stop`` is set (or, with ``until_caught_up``, until every
        partition's log is committed, whoever processed it). Leaves the worker group
        on the way out: pending batches are committed, the leases released."""
        self.leases.register()
        beating = threading.Event()
        heartbeat = threading.Thread(
            target=self._heartbeat, args=(beating,), name="adpulse-heartbeat", daemon=True
        )
        heartbeat.start()
        next_rebalance = 0.0
        try:
            while not stop.is_set():
                if self._lost.is_set() or time.monotonic() >= next_rebalance:
                    self._lost.clear()
                    self.rebalance()
                    next_rebalance = time.monotonic() + self.interval
                report = None
                if self.processor is not None:
                    try:
                        report = self.processor.run_once()
                    except RuntimeError as exc:
                        if not _lease_lost(exc):
                            raise
                        log.warning("worker %s: %s", self.worker_id, exc.__cause__)
                        self._drop_processor()
                        next_rebalance = 0.0
                        continue
                if report is not None:
                    if on_batch is not None:
                        on_batch(report)
                    continue
                if until_caught_up and self._caught_up():
                    return
                stop.wait(self.settings.batch_interval_seconds if self.processor else self.interval)
        finally:
            beating.set()
            heartbeat.join()
            self.close()

    def close(self) -> None:
        """Commit what is pending, release every lease and leave the live workers."""
        if self._closed:
            return
        self._closed = True
        try:
            self._drop_processor()
            self.leases.leave()
        finally:
            self.leases.close()

    def rebalance(self) -> None:
        """Hold the fair share of partitions; rebuild the processor if the set changed."""
        held = self.leases.held()
        share = self.leases.fair_share()
        keep = dict(held)
        give_up = sorted(keep, reverse=True)[: max(0, len(keep) - share)]
        for partition in give_up:
            del keep[partition]
        if len(keep) < share:
            for partition in self.leases.free():
                if len(keep) >= share:
                    break
                epoch = self.leases.acquire(partition)
                if epoch is not None:
                    keep[partition] = epoch
        if keep == self.epochs:  # (a processor runs exactly when epochs is not empty)
            for partition in give_up:  # not in the processor: nothing to drain
                self.leases.release(partition, held[partition])
            return
        log.info(
            "worker %s: partitions %s -> %s (share %d)",
            self.worker_id,
            sorted(self.epochs),
            sorted(keep),
            share,
        )
        # Drain first: what was processed for a partition given up is committed before
        # its lease is released, so the next owner resumes exactly after it.
        self._drop_processor()
        for partition in give_up:
            self.leases.release(partition, held[partition])
        self.epochs = keep
        if keep:
            # Built only now that the leases are held: recover() reads committed state
            # that no other worker can change any more.
            self.processor = Processor(
                self.settings,
                self.transport,
                self.warehouse,
                partitions=sorted(keep),
                clock=self.clock,
                fence=self.leases.fence(keep),
                listeners=self.listeners,
            )

    def _drop_processor(self) -> None:
        """Commit what the processor has pending, stop it and forget its state."""
        processor, self.processor = self.processor, None
        self.epochs = {}
        if processor is None:
            return
        try:
            processor.close()
        except RuntimeError as exc:
            if not _lease_lost(exc):
                raise
            # Lost meanwhile: the fenced commit wrote nothing; the new owner redoes it.
            log.warning("worker %s: %s", self.worker_id, exc.__cause__)

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                held = self.leases.heartbeat()
            except Exception:  # noqa: BLE001 - a database blip; commits stay fenced
                log.warning(
                    "worker %s: heartbeat failed",
                    self.worker_id,
                    exc_info=log.isEnabledFor(logging.DEBUG),  # the trace with -v only
                )
                continue
            running = self.epochs
            if any(held.get(p) != e for p, e in running.items()):
                self._lost.set()  # the loop rebalances at once

    def _caught_up(self) -> bool:
        """True when every partition's log is committed up to its end (by any worker)."""
        if self.processor is not None:
            try:
                if self.processor.settle() is not None:
                    return False  # a refused batch was just isolated and committed
            except RuntimeError as exc:
                if not _lease_lost(exc):
                    raise
                self._drop_processor()
                return False
        # Lag counts every partition, so a dead worker's unprocessed partitions keep this
        # worker running until it (or another) has taken and processed them.
        committed = self.warehouse.load_offsets()
        consumer = self.transport.consumer()
        try:
            return all(
                consumer.lag_bytes(stream, p, committed.get((stream, p))) == 0
                for stream in Stream
                for p in range(self.transport.partitions)
            )
        finally:
            consumer.close()


def _lease_lost(exc: BaseException) -> bool:
    """Whether a processor error is a fenced commit (the committer wraps it)."""
    return isinstance(exc, LeaseLostError) or isinstance(exc.__cause__, LeaseLostError)


# -- several workers from one command --------------------------------------------------------
#: Exit status of a worker that stopped on a configuration error: restarting cannot help.
USER_ERROR_EXIT = 2


def supervise(
    command: Sequence[str],
    workers: int,
    stop: threading.Event,
    until_caught_up: bool = False,
    restart_delay: float = 1.0,
    stop_timeout: float = 60.0,
) -> int:
    """Run ``workers`` child processes of ``command``; restart one that crashes.

    Each child gets a pipe as stdin and stops gracefully when it closes
    (``--supervised``): that is how they are stopped when ``stop`` is set, and they stop
    too if this process dies, even by kill -9. With ``until_caught_up`` a child that
    exits with status 0 is done and not restarted. Returns 0 when all ended well, else
    the first bad exit status (a child failing on its configuration stops everything).
    """
    children: dict[int, subprocess.Popen[bytes]] = {}
    restart_at: dict[int, float] = {}
    done: set[int] = set()
    failure = 0

    def start(slot: int) -> None:
        # A process group of its own: Ctrl-C in the terminal reaches the supervisor
        # only, which stops the children once (a second SIGINT would cut their drain).
        children[slot] = subprocess.Popen(list(command), stdin=subprocess.PIPE, process_group=0)

    try:
        for slot in range(workers):
            start(slot)
        while not stop.is_set() and len(done) < workers and not failure:
            for slot, child in list(children.items()):
                code = child.poll()
                if code is None:
                    continue
                del children[slot]
                if code == 0 and until_caught_up:
                    done.add(slot)
                elif code == USER_ERROR_EXIT:
                    failure = code
                else:
                    log.error("worker %d (pid %d) exited with status %s", slot, child.pid, code)
                    restart_at[slot] = time.monotonic() + restart_delay
            for slot, when in list(restart_at.items()):
                if time.monotonic() >= when and not stop.is_set():
                    del restart_at[slot]
                    start(slot)
            stop.wait(0.1)
    finally:
        for child in children.values():
            if child.stdin is not None:
                child.stdin.close()  # the child's signal to stop gracefully
        deadline = time.monotonic() + stop_timeout
        for child in children.values():
            try:
                code = child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                code = child.wait()
            if code not in (0, None) and not failure:
                failure = code
    return failure


def stop_when_stdin_closes() -> None:
    """For a supervised worker: turn the end of stdin into Ctrl-C (a graceful stop)."""

    fd = sys.stdin.fileno()

    def watch() -> None:
        # os.read on the descriptor, not sys.stdin: a daemon thread blocked inside the
        # buffered reader would hold its lock and abort the interpreter's shutdown.
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="adpulse-supervisor-watch", daemon=True).start()
