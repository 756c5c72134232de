"""Settings for abflow, all read from the environment in this one place.

Every knob has a safe default for a developer's machine. In production
(``ABFLOW_ENV=production``) the process refuses to start with ``DEBUG`` on,
a weak ``SECRET_KEY`` or no ``METRICS_TOKEN`` (nor allow-list), because those
leak data; HTTPS redirect, HSTS and secure cookies are on (behind a TLS proxy).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

import dj_database_url
from corsheaders.defaults import default_headers as default_cors_headers
from django.core.exceptions import ImproperlyConfigured

from server.defaults import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL

BASE_DIR = Path(__file__).resolve().parent.parent


# --- typed helpers -----------------------------------------------------------


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below {minimum}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below {minimum}")
    return value


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


# --- core ---------------------------------------------------------------------

DEV_SECRET_KEY = "dev-insecure-abflow-secret-key-change-me"

ABFLOW_ENV = env_str("ABFLOW_ENV", "development")
IS_PRODUCTION = ABFLOW_ENV == "production"
DEBUG = env_bool("DEBUG", not IS_PRODUCTION)
SECRET_KEY = env_str("SECRET_KEY", DEV_SECRET_KEY)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "" if IS_PRODUCTION else "localhost,127.0.0.1,[::1],testserver")

if IS_PRODUCTION:
    if DEBUG:
        raise ImproperlyConfigured("DEBUG must be off when ABFLOW_ENV=production")
    # Django's own deploy check (security.W009) calls shorter or repetitive keys weak.
    if SECRET_KEY == DEV_SECRET_KEY or len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5:
        raise ImproperlyConfigured("Set a real SECRET_KEY (50+ random characters) when ABFLOW_ENV=production")
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("Set ALLOWED_HOSTS when ABFLOW_ENV=production")
    # Probes and a same-host Prometheus address the web server directly (Host:
    # 127.0.0.1:8000, e.g. the compose healthcheck); without these they get 400.
    ALLOWED_HOSTS += [host for host in ("127.0.0.1", "[::1]", "localhost") if host not in ALLOWED_HOSTS]

# --- security: production behind a TLS-terminating proxy (docs/operations.md) --


def proxy_ssl_header(raw: str) -> tuple[str, str] | None:
    """``"X-Forwarded-Proto"`` -> ``("HTTP_X_FORWARDED_PROTO", "https")``; ``"Name=value"``; empty -> None."""
    name, _, value = raw.strip().partition("=")
    name, value = name.strip(), value.strip()
    if not name and not value:
        return None
    if not re.fullmatch(r"[A-Za-z0-9-]+", name) or not re.fullmatch(r"[!-~]*", value):
        raise ImproperlyConfigured(f"SECURE_PROXY_SSL_HEADER={raw!r} is not a header name, optionally =value")
    return "HTTP_" + name.upper().replace("-", "_"), value or "https"


# The proxy terminates TLS and tells the web server the client's scheme in this
# header, "Name" (value https) or "Name=value"; empty: no such proxy. Only
# safe when the proxy always sets it (a client's own copy must never pass).
SECURE_PROXY_SSL_HEADER = proxy_ssl_header(
    env_str("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto" if IS_PRODUCTION else "")
)
# Plain HTTP is redirected to HTTPS, except for the callers on the internal
# network that speak plain HTTP to the web server: probes, the Prometheus scrape
# (its own token guards it), and ingest: a redirected POST comes back as a GET
# (browsers rewrite 301/302), so the event would be lost instead of stored.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", IS_PRODUCTION)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$", r"^api/rest/front/ab-events?/$"]
# HSTS: browsers then use HTTPS only, for this long. A year by default; start
# lower (3600) on a first rollout, since a broken certificate then locks users
# out for that long. Subdomains of the abflow host are included; preload (a
# commitment for the whole registrable domain, submitted by hand) is opt-in.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if IS_PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# W021 only says "not preloaded": that is the documented default choice above.
SILENCED_SYSTEM_CHECKS = ["security.W021"]
# Session and CSRF cookies only travel over HTTPS (the admin, the report, and
# a logged-in user's ingest requests, which browsers send over HTTPS anyway).
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", IS_PRODUCTION)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", IS_PRODUCTION)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "rest_framework.authtoken",
    # The OpenAPI schema (server/apps/front/schema.py) and its offline Swagger UI assets.
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "server.apps.front",
]

MIDDLEWARE = [
    # First, so the ingest latency histogram covers every layer below it.
    "server.apps.front.ops.metrics.IngestLatencyMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves collected static files (abtrack.js, admin) from the web server, no nginx needed.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Inflates gzip bodies and enforces the body caps (413) before any view reads them.
    "server.apps.front.ingest.middleware.IngestBodyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Django's, skipped under AB_INGEST_PATH_PREFIX (flash messages are the admin's).
    "server.apps.front.ingest.middleware.AdminMessageMiddleware",
    # Kept for the JSON endpoints too: their answers have always carried X-Frame-Options.
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "server.urls"
WSGI_APPLICATION = "server.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "server" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- data stores --------------------------------------------------------------

# With no DATABASE_URL / REDIS_URL the embedded servers that `make run` and
# `make test` start (devtools/embedded.py, ports in server/defaults.py) are used, so any `manage.py` command
# run beside `make run` talks to the same data.
DATABASE_URL = env_str("DATABASE_URL", DEFAULT_DATABASE_URL)
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60, minimum=0),
        conn_health_checks=True,
    )
}
DATABASES["default"].setdefault("OPTIONS", {})
# A dead database must fail fast in the drain, not hang a worker for minutes.
DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", env_int("DB_CONNECT_TIMEOUT", 3, minimum=1))

REDIS_URL = env_str("REDIS_URL", DEFAULT_REDIS_URL)
# Short socket timeouts: when Redis is down the endpoint must answer 503 in
# well under a second instead of hanging the browser's request.
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 0.5, minimum=0.05)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# WhiteNoise: `collectstatic` writes pre-compressed copies; with finders on,
# the app's static files are served even where collectstatic was never run.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = env_bool("WHITENOISE_USE_FINDERS", True)

# --- REST framework -----------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "server.apps.front.ingest.parsers.ABEventJSONParser",
        "server.apps.front.ingest.parsers.PlainTextJSONParser",
    ],
    "EXCEPTION_HANDLER": "server.apps.front.ingest.errors.envelope_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Reverse proxies in front of the web server whose X-Forwarded-For is trusted for
    # the client IP (throttling). 0: use REMOTE_ADDR, a client cannot spoof it.
    "NUM_PROXIES": env_int("NUM_PROXIES", 0, minimum=0),
}

# The OpenAPI contract (server/apps/front/schema.py): GET /api/schema/, committed as docs/openapi.yaml.
SPECTACULAR_SETTINGS = {
    "TITLE": "abflow API",
    "DESCRIPTION": "Event ingest for the onboarding A/B test, the staff report and the operations probes. "
    'Every ingest rejection answers {"success": false, "errors": {<field>: [messages]}}.',
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from the drf-spectacular-sidecar package: the page works offline, no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "server.apps.front.schema.postprocess",
    ],
}

# --- ingestion pipeline ------------------------------------------------------

# Seconds between beat-scheduled drains of the Redis queue into PostgreSQL.
AB_FLUSH_INTERVAL = env_float("AB_FLUSH_INTERVAL", 2.0, minimum=0.1)
# Events claimed and written per batch (one COPY + one INSERT). 5000, not 2000: the rollup triggers'
# per-statement work and the round trips are paid per batch; a 200,000-event backlog drained in 23.6-27.4 s
# instead of 35.4-39.1 s (alternating runs, docs/performance.md#partitioned-ab_events-issue-12), worker RSS
# 187 MB instead of 182.
AB_BATCH_SIZE = env_int("AB_BATCH_SIZE", 5000, minimum=1)
# Drains at once in one worker process when the queue holds more than a batch (a thread each, with its own
# database connection; pipeline/writer.py drain_concurrently). 2: a 1,000,000-event backlog drained in
# 35.8 s instead of 57.7 s on 2 cores (docs/performance.md); 1 = one drain per run.
AB_DRAIN_THREADS = env_int("AB_DRAIN_THREADS", 2, minimum=1)
# One drain run stops claiming new batches after this many seconds, so runs
# stay short and a lease never outlives its worker by much.
AB_DRAIN_BUDGET = env_float("AB_DRAIN_BUDGET", 20.0, minimum=0.1)
# A claimed batch whose worker died returns to the queue after this long.
AB_LEASE_SECONDS = env_int("AB_LEASE_SECONDS", 60, minimum=1)
# Seconds one statement of the writer may run (PostgreSQL statement_timeout,
# set per batch transaction; 0 = no bound). The solo worker enforces no Celery
# time limit, so this is what frees a worker stuck behind a lock or a hung
# server: the batch goes back to the queue like in an outage. Keep it below
# AB_LEASE_SECONDS; a normal batch takes well under a second.
AB_WRITER_STATEMENT_TIMEOUT = env_float("AB_WRITER_STATEMENT_TIMEOUT", 30.0, minimum=0.0)
# ab_events is partitioned by month (docs/operations.md#partitions): beat creates this many months'
# partitions ahead of the current one, every AB_PARTITION_INTERVAL seconds (and moves rows that landed in the
# DEFAULT partition into a partition of their own month).
AB_PARTITIONS_AHEAD = env_int("AB_PARTITIONS_AHEAD", 3, minimum=1)
AB_PARTITION_INTERVAL = env_float("AB_PARTITION_INTERVAL", 3600.0, minimum=1.0)
# A batch reclaimed this many times (its worker keeps dying on it) goes to the
# dead-letter list instead of crashing workers forever.
AB_MAX_ATTEMPTS = env_int("AB_MAX_ATTEMPTS", 5, minimum=1)
# Backpressure: above this many queued events the endpoint answers 503.
AB_QUEUE_MAX = env_int("AB_QUEUE_MAX", 5_000_000, minimum=1)
# Seconds a 503 asks the client to wait before retrying.
AB_RETRY_AFTER = env_int("AB_RETRY_AFTER", 5, minimum=1)
# Validation caps (see serializers.py).
AB_MAX_METADATA_BYTES = env_int("AB_MAX_METADATA_BYTES", 4096, minimum=2)
AB_MAX_METADATA_DEPTH = env_int("AB_MAX_METADATA_DEPTH", 5, minimum=1)
AB_MAX_STEP_NUMBER = env_int("AB_MAX_STEP_NUMBER", 1000, minimum=0)

# --- browser delivery (docs/frontend.md) -------------------------------------

# Events in one POST /api/rest/front/ab-events/ batch.
AB_BATCH_MAX_EVENTS = env_int("AB_BATCH_MAX_EVENTS", 500, minimum=1)
# One event's JSON (any unknown keys included): bigger ones are rejected by index.
AB_MAX_EVENT_BYTES = env_int("AB_MAX_EVENT_BYTES", 8192, minimum=256)
# Request body cap, both as sent (Content-Length) and, for gzip bodies, after
# inflating (a gzip bomb stops here): 413 above it.
AB_MAX_BODY_BYTES = env_int("AB_MAX_BODY_BYTES", 1_048_576, minimum=1024)
# Paths whose request bodies the middleware inflates and caps.
AB_INGEST_PATH_PREFIX = "/api/rest/front/"
# client_ts corrected by the batch's sent_at is clamped to
# [received_at - AB_CLIENT_TS_MAX_AGE seconds, received_at].
AB_CLIENT_TS_MAX_AGE = env_int("AB_CLIENT_TS_MAX_AGE", 7 * 86_400, minimum=0)
# Per-IP rate limit on both ingest endpoints, DRF syntax ("100/s", "6000/min").
# Empty (default): off, the frontend is trusted.
AB_THROTTLE_RATE = env_str("AB_THROTTLE_RATE", "")
# The web tier answers the common anonymous single event without Django's request
# cycle, byte for byte as Django would (ingest/fastlane.py); off: Django serves all.
AB_FAST_LANE = env_bool("AB_FAST_LANE", True)

# The throttle's counters live in Redis, shared by all web workers.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "throttle": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "abflow-throttle",
        "OPTIONS": {"socket_timeout": REDIS_SOCKET_TIMEOUT, "socket_connect_timeout": REDIS_SOCKET_TIMEOUT},
    },
}

# CORS (django-cors-headers) for the frontend on other origins.
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS")
# Only the ingest endpoints: the staff report is not for other origins.
CORS_URLS_REGEX = r"^/api/rest/front/ab-events?/$"
# Browsers cache a preflight this long (Chromium caps it at 2 hours).
CORS_PREFLIGHT_MAX_AGE = env_int("CORS_PREFLIGHT_MAX_AGE", 7200, minimum=0)
# Session-authenticated users' cookies may come along; DRF then enforces CSRF.
CORS_ALLOW_CREDENTIALS = env_bool("CORS_ALLOW_CREDENTIALS", True)
CORS_ALLOW_HEADERS = (*default_cors_headers, "content-encoding")
# The client backs off by Retry-After on 503/429; it can only read it if exposed.
CORS_EXPOSE_HEADERS = ["Retry-After"]
# A cross-origin POST with a session cookie passes Django's CSRF Origin check
# only from a trusted origin; by default the same allow-list.
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS") or CORS_ALLOWED_ORIGINS

# Namespace of the queue's Redis keys: several deployments (or test runs) can
# share one Redis server with different prefixes.
AB_QUEUE_KEY_PREFIX = env_str("AB_QUEUE_KEY_PREFIX", "ab")
# The queue is this many independent shards (one hash tag, so one Redis
# Cluster slot, each); events go to a shard by session_id. Changing it on a
# running system loses nothing (pipeline/queue.py, docs/scaling.md).
AB_QUEUE_SHARDS = env_int("AB_QUEUE_SHARDS", 1, minimum=1)
# The queue's Redis; empty: REDIS_URL. With AB_QUEUE_REDIS_CLUSTER the URL
# names any node of a Redis Cluster (redis-py's RedisCluster). The Celery
# broker (CELERY_BROKER_URL) stays a plain Redis or RabbitMQ.
AB_QUEUE_REDIS_URL = env_str("AB_QUEUE_REDIS_URL", "")
AB_QUEUE_REDIS_CLUSTER = env_bool("AB_QUEUE_REDIS_CLUSTER", False)

# --- experiment report (docs/report.md) ------------------------------------------

# The planned assignment split, for the sample-ratio-mismatch check.
# Empty: the experiment's own planned split (server/apps/front/experiment.py, DEFAULT_SPLIT).
AB_EXPECTED_SPLIT = env_str("AB_EXPECTED_SPLIT", "")
# Use the always-valid (sequential) interval for the verdict: for teams that look every day.
AB_REPORT_SEQUENTIAL = env_bool("AB_REPORT_SEQUENTIAL", False)
# Power and duration (report/power.py): the relative lift of the completion rate the experiment should be
# able to detect (0.05: +5% of the control's rate), and with what probability.
AB_TARGET_LIFT = env_float("AB_TARGET_LIFT", 0.05, minimum=0.0001)
AB_POWER = env_float("AB_POWER", 0.8, minimum=0.01)
if AB_POWER >= 1:
    raise ImproperlyConfigured(f"AB_POWER must be below 1, got {AB_POWER}")
# The report's survival, power, lift-over-time and data-quality sections (report/insights.py); they read
# ab_sessions per second and day and the selected sessions' events, so a huge all-time report may turn them off.
AB_REPORT_INSIGHTS = env_bool("AB_REPORT_INSIGHTS", True)
# "Completed within T" (report/survival.py): T in seconds since assignment.
AB_COMPLETE_WITHIN_SECONDS = env_float("AB_COMPLETE_WITHIN_SECONDS", 600.0, minimum=1.0)

# --- operations (docs/operations.md) -------------------------------------------

# GET /metrics is served to a request with "Authorization: Bearer $METRICS_TOKEN",
# or to a direct request (no proxy's forwarding headers, ops_views.is_proxied)
# from these addresses/networks (REMOTE_ADDR). Loopback is allowed by default
# only in development: in production the web server sits behind a local reverse
# proxy, so every request from the internet arrives from 127.0.0.1.
METRICS_ALLOWED_IPS = env_list("METRICS_ALLOWED_IPS", "" if IS_PRODUCTION else "127.0.0.1,::1")
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
METRICS_TOKEN_MIN_LENGTH = 24
for _network in METRICS_ALLOWED_IPS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError as exc:
        raise ImproperlyConfigured(f"METRICS_ALLOWED_IPS: {_network!r} is not an address or network") from exc
if IS_PRODUCTION:
    # Refuse to start rather than serve an unguarded or unreachable /metrics:
    # the operator decides who scrapes (docs/operations.md, "Who may scrape").
    if not METRICS_TOKEN and not METRICS_ALLOWED_IPS:
        raise ImproperlyConfigured(
            "Set METRICS_TOKEN (or METRICS_ALLOWED_IPS for direct scrapes) when ABFLOW_ENV=production"
        )
    if METRICS_TOKEN and len(METRICS_TOKEN) < METRICS_TOKEN_MIN_LENGTH:
        raise ImproperlyConfigured(
            f"METRICS_TOKEN must be {METRICS_TOKEN_MIN_LENGTH}+ characters when ABFLOW_ENV=production"
        )
# Rejected requests are logged per class (reason, field) with a count, at most
# once per this many seconds per process, never one line per event.
AB_REJECTION_LOG_INTERVAL = env_float("AB_REJECTION_LOG_INTERVAL", 60.0, minimum=0.0)

# --- Celery -------------------------------------------------------------------

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
# kombu has no Redis Cluster transport: a cluster node as broker would fail
# on the first MOVED, far from the cause. Refuse it at start-up instead.
if AB_QUEUE_REDIS_CLUSTER and CELERY_BROKER_URL == (AB_QUEUE_REDIS_URL or REDIS_URL):
    raise ImproperlyConfigured(
        "AB_QUEUE_REDIS_CLUSTER is on and CELERY_BROKER_URL is the queue's cluster URL: "
        "set CELERY_BROKER_URL to a plain Redis or RabbitMQ"
    )
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = TIME_ZONE
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Keep Django's LOGGING (JSON lines) in the worker instead of Celery's format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE = {
    "ab-flush": {
        "task": "worker.tasks.flush_ab_events",
        "schedule": AB_FLUSH_INTERVAL,
        # A stopped worker must not come back to a pile of stale drain runs.
        "options": {"expires": AB_FLUSH_INTERVAL},
    },
    "ab-partitions": {
        "task": "worker.tasks.maintain_partitions",
        "schedule": AB_PARTITION_INTERVAL,
        "options": {"expires": AB_PARTITION_INTERVAL},
    },
}

# --- logging ------------------------------------------------------------------

# LOG_FORMAT=json (default): one JSON object per line, with the fields passed
# in ``extra`` (drain runs, rejection summaries) as top-level keys, for log
# shippers. LOG_FORMAT=plain for reading in a terminal.
LOG_FORMAT = env_str("LOG_FORMAT", "json").strip().lower()
if LOG_FORMAT not in {"json", "plain"}:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} is not json or plain")

# The level names logging.config knows, WARN being an alias of WARNING (as
# for the web server, deploy/). Anything else stops start-up rather than
# logging at a level nobody chose.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_LEVEL_ALIASES = {"WARN": "WARNING"}


def log_level(raw: str, *, variable: str = "LOG_LEVEL") -> str:
    """``"warning"`` / ``" Warning "`` -> ``"WARNING"``; an unknown level stops start-up naming the variable."""
    level = raw.strip().upper()
    level = LOG_LEVEL_ALIASES.get(level, level)
    if level not in LOG_LEVELS:
        raise ImproperlyConfigured(f"{variable}={raw!r} is not one of {', '.join(LOG_LEVELS)} (any case)")
    return level


# Any case: LOG_LEVEL=warning used to crash start-up in logging.config.
LOG_LEVEL = log_level(env_str("LOG_LEVEL", "") or "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own console handler would print each line a second time, unformatted.
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # One line per 4xx is one line per bad event: rejections are logged
        # aggregated per class instead (metrics.RejectionLog); 5xx stay.
        "django.request": {"level": "ERROR"},
        "django.db.backends": {"level": "WARNING"},
        # Celery's "received" / "succeeded" / "sending due task" lines, three
        # every AB_FLUSH_INTERVAL: the drain's own "ab_drain" line replaces them.
        "celery.app.trace": {"level": "WARNING"},
        "celery.worker.strategy": {"level": "WARNING"},
        "celery.beat": {"level": "WARNING"},
    },
}
