"""Overlapping drains (two workers, a late beat run, a manual ab_flush) store each event exactly once.

Why it holds: a drain *claims* a batch with one Lua script (LPOP n + lease),
so no two drains can hold the same event; and the insert is idempotent on
``event_id``, so even a batch written twice (lease expired mid-write) stores
once. Here several real drains run at the same time, each on its own
PostgreSQL connection, over one real Redis queue.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connection

from server.apps.front.models import ABEvent
from server.apps.front.pipeline import queue, writer
from tests.factories import queue_item as make_item

EVENTS = 6000
DRAINS = 4


@pytest.mark.django_db(transaction=True)
def test_concurrent_drains_store_every_event_exactly_once():
    items = [make_item() for _ in range(EVENTS)]
    for start in range(0, EVENTS, 2000):
        queue.push(items[start : start + 2000])
    expected = {queue.decode_event(item)["id"] for item in items}

    start_together = threading.Barrier(DRAINS)
    results: list[writer.DrainResult] = []
    errors: list[BaseException] = []

    def run_drain() -> None:
        try:
            start_together.wait()
            # Small batches: many claims, so the drains really interleave.
            results.append(writer.drain(batch_size=50, budget=120))
        except BaseException as exc:  # reported below, a thread cannot fail the test itself
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run_drain) for _ in range(DRAINS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)

    assert not errors
    assert len(results) == DRAINS
    # Each drain did part of the work (they overlapped), and together all of it once.
    assert all(r.stored > 0 for r in results), [r.stored for r in results]
    assert sum(r.stored for r in results) == EVENTS
    stored = Counter(str(i) for i in ABEvent.objects.values_list("event_id", flat=True))
    assert set(stored) == expected
    assert max(stored.values()) == 1
    stats = queue.stats()
    assert (stats.depth, stats.inflight, stats.dead) == (0, 0, 0)


@pytest.mark.django_db(transaction=True)
def test_drain_concurrently_uses_helper_threads_on_a_backlog_and_stores_each_event_once():
    """The shipped drain (AB_DRAIN_THREADS): helpers in threads of the worker process, their totals added."""
    items = [make_item() for _ in range(3000)]
    queue.push(items)
    expected = {queue.decode_event(item)["id"] for item in items}
    seen_threads: set[str] = set()
    real_write = writer.write_items

    def recording_write(batch):  # the real writer; only notes which thread ran it
        seen_threads.add(threading.current_thread().name)
        return real_write(batch)

    writer.write_items = recording_write
    try:
        result = writer.drain_concurrently(3, batch_size=100, budget=120)
    finally:
        writer.write_items = real_write
    assert result.error is None
    assert result.stored == result.claimed == 3000
    assert len(seen_threads) > 1, seen_threads  # the helpers drained too
    stored = Counter(str(i) for i in ABEvent.objects.values_list("event_id", flat=True))
    assert set(stored) == expected and max(stored.values()) == 1
    stats = queue.stats()
    assert (stats.depth, stats.inflight, stats.dead) == (0, 0, 0)


@pytest.mark.django_db(transaction=True)
def test_drain_concurrently_starts_no_helper_for_a_queue_within_one_batch(monkeypatch):
    queue.push([make_item() for _ in range(50)])
    monkeypatch.setattr(writer, "_helper_pool", lambda size: pytest.fail("a helper started for one batch"))
    result = writer.drain_concurrently(2, batch_size=100, budget=30)
    assert result.stored == 50
