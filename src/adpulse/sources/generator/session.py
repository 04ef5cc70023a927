"""One generation session: a bounded data set, or a live feed, window by window.

A :class:`Session` holds what outlives a window: events that happen later (clicks
seconds after their impression, conversions minutes to days after their click), records
that arrive later (displaced, re-sent), the running fault totals that keep every fault
at its exact rate, and which (user, ad) pairs were clicked (so that unattributed
conversions are exactly that). Each window draws the impressions, what they lead to,
renders the JSON text column-wise and injects the faults.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import polars as pl

from adpulse.contracts import Stream
from adpulse.sources.generator.arrivals import Arrivals
from adpulse.sources.generator.catalog import (
    FIRST_PRODUCT_NO,
    ISO_OFFSETS,
    LOCATION_CDF,
    LOCATIONS,
    PLATFORM_CDF,
    PLATFORMS,
    PRODUCTS,
)
from adpulse.sources.generator.clock import DAY_MS, SECOND, from_ms
from adpulse.sources.generator.config import GeneratorConfig
from adpulse.sources.generator.malformed import MalformedKind, malformed_kinds, malformed_record
from adpulse.sources.generator.output import GeneratedEvents, StreamCounts
from adpulse.sources.generator.sampling import EMPTY, cdf, draw, mostly, traffic_times
from adpulse.sources.generator.world import World

# Rendering lookups: the constant-shaped tail of an engagement record per
# (platform, location), and the text of each product id.
_ENGAGEMENT_TAILS: Final = pl.Series(
    [f'", "platform": "{p}", "location": "{c}"}}' for p in PLATFORMS for c in LOCATIONS]
)
_PRODUCT_TEXT: Final = pl.Series([f"P{FIRST_PRODUCT_NO + i}" for i in range(PRODUCTS)])

_ENGAGEMENT_SCHEMA: Final = {
    "t": pl.Int64,
    "ad": pl.Int32,
    "user": pl.Int32,
    "platform": pl.UInt8,
    "location": pl.UInt8,
}
_CONVERSION_SCHEMA: Final = {
    "t": pl.Int64,
    "ad": pl.Int32,
    "user": pl.Int32,
    "product": pl.Int32,
    "cents": pl.Int64,
    "unattributed": pl.Boolean,
}
_ID_LETTER: Final = {Stream.IMPRESSIONS: "i", Stream.CLICKS: "c", Stream.CONVERSIONS: "v"}
_FAULTS: Final = ("duplicates", "out_of_order", "late", "malformed")


class Session:
    """Generation state: future events, delayed records, running fault counts."""

    def __init__(
        self,
        world: World,
        config: GeneratorConfig,
        rng: np.random.Generator,
        curve: bool = True,
    ) -> None:
        """``curve``: a window's events follow the daily traffic curve inside it (else
        they are spread evenly: a history whose density is given window by window)."""
        self.world = world
        self.curve = curve
        self.config = config
        self.rng = rng
        self.namespace = f"{int(rng.integers(0, 2**32)):08x}"
        self.last_end: int | None = None
        self.pending = {
            s: pl.DataFrame(
                schema=_CONVERSION_SCHEMA if s is Stream.CONVERSIONS else _ENGAGEMENT_SCHEMA
            )
            for s in Stream
        }
        # Rendered records that arrive after the current window, in arrival order.
        self.delayed = {s: Arrivals.empty() for s in Stream}
        self.seq = dict.fromkeys(Stream, 0)
        self.valid_total = dict.fromkeys(Stream, 0)
        self.fault_total = {(s, f): 0 for s in Stream for f in _FAULTS}
        self.variant = dict.fromkeys(((s, k) for s in Stream for k in MalformedKind), 0)
        self.attributed_total = 0
        self.unattributed_total = 0
        n_pairs = len(world.user_id_text) * len(world.ad_ids)
        # One bit per (user, ad): clicked at some point. Unattributed conversions avoid
        # these pairs, so "unattributed" holds exactly.
        self.clicked = np.zeros((n_pairs + 7) // 8, dtype=np.uint8)

    # The window ------------------------------------------------------------------------
    def window(self, start: int, end: int, n_events: int, final: bool) -> GeneratedEvents:
        self.last_end = end
        new = self._events(start, end, n_events)
        records: dict[Stream, list[bytes]] = {}
        counts: dict[Stream, StreamCounts] = {}
        for stream in Stream:
            frame = pl.concat([self.pending[stream], new[stream]])
            due = frame.filter(pl.col("t") < end)
            # A bounded data set ends at ``end``: later clicks and conversions are dropped.
            self.pending[stream] = frame.clear() if final else frame.filter(pl.col("t") >= end)
            if not due["t"].is_sorted():
                due = due.sort("t", maintain_order=True)
            if not self.config.include_event_ids:
                due = _without_same_content(due)
            fresh, counts[stream] = self._arrivals(stream, due, start, end)
            # Earlier windows' records first, then this window's in generation order:
            # a stable sort on arrival time keeps that order among equal arrivals.
            arrivals = Arrivals.concat(self.delayed[stream], fresh).sorted()
            cut = len(arrivals.arrival) if final else int(np.searchsorted(arrivals.arrival, end))
            now, self.delayed[stream] = arrivals.split(cut)
            records[stream] = now.payload
        return GeneratedEvents(from_ms(start), from_ms(end), records, counts)

    # Events ----------------------------------------------------------------------------
    def _events(self, start: int, end: int, n_events: int) -> dict[Stream, pl.DataFrame]:
        """New valid events of the window: impressions in it, and what they lead to."""
        w, c, rng = self.world, self.config, self.rng
        n = int(n_events / w.events_per_impression + 0.5)
        t = traffic_times(rng, start, end, n, self.curve)
        user = self._draw_users(n)
        ad = self._draw_ads(t)
        impressions = pl.DataFrame(
            {
                "t": t,
                "ad": ad.astype(np.int32),
                "user": user.astype(np.int32),
                # A user mostly uses one device and is mostly in their home city.
                "platform": mostly(rng, w.primary[user], 0.85, PLATFORM_CDF),
                "location": mostly(rng, w.home[user], 0.9, LOCATION_CDF),
            },
            schema=_ENGAGEMENT_SCHEMA,
        )

        clicked = rng.random(n) < w.ctr[ad]
        clicks = impressions.filter(pl.Series(clicked))
        delay = rng.lognormal(math.log(c.click_delay_median_seconds * SECOND), 0.8, clicks.height)
        delay = np.clip(delay, SECOND, 300 * SECOND).astype(np.int64)
        clicks = clicks.with_columns(t=pl.col("t") + pl.Series(delay))
        click_ad = clicks["ad"].to_numpy()
        click_user = clicks["user"].to_numpy()
        self._mark_clicked(click_user, click_ad)

        converts = rng.random(clicks.height) < w.cvr[click_ad]
        conv_ad, conv_user = click_ad[converts], click_user[converts]
        conv_t = clicks["t"].to_numpy()[converts] + self._conversion_delays(len(conv_ad))
        self.attributed_total += len(conv_ad)

        share = c.unattributed_share
        target = int(share / (1 - share) * self.attributed_total + 0.5)
        n_u = max(0, target - self.unattributed_total)
        self.unattributed_total += n_u
        u_t = traffic_times(rng, start, end, n_u, self.curve)
        u_user, u_ad = self._unclicked_pairs(u_t)

        ads = np.concatenate([conv_ad, u_ad]).astype(np.int64)
        conversions = self._conversion_frame(
            np.concatenate([conv_t, u_t]),
            ads,
            np.concatenate([conv_user, u_user]),
            np.concatenate([np.zeros(len(conv_ad), bool), np.ones(n_u, bool)]),
        )
        return {
            Stream.IMPRESSIONS: impressions,
            Stream.CLICKS: clicks,
            Stream.CONVERSIONS: conversions,
        }

    def _conversion_frame(
        self, t: np.ndarray, ad: np.ndarray, user: np.ndarray, unattributed: np.ndarray
    ) -> pl.DataFrame:
        w, rng = self.world, self.rng
        n = len(t)
        # Mostly the ad's featured product; sometimes something else from the shop.
        product = np.where(rng.random(n) < 0.8, w.featured[ad], rng.integers(0, PRODUCTS, n))
        quantity = draw(rng, cdf((0.85, 0.12, 0.03)), n) + 1
        return pl.DataFrame(
            {
                "t": t.astype(np.int64),
                "ad": ad.astype(np.int32),
                "user": user.astype(np.int32),
                "product": product.astype(np.int32),
                "cents": w.price_cents[product] * quantity,
                "unattributed": unattributed,
            },
            schema=_CONVERSION_SCHEMA,
        )

    def _draw_users(self, n: int) -> np.ndarray:
        w = self.world
        user = w.user_activity.draw(self.rng, n)
        unknown = self.rng.random(n) < self.config.unknown_user_share
        unknown_pool = len(w.user_id_text) - w.known_users
        user[unknown] = w.known_users + self.rng.integers(0, unknown_pool, int(unknown.sum()))
        return user

    def _draw_ads(self, t: np.ndarray) -> np.ndarray:
        """Ads by popularity among those in flight that day (all ads if none is).

        ``t`` must be sorted: each day is then one run of it.
        """
        w, rng = self.world, self.rng
        n = len(t)
        ad = np.empty(n, dtype=np.int64)
        if n:
            days = np.arange(t[0] // DAY_MS, t[-1] // DAY_MS + 1)
            bounds = np.searchsorted(t, np.append(days, days[-1] + 1) * DAY_MS).tolist()
            for i, day in enumerate(days.tolist()):
                lo, hi = bounds[i], bounds[i + 1]
                if hi > lo:
                    ad[lo:hi] = w.ads_in_flight(day).draw(rng, hi - lo)
        unknown = np.flatnonzero(rng.random(n) < self.config.unknown_ad_share)
        ad[unknown] = w.known_ads + rng.integers(0, len(w.ad_ids) - w.known_ads, len(unknown))
        return ad

    def _pair_keys(self, user: np.ndarray, ad: np.ndarray) -> np.ndarray:
        return user.astype(np.int64) * len(self.world.ad_ids) + ad.astype(np.int64)

    def _mark_clicked(self, user: np.ndarray, ad: np.ndarray) -> None:
        key = self._pair_keys(user, ad)
        np.bitwise_or.at(self.clicked, key >> 3, (1 << (key & 7)).astype(np.uint8))

    def _was_clicked(self, user: np.ndarray, ad: np.ndarray) -> np.ndarray:
        key = self._pair_keys(user, ad)
        return ((self.clicked[key >> 3] >> (key & 7)) & 1).astype(bool)

    def _unclicked_pairs(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A user and an ad per time, such that the user never clicked that ad."""
        user = self._draw_users(len(t))
        ad = self._draw_ads(t)
        for _ in range(1000):
            clash = np.flatnonzero(self._was_clicked(user, ad))
            if len(clash) == 0:
                break
            user[clash] = self._draw_users(len(clash))
            ad[clash] = self._draw_ads(t[clash])
        else:  # pragma: no cover - needs users who clicked nearly every ad
            raise RuntimeError("could not find unclicked (user, ad) pairs; add users or ads")
        return user, ad

    def _conversion_delays(self, n: int) -> np.ndarray:
        """Log-normal delays (minutes to days), redrawn above the cap: truncated, no spike."""
        c, rng = self.config, self.rng
        mu = math.log(c.conversion_delay_median_seconds * SECOND)
        cap = c.conversion_delay_max_seconds * SECOND
        delay = rng.lognormal(mu, c.conversion_delay_sigma, n)
        for _ in range(1000):
            over = np.flatnonzero(delay > cap)
            if len(over) == 0:
                break
            delay[over] = rng.lognormal(mu, c.conversion_delay_sigma, len(over))
        else:  # pragma: no cover - only with a cap far below the median
            delay = np.minimum(delay, cap)
        return np.maximum(delay, 60 * SECOND).astype(np.int64)

    # Records and faults -------------------------------------------------------------------
    def _arrivals(
        self, stream: Stream, due: pl.DataFrame, start: int, end: int
    ) -> tuple[Arrivals, StreamCounts]:
        """Render the due events and inject faults; records in generation order."""
        c, rng = self.config, self.rng
        n = due.height
        before, after = self.valid_total[stream], self.valid_total[stream] + n
        self.valid_total[stream] = after
        seq = self.seq[stream]
        payload = self._render(stream, due, seq).to_list()
        seq += n

        def quota(fault: str, rate: float) -> int:
            # Cumulative rounding: totals stay exact however a run is split in windows.
            quota = _share(rate, after) - _share(rate, before)
            self.fault_total[stream, fault] += quota
            return quota

        n_late = quota("late", c.late_rate)
        n_ooo = min(quota("out_of_order", c.out_of_order_rate), n - n_late)
        n_dup = min(quota("duplicates", c.duplicate_rate), n)
        n_bad = quota("malformed", c.malformed_rate)

        # Displaced records arrive when their stream is that much further in event time.
        arrival = due["t"].to_numpy().copy()
        moved = rng.choice(n, n_late + n_ooo, replace=False) if n_late + n_ooo else EMPTY
        ooo_max = int(c.out_of_order_max_seconds * SECOND)
        late_max = int(c.late_max_seconds * SECOND)
        arrival[moved[:n_late]] += rng.integers(ooo_max + 1, late_max + 1, n_late)
        arrival[moved[n_late:]] += rng.integers(min(SECOND, ooo_max), ooo_max + 1, n_ooo)
        parts = [Arrivals(arrival, payload)]

        if n_dup:
            source = rng.choice(n, n_dup, replace=False)
            lag = rng.integers(1, int(c.duplicate_max_delay_seconds * SECOND) + 2, n_dup)
            # A re-send: the same bytes, so the same event id.
            parts.append(Arrivals(arrival[source] + lag, [payload[i] for i in source.tolist()]))

        malformed: dict[MalformedKind, int] = {}
        if n_bad:
            kinds = malformed_kinds(stream)
            first = self.fault_total[stream, "malformed"] - n_bad
            bases = [payload[i] for i in rng.integers(0, n, n_bad).tolist()]
            bad: list[bytes] = []
            for i, base in enumerate(bases):
                kind = kinds[(first + i) % len(kinds)]
                malformed[kind] = malformed.get(kind, 0) + 1
                variant = self.variant[stream, kind]
                self.variant[stream, kind] += 1
                event_id = f"{self.namespace}-{_ID_LETTER[stream]}{seq + i}"
                bad.append(
                    malformed_record(
                        kind,
                        variant,
                        stream,
                        base,
                        event_id if c.include_event_ids else None,
                        c.oversized_payload_bytes,
                    )
                )
            arrive = rng.integers(start, end, n_bad)
            parts.append(Arrivals(arrive, bad))
            seq += n_bad
        self.seq[stream] = seq
        unattributed = int(due["unattributed"].sum()) if stream is Stream.CONVERSIONS else 0
        counts = StreamCounts(n, n_dup, n_ooo, n_late, malformed, unattributed)
        return Arrivals.concat(*parts), counts

    def _render(self, stream: Stream, due: pl.DataFrame, seq0: int) -> pl.Series:
        """The JSON text of each event (the original's layout), built column-wise."""
        c, w, rng = self.config, self.world, self.rng
        n = due.height
        t = due["t"].to_numpy()
        timestamp = _format_seconds(t)
        iso = np.flatnonzero(rng.random(n) < c.iso_timestamp_rate)
        if len(iso):
            offset = rng.integers(0, len(ISO_OFFSETS), len(iso))
            minutes = np.array([m for _, m in ISO_OFFSETS], dtype=np.int64)[offset]
            suffix = pl.Series([o for o, _ in ISO_OFFSETS]).gather(offset)
            local = pl.from_epoch(pl.lit(pl.Series(t[iso] + minutes * 60_000)), time_unit="ms")
            iso_text = pl.select(
                pl.format("{}{}", local.dt.strftime("%Y-%m-%dT%H:%M:%S"), pl.lit(suffix))
            ).to_series()
            timestamp = timestamp.scatter(iso, iso_text)
        columns = {
            "ad_id": w.ad_id_text.gather(due["ad"]),
            "user_id": w.user_id_text.gather(due["user"]),
            "ts": timestamp,
        }
        if stream is Stream.CONVERSIONS:
            cents = due["cents"]
            columns["product_id"] = _PRODUCT_TEXT.gather(due["product"])
            columns["dollars"] = (cents // 100).cast(pl.String)
            columns["cents"] = (cents % 100).cast(pl.String).str.zfill(2)
            tail = '", "product_id": "{}", "revenue": {}.{}}}'
        else:
            # One lookup for the constant-shaped tail (platform x location): fewer pieces
            # to concatenate per record.
            combo = due["platform"].cast(pl.Int32) * len(LOCATIONS) + due["location"]
            columns["tail"] = _ENGAGEMENT_TAILS.gather(combo)
            tail = "{}"
        head = '{{"ad_id": {}, "user_id": "{}", "' + stream.timestamp_field + '": "{}'
        args: list[pl.Expr | str] = list(columns)
        if c.include_event_ids:
            head = (
                '{{"event_id": "' + self.namespace + "-" + _ID_LETTER[stream] + '{}", ' + head[2:]
            )
            args.insert(0, pl.int_range(seq0, seq0 + n, dtype=pl.Int64))
        text = pl.DataFrame(columns).select(pl.format(head + tail, *args).alias("payload"))
        return text.to_series().cast(pl.Binary)


def _format_seconds(t: np.ndarray) -> pl.Series:
    """``YYYY-MM-DD HH:MM:SS`` of each time (ms); each distinct second formatted once."""
    if len(t) == 0:
        return pl.Series(dtype=pl.String)
    second = t // SECOND
    change = np.empty(len(t), dtype=bool)
    change[0] = True
    np.not_equal(second[1:], second[:-1], out=change[1:])
    distinct = pl.Series(second[change] * SECOND)
    text = pl.select(
        pl.from_epoch(pl.lit(distinct), time_unit="ms").dt.strftime("%Y-%m-%d %H:%M:%S")
    ).to_series()
    return text.gather(np.cumsum(change) - 1)


def _without_same_content(due: pl.DataFrame) -> pl.DataFrame:
    """Drop events identical in content to an earlier one (same second, user, ad...).

    Without event ids the pipeline derives ids from the content, so two such events
    would be one; dropping them keeps "duplicate" meaning exactly the injected re-sends.
    """
    keys = [c for c in due.columns if c not in ("t", "unattributed")]
    return (
        due.with_columns(_second=pl.col("t") // SECOND)
        .unique(subset=["_second", *keys], keep="first", maintain_order=True)
        .drop("_second")
    )


def _share(rate: float, n: int) -> int:
    """``rate * n`` to the nearest integer, halves up."""
    return int(math.floor(rate * n + 0.5))
