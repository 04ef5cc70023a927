"""The knobs of the generator: world size, traffic realism and fault rates.

One frozen dataclass, validated on creation so that a wrong setting (a rate outside
``[0, 1]``, too few users for the sample rows) fails with a message naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import date

from adpulse.sources.generator.catalog import SAMPLE_ADS, SAMPLE_USERS


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
