"""The original's sample records and dimension rows, accepted verbatim, with metrics
computed by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from adpulse.contracts import Stream

# Impressions are not in the original's samples (it had no CTR denominator); these are
# added so that CTR has one: 4 on ad 1001, 2 on 1002, 5 on 1003.
IMPRESSIONS = [
    {
        "ad_id": ad,
        "user_id": user,
        "impression_timestamp": f"2023-09-09 09:5{i}:00",
        "platform": "Web",
        "location": "New York",
    }
    for ad, user, n in ((1001, "U1234", 4), (1002, "U5678", 2), (1003, "U9101", 5))
    for i in range(n)
]


def _feed(pipeline, samples: Path) -> None:  # type: ignore[no-untyped-def]
    pipeline.load_dims(samples / "campaigns.csv", samples / "users.csv")
    for stream, name in (
        (Stream.CLICKS, "clicks.jsonl"),
        (Stream.CONVERSIONS, "conversions.jsonl"),
    ):
        lines = [line for line in (samples / name).read_bytes().splitlines() if line]
        pipeline.send(stream, lines)
    pipeline.send(Stream.IMPRESSIONS, IMPRESSIONS)
    pipeline.run()


def test_samples_are_accepted_verbatim(pipeline, samples: Path) -> None:  # type: ignore[no-untyped-def]
    _feed(pipeline, samples)
    assert pipeline.rows("SELECT count(*) FROM dead_letters") == [(0,)]
    assert pipeline.rows(
        "SELECT ad_id, user_id, event_time::VARCHAR, platform, location, campaign, gender, "
        "age, age_band, interests FROM fact_clicks ORDER BY ad_id"
    ) == [
        (
            1001,
            "U1234",
            "2023-09-09 10:00:00",
            "Web",
            "New York",
            "Back-to-School",
            "Male",
            22,
            "18-24",
            "Music;Travel",
        ),
        (
            1002,
            "U5678",
            "2023-09-09 10:05:23",
            "Mobile",
            "Los Angeles",
            "Summer Sale",
            "Female",
            30,
            "25-34",
            "Reading;Photography",
        ),
        (
            1003,
            "U9101",
            "2023-09-09 10:10:34",
            "Tablet",
            "San Francisco",
            "Fall Fashion",
            "Male",
            27,
            "25-34",
            "Gaming;Cooking",
        ),
    ]
    assert pipeline.rows(
        "SELECT ad_id, product_id, revenue::VARCHAR, click_time::VARCHAR, latency_seconds, "
        "platform FROM fact_conversions ORDER BY ad_id"
    ) == [
        (1001, "P501", "50.0000", "2023-09-09 10:00:00", 1200.0, "Web"),
        (1002, "P502", "75.0000", "2023-09-09 10:05:23", 1500.0, "Mobile"),
    ]


def test_sample_metrics_equal_hand_computed_values(pipeline, samples: Path) -> None:  # type: ignore[no-untyped-def]
    from adpulse.serving import queries

    _feed(pipeline, samples)
    wh = pipeline.warehouse
    none = queries.Filters()
    s = queries.summary(wh, none).row(0, named=True)
    assert (s["impressions"], s["clicks"], s["conversions"]) == (11, 3, 2)
    assert s["ctr"] == pytest.approx(3 / 11, abs=1e-12)
    assert s["conversion_rate"] == pytest.approx(2 / 3, abs=1e-12)
    assert float(s["revenue_per_conversion"]) == pytest.approx(62.5, abs=1e-12)
    assert s["latency_mean"] == pytest.approx(1350.0, abs=1e-9)
    assert s["latency_p50"] == pytest.approx(1350.0, abs=1e-9)
    assert s["latency_p90"] == pytest.approx(1470.0, abs=1e-9)

    by_ad = {r["ad_id"]: r for r in queries.ctr(wh, none, "ad").to_dicts()}
    assert {a: (r["clicks"], r["impressions"]) for a, r in by_ad.items()} == {
        1001: (1, 4),
        1002: (1, 2),
        1003: (1, 5),
    }
    assert by_ad[1003]["ctr"] == pytest.approx(0.2, abs=1e-12)
    rates = {
        r["ad_id"]: r["conversion_rate"] for r in queries.conversion_rate(wh, none, "ad").to_dicts()
    }
    assert rates == {1001: 1.0, 1002: 1.0, 1003: 0.0}
    lat = {
        r["campaign"]: r["latency_mean"]
        for r in queries.conversion_latency(wh, none, "campaign").to_dicts()
    }
    assert lat == {"Back-to-School": 1200.0, "Summer Sale": 1500.0}
    mobile = queries.summary(wh, queries.Filters(platform="Mobile")).row(0, named=True)
    assert (mobile["clicks"], mobile["conversions"]) == (1, 1)
    travel = queries.summary(wh, queries.Filters(interest="Travel")).row(0, named=True)
    assert (travel["impressions"], travel["clicks"], travel["conversions"]) == (4, 1, 1)
