"""The queue protocol and the batch writer, on real Redis and real PostgreSQL.

(Process kills and database outages under load are in tests/faults/.)
"""

from __future__ import annotations

import re
import threading
import time
from io import StringIO

import orjson
import psycopg2
import pytest
from django.core.management import call_command
from django.db import connection

from devtools.embedded import free_port
from server.apps.front.models import ABEvent
from server.apps.front.pipeline import queue, writer
from tests.factories import queue_item as item

pytestmark = pytest.mark.django_db


def dead_letters(rq) -> list[dict]:
    return [orjson.loads(x) for x in rq.lrange(queue.keys().dead, 0, -1)]


def test_poison_event_goes_to_dead_letter_and_batch_lands(rq):
    good = [item(session_id=f"good-{i}") for i in range(50)]
    poison = [
        item(session_id="bad-user", user_id=987654321),  # foreign key to a user that does not exist
        item(session_id="bad-step", step_number=2**40),  # out of PostgreSQL's integer range
        item(session_id="bad-nul", metadata={"x": "a\u0000b"}),  # jsonb cannot hold \u0000
        b"{not json",
    ]
    queue.push(good[:20] + poison[:2] + good[20:40] + poison[2:] + good[40:])

    result = writer.drain(batch_size=1000)

    assert result.stored == 50
    assert result.dead_lettered == 4
    assert ABEvent.objects.count() == 50
    assert set(ABEvent.objects.values_list("session_id", flat=True)) == {f"good-{i}" for i in range(50)}
    dead = dead_letters(rq)
    assert len(dead) == 4
    errors = " ".join(d["error"] for d in dead)
    assert "IntegrityError" in errors and "DataError" in errors and "undecodable" in errors
    assert queue.stats().depth == 0 and queue.stats().inflight == 0


def test_batch_written_twice_stores_each_event_once():
    items = [item(session_id=f"s-{i}") for i in range(10)]
    assert writer.write_items(items).stored == 10
    # A worker that committed but died before its ack: the batch is written again.
    assert writer.write_items(items).stored == 10
    assert ABEvent.objects.count() == 10


def test_expired_lease_of_a_dead_worker_returns_the_batch_and_it_lands_once(rq, settings):
    queue.push([item(session_id=f"s-{i}") for i in range(30)])
    # A worker claims a batch and dies before writing it (no ack, no release).
    abandoned = queue.claim(20, lease_seconds=0.5)
    assert abandoned is not None and len(abandoned.items) == 20
    assert queue.stats().inflight == 20

    first = writer.drain()  # lease not yet expired: only the 10 unclaimed events
    assert first.stored == 10
    time.sleep(0.7)
    second = writer.drain()
    assert second.requeued == 20
    assert second.stored == 20
    assert ABEvent.objects.count() == 30
    assert queue.stats().inflight == 0
    # The dead worker's late ack (if it had committed after all) changes nothing.
    queue.ack(abandoned)
    assert ABEvent.objects.count() == 30


def test_event_reclaimed_too_often_is_dead_lettered_instead_of_crashing_workers_forever(rq, settings):
    settings.AB_MAX_ATTEMPTS = 3
    queue.push([item(session_id="crashy")])
    for _ in range(3):
        assert queue.claim(10, lease_seconds=0.01) is not None
        time.sleep(0.03)
        queue.reap(settings.AB_MAX_ATTEMPTS)
    stats = queue.stats()
    assert (stats.depth, stats.inflight, stats.dead) == (0, 0, 1)
    assert "claimed 3 times" in dead_letters(rq)[0]["error"]


def test_release_puts_the_batch_back_at_the_head_in_order(rq):
    items = [item(session_id=f"s-{i}") for i in range(5)]
    queue.push(items)
    batch = queue.claim(3, lease_seconds=30)
    queue.push([item(session_id="later")])
    assert queue.release(batch) == 3
    assert rq.lrange(queue.keys().queue, 0, -1) == [*items, rq.lindex(queue.keys().queue, -1)]
    assert queue.stats().inflight == 0


@pytest.mark.django_db(transaction=True)
def test_database_refusing_connections_keeps_the_batch_in_redis_until_it_returns(rq):
    items = [item(session_id=f"s-{i}") for i in range(25)]
    queue.push(items)
    real_port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = free_port()  # nothing listens: connection refused
    try:
        result = writer.drain(batch_size=10)
    finally:
        connection.close()
        connection.settings_dict["PORT"] = real_port
    assert result.stored == 0
    assert result.error and "OperationalError" in result.error
    stats = queue.stats()
    assert (stats.depth, stats.inflight, stats.dead) == (25, 0, 0)
    assert rq.lrange(queue.keys().queue, 0, -1) == items  # nothing split, nothing reordered

    assert writer.drain(batch_size=10).stored == 25
    assert ABEvent.objects.count() == 25


def test_drain_stops_at_its_time_budget_and_leaves_the_rest_queued():
    queue.push([item(session_id=f"s-{i}") for i in range(100)])
    result = writer.drain(batch_size=10, budget=0)
    assert result.batches == 0
    assert queue.stats().depth == 100
    result = writer.drain(batch_size=10, budget=60)
    assert result.batches == 10 and result.stored == 100


def test_ab_flush_command_drains_and_prints_how_many_were_stored():
    queue.push([item(session_id=f"s-{i}") for i in range(7)])
    out = StringIO()
    call_command("ab_flush", stdout=out)
    assert "stored 7 events" in out.getvalue()
    assert ABEvent.objects.count() == 7


PROGRESS = re.compile(
    r"^progress: (?P<stored>[\d,]+) stored, (?P<dead>[\d,]+) dead-lettered, "
    r"(?P<rate>[\d,]+) events/s, (?P<queued>[\d,]+) queued, (?P<seconds>\d+\.\d)s$"
)


def test_ab_flush_prints_progress_lines_with_stored_dead_lettered_rate_and_what_is_still_queued():
    good = [item(session_id=f"s-{i}") for i in range(50)]
    queue.push([*good[:15], b"{not json", *good[15:]])
    out = StringIO()
    call_command("ab_flush", "--batch-size", "10", "--progress-every", "0", stdout=out)

    *lines, summary = out.getvalue().splitlines()
    assert summary.startswith("stored 50 events in 6 batches (1 dead-lettered")
    progress = [PROGRESS.match(line) for line in lines]
    assert all(progress), lines
    figures = [{k: int(v.replace(",", "")) for k, v in m.groupdict().items() if k != "seconds"} for m in progress]
    assert [f["stored"] for f in figures] == [10, 19, 29, 39, 49, 50]
    assert [f["dead"] for f in figures] == [0, 1, 1, 1, 1, 1]
    assert [f["queued"] for f in figures] == [41, 31, 21, 11, 1, 0]
    assert all(f["rate"] > 0 for f in figures)
    seconds = [float(m["seconds"]) for m in progress]
    assert seconds == sorted(seconds)


def test_ab_flush_prints_no_progress_before_its_interval_has_passed():
    queue.push([item(session_id=f"s-{i}") for i in range(30)])
    out = StringIO()
    call_command("ab_flush", "--batch-size", "10", stdout=out)  # default: every 5 s; this takes far less
    (summary,) = out.getvalue().splitlines()
    assert summary.startswith("stored 30 events in 3 batches")


def test_push_and_claim_move_large_batches_past_the_lua_stack_limit(rq):
    items = [item(session_id=f"s-{i}") for i in range(12_000)]
    assert queue.push(items) == 12_000
    batch = queue.claim(10_000, lease_seconds=30)
    assert batch is not None and len(batch.items) == 10_000
    queue.ack(batch)
    assert queue.stats().depth == 2_000


@pytest.mark.django_db(transaction=True)
def test_a_write_hung_on_a_lock_times_out_and_the_batch_waits_in_redis_until_the_lock_is_gone(rq, settings):
    # The solo worker enforces no Celery time limit; the writer's own
    # statement_timeout must end a write stuck behind another session's lock.
    settings.AB_WRITER_STATEMENT_TIMEOUT = 0.5
    items = [item(session_id=f"s-{i}") for i in range(25)]
    queue.push(items)
    db = connection.settings_dict
    locker = psycopg2.connect(
        dbname=db["NAME"], user=db["USER"], host=db["HOST"], port=db["PORT"], password=db["PASSWORD"] or None
    )
    # A safety valve so that a writer without the timeout fails this test instead of hanging it.
    valve = threading.Timer(8.0, locker.rollback)
    try:
        locker.cursor().execute("LOCK TABLE ab_events IN ACCESS EXCLUSIVE MODE")
        valve.start()
        started = time.monotonic()
        result = writer.drain(batch_size=10)
        elapsed = time.monotonic() - started
    finally:
        valve.cancel()
        locker.rollback()
        locker.close()

    assert elapsed < 5
    assert result.stored == 0
    assert result.error and "statement timeout" in result.error
    stats = queue.stats()
    assert (stats.depth, stats.inflight, stats.dead) == (25, 0, 0)  # handed back whole, nothing dead-lettered
    assert rq.lrange(queue.keys().queue, 0, -1) == items
    with connection.cursor() as cursor:  # SET LOCAL: the bound ends with the writer's transaction
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "0"

    result = writer.drain(batch_size=10)  # the lock is gone
    assert (result.error, result.stored) == (None, 25)
    assert ABEvent.objects.count() == 25
