"""``ab_rollup --rebuild``: the rollup recomputed from ab_events in batches, also while drains write."""

from __future__ import annotations

import io
import random
import threading
import time

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from server.apps.front.models import ABSession
from server.apps.front.pipeline import queue, writer
from server.apps.front.report import rollup
from tests.factories import queue_item

from .test_rollup import T0, assert_equivalent, random_items


def wipe_rollup() -> None:
    """As after adding the rollup to a database that already holds events (or after a restore)."""
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE ab_sessions")


@pytest.mark.django_db(transaction=True)
def test_rebuild_restores_the_rollup_in_batches_with_progress_lines():
    queue.push(random_items(random.Random(11), sessions=150))
    writer.drain(batch_size=500)
    wipe_rollup()
    with connection.cursor() as cursor:  # a row whose session has no event left must go
        cursor.execute(
            "INSERT INTO ab_sessions (session_id, events, min_variant, max_variant, started, completed, abandoned, "
            "first_event_at, last_event_at) VALUES ('zz-gone', 3, 'fast', 'fast', true, true, false, now(), now())"
        )
    assert rollup.differences()[0] > 0

    out = io.StringIO()
    call_command("ab_rollup", "--rebuild", "--batch-events", "97", stdout=out)

    lines = out.getvalue().splitlines()
    assert len(lines) > 5 and lines[0].startswith("batch 1: ") and lines[-1].startswith("rebuilt ")
    assert rollup.differences() == (0, [])
    assert_equivalent()
    check = io.StringIO()
    call_command("ab_rollup", "--check", stdout=check)
    assert check.getvalue().startswith("0 sessions differ")


@pytest.mark.django_db(transaction=True)
def test_rebuild_since_recomputes_only_the_sessions_with_newer_events():
    old = [queue_item(session_id="old", event_type="variant_assigned", received_at=T0)]
    new = [queue_item(session_id="new", event_type="variant_assigned", received_at=T0.replace(day=5))]
    queue.push(old + new)
    writer.drain(batch_size=10)
    ABSession.objects.update(events=99)

    call_command("ab_rollup", "--rebuild", "--since", "2025-06-03", stdout=io.StringIO())

    assert dict(ABSession.objects.values_list("session_id", "events")) == {"old": 99, "new": 1}


@pytest.mark.django_db(transaction=True)
def test_a_single_session_larger_than_a_batch_is_rebuilt_whole():
    queue.push([queue_item(session_id="big", event_type="step_completed", step_number=i) for i in range(30)])
    queue.push([queue_item(session_id="small", event_type="variant_assigned")])
    writer.drain(batch_size=100)
    wipe_rollup()
    rollup.rebuild(batch_events=7)
    assert rollup.differences() == (0, [])


@pytest.mark.django_db(transaction=True)
def test_rebuild_while_drains_write_the_same_sessions_loses_and_doubles_nothing():
    items = random_items(random.Random(5), sessions=400)
    cut = len(items) * 6 // 10
    queue.push(items[:cut])
    writer.drain(batch_size=1000)
    wipe_rollup()
    # The rest of the same sessions' events arrive while the rebuild runs: each writer transaction must be
    # either read by a rebuild batch or applied on top of it, never overwritten by it.
    later = items[cut:]
    stop = threading.Event()
    errors: list[BaseException] = []

    def ingest_and_drain() -> None:
        try:
            for start in range(0, len(later), 40):
                queue.push(later[start : start + 40])
                writer.drain(batch_size=13, budget=30)
                if stop.is_set():
                    break
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=ingest_and_drain) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    done = rollup.rebuild(batch_events=60)
    for thread in threads:
        thread.join(timeout=300)
    while queue.depth():
        writer.drain(batch_size=200)
    assert not errors
    assert done.batches > 10
    assert rollup.differences() == (0, [])
    assert_equivalent()


@pytest.mark.django_db(transaction=True)
def test_a_writer_transaction_open_during_a_rebuild_batch_is_applied_after_it_not_overwritten():
    # The race the batch lock closes: a writer has stored an event and upserted its session but not yet
    # committed; a rebuild batch that read ab_events before that commit must not overwrite the row after.
    queue.push([queue_item(session_id="x", event_type="variant_assigned")])
    writer.drain(batch_size=10)
    wipe_rollup()
    written, errors = threading.Event(), []

    def slow_writer() -> None:
        try:
            with transaction.atomic():
                writer.write_items([queue_item(session_id="x", event_type="onboarding_started")])
                written.set()
                time.sleep(1.0)  # the rebuild starts meanwhile
        except BaseException as exc:
            errors.append(exc)
        finally:
            written.set()
            connection.close()

    thread = threading.Thread(target=slow_writer)
    thread.start()
    assert written.wait(30)
    rollup.rebuild(batch_events=10)
    thread.join(timeout=60)
    assert not errors
    assert rollup.differences() == (0, [])
    assert ABSession.objects.get(session_id="x").events == 2
