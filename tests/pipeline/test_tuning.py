"""The hot-path shortcuts taken for performance (docs/performance.md) change nothing observable.

* the single-event view validates with one reused serializer per thread and
  only builds a fresh one to report errors;
* the serializer builds its fields once per class;
* the writer builds rows without Model.__init__.
"""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from rest_framework.test import APIClient

from server.apps.front.ingest.serializers import ABEventSerializer
from server.apps.front.models import ABEvent
from server.apps.front.pipeline import queue, writer

URL = "/api/rest/front/ab-event/"


def _post(client: APIClient, body: object) -> tuple[int, object]:
    response = client.post(URL, data=json.dumps(body), content_type="application/json")
    return response.status_code, response.json()


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "text",
        {},
        {"session_id": "s", "variant": "slow", "event_type": "variant_assigned"},
        {"session_id": "s", "variant": "fast", "event_type": "x", "step_number": -1, "metadata": []},
    ],
)
def test_rejections_are_exactly_what_a_fresh_serializer_reports(body: object) -> None:
    fresh = ABEventSerializer(data=body)
    assert not fresh.is_valid()
    status, answer = _post(APIClient(), body)
    assert status == 400
    assert answer == {"success": False, "errors": json.loads(json.dumps(fresh.errors))}


def test_an_invalid_event_does_not_leak_into_the_next_valid_one(rq) -> None:
    client = APIClient()
    assert _post(client, {"session_id": "bad", "variant": "slow", "event_type": "x"})[0] == 400
    assert _post(client, {"session_id": "good", "variant": "deep", "event_type": "onboarding_started"})[0] == 201
    (item,) = rq.lrange(queue.keys().queue, 0, -1)
    payload = queue.decode_event(item)
    assert (payload["s"], payload["v"], payload["e"]) == ("good", "deep", "onboarding_started")


def test_concurrent_threads_each_queue_their_own_event(rq) -> None:
    """gthread workers serve requests in threads; each thread's validator is its own."""
    barrier = threading.Barrier(8)

    def send(i: int) -> int:
        barrier.wait()
        body = {"session_id": f"t-{i}", "variant": "fast", "event_type": "step_completed", "step_number": i}
        return _post(APIClient(), body)[0]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(send, range(8))) == [201] * 8
    payloads = [queue.decode_event(item) for item in rq.lrange(queue.keys().queue, 0, -1)]
    assert sorted((p["s"], p["n"]) for p in payloads) == [(f"t-{i}", i) for i in range(8)]


def test_serializer_field_prototypes_are_never_bound() -> None:
    ABEventSerializer(data={}).is_valid()
    ABEventSerializer(data={}).is_valid()
    prototypes = ABEventSerializer.__dict__["_field_prototypes"]
    assert all(getattr(field, "field_name", None) is None for field in prototypes.values())
    assert all(getattr(field, "parent", None) is None for field in prototypes.values())


def test_writer_rows_equal_rows_built_by_the_model_constructor() -> None:
    received = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    item = queue.encode_event(
        {
            "event_id": uuid.uuid4(),
            "session_id": "s-eq",
            "variant": "deep",
            "event_type": "step_completed",
            "step_number": 3,
            "metadata": {"k": [1, 2]},
        },
        user_id=None,
        received_at=received,
    )
    payload = queue.decode_event(item)
    fast = writer.event_from_payload(payload)
    slow = ABEvent(
        event_id=uuid.UUID(payload["id"]),
        session_id="s-eq",
        variant="deep",
        event_type="step_completed",
        step_number=3,
        metadata={"k": [1, 2]},
        timestamp=received,
        user_id=None,
        client_ts=None,
        event_time=fast.event_time,
    )
    for f in ABEvent._meta.concrete_fields:
        assert getattr(fast, f.attname) == getattr(slow, f.attname), f.attname
    assert (fast._state.adding, fast._state.db) == (slow._state.adding, slow._state.db)
    assert fast.pk is None and fast.timestamp == received
