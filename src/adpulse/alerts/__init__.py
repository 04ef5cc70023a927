"""Alerts: rules over what the processor commits, and notifiers that tell operators.

:mod:`.rules` watches a processor through its commit-listener seam
(:mod:`adpulse.processor.listeners`) and a small evaluation thread for the rules that
fire on silence; :mod:`.notifiers` sends each change of an alert (firing, resolved) to
the log, a webhook and an SNS topic from a sender thread of its own, so a slow receiver
never slows ingestion. :func:`open_alerting` builds both from the settings
(``docs/alerts.md``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adpulse.alerts.notifiers import Dispatcher, notifiers_for
from adpulse.alerts.rules import Alert, AlertMonitor
from adpulse.config import Settings
from adpulse.outages import observe_retries

if TYPE_CHECKING:
    from adpulse.serving.store.sync import StoreSync

__all__ = ["Alert", "AlertMonitor", "Dispatcher", "open_alerting"]


def open_alerting(
    settings: Settings, sync: StoreSync | None = None, watch_streams: bool = True
) -> AlertMonitor:
    """A started monitor sending to every configured notifier; ``close()`` it at the end.
    ``sync``: the serving store's sync, whose rebuilds the monitor reports;
    ``watch_streams``: see :class:`AlertMonitor`."""
    dispatcher = Dispatcher(notifiers_for(settings))
    probe = None if sync is None else (lambda: (sync.repairs, sync.behind))
    monitor = AlertMonitor(
        settings, dispatcher.send, store_rebuilds=probe, watch_streams=watch_streams
    )
    monitor.closes(observe_retries(monitor), dispatcher.close)
    monitor.start_checking()
    return monitor
