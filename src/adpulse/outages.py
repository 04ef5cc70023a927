"""Server outages: bounded detection, retries with backoff, and one clear way to give up.

The servers adpulse talks to (the PostgreSQL warehouse, Redis Streams as transport,
Redis as serving store) can go away under a running pipeline: restarted, cut off by
the network, or hung. Each client bounds how long it waits (:class:`ServerTimeouts`:
connect, socket and statement timeouts, TCP keepalives), then retries what failed
through :class:`Retrier`, which logs one warning per retry naming the component and
what is retried, and gives up after ``infra_retry_seconds`` with
:class:`InfrastructureError`: the CLI prints its message as one ``error:`` line naming
the setting to check, and exits with status 2.

Only failures of the connection are retried (the caller says which exceptions those
are); an error caused by the data or the statement is raised at once.

Whoever watches a process's servers (the alerts, :mod:`adpulse.alerts`) registers a
:class:`RetryObserver` with :func:`observe_retries`: it is told of each retry, each
give-up and the first success after a failure, never of the operations that simply
succeed, so watching costs nothing while the servers are up.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from adpulse.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: First wait between retries; doubled after each failure up to :data:`MAX_DELAY`.
FIRST_DELAY = 0.5
MAX_DELAY = 8.0


class InfrastructureError(RuntimeError):
    """A server stayed unavailable for longer than the retry bound (``infra_retry_seconds``).

    The message names the component, what failed, and the setting to check; committed
    results are safe (every commit is all or nothing), so running the command again
    once the server is back resumes exactly.
    """

    def __init__(self, component: str, setting: str, message: str) -> None:
        super().__init__(message)
        self.component = component
        self.setting = setting


@dataclass(frozen=True, slots=True)
class ServerTimeouts:
    """How long a client waits for a server before it counts as unavailable.

    ``connect_seconds``: connecting, and detecting a dead connection (TCP keepalives,
    ``tcp_user_timeout``, Redis socket timeouts). ``statement_seconds``: the longest a
    PostgreSQL statement may run (server-side ``statement_timeout``, and a client-side
    deadline that also ends a wait on a server that no longer answers at all).
    ``retry_seconds``: how long failed operations are retried before giving up.
    """

    connect_seconds: float = 10.0
    statement_seconds: float = 120.0
    retry_seconds: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerTimeouts:
        return cls(
            connect_seconds=settings.infra_timeout_seconds,
            statement_seconds=settings.statement_timeout_seconds,
            retry_seconds=settings.infra_retry_seconds,
        )


def setting_hint(setting: str) -> str:
    """``"transport_url (ADPULSE_TRANSPORT_URL)"``: a setting as the user sets it."""
    return f"{setting} (ADPULSE_{setting.upper()})"


class RetryObserver(Protocol):
    """Told of retries (module docs); must be quick and must not raise."""

    def retrying(self, retrier: Retrier, what: str, reason: str) -> None: ...

    def gave_up(self, retrier: Retrier, what: str, reason: str) -> None: ...

    def recovered(self, retrier: Retrier, what: str) -> None: ...


_observers: list[RetryObserver] = []


def observe_retries(observer: RetryObserver) -> Callable[[], None]:
    """Tell ``observer`` of every retrier's failures in this process; returns the call
    that stops it."""
    _observers.append(observer)

    def stop() -> None:
        if observer in _observers:
            _observers.remove(observer)

    return stop


def _tell(event: str, *args: object) -> None:
    for observer in list(_observers):
        try:
            getattr(observer, event)(*args)
        except Exception:  # noqa: BLE001 - an observer must never change a retry
            log.exception("retry observer %r failed", observer)


@dataclass(frozen=True, slots=True)
class Retrier:
    """Retries one component's operations on connection failures, with exponential
    backoff, for at most ``seconds`` per operation (see the module docs).

    ``component`` names the server as the user knows it, password-free, e.g.
    ``"warehouse (postgresql://app:***@db:5432/ads)"``; ``setting`` is the setting that
    points at it (``warehouse_url``).
    """

    component: str
    setting: str
    seconds: float
    transient: tuple[type[BaseException], ...]
    first_delay: float = FIRST_DELAY
    max_delay: float = MAX_DELAY
    #: Set once an operation gave up, until one succeeds: the command is ending, so what
    #: it still does (draining, leaving, closing) is tried once, not retried for long again.
    gave_up: threading.Event = field(default_factory=threading.Event)

    def call(
        self,
        what: str,
        operation: Callable[[], T],
        before_retry: Callable[[BaseException], None] | None = None,
    ) -> T:
        """Run ``operation``; on a transient failure wait, call ``before_retry(error)``
        (drop broken connections, forget state read on them) and run it again, until it
        succeeds or ``seconds`` have passed: then raise :class:`InfrastructureError`.
        ``what`` says what is retried, for the log ("the commit of batch 12")."""
        started = time.monotonic()
        delay = self.first_delay
        attempt = 1
        while True:
            try:
                result = operation()
            except self.transient as exc:
                elapsed = time.monotonic() - started
                reason = describe(exc)
                if elapsed + delay > self.seconds or self.gave_up.is_set():
                    self.gave_up.set()
                    _tell("gave_up", self, what, reason)
                    raise self.give_up(what, elapsed, reason) from exc
                attempt += 1
                _tell("retrying", self, what, reason)
                log.warning(
                    "%s: connection lost (%s); retrying %s in %s s (attempt %d, giving up"
                    " after %s s)",
                    self.component,
                    reason,
                    what,
                    _seconds(delay),
                    attempt,
                    _seconds(self.seconds),
                )
                time.sleep(delay)
                delay = min(self.max_delay, delay * 2)
                if before_retry is not None:
                    # A failure here shows again in the next attempt.
                    with contextlib.suppress(*self.transient):
                        before_retry(exc)
            else:
                if attempt > 1 or self.gave_up.is_set():
                    _tell("recovered", self, what)
                self.gave_up.clear()  # the server is back: retry fully next time
                return result

    def give_up(self, what: str, elapsed: float, reason: str) -> InfrastructureError:
        return InfrastructureError(
            self.component,
            self.setting,
            f"{self.component} is unavailable: {what} failed for {_seconds(elapsed)} s"
            f" ({reason}); gave up after infra_retry_seconds = {_seconds(self.seconds)}."
            f" Check that server and the setting {setting_hint(self.setting)}, then run the"
            " command again: committed results are safe and it resumes where they end",
        )


def is_commit(retrier: Retrier, what: str) -> bool:
    """Whether a retried operation is the warehouse's commit of a batch (what the alerts
    call ``commits_failing`` and the metrics ``adpulse_commit_failures_total``), rather
    than another operation on a server."""
    return retrier.setting == "warehouse_url" and what.startswith("the commit")


def describe(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none), or its
    ``reason`` attribute when it has one (a message that does not repeat the server)."""
    reason = getattr(exc, "reason", None)
    text = reason.strip() if isinstance(reason, str) else str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"
