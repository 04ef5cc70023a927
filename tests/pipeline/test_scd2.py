"""Slowly changing dimensions: events join the version in effect at their event time,
and a load while the processor runs takes effect without a restart."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from adpulse.contracts import Stream


def _click(ts: str, ad: int = 1001, user: str = "U1234", eid: str = "") -> dict[str, object]:
    return {
        "event_id": eid or f"{ad}-{user}-{ts}",
        "ad_id": ad,
        "user_id": user,
        "click_timestamp": ts,
        "platform": "Web",
        "location": "New York",
    }


def test_campaign_renamed_mid_stream(pipeline, samples: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pipeline.load_dims(samples / "campaigns.csv", samples / "users.csv")
    pipeline.send(Stream.CLICKS, [_click("2023-09-09 10:00:00"), _click("2023-09-09 10:59:59")])
    pipeline.run()

    renamed = tmp_path / "campaigns.csv"
    renamed.write_text(
        (samples / "campaigns.csv").read_text().replace("Back-to-School", "Back-to-School 2023")
    )
    pipeline.load_dims(renamed, effective_from=datetime(2023, 9, 9, 11, 0, 0))
    # Same processor, no restart; one event before the change arrives late, after it.
    pipeline.send(
        Stream.CLICKS,
        [
            _click("2023-09-09 11:00:00"),
            _click("2023-09-09 12:30:00"),
            _click("2023-09-09 10:30:00"),
            _click("2023-09-09 11:30:00", ad=1002, user="U5678"),
        ],
    )
    pipeline.run()

    assert pipeline.rows(
        "SELECT event_time::VARCHAR, ad_id, campaign FROM fact_clicks ORDER BY event_time"
    ) == [
        ("2023-09-09 10:00:00", 1001, "Back-to-School"),
        ("2023-09-09 10:30:00", 1001, "Back-to-School"),
        ("2023-09-09 10:59:59", 1001, "Back-to-School"),
        ("2023-09-09 11:00:00", 1001, "Back-to-School 2023"),
        ("2023-09-09 11:30:00", 1002, "Summer Sale"),
        ("2023-09-09 12:30:00", 1001, "Back-to-School 2023"),
    ]
    assert pipeline.rows(
        "SELECT campaign, sum(clicks) FROM rollup_minute GROUP BY 1 ORDER BY 1"
    ) == [("Back-to-School", 3), ("Back-to-School 2023", 2), ("Summer Sale", 1)]
    assert pipeline.rows(
        "SELECT version, campaign, valid_from::VARCHAR, valid_to::VARCHAR FROM dim_campaigns "
        "WHERE ad_id = 1001 ORDER BY version"
    ) == [
        (1, "Back-to-School", "1970-01-01 00:00:00", "2023-09-09 11:00:00"),
        (2, "Back-to-School 2023", "2023-09-09 11:00:00", None),
    ]


def test_unknown_ad_and_user_are_kept_and_counted(pipeline, samples: Path) -> None:  # type: ignore[no-untyped-def]
    pipeline.load_dims(samples / "campaigns.csv", samples / "users.csv")
    pipeline.send(
        Stream.CLICKS,
        [
            _click("2023-09-09 10:00:00", ad=9999),
            _click("2023-09-09 10:01:00", user="NOBODY"),
            _click("2023-09-09 10:02:00"),
        ],
    )
    pipeline.run()
    assert pipeline.rows(
        "SELECT ad_id, user_id, campaign, gender FROM fact_clicks ORDER BY event_time"
    ) == [
        (9999, "U1234", None, "Male"),
        (1001, "NOBODY", "Back-to-School", None),
        (1001, "U1234", "Back-to-School", "Male"),
    ]
    assert pipeline.rows(
        "SELECT sum(accepted), sum(unknown_ad), sum(unknown_user) FROM ingest_stats"
    ) == [(3, 1, 1)]
