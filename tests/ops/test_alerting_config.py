"""deploy/prometheus and deploy/grafana only use series that /metrics really exposes, and every alert has a runbook."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from server.apps.front.pipeline import queue, writer
from tests.factories import queue_item as make_item

from .conftest import scrape

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "abflow-dashboard.json"
OPERATIONS = REPO / "docs" / "operations.md"

SERIES = re.compile(r"\babflow_[a-z0-9_]+")


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    found = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return found


@pytest.fixture
def exposed(web, db) -> set[str]:
    """Sample names of a scrape after one of everything: accepted, rejected, drained, dead-lettered."""
    web.post("/api/rest/front/ab-event/", {"session_id": "s", "variant": "fast", "event_type": "variant_assigned"},
             content_type="application/json")  # fmt: skip
    web.post("/api/rest/front/ab-event/", {"variant": "nope"}, content_type="application/json")
    queue.push([make_item(user_id=987_654_321)])
    writer.drain()
    return scrape(web).names()


def alert_rules() -> list[dict]:
    config = yaml.safe_load(ALERTS.read_text())
    return [rule for group in config["groups"] for rule in group["rules"]]


def test_every_alert_uses_exposed_series_and_names_a_runbook_section(exposed):
    sections = anchors(OPERATIONS.read_text())
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "AbflowIngestLagGrowing",
        "AbflowDeadLettersAppearing",
        "AbflowWriterStalled",
        "AbflowIngest5xx",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert set(SERIES.findall(rule["expr"])) <= exposed, rule["alert"]
        runbook = re.search(r"docs/operations\.md#([a-z0-9-]+)", rule["annotations"]["description"])
        assert runbook and runbook.group(1) in sections, rule["alert"]


def test_prometheus_config_loads_the_alert_rules():
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert (PROMETHEUS.parent / config["rule_files"][0]).resolve() == ALERTS.resolve()
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "abflow"]
    assert job["metrics_path"] == "/metrics"


def test_dashboard_panels_use_exposed_series(exposed):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = set().union(*(SERIES.findall(expr) for expr in exprs))
    assert used <= exposed
    # The figures the alerts are about are all on the dashboard.
    assert {
        "abflow_queue_depth",
        "abflow_queue_oldest_age_seconds",
        "abflow_queue_dead_letters",
        "abflow_drain_last_success_timestamp_seconds",
        "abflow_http_request_duration_seconds_count",
    } <= used


def promtool() -> str | None:
    return os.environ.get("PROMTOOL") or shutil.which("promtool")


@pytest.mark.skipif(promtool() is None, reason="promtool not installed (Debian package prometheus, or set PROMTOOL)")
def test_alert_rules_pass_promtool_checks_and_unit_tests(tmp_path):
    """Syntax, and deploy/prometheus/alerts_test.yml: each key alert fires when it should and not otherwise."""
    # As installed: the config beside the bearer-token file it reads (promtool checks that it exists).
    installed = shutil.copytree(PROMETHEUS.parent, tmp_path / "prometheus")
    (installed / "abflow-metrics-token").write_text("a-token-the-operator-wrote-here\n")
    for args in (
        ["check", "config", str(installed / PROMETHEUS.name)],
        ["test", "rules", str(ALERTS.parent / "alerts_test.yml")],
    ):
        result = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
