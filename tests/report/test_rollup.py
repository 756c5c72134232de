"""The session rollup ab_sessions equals a full fold of ab_events, whatever arrives in whatever order.

Equivalence is the test: randomized event streams (duplicates, redeliveries,
reordering across batches, contamination, sessions without assignment,
completions without start, odd step times) go through the REAL queue and
writer, several drains at once; then every ab_sessions row equals the same
session folded from all of ab_events, and the report read from the rollup
equals the report computed from a full scan, number for number.
"""

from __future__ import annotations

import random
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings

from server.apps.front.models import ABEvent, ABSession
from server.apps.front.ops import retention
from server.apps.front.pipeline import queue, writer
from server.apps.front.report import build, rollup
from tests.factories import queue_item

T0 = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
STEP_TIMES: list[Any] = [1200, 800, 5000, 4999.5, 0, -5, "slow", None, 10**13, 1e-3, True]


def session_events(rng: random.Random, sid: str) -> list[dict[str, Any]]:
    """One session's events as queue_item keyword arguments, with the odd cases the report must survive."""
    variant = rng.choice(["fast", "deep"])
    other = "deep" if variant == "fast" else "fast"
    start = T0 + timedelta(minutes=rng.randint(0, 3 * 24 * 60))
    out: list[dict[str, Any]] = []
    # Most sessions number their events (abtrack's seq), now and then skipping a number: an event lost.
    numbered = rng.random() < 0.7
    seq = [0]

    def add(event_type: str, step: int | None = None, ms: Any = None, v: str = variant) -> None:
        at = start + timedelta(seconds=len(out) * rng.randint(1, 90))
        metadata = {} if ms is None else {"time_spent_ms": ms}
        # Half the events carry a client clock (event_time), the others only the receive time.
        client = rng.random() < 0.5
        seq[0] += 2 if rng.random() < 0.1 else 1
        out.append(
            dict(
                session_id=sid,
                variant=v,
                event_type=event_type,
                step_number=step,
                metadata=metadata,
                received_at=at + timedelta(seconds=rng.randint(0, 30)),
                client_ts=at if client else None,
                event_time=at if client else None,
                seq=seq[0] if numbered else None,
            )
        )

    if rng.random() < 0.9:  # some sessions are never assigned
        add("variant_assigned")
    if rng.random() < 0.03:  # contamination: an event (often an assignment) in the other variant
        add(rng.choice(["variant_assigned", "onboarding_started"]), v=other)
    if rng.random() < 0.85:
        add("onboarding_started")
    steps = rng.randint(0, 6)
    for step in range(1, steps + 1):
        add("step_completed", step, rng.choice(STEP_TIMES) if rng.random() < 0.4 else rng.randint(100, 60_000))
        if rng.random() < 0.1:  # the same step sent again (a client retry) with another time
            add("step_completed", step, rng.randint(100, 60_000))
    roll = rng.random()
    if roll < 0.5 and steps:
        add("onboarding_completed")
    elif roll < 0.8:
        add("onboarding_abandoned", rng.randint(0, steps + 1))
        if rng.random() < 0.2:
            add("onboarding_abandoned", rng.randint(0, steps + 1))
    if rng.random() < 0.05:  # a completion without a start
        add("onboarding_completed")
    return out


def random_items(rng: random.Random, sessions: int) -> list[bytes]:
    """Queue items of ``sessions`` sessions: shuffled across batches, with duplicates and redeliveries."""
    items: list[bytes] = []
    for i in range(sessions):
        for kwargs in session_events(rng, f"s{i:05d}-{rng.randint(0, 99)}"):
            event_id = uuid.uuid4()
            items.append(queue_item(event_id=event_id, **kwargs))
            if rng.random() < 0.08:  # the same event again: exactly the item, or received again later
                again = dict(kwargs, received_at=kwargs["received_at"] + timedelta(seconds=rng.randint(0, 5)))
                items.append(queue_item(event_id=event_id, **(kwargs if rng.random() < 0.5 else again)))
    rng.shuffle(items)
    return items


def drain_concurrently(drains: int, batch_size: int) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            # Retried: two drains upserting the same sessions in another order can deadlock during a
            # bisection (rare); PostgreSQL aborts one, whose batch goes back to the queue.
            for _ in range(50):
                result = writer.drain(batch_size=batch_size, budget=120)
                if result.error is None:
                    break
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(drains)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    assert queue.depth() == 0


def rollup_rows() -> dict[str, tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(rollup.COLUMNS)} FROM ab_sessions")
        return {row[0]: row for row in cursor.fetchall()}


def folded_rows() -> dict[str, tuple[Any, ...]]:
    """The reference: every session folded from all of ab_events."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(rollup.COLUMNS)} FROM ({rollup.session_rows_sql('ab_events')}) AS f")
        return {row[0]: row for row in cursor.fetchall()}


def assert_equivalent(ranges: list[tuple[datetime | None, datetime | None]] | None = None) -> None:
    kept, folded = rollup_rows(), folded_rows()
    assert kept.keys() == folded.keys()
    differing = [sid for sid in kept if kept[sid] != folded[sid]]
    assert not differing, [(kept[s], folded[s]) for s in differing[:3]]
    assert rollup.cell_differences() == dict.fromkeys(rollup.CELL_TABLES, 0)
    for since, until in ranges or [(None, None)]:
        from_rollup = build.build_report(since, until, source="rollup")
        from_events = build.build_report(since, until, source="events")
        assert from_rollup == from_events, (since, until)


@pytest.mark.django_db(transaction=True)
def test_installed_triggers_are_the_code_in_rollup_py():
    # The migration holds a frozen copy of the trigger bodies; a change to the fold needs a new migration.
    assert rollup.installed_bodies() == rollup.function_bodies()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rollup_equals_full_scan_on_random_streams_through_concurrent_drains(seed):
    rng = random.Random(seed)
    items = random_items(rng, sessions=300)
    queue.push(items)
    drain_concurrently(drains=3, batch_size=rng.choice([7, 40, 150]))

    assert ABEvent.objects.count() == len({queue.decode_event(item)["id"] for item in items})
    assert ABSession.objects.count() > 250
    day = timedelta(days=1)
    assert_equivalent([(None, None), (T0 + day, None), (None, T0 + day), (T0 + day / 2, T0 + 2 * day)])
    report = build.build_report()
    # The streams exercise what they claim to.
    assert report["sessions"]["contaminated"] > 0 and report["sessions"]["unassigned"] > 0
    assert report["time_to_complete_survival"]["comparison"] is not None and report["lift_over_time"]
    assert report["data_quality"]["arms"]["fast"]["lost_events"] > 0
    # "Completed within T" from the cells subtracts the sessions of the last T seconds: with a T of 12 hours
    # many are; a fractional T is read by a scan (the cells hold whole seconds). Same numbers as a scan.
    for within in (12 * 3600.0, 4000.5, 1.0):
        with override_settings(AB_COMPLETE_WITHIN_SECONDS=within):
            from_cells = build.build_report()
            assert from_cells == build.build_report(source="events"), within
            followed = from_cells["time_to_complete_survival"]["completed_within"]
            analysed = report["sessions"]["analysed"]
            recent = analysed["fast"] + analysed["deep"] - followed["n_a"] - followed["n_b"]
            assert recent > 10 if within > 40_000 else recent >= 0, within


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_event_changes_nothing_in_any_later_batch():
    event_id = uuid.uuid4()
    first = queue_item(event_id=event_id, session_id="dup", event_type="variant_assigned")
    queue.push([first, queue_item(session_id="dup", event_type="onboarding_started")])
    writer.drain(batch_size=10)
    before = rollup_rows()["dup"]
    queue.push([first])
    queue.push([queue_item(event_id=event_id, session_id="dup", event_type="variant_assigned", age_seconds=-5)])
    writer.drain(batch_size=1)
    assert rollup_rows()["dup"] == before
    assert before[rollup.COLUMNS.index("events")] == 2


@pytest.mark.django_db(transaction=True)
def test_a_step_sent_twice_is_timed_by_its_smallest_time_whatever_arrives_first():
    for order, sid in (((900, 300), "a"), ((300, 900), "b")):
        for ms in order:
            queue.push(
                [queue_item(session_id=sid, event_type="step_completed", step_number=1, metadata={"time_spent_ms": ms})]
            )
            writer.drain(batch_size=10)
    assert dict(ABSession.objects.values_list("session_id", "step_ms")) == {"a": {"1": 300}, "b": {"1": 300}}


@pytest.mark.django_db(transaction=True)
def test_a_rejected_row_rolls_back_its_rollup_delta_and_its_batch_mates_land():
    # A user that does not exist: the insert of the whole batch fails, the writer bisects; only the
    # stored events may reach the rollup.
    good = [queue_item(session_id="ok", event_type=t) for t in ("variant_assigned", "onboarding_started")]
    poison = queue_item(session_id="ok", event_type="onboarding_completed", user_id=987654321)
    queue.push([good[0], poison, good[1]])
    result = writer.drain(batch_size=10)
    assert result.stored == 2 and result.dead_lettered == 1
    row = rollup_rows()["ok"]
    assert row[rollup.COLUMNS.index("events")] == 2
    assert row[rollup.COLUMNS.index("completed")] is False
    assert_equivalent()


@pytest.mark.django_db(transaction=True)
def test_retention_deletes_keep_the_rollup_equal_to_the_remaining_events():
    rng = random.Random(7)
    queue.push(random_items(rng, sessions=120))
    writer.drain(batch_size=100)
    retention.prune(T0 + timedelta(days=1, hours=12), batch_size=50)
    assert ABEvent.objects.exists()
    assert_equivalent()


@pytest.mark.django_db(transaction=True)
def test_sessions_are_dated_by_their_assignment_and_keep_their_later_events():
    assigned = T0 + timedelta(hours=23)
    queue.push(
        [
            queue_item(session_id="late", event_type="variant_assigned", received_at=assigned),
            queue_item(session_id="late", event_type="onboarding_completed", received_at=T0 + timedelta(days=3)),
            # Never assigned: dated by its first event.
            queue_item(session_id="orphan", event_type="onboarding_started", received_at=T0 + timedelta(days=2)),
        ]
    )
    writer.drain(batch_size=10)
    day1 = build.build_report(T0, T0 + timedelta(days=1))
    assert day1["sessions"]["analysed"]["fast"] == 1
    assert day1["funnel"]["fast"][-1]["sessions"] == 1  # completed two days after it entered: counted
    assert day1["sessions"]["unassigned"] == 0
    day3 = build.build_report(T0 + timedelta(days=2), T0 + timedelta(days=3))
    assert day3["sessions"]["analysed"]["fast"] == 0 and day3["sessions"]["unassigned"] == 1
    assert_equivalent([(T0, T0 + timedelta(days=1)), (T0 + timedelta(days=2), None)])


@pytest.mark.django_db(transaction=True)
def test_truncating_the_events_empties_the_rollup():
    queue.push([queue_item(session_id="t", event_type="variant_assigned")])
    writer.drain(batch_size=10)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE ab_events")
    assert not ABSession.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_database_upgraded_from_0006_gets_correct_insight_cells():
    from django.db.migrations.executor import MigrationExecutor

    queue.push(random_items(random.Random(11), sessions=120))
    writer.drain(batch_size=60)
    MigrationExecutor(connection).migrate([("front", "0006_absession_seq")])
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('ab_report_survival')")
        assert cursor.fetchone()[0] is None
    # Events keep arriving under 0006's triggers (new sessions and later events of existing ones).
    queue.push(random_items(random.Random(12), sessions=120))
    writer.drain(batch_size=45)
    executor = MigrationExecutor(connection)
    executor.migrate([("front", "0007_report_insight_cells")])
    assert rollup.installed_bodies() == rollup.function_bodies()
    assert_equivalent()
    # And the triggers keep them from there on.
    queue.push(random_items(random.Random(13), sessions=60))
    writer.drain(batch_size=30)
    assert_equivalent()
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())  # back to the latest (later migrations too)
