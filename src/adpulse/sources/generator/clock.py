"""Time inside the generator: integer milliseconds since the Unix epoch (UTC).

Every event time, window bound and arrival time is an ``int`` of milliseconds, so that
whole columns are NumPy ``int64`` arithmetic; datetimes appear only at the public edge
(:class:`~adpulse.sources.generator.EventGenerator`'s arguments and results).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

SECOND: Final = 1000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(moment: datetime) -> int:
    """``moment`` in ms since the epoch; a naive datetime is read as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    """The aware UTC datetime of ``ms`` since the epoch."""
    return EPOCH + timedelta(milliseconds=ms)
