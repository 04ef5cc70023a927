"""Reading adpulse's Prometheus metrics in tests: the exposition text parsed with
prometheus-client's own parser into samples keyed by name and sorted labels."""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of the exposition ``text``, keyed by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(registry: Any) -> Samples:
    """The samples of a registry in this process."""
    return samples(generate_latest(registry).decode())


def scrape_port(port: int) -> Samples:
    """The samples served at ``/metrics`` on a loopback port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return samples(response.read().decode())
