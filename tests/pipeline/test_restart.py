"""Restarting the processor in process: state rebuilt from the warehouse behaves exactly
like the state of an uninterrupted run."""

from __future__ import annotations

from builders import MiniPipeline

from adpulse.contracts import Stream
from adpulse.processor.pipeline import Processor


def _click(ts: str, eid: str, platform: str = "Web") -> dict[str, object]:
    return {
        "event_id": eid,
        "ad_id": 1001,
        "user_id": "U1",
        "click_timestamp": ts,
        "platform": platform,
        "location": "Paris",
    }


def _conv(ts: str, eid: str) -> dict[str, object]:
    return {
        "event_id": eid,
        "ad_id": 1001,
        "user_id": "U1",
        "conversion_timestamp": ts,
        "product_id": "P1",
        "revenue": 12.34,
    }


def _restart(pipeline) -> None:  # type: ignore[no-untyped-def]
    assert pipeline.processor is not None
    pipeline.processor.close()
    pipeline.processor = Processor(pipeline.settings, pipeline.transport, pipeline.warehouse)


def test_open_conversion_is_reattributed_after_a_restart(pipeline) -> None:  # type: ignore[no-untyped-def]
    pipeline.send(Stream.CONVERSIONS, [_conv("2023-09-09 10:20:00", "v1")])
    pipeline.send(Stream.CLICKS, [_click("2023-09-09 10:00:00", "k1")])
    pipeline.run()
    _restart(pipeline)
    # A later click before the conversion, and a duplicate of the first conversion.
    pipeline.send(Stream.CLICKS, [_click("2023-09-09 10:10:00", "k2", "Mobile")])
    pipeline.send(Stream.CONVERSIONS, [_conv("2023-09-09 10:20:00", "v1")])
    pipeline.run()
    assert pipeline.rows(
        "SELECT event_id, click_event_id, latency_seconds, platform, revenue::VARCHAR "
        "FROM fact_conversions"
    ) == [("v1", "k2", 600.0, "Mobile", "12.3400")]
    assert pipeline.rows(
        "SELECT platform, sum(attributed_conversions)::BIGINT, sum(revenue)::VARCHAR "
        "FROM rollup_minute WHERE conversions <> 0 GROUP BY 1 HAVING sum(conversions) <> 0"
    ) == [("Mobile", 1, "12.3400")]
    assert pipeline.rows(
        "SELECT sum(duplicates)::BIGINT FROM ingest_stats WHERE stream = 'conversions'"
    ) == [(1,)]


def test_late_click_attributes_nothing_whatever_the_batching(pipeline, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Same records, once in one batch and once cut in two: same warehouse.
    records = [_click("2023-09-09 10:31:00", "now"), _click("2023-09-09 10:09:00", "late")]
    results = []
    for split, home in ((False, tmp_path / "a"), (True, tmp_path / "b")):
        home.mkdir()
        mini = MiniPipeline(home)
        mini.send(Stream.CONVERSIONS, [_conv("2023-09-09 10:20:00", "v1")])
        mini.run()
        if split:
            mini.send(Stream.CLICKS, records[:1])
            mini.run()
            mini.send(Stream.CLICKS, records[1:])
        else:
            mini.send(Stream.CLICKS, records)
        mini.run()
        results.append(
            (
                mini.rows("SELECT event_id, click_event_id FROM fact_conversions"),
                mini.rows("SELECT event_id, is_late FROM fact_clicks ORDER BY 1"),
            )
        )
        mini.warehouse.close()
    assert (
        results[0]
        == results[1]
        == (
            [("v1", None)],
            [("late", True), ("now", False)],
        )
    )


def test_blank_event_ids_are_derived_and_huge_revenue_rejected(pipeline) -> None:  # type: ignore[no-untyped-def]
    pipeline.send(
        Stream.CONVERSIONS,
        [
            {**_conv("2023-09-09 10:20:00", ""), "product_id": "A"},
            {**_conv("2023-09-09 10:21:00", " "), "product_id": "B"},
            {**_conv("2023-09-09 10:22:00", "big"), "revenue": 1e20},
        ],
    )
    pipeline.run()
    ids = [r[0] for r in pipeline.rows("SELECT event_id FROM fact_conversions ORDER BY 1")]
    assert len(ids) == 2 and all(i.startswith("d:") for i in ids) and ids[0] != ids[1]
    assert pipeline.rows("SELECT reason FROM dead_letters") == [("revenue_out_of_range",)]
