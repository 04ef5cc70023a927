"""The dimensions: campaigns, ads and users, and the static tables events draw from.

A :class:`World` is drawn once from the seed (its own random stream, so event traffic
never shifts it): the campaigns with their flights, the users with their home city and
device, each ad's popularity, CTR and conversion rate, product prices, and the pools of
unknown ad and user ids that strays are drawn from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import polars as pl

from adpulse.sources.generator.catalog import (
    CAMPAIGN_THEMES,
    FIRST_AD_ID,
    FIRST_USER_NO,
    GENDER_MIX,
    GENDERS,
    INTEREST_WEIGHTS,
    INTERESTS,
    LOCATION_WEIGHTS,
    LOCATIONS,
    PLATFORM_MIX,
    PLATFORMS,
    PRODUCTS,
    SAMPLE_ADS,
    SAMPLE_USERS,
    UNKNOWN_ADS,
)
from adpulse.sources.generator.config import GeneratorConfig
from adpulse.sources.generator.sampling import Alias, cdf, draw


@dataclass(frozen=True, slots=True)
class World:
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
    user_activity: Alias
    home: np.ndarray  # location index per user
    primary: np.ndarray  # platform index per user
    price_cents: np.ndarray  # per product
    events_per_impression: float
    campaigns: pl.DataFrame
    users: pl.DataFrame
    _in_flight: dict[bytes, Alias] = field(default_factory=dict)

    def ads_in_flight(self, day: int) -> Alias:
        """Draws of known ads by popularity among those in flight on ``day``, if any."""
        live = (self.flight_start_day <= day) & (day <= self.flight_end_day)
        if not live.any():
            live[:] = True
        key = live.tobytes()  # flights change rarely: few distinct tables
        table = self._in_flight.get(key)
        if table is None:
            table = self._in_flight[key] = Alias.build(self.ad_weights * live)
        return table

    @classmethod
    def build(cls, config: GeneratorConfig) -> World:
        rng = np.random.default_rng([config.seed, 0])
        campaigns = _campaigns(rng, config)
        users, home, primary = _users(rng, config)
        n_ads = config.ads

        rank = rng.permutation(n_ads) + 1
        ad_weights = rank.astype(np.float64) ** -config.ad_popularity_exponent
        a = config.ctr_mean * config.ctr_concentration
        b = (1 - config.ctr_mean) * config.ctr_concentration
        ctr = rng.beta(a, b, n_ads + UNKNOWN_ADS)
        ctr[n_ads:] = config.ctr_mean
        cvr = rng.uniform(config.conversion_rate_min, config.conversion_rate_max, n_ads)
        cvr = np.concatenate([cvr, np.full(UNKNOWN_ADS, cvr.mean())])
        featured = np.concatenate(
            [np.arange(n_ads) % PRODUCTS, rng.integers(0, PRODUCTS, UNKNOWN_ADS)]
        )
        last_ad = FIRST_AD_ID + n_ads - 1
        unknown_base = 10 ** len(str(last_ad)) + 1
        ad_ids = np.concatenate(
            [np.arange(FIRST_AD_ID, last_ad + 1), unknown_base + np.arange(UNKNOWN_ADS)]
        )

        user_nos = users["user_id"].str.slice(1).cast(pl.Int64).to_numpy()
        n_unknown_users = max(10, config.users // 200)
        unknown_base = 10 ** len(str(int(user_nos.max())))
        user_nos = np.concatenate([user_nos, unknown_base + np.arange(n_unknown_users)])
        activity = rng.lognormal(0.0, config.user_activity_sigma, config.users)
        home = np.concatenate([home, draw(rng, cdf(LOCATION_WEIGHTS), n_unknown_users)]).astype(
            np.uint8
        )
        primary = np.concatenate([primary, draw(rng, cdf(PLATFORM_MIX), n_unknown_users)]).astype(
            np.uint8
        )

        # Prices: log-normal around $40, to the cent, at least $4.99.
        price = np.maximum(np.round(rng.lognormal(math.log(40.0), 0.7, PRODUCTS), 2), 4.99)
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
            user_activity=Alias.build(activity),
            home=home,
            primary=primary,
            price_cents=price_cents,
            events_per_impression=1.0 + mean_ctr * (1.0 + conversions_per_click),
            campaigns=campaigns,
            users=users,
        )


def _campaigns(rng: np.random.Generator, config: GeneratorConfig) -> pl.DataFrame:
    n_campaigns, n_ads = config.campaigns, config.ads
    themes = [CAMPAIGN_THEMES[i % len(CAMPAIGN_THEMES)] for i in range(n_campaigns)]
    names = [
        name if i < len(CAMPAIGN_THEMES) else f"{name} {i // len(CAMPAIGN_THEMES) + 1}"
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
    extra = draw(rng, cdf(size), n_ads - n_campaigns)
    ad_campaign = np.concatenate([np.arange(n_campaigns), extra])
    pick = rng.integers(0, 4, n_ads)
    pick[:n_campaigns] = 0  # the original's products are their campaign's first
    products = [themes[c][1][p] for c, p in zip(ad_campaign.tolist(), pick.tolist(), strict=True)]
    frame = pl.DataFrame(
        {
            "ad_id": np.arange(FIRST_AD_ID, FIRST_AD_ID + n_ads, dtype=np.int64),
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
    candidates = np.arange(FIRST_USER_NO, FIRST_USER_NO + n + len(sample_nos))
    others = candidates[~np.isin(candidates, sample_nos)][: n - len(sample_nos)]
    nos = np.sort(np.concatenate([others, sample_nos]))
    ages = np.clip(np.round(rng.normal(36, 13, n)), 13, 85).astype(np.int64)
    genders = draw(rng, cdf(GENDER_MIX), n)
    # 1-4 distinct interests per user, weighted (Efraimidis-Spirakis keys, vectorized).
    how_many = rng.integers(1, 5, n)
    keys = rng.random((n, len(INTERESTS))) ** (1.0 / np.asarray(INTEREST_WEIGHTS))
    order = np.argsort(-keys, axis=1)[:, :4]
    home = draw(rng, cdf(LOCATION_WEIGHTS), n)
    primary = draw(rng, cdf(PLATFORM_MIX), n)
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
