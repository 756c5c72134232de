"""The production profile (ABFLOW_ENV=production), loaded for real in a fresh process.

Settings are read once per process, so each case starts ``python`` with the
environment an operator would set (deploy/.env.example) and looks at what the
process does: refuses to start, or the settings and answers it ends up with.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import yaml

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
