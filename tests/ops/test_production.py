"""The production profile (ABFLOW_ENV=production), loaded for real in a fresh process.

Settings are read once per process, so each case starts ``python`` with the
environment an operator would set (deploy/.env.example) and looks at what the
process does: refuses to start, or the settings and answers it ends up with.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from server.apps.front.pipeline import queue
from server.settings import proxy_ssl_header

REPO = Path(__file__).resolve().parents[2]
TOKEN = secrets.token_urlsafe(32)

# Variables a developer's shell (or another test run) may have set that would change the profile.
SETTINGS_VARIABLES = (
    "ABFLOW_ENV",
    "DEBUG",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "METRICS_ALLOWED_IPS",
    "METRICS_TOKEN",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "PROMETHEUS_MULTIPROC_DIR",
)


def production_env(**overrides: str | None) -> dict[str, str]:
    """The environment of deploy/.env.example, filled in as an operator would; None removes a variable."""
    env = {key: value for key, value in os.environ.items() if key not in SETTINGS_VARIABLES}
    env.update(
        ABFLOW_ENV="production",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="abflow.example.com",
        METRICS_TOKEN=TOKEN,
        DJANGO_SETTINGS_MODULE="server.settings",
    )
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


SETTINGS_DUMP = """
import json, django
django.setup()
from django.conf import settings
print(json.dumps({name: getattr(settings, name) for name in %r}))
"""


def load_settings(env: dict[str, str], *names: str) -> dict[str, object]:
    result = run_python(SETTINGS_DUMP % (names,), env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def refusal(env: dict[str, str]) -> str:
    """The ImproperlyConfigured line a process that refuses to start prints."""
    result = run_python("import django; django.setup()", env)
    assert result.returncode != 0, "the process started"
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("django.core.exceptions.")]
    return line.removeprefix("django.core.exceptions.ImproperlyConfigured: ")


# --- /metrics access ------------------------------------------------------------


def test_production_refuses_to_start_without_a_metrics_token_or_allow_list():
    assert refusal(production_env(METRICS_TOKEN="")) == (
        "Set METRICS_TOKEN (or METRICS_ALLOWED_IPS for direct scrapes) when ABFLOW_ENV=production"
    )
    assert refusal(production_env(METRICS_TOKEN=None)).startswith("Set METRICS_TOKEN")


def test_production_refuses_a_short_metrics_token():
    assert "METRICS_TOKEN must be 24+ characters" in refusal(production_env(METRICS_TOKEN="short-token"))


def test_production_allows_no_address_by_default_only_what_the_operator_lists():
    assert load_settings(production_env(), "METRICS_ALLOWED_IPS") == {"METRICS_ALLOWED_IPS": []}
    explicit = production_env(METRICS_TOKEN="", METRICS_ALLOWED_IPS="10.0.0.0/8")
    assert load_settings(explicit, "METRICS_ALLOWED_IPS") == {"METRICS_ALLOWED_IPS": ["10.0.0.0/8"]}


def test_an_unparsable_metrics_allow_list_entry_is_refused_at_start_naming_the_variable():
    line = refusal(production_env(METRICS_ALLOWED_IPS="10.0.0.0/8,prometheus.internal"))
    assert line == "METRICS_ALLOWED_IPS: 'prometheus.internal' is not an address or network"


def test_the_shipped_env_example_has_no_loopback_allow_list_and_no_usable_token():
    example = dict(
        line.split("=", 1)
        for line in (REPO / "deploy" / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert example["METRICS_ALLOWED_IPS"] == ""
    # Empty: a copy nobody edited refuses to start instead of shipping a known token.
    assert example["METRICS_TOKEN"] == ""
    assert refusal({**production_env(), **example}).startswith("Set ")


def test_the_shipped_prometheus_scrape_config_sends_the_metrics_token():
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "abflow"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "abflow-metrics-token"}


# --- HTTPS behind a TLS proxy -----------------------------------------------------


def test_deploy_check_of_the_production_profile_is_clean():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO,
        env=production_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output
    assert "WARNING" not in output


def test_production_refuses_a_secret_key_the_deploy_check_calls_weak():
    assert refusal(production_env(SECRET_KEY="x" * 40 + "abcd")).startswith("Set a real SECRET_KEY (50+")
    assert refusal(production_env(SECRET_KEY="ab" * 30)).startswith("Set a real SECRET_KEY")
    assert refusal(production_env(SECRET_KEY="")).startswith("Set a real SECRET_KEY")


def test_production_security_settings_follow_the_environment():
    names = ("SECURE_PROXY_SSL_HEADER", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SESSION_COOKIE_SECURE")
    assert load_settings(production_env(), *names) == {
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 31_536_000,
        "SESSION_COOKIE_SECURE": True,
    }
    overridden = production_env(
        SECURE_PROXY_SSL_HEADER="X-Forwarded-Ssl=on",
        SECURE_SSL_REDIRECT="0",
        SECURE_HSTS_SECONDS="3600",
        SESSION_COOKIE_SECURE="off",
    )
    assert load_settings(overridden, *names) == {
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_SSL", "on"],
        "SECURE_SSL_REDIRECT": False,
        "SECURE_HSTS_SECONDS": 3600,
        "SESSION_COOKIE_SECURE": False,
    }
    assert load_settings(production_env(SECURE_PROXY_SSL_HEADER=""), "SECURE_PROXY_SSL_HEADER") == {
        "SECURE_PROXY_SSL_HEADER": None
    }
    # Development keeps plain HTTP.
    development = production_env(ABFLOW_ENV="development")
    assert load_settings(development, "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "CSRF_COOKIE_SECURE") == {
        "SECURE_SSL_REDIRECT": False,
        "SECURE_HSTS_SECONDS": 0,
        "CSRF_COOKIE_SECURE": False,
    }


@hypothesis_settings(max_examples=300, deadline=None)
@given(name=st.from_regex(r"\A[A-Za-z0-9-]{1,40}\Z"), value=st.from_regex(r"\A[!-~]{0,20}\Z"))
def test_proxy_ssl_header_parses_a_header_name_and_optional_value(name, value):
    raw = f"{name}={value}" if value else name
    assert proxy_ssl_header(f"  {raw} ") == ("HTTP_" + name.upper().replace("-", "_"), value or "https")


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    name=st.text(min_size=1, max_size=20).filter(lambda n: "=" not in n and re.search(r"[^A-Za-z0-9-]", n.strip())),
    value=st.sampled_from(["", "=https", "=on"]),
)
def test_proxy_ssl_header_refuses_a_name_outside_the_token_characters_naming_the_variable(name, value):
    with pytest.raises(ImproperlyConfigured, match="SECURE_PROXY_SSL_HEADER"):
        proxy_ssl_header(name + value)


@hypothesis_settings(max_examples=500, deadline=None)
@given(raw=st.text(max_size=40))
def test_proxy_ssl_header_either_parses_to_a_meta_key_or_refuses(raw):
    try:
        parsed = proxy_ssl_header(raw)
    except ImproperlyConfigured:
        return
    if parsed is not None:
        key, value = parsed
        assert re.fullmatch(r"HTTP_[A-Z0-9_]+", key)
        assert re.fullmatch(r"[!-~]+", value)


# Requests as they reach the web server: through the TLS proxy (X-Forwarded-Proto:
# https, the public Host), or in plain HTTP from the internal network (probes,
# Prometheus, addressed to the web server itself).
PROFILE_PROBE = """
import json, django
django.setup()
from django.test import Client

public = Client(HTTP_HOST="abflow.example.com")
tls = Client(HTTP_HOST="abflow.example.com", HTTP_X_FORWARDED_PROTO="https", HTTP_X_FORWARDED_FOR="203.0.113.9")
internal = Client(HTTP_HOST="127.0.0.1:8000", REMOTE_ADDR="127.0.0.1")
event = {"session_id": "s-production", "variant": "fast", "event_type": "variant_assigned"}
batch = {"events": [dict(event, event_id="3f1d6b0e-8c1a-4e55-9a55-6f0c1b2a3d4e")]}
token = {"HTTP_AUTHORIZATION": "Bearer " + %r}

def answer(response):
    return {
        "status": response.status_code,
        "location": response.get("Location"),
        "hsts": response.get("Strict-Transport-Security"),
        "cookies": {name: bool(morsel["secure"]) for name, morsel in response.cookies.items()},
    }

print(json.dumps({
    "plain_admin": answer(public.get("/admin/login/")),
    "tls_admin": answer(tls.get("/admin/login/")),
    "tls_ingest": answer(tls.post("/api/rest/front/ab-event/", event, content_type="application/json")),
    "plain_ingest_batch": answer(public.post("/api/rest/front/ab-events/", batch, content_type="application/json")),
    "internal_healthz": answer(internal.get("/healthz")),
    "internal_readyz": answer(internal.get("/readyz")),
    "internal_metrics": answer(internal.get("/metrics", **token)),
    "internal_metrics_no_token": answer(internal.get("/metrics")),
    "tls_metrics_no_token": answer(tls.get("/metrics")),
}))
"""


def database_url() -> str:
    """The test database, for /readyz in the child process."""
    db = connection.settings_dict
    return f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.mark.django_db
def test_production_redirects_to_https_but_not_probes_scrapes_or_ingest(settings):
    env = production_env(DATABASE_URL=database_url(), AB_QUEUE_KEY_PREFIX=settings.AB_QUEUE_KEY_PREFIX)
    result = run_python(PROFILE_PROBE % TOKEN, env)
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.splitlines()[-1])

    # A browser on plain HTTP is sent to HTTPS; over the TLS proxy the page is
    # served with HSTS and cookies that only travel over HTTPS.
    assert answers["plain_admin"]["status"] == 301
    assert answers["plain_admin"]["location"] == "https://abflow.example.com/admin/login/"
    assert answers["tls_admin"]["status"] == 200
    assert answers["tls_admin"]["hsts"] == "max-age=31536000; includeSubDomains"
    assert answers["tls_admin"]["cookies"] == {"csrftoken": True}

    # Ingest answers as before, through the proxy and in plain HTTP (never a redirect that loses the POST).
    assert answers["tls_ingest"]["status"] == 201
    assert answers["tls_ingest"]["hsts"] == "max-age=31536000; includeSubDomains"
    assert answers["plain_ingest_batch"]["status"] == 200
    assert queue.stats().depth == 2

    # Probes and the scrape, in plain HTTP to the web server's own address.
    assert answers["internal_healthz"]["status"] == 200
    assert answers["internal_readyz"]["status"] == 200
    assert answers["internal_metrics"]["status"] == 200
    # No allow-list by default in production: without the token nobody scrapes, proxied or not.
    assert answers["internal_metrics_no_token"]["status"] == 403
    assert answers["tls_metrics_no_token"]["status"] == 403
