"""Helpers for the operations tests: a parsed /metrics scrape (queue items: tests/factories.py)."""

from __future__ import annotations

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families


class Scrape(dict):
    """Sample name + sorted labels -> value, from one GET /metrics."""

    def value(self, name: str, **labels: str) -> float:
        return self.get((name, tuple(sorted(labels.items()))), 0.0)

    def since(self, before: Scrape, name: str, **labels: str) -> float:
        """How much a series grew from ``before`` to this scrape."""
        return self.value(name, **labels) - before.value(name, **labels)

    def names(self) -> set[str]:
        return {name for name, _ in self}


def scrape(client: Client, **extra: str) -> Scrape:
    response = client.get("/metrics", **extra)
    assert response.status_code == 200, response.content
    result = Scrape()
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


@pytest.fixture
def web() -> Client:
    """A test client that talks from loopback (the default METRICS_ALLOWED_IPS)."""
    return Client(REMOTE_ADDR="127.0.0.1")
