"""The warehouse contract.

A warehouse stores dimensions (SCD2), facts, minute rollups, dead letters, ingest
statistics, checkpoints and watermarks, and commits one micro-batch's outputs together
with the offsets and watermarks it advances in ONE transaction (effectively-once).
The processor's keyed state is rebuilt from the committed facts after a restart, so it is
committed atomically with the outputs too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Self

import polars as pl

from adpulse.contracts import Stream
from adpulse.storage.warehouse import schema

if TYPE_CHECKING:
    from adpulse.storage.warehouse.leases import PartitionLeases, WorkerIdentity

DimensionKind = Literal["campaigns", "users"]
#: Runs one read-only statement (``?`` placeholders) inside :meth:`Warehouse.snapshot`.
SnapshotRead = Callable[[str, Sequence[Any]], pl.DataFrame]


@dataclass(frozen=True, slots=True)
class PartitionWatermark:
    watermark: datetime
    max_event_time: datetime


@dataclass(frozen=True, slots=True)
class LeaseFence:
    """Who may commit for which partitions: ``owner`` holding each lease at ``epochs[p]``.

    A commit carrying a fence verifies, inside its own transaction and before writing
    anything, that every listed lease is still held by ``owner`` at that epoch (taking
    the lease rows' locks), and extends the leases by ``ttl_seconds``. A worker whose
    lease was taken over (it was paused, slow or cut off) thus cannot commit for that
    partition any more: its commit raises :class:`LeaseLostError` and writes nothing.
    """

    owner: str
    epochs: dict[int, int]
    ttl_seconds: float


class LeaseLostError(RuntimeError):
    """A fenced commit found one of its partition leases taken by another worker."""


@dataclass(slots=True)
class BatchOutput:
    """Everything one micro-batch writes; frames follow :mod:`.schema` exactly."""

    batch_id: int
    impressions: pl.DataFrame
    clicks: pl.DataFrame
    conversions: pl.DataFrame
    reattributions: pl.DataFrame
    rollups: pl.DataFrame
    dead_letters: pl.DataFrame
    stats: pl.DataFrame
    offsets: dict[tuple[Stream, int], str] = field(default_factory=dict)
    watermarks: dict[tuple[Stream, int], PartitionWatermark] = field(default_factory=dict)
    #: Set when partitions are shared between workers (see :class:`LeaseFence`).
    fence: LeaseFence | None = None
    #: Seconds the batch spent per processor step, ``commit`` included once committed
    #: (for metrics; never stored).
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def empty(
        cls,
        batch_id: int,
        *,
        offsets: dict[tuple[Stream, int], str] | None = None,
        watermarks: dict[tuple[Stream, int], PartitionWatermark] | None = None,
        fence: LeaseFence | None = None,
    ) -> BatchOutput:
        """A batch with no rows: commits only offsets and watermarks (an idle tick, a
        checkpoint moved by a log repair)."""
        return cls(
            batch_id=batch_id,
            impressions=pl.DataFrame(schema=schema.FACT_IMPRESSIONS),
            clicks=pl.DataFrame(schema=schema.FACT_CLICKS),
            conversions=pl.DataFrame(schema=schema.FACT_CONVERSIONS),
            reattributions=pl.DataFrame(schema=schema.CONVERSION_REATTRIBUTIONS),
            rollups=pl.DataFrame(schema=schema.ROLLUP_MINUTE),
            dead_letters=pl.DataFrame(schema=schema.DEAD_LETTERS),
            stats=pl.DataFrame(schema=schema.INGEST_STATS),
            offsets=offsets or {},
            watermarks=watermarks or {},
            fence=fence,
        )


@dataclass(frozen=True, slots=True)
class DimensionLoadResult:
    kind: DimensionKind
    rows: int
    new_keys: int
    changed_keys: int
    unchanged_keys: int


class WarehouseUnavailableError(RuntimeError):
    """The warehouse cannot be opened (or written) as asked; the message says why."""


class Warehouse(ABC):
    """Storage of the pipeline's outputs; one implementation per database."""

    dialect: str

    # -- lifecycle ---------------------------------------------------------------------
    @abstractmethod
    def create_schema(self) -> None:
        """Create every table if it does not exist (idempotent)."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the processor's commit ----------------------------------------------------------
    @abstractmethod
    def commit(self, output: BatchOutput) -> None:
        """Write all outputs, offsets and watermarks atomically (all or nothing)."""

    @abstractmethod
    def check_commit(self, output: BatchOutput) -> None:
        """Run :meth:`commit` in a transaction that is always rolled back: raises what
        the commit would raise, writes nothing. Only the processor's isolation of a
        refused batch calls it (see :mod:`adpulse.processor.isolation`)."""

    def refuses_data(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised by :meth:`commit`, means the database refused the
        batch's *data* (a value it cannot store), not that it is unavailable.

        Data refusals are isolated record by record and dead-lettered; anything else
        (a lost connection, a full disk, a lost lease, a bug) stops or retries. This
        default knows no database; each backend names its driver's data errors.
        """
        return False

    @abstractmethod
    def load_offsets(self) -> dict[tuple[Stream, int], str]: ...

    @abstractmethod
    def load_watermarks(self) -> dict[tuple[Stream, int], PartitionWatermark]: ...

    @abstractmethod
    def next_batch_id(self) -> int:
        """One more than the largest committed batch id (1 for an empty warehouse)."""

    @abstractmethod
    def reserve_batch_ids(self, count: int) -> int:
        """Reserve ``count`` consecutive batch ids no other caller gets; return the first.

        Several processes commit to one warehouse when workers share the partitions, so
        a batch id cannot be derived from what is committed (two workers would both
        take MAX + 1): ids come from a counter instead, a block at a time.
        """

    # -- state rebuild (processor restart) ------------------------------------------------
    @abstractmethod
    def load_event_ids(
        self, table: str, partitions: Sequence[int], since: datetime
    ) -> pl.DataFrame:
        """``event_id, event_time, partition`` of ``table`` with ``event_time >= since``."""

    @abstractmethod
    def load_facts(
        self, table: str, partitions: Sequence[int], since: datetime, columns: Sequence[str]
    ) -> pl.DataFrame:
        """Given columns of ``table`` rows in ``partitions`` with ``event_time >= since``."""

    # -- dimensions ------------------------------------------------------------------------
    @abstractmethod
    def load_dimension(
        self, kind: DimensionKind, rows: pl.DataFrame, effective_from: datetime
    ) -> DimensionLoadResult:
        """Apply a dimension file as SCD2: new keys, changed keys get a new version."""

    @abstractmethod
    def dimension(self, kind: DimensionKind) -> pl.DataFrame:
        """All versions of a dimension (schema ``DIM_CAMPAIGNS`` / ``DIM_USERS``)."""

    @abstractmethod
    def dimension_revision(self) -> int:
        """A number that changes whenever any dimension changes (cheap to call)."""

    # -- workers sharing the partitions -----------------------------------------------------
    #: Whether worker processes can share the partitions through this warehouse.
    shares_partitions: bool = False

    def partition_leases(
        self, worker: WorkerIdentity, partitions: int, ttl_seconds: float
    ) -> PartitionLeases:
        """The lease tables as seen by ``worker`` (see :mod:`.leases`)."""
        raise WarehouseUnavailableError(
            f"the {self.dialect} warehouse is opened by one process at a time, so its"
            " partitions cannot be shared between worker processes; use a PostgreSQL"
            " warehouse (warehouse_url = postgresql://...) for several workers"
        )

    # -- API keys (:mod:`adpulse.serving.auth`) -------------------------------------------
    def api_keys(self) -> pl.DataFrame:
        """Every API key (schema ``api_keys.API_KEYS``: ids, scopes, salted digests,
        never a secret), revoked ones included; empty where the table does not exist."""
        raise WarehouseUnavailableError(f"the {self.dialect} warehouse stores no API keys")

    def add_api_key(
        self, key_id: str, name: str, scope: str, salt: str, digest: str, created_at: datetime
    ) -> None:
        """Store one new key (its salted digest; the secret itself is never passed)."""
        raise WarehouseUnavailableError(f"the {self.dialect} warehouse stores no API keys")

    def revoke_api_key(self, key_id: str, at: datetime) -> bool:
        """Mark a key revoked at ``at``; False when no unrevoked key has that id."""
        raise WarehouseUnavailableError(f"the {self.dialect} warehouse stores no API keys")

    # -- reads -----------------------------------------------------------------------------
    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
        """Run a read-only query; ``?`` placeholders, values bound, never interpolated."""

    @contextmanager
    def snapshot(self) -> Iterator[SnapshotRead]:
        """Read-only statements that all see ONE committed state of the warehouse (a
        serving-store rebuild reads rows and the batches they include together).

        This default runs each statement on its own, consistent only while nothing
        commits; the SQL backends override it with one transaction.
        """
        yield self.query
