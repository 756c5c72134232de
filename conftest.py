"""Shared fixtures: real Redis and real PostgreSQL, isolated per test.

Each test gets its own queue key prefix, so tests never see each other's
events (nor those of a `make run` beside them) on the same Redis server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from server.apps.front.pipeline import queue


@pytest.fixture(autouse=True)
def _isolated_queue(settings) -> Iterator[None]:
    settings.AB_QUEUE_KEY_PREFIX = f"abtest-{uuid.uuid4().hex[:12]}"
    yield
    try:
        client = queue.get_redis()
        names = list(client.scan_iter(match=f"{settings.AB_QUEUE_KEY_PREFIX}:*", count=1000))
        if names:
            client.delete(*names)
    except redis.RedisError:
        pass


@pytest.fixture
def rq() -> redis.Redis:
    """The real Redis the app uses (REDIS_URL)."""
    client = queue.get_redis()
    client.ping()
    return client
