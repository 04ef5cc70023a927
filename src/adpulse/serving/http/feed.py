"""The live feed behind ``/api/v1/stream`` (Server-Sent Events).

One refresher task per app computes the pipeline status once per tick and the summary
once per distinct filter set in use, and fans the same payload out to every client with
those filters (bounded queues: a slow client skips ticks instead of growing memory).
With the processor's commit signal (demo, bench) a tick follows each commit, at most one
per :data:`MIN_PUSH_GAP`, and at least one per ``refresh_seconds``; without it
(``adpulse serve``) ticks are timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import HTTPException

from adpulse.commits import CommitSignal
from adpulse.serving.answers import filters_echo
from adpulse.serving.http.encoding import dumps
from adpulse.serving.queries import Filters

log = logging.getLogger(__name__)

#: Most distinct filter sets the live feed refreshes at once, and clients per server.
MAX_STREAM_KEYS: Final = 32
MAX_STREAM_CLIENTS: Final = 256
#: Events buffered per SSE client; older ones are dropped for a slow client.
CLIENT_QUEUE: Final = 4
#: Shortest time between two live-feed ticks when commits come faster.
MIN_PUSH_GAP: Final = 0.25


class LiveFeed:
    """One refresher, many subscribers: see the module doc.

    ``run(fn)`` runs a warehouse read off the event loop. ``commits``, when given, wakes
    the refresher after each commit, so fresh numbers reach the page right after they
    are committed rather than up to ``interval`` later.
    """

    def __init__(
        self,
        compute_status: Callable[[], Any],
        compute_summary: Callable[[Filters], Any],
        interval: float,
        run: Callable[[Callable[[], Any]], Awaitable[Any]],
        commits: CommitSignal | None = None,
        per_address: int = MAX_STREAM_CLIENTS,
        per_key: int = MAX_STREAM_CLIENTS,
    ) -> None:
        self._status = compute_status
        self._summary = compute_summary
        self.interval = interval
        self.min_gap = min(MIN_PUSH_GAP, interval)
        self._run_read = run
        self._commits = commits
        self._unsubscribe: Callable[[], None] | None = None
        self._wake: asyncio.Event | None = None
        self._subscribers: dict[Filters, set[asyncio.Queue[bytes | None]]] = {}
        #: Open streams per client address and per API key, at most ``per_address`` /
        #: ``per_key`` each: one client cannot take every one of the server's streams.
        self.per_address = per_address
        self.per_key = per_key
        self._owners: Counter[tuple[str, str]] = Counter()
        self._owners_of: dict[asyncio.Queue[bytes | None], list[tuple[str, str]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ticks = 0

    @property
    def clients(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        wake = self._wake = asyncio.Event()
        if self._commits is not None:

            def committed(_version: int) -> None:
                # on the committer thread: hand over to the loop, never block there
                loop.call_soon_threadsafe(wake.set)

            self._unsubscribe = self._commits.subscribe(committed)
        self._task = loop.create_task(self._run(wake), name="adpulse-feed")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._end_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def end_streams(self) -> None:
        """From any thread: end every open stream. A stopping server waits for open
        responses before its lifespan ends (and with it :meth:`stop`), so it calls this
        first; a stream never ends by itself."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._end_streams)

    def _end_streams(self) -> None:
        for queues in self._subscribers.values():
            for queue in queues:
                self._offer(queue, None)

    def subscribe(
        self, filters: Filters, address: str = "", key_id: str | None = None
    ) -> asyncio.Queue[bytes | None]:
        owners = [("address", address)] + ([("key", key_id)] if key_id else [])
        for kind, owner in owners:
            cap = self.per_address if kind == "address" else self.per_key
            if self._owners[kind, owner] >= cap:
                where = "from your address" if kind == "address" else f"for key {owner}"
                raise HTTPException(
                    429,
                    f"{cap} live streams are open {where} already, the most allowed"
                    f" (setting stream_clients_per_{kind}); close one",
                    headers={"Retry-After": "10"},
                )
        if self.clients >= MAX_STREAM_CLIENTS:
            raise HTTPException(503, "too many live clients; try again later")
        if filters not in self._subscribers and len(self._subscribers) >= MAX_STREAM_KEYS:
            raise HTTPException(503, "too many distinct live filter sets; try again later")
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=CLIENT_QUEUE)
        self._subscribers.setdefault(filters, set()).add(queue)
        self._owners.update(owners)
        self._owners_of[queue] = owners
        if self._wake is not None:
            self._wake.set()  # a new client gets numbers now, not at the next commit
        return queue

    def unsubscribe(self, filters: Filters, queue: asyncio.Queue[bytes | None]) -> None:
        self._owners.subtract(self._owners_of.pop(queue, ()))
        self._owners = +self._owners  # drop the zeros
        queues = self._subscribers.get(filters)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._subscribers[filters]

    @staticmethod
    def _offer(queue: asyncio.Queue[bytes | None], item: bytes | None) -> None:
        """Put without blocking: a full queue loses its oldest event."""
        while True:
            try:
                queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()

    async def _run(self, wake: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        last = -math.inf
        while True:
            # A commit wakes us; without one, tick anyway after interval (live figures
            # such as events/s and lag move without commits).
            timeout = max(0.0, last + self.interval - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
            gap = last + self.min_gap - loop.time()
            if gap > 0:  # commits come faster than pushes are useful: coalesce them
                await asyncio.sleep(gap)
            wake.clear()  # before reading: a commit from now on wakes the next tick
            last = loop.time()
            if self._subscribers:
                try:
                    await self._tick()
                except Exception:  # keep the feed alive; the next tick retries
                    log.exception("live feed refresh failed")

    async def _tick(self) -> None:
        keys = list(self._subscribers)
        status = await self._run_read(self._status)
        self.ticks += 1
        for filters in keys:
            summary = await self._run_read(functools.partial(self._summary, filters))
            payload = {
                "tick": self.ticks,
                "generated_at": datetime.now(UTC),
                "filters": filters_echo(filters),
                "summary": summary,
                "health": status,
            }
            message = b"id: %d\nevent: update\ndata: %s\n\n" % (self.ticks, dumps(payload))
            for queue in list(self._subscribers.get(filters, ())):
                self._offer(queue, message)
