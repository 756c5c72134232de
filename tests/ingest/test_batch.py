"""The batch endpoint: per-event validation, one Redis push, idempotent retries."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth import get_user_model

from devtools.embedded import free_port
from server.apps.front.models import ABEvent
from server.apps.front.pipeline import queue
from server.apps.front.pipeline.writer import drain
from tests.ingest.conftest import BATCH_URL, SINGLE_URL, event, post

pytestmark = pytest.mark.django_db


def test_mixed_batch_queues_the_valid_events_and_reports_rejected_indexes(client):
    events = [
        event(session_id="ok-0"),
        event(session_id="bad-1", variant="slow"),
        event(session_id="ok-2", event_type="step_completed", step_number=1, metadata={"k": "v"}),
        "not an event",
        event(session_id="bad-4", step_number=-1),
        event(session_id="ok-5", event_type="onboarding_completed"),
    ]
    response = post(client, BATCH_URL, {"events": events, "sent_at": "2024-05-01T10:00:00Z"})
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["accepted"] == 3
    assert [r["index"] for r in body["rejected"]] == [1, 3, 4]
    assert "variant" in body["rejected"][0]["errors"]
    assert "non_field_errors" in body["rejected"][1]["errors"]
    assert "step_number" in body["rejected"][2]["errors"]
    assert drain().stored == 3
    assert sorted(ABEvent.objects.values_list("session_id", flat=True)) == ["ok-0", "ok-2", "ok-5"]
    assert ABEvent.objects.get(session_id="ok-2").metadata == {"k": "v"}


def test_whole_batch_is_pushed_to_redis_in_one_call(client, monkeypatch):
    pushes: list[int] = []
    real_push = queue.push

    def counting_push(items, **kwargs):
        pushes.append(len(items))
        return real_push(items, **kwargs)

    monkeypatch.setattr(queue, "push", counting_push)
    response = post(client, BATCH_URL, {"events": [event(session_id=f"s-{i}") for i in range(250)]})
    assert response.status_code == 200
    assert pushes == [250]
    assert queue.stats().depth == 250


def test_duplicate_event_ids_within_a_batch_are_queued_and_stored_once(client):
    repeated = str(uuid.uuid4())
    events = [event(event_id=repeated), event(event_id=repeated, session_id="s-2"), event(), event(event_id=repeated)]
    response = post(client, BATCH_URL, {"events": events})
    assert response.status_code == 200
    # All four are valid (the client must not resend them), two are queued.
    assert response.json() == {"success": True, "accepted": 4, "rejected": []}
    assert queue.stats().depth == 2
    drain()
    assert ABEvent.objects.count() == 2
    assert ABEvent.objects.get(event_id=repeated).session_id == "s-1"  # the first one wins


def test_a_retried_batch_is_stored_once(client):
    events = [event(event_id=str(uuid.uuid4()), session_id=f"s-{i}") for i in range(5)]
    for _ in range(3):  # e.g. the response was lost twice
        assert post(client, BATCH_URL, {"events": events}).status_code == 200
    assert queue.stats().depth == 15
    assert drain().stored == 15  # ignore_conflicts: attempted, duplicates skipped by PostgreSQL
    assert ABEvent.objects.count() == 5


def test_an_event_retried_through_the_single_endpoint_is_stored_once(client):
    event_id = str(uuid.uuid4())
    assert post(client, BATCH_URL, {"events": [event(event_id=event_id)]}).status_code == 200
    drain()
    assert post(client, SINGLE_URL, event(event_id=event_id)).status_code == 201
    drain()
    assert ABEvent.objects.filter(event_id=event_id).count() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([event()], "non_field_errors"),  # a list, not a batch
        (event(), "events"),  # a single event sent to the batch endpoint
        ({"events": "nope"}, "events"),
        ({"events": [event()], "sent_at": "yesterday"}, "sent_at"),
        ('{"events": [', "body"),  # malformed JSON
    ],
)
def test_a_body_that_is_not_a_batch_gets_the_400_envelope(client, body, field):
    response = post(client, BATCH_URL, body)
    assert response.status_code == 400
    assert response.json()["success"] is False
    assert field in response.json()["errors"]
    assert queue.stats().depth == 0


def test_a_batch_over_the_event_count_limit_is_refused_whole(client, settings):
    settings.AB_BATCH_MAX_EVENTS = 3
    response = post(client, BATCH_URL, {"events": [event()] * 4})
    assert response.status_code == 400
    assert "events" in response.json()["errors"]
    assert queue.stats().depth == 0
    assert post(client, BATCH_URL, {"events": [event()] * 3}).status_code == 200


def test_an_event_over_the_per_event_cap_is_rejected_by_index(client, settings):
    settings.AB_MAX_EVENT_BYTES = 512
    big = event(session_id="big", padding="x" * 600)  # unknown keys count too
    response = post(client, BATCH_URL, {"events": [event(session_id="small"), big]})
    assert response.json()["accepted"] == 1
    assert response.json()["rejected"][0]["index"] == 1
    assert "event" in response.json()["rejected"][0]["errors"]
    drain()
    assert list(ABEvent.objects.values_list("session_id", flat=True)) == ["small"]


def test_metadata_caps_apply_to_batch_events_as_to_single_ones(client, settings):
    settings.AB_MAX_METADATA_BYTES = 64
    response = post(client, BATCH_URL, {"events": [event(metadata={"note": "y" * 100})]})
    assert response.json()["accepted"] == 0
    assert "metadata" in response.json()["rejected"][0]["errors"]


def test_redis_down_gives_503_and_queues_nothing(client, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    response = post(client, BATCH_URL, {"events": [event()]})
    assert response.status_code == 503
    assert response.json()["success"] is False
    assert "queue" in response.json()["errors"]
    assert int(response["Retry-After"]) > 0


def test_a_batch_that_would_overfill_the_queue_gets_503_and_queues_none_of_it(client, settings):
    settings.AB_QUEUE_MAX = 5
    assert post(client, BATCH_URL, {"events": [event()] * 4}).status_code == 200
    response = post(client, BATCH_URL, {"events": [event()] * 2})
    assert response.status_code == 503
    assert "Retry-After" in response
    assert queue.stats().depth == 4  # all or nothing: the client retries the whole batch


def test_batch_events_of_a_session_user_are_linked_to_the_user(client):
    user = get_user_model().objects.create_user(username="u1", password="pw-123456789")
    client.force_login(user)  # APIClient does not enforce CSRF unless asked
    assert post(client, BATCH_URL, {"events": [event(), event()]}).status_code == 200
    drain()
    assert list(ABEvent.objects.values_list("user_id", flat=True)) == [user.pk, user.pk]


def test_an_empty_batch_is_accepted_and_touches_nothing(client):
    response = post(client, BATCH_URL, {"events": []})
    assert response.json() == {"success": True, "accepted": 0, "rejected": []}


@pytest.mark.parametrize("bad_id", [7, 1, True, False, 0])
def test_an_event_id_that_is_not_a_string_is_rejected_by_index(client, bad_id):
    events = [event(session_id="numbered", event_id=bad_id), event(session_id="plain")]
    response = post(client, BATCH_URL, {"events": events})
    assert response.json()["accepted"] == 1
    assert response.json()["rejected"][0]["index"] == 0
    assert "event_id" in response.json()["rejected"][0]["errors"]
    drain()
    assert list(ABEvent.objects.values_list("session_id", flat=True)) == ["plain"]
