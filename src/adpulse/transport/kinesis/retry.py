"""Retrying throttled Kinesis calls: which error codes are throttling, and exponential
backoff with full jitter under a deadline.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

THROTTLED = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
        "KMSThrottlingException",
        "InternalFailure",
        "ServiceUnavailable",
    }
)


@dataclass
class Backoff:
    """Exponential backoff with full jitter (sleep a random time up to base x 2^attempt,
    capped), given up after ``deadline_seconds`` of consecutive failures."""

    base_seconds: float = 0.05
    cap_seconds: float = 5.0
    deadline_seconds: float = 60.0
    sleep: Callable[[float], None] = time.sleep
    attempt: int = 0
    started: float | None = None

    def reset(self) -> None:
        self.attempt = 0
        self.started = None

    def wait(self, what: str) -> None:
        """Sleep before the next attempt; ``TimeoutError`` once the deadline passed."""
        now = time.monotonic()
        if self.started is None:
            self.started = now
        if now - self.started > self.deadline_seconds:
            raise TimeoutError(
                f"{what} kept failing for {now - self.started:.0f} s; check the stream's "
                "shard limits (add shards) and the AWS endpoint, then restart"
            )
        delay = random.uniform(0, min(self.cap_seconds, self.base_seconds * 2**self.attempt))
        self.attempt += 1
        self.sleep(delay)


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""
