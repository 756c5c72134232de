"""Operations endpoints: ``/metrics`` (Prometheus), ``/healthz`` (alive), ``/readyz`` (dependencies up).

Plain Django views, not DRF: no authentication classes, parsers or the ingest
envelope; probes and scrapes should cost as little as possible.

Who may scrape ``/metrics`` (``scrape_allowed``): a request with
``Authorization: Bearer $METRICS_TOKEN``, or a *direct* request from an
address in ``METRICS_ALLOWED_IPS``. A request that carries a proxy's
forwarding headers is never admitted by address: behind the local reverse
proxy of the shipped setup every request's ``REMOTE_ADDR`` is 127.0.0.1, so
an allow-list containing loopback would otherwise admit the whole internet.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from functools import lru_cache

import redis
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db import Error as DjangoDatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from redis.cluster import RedisCluster

from server.apps.front.ops import metrics
from server.apps.front.pipeline import queue

log = logging.getLogger("abflow.health")

# --- /metrics access ------------------------------------------------------------------

# Request headers (as WSGI META keys) that a reverse proxy adds. Any of them
# marks a request as relayed: its REMOTE_ADDR is the proxy's, not the client's.
# Any X-Forwarded-* counts too (see is_proxied); a client can always add these
# headers itself, which only ever costs it access, never grants it.
PROXY_HEADERS = frozenset(
    {
        "HTTP_FORWARDED",  # RFC 7239
        "HTTP_X_REAL_IP",  # nginx's usual proxy_set_header
        "HTTP_VIA",  # RFC 9110, added by Apache (ProxyVia), Squid, CDNs
        "HTTP_TRUE_CLIENT_IP",
        "HTTP_CF_CONNECTING_IP",
        "HTTP_X_CLIENT_IP",
    }
)


def is_proxied(request: HttpRequest) -> bool:
    """The request came through a reverse proxy (it carries a forwarding header)."""
    return any(key in PROXY_HEADERS or key.startswith("HTTP_X_FORWARDED_") for key in request.META)


def bearer_token_matches(request: HttpRequest, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time; never true for an empty token."""
    if not token:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@lru_cache(maxsize=8)
def _networks(allowed: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in allowed)


def address_allowed(request: HttpRequest, allowed: tuple[str, ...]) -> bool:
    """REMOTE_ADDR (the web server's peer) is in one of the ``allowed`` addresses or networks."""
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in _networks(allowed))


def scrape_allowed(request: HttpRequest) -> bool:
    """The METRICS_TOKEN bearer token, or a direct (unproxied) peer in METRICS_ALLOWED_IPS."""
    if bearer_token_matches(request, settings.METRICS_TOKEN):
        return True
    if is_proxied(request):
        return False
    return address_allowed(request, tuple(settings.METRICS_ALLOWED_IPS))


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not scrape_allowed(request):
        if is_proxied(request):
            reason = "a proxied request needs the METRICS_TOKEN bearer token"
        else:
            reason = "METRICS_TOKEN bearer token or METRICS_ALLOWED_IPS"
        return JsonResponse({"error": f"forbidden: {reason}"}, status=403)
    return HttpResponse(metrics.render(), content_type=CONTENT_TYPE_PLAIN_0_0_4)


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process answers HTTP. Nothing else is checked: a restart would not fix Redis."""
    return JsonResponse({"alive": True})


def check_redis() -> None:
    """The queue's Redis answers; on a cluster, at least one master does.

    The app's own client: REDIS_SOCKET_TIMEOUT (0.5 s) bounds the probe. A
    cluster client's plain PING goes to every master, so one dead master
    would fail readiness on every web node and a load balancer would stop all
    ingest, while the other masters' shards can still take events (only the
    dead master's shards answer 503). Its outage is the queue shard alerts'
    business, not the web nodes'.
    """
    client = queue.get_redis()
    if not isinstance(client, RedisCluster):
        client.ping()
        return
    first_error: Exception | None = None
    for node in client.get_primaries():
        try:
            client.ping(target_nodes=node)
            return
        except queue.ERRORS as exc:
            first_error = first_error or exc
    raise first_error or redis.RedisError("the cluster has no master")


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


CHECKS = {"redis": (check_redis, queue.ERRORS), "postgresql": (check_postgresql, DjangoDatabaseError)}


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
