"""Shared results of the HTTP API: many identical requests, one warehouse query.

Every dashboard tab with the same filters asks the same few questions, and the answers
change only when the processor commits. So the API keeps each answer (the serialized
JSON body) under its endpoint and normalized parameters, for ``seconds``
(``api_cache_seconds``):

- an answer younger than ``seconds`` is served as is;
- an older one, up to ``2 * seconds``, is still served while ONE background computation
  replaces it (stale while revalidate), so a steady stream of requests never waits for
  the warehouse, and each answer is computed at most about once per ``seconds``;
- an answer older than ``2 * seconds`` is never served: requests wait for a
  computation, all of them for the same one (single flight);
- with a commit counter (:class:`~adpulse.commits.CommitSignal`), an answer
  computed since the latest commit is current whatever its age.

So a response reflects every commit made more than ``2 * seconds`` before the request
arrived, and under steady traffic a commit shows within ``seconds`` plus one
computation. ``seconds`` 0 turns all of this off: every request computes. Memory is
bounded by ``max_bytes`` of kept bodies, least recently used first out.

Not thread-safe: used from the event loop only; computations run wherever ``run`` sends
them (the API's bounded thread pool).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

#: Default bound of the bodies kept (a 7-day minute series is a few MB).
MAX_BYTES: Final = 64 * 1024 * 1024
#: Answers are served up to this many times ``seconds`` old while one refresh runs.
STALE_FACTOR: Final = 2.0


@dataclass(frozen=True, slots=True)
class _Answer:
    body: bytes
    #: Monotonic time its computation started: it reflects every commit before that.
    taken_at: float
    #: The commit counter when its computation started (None: no counter).
    version: int | None


@dataclass(frozen=True, slots=True)
class _Flight:
    future: asyncio.Future[bytes]
    started_at: float
    version: int | None


class ResultCache:
    """See the module doc. ``run(compute)`` runs a computation off the event loop and
    returns its result; ``version()`` reads the commit counter."""

    def __init__(
        self,
        seconds: float,
        run: Callable[[Callable[[], bytes]], Awaitable[bytes]],
        version: Callable[[], int] | None = None,
        *,
        max_bytes: int = MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self._run = run
        self._version = version
        self._max_bytes = max_bytes
        self._clock = clock
        self._answers: OrderedDict[Hashable, _Answer] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self._bytes = 0
        #: Computations started (for tests and diagnostics).
        self.computations = 0

    async def get(
        self, key: Hashable, compute: Callable[[], bytes], *, versioned: bool = True
    ) -> bytes:
        """The body for ``key``: kept, or from ``compute`` (see the module doc).

        ``versioned=False`` for answers that change without commits (live process
        figures): those are kept for ``seconds`` only.
        """
        if self.seconds <= 0:
            self.computations += 1
            return await self._run(compute)
        now = self._clock()
        version = self._version() if versioned and self._version is not None else None
        answer = self._answers.get(key)
        if answer is not None:
            current = version is not None and answer.version == version
            age = now - answer.taken_at
            if current or age <= self.seconds * STALE_FACTOR:
                self._answers.move_to_end(key)
                if not current and age > self.seconds and key not in self._flights:
                    self._start(key, compute, now, version)  # revalidate in the background
                return answer.body
        flight = self._flights.get(key)
        if flight is None or now - flight.started_at > self.seconds * STALE_FACTOR:
            # none running, or one whose answer would already be too old: a fresh one
            flight = self._start(key, compute, now, version)
        # shield: a client that hangs up must not cancel the computation others await
        return await asyncio.shield(flight.future)

    def _start(
        self, key: Hashable, compute: Callable[[], bytes], now: float, version: int | None
    ) -> _Flight:
        future = asyncio.ensure_future(self._run(compute))
        flight = _Flight(future, now, version)
        self._flights[key] = flight
        self.computations += 1
        future.add_done_callback(lambda done: self._landed(key, flight, done))
        return flight

    def _landed(self, key: Hashable, flight: _Flight, future: asyncio.Future[bytes]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if future.cancelled():
            return
        error = future.exception()  # retrieved here, so a background failure is not lost
        if error is not None:
            # never kept: whoever awaited gets the error; the next request retries
            log.debug("computing %r failed: %r", key, error)
            return
        kept = self._answers.get(key)
        if kept is not None and kept.taken_at > flight.started_at:
            return  # a newer computation already landed
        self._keep(key, _Answer(future.result(), flight.started_at, flight.version))

    def _keep(self, key: Hashable, answer: _Answer) -> None:
        size = len(answer.body)
        old = self._answers.pop(key, None)
        if old is not None:
            self._bytes -= len(old.body)
        if size > self._max_bytes:
            return
        self._answers[key] = answer
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, evicted = self._answers.popitem(last=False)
            self._bytes -= len(evicted.body)

    def __len__(self) -> int:
        return len(self._answers)
