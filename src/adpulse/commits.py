"""A signal that the processor committed a batch, for readers that cache or push.

The warehouse is the source of truth, but asking it "did anything change?" costs a
query. The processor knows exactly when it commits, so, as one of its commit
listeners (:mod:`adpulse.processor.listeners`), this bumps a counter after
every successful commit and calls the subscribed callbacks: the HTTP API uses the counter
to keep cached results that no commit has made stale, and the live feed to push fresh
numbers right after a commit instead of on a timer. Thread-safe: the committer thread
notifies, any thread or event loop reads.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adpulse.storage.warehouse.base import BatchOutput

log = logging.getLogger(__name__)


class CommitSignal:
    """A commit counter with subscribers (see the module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = 0
        self._callbacks: list[Callable[[int], None]] = []

    @property
    def version(self) -> int:
        """How many commits were signalled so far (0 before the first)."""
        return self._version

    def start(self, partitions: Sequence[int]) -> None:
        """A processor started (a :class:`~adpulse.processor.listeners.CommitListener`):
        nothing changed yet."""

    def on_commit(self, output: BatchOutput) -> None:
        """A processor committed a batch: :meth:`notify`."""
        self.notify()

    def notify(self) -> None:
        """Record one commit and call every subscriber with the new version."""
        with self._lock:
            self._version += 1
            version = self._version
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(version)
            except Exception:  # a broken reader must not stop the committer
                log.exception("commit subscriber failed")

    def subscribe(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call ``callback(version)`` after each commit (on the committing thread, so it
        must be quick); returns a function that unsubscribes it."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe
