"""Optional per-IP rate limit of the ingest endpoints (``AB_THROTTLE_RATE``).

Off by default: the frontend is trusted. When on, a fixed window per client IP
counted in Redis through Django's cache framework (the ``throttle`` cache), so
all web workers share one count. A counter (``add`` + ``incr``, atomic in
Redis, O(1)) rather than DRF's ``SimpleRateThrottle``, which stores the list
of every request's time and rewrites it on each request: at thousands of
requests per minute that list would cost more than the request. A fixed window
may let through up to twice the rate across a window boundary; fine for a
guard against a runaway client.

Redis down: the throttle lets the request through (fails open); the enqueue
then answers 503 on its own.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache

from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from redis import RedisError
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

log = logging.getLogger(__name__)

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@lru_cache(maxsize=8)
def parse_rate(rate: str) -> tuple[int, int]:
    """DRF's syntax: ``"100/s"``, ``"6000/min"``, ``"1000/hour"`` → (requests, seconds)."""
    try:
        count, period = rate.split("/")
        return int(count), _PERIODS[period.strip()[0].lower()]
    except (ValueError, KeyError, IndexError) as exc:
        raise ImproperlyConfigured(f"AB_THROTTLE_RATE={rate!r} is not like '100/s' or '6000/min'") from exc


class IngestRateThrottle(BaseThrottle):
    """At most AB_THROTTLE_RATE requests per client IP (events in a batch count as one request)."""

    scope = "ab_ingest"

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Request, view: APIView) -> bool:
        rate = settings.AB_THROTTLE_RATE
        if not rate:
            return True
        limit, period = parse_rate(rate)
        now = time.time()
        window = int(now // period)
        key = f"{self.scope}:{self.get_ident(request)}:{window}"
        cache = caches["throttle"]
        try:
            # add() is SET NX: the first request of a window creates the counter.
            count = 1 if cache.add(key, 1, timeout=period + 1) else cache.incr(key)
        except ValueError:  # the counter expired between add and incr: a new window
            count = 1
        except RedisError as exc:
            log.warning("throttle counter unavailable, letting the request through: %s", exc)
            return True
        if count <= limit:
            return True
        self._wait = (window + 1) * period - now
        return False

    def wait(self) -> float | None:
        return self._wait
