"""A realistic, deterministic, vectorized generator of ad events and dimensions.

It plays the original's mock Lambda producers, with the faults real streams have:

- dimensions: dozens of campaigns with flights, hundreds of ads, thousands of users
  (the original's sample ads 1001-1003 and users U1234, U5678, U9101 always included,
  with their exact sample values);
- events: Zipf-like ad popularity, skewed user activity, a US city and platform mix, a
  daily traffic curve; a click follows an impression of the same user and ad seconds
  later; a conversion follows a real click of the same user and ad after a heavy-tailed
  delay (minutes to days), plus a share of conversions without any click (unattributed);
- faults, each at an exact rate: re-sent duplicates, out-of-order and late arrival,
  malformed records of many kinds, ISO-8601 timestamps with an offset.

Everything is NumPy/Polars over whole columns: the JSON text of the records is built
by string-concatenation expressions, never by a per-record ``json.dumps`` (only the few
malformed records are built one by one).

Two ways to use it, both deterministic for a given seed and call sequence:
:meth:`EventGenerator.generate` (a bounded data set over ``[start, end)``) and
:meth:`EventGenerator.stream_chunk` (consecutive windows for a live feed; the ``feed``
number picks one of the seed's feeds, each with event ids of its own).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import numpy as np
import orjson
import polars as pl

from adpulse.contracts import Reason, Stream

# --- Catalogs ----------------------------------------------------------------------------

PLATFORMS: Final = ("Web", "Mobile", "Tablet")
_PLATFORM_MIX: Final = (0.40, 0.50, 0.10)

#: Twenty US cities; weights roughly follow metro population.
LOCATIONS: Final = (
    "New York",
    "Los Angeles",
    "Chicago",
    "Houston",
    "Phoenix",
    "Philadelphia",
    "San Antonio",
    "San Diego",
    "Dallas",
    "San Jose",
    "Austin",
    "Jacksonville",
    "San Francisco",
    "Columbus",
    "Seattle",
    "Denver",
    "Boston",
    "Miami",
    "Atlanta",
    "Portland",
)
_LOCATION_WEIGHTS: Final = (
    19.5, 13.0, 9.4, 7.1, 4.9, 6.2, 2.6, 3.3, 7.6, 2.0,
    2.3, 1.6, 4.7, 2.1, 4.0, 3.0, 4.9, 6.1, 6.1, 2.5,
)  # fmt: skip

INTERESTS: Final = (
    "Music",
    "Travel",
    "Reading",
    "Photography",
    "Gaming",
    "Cooking",
    "Sports",
    "Fitness",
    "Fashion",
    "Technology",
    "Movies",
    "Outdoors",
    "Art",
    "Finance",
    "Pets",
)
_INTEREST_WEIGHTS: Final = (
    1.6, 1.4, 1.0, 0.7, 1.2, 1.1, 1.3, 1.1, 0.9, 1.2, 1.3, 0.8, 0.6, 0.5, 0.9,
)  # fmt: skip

GENDERS: Final = ("Male", "Female", "Non-binary")
_GENDER_MIX: Final = (0.485, 0.485, 0.03)

#: Campaign names and the products their ads advertise (no commas: the CSV is unquoted).
_CAMPAIGN_THEMES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("Back-to-School", ("Laptop", "Backpack", "Tablet", "Headphones")),
    ("Summer Sale", ("Smartphone", "Sunglasses", "Sandals", "Swimwear")),
    ("Fall Fashion", ("Jacket", "Boots", "Sweater", "Scarf")),
    ("Holiday Gifts", ("Smartwatch", "Perfume", "Board Game", "Gift Card")),
    ("Black Friday Deals", ("Television", "Laptop", "Game Console", "Soundbar")),
    ("Cyber Monday", ("Smartphone", "Headphones", "Tablet", "E-Reader")),
    ("Spring Refresh", ("Sneakers", "Dress", "Bedding", "Plant Kit")),
    ("New Year Fitness", ("Running Shoes", "Fitness Tracker", "Yoga Mat", "Protein Powder")),
    ("Valentine's Day", ("Jewelry", "Chocolate Box", "Flowers", "Perfume")),
    ("Mother's Day", ("Handbag", "Spa Set", "Flowers", "Jewelry")),
    ("Father's Day", ("Grill", "Watch", "Power Drill", "Golf Set")),
    ("Home Makeover", ("Sofa", "Floor Lamp", "Rug", "Coffee Maker")),
    ("Outdoor Adventure", ("Tent", "Hiking Boots", "Backpack", "Kayak")),
    ("Tech Launch", ("Smartphone", "Wireless Earbuds", "Smart Speaker", "Tablet")),
    ("Winter Warmers", ("Coat", "Gloves", "Space Heater", "Blanket")),
    ("Game Day", ("Television", "Jersey", "Snack Box", "Soundbar")),
    ("Travel Season", ("Suitcase", "Travel Pillow", "Camera", "Sunglasses")),
    ("Beauty Week", ("Skincare Set", "Lipstick", "Hair Dryer", "Perfume")),
    ("Kitchen Essentials", ("Blender", "Cookware Set", "Knife Set", "Coffee Maker")),
    ("Pet Lovers", ("Dog Bed", "Cat Tree", "Pet Food", "Leash")),
    ("Kids Playtime", ("Toy Robot", "Building Blocks", "Scooter", "Puzzle")),
    ("Music Fest", ("Headphones", "Bluetooth Speaker", "Guitar", "Turntable")),
    ("Smart Home", ("Smart Thermostat", "Video Doorbell", "Robot Vacuum", "Smart Bulb")),
    ("Weekend Flash Sale", ("Sneakers", "Smartwatch", "Jacket", "Headphones")),
    ("Labor Day Sale", ("Mattress", "Grill", "Television", "Sofa")),
    ("Memorial Day Sale", ("Mattress", "Patio Set", "Grill", "Cooler")),
    ("Graduation Gifts", ("Laptop", "Watch", "Camera", "Backpack")),
    ("Wedding Season", ("Dress", "Suit", "Jewelry", "Cookware Set")),
    ("Book Lovers", ("E-Reader", "Bestseller Bundle", "Reading Lamp", "Bookshelf")),
    ("Gamer Zone", ("Game Console", "Gaming Chair", "Gaming Headset", "Controller")),
    ("Coffee Lovers", ("Espresso Machine", "Coffee Grinder", "Coffee Beans", "Mug Set")),
    ("Eco Living", ("Solar Charger", "Reusable Bottle", "Compost Bin", "E-Bike")),
    ("Back to Work", ("Office Chair", "Monitor", "Laptop Bag", "Desk Lamp")),
    ("Cozy Nights", ("Blanket", "Candle Set", "Slippers", "Tea Sampler")),
    ("Festival Fashion", ("Sunglasses", "Boots", "Hat", "Dress")),
    ("Anniversary Sale", ("Jewelry", "Watch", "Perfume", "Handbag")),
    ("Clearance Event", ("Jacket", "Sneakers", "Headphones", "Rug")),
    ("Road Trip", ("Dash Cam", "Cooler", "Car Charger", "Travel Pillow")),
    ("Healthy Habits", ("Fitness Tracker", "Blender", "Yoga Mat", "Water Filter")),
    ("Creator Studio", ("Camera", "Microphone", "Ring Light", "Tripod")),
)

#: The original's sample dimension rows, always present with exactly these values.
SAMPLE_ADS: Final = (
    (1001, "Back-to-School", "Laptop", date(2023, 8, 1), date(2023, 10, 31)),
    (1002, "Summer Sale", "Smartphone", date(2023, 7, 15), date(2023, 9, 15)),
    (1003, "Fall Fashion", "Jacket", date(2023, 9, 1), date(2023, 11, 30)),
)
SAMPLE_USERS: Final = (
    ("U1234", 22, "Male", "Music;Travel", "New York", "Web"),
    ("U5678", 30, "Female", "Reading;Photography", "Los Angeles", "Mobile"),
    ("U9101", 27, "Male", "Gaming;Cooking", "San Francisco", "Tablet"),
)

_FIRST_AD_ID: Final = 1001
_FIRST_USER_NO: Final = 1000
#: Product ids P501.. (the original's ``P501`` is ad 1001's featured product).
_FIRST_PRODUCT_NO: Final = 501
_PRODUCTS: Final = 200
#: Unknown ids (absent from the dimensions) drawn from small pools, as real strays are.
_UNKNOWN_ADS: Final = 20

#: Share of traffic per UTC hour: US evenings (00-04 UTC) peak, US nights are quiet.
_DIURNAL: Final = np.array(
    [1.45, 1.40, 1.30, 1.15, 0.95, 0.75, 0.55, 0.45, 0.40, 0.40, 0.45, 0.55,
     0.70, 0.85, 0.95, 1.00, 1.05, 1.10, 1.10, 1.15, 1.20, 1.25, 1.30, 1.40],
    dtype=np.float64,
)  # fmt: skip

#: ISO-8601 offsets used by the share of records that are not in the original format.
_ISO_OFFSETS: Final = (
    ("+00:00", 0),
    ("-04:00", -240),
    ("-05:00", -300),
    ("-07:00", -420),
    ("+02:00", 120),
    ("+05:30", 330),
)

_PLATFORM_CDF: Final = np.cumsum(_PLATFORM_MIX) / np.sum(_PLATFORM_MIX)
_LOCATION_CDF: Final = np.cumsum(_LOCATION_WEIGHTS) / np.sum(_LOCATION_WEIGHTS)
_ENGAGEMENT_TAILS: Final = pl.Series(
    [f'", "platform": "{p}", "location": "{c}"}}' for p in PLATFORMS for c in LOCATIONS]
)
_PRODUCT_TEXT: Final = pl.Series([f"P{_FIRST_PRODUCT_NO + i}" for i in range(_PRODUCTS)])
_NONE: Final = np.zeros(0, dtype=np.int64)
_SECOND: Final = 1000
_HOUR_MS: Final = 3_600_000
_DAY_MS: Final = 86_400_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: Bounded data sets are generated in windows of at most this many events (memory).
MAX_WINDOW_EVENTS = 1_000_000


# --- Public types ------------------------------------------------------------------------


class MalformedKind(StrEnum):
    """A kind of malformed record the generator injects (see :data:`EXPECTED_REASON`)."""

    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NEGATIVE_REVENUE = "negative_revenue"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    EMPTY_PAYLOAD = "empty_payload"
    NOT_AN_OBJECT = "not_an_object"
    EMBEDDED_NEWLINE = "embedded_newline"
    OVERSIZED = "oversized"

    @property
    def expected_reason(self) -> Reason:
        """The dead-letter reason the pipeline must give a record of this kind."""
        return EXPECTED_REASON[self]


EXPECTED_REASON: Final[Mapping[MalformedKind, Reason]] = {
    MalformedKind.INVALID_JSON: Reason.INVALID_JSON,
    MalformedKind.INVALID_UTF8: Reason.INVALID_UTF8,
    MalformedKind.MISSING_FIELD: Reason.MISSING_FIELD,
    MalformedKind.WRONG_TYPE: Reason.WRONG_TYPE,
    MalformedKind.NEGATIVE_REVENUE: Reason.NEGATIVE_REVENUE,
    MalformedKind.BAD_TIMESTAMP: Reason.BAD_TIMESTAMP,
    MalformedKind.FUTURE_TIMESTAMP: Reason.FUTURE_TIMESTAMP,
    MalformedKind.EMPTY_PAYLOAD: Reason.EMPTY_PAYLOAD,
    MalformedKind.NOT_AN_OBJECT: Reason.NOT_AN_OBJECT,
    # A raw newline inside a JSON string is a control character: invalid JSON. In a
    # .jsonl file it splits the record into two lines, both invalid JSON.
    MalformedKind.EMBEDDED_NEWLINE: Reason.INVALID_JSON,
    MalformedKind.OVERSIZED: Reason.PAYLOAD_TOO_LARGE,
}


def malformed_kinds(stream: Stream) -> tuple[MalformedKind, ...]:
    """The malformed kinds injected into ``stream``, in the order they are cycled."""
    if stream is Stream.CONVERSIONS:
        return tuple(MalformedKind)
    return tuple(k for k in MalformedKind if k is not MalformedKind.NEGATIVE_REVENUE)


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    """Knobs of :class:`EventGenerator`. Rates and shares are fractions in ``[0, 1]``.

    Fault counts are exact: over a run, a stream with ``n`` valid events gets
    ``floor(rate * n + 0.5)`` records of each fault (kept exact across windows).
    """

    seed: int = 7
    ads: int = 300
    campaigns: int = 30
    users: int = 20_000

    # Realism.
    ctr_mean: float = 0.025
    """Mean click-through rate of an ad; each ad's CTR is Beta-distributed around it."""
    ctr_concentration: float = 120.0
    """Beta concentration of per-ad CTRs (higher: ads closer to the mean)."""
    conversion_rate_min: float = 0.05
    conversion_rate_max: float = 0.15
    """Each ad converts a uniform share of its clicks in this range."""
    unattributed_share: float = 0.03
    """Share of conversions with no click of the same user on the same ad."""
    unknown_ad_share: float = 0.005
    unknown_user_share: float = 0.005
    ad_popularity_exponent: float = 1.0
    """Zipf exponent of ad popularity."""
    user_activity_sigma: float = 1.2
    """Log-normal sigma of per-user activity (0: every user equally active)."""
    click_delay_median_seconds: float = 4.0
    conversion_delay_median_seconds: float = 1_800.0
    conversion_delay_sigma: float = 2.0
    conversion_delay_max_seconds: float = 6.5 * 86_400
    """Conversion delays are log-normal, truncated here (below the 7-day lookback)."""
    flights_start: date = date(2023, 7, 1)
    flights_end: date = date(2023, 12, 31)
    """Campaign flights fall in this range. Ads only get traffic during their flight
    on days when some flight is running; on other days flights are ignored."""

    # Faults.
    duplicate_rate: float = 0.01
    duplicate_max_delay_seconds: float = 5.0
    """A duplicate (exact re-sent bytes) arrives up to this long after its original."""
    out_of_order_rate: float = 0.02
    out_of_order_max_seconds: float = 30.0
    late_rate: float = 0.002
    late_max_seconds: float = 540.0
    """A late record arrives when its stream's newest event is more than
    ``out_of_order_max_seconds`` and up to this much ahead of it; the default stays
    below the pipeline's allowed lateness (600 s)."""
    malformed_rate: float = 0.001
    oversized_payload_bytes: int = 70_000
    """Exact size of the oversized malformed records (the record limit is 64 KiB)."""
    iso_timestamp_rate: float = 0.05
    include_event_ids: bool = True

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.users < len(SAMPLE_USERS):
            raise ValueError(f"users must be at least {len(SAMPLE_USERS)}, got {self.users}")
        if not len(SAMPLE_ADS) <= self.campaigns <= self.ads:
            raise ValueError(
                f"need {len(SAMPLE_ADS)} <= campaigns <= ads, got campaigns={self.campaigns} "
                f"ads={self.ads}"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_rate", "_share")) and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must be within [0, 1], got {value}")
            if f.name.endswith("_seconds") and value < 0:
                raise ValueError(f"{f.name} must be >= 0, got {value}")
        if self.unattributed_share >= 1.0:
            raise ValueError("unattributed_share must be below 1")
        if self.late_rate + self.out_of_order_rate > 1.0:
            raise ValueError(
                "late_rate + out_of_order_rate must not exceed 1 (a record is displaced once)"
            )
        if self.late_rate > 0 and self.late_max_seconds <= self.out_of_order_max_seconds:
            raise ValueError(
                f"late_max_seconds ({self.late_max_seconds}) must exceed "
                f"out_of_order_max_seconds ({self.out_of_order_max_seconds})"
            )
        if not 0 < self.ctr_mean < 1 or self.ctr_concentration <= 0:
            raise ValueError("ctr_mean must be within (0, 1) and ctr_concentration > 0")
        if self.conversion_rate_min > self.conversion_rate_max:
            raise ValueError("conversion_rate_min must not exceed conversion_rate_max")
        if self.flights_end < self.flights_start:
            raise ValueError("flights_end must not be before flights_start")

    def without_faults(self) -> GeneratorConfig:
        """The same world and traffic with every fault rate at 0 (clean data)."""
        return replace(
            self,
            duplicate_rate=0.0,
            out_of_order_rate=0.0,
            late_rate=0.0,
            malformed_rate=0.0,
        )


@dataclass(frozen=True, slots=True)
class StreamCounts:
    """What was generated for one stream (over a data set, or in one streaming window).

    ``events`` counts distinct valid events; the records are those plus ``duplicates``
    plus the malformed ones. ``out_of_order`` and ``late`` count valid events displaced
    in arrival order. ``unattributed`` (conversions only) counts the valid conversions
    that have no click of the same user on the same ad before them.
    """

    events: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    late: int = 0
    malformed: Mapping[MalformedKind, int] = field(default_factory=dict)
    unattributed: int = 0

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    @property
    def records(self) -> int:
        """Records (payloads) these counts stand for: events + duplicates + malformed."""
        return self.events + self.duplicates + self.malformed_total

    def __add__(self, other: StreamCounts) -> StreamCounts:
        kinds = {**self.malformed}
        for kind, n in other.malformed.items():
            kinds[kind] = kinds.get(kind, 0) + n
        return StreamCounts(
            events=self.events + other.events,
            duplicates=self.duplicates + other.duplicates,
            out_of_order=self.out_of_order + other.out_of_order,
            late=self.late + other.late,
            malformed=kinds,
            unattributed=self.unattributed + other.unattributed,
        )


@dataclass(frozen=True, slots=True)
class GeneratedEvents:
    """Records per stream, as raw payloads in arrival order, with what was injected.

    For :meth:`EventGenerator.generate`, ``counts[s].records == len(records[s])``.
    For one :meth:`EventGenerator.stream_chunk` window, ``counts`` describe what was
    generated in the window, while ``records`` hold what *arrives* in it (displaced and
    duplicated records may arrive in a later window).
    """

    start: datetime
    end: datetime
    records: dict[Stream, list[bytes]]
    counts: dict[Stream, StreamCounts]

    @property
    def total_records(self) -> int:
        return sum(len(r) for r in self.records.values())

    @classmethod
    def concat(cls, parts: Iterable[GeneratedEvents]) -> GeneratedEvents:
        """Consecutive parts as one (records appended in order, counts summed)."""
        parts = list(parts)
        if not parts:
            raise ValueError("concat() needs at least one part")
        records: dict[Stream, list[bytes]] = {s: [] for s in Stream}
        counts = {s: StreamCounts() for s in Stream}
        for part in parts:
            for s in Stream:
                records[s].extend(part.records[s])
                counts[s] = counts[s] + part.counts[s]
        return cls(parts[0].start, parts[-1].end, records, counts)


# --- The generator -------------------------------------------------------------------------


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
        self._world = _World.build(self.config)
        self._live: _Session | None = None

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
        start_ms, end_ms = _to_ms(start), _to_ms(end)
        if end_ms <= start_ms:
            raise ValueError(f"end ({end}) must be after start ({start})")
        if n_events < 0:
            raise ValueError(f"n_events must be >= 0, got {n_events}")
        # Seeded by the arguments too: different ranges give different events (and ids).
        key = [self.config.seed, 1, start_ms % 2**64, end_ms % 2**64, n_events]
        rng = np.random.default_rng(key)
        session = _Session(self._world, self.config, rng)
        windows = max(1, math.ceil(n_events / MAX_WINDOW_EVENTS))
        bounds = [start_ms + (end_ms - start_ms) * i // windows for i in range(windows + 1)]
        # Events per window follow the traffic curve, summing exactly to n_events.
        mass = np.cumsum(
            [0.0] + [_traffic_mass(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
        )
        cum = np.floor(n_events * mass / mass[-1] + 0.5).astype(np.int64)
        for i in range(windows):
            last = i == windows - 1
            yield session.window(bounds[i], bounds[i + 1], int(cum[i + 1] - cum[i]), last)

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
        start_ms, end_ms = _to_ms(start), _to_ms(end)
        if end_ms <= start_ms:
            raise ValueError(f"end ({end}) must be after start ({start})")
        if self._live is None:
            # Feed 0 keeps the key it always had: its bytes stay reproducible.
            key = [self.config.seed, 2] + ([self.feed] if self.feed else [])
            self._live = _Session(self._world, self.config, np.random.default_rng(key))
        previous = self._live.last_end
        if previous is not None and start_ms < previous:
            raise ValueError(
                f"stream_chunk windows must not overlap: start {start} is before the "
                f"previous window's end {_from_ms(previous)}; call reset_stream() to restart"
            )
        return self._live.window(start_ms, end_ms, n_events, final=final)

    def reset_stream(self) -> None:
        """Forget the live feed's state: the next :meth:`stream_chunk` starts afresh."""
        self._live = None


# --- Dimensions (the world) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _World:
    """Static tables drawn once from the seed; events index into them."""

    ad_ids: np.ndarray  # known ads, then unknown ones
    known_ads: int
    ad_weights: np.ndarray  # popularity of known ads
    flight_start_day: np.ndarray  # days since epoch, known ads
    flight_end_day: np.ndarray
    ctr: np.ndarray  # all ads
    cvr: np.ndarray
    featured: np.ndarray  # product index per ad
    ad_id_text: pl.Series  # ad_id of each ad, as JSON text
    user_id_text: pl.Series  # user_id of each user (known, then unknown ones)
    known_users: int
    user_activity: _Alias
    home: np.ndarray  # location index per user
    primary: np.ndarray  # platform index per user
    price_cents: np.ndarray  # per product
    events_per_impression: float
    campaigns: pl.DataFrame
    users: pl.DataFrame
    _in_flight: dict[bytes, _Alias] = field(default_factory=dict)

    def ads_in_flight(self, day: int) -> _Alias:
        """Draws of known ads by popularity among those in flight on ``day``, if any."""
        live = (self.flight_start_day <= day) & (day <= self.flight_end_day)
        if not live.any():
            live[:] = True
        key = live.tobytes()  # flights change rarely: few distinct tables
        table = self._in_flight.get(key)
        if table is None:
            table = self._in_flight[key] = _Alias.build(self.ad_weights * live)
        return table

    @classmethod
    def build(cls, config: GeneratorConfig) -> _World:
        rng = np.random.default_rng([config.seed, 0])
        campaigns = _campaigns(rng, config)
        users, home, primary = _users(rng, config)
        n_ads = config.ads

        rank = rng.permutation(n_ads) + 1
        ad_weights = rank.astype(np.float64) ** -config.ad_popularity_exponent
        a = config.ctr_mean * config.ctr_concentration
        b = (1 - config.ctr_mean) * config.ctr_concentration
        ctr = rng.beta(a, b, n_ads + _UNKNOWN_ADS)
        ctr[n_ads:] = config.ctr_mean
        cvr = rng.uniform(config.conversion_rate_min, config.conversion_rate_max, n_ads)
        cvr = np.concatenate([cvr, np.full(_UNKNOWN_ADS, cvr.mean())])
        featured = np.concatenate(
            [np.arange(n_ads) % _PRODUCTS, rng.integers(0, _PRODUCTS, _UNKNOWN_ADS)]
        )
        last_ad = _FIRST_AD_ID + n_ads - 1
        unknown_base = 10 ** len(str(last_ad)) + 1
        ad_ids = np.concatenate(
            [np.arange(_FIRST_AD_ID, last_ad + 1), unknown_base + np.arange(_UNKNOWN_ADS)]
        )

        user_nos = users["user_id"].str.slice(1).cast(pl.Int64).to_numpy()
        n_unknown_users = max(10, config.users // 200)
        unknown_base = 10 ** len(str(int(user_nos.max())))
        user_nos = np.concatenate([user_nos, unknown_base + np.arange(n_unknown_users)])
        activity = rng.lognormal(0.0, config.user_activity_sigma, config.users)
        home = np.concatenate([home, _draw(rng, _cdf(_LOCATION_WEIGHTS), n_unknown_users)]).astype(
            np.uint8
        )
        primary = np.concatenate(
            [primary, _draw(rng, _cdf(_PLATFORM_MIX), n_unknown_users)]
        ).astype(np.uint8)

        # Prices: log-normal around $40, to the cent, at least $4.99.
        price = np.maximum(np.round(rng.lognormal(math.log(40.0), 0.7, _PRODUCTS), 2), 4.99)
        price_cents = np.round(price * 100).astype(np.int64)

        flights = campaigns.select(
            pl.col("target_start_date").cast(pl.Int64).alias("s"),
            pl.col("target_end_date").cast(pl.Int64).alias("e"),
        )
        weights = ad_weights / ad_weights.sum()
        known = 1 - config.unknown_ad_share
        mean_ctr = known * float(weights @ ctr[:n_ads]) + (1 - known) * config.ctr_mean
        mean_cvr = known * float(weights @ cvr[:n_ads]) + (1 - known) * float(cvr[n_ads:].mean())
        conversions_per_click = mean_cvr / (1 - config.unattributed_share)
        return cls(
            ad_ids=ad_ids.astype(np.int64),
            known_ads=n_ads,
            ad_weights=ad_weights,
            flight_start_day=flights["s"].to_numpy(),
            flight_end_day=flights["e"].to_numpy(),
            ctr=ctr,
            cvr=cvr,
            featured=featured.astype(np.int64),
            ad_id_text=pl.Series(ad_ids).cast(pl.String),
            user_id_text=pl.Series([f"U{u}" for u in user_nos.tolist()]),
            known_users=config.users,
            user_activity=_Alias.build(activity),
            home=home,
            primary=primary,
            price_cents=price_cents,
            events_per_impression=1.0 + mean_ctr * (1.0 + conversions_per_click),
            campaigns=campaigns,
            users=users,
        )


def _campaigns(rng: np.random.Generator, config: GeneratorConfig) -> pl.DataFrame:
    n_campaigns, n_ads = config.campaigns, config.ads
    themes = [_CAMPAIGN_THEMES[i % len(_CAMPAIGN_THEMES)] for i in range(n_campaigns)]
    names = [
        name if i < len(_CAMPAIGN_THEMES) else f"{name} {i // len(_CAMPAIGN_THEMES) + 1}"
        for i, (name, _) in enumerate(themes)
    ]
    # Flights of 3 to 12 weeks within the configured range.
    lo = (config.flights_start - date(1970, 1, 1)).days
    hi = (config.flights_end - date(1970, 1, 1)).days
    length = np.minimum(rng.integers(21, 85, n_campaigns), hi - lo)
    starts = lo + (rng.random(n_campaigns) * (hi - lo - length + 1)).astype(np.int64)
    ends = starts + length
    for i, (_, name, _, s, e) in enumerate(SAMPLE_ADS):
        assert names[i] == name  # the first themes are the original's campaigns
        starts[i] = (s - date(1970, 1, 1)).days
        ends[i] = (e - date(1970, 1, 1)).days

    # Every campaign gets one ad (the first ones are 1001-1003), the rest by size.
    size = rng.gamma(1.5, 1.0, n_campaigns)
    extra = _draw(rng, _cdf(size), n_ads - n_campaigns)
    ad_campaign = np.concatenate([np.arange(n_campaigns), extra])
    pick = rng.integers(0, 4, n_ads)
    pick[:n_campaigns] = 0  # the original's products are their campaign's first
    products = [themes[c][1][p] for c, p in zip(ad_campaign.tolist(), pick.tolist(), strict=True)]
    frame = pl.DataFrame(
        {
            "ad_id": np.arange(_FIRST_AD_ID, _FIRST_AD_ID + n_ads, dtype=np.int64),
            "campaign": [names[c] for c in ad_campaign.tolist()],
            "product": products,
            "target_start_date": starts[ad_campaign].astype(np.int32),
            "target_end_date": ends[ad_campaign].astype(np.int32),
        }
    ).with_columns(pl.col("target_start_date", "target_end_date").cast(pl.Date))
    return frame


def _users(
    rng: np.random.Generator, config: GeneratorConfig
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    n = config.users
    sample_nos = [int(u[0][1:]) for u in SAMPLE_USERS]
    candidates = np.arange(_FIRST_USER_NO, _FIRST_USER_NO + n + len(sample_nos))
    others = candidates[~np.isin(candidates, sample_nos)][: n - len(sample_nos)]
    nos = np.sort(np.concatenate([others, sample_nos]))
    ages = np.clip(np.round(rng.normal(36, 13, n)), 13, 85).astype(np.int64)
    genders = _draw(rng, _cdf(_GENDER_MIX), n)
    # 1-4 distinct interests per user, weighted (Efraimidis-Spirakis keys, vectorized).
    how_many = rng.integers(1, 5, n)
    keys = rng.random((n, len(INTERESTS))) ** (1.0 / np.asarray(_INTEREST_WEIGHTS))
    order = np.argsort(-keys, axis=1)[:, :4]
    home = _draw(rng, _cdf(_LOCATION_WEIGHTS), n)
    primary = _draw(rng, _cdf(_PLATFORM_MIX), n)
    interest_names = pl.Series(INTERESTS)
    columns = {
        f"i{j}": pl.Series(interest_names.gather(order[:, j])).set(pl.Series(how_many <= j), None)
        for j in range(4)
    }
    frame = pl.DataFrame(
        {
            "user_id": [f"U{u}" for u in nos.tolist()],
            "age": ages,
            "gender": pl.Series(GENDERS).gather(genders),
            **columns,
        }
    ).select(
        "user_id",
        "age",
        "gender",
        interests=pl.concat_str([f"i{j}" for j in range(4)], separator=";", ignore_nulls=True),
    )
    # The original's sample users keep their exact values (and their city and device).
    for user_id, age, gender, interests, city, device in SAMPLE_USERS:
        i = int(np.searchsorted(nos, int(user_id[1:])))
        frame[i, "age"] = age
        frame[i, "gender"] = gender
        frame[i, "interests"] = interests
        home[i] = LOCATIONS.index(city)
        primary[i] = PLATFORMS.index(device)
    return frame, home, primary


# --- One generation session (a bounded data set, or the live feed) ------------------------


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


class _Session:
    """Generation state: future events, delayed records, running fault counts."""

    def __init__(self, world: _World, config: GeneratorConfig, rng: np.random.Generator) -> None:
        self.world = world
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
        self.delayed = {s: _Arrivals.empty() for s in Stream}
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
            arrivals = _Arrivals.concat(self.delayed[stream], fresh).sorted()
            cut = len(arrivals.arrival) if final else int(np.searchsorted(arrivals.arrival, end))
            now, self.delayed[stream] = arrivals.split(cut)
            records[stream] = now.payload
        return GeneratedEvents(_from_ms(start), _from_ms(end), records, counts)

    # Events ----------------------------------------------------------------------------
    def _events(self, start: int, end: int, n_events: int) -> dict[Stream, pl.DataFrame]:
        """New valid events of the window: impressions in it, and what they lead to."""
        w, c, rng = self.world, self.config, self.rng
        n = int(n_events / w.events_per_impression + 0.5)
        t = _traffic_times(rng, start, end, n)
        user = self._draw_users(n)
        ad = self._draw_ads(t)
        impressions = pl.DataFrame(
            {
                "t": t,
                "ad": ad.astype(np.int32),
                "user": user.astype(np.int32),
                # A user mostly uses one device and is mostly in their home city.
                "platform": _mostly(rng, w.primary[user], 0.85, _PLATFORM_CDF),
                "location": _mostly(rng, w.home[user], 0.9, _LOCATION_CDF),
            },
            schema=_ENGAGEMENT_SCHEMA,
        )

        clicked = rng.random(n) < w.ctr[ad]
        clicks = impressions.filter(pl.Series(clicked))
        delay = rng.lognormal(math.log(c.click_delay_median_seconds * _SECOND), 0.8, clicks.height)
        delay = np.clip(delay, _SECOND, 300 * _SECOND).astype(np.int64)
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
        u_t = _traffic_times(rng, start, end, n_u)
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
        product = np.where(rng.random(n) < 0.8, w.featured[ad], rng.integers(0, _PRODUCTS, n))
        quantity = _draw(rng, _cdf((0.85, 0.12, 0.03)), n) + 1
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
            days = np.arange(t[0] // _DAY_MS, t[-1] // _DAY_MS + 1)
            bounds = np.searchsorted(t, np.append(days, days[-1] + 1) * _DAY_MS).tolist()
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
        mu = math.log(c.conversion_delay_median_seconds * _SECOND)
        cap = c.conversion_delay_max_seconds * _SECOND
        delay = rng.lognormal(mu, c.conversion_delay_sigma, n)
        for _ in range(1000):
            over = np.flatnonzero(delay > cap)
            if len(over) == 0:
                break
            delay[over] = rng.lognormal(mu, c.conversion_delay_sigma, len(over))
        else:  # pragma: no cover - only with a cap far below the median
            delay = np.minimum(delay, cap)
        return np.maximum(delay, 60 * _SECOND).astype(np.int64)

    # Records and faults -------------------------------------------------------------------
    def _arrivals(
        self, stream: Stream, due: pl.DataFrame, start: int, end: int
    ) -> tuple[_Arrivals, StreamCounts]:
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
        moved = rng.choice(n, n_late + n_ooo, replace=False) if n_late + n_ooo else _NONE
        ooo_max = int(c.out_of_order_max_seconds * _SECOND)
        late_max = int(c.late_max_seconds * _SECOND)
        arrival[moved[:n_late]] += rng.integers(ooo_max + 1, late_max + 1, n_late)
        arrival[moved[n_late:]] += rng.integers(min(_SECOND, ooo_max), ooo_max + 1, n_ooo)
        parts = [_Arrivals(arrival, payload)]

        if n_dup:
            source = rng.choice(n, n_dup, replace=False)
            lag = rng.integers(1, int(c.duplicate_max_delay_seconds * _SECOND) + 2, n_dup)
            # A re-send: the same bytes, so the same event id.
            parts.append(_Arrivals(arrival[source] + lag, [payload[i] for i in source.tolist()]))

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
                    _malformed(
                        kind,
                        variant,
                        stream,
                        base,
                        event_id if c.include_event_ids else None,
                        c.oversized_payload_bytes,
                    )
                )
            arrive = rng.integers(start, end, n_bad)
            parts.append(_Arrivals(arrive, bad))
            seq += n_bad
        self.seq[stream] = seq
        unattributed = int(due["unattributed"].sum()) if stream is Stream.CONVERSIONS else 0
        counts = StreamCounts(n, n_dup, n_ooo, n_late, malformed, unattributed)
        return _Arrivals.concat(*parts), counts

    def _render(self, stream: Stream, due: pl.DataFrame, seq0: int) -> pl.Series:
        """The JSON text of each event (the original's layout), built column-wise."""
        c, w, rng = self.config, self.world, self.rng
        n = due.height
        t = due["t"].to_numpy()
        timestamp = _format_seconds(t)
        iso = np.flatnonzero(rng.random(n) < c.iso_timestamp_rate)
        if len(iso):
            offset = rng.integers(0, len(_ISO_OFFSETS), len(iso))
            minutes = np.array([m for _, m in _ISO_OFFSETS], dtype=np.int64)[offset]
            suffix = pl.Series([o for o, _ in _ISO_OFFSETS]).gather(offset)
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
    second = t // _SECOND
    change = np.empty(len(t), dtype=bool)
    change[0] = True
    np.not_equal(second[1:], second[:-1], out=change[1:])
    distinct = pl.Series(second[change] * _SECOND)
    text = pl.select(
        pl.from_epoch(pl.lit(distinct), time_unit="ms").dt.strftime("%Y-%m-%d %H:%M:%S")
    ).to_series()
    return text.gather(np.cumsum(change) - 1)


@dataclass(frozen=True, slots=True)
class _Arrivals:
    """Rendered records with their arrival times (ms)."""

    arrival: np.ndarray
    payload: list[bytes]

    @classmethod
    def empty(cls) -> _Arrivals:
        return cls(_NONE, [])

    @classmethod
    def concat(cls, *parts: _Arrivals) -> _Arrivals:
        return cls(
            np.concatenate([p.arrival for p in parts]),
            _join(parts),
        )

    def sorted(self) -> _Arrivals:
        """By arrival; records arriving at the same time keep their order (stable)."""
        order = np.argsort(self.arrival, kind="stable")  # nearly sorted: ~linear
        return _Arrivals(self.arrival[order], _permute(self.payload, order))

    def split(self, cut: int) -> tuple[_Arrivals, _Arrivals]:
        return (
            _Arrivals(self.arrival[:cut], self.payload[:cut]),
            _Arrivals(self.arrival[cut:], self.payload[cut:]),
        )


def _join(parts: tuple[_Arrivals, ...]) -> list[bytes]:
    out: list[bytes] = []
    for part in parts:
        out += part.payload
    return out


def _permute(items: list[bytes], order: np.ndarray) -> list[bytes]:
    """``[items[i] for i in order]``, copying runs of consecutive indices as slices.

    Few records are displaced, so the order is mostly long runs: far fewer Python
    steps than one per record.
    """
    if len(order) == 0:
        return []
    breaks = np.flatnonzero(np.diff(order) != 1) + 1
    firsts = np.concatenate([[0], breaks])
    lengths = np.diff(np.append(firsts, len(order)))
    out: list[bytes] = []
    for first, length in zip(order[firsts].tolist(), lengths.tolist(), strict=True):
        out += items[first : first + length]
    return out


def _without_same_content(due: pl.DataFrame) -> pl.DataFrame:
    """Drop events identical in content to an earlier one (same second, user, ad...).

    Without event ids the pipeline derives ids from the content, so two such events
    would be one; dropping them keeps "duplicate" meaning exactly the injected re-sends.
    """
    keys = [c for c in due.columns if c not in ("t", "unattributed")]
    return (
        due.with_columns(_second=pl.col("t") // _SECOND)
        .unique(subset=["_second", *keys], keep="first", maintain_order=True)
        .drop("_second")
    )


# --- Malformed records ---------------------------------------------------------------------

_MARK: Final = "\u241f"  # a placeholder swapped for raw bytes after serialising
_BAD_TIMESTAMPS: Final = ("2023-13-45 25:61:00", "yesterday", "09/09/2023 10:00:00")


def _dumps(record: Mapping[str, Any]) -> str:
    # The original's layout: ", " and ": " separators.
    return json.dumps(record, separators=(", ", ": "), ensure_ascii=False)


def _malformed(
    kind: MalformedKind,
    variant: int,
    stream: Stream,
    base: bytes,
    event_id: str | None,
    oversized_bytes: int,
) -> bytes:
    """One malformed record of ``kind``, made from a valid record ``base``."""
    record: dict[str, Any] = orjson.loads(base)
    if event_id is not None:
        record["event_id"] = event_id  # its own id: it is not a copy of ``base``
    text_field = "product_id" if stream is Stream.CONVERSIONS else "location"
    ts_field = stream.timestamp_field
    match kind:
        case MalformedKind.INVALID_JSON:
            text = _dumps(record)
            return text[: len(text) // 2].encode()  # cut short: a prefix is never JSON
        case MalformedKind.INVALID_UTF8:
            value = record[text_field]
            record[text_field] = value[:2] + _MARK + value[2:]
            return _dumps(record).encode().replace(_MARK.encode(), b"\xc3\x28")
        case MalformedKind.MISSING_FIELD:
            required = stream.required_fields
            del record[required[variant % len(required)]]
            return _dumps(record).encode()
        case MalformedKind.WRONG_TYPE:
            options: list[tuple[str, Any]] = [
                ("ad_id", "abc"),
                ("user_id", {"id": record["user_id"]}),
            ]
            if stream is Stream.CONVERSIONS:
                options.insert(1, ("revenue", "12.5"))
            name, value = options[variant % len(options)]
            record[name] = value
            return _dumps(record).encode()
        case MalformedKind.NEGATIVE_REVENUE:
            record["revenue"] = _MARK
            return _dumps(record).encode().replace(f'"{_MARK}"'.encode(), b"-12.50")
        case MalformedKind.BAD_TIMESTAMP:
            record[ts_field] = _BAD_TIMESTAMPS[variant % len(_BAD_TIMESTAMPS)]
            return _dumps(record).encode()
        case MalformedKind.FUTURE_TIMESTAMP:
            record[ts_field] = "2999" + record[ts_field][4:]
            return _dumps(record).encode()
        case MalformedKind.EMPTY_PAYLOAD:
            return b""
        case MalformedKind.NOT_AN_OBJECT:
            return f"[{_dumps(record)}]".encode()
        case MalformedKind.EMBEDDED_NEWLINE:
            value = record[text_field]
            record[text_field] = value[:3] + _MARK + value[3:]
            return _dumps(record).encode().replace(_MARK.encode(), b"\n")
        case MalformedKind.OVERSIZED:
            record["debug_blob"] = ""
            size = len(_dumps(record).encode())
            record["debug_blob"] = "x" * max(0, oversized_bytes - size)
            return _dumps(record).encode()
    raise AssertionError(kind)  # pragma: no cover


# --- Small helpers -------------------------------------------------------------------------


def _share(rate: float, n: int) -> int:
    """``rate * n`` to the nearest integer, halves up."""
    return int(math.floor(rate * n + 0.5))


def _cdf(weights: Iterable[float] | np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    cdf = np.cumsum(w)
    return cdf / cdf[-1]


def _draw(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    """``n`` indices drawn with the probabilities of ``cdf`` (inverse transform)."""
    idx = np.searchsorted(cdf, rng.random(n), side="right")
    return np.minimum(idx, len(cdf) - 1).astype(np.int64)


def _mostly(
    rng: np.random.Generator, usual: np.ndarray, share: float, cdf: np.ndarray
) -> np.ndarray:
    """``usual``, except a ``1 - share`` of the entries drawn afresh from ``cdf``."""
    out = usual.astype(np.uint8)
    other = np.flatnonzero(rng.random(len(out)) >= share)
    out[other] = _draw(rng, cdf, len(other))
    return out


@dataclass(frozen=True, slots=True)
class _Alias:
    """Walker's alias table: O(1) weighted draws (a binary search per draw is slower)."""

    prob: np.ndarray
    alias: np.ndarray
    index: np.ndarray  # the entries with a positive weight; draws return these

    @classmethod
    def build(cls, weights: np.ndarray) -> _Alias:
        index = np.flatnonzero(np.asarray(weights) > 0)
        k = len(index)
        w = np.asarray(weights, dtype=np.float64)[index]
        scaled = (w * (k / w.sum())).tolist()
        prob = [1.0] * k
        alias = list(range(k))
        small = [i for i, p in enumerate(scaled) if p < 1.0]
        large = [i for i, p in enumerate(scaled) if p >= 1.0]
        while small and large:
            lo, hi = small.pop(), large.pop()
            prob[lo], alias[lo] = scaled[lo], hi
            scaled[hi] -= 1.0 - scaled[lo]
            (small if scaled[hi] < 1.0 else large).append(hi)
        # Entries left in either list have weight 1 up to rounding: they keep prob 1.
        return cls(np.array(prob), np.array(alias, dtype=np.int64), index.astype(np.int64))

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        pick = rng.integers(0, len(self.prob), n)
        return self.index[np.where(rng.random(n) < self.prob[pick], pick, self.alias[pick])]


def _hour_segments(start: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hours = np.arange(start // _HOUR_MS, (end - 1) // _HOUR_MS + 1, dtype=np.int64)
    lo = np.maximum(hours * _HOUR_MS, start)
    hi = np.minimum((hours + 1) * _HOUR_MS, end)
    return lo, hi, (hi - lo) * _DIURNAL[hours % 24]


def _traffic_mass(start: int, end: int) -> float:
    return float(_hour_segments(start, end)[2].sum())


def _traffic_times(rng: np.random.Generator, start: int, end: int, n: int) -> np.ndarray:
    """``n`` sorted event times (ms) in ``[start, end)`` following the daily traffic curve.

    Sorted without sorting: a multinomial count per hour, then in each hour the sorted
    uniforms are cumulative sums of exponential gaps (a Poisson process), O(n).
    """
    if n == 0:
        return _NONE
    lo, hi, weight = _hour_segments(start, end)
    counts = rng.multinomial(n, weight / weight.sum())
    segment = np.repeat(np.arange(len(counts)), counts)
    gaps = rng.standard_exponential(n + len(counts))
    total = np.cumsum(gaps)
    last = np.cumsum(counts + 1) - 1  # each hour's extra gap closes its interval
    before = np.concatenate([[0.0], total[last[:-1]]])
    inside = np.ones(n + len(counts), dtype=bool)
    inside[last] = False
    fraction = (total[inside] - before[segment]) / (total[last] - before)[segment]
    return lo[segment] + (fraction * (hi - lo)[segment]).astype(np.int64)


def _to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)
