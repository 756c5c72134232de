"""GET /metrics: every named series is there, and the values follow pushes, drains and dead letters."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client, RequestFactory, override_settings
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from devtools.embedded import free_port
from server.apps.front.ops import metrics
from server.apps.front.ops import views as ops_views
from server.apps.front.pipeline import queue, writer
from tests.factories import queue_item as make_item

from .conftest import scrape

REPO = Path(__file__).resolve().parents[2]
INGEST = "/api/rest/front/ab-event/"
ROUTE = "api/rest/front/ab-event/"

pytestmark = pytest.mark.django_db

QUEUE_SERIES = {
    "abflow_queue_up",
    "abflow_queue_depth",
    "abflow_queue_inflight_events",
    "abflow_queue_inflight_batches",
    "abflow_queue_dead_letters",
    "abflow_queue_oldest_age_seconds",
    "abflow_queue_max",
}


def post_event(client: Client, **fields: object) -> int:
    body = {"session_id": "s-metrics", "variant": "fast", "event_type": "variant_assigned", **fields}
    return client.post(INGEST, body, content_type="application/json").status_code


def test_metrics_exposes_each_named_series_and_values_follow_push_drain_and_dead_letter(web):
    before = scrape(web)
    assert QUEUE_SERIES <= before.names()
    assert before.value("abflow_queue_up") == 1
    assert before.value("abflow_queue_depth") == 0

    # Pushed: 5 accepted, and one rejection of each request class.
    assert [post_event(web) for _ in range(5)] == [201] * 5
    assert post_event(web, variant="slow") == 400
    assert web.post(INGEST, b"{broken", content_type="application/json").status_code == 400
    assert web.post(INGEST, b"<xml/>", content_type="application/xml").status_code == 415
    # A poison event (its user does not exist) reaches the queue directly, as a
    # since-deleted user's would.
    queue.push([make_item(user_id=987_654_321)])

    pushed = scrape(web)
    assert pushed.value("abflow_queue_depth") == 6
    assert pushed.value("abflow_queue_oldest_age_seconds") > 0
    assert pushed.since(before, "abflow_events_accepted_total") == 5
    for reason, field in [("validation", "variant"), ("parse", ""), ("media_type", "")]:
        assert pushed.since(before, "abflow_events_rejected_total", reason=reason, field=field) == 1, reason
    latency = "abflow_http_request_duration_seconds_count"
    assert pushed.since(before, latency, route=ROUTE, method="POST", status="201") == 5
    assert pushed.since(before, latency, route=ROUTE, method="POST", status="415") == 1

    # Drained: 5 stored, the poison event dead-lettered.
    result = writer.drain(batch_size=1000)
    assert (result.stored, result.dead_lettered) == (5, 1)

    drained = scrape(web)
    assert drained.value("abflow_queue_depth") == 0
    assert drained.value("abflow_queue_oldest_age_seconds") == 0
    assert drained.value("abflow_queue_inflight_events") == 0
    assert drained.value("abflow_queue_dead_letters") == 1
    assert drained.since(pushed, "abflow_events_stored_total") == 5
    assert drained.since(pushed, "abflow_events_dead_lettered_total") == 1
    assert drained.since(pushed, "abflow_drain_runs_total", outcome="ok") == 1
    assert drained.since(pushed, "abflow_drain_batch_size_count") == 1
    assert drained.since(pushed, "abflow_drain_batch_size_sum") == 6
    assert drained.since(pushed, "abflow_drain_duration_seconds_count") == 1
    assert drained.value("abflow_drain_last_success_timestamp_seconds") > 0


def test_inflight_gauges_count_a_claimed_batch(web):
    queue.push([make_item() for _ in range(7)])
    queue.claim(3, lease_seconds=60)
    figures = scrape(web)
    assert figures.value("abflow_queue_depth") == 4
    assert figures.value("abflow_queue_inflight_events") == 3
    assert figures.value("abflow_queue_inflight_batches") == 1


def test_redis_down_scrape_still_answers_with_queue_up_zero_and_counts_redis_down(web, settings):
    before = scrape(web)
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    assert post_event(web) == 503
    down = scrape(web)
    assert down.value("abflow_queue_up") == 0
    assert "abflow_queue_depth" not in down.names()
    assert down.since(before, "abflow_events_rejected_total", reason="redis_down", field="") == 1


def test_full_queue_is_counted_as_queue_full(web, settings):
    settings.AB_QUEUE_MAX = 1
    before = scrape(web)
    assert post_event(web) == 201
    assert post_event(web) == 503
    after = scrape(web)
    assert after.since(before, "abflow_events_rejected_total", reason="queue_full", field="") == 1


TOKEN = "s3cret-token-of-24-characters"


@pytest.mark.parametrize(
    ("allowed", "token", "remote", "auth", "status"),
    [
        ("127.0.0.1,::1", "", "127.0.0.1", "", 200),
        ("127.0.0.1,::1", "", "::1", "", 200),
        ("127.0.0.1,::1", "", "203.0.113.9", "", 403),
        ("10.0.0.0/8", "", "10.20.30.40", "", 200),
        ("10.0.0.0/8", "", "11.0.0.1", "", 403),
        ("127.0.0.1", TOKEN, "203.0.113.9", f"Bearer {TOKEN}", 200),
        ("127.0.0.1", TOKEN, "203.0.113.9", f"bearer  {TOKEN} ", 200),
        ("127.0.0.1", TOKEN, "203.0.113.9", "Bearer wrong", 403),
        ("127.0.0.1", TOKEN, "203.0.113.9", f"Basic {TOKEN}", 403),
        ("127.0.0.1", "", "203.0.113.9", "Bearer ", 403),
        ("", "", "127.0.0.1", "", 403),
        ("", TOKEN, "127.0.0.1", "", 403),
    ],
)
def test_metrics_is_served_only_to_allowed_addresses_or_the_token(settings, allowed, token, remote, auth, status):
    settings.METRICS_ALLOWED_IPS = [item for item in allowed.split(",") if item]
    settings.METRICS_TOKEN = token
    headers = {"HTTP_AUTHORIZATION": auth} if auth else {}
    assert Client(REMOTE_ADDR=remote).get("/metrics", **headers).status_code == status


PROXY_HEADERS = {
    "HTTP_X_FORWARDED_FOR": "203.0.113.9",
    "HTTP_FORWARDED": "for=203.0.113.9;proto=https",
    "HTTP_X_REAL_IP": "203.0.113.9",
    "HTTP_X_FORWARDED_PROTO": "https",
    "HTTP_X_FORWARDED_HOST": "abflow.example.com",
    "HTTP_VIA": "1.1 proxy",
}


@pytest.mark.parametrize(("header", "value"), PROXY_HEADERS.items())
def test_a_request_relayed_by_a_local_proxy_is_not_local(settings, header, value):
    """Behind the shipped reverse proxy every request comes from 127.0.0.1: the allow-list must not admit it."""
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1", "::1"]
    settings.METRICS_TOKEN = TOKEN
    proxy = Client(REMOTE_ADDR="127.0.0.1")
    refused = proxy.get("/metrics", **{header: value})
    assert refused.status_code == 403
    assert refused.json() == {"error": "forbidden: a proxied request needs the METRICS_TOKEN bearer token"}
    assert proxy.get("/metrics", **{header: value, "HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}).status_code == 200
    # The same peer without the proxy's header is a direct scrape from loopback.
    assert proxy.get("/metrics").status_code == 200


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    header=st.sampled_from(sorted(PROXY_HEADERS)) | st.from_regex(r"\AHTTP_X_FORWARDED_[A-Z_]{1,12}\Z"),
    value=st.text(max_size=40),
    auth=st.just(f"Bearer {TOKEN}") | st.text(max_size=60),
    remote=st.sampled_from(["127.0.0.1", "::1", "::ffff:127.0.0.1", "10.1.2.3"]),
)
def test_a_proxied_request_is_admitted_by_the_token_only_whatever_it_carries(header, value, auth, remote):
    request = RequestFactory().get("/metrics", REMOTE_ADDR=remote, HTTP_AUTHORIZATION=auth, **{header: value})
    with override_settings(METRICS_ALLOWED_IPS=["127.0.0.0/8", "::1", "10.0.0.0/8"], METRICS_TOKEN=TOKEN):
        assert ops_views.scrape_allowed(request) == (auth == f"Bearer {TOKEN}")


MULTIPROCESS_SCRIPT = """
import multiprocessing, os, sys
import django
django.setup()
from server.apps.front.ops import metrics

def work(n):
    metrics.EVENTS_STORED.inc(n)
    metrics.DRAIN_BATCH_SIZE.observe(n)

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=work, args=(n,)) for n in (3, 4)]
    for p in procs: p.start()
    for p in procs: p.join()
    sys.stdout.write(metrics.render().decode())
"""


def test_multiprocess_mode_merges_counters_of_all_processes(tmp_path):
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "server.settings",
        "AB_QUEUE_KEY_PREFIX": f"abtest-mp-{tmp_path.name}",
    }
    out = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    # Two child processes wrote 3 and 4; the parent, which never incremented, renders the sum.
    assert "abflow_events_stored_total 7.0" in out.stdout
    assert "abflow_drain_batch_size_count 2.0" in out.stdout
    assert "abflow_queue_depth 0.0" in out.stdout


def test_rejections_are_logged_per_class_with_counts_not_per_event(caplog):
    rejections = metrics.RejectionLog(interval=3600)
    with caplog.at_level(logging.INFO, logger="abflow.metrics"):
        # The first rejection after a quiet spell is logged at once...
        rejections.add("validation", "variant")
        assert [(r.reason, r.field, r.count) for r in caplog.records] == [("validation", "variant", 1)]
        # ...a burst inside the window only counts...
        for _ in range(40):
            rejections.add("validation", "variant")
        for _ in range(3):
            rejections.add("parse")
        assert len(caplog.records) == 1
        # ...and is logged as one line per class when the window closes (here: at exit).
        rejections.flush()
    lines = [(r.reason, r.field, r.count) for r in caplog.records[1:]]
    assert lines == [("parse", "", 3), ("validation", "variant", 40)]
    assert all(r.getMessage() == "ab_rejected" for r in caplog.records)
