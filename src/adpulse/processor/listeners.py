"""The processor's one seam for what follows a commit: commit listeners.

The processor knows nothing of what reads its results. Whoever wires a process
(:mod:`adpulse.runtime`) hands it listeners: the serving-store sync
(:class:`adpulse.serving.store.sync.StoreSync`), the commit signal the HTTP API caches and
pushes by (:class:`adpulse.commits.CommitSignal`), and later alerts or metrics. Each is
told when the processor starts, with the partitions it owns, and after each batch the
warehouse committed, on the committing thread, never before the commit (a listener only
mirrors the warehouse). A listener must be quick and must not raise: a failure is logged
and the next listener still runs, since nothing downstream may stop ingestion.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from adpulse.storage.warehouse.base import BatchOutput

log = logging.getLogger(__name__)


class CommitListener(Protocol):
    """Told of a processor's start and of each batch it committed (see module docs)."""

    def start(self, partitions: Sequence[int]) -> object:
        """The processor owns ``partitions`` and has recovered their committed state."""
        ...

    def on_commit(self, output: BatchOutput) -> None:
        """The warehouse committed ``output`` (its offsets acknowledged)."""
        ...


def tell_start(listeners: Sequence[CommitListener], partitions: Sequence[int]) -> None:
    for listener in listeners:
        try:
            listener.start(partitions)
        except Exception:  # noqa: BLE001 - a listener must never stop ingestion
            log.exception("commit listener %r failed to start", listener)


def tell_commit(listeners: Sequence[CommitListener], output: BatchOutput) -> None:
    for listener in listeners:
        try:
            listener.on_commit(output)
        except Exception:  # noqa: BLE001 - a listener must never stop ingestion
            log.exception("commit listener %r failed on batch %s", listener, output.batch_id)
