"""The pipeline-health dashboard of the Grafana export: a Prometheus data source, and
panels whose every metric is one adpulse exports."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import yaml
from builders import MiniPipeline
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.operations import grafana
from adpulse.operations.grafana.health import (
    HEALTH_DASHBOARD_FILE,
    HEALTH_PANELS,
    PROMETHEUS_DATASOURCE_FILE,
)
from adpulse.processor.pipeline import Processor
from adpulse.serving.api import create_app
from adpulse.serving.store.memory import MemoryServingStore
from adpulse.serving.store.sync import StoreSync
from adpulse.telemetry import PipelineMetrics, SupervisorMetrics, new_registry
from adpulse.transport.base import Lag

PG = "postgresql://grafana@db.example:5432/ads"


def exported_sample_names(tmp_path: Path) -> set[str]:
    """Every sample name a demo-like process (processor and API) exports, with data."""
    pipeline = MiniPipeline(tmp_path, partitions=1)
    metrics = PipelineMetrics(new_registry())
    metrics.watch_lag(lambda: Lag(0, 0, 0.0))
    metrics.watch_store(StoreSync(MemoryServingStore(), pipeline.warehouse))
    SupervisorMetrics(metrics.registry, workers=2)  # (the supervisor's, on its own port)
    pipeline.processor = Processor(
        pipeline.settings, pipeline.transport, pipeline.warehouse, listeners=[metrics]
    )
    pipeline.send(Stream.CLICKS, [b"not json"])  # a dead letter
    impression = {
        "event_id": "i1",
        "user_id": "u1",
        "ad_id": 1,
        "platform": "Web",
        "location": "Berlin",
        "impression_timestamp": "2024-05-01 10:00:00",
    }
    pipeline.send(Stream.IMPRESSIONS, [impression])  # a watermark
    pipeline.processor.run(threading.Event(), until_caught_up=True)
    pipeline.processor.close()
    app = create_app(pipeline.warehouse, Settings(home=tmp_path), registry=metrics.registry)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
    text = generate_latest(metrics.registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_health_dashboard_reads_metrics_adpulse_exports(tmp_path: Path) -> None:
    written = grafana.export(
        tmp_path / "out",
        Settings(home=tmp_path, warehouse_url=PG),
        prometheus_url="http://prometheus:9090",
    )
    out = (tmp_path / "out").resolve()
    assert written[-3:] == [
        out / PROMETHEUS_DATASOURCE_FILE,
        out / HEALTH_DASHBOARD_FILE,
        out / grafana.RULES_FILE,
    ]
    (source,) = yaml.safe_load(written[-3].read_text())["datasources"]
    assert (source["type"], source["url"], source["access"]) == (
        "prometheus",
        "http://prometheus:9090",
        "proxy",
    )
    ref = {"type": "prometheus", "uid": source["uid"]}

    board = json.loads(written[-2].read_text())
    row, *panels = board["panels"]
    assert (row["type"], row["title"]) == ("row", "Pipeline health")
    assert [p["title"] for p in panels] == [p.title for p in HEALTH_PANELS]
    cells: set[tuple[int, int]] = set()
    exported = exported_sample_names(tmp_path / "scrape")
    for panel in [row, *panels]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, panel["title"]
        cells |= area
    for panel in panels:
        assert panel["datasource"] == ref
        for target in panel["targets"]:
            assert target["datasource"] == ref
            names = set(re.findall(r"adpulse_[a-z_]+", target["expr"]))
            assert names and names <= exported, (panel["title"], names - exported)


def test_without_a_prometheus_url_the_export_is_as_before(tmp_path: Path) -> None:
    written = grafana.export(tmp_path / "out", Settings(home=tmp_path, warehouse_url=PG))
    out = (tmp_path / "out").resolve()
    assert written == [
        out / grafana.DATASOURCE_FILE,
        out / grafana.PROVIDER_FILE,
        out / grafana.DASHBOARD_FILE,
    ]
