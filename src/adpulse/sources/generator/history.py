"""A demo's history before its live feed: as dense as live just before it, thinner back.

A live feed produces ``rate`` events a second whatever the hour. A day of history at
that rate is far more than a demo should wait for (2,000/s is 172.8 M events), so the
history is capped; spread evenly under the cap it would run at a sliver of the live
rate (3 M over a day is ~35/s) and every "vs previous" would compare live traffic with
it. :func:`history_plan` spends the cap where the dashboard compares: the stretch just
before live at the live rate, then tiers each twice as long as the one after it, with an
equal share of the rest of the cap each (so ever thinner), never denser than live.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

#: The stretch just before live that runs at the live rate, at most: the dashboard's
#: 15-minute quick range and the 15 minutes it is compared with.
DENSE_SECONDS: Final = 30 * 60
#: The share of the cap the dense stretch may take; the rest thins out further back.
DENSE_SHARE: Final = 0.8


@dataclass(frozen=True, slots=True)
class HistoryTier:
    """Events spread evenly over ``[start, end)`` at ``events_per_second``."""

    start: datetime
    end: datetime
    events_per_second: float

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    @property
    def events(self) -> int:
        """Valid events (impressions + clicks + conversions), as a live feed counts them."""
        return int(self.events_per_second * self.seconds + 0.5)


def history_plan(end: datetime, days: float, rate: float, cap: int) -> list[HistoryTier]:
    """Tiers of history over the ``days`` before ``end``, oldest first, at most ``cap``
    events in all; the last tier (just before ``end``) runs at ``rate``.

    All of it runs at ``rate`` when that fits the cap. Otherwise the last
    ``min(DENSE_SECONDS, DENSE_SHARE * cap / rate)`` seconds do, and the rest of the cap
    goes in equal shares to tiers of doubling length further back (each at most ``rate``;
    the oldest takes what is left of ``days``): density never rises with age.
    """
    total = days * 86_400
    if total <= 0 or rate <= 0 or cap <= 0:
        return []
    if rate * total <= cap:
        return [HistoryTier(end - timedelta(seconds=total), end, rate)]
    dense = min(DENSE_SECONDS, DENSE_SHARE * cap / rate, total)
    tiers = [HistoryTier(end - timedelta(seconds=dense), end, rate)]
    rest = cap - tiers[0].events
    ages = [dense]  # tier bounds, in seconds before ``end``
    while 2 * ages[-1] < total:
        ages.append(2 * ages[-1])
    if len(ages) > 1 and total - ages[-1] < ages[-1] - ages[-2]:
        ages.pop()  # a short remainder joins the oldest tier: densities only fall
    if ages[-1] < total:
        ages.append(total)
    share = rest // (len(ages) - 1) if len(ages) > 1 else 0  # whole events: within the cap
    for newer, older in zip(ages, ages[1:], strict=False):
        density = min(rate, share / (older - newer))
        start = end - timedelta(seconds=older)
        tiers.insert(0, HistoryTier(start, end - timedelta(seconds=newer), density))
    return tiers
