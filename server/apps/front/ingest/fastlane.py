"""The fast lane: the common ingest request answered without Django's request cycle, byte for byte as Django would.

Nearly every request to the ingest endpoints is the same: an anonymous client
(no session cookie, no token), a small JSON body, a plain ``Accept``, valid
events. For a single event Django and DRF spent ~430 of the ~550 us of CPU a
request cost in the application (building the request, eleven middleware,
DRF's request wrapping, authentication, throttling, negotiation, rendering)
to reach an answer known in advance: 201 ``{"success":true}`` with a fixed set
of headers. On 2 cores that CPU was the web tier's tail latency
(docs/performance.md); for the small batches browsers send, it was most of a
request's cost.

:class:`IngestFastLane` is a WSGI middleware in front of Django's handler. For
such a request to ``POST /api/rest/front/ab-event/`` or ``.../ab-events/`` it
validates the events with the same code (``service.validate``), queues them
with the same ``service.enqueue`` and answers itself. It only *answers*; it never *refuses*: any request it does not
recognise as plainly valid (another path or method, a query string, a cookie
Django reads, credentials, gzip, another Accept or Content-Type, a single
event's ``sent_at``, JSON orjson refuses, a batch envelope that is not plainly
valid, any event the validation rejects, a disallowed Host, an HTTP request
that SECURE_SSL_REDIRECT would redirect) goes to Django
untouched, so every error message and every unusual answer is Django's and
DRF's own. After the event is queued, only the queue's own failures (Redis
down, queue full) are answered here, as the view answers them (503 +
Retry-After): falling back then could queue the event twice.

Its answers are Django's: the headers are made by the middleware that makes
them in Django's path (SecurityMiddleware's and CorsMiddleware's own code,
run once per distinct value and cached), the bodies by DRF's JSONRenderer,
the ``Allow`` from the view's own class; what it does per request is
assemble them in Django's order. tests/ingest/test_fastlane.py holds every
answer equal to Django's, header order included, for the recorded cases and
for generated requests, and the queued event equal too.

The lane models the middleware stack and view configuration it was written
against (:data:`MODELLED_MIDDLEWARE`, the view's classes); if settings differ
(another middleware, throttling on, disallowed user agents, DRF's versioning
or another exception handler, ``AB_FAST_LANE=false``) it switches itself off
and Django serves every request, as before; per request it also steps aside
while the authentication breaker is open and while a corsheaders signal
handler is connected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from io import BytesIO
from typing import Any

import orjson
from corsheaders.middleware import CorsMiddleware
from corsheaders.signals import check_request_enabled
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port, validate_host
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.urls import resolve
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.settings import api_settings

from server.apps.front.ingest import views
from server.apps.front.ingest.authentication import OUTAGE
from server.apps.front.ingest.errors import QUEUE_FULL_MESSAGE, QueueUnavailable, envelope, envelope_exception_handler
from server.apps.front.ingest.parsers import ABEventJSONParser, PlainTextJSONParser
from server.apps.front.ingest.serializers import BatchSerializer, fast_limits
from server.apps.front.ingest.service import enqueue, event_validator, validate
from server.apps.front.ingest.throttling import IngestRateThrottle
from server.apps.front.ops import metrics
from server.apps.front.pipeline import queue

log = logging.getLogger(__name__)

PATH = "/api/rest/front/ab-event/"  # one event: 201 {"success":true}
BATCH_PATH = "/api/rest/front/ab-events/"  # a batch: 200 {"success":true,"accepted":n,"rejected":[]}
# The view each path must resolve to for the lane to answer for it.
_VIEWS = {PATH: views.track_ab_event, BATCH_PATH: views.track_ab_events}

# The stack whose effect on this one request the lane reproduces; any other
# MIDDLEWARE turns it off. What each does here, for an anonymous JSON POST:
MODELLED_MIDDLEWARE = (
    "server.apps.front.ops.metrics.IngestLatencyMiddleware",  # the latency histogram: observed here too
    "corsheaders.middleware.CorsMiddleware",  # Vary: origin, access-control-* for an allowed Origin
    "django.middleware.security.SecurityMiddleware",  # HSTS (secure requests), nosniff, Referrer, COOP; redirect
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files only: nothing
    "server.apps.front.ingest.middleware.IngestBodyMiddleware",  # gzip and caps: no gzip here, length checked
    "django.contrib.sessions.middleware.SessionMiddleware",  # Vary: Cookie (the user lookup reads the session)
    "django.middleware.common.CommonMiddleware",  # Host check (400 otherwise), Content-Length
    "django.middleware.csrf.CsrfViewMiddleware",  # nothing without a CSRF cookie (DRF checks sessions only)
    "django.contrib.auth.middleware.AuthenticationMiddleware",  # anonymous without a session cookie
    "server.apps.front.ingest.middleware.AdminMessageMiddleware",  # skipped under the ingest prefix
    "django.middleware.clickjacking.XFrameOptionsMiddleware",  # X-Frame-Options
)

# What fetch() and sendBeacon() send; DRF parses each with orjson first, whatever the charset.
_CONTENT_TYPES = frozenset(
    {
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=utf-8",
        "application/json; charset=UTF-8",
        "application/json;charset=UTF-8",
        "text/plain;charset=UTF-8",
        "text/plain; charset=UTF-8",
        "text/plain;charset=utf-8",
        "text/plain; charset=utf-8",
    }
)
# The request headers that make Django's answer depend on more than the lane models.
_DJANGO_ONLY_HEADERS = (
    "HTTP_AUTHORIZATION",  # token authentication
    "HTTP_CONTENT_ENCODING",  # gzip: the body middleware inflates it
    "HTTP_ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK",  # a CORS answer that depends on it
)
_SCRIPT_URLS = ("SCRIPT_URL", "REDIRECT_URL")
_MAX_CACHED = 256  # distinct Host (allowed or not) and Origin values remembered; others are computed each time

_Answer = tuple[str, list[tuple[str, str]], bytes]


def _status_line(code: int) -> str:
    return f"{code} {HTTPStatus(code).phrase}"


@dataclass(frozen=True)
class Endpoint:
    route: str  # the URL pattern: the latency histogram's label
    allow: str  # DRF's Allow header, from the view's class


@dataclass(frozen=True)
class LaneConfig:
    """Everything the lane reads from settings and the view, computed once (and again when settings change)."""

    enabled: bool
    reason: str  # why it is off, for the log
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    xframe: str = "DENY"
    vary: str = "Cookie"
    cors_enabled: bool = False
    security_plain: tuple[tuple[str, str], ...] = ()
    security_secure: tuple[tuple[str, str], ...] = ()
    redirect_insecure: bool = False
    proxy_ssl_header: tuple[str, str] | None = None
    cookie_names: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    max_body: int = 0
    retry_after: str = ""
    created: bytes = b""
    batch_limit: int = 0
    queue_down: bytes = b""
    queue_full: bytes = b""


def _off(reason: str) -> LaneConfig:
    return LaneConfig(enabled=False, reason=reason)


def _security_headers(secure: bool) -> tuple[tuple[str, str], ...]:
    """What SecurityMiddleware adds to a response of a (secure or plain) request, by its own code."""
    request = HttpRequest()
    request.is_secure = lambda: secure  # type: ignore[method-assign]
    response = HttpResponse()
    del response["Content-Type"]
    SecurityMiddleware(lambda r: response).process_response(request, response)
    return tuple(response.items())


def _view_mismatch(path: str) -> str:
    """Why the view at ``path`` is not the one the lane answers for, or ""."""
    match = resolve(path)
    if match.func is not _VIEWS[path]:
        return f"{path} resolves to {match.func!r}"
    view = match.func.cls
    expected = {
        "authentication_classes": list(views.INGEST_AUTHENTICATION),
        "renderer_classes": list(views.INGEST_RENDERERS),
        "content_negotiation_class": views.IngestContentNegotiation,
        "permission_classes": [AllowAny],
        "throttle_classes": [IngestRateThrottle],
        "parser_classes": [ABEventJSONParser, PlainTextJSONParser],  # DRF's DEFAULT_PARSER_CLASSES
    }
    for name, value in expected.items():
        actual = getattr(view, name)
        if (list(actual) if isinstance(value, list) else actual) != value:
            return f"the view's {name} changed"
    if view.versioning_class is not None:
        return "the view has a versioning class"
    if api_settings.EXCEPTION_HANDLER is not envelope_exception_handler:
        return "REST_FRAMEWORK's EXCEPTION_HANDLER is not the envelope's"
    if api_settings.UNAUTHENTICATED_USER is not AnonymousUser:
        return "REST_FRAMEWORK's UNAUTHENTICATED_USER is not AnonymousUser"
    return ""


def _endpoint(path: str) -> Endpoint:
    match = resolve(path)
    return Endpoint(route=match.route, allow=", ".join(match.func.cls().allowed_methods))


def build_config() -> LaneConfig:
    if not getattr(settings, "AB_FAST_LANE", False):
        return _off("AB_FAST_LANE is off")
    if tuple(settings.MIDDLEWARE) != MODELLED_MIDDLEWARE:
        return _off("MIDDLEWARE is not the stack the lane models")
    if settings.AB_THROTTLE_RATE:
        return _off("AB_THROTTLE_RATE is set (throttling is DRF's)")
    if settings.DISALLOWED_USER_AGENTS or settings.PREPEND_WWW or settings.USE_X_FORWARDED_HOST:
        return _off("DISALLOWED_USER_AGENTS, PREPEND_WWW or USE_X_FORWARDED_HOST is set")
    if settings.FORCE_SCRIPT_NAME is not None:
        return _off("FORCE_SCRIPT_NAME is set")
    for path in _VIEWS:
        mismatch = _view_mismatch(path)
        if mismatch:
            return _off(mismatch)
    renderer = JSONRenderer()
    cors = CorsMiddleware(lambda r: HttpResponse())
    security = SecurityMiddleware(lambda r: HttpResponse())
    cors_enabled = {cors.is_enabled(_template_request(path)) for path in _VIEWS}
    exempt = {any(pattern.search(path.lstrip("/")) for pattern in security.redirect_exempt) for path in _VIEWS}
    if len(cors_enabled) != 1 or len(exempt) != 1:
        return _off("CORS_URLS_REGEX or SECURE_REDIRECT_EXEMPT treats the two ingest paths differently")
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:  # Django's own default in DEBUG (HttpRequest.get_host)
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]
    proxy = settings.SECURE_PROXY_SSL_HEADER
    return LaneConfig(
        enabled=True,
        reason="",
        endpoints={path: _endpoint(path) for path in _VIEWS},
        xframe=XFrameOptionsMiddleware(lambda r: HttpResponse()).get_xframe_options_value(
            HttpRequest(), HttpResponse()
        ),
        # SessionMiddleware patches Vary first (the session was read), CorsMiddleware after it.
        vary="Cookie, origin" if True in cors_enabled else "Cookie",
        cors_enabled=True in cors_enabled,
        security_plain=_security_headers(False),
        security_secure=_security_headers(True),
        redirect_insecure=security.redirect and True not in exempt,
        proxy_ssl_header=(proxy[0], proxy[1]) if proxy else None,
        cookie_names=(settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME),
        allowed_hosts=tuple(allowed_hosts),
        max_body=settings.AB_MAX_BODY_BYTES,
        retry_after=str(settings.AB_RETRY_AFTER),
        created=renderer.render({"success": True}),
        batch_limit=settings.AB_BATCH_MAX_EVENTS,
        queue_down=renderer.render(envelope({"queue": [str(QueueUnavailable.default_detail)]})),
        queue_full=renderer.render(envelope({"queue": [QUEUE_FULL_MESSAGE]})),
    )


def _template_request(path: str, origin: str | None = None) -> HttpRequest:
    request = HttpRequest()
    request.method = "POST"
    request.path = request.path_info = path
    if origin is not None:
        request.META["HTTP_ORIGIN"] = origin
    return request


class _Unreadable:
    """A request body whose read failed in the lane, failing again the same way for Django."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def read(self, *args: Any) -> bytes:
        raise self.error

    readline = read


class IngestFastLane:
    """WSGI middleware: answers the common ingest request itself, hands everything else to ``app``."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self._config: LaneConfig | None = None
        self._hosts: dict[str, bool] = {}
        self._cors: dict[str, tuple[tuple[str, str], ...]] = {}
        setting_changed.connect(self._settings_changed)

    def _settings_changed(self, **kwargs: Any) -> None:
        self._config = None

    @property
    def config(self) -> LaneConfig:
        config = self._config
        if config is None:
            config = self._config = build_config()
            self._hosts = {}
            self._cors = {}
            if not config.enabled:
                log.info("ingest fast lane off: %s", config.reason)
        return config

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        answer = self.answer(environ)
        if answer is None:
            return self.app(environ, start_response)
        status, headers, body = answer
        start_response(status, headers)
        return [body]

    # --- per request -------------------------------------------------------------------

    def answer(self, environ: dict[str, Any]) -> _Answer | None:
        """The answer to a request the lane serves, or None (and the request unchanged) for Django."""
        path = environ.get("PATH_INFO")
        if path not in _VIEWS or environ.get("REQUEST_METHOD") != "POST":
            return None
        config = self.config
        if not config.enabled or not self._plain(environ, config):
            return None
        # While the authentication breaker is open (a PostgreSQL error in the last seconds) Django's
        # authentication skips the user lookup, so its answer lacks "Vary: Cookie"; and a corsheaders
        # signal handler connected after start-up decides per request. Both: Django's path.
        if OUTAGE.is_down() or check_request_enabled.receivers:
            return None
        started = time.perf_counter()
        secure = self._is_secure(environ, config)
        if (config.redirect_insecure and not secure) or not self._host_allowed(environ, config):
            return None
        body = self._read_body(environ, config)
        if body is None:
            return None
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None  # Django's parser tries harder, and words the error
        try:
            batch = self._valid_batch(raw, config) if path == BATCH_PATH else self._valid_event(raw)
        except Exception:  # nothing is queued yet: Django's path runs the same code and answers what it raises
            return None
        if batch is None:
            return None
        events, sent_at, accepted = batch
        endpoint = config.endpoints[path]
        try:
            enqueue(events, sent_at=sent_at)
        except queue.QueueFull:
            return self._respond(environ, config, endpoint, 503, config.queue_full, secure, started, "queue_full")
        except queue.ERRORS:
            return self._respond(environ, config, endpoint, 503, config.queue_down, secure, started, "redis_down")
        except Exception:
            # Anything else comes from encoding the items, before the push (whose failures are the queue
            # errors above): nothing was queued, and Django's path meets the same error (its JSON 500).
            return None
        metrics.EVENTS_ACCEPTED.inc(accepted)
        if path == PATH:
            return self._respond(environ, config, endpoint, 201, config.created, secure, started)
        body = JSONRenderer().render({"success": True, "accepted": accepted, "rejected": []})
        return self._respond(environ, config, endpoint, 200, body, secure, started)

    @staticmethod
    def _plain(environ: dict[str, Any], config: LaneConfig) -> bool:
        """An anonymous JSON POST with nothing Django would treat specially."""
        # A script prefix (SCRIPT_NAME, or Apache's SCRIPT_URL / REDIRECT_URL) changes request.path, which the
        # redirect exemptions and the latency middleware match on.
        if environ.get("QUERY_STRING") or environ.get("SCRIPT_NAME") or any(k in environ for k in _SCRIPT_URLS):
            return False
        if environ.get("CONTENT_TYPE") not in _CONTENT_TYPES:
            return False
        if environ.get("HTTP_ACCEPT") not in views.PLAIN_ACCEPTS:
            return False
        if any(name in environ for name in _DJANGO_ONLY_HEADERS):
            return False
        cookie = environ.get("HTTP_COOKIE")
        # Any mention of the session or CSRF cookie's name: Django reads them (sessions, CSRF).
        return cookie is None or not any(name in cookie for name in config.cookie_names)

    @staticmethod
    def _is_secure(environ: dict[str, Any], config: LaneConfig) -> bool:
        # HttpRequest.scheme: the trusted proxy's header when present, else the server's scheme.
        if config.proxy_ssl_header is not None:
            header, secure_value = config.proxy_ssl_header
            value = environ.get(header)
            if value is not None:
                return value.split(",", 1)[0].strip() == secure_value
        return environ.get("wsgi.url_scheme") == "https"

    def _host_allowed(self, environ: dict[str, Any], config: LaneConfig) -> bool:
        host = environ.get("HTTP_HOST")
        if not host:
            return False  # Django builds it from SERVER_NAME: its path
        allowed = self._hosts.get(host)
        if allowed is None:
            domain, _port = split_domain_port(host)
            allowed = bool(domain) and validate_host(domain, config.allowed_hosts)
            if len(self._hosts) < _MAX_CACHED:
                self._hosts[host] = allowed
        return allowed

    @staticmethod
    def _read_body(environ: dict[str, Any], config: LaneConfig) -> bytes | None:
        """The body, read whole; on None Django reads the same bytes from a fresh stream."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return None
        if not 0 < length <= config.max_body:
            return None
        try:
            body = environ["wsgi.input"].read(length)
        except Exception as exc:  # the client went away mid-body (OSError under most WSGI servers)
            environ["wsgi.input"] = _Unreadable(exc)  # Django meets the same error: its 400
            return None
        environ["wsgi.input"] = BytesIO(body)  # for Django, if the lane hands the request on
        return body if len(body) == length else None

    @staticmethod
    def _valid_event(raw: Any) -> tuple[list[dict[str, Any]], None, int] | None:
        """([the validated event], no sent_at, 1) for a single event the view would accept, else None."""
        # sent_at is validated by a DRF field in the view: Django's path.
        if type(raw) is not dict or raw.get("sent_at") is not None:
            return None
        data = event_validator().fast_validation(raw, fast_limits())
        return None if data is None else ([data], None, 1)

    @staticmethod
    def _valid_batch(raw: Any, config: LaneConfig) -> tuple[list[dict[str, Any]], Any, int] | None:
        """(the events to queue, sent_at, events accepted) for a batch whose every event is valid, else None."""
        if type(raw) is not dict:
            return None
        events = raw.get("events")
        if type(events) is not list or len(events) > config.batch_limit:
            return None
        sent_at = None
        if raw.get("sent_at") is not None:
            checked = BatchSerializer(data=raw)  # the envelope's own field parses the client's clock
            if not checked.is_valid():
                return None
            sent_at = checked.validated_data.get("sent_at")
        # The service's own validation; a batch with any rejected event goes to Django, which words
        # the rejections (nothing is queued before this point).
        valid, outcome = validate(events)
        if outcome.rejected:
            return None
        return valid, sent_at, outcome.accepted

    def _respond(
        self,
        environ: dict[str, Any],
        config: LaneConfig,
        endpoint: Endpoint,
        code: int,
        body: bytes,
        secure: bool,
        started: float,
        rejected: str = "",
    ) -> _Answer:
        # Django's order: DRF's Response (Content-Type; Retry-After from the exception handler; Allow),
        # then the middleware on the way out, innermost first.
        headers = [("Content-Type", "application/json")]
        if rejected:
            headers.append(("Retry-After", config.retry_after))
        headers += [
            ("Allow", endpoint.allow),
            ("X-Frame-Options", config.xframe),
            ("Content-Length", str(len(body))),
            ("Vary", config.vary),
        ]
        headers += config.security_secure if secure else config.security_plain
        if config.cors_enabled:
            origin = environ.get("HTTP_ORIGIN")
            if origin:
                headers += self._cors_headers(origin)
        if rejected:
            metrics.record_rejection(rejected)
        metrics.REQUEST_LATENCY.labels(endpoint.route, "POST", str(code)).observe(time.perf_counter() - started)
        return _status_line(code), headers, body

    def _cors_headers(self, origin: str) -> tuple[tuple[str, str], ...]:
        """The access-control-* headers CorsMiddleware adds for ``origin`` (none if not allowed): its own code."""
        headers = self._cors.get(origin)
        if headers is None:
            response = HttpResponse()
            before = set(response.headers)
            CorsMiddleware(lambda r: response).add_response_headers(_template_request(PATH, origin), response)
            headers = tuple((name, value) for name, value in response.items() if name not in before and name != "Vary")
            if len(self._cors) < _MAX_CACHED:
                self._cors[origin] = headers
        return headers
