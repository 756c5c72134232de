"""The optional per-session event number ``seq`` (event-loss guard): validated, queued, stored."""

from __future__ import annotations

import orjson
import pytest
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from server.apps.front.ingest.serializers import ABEventSerializer
from server.apps.front.models import ABEvent
from server.apps.front.pipeline import queue
from server.apps.front.pipeline.writer import drain
from tests.factories import queue_item
from tests.ingest.conftest import BATCH_URL, SINGLE_URL, event, post

INT32_MAX = 2**31 - 1


@pytest.mark.django_db
def test_single_endpoint_stores_seq(client):
    assert post(client, SINGLE_URL, event(seq=1)).status_code == 201
    drain()
    assert ABEvent.objects.get().seq == 1


@pytest.mark.django_db
def test_batch_endpoint_stores_each_events_seq_and_null_without_one(client):
    body = {
        "events": [
            event(session_id="a", seq=1),
            event(session_id="a", event_type="onboarding_started", seq=2),
            event(session_id="b", seq=INT32_MAX),
            event(session_id="c"),
            event(session_id="d", seq=None),
        ]
    }
    response = post(client, BATCH_URL, body)
    assert response.json()["accepted"] == 5
    drain()
    stored = {(e.session_id, e.event_type): e.seq for e in ABEvent.objects.all()}
    assert stored == {
        ("a", "variant_assigned"): 1,
        ("a", "onboarding_started"): 2,
        ("b", "variant_assigned"): INT32_MAX,
        ("c", "variant_assigned"): None,
        ("d", "variant_assigned"): None,
    }


@pytest.mark.django_db
@pytest.mark.parametrize("bad", [0, -1, INT32_MAX + 1, True, False, "3", 3.0, 2.5, [1], {"n": 1}])
def test_a_bad_seq_is_a_400_naming_the_field(client, bad):
    response = post(client, SINGLE_URL, event(seq=bad))
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False and "seq" in body["errors"]
    assert queue.depth() == 0


@pytest.mark.django_db
def test_a_bad_seq_in_a_batch_rejects_that_event_by_index(client):
    body = {"events": [event(session_id="ok", seq=1), event(session_id="bad", seq=True)]}
    response = post(client, BATCH_URL, body)
    data = response.json()
    assert data["accepted"] == 1
    drain()
    assert list(ABEvent.objects.values_list("session_id", "seq")) == [("ok", 1)]


@pytest.mark.django_db
def test_items_queued_before_seq_existed_still_drain_with_a_null_seq():
    old = queue_item(session_id="old")
    assert b'"q"' not in old  # exactly what the release before seq queued
    queue.push([old])
    drain()
    assert ABEvent.objects.get(session_id="old").seq is None


@given(st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=5), st.none()))
@settings(max_examples=200, deadline=None)
def test_seq_validation_accepts_exactly_positive_int32_or_null(value):
    serializer = ABEventSerializer(data=event(seq=value))
    ok = serializer.is_valid()
    expected = value is None or (type(value) is int and 1 <= value <= INT32_MAX)
    assert ok is expected
    if ok:
        item = queue.encode_event(serializer.validated_data, user_id=None, received_at=timezone.now())
        assert queue.event_fields(orjson.loads(item))["seq"] == value
