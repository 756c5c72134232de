"""ab_queue, ab_deadletters and ab_prune on real Redis and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone

from server.apps.front.models import ABEvent
from server.apps.front.ops.retention import parse_age
from server.apps.front.pipeline import queue, writer
from tests.factories import queue_item as make_item

pytestmark = pytest.mark.django_db

MISSING_USER = 987_654_321


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


# --- ab_queue --------------------------------------------------------------------------


def test_ab_queue_before_any_drain_says_never_and_empty():
    figures = json.loads(run("ab_queue", "--json"))
    assert figures == {
        "depth": 0,
        "inflight": 0,
        "inflight_batches": 0,
        "dead_letters": 0,
        "oldest_age_seconds": None,
        "last_drain_at": None,
        "last_drain_age_seconds": None,
        "configured_shards": 1,
        "shards": [
            {
                "shard": 0,
                "depth": 0,
                "inflight": 0,
                "inflight_batches": 0,
                "dead_letters": 0,
                "oldest_age_seconds": None,
            }
        ],
    }
    text = run("ab_queue")
    assert "queue empty" in text
    assert "never" in text


def test_ab_queue_numbers_equal_what_was_put_in():
    # Two dead letters, written by a real drain (bad data), which also records the drain.
    queue.push([make_item(user_id=MISSING_USER), b"{not json"])
    assert writer.drain().dead_lettered == 2
    # Seven queued events, the oldest received 30 s ago; three of them claimed by a drain.
    queue.push([make_item(age_seconds=30)] + [make_item() for _ in range(6)])
    queue.claim(3, lease_seconds=60)
    queue.claim(1, lease_seconds=60)

    figures = json.loads(run("ab_queue", "--json"))

    assert figures["depth"] == 3
    assert figures["inflight"] == 4
    assert figures["inflight_batches"] == 2
    assert figures["dead_letters"] == 2
    # The oldest *queued* event is now the 5th pushed (the first four are in flight).
    assert 0 <= figures["oldest_age_seconds"] < 30
    assert figures["last_drain_at"] is not None
    assert figures["last_drain_age_seconds"] >= 0

    text = run("ab_queue")
    assert "queued           3 events" in text
    assert "in flight        4 events in 2 batches" in text
    assert "dead letters     2 events" in text
    assert figures["last_drain_at"] in text


def test_ab_queue_shows_the_age_of_the_oldest_queued_event():
    queue.push([make_item(age_seconds=90), make_item(age_seconds=5)])
    figures = json.loads(run("ab_queue", "--json"))
    assert 90 <= figures["oldest_age_seconds"] < 120


def test_ab_queue_fails_clearly_when_redis_is_down(settings):
    from devtools.embedded import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(CommandError, match="Redis unavailable"):
        run("ab_queue")


# --- ab_deadletters ---------------------------------------------------------------------


def test_list_shows_each_dead_letter_with_its_event_id_and_error():
    poison_id = uuid.uuid4()
    queue.push([make_item(event_id=poison_id, user_id=MISSING_USER), b"{not json"])
    writer.drain()

    rows = [json.loads(line) for line in run("ab_deadletters", "list", "--json").splitlines()]

    # The undecodable item is refused before the insert, so it is dead-lettered first.
    assert [row["event_id"] for row in rows] == [None, str(poison_id)]
    assert rows[0]["error"].startswith("undecodable")
    assert rows[0]["item"] == "{not json"
    assert "IntegrityError" in rows[1]["error"]
    text = run("ab_deadletters", "list")
    assert str(poison_id) in text
    assert "2 shown of 2 dead letters" in text


def test_replay_of_a_fixed_dead_letter_stores_it_once_with_its_event_id():
    poison_id = uuid.uuid4()
    queue.push([make_item(event_id=poison_id, user_id=MISSING_USER, session_id="replayed")])
    assert writer.drain().dead_lettered == 1
    assert not ABEvent.objects.filter(event_id=poison_id).exists()

    # The fix: the user the event points to exists again.
    get_user_model().objects.create(id=MISSING_USER, username="restored")
    # The same dead letter twice (e.g. the event was sent twice and failed twice).
    dead_entry = queue.get_redis().lindex(queue.keys().dead, 0)
    queue.get_redis().rpush(queue.keys().dead, dead_entry)

    assert "2 dead letters re-queued" in run("ab_deadletters", "replay", "--all")
    assert queue.stats().dead == 0
    assert queue.stats().depth == 2
    result = writer.drain()
    assert result.dead_lettered == 0

    stored = ABEvent.objects.get(event_id=poison_id)
    assert stored.session_id == "replayed"
    assert stored.user_id == MISSING_USER
    assert ABEvent.objects.filter(event_id=poison_id).count() == 1


def test_replay_by_event_id_moves_only_that_one_and_keeps_the_order_of_the_rest():
    ids = [uuid.uuid4() for _ in range(4)]
    queue.push([make_item(event_id=i, user_id=MISSING_USER) for i in ids])
    writer.drain()
    assert queue.stats().dead == 4

    run("ab_deadletters", "replay", "--event-id", str(ids[2]))

    assert [d.event_id for d in queue.dead_letters(0, 10)] == [str(ids[0]), str(ids[1]), str(ids[3])]
    assert queue.decode_event(queue.get_redis().lindex(queue.keys().queue, 0))["id"] == str(ids[2])


def test_replay_of_an_unfixable_dead_letter_dead_letters_it_again_and_loses_nothing():
    queue.push([b"{not json"])
    writer.drain()
    run("ab_deadletters", "replay", "--limit", "1")
    assert writer.drain().dead_lettered == 1
    assert [d.item for d in queue.dead_letters()] == ["{not json"]


def test_purge_needs_yes_and_drops_oldest_first():
    ids = [uuid.uuid4() for _ in range(3)]
    queue.push([make_item(event_id=i, user_id=MISSING_USER) for i in ids])
    writer.drain()

    with pytest.raises(CommandError, match="--yes"):
        run("ab_deadletters", "purge", "--all")
    assert queue.stats().dead == 3

    assert "1 dead letters purged; 2 left" in run("ab_deadletters", "purge", "--limit", "1", "--yes")
    assert [d.event_id for d in queue.dead_letters()] == [str(ids[1]), str(ids[2])]
    run("ab_deadletters", "purge", "--all", "--yes")
    assert queue.stats().dead == 0
    assert queue.stats().depth == 0
    assert ABEvent.objects.count() == 0


def test_replay_and_purge_move_large_dead_lists_in_chunks():
    queue.get_redis().rpush(queue.keys().dead, *[queue.dead_entry(make_item(), "x") for _ in range(2500)])
    assert queue.replay_dead(limit=1200, chunk=500) == 1200
    assert queue.purge_dead(chunk=500) == 1300
    assert (queue.stats().depth, queue.stats().dead) == (1200, 0)


def test_replay_needs_a_selection():
    with pytest.raises(CommandError):
        run("ab_deadletters", "replay")


# --- ab_prune ------------------------------------------------------------------------------


def make_rows(count: int, age: timedelta, prefix: str) -> None:
    now = timezone.now()
    ABEvent.objects.bulk_create(
        ABEvent(session_id=f"{prefix}-{i}", variant="fast", event_type="variant_assigned", timestamp=now - age)
        for i in range(count)
    )


def test_prune_deletes_only_rows_older_than_the_cutoff_in_batches():
    make_rows(11, timedelta(days=200), "old")
    make_rows(4, timedelta(days=181), "old")
    make_rows(6, timedelta(days=179), "recent")
    make_rows(3, timedelta(0), "new")

    out = run("ab_prune", "--older-than", "180d", "--batch-size", "4")

    assert "deleted 15 events" in out
    assert "in 4 statements" in out  # 4 + 4 + 4 + 3
    remaining = set(ABEvent.objects.values_list("session_id", flat=True))
    assert remaining == {f"recent-{i}" for i in range(6)} | {f"new-{i}" for i in range(3)}


def test_prune_dry_run_counts_and_deletes_nothing():
    make_rows(5, timedelta(days=365), "old")
    make_rows(2, timedelta(days=1), "new")
    assert "would delete 5 events" in run("ab_prune", "--older-than", "30d", "--dry-run")
    assert ABEvent.objects.count() == 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("180d", timedelta(days=180)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("3600s", timedelta(seconds=3600)),
        ("2w", timedelta(weeks=2)),
    ],
)
def test_prune_ages(text, expected):
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["180", "d180", "-5d", "1.5d", "3y"])
def test_prune_refuses_an_unclear_age(text):
    with pytest.raises(CommandError):
        run("ab_prune", "--older-than", text)


def test_ab_queue_says_unknown_age_when_the_oldest_item_is_unreadable():
    queue.push([b"{not json", make_item()])
    assert "oldest queued    unknown" in run("ab_queue")
