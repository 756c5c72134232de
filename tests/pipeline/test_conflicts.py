"""An ``event_id`` reused for a different event is a conflict, not a redelivery (real Redis and PostgreSQL).

The key stays global (one ``event_id``, one row). A redelivery of the same
event (a client retry, a batch written twice after a crash) is a silent
no-op; a different event under a stored event's id is counted in
``abflow_event_id_conflicts_total`` and dead-lettered with the reason, so it
is visible and can be replayed once the clash is resolved.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client import REGISTRY

from server.apps.front.models import ABEvent
from server.apps.front.pipeline import queue, writer

pytestmark = pytest.mark.django_db

CLIENT_TS = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)


def item(event_id: uuid.UUID | None = None, **overrides: object) -> bytes:
    payload: dict[str, object] = {
        "id": str(event_id or uuid.uuid4()),
        "s": "owner",
        "v": "deep",
        "e": "step_completed",
        "n": 2,
        "m": {"choice": "a", "ms": 1250, "ratio": 0.1, "big": 1.5e300, "tiny": 1e-7, "list": [1, 2.5, None]},
        "t": queue.to_micros(timezone.now()),
        "u": None,
        "c": queue.to_micros(CLIENT_TS),
        "w": queue.to_micros(timezone.now()),
    }
    payload.update(overrides)
    return orjson.dumps(payload)


def conflicts_total() -> float:
    return REGISTRY.get_sample_value("abflow_event_id_conflicts_total") or 0.0


def dead_letters(rq) -> list[dict]:
    return [orjson.loads(x) for x in rq.lrange(queue.keys().dead, 0, -1)]


def test_another_sessions_event_under_a_stored_event_id_is_counted_and_dead_lettered_not_lost(rq):
    shared = uuid.uuid4()
    queue.push([item(shared, s="first-session")])
    assert writer.drain().stored == 1
    before = conflicts_total()

    clash = item(shared, s="second-session", e="onboarding_completed", n=None, m={})
    queue.push([item(s="bystander-1"), clash, item(s="bystander-2")])
    result = writer.drain()

    assert result.error is None
    assert (result.stored, result.dead_lettered, result.conflicts) == (2, 1, 1)
    assert conflicts_total() - before == 1
    # First writer keeps the key; the bystanders land; the clash is kept, with its reason.
    assert ABEvent.objects.get(event_id=shared).session_id == "first-session"
    assert set(ABEvent.objects.values_list("session_id", flat=True)) == {"first-session", "bystander-1", "bystander-2"}
    (dead,) = dead_letters(rq)
    assert dead["event"] == clash.decode()
    assert dead["error"].startswith("event_id conflict:")
    assert str(shared) in dead["error"]
    assert "session_id" in dead["error"] and "event_type" in dead["error"] and "metadata" in dead["error"]


def test_same_session_with_a_different_payload_is_also_a_conflict(rq):
    shared = uuid.uuid4()
    queue.push([item(shared, n=2)])
    writer.drain()
    before = conflicts_total()

    queue.push([item(shared, n=3)])
    result = writer.drain()

    assert (result.stored, result.conflicts) == (0, 1)
    assert conflicts_total() - before == 1
    assert "step_number" in dead_letters(rq)[0]["error"]
    assert ABEvent.objects.get(event_id=shared).step_number == 2


def test_a_true_redelivery_is_a_silent_no_op_even_with_a_new_receive_time_and_user(rq, django_user_model):
    user = django_user_model.objects.create(username="later-resolved")
    shared = uuid.uuid4()
    queue.push([item(shared)])
    writer.drain()
    before = conflicts_total()

    # A client retry: received again later (new receive time and corrected
    # time), and this time the user is known. Same event.
    later = timezone.now() + timedelta(seconds=30)
    retry = item(shared, t=queue.to_micros(later), w=queue.to_micros(later), u=user.pk)
    queue.push([retry, retry])  # twice in one batch, too
    result = writer.drain()

    assert result.error is None
    assert (result.stored, result.dead_lettered, result.conflicts) == (2, 0, 0)
    assert conflicts_total() == before
    assert dead_letters(rq) == []
    assert ABEvent.objects.filter(event_id=shared).count() == 1


def test_two_different_events_with_one_id_in_the_same_batch_keep_the_first_and_dead_letter_the_second(rq):
    shared = uuid.uuid4()
    first, second = item(shared, s="a"), item(shared, s="b")
    queue.push([first, item(s="mate"), second])

    result = writer.drain()

    assert (result.stored, result.conflicts, result.dead_lettered) == (2, 1, 1)
    assert ABEvent.objects.get(event_id=shared).session_id == "a"
    assert dead_letters(rq)[0]["event"] == second.decode()


def test_a_dead_lettered_conflict_lands_when_replayed_after_the_clash_is_resolved(rq):
    shared = uuid.uuid4()
    queue.push([item(shared, s="wrong-owner")])
    writer.drain()
    queue.push([item(shared, s="right-owner")])
    assert writer.drain().conflicts == 1

    ABEvent.objects.filter(event_id=shared).delete()  # the operator's fix: drop the clashing row
    assert queue.replay_dead() == 1
    result = writer.drain()

    assert (result.stored, result.conflicts, result.dead_lettered) == (1, 0, 0)
    assert ABEvent.objects.get(event_id=shared).session_id == "right-owner"


def test_the_conflict_check_costs_nothing_on_a_batch_of_new_events_and_one_query_otherwise(rq):
    fresh = [item() for _ in range(50)]
    queue.push(fresh)
    with CaptureQueriesContext(connection) as new_events:
        assert writer.drain().stored == 50
    assert not [q for q in new_events.captured_queries if q["sql"].lstrip().upper().startswith("SELECT")]

    queue.push(fresh[:10] + [item() for _ in range(5)])  # ten redelivered, five new
    with CaptureQueriesContext(connection) as redelivered:
        result = writer.drain()
    assert (result.stored, result.conflicts) == (15, 0)
    selects = [q for q in redelivered.captured_queries if q["sql"].lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1
    assert ABEvent.objects.count() == 55
