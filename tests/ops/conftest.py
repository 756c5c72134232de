"""Helpers for the operations tests: queue items and a parsed /metrics scrape."""

from __future__ import annotations

import uuid
from datetime import timedelta

import orjson
import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from server.apps.front.pipeline import queue


def make_item(*, age_seconds: float = 0.0, **overrides: object) -> bytes:
    """A queued event exactly as the endpoint encodes it (the protocol's own encoder)."""
    data = {
        "event_id": overrides.pop("event_id", uuid.uuid4()),
        "session_id": overrides.pop("session_id", f"ops-{uuid.uuid4().hex[:8]}"),
        "variant": overrides.pop("variant", "fast"),
        "event_type": overrides.pop("event_type", "variant_assigned"),
        "step_number": None,
        "metadata": {},
    }
    received = timezone.now() - timedelta(seconds=age_seconds)
    payload = orjson.loads(queue.encode_event(data, user_id=overrides.pop("user_id", None), received_at=received))
    payload.update(overrides)
    return orjson.dumps(payload)


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
