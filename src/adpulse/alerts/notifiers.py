"""Where alerts go: the log, a webhook, an SNS topic, all from one sender thread.

:class:`Dispatcher` queues each alert and sends it from a thread of its own, so a slow
or unreachable receiver delays other notifications, never the committing thread that
raised it. A notifier that fails is logged and the next one still runs.

The webhook's request is a JSON POST signed so the receiver can tell it came from
adpulse and is fresh: ``X-Adpulse-Timestamp`` holds the Unix time in seconds and
``X-Adpulse-Signature`` is ``sha256=`` + the hex HMAC-SHA256, keyed with
``alert_webhook_secret``, of ``TIMESTAMP.BODY`` (the timestamp, a dot, the exact body
bytes); receivers reject a timestamp older than a few minutes (replays). See
:func:`sign` and docs/alerts.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import httpx

from adpulse.alerts.rules import Alert
from adpulse.config import Settings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Adpulse-Signature"
TIMESTAMP_HEADER = "X-Adpulse-Timestamp"
#: Webhook attempts per alert, and the first wait between them (doubled each time).
WEBHOOK_ATTEMPTS = 4
WEBHOOK_FIRST_DELAY = 0.5
#: How long a process that ends waits for queued alerts to be sent.
CLOSE_SECONDS = 15.0


class Notifier(Protocol):
    """Sends one alert; raises when it could not."""

    name: str

    def notify(self, alert: Alert) -> None: ...


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The webhook signature header value over ``timestamp`` and ``body`` (module docs)."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class LogNotifier:
    """Writes each alert to the process log: a warning when firing, info when resolved."""

    name = "log"

    def notify(self, alert: Alert) -> None:
        level = logging.WARNING if alert.state == "firing" else logging.INFO
        log.log(level, "alert %s %s: %s", alert.rule, alert.state, alert.summary)


class WebhookNotifier:
    """POSTs the alert as JSON to ``url``, signed (module docs), retried with backoff on a
    connection error or a 5xx/429 answer."""

    name = "webhook"

    def __init__(self, url: str, secret: bytes, timeout: float = 10.0) -> None:
        self.url = url
        self.secret = secret
        self.client = httpx.Client(timeout=timeout)

    def notify(self, alert: Alert) -> None:
        body = json.dumps(alert.to_json(), separators=(",", ":")).encode()
        delay = WEBHOOK_FIRST_DELAY
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(self.secret, timestamp, body),
            }
            try:
                response = self.client.post(self.url, content=body, headers=headers)
                if response.status_code < 500 and response.status_code != 429:
                    response.raise_for_status()  # a 4xx other than 429: retrying cannot help
                    return
                problem = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt == WEBHOOK_ATTEMPTS:
                raise RuntimeError(
                    f"the webhook {self.url} failed {WEBHOOK_ATTEMPTS} times ({problem});"
                    " check alert_webhook_url and the receiver"
                )
            log.warning("webhook %s: %s; retrying in %.1f s", self.url, problem, delay)
            time.sleep(delay)
            delay *= 2

    def close(self) -> None:
        self.client.close()


class SnsNotifier:
    """Publishes the alert's JSON to an SNS topic (``Subject``: state and rule)."""

    name = "sns"

    def __init__(self, topic_arn: str, region: str, endpoint_url: str | None = None) -> None:
        import boto3  # only when SNS is configured: boto3 takes a while to import

        self.topic_arn = topic_arn
        self.client: Any = boto3.client("sns", region_name=region, endpoint_url=endpoint_url)

    def notify(self, alert: Alert) -> None:
        self.client.publish(
            TopicArn=self.topic_arn,
            Subject=f"adpulse {alert.state}: {alert.rule}"[:100],
            Message=json.dumps(alert.to_json()),
        )


def notifiers_for(settings: Settings) -> list[Notifier]:
    """The log, plus the webhook and SNS topic when their settings are given."""
    found: list[Notifier] = [LogNotifier()]
    if settings.alert_webhook_url:
        if settings.alert_webhook_secret is None:
            raise ValueError(
                "alert_webhook_url is set but alert_webhook_secret is not: set a secret"
                " (e.g. ADPULSE_ALERT_WEBHOOK_SECRET) so the receiver can verify alerts"
            )
        secret = settings.alert_webhook_secret.get_secret_value().encode()
        found.append(WebhookNotifier(settings.alert_webhook_url, secret))
    if settings.alert_sns_topic_arn:
        region = settings.alert_sns_region or settings.alert_sns_topic_arn.split(":")[3]
        found.append(
            SnsNotifier(
                settings.alert_sns_topic_arn, region, settings.alert_sns_endpoint_url or None
            )
        )
    return found


def send_all(notifiers: Sequence[Notifier], alert: Alert) -> dict[str, str | None]:
    """Send ``alert`` through each notifier now: name -> None if sent, else the error."""
    results: dict[str, str | None] = {}
    for notifier in notifiers:
        try:
            notifier.notify(alert)
            results[notifier.name] = None
        except Exception as exc:  # noqa: BLE001 - reported per notifier
            log.debug("notifier %s failed", notifier.name, exc_info=True)
            results[notifier.name] = f"{type(exc).__name__}: {exc}"
    return results


class Dispatcher:
    """Sends queued alerts through ``notifiers`` on a daemon thread (module docs)."""

    def __init__(self, notifiers: Sequence[Notifier]) -> None:
        self.notifiers = list(notifiers)
        self._queue: queue.Queue[Alert | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="adpulse-notify", daemon=True)
        self._thread.start()

    def send(self, alert: Alert) -> None:
        """Queue ``alert``; returns at once."""
        self._queue.put(alert)

    def _run(self) -> None:
        while (alert := self._queue.get()) is not None:
            for name, error in send_all(self.notifiers, alert).items():
                if error is not None:
                    log.error(
                        "alert %s %s not sent by %s: %s", alert.rule, alert.state, name, error
                    )

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Send what is queued, then stop; a process ending waits at most ``timeout``
        for an unreachable receiver (the rest is logged as not sent)."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("alerts still queued after %.0f s were not sent", timeout)
            return
        for notifier in self.notifiers:
            if isinstance(notifier, WebhookNotifier):
                notifier.close()
