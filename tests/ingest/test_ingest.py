"""The ingest endpoint: contract, hardening, authentication and Redis failures.

Real Redis and real PostgreSQL; events are drained with the real writer.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from devtools.embedded import free_port
from server.apps.front.models import ABEvent
from server.apps.front.pipeline import queue
from server.apps.front.pipeline.writer import drain

URL = "/api/rest/front/ab-event/"
pytestmark = pytest.mark.django_db


def event(**overrides):
    data = {"session_id": "s-1", "variant": "fast", "event_type": "variant_assigned"}
    data.update(overrides)
    return data


def post_json(client: APIClient, body, **extra):
    raw = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(URL, data=raw, content_type="application/json", **extra)


@pytest.fixture
def client() -> APIClient:
    return APIClient()


def test_accepted_event_is_queued_not_written_until_drained(client, rq):
    response = post_json(client, event())
    assert response.status_code == 201
    assert response.json() == {"success": True}
    assert ABEvent.objects.count() == 0
    assert queue.stats().depth == 1
    assert drain().stored == 1
    assert ABEvent.objects.count() == 1
    assert queue.stats().depth == 0


def test_endpoint_makes_no_database_query_for_an_anonymous_event(client):
    with CaptureQueriesContext(connection) as queries:
        response = post_json(client, event())
    assert response.status_code == 201
    assert len(queries) == 0, [q["sql"] for q in queries]


def test_timestamp_is_the_receive_time_not_the_flush_time(client):
    before = timezone.now()
    assert post_json(client, event()).status_code == 201
    after = timezone.now()
    time.sleep(1.2)
    drain()
    stored = ABEvent.objects.get()
    assert before <= stored.timestamp <= after


def test_client_event_id_is_kept_and_a_retry_is_stored_once(client):
    event_id = str(uuid.uuid4())
    assert post_json(client, event(event_id=event_id)).status_code == 201
    assert post_json(client, event(event_id=event_id)).status_code == 201
    drain()
    assert ABEvent.objects.filter(event_id=event_id).count() == 1


def test_user_in_the_body_is_ignored(client):
    user = get_user_model().objects.create_user("victim", password="x" * 12)
    assert post_json(client, event(user=user.pk, user_id=user.pk)).status_code == 201
    drain()
    assert ABEvent.objects.get().user is None


def test_token_authenticated_post_links_the_user(client):
    user = get_user_model().objects.create_user("alice", password="x" * 12)
    token = Token.objects.create(user=user)
    response = post_json(client, event(), HTTP_AUTHORIZATION=f"Token {token.key}")
    assert response.status_code == 201
    drain()
    assert ABEvent.objects.get().user == user


def test_session_authenticated_post_links_the_user(client):
    user = get_user_model().objects.create_user("bob", password="x" * 12)
    client.force_login(user)
    assert post_json(client, event()).status_code == 201
    drain()
    assert ABEvent.objects.get().user == user


def test_text_plain_body_from_send_beacon_is_accepted(client):
    response = client.post(URL, data=json.dumps(event()), content_type="text/plain;charset=UTF-8")
    assert response.status_code == 201
    drain()
    assert ABEvent.objects.count() == 1


@pytest.mark.parametrize(
    "body",
    ['{"session_id": "s", "variant": ', "not json at all", b"\xff\xfe{}"],
    ids=["truncated", "garbage", "bad-utf8"],
)
def test_malformed_json_gets_the_error_envelope(client, body):
    response = post_json(client, body)
    assert response.status_code == 400
    payload = response.json()
    assert payload["success"] is False
    assert "body" in payload["errors"]


def test_unsupported_media_type_gets_the_error_envelope(client):
    response = client.post(URL, data="a=b", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.json()["success"] is False
    assert "content_type" in response.json()["errors"]


def test_get_is_not_allowed_and_answers_in_the_envelope(client):
    response = client.get(URL)
    assert response.status_code == 405
    assert response.json()["success"] is False


def test_body_that_is_not_an_object_is_rejected(client):
    response = post_json(client, [event()])
    assert response.status_code == 400
    assert response.json()["errors"]["non_field_errors"]


# --- hardening: each case gets a 4xx naming the field ---------------------------

HARDENING_CASES = {
    "missing-session": ({"session_id": None}, "session_id"),
    "session-too-long": ({"session_id": "x" * 101}, "session_id"),
    "session-nul": ({"session_id": "abc\x00def"}, "session_id"),
    "session-number": ({"session_id": 12345}, "session_id"),
    "session-lone-surrogate": ('"session_id": "\\ud800abc"', "session_id"),
    "variant-invalid": ({"variant": "invalid"}, "variant"),
    "event-type-invalid": ({"event_type": "clicked"}, "event_type"),
    "step-negative": ({"step_number": -1}, "step_number"),
    "step-over-range": ({"step_number": 1001}, "step_number"),
    "step-over-int32": ({"step_number": 2**31}, "step_number"),
    "step-float": ({"step_number": 1.5}, "step_number"),
    "step-nan": ('"step_number": NaN', "step_number"),
    "event-id-not-uuid": ({"event_id": "123"}, "event_id"),
    "metadata-list": ({"metadata": [1, 2]}, "metadata"),
    "metadata-string": ({"metadata": "x"}, "metadata"),
    "metadata-nan": ('"metadata": {"time_spent_ms": NaN}', "metadata"),
    "metadata-infinity": ('"metadata": {"t": Infinity}', "metadata"),
    "metadata-overflow-float": ('"metadata": {"t": 1e999}', "metadata"),
    "metadata-nul": ({"metadata": {"note": "a\x00b"}}, "metadata"),
    "metadata-nul-key": ({"metadata": {"a\x00": 1}}, "metadata"),
    "metadata-lone-surrogate": ('"metadata": {"note": "\\udc00"}', "metadata"),
    "metadata-too-deep": ({"metadata": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}, "metadata"),
    "metadata-too-large": ({"metadata": {"blob": "x" * 5000}}, "metadata"),
    "metadata-int-over-int64": ({"metadata": {"n": 2**64 - 1}}, "metadata"),
}


@pytest.mark.parametrize("override,field", HARDENING_CASES.values(), ids=HARDENING_CASES.keys())
def test_hardening_rejects_with_a_4xx_naming_the_field(client, override, field):
    if isinstance(override, str):
        # Raw JSON fragments: things json.dumps would not produce.
        body = '{"session_id": "s-1", "variant": "fast", "event_type": "variant_assigned", %s}' % override
        if override.startswith('"session_id"'):
            body = '{"variant": "fast", "event_type": "variant_assigned", %s}' % override
    else:
        data = event(**override)
        data = {k: v for k, v in data.items() if v is not None}
        body = json.dumps(data)
    response = post_json(client, body)
    assert response.status_code == 400, response.content
    payload = response.json()
    assert payload["success"] is False
    assert field in payload["errors"], payload
    assert queue.stats().depth == 0


def test_largest_accepted_values_are_written_by_postgresql(client):
    """What validation lets through, PostgreSQL must store (no failure at flush time)."""
    accepted = [
        event(session_id="x" * 100, step_number=1000),
        event(metadata={"a": {"b": {"c": {"d": {"e": 1}}}}}),
        event(metadata={"n": 2**63 - 1, "f": -1.5e300, "s": "ü漢字🙂", "l": [None, True, 0]}),
        event(metadata={"blob": "x" * 3900}),
    ]
    for data in accepted:
        assert post_json(client, data).status_code == 201, data
    result = drain()
    assert result.stored == len(accepted)
    assert result.dead_lettered == 0
    assert ABEvent.objects.count() == len(accepted)


# --- Redis failures -----------------------------------------------------------------


def test_redis_down_gives_503_with_retry_after_in_under_a_second(client, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    started = time.monotonic()
    response = post_json(client, event())
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["success"] is False
    assert "queue" in response.json()["errors"]
    assert int(response["Retry-After"]) > 0
    assert elapsed < 1.0


def test_unresponsive_redis_gives_503_in_under_a_second(client, settings):
    """A Redis that accepts connections but never answers (e.g. stopped with SIGSTOP)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        settings.REDIS_URL = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        started = time.monotonic()
        response = post_json(client, event())
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert response.status_code == 503
    assert elapsed < 1.0


def test_full_queue_gives_503_backpressure_and_keeps_what_was_queued(client, settings):
    settings.AB_QUEUE_MAX = 3
    codes = [post_json(client, event(session_id=f"s-{i}")).status_code for i in range(5)]
    assert codes == [201, 201, 201, 503, 503]
    assert queue.stats().depth == 3
    drain()
    assert ABEvent.objects.count() == 3


def test_receive_time_survives_a_long_queue_wait(client):
    assert post_json(client, event()).status_code == 201
    # Simulate a backlog: the head of the queue is older than the flush.
    stats = queue.stats()
    assert stats.oldest_age_seconds is not None and stats.oldest_age_seconds < 5
    drain()
    assert timezone.now() - ABEvent.objects.get().timestamp < timedelta(seconds=5)
