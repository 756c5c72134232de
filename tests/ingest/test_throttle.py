"""Optional per-IP rate limit (AB_THROTTLE_RATE), counted in Redis through Django's cache."""

from __future__ import annotations

import random

import pytest

from devtools.embedded import free_port
from server.apps.front.pipeline import queue
from tests.ingest.conftest import BATCH_URL, SINGLE_URL, event, post

pytestmark = pytest.mark.django_db


def random_ip() -> str:
    # Each test its own client address: counters in the shared Redis never collide.
    return "10.{}.{}.{}".format(*(random.randint(1, 254) for _ in range(3)))


def test_throttling_is_off_by_default(client, settings):
    assert settings.AB_THROTTLE_RATE == ""
    ip = random_ip()
    codes = {post(client, SINGLE_URL, event(), REMOTE_ADDR=ip).status_code for _ in range(30)}
    assert codes == {201}


def test_over_the_rate_a_client_gets_429_with_retry_after(client, settings):
    settings.AB_THROTTLE_RATE = "3/min"
    ip, other_ip = random_ip(), random_ip()
    codes = [post(client, BATCH_URL, {"events": [event()]}, REMOTE_ADDR=ip).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    refused = post(client, SINGLE_URL, event(), REMOTE_ADDR=ip)  # both endpoints share the count
    assert refused.status_code == 429
    assert refused.json()["success"] is False
    assert "throttle" in refused.json()["errors"]
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert queue.stats().depth == 3
    # Per IP: another client is not affected.
    assert post(client, SINGLE_URL, event(), REMOTE_ADDR=other_ip).status_code == 201


def test_x_forwarded_for_is_not_trusted_without_proxies(client, settings):
    settings.AB_THROTTLE_RATE = "2/min"
    ip = random_ip()
    codes = [
        post(client, SINGLE_URL, event(), REMOTE_ADDR=ip, HTTP_X_FORWARDED_FOR=random_ip()).status_code
        for _ in range(3)
    ]
    assert codes == [201, 201, 429]


def test_throttle_lets_requests_through_when_its_redis_is_down(client, settings):
    settings.AB_THROTTLE_RATE = "1/min"
    settings.CACHES = {
        **settings.CACHES,
        "throttle": {**settings.CACHES["throttle"], "LOCATION": f"redis://127.0.0.1:{free_port()}/0"},
    }
    # (Django's setting_changed handler rebuilds the cache connections.)
    ip = random_ip()
    codes = [post(client, SINGLE_URL, event(), REMOTE_ADDR=ip).status_code for _ in range(3)]
    assert codes == [201, 201, 201]  # the queue's Redis is up: events are accepted
