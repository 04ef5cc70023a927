"""The generator's entry point: one synthetic advertiser, its dimensions and its feeds.

:class:`EventGenerator` builds the world once from the seed and hands each bounded data
set (:meth:`~EventGenerator.generate`) or live feed (:meth:`~EventGenerator.stream_chunk`)
to a generation session of its own, seeded so that equal calls give equal bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from datetime import datetime

import numpy as np
import polars as pl

from adpulse.sources.generator.clock import from_ms, to_ms
from adpulse.sources.generator.config import GeneratorConfig
from adpulse.sources.generator.history import HistoryTier
from adpulse.sources.generator.output import GeneratedEvents
from adpulse.sources.generator.sampling import traffic_mass
from adpulse.sources.generator.session import Session
from adpulse.sources.generator.world import World

#: Bounded data sets are generated in windows of at most this many events (memory).
MAX_WINDOW_EVENTS = 1_000_000


class EventGenerator:
    """Dimensions and event streams of one synthetic advertiser, fixed by ``config.seed``."""

    def __init__(self, config: GeneratorConfig | None = None, feed: int = 0) -> None:
        """``feed`` picks which live feed :meth:`stream_chunk` plays. The feeds of one
        seed share its dimensions and traffic model but never their event ids: each has
        an id namespace of its own. Feed 0 is the reproducible default; a process that
        restarts a feed into the same log (``adpulse demo``) passes a new feed number
        each run, so that its events are not taken for re-sends of the last run's."""
        if feed < 0:
            raise ValueError(f"feed must be >= 0, got {feed}")
        self.config = config or GeneratorConfig()
        self.feed = feed
        self._world = World.build(self.config)
        self._live: Session | None = None

    def campaigns(self) -> pl.DataFrame:
        """``ad_id, campaign, product, target_start_date, target_end_date``, one row per ad."""
        return self._world.campaigns

    def users(self) -> pl.DataFrame:
        """``user_id, age, gender, interests`` (interests ``;``-joined), one row per user."""
        return self._world.users

    def generate(self, n_events: int, start: datetime, end: datetime) -> GeneratedEvents:
        """About ``n_events`` valid events with event times in ``[start, end)``, with faults.

        ``n_events`` counts impressions + clicks + conversions before faults; clicks and
        conversions whose time would fall at or after ``end`` are dropped, so a few less
        arrive. Naive datetimes are read as UTC. Identical arguments give identical bytes.
        """
        return GeneratedEvents.concat(self.iter_generate(n_events, start, end))

    def iter_generate(
        self, n_events: int, start: datetime, end: datetime
    ) -> Iterator[GeneratedEvents]:
        """:meth:`generate` in consecutive parts (bounded memory); concatenated, identical."""
        start_ms, end_ms = to_ms(start), to_ms(end)
        if end_ms <= start_ms:
            raise ValueError(f"end ({end}) must be after start ({start})")
        if n_events < 0:
            raise ValueError(f"n_events must be >= 0, got {n_events}")
        # Seeded by the arguments too: different ranges give different events (and ids).
        key = [self.config.seed, 1, start_ms % 2**64, end_ms % 2**64, n_events]
        rng = np.random.default_rng(key)
        session = Session(self._world, self.config, rng)
        windows = max(1, math.ceil(n_events / MAX_WINDOW_EVENTS))
        bounds = [start_ms + (end_ms - start_ms) * i // windows for i in range(windows + 1)]
        # Events per window follow the traffic curve, summing exactly to n_events.
        mass = np.cumsum(
            [0.0] + [traffic_mass(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
        )
        cum = np.floor(n_events * mass / mass[-1] + 0.5).astype(np.int64)
        for i in range(windows):
            last = i == windows - 1
            yield session.window(bounds[i], bounds[i + 1], int(cum[i + 1] - cum[i]), last)

    def iter_history(self, tiers: Sequence[HistoryTier]) -> Iterator[GeneratedEvents]:
        """A history in consecutive tiers (:func:`history_plan`), as parts of bounded size.

        Each tier's events are spread evenly over it at its density, as a live feed
        produces ``rate`` events a second whatever the hour; one session spans all tiers,
        so clicks and conversions cross from one tier into the next. Clicks and
        conversions that would happen after the last tier's end are dropped (the live
        feed takes over). The same tiers give the same bytes.
        """
        if not tiers:
            return
        for newer, older in zip(tiers[1:], tiers, strict=False):
            if newer.start != older.end:
                raise ValueError(f"history tiers must be consecutive: {older} then {newer}")
        first, final = to_ms(tiers[0].start), to_ms(tiers[-1].end)
        key = [self.config.seed, 3, first % 2**64, final % 2**64, sum(t.events for t in tiers)]
        session = Session(self._world, self.config, np.random.default_rng(key), curve=False)
        for i, tier in enumerate(tiers):
            start_ms, end_ms = to_ms(tier.start), to_ms(tier.end)
            windows = max(1, math.ceil(tier.events / MAX_WINDOW_EVENTS))
            bounds = [start_ms + (end_ms - start_ms) * k // windows for k in range(windows + 1)]
            # evenly: events per window in proportion to its length, summing exactly
            cum = [tier.events * (b - start_ms) // max(1, end_ms - start_ms) for b in bounds]
            for k in range(windows):
                last = i == len(tiers) - 1 and k == windows - 1
                yield session.window(bounds[k], bounds[k + 1], cum[k + 1] - cum[k], last)

    def stream_chunk(
        self, start: datetime, end: datetime, n_events: int, final: bool = False
    ) -> GeneratedEvents:
        """The records arriving in ``[start, end)`` of a live feed of about ``n_events``.

        Call with consecutive windows (``start`` at or after the previous ``end``).
        Future events (clicks seconds after their impression, conversions minutes to
        days after their click) and displaced or duplicated records are kept and
        emitted in the window their arrival time falls in.

        ``final``: the feed stops at ``end`` (a live source shutting down). Every record
        held back (re-sends, displaced records) is emitted now and events that would
        happen after ``end`` are dropped, so the faults of the feed so far are exactly
        at their rates. Later windows continue the feed with new event ids.
        """
        start_ms, end_ms = to_ms(start), to_ms(end)
        if end_ms <= start_ms:
            raise ValueError(f"end ({end}) must be after start ({start})")
        if self._live is None:
            # Feed 0 keeps the key it always had: its bytes stay reproducible.
            key = [self.config.seed, 2] + ([self.feed] if self.feed else [])
            self._live = Session(self._world, self.config, np.random.default_rng(key))
        previous = self._live.last_end
        if previous is not None and start_ms < previous:
            raise ValueError(
                f"stream_chunk windows must not overlap: start {start} is before the "
                f"previous window's end {from_ms(previous)}; call reset_stream() to restart"
            )
        return self._live.window(start_ms, end_ms, n_events, final=final)

    def reset_stream(self) -> None:
        """Forget the live feed's state: the next :meth:`stream_chunk` starts afresh."""
        self._live = None
