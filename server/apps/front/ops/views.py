"""Operations endpoints: ``/metrics`` (Prometheus), ``/healthz`` (alive), ``/readyz`` (dependencies up).

Plain Django views, not DRF: no authentication classes, parsers or the ingest
envelope; probes and scrapes should cost as little as possible.
"""

from __future__ import annotations

import logging

import redis
from django.db import DEFAULT_DB_ALIAS, connections
from django.db import Error as DjangoDatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from server.apps.front.ops import metrics
from server.apps.front.pipeline import queue

log = logging.getLogger("abflow.health")


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not metrics.scrape_allowed(request):
        return JsonResponse({"error": "forbidden: METRICS_ALLOWED_IPS or METRICS_TOKEN"}, status=403)
    return HttpResponse(metrics.render(), content_type=CONTENT_TYPE_PLAIN_0_0_4)


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process answers HTTP. Nothing else is checked: a restart would not fix Redis."""
    return JsonResponse({"alive": True})


def check_redis() -> None:
    # The app's own client: REDIS_SOCKET_TIMEOUT (0.5 s) bounds the probe.
    queue.get_redis().ping()


def check_postgresql() -> None:
    # The request's own connection (DB_CONNECT_TIMEOUT bounds the connect),
    # so the probe sees exactly what the app would see.
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DjangoDatabaseError:
        # A broken persistent connection must not make every later probe fail.
        if not connection.in_atomic_block:
            connection.close()
        raise


CHECKS = {"redis": (check_redis, redis.RedisError), "postgresql": (check_postgresql, DjangoDatabaseError)}


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """200 when Redis and PostgreSQL both answer; else 503 naming what is down.

    The body gives only the error's class: the endpoint is unauthenticated
    and the full message (hosts, ports) goes to the log instead.
    """
    down: list[str] = []
    errors: dict[str, str] = {}
    for name, (check, failure) in CHECKS.items():
        try:
            check()
        except failure as exc:
            down.append(name)
            errors[name] = type(exc).__name__
            log.warning("readyz: %s down: %s", name, exc)
    if down:
        return JsonResponse({"ready": False, "down": down, "errors": errors}, status=503)
    return JsonResponse({"ready": True, "down": []})
