"""The demo's history: as dense as the live feed just before it, thinner further back."""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import UTC, datetime, timedelta

from adpulse.contracts import Stream
from adpulse.sources.generator import (
    EventGenerator,
    GeneratedEvents,
    GeneratorConfig,
    history_plan,
)

END = datetime(2026, 11, 29, 12, 0)
RATE = 200.0  # events/s, live and in the dense stretch
CAP = 300_000  # a tenth of the demo's cap, so that the test stays small
# Clean data (no re-sends, displaced or malformed records): every record is one event.
CONFIG = GeneratorConfig(seed=5, conversion_delay_median_seconds=90.0).without_faults()


def _time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)  # "YYYY-MM-DD HH:MM:SS" or ISO with an offset
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _minutes(parts: list[GeneratedEvents], stream: Stream) -> Counter[datetime]:
    """Events of ``stream`` per minute of event time (naive UTC)."""
    out: Counter[datetime] = Counter()
    for part in parts:
        for payload in part.records[stream]:
            t = _time(json.loads(payload)[stream.timestamp_field])
            out[t.replace(second=0, microsecond=0, tzinfo=None)] += 1
    return out


def _platforms(parts: list[GeneratedEvents], minutes: set[datetime]) -> Counter[str]:
    out: Counter[str] = Counter()
    for part in parts:
        for payload in part.records[Stream.IMPRESSIONS]:
            record = json.loads(payload)
            t = _time(record[Stream.IMPRESSIONS.timestamp_field])
            if t.replace(second=0, microsecond=0, tzinfo=None) in minutes:
                out[record["platform"]] += 1
    return out


def test_plan_spends_the_cap_on_the_stretch_before_live() -> None:
    tiers = history_plan(END, 1, RATE, CAP)
    # 80 % of the cap at the live rate: 240,000 events = 20 min at 200/s; then tiers of
    # doubling length back to a day, 10,000 events each (the oldest takes the rest).
    assert [t.seconds for t in tiers] == [48_000, 19_200, 9_600, 4_800, 2_400, 1_200, 1_200]
    assert [t.events for t in tiers] == [10_000] * 6 + [240_000]
    assert tiers[-1].events_per_second == RATE and tiers[-1].end == END
    assert tiers[0].start == END - timedelta(days=1)
    assert all(a.end == b.start for a, b in zip(tiers, tiers[1:], strict=False))
    densities = [t.events_per_second for t in tiers]
    assert densities == sorted(densities)  # never denser further back
    # the demo's own figures: 3 M at 2,000/s over a day -> the last 20 min at the live rate
    demo = history_plan(END, 1, 2_000, 3_000_000)
    assert demo[-1].seconds == 1_200 and demo[-1].events == 2_400_000
    assert sum(t.events for t in demo) == 3_000_000
    for days in (0.5, 1, 7, 30):
        assert sum(t.events for t in history_plan(END, days, 2_000, 3_000_000)) <= 3_000_000
    # the dense stretch is at most 30 min (the 15-min range and its previous 15 min)
    assert history_plan(END, 1, 100, 3_000_000)[-1].seconds == 1_800
    # under the cap, all of it at the live rate
    assert history_plan(END, 5 / 1440, 300, 3_000_000) == history_plan(END, 5 / 1440, 300, 10**6)
    (whole,) = history_plan(END, 5 / 1440, 300, 3_000_000)
    assert (whole.seconds, whole.events_per_second, whole.events) == (300, 300, 90_000)


def test_history_runs_at_the_live_rate_and_mix_before_live() -> None:
    tiers = history_plan(END, 1, RATE, CAP)
    history = list(EventGenerator(CONFIG).iter_history(tiers))
    again = list(EventGenerator(CONFIG).iter_history(tiers))
    assert [p.records for p in again] == [p.records for p in history]  # same seed, same bytes

    # Live: the demo's producer at RATE, 10 min of 1-s windows.
    live_gen = EventGenerator(CONFIG, feed=1)
    live_start = END
    live = [
        live_gen.stream_chunk(
            live_start + timedelta(seconds=s), live_start + timedelta(seconds=s + 1), int(RATE)
        )
        for s in range(600)
    ]
    live_minutes = _minutes(live, Stream.IMPRESSIONS)
    # Live is flat: every minute the same impressions (each 1-s window rounds
    # 200 / events-per-impression to a whole number).
    assert len(set(live_minutes.values())) == 1
    (per_minute,) = set(live_minutes.values())

    dense = [END - timedelta(minutes=m) for m in range(20, 0, -1)]
    hist_minutes = _minutes(history, Stream.IMPRESSIONS)
    # The dense stretch holds exactly round(240,000 / events-per-impression) impressions
    # spread evenly: per minute Binomial(n, 1/20), sd = sqrt(n/20 * 19/20) ~ 105; each minute
    # within 5 sd of the live count, plus 1 % for the live windows' rounding.
    n = sum(hist_minutes[m] for m in dense)
    sd = math.sqrt(n / 20 * 19 / 20)
    assert abs(n / 20 - per_minute) <= 0.01 * per_minute
    for minute in dense:
        assert abs(hist_minutes[minute] - per_minute) <= 5 * sd + 0.01 * per_minute, minute
    # before the dense stretch: the thin tier at 1/24 of the live rate (10,000 events in 20 min)
    thin = [END - timedelta(minutes=m) for m in range(40, 20, -1)]
    thin_n = sum(hist_minutes[m] for m in thin)
    assert abs(thin_n - n / 24) <= 5 * math.sqrt(n / 24)

    # The same mix: clicks per impression, and platforms, as live (5 sd of a binomial).
    hist_clicks = _minutes(history, Stream.CLICKS)
    live_clicks = _minutes(live, Stream.CLICKS)
    later = dense[2:]  # clicks seconds after their impression; skip the tier edge
    ctr_hist = sum(hist_clicks[m] for m in later) / sum(hist_minutes[m] for m in later)
    live_later = sorted(live_minutes)[1:-1]
    ctr_live = sum(live_clicks[m] for m in live_later) / sum(live_minutes[m] for m in live_later)
    assert abs(ctr_hist - ctr_live) <= 5 * math.sqrt(ctr_live / (per_minute * len(live_later)))
    platforms_hist = _platforms(history, set(dense))
    platforms_live = _platforms(live, set(live_minutes))
    assert set(platforms_hist) == set(platforms_live)
    total_h, total_l = sum(platforms_hist.values()), sum(platforms_live.values())
    for name, count in platforms_live.items():
        share = count / total_l
        tolerance = 5 * math.sqrt(share * (1 - share) * (1 / total_h + 1 / total_l))
        assert abs(platforms_hist[name] / total_h - share) <= tolerance, name
    # conversions follow clicks within minutes (median 90 s) in both
    assert sum(_minutes(history, Stream.CONVERSIONS)[m] for m in later) > 0
