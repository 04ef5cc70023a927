"""Prometheus metrics (/metrics): the counters equal `adpulse status` for the same
warehouse, the API histogram counts requests by route template and status, and unknown
paths share one label."""

from __future__ import annotations

import threading
from pathlib import Path

from builders import MiniPipeline, web_impression
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from scrapes import samples

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.metrics import GROUPED_NAMES
from adpulse.processor.pipeline import Processor
from adpulse.serving import queries
from adpulse.serving.api import create_app
from adpulse.telemetry import UNMATCHED_ROUTE, PipelineMetrics, new_registry


def test_counters_equal_pipeline_status(tmp_path: Path) -> None:
    pipeline = MiniPipeline(tmp_path, partitions=2)
    metrics = PipelineMetrics(new_registry())
    pipeline.processor = Processor(
        pipeline.settings, pipeline.transport, pipeline.warehouse, listeners=[metrics]
    )
    # 8 distinct impressions, 2 of them sent again (duplicates), 3 that cannot be stored
    records: list[bytes | dict[str, object]] = [web_impression(n) for n in range(8)]
    records += [web_impression(0), web_impression(1), b"not json", b"{}", b"[1, 2]"]
    pipeline.send(Stream.IMPRESSIONS, records)
    pipeline.processor.run(threading.Event(), until_caught_up=True)
    pipeline.processor.close()

    got = samples(generate_latest(metrics.registry).decode())
    status = queries.pipeline_status(pipeline.warehouse)
    for row in status["streams"].iter_rows(named=True):
        labels = (("stream", row["stream"]),)
        for name in ("received", "accepted", "rejected", "duplicates", "late"):
            assert got[(f"adpulse_events_{name}_total", labels)] == row[name], (name, labels)
    impressions = (("stream", "impressions"),)
    assert got[("adpulse_events_received_total", impressions)] == 13
    assert got[("adpulse_events_rejected_total", impressions)] == 3
    assert got[("adpulse_events_duplicates_total", impressions)] == 2
    assert got[("adpulse_events_received_total", (("stream", "clicks"),))] == 0

    dead = {
        (labels[1][1], labels[0][1]): value  # (stream, reason)
        for (name, labels), value in got.items()
        if name == "adpulse_dead_letters_total"
    }
    expected = {(s, r): n for s, r, n in status["dead_letters"].iter_rows()}
    assert dead == expected
    assert sum(dead.values()) == 3

    batches = got[("adpulse_batches_committed_total", ())]
    assert batches >= 1
    assert got[("adpulse_commit_duration_seconds_count", ())] == batches
    assert got[("adpulse_batch_step_duration_seconds_count", (("step", "decode"),))] == batches
    delay = got[("adpulse_watermark_delay_seconds", impressions)]
    assert delay > 0  # the data is from 2024


def test_api_latency_by_route_template_and_status(tmp_path: Path) -> None:
    pipeline = MiniPipeline(tmp_path)  # an empty warehouse: answers, zeros
    app = create_app(pipeline.warehouse, Settings(home=tmp_path))
    with TestClient(app) as client:
        for _ in range(3):  # the 2nd and 3rd are answered by the shortcut, before routing
            assert client.get("/api/v1/summary").status_code == 200
        for metric in GROUPED_NAMES[:2]:
            assert client.get(f"/api/v1/metrics/{metric}").status_code == 200
        for n in range(5):
            assert client.get(f"/no/such/path/{n}").status_code == 404
        for method in ("BREW", "WHEN"):  # any token is a method to HTTP
            assert client.request(method, "/healthz").status_code == 405
        text = client.get("/metrics").text
    got = samples(text)

    def count(route: str, status: str) -> float:
        labels = (("method", "GET"), ("route", route), ("status", status))
        return got[("adpulse_http_request_duration_seconds_count", labels)]

    assert count("/api/v1/summary", "200") == 3
    assert count("/api/v1/metrics/{metric}", "200") == 2
    assert count(UNMATCHED_ROUTE, "404") == 5
    methods = (("method", "other"), ("route", "/healthz"), ("status", "405"))
    assert got[("adpulse_http_request_duration_seconds_count", methods)] == 2
    routes = {
        dict(labels)["route"]
        for name, labels in got
        if name == "adpulse_http_request_duration_seconds_count"
    }
    assert routes == {"/api/v1/summary", "/api/v1/metrics/{metric}", "/healthz", UNMATCHED_ROUTE}
    assert got[("adpulse_live_stream_clients", ())] == 0
