"""Attribution with out-of-order arrival: a click arriving after its conversion
re-attributes it while the conversion is open; rollups follow the facts."""

from __future__ import annotations

from adpulse.contracts import Stream


def _click(ts: str, platform: str, eid: str, ad: int = 1001) -> dict[str, object]:
    return {
        "event_id": eid,
        "ad_id": ad,
        "user_id": "U1",
        "click_timestamp": ts,
        "platform": platform,
        "location": "Paris",
    }


def _conv(ts: str, eid: str, revenue: float = 10.0) -> dict[str, object]:
    return {
        "event_id": eid,
        "ad_id": 1001,
        "user_id": "U1",
        "conversion_timestamp": ts,
        "product_id": "P1",
        "revenue": revenue,
    }


def _state(pipeline):  # type: ignore[no-untyped-def]
    facts = pipeline.rows(
        "SELECT event_id, click_time::VARCHAR, latency_seconds, platform FROM fact_conversions "
        "ORDER BY event_id"
    )
    rollup = pipeline.rows(
        "SELECT platform, sum(conversions)::BIGINT, sum(attributed_conversions)::BIGINT, "
        "sum(revenue)::DOUBLE, "
        "sum(latency_sum_seconds) FROM rollup_minute GROUP BY 1 "
        "HAVING sum(conversions) <> 0 ORDER BY 1 NULLS FIRST"
    )
    return facts, rollup


def test_late_click_reattributes_open_conversion(pipeline) -> None:  # type: ignore[no-untyped-def]
    # Conversion first, no click yet: unattributed.
    pipeline.send(Stream.CONVERSIONS, [_conv("2023-09-09 10:20:00", "v1")])
    pipeline.run()
    assert _state(pipeline) == ([("v1", None, None, None)], [(None, 1, 0, 10.0, 0.0)])

    # An earlier click arrives: attributed to it.
    pipeline.send(Stream.CLICKS, [_click("2023-09-09 10:00:00", "Web", "k1")])
    pipeline.run()
    assert _state(pipeline) == (
        [("v1", "2023-09-09 10:00:00", 1200.0, "Web")],
        [("Web", 1, 1, 10.0, 1200.0)],
    )

    # A later click (still before the conversion) arrives out of order: it wins.
    # A click after the conversion and one on another ad do not.
    pipeline.send(
        Stream.CLICKS,
        [
            _click("2023-09-09 10:15:00", "Mobile", "k2"),
            _click("2023-09-09 10:25:00", "Tablet", "k3"),
            _click("2023-09-09 10:19:00", "Tablet", "k4", ad=1002),
        ],
    )
    pipeline.run()
    assert _state(pipeline) == (
        [("v1", "2023-09-09 10:15:00", 300.0, "Mobile")],
        [("Mobile", 1, 1, 10.0, 300.0)],
    )


def test_same_batch_and_tie_break(pipeline) -> None:  # type: ignore[no-untyped-def]
    pipeline.send(
        Stream.CLICKS,
        [_click("2023-09-09 10:00:00", "Web", "a"), _click("2023-09-09 10:00:00", "Mobile", "b")],
    )
    pipeline.send(Stream.CONVERSIONS, [_conv("2023-09-09 10:00:00", "v")])
    pipeline.run()
    # Same time: the larger click id wins; "at or before" includes equal times.
    assert _state(pipeline)[0] == [("v", "2023-09-09 10:00:00", 0.0, "Mobile")]


def test_lookback_bounds_attribution(pipeline) -> None:  # type: ignore[no-untyped-def]
    pipeline.send(
        Stream.CLICKS,
        [
            _click("2023-09-01 10:00:00", "Web", "old"),
            _click("2023-09-02 10:00:01", "Mobile", "new"),
        ],
    )
    pipeline.send(
        Stream.CONVERSIONS,
        [
            _conv("2023-09-08 10:00:00", "exactly-7-days-after-old"),
            _conv("2023-09-09 10:00:02", "7-days-and-1-s-after-new"),
        ],
    )
    pipeline.run()
    # The last click wins; a click exactly 7 days before is in range, 1 s more is not.
    assert _state(pipeline)[0] == [
        ("7-days-and-1-s-after-new", None, None, None),
        ("exactly-7-days-after-old", "2023-09-02 10:00:01", 6 * 86400.0 - 1, "Mobile"),
    ]


def test_lookback_includes_its_boundary(pipeline) -> None:  # type: ignore[no-untyped-def]
    pipeline.send(Stream.CLICKS, [_click("2023-09-01 10:00:00", "Web", "old")])
    pipeline.send(Stream.CONVERSIONS, [_conv("2023-09-08 10:00:00", "edge")])
    pipeline.run()
    assert _state(pipeline)[0] == [("edge", "2023-09-01 10:00:00", 7 * 86400.0, "Web")]


def test_closed_conversion_is_not_reattributed(pipeline) -> None:  # type: ignore[no-untyped-def]
    # Lateness 600 s: once the clicks watermark is 10 min past the conversion, a click
    # before it is late beyond the allowed lateness; it is kept and counted (flagged late)
    # but the conversion's attribution is final.
    pipeline.send(Stream.CONVERSIONS, [_conv("2023-09-09 10:20:00", "v1")])
    pipeline.send(Stream.CLICKS, [_click("2023-09-09 10:31:00", "Web", "k-now")])
    pipeline.run()
    pipeline.send(Stream.CLICKS, [_click("2023-09-09 10:10:00", "Mobile", "k-late")])
    pipeline.run()
    assert _state(pipeline)[0] == [("v1", None, None, None)]
    assert pipeline.rows("SELECT event_id, is_late FROM fact_clicks ORDER BY event_id") == [
        ("k-late", True),
        ("k-now", False),
    ]
    assert pipeline.rows("SELECT sum(late) FROM ingest_stats WHERE stream = 'clicks'") == [(1,)]
