"""The alert rules and their state: what is wrong now, and what operators were told.

:class:`AlertMonitor` is a commit listener (:mod:`adpulse.processor.listeners`): on the
committing thread it only records a batch's counts under a lock (no I/O, no
evaluation), so alerting costs ingestion next to nothing. Its evaluation thread checks
the rules every ``alert_check_seconds``, since several fire on silence (no commit, no
events), which no commit can announce:

- ``processor_stopped``: no commit for ``alert_processor_silent_seconds`` after the
  first one. A running processor commits at least every second or so once it has seen
  events (idle ticks advance the watermarks), so silence means it stopped, hung, or
  gave up on a failing commit (the committer stops the processor then);
- ``dead_letters``: more than ``alert_dead_letter_share`` of the records received in
  the last ``alert_dead_letter_window_seconds`` were dead letters (with at least
  ``alert_dead_letter_min_records`` received, so a handful of records cannot fire it);
- ``stream_silent:STREAM``: no events on a stream of ``alert_silent_streams`` for
  ``alert_stream_silent_seconds``;
- ``commits_failing``: the warehouse's commits fail and are being retried, or were given
  up on (which stops the processor); ``server_unavailable:SETTING``: another operation
  on a server (the transport, a read) is being retried or was given up on. Both are
  told by the servers' retriers (:func:`adpulse.outages.observe_retries`) and resolve
  with the first success after the failure;
- ``lag``: the processor stayed behind the log by more than ``alert_lag_bytes`` bytes,
  ``alert_lag_records`` records or ``alert_lag_age_seconds`` seconds of appends (any
  bound over; 0 turns a bound off) for longer than ``alert_lag_seconds``; read every
  check from the runtime's lag probe (:meth:`AlertMonitor.watch_lag`), which the
  ``/metrics`` scrapes share;
- ``crash_loop``: ``process --workers N`` restarted crashed workers at least
  ``alert_crash_restarts`` times within ``alert_crash_window_seconds`` (the supervisor
  tells :meth:`AlertMonitor.crashed`);
- ``store_rebuild``: the serving store was rebuilt from the warehouse after it had been
  current (a failed write, a gap, a flushed store: :attr:`StoreSync.repairs`); resolved
  once it is current again.

Each rule fires once per incident and sends one "resolved" when it clears. A flapping
rule is rate-limited: a rule fires at most once per ``alert_min_interval_seconds``; a
firing suppressed by the limit is sent on a later check if the rule is still active,
and only an announced firing is ever resolved.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from adpulse.config import Settings
from adpulse.outages import Retrier, is_commit
from adpulse.storage.warehouse.base import BatchOutput
from adpulse.transport.base import Lag

log = logging.getLogger(__name__)

State = Literal["firing", "resolved"]


@dataclass(frozen=True, slots=True)
class Alert:
    """One notification: a rule started (``firing``) or stopped (``resolved``) holding."""

    rule: str
    state: State
    summary: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON body webhooks and SNS receive (documented in docs/alerts.md)."""
        return {
            "rule": self.rule,
            "state": self.state,
            "summary": self.summary,
            "at": self.at.isoformat(),
            "details": self.details,
        }


@dataclass(slots=True)
class _Rule:
    """What was announced of one rule, for the once-per-incident and rate rules."""

    announced: bool = False
    last_fired: float | None = None


class AlertMonitor:
    """Evaluates the rules (module docs) and hands each change to ``send``.

    ``clock`` (seconds, monotonic) is injectable for tests. ``store_rebuilds``, when
    given, returns how many times the serving store was rebuilt after it had been
    current, and whether it is behind the warehouse (the runtime passes the store sync's
    ``repairs`` and ``behind``). ``watch_streams``:
    False in a process that runs no processor (the workers' supervisor), where streams
    are never seen.
    """

    def __init__(
        self,
        settings: Settings,
        send: Callable[[Alert], None],
        clock: Callable[[], float] = time.monotonic,
        store_rebuilds: Callable[[], tuple[int, bool]] | None = None,
        watch_streams: bool = True,
    ) -> None:
        self.settings = settings
        self.send = send
        self.clock = clock
        self.store_rebuilds = store_rebuilds
        self._on_close: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._rules: dict[str, _Rule] = {}
        started = clock()
        self._last_commit: float | None = None
        #: (when, received, rejected) per committed batch within the dead-letter window.
        self._window: deque[tuple[float, int, int]] = deque()
        self._last_events: dict[str, float] = (
            {s: started for s in settings.alert_silent_streams} if watch_streams else {}
        )
        #: (when, slot, exit status) of each worker crash within the crash window.
        self._crashes: deque[tuple[float, int, int]] = deque()
        #: rule -> (summary, details) of servers failing now, from the retriers.
        self._servers: dict[str, tuple[str, dict[str, Any]]] = {}
        self._lag: Callable[[], Lag | None] | None = None
        self._lag_since: float | None = None  # when the lag went over the bound
        self._rebuilds_seen = 0
        self._rebuild_active = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the commit listener (committing thread: record only) ---------------------------
    def start(self, partitions: Sequence[int]) -> None:
        """A processor started: its silence counts from now, not from the last one's."""
        with self._lock:
            if self._last_commit is not None:
                self._last_commit = self.clock()

    def on_commit(self, output: BatchOutput) -> None:
        now = self.clock()
        stats = output.stats
        received = int(stats["received"].sum()) if stats.height else 0
        rejected = int(stats["rejected"].sum()) if stats.height else 0
        streams = (
            stats.filter(stats["received"] > 0)["stream"].unique().to_list() if stats.height else []
        )
        with self._lock:
            self._last_commit = now
            if received:
                self._window.append((now, received, rejected))
            for stream in streams:
                if stream in self._last_events:
                    self._last_events[stream] = now

    # -- the retry observer (any thread: record only) ------------------------------------
    @staticmethod
    def _server_rule(retrier: Retrier, what: str) -> str:
        if is_commit(retrier, what):
            return "commits_failing"
        return f"server_unavailable:{retrier.setting}"

    def retrying(self, retrier: Retrier, what: str, reason: str) -> None:
        summary = f"{retrier.component}: {what} fails ({reason}); retrying"
        with self._lock:
            self._servers[self._server_rule(retrier, what)] = (
                summary,
                {"component": retrier.component, "operation": what, "reason": reason},
            )

    def gave_up(self, retrier: Retrier, what: str, reason: str) -> None:
        summary = (
            f"{retrier.component}: {what} failed for infra_retry_seconds and was given up"
            f" ({reason}); the process stops: check the server and {retrier.setting}"
        )
        with self._lock:
            self._servers[self._server_rule(retrier, what)] = (
                summary,
                {"component": retrier.component, "operation": what, "reason": reason},
            )

    def recovered(self, retrier: Retrier, what: str) -> None:
        with self._lock:
            for rule in ("commits_failing", f"server_unavailable:{retrier.setting}"):
                if rule == "commits_failing" and retrier.setting != "warehouse_url":
                    continue
                self._servers.pop(rule, None)

    def watch_lag(self, lag: Callable[[], Lag | None]) -> None:
        """Read the processor's lag with ``lag`` on each check (the runtime's
        :class:`~adpulse.processor.lag.LagProbe`, thread-safe). Replaces the last."""
        self._lag, self._lag_since = lag, None

    def crashed(self, slot: int, status: int) -> None:
        """A supervised worker crashed and will be restarted."""
        with self._lock:
            self._crashes.append((self.clock(), slot, status))

    # -- evaluation ---------------------------------------------------------------------
    def active(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """The rules holding now: rule -> (summary, details)."""
        s = self.settings
        now = self.clock()
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        with self._lock:
            last_commit = self._last_commit
            while self._window and now - self._window[0][0] > s.alert_dead_letter_window_seconds:
                self._window.popleft()
            received = sum(r for _, r, _ in self._window)
            rejected = sum(d for _, _, d in self._window)
            last_events = dict(self._last_events)
            found.update(self._servers)
            while self._crashes and now - self._crashes[0][0] > s.alert_crash_window_seconds:
                self._crashes.popleft()
            crashes = list(self._crashes)
        if s.alert_crash_restarts and len(crashes) >= s.alert_crash_restarts:
            found["crash_loop"] = (
                f"workers crashed {len(crashes)} times in {s.alert_crash_window_seconds:g} s"
                f" (alert_crash_restarts = {s.alert_crash_restarts}); see their errors in the"
                " log",
                {
                    "crashes": len(crashes),
                    "workers": sorted({slot for _, slot, _ in crashes}),
                    "exit_statuses": sorted({status for _, _, status in crashes}),
                },
            )
        silent = s.alert_processor_silent_seconds
        if silent and last_commit is not None and now - last_commit > silent:
            found["processor_stopped"] = (
                f"the processor committed nothing for {now - last_commit:.0f} s"
                f" (alert_processor_silent_seconds = {silent:g}): it stopped, hangs or"
                " cannot commit; check its log and the warehouse",
                {"silent_seconds": round(now - last_commit, 1)},
            )
        if received >= s.alert_dead_letter_min_records and received:
            share = rejected / received
            if share > s.alert_dead_letter_share:
                found["dead_letters"] = (
                    f"{share:.1%} of the {received} records received in the last"
                    f" {s.alert_dead_letter_window_seconds:g} s were dead letters"
                    f" (alert_dead_letter_share = {s.alert_dead_letter_share:g});"
                    " see `adpulse dead-letters`",
                    {"share": round(share, 4), "received": received, "rejected": rejected},
                )
        bound = s.alert_stream_silent_seconds
        for stream, last in sorted(last_events.items()):
            if bound and now - last > bound:
                found[f"stream_silent:{stream}"] = (
                    f"no {stream} events for {now - last:.0f} s"
                    f" (alert_stream_silent_seconds = {bound:g}); check the producers",
                    {"stream": stream, "silent_seconds": round(now - last, 1)},
                )
        lagging = self._lagging(now)
        if lagging is not None:
            found["lag"] = lagging
        if self.store_rebuilds is not None:
            rebuilds, behind = self.store_rebuilds()
            if rebuilds > self._rebuilds_seen:
                self._rebuild_active, self._rebuilds_seen = True, rebuilds
            elif not behind:
                self._rebuild_active = False
            if self._rebuild_active:
                found["store_rebuild"] = (
                    "the serving store was rebuilt from the warehouse (a write failed or it"
                    " fell behind); reads fall back to the warehouse meanwhile",
                    {"rebuilds": rebuilds, "behind": behind},
                )
        return found

    def _lagging(self, now: float) -> tuple[str, dict[str, Any]] | None:
        s = self.settings
        if self._lag is None or not (
            s.alert_lag_bytes or s.alert_lag_records or s.alert_lag_age_seconds
        ):
            return None
        try:
            lag = self._lag()
        except Exception:  # noqa: BLE001 - a server down is its own rule
            log.debug("reading the lag failed", exc_info=True)
            return None
        over = [] if lag is None else lag_over(s, lag)
        if lag is None or not over:
            self._lag_since = None
            return None
        if self._lag_since is None:
            self._lag_since = now
        if now - self._lag_since < s.alert_lag_seconds:
            return None
        records = "" if lag.records is None else f", {lag.records:,} records"
        age = "" if lag.seconds is None else f", {lag.seconds:.1f} s of appends"
        return (
            f"the processor is {lag.bytes:,} bytes{records}{age} behind the log and has been"
            f" over {' and '.join(over)} for {now - self._lag_since:.0f} s; add workers or"
            " check what slows it",
            {
                "lag_bytes": lag.bytes,
                "lag_records": lag.records,
                "lag_seconds": lag.seconds,
                "behind_seconds": round(now - self._lag_since, 1),
            },
        )

    def check(self) -> list[Alert]:
        """Evaluate the rules once and send what changed; returns what was sent."""
        now = self.clock()
        found = self.active()
        sent: list[Alert] = []
        for name in sorted(set(found) | set(self._rules)):
            rule = self._rules.setdefault(name, _Rule())
            if name in found and not rule.announced:
                interval = self.settings.alert_min_interval_seconds
                if rule.last_fired is not None and now - rule.last_fired < interval:
                    continue  # flapping: fire again once the interval has passed
                summary, details = found[name]
                rule.announced, rule.last_fired = True, now
                sent.append(Alert(name, "firing", summary, details=details))
            elif name not in found and rule.announced:
                rule.announced = False
                sent.append(Alert(name, "resolved", f"{name} cleared"))
        for alert in sent:
            self.send(alert)
        return sent

    def start_checking(self) -> None:
        """Check the rules every ``alert_check_seconds`` on a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="adpulse-alerts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.alert_check_seconds):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - alerting must never stop the process
                log.exception("checking the alert rules failed")

    def closes(self, *calls: Callable[[], None]) -> None:
        """Run ``calls``, in order, when the monitor closes (after its last check)."""
        self._on_close.extend(calls)

    def close(self) -> None:
        """Stop checking, check once more (what made the process end, e.g. a server
        given up on, is still told), then close what was handed over (the notifiers'
        sender, the retry observation)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            try:
                self.check()
            except Exception:  # noqa: BLE001 - closing must go on
                log.exception("checking the alert rules failed")
        for close in self._on_close:
            close()


def lag_over(settings: Settings, lag: Lag) -> list[str]:
    """The lag bounds ``lag`` is over (``"alert_lag_records = 1,000"``...); a bound of 0,
    or a figure the transport cannot tell, never is."""
    s = settings
    over = []
    if s.alert_lag_bytes and lag.bytes > s.alert_lag_bytes:
        over.append(f"alert_lag_bytes = {s.alert_lag_bytes:,}")
    if s.alert_lag_records and lag.records is not None and lag.records > s.alert_lag_records:
        over.append(f"alert_lag_records = {s.alert_lag_records:,}")
    age = s.alert_lag_age_seconds
    if age and lag.seconds is not None and lag.seconds > age:
        over.append(f"alert_lag_age_seconds = {age:g}")
    return over
