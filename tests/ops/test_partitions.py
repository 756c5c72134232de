"""ab_events partitioned by month: routing, maintenance, retention by partition, the migration (real PostgreSQL)."""

from __future__ import annotations

import importlib
import io
import random
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from server.apps.front.models import ABEvent, ABEventId
from server.apps.front.ops import partitions, retention
from server.apps.front.pipeline import copyin, queue, writer
from server.apps.front.report import rollup
from tests.factories import queue_item

pytestmark = pytest.mark.django_db


def month(year: int, month_: int, day: int = 10) -> datetime:
    return datetime(year, month_, day, 12, 0, tzinfo=UTC)


def where() -> dict[str, int]:
    """Rows per partition (by table name)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text, count(*) FROM ab_events GROUP BY 1")
        return dict(cursor.fetchall())


def sessions_snapshot() -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(rollup.COLUMNS)} FROM ab_sessions ORDER BY session_id")
        return cursor.fetchall()


def assert_rollup_is_a_full_recomputation() -> None:
    assert rollup.differences() == (0, [])
    assert set(rollup.cell_differences().values()) == {0}


def session_items(session: str, received: list[datetime], rng: random.Random) -> list[bytes]:
    """A session's events, one per receive time: assigned, started, steps, completed."""
    variant = rng.choice(["fast", "deep"])
    items = []
    for i, at in enumerate(received):
        if i == 0:
            kind, step, meta = "variant_assigned", None, {}
        elif i == 1:
            kind, step, meta = "onboarding_started", None, {}
        elif i == len(received) - 1:
            kind, step, meta = "onboarding_completed", None, {}
        else:
            kind, step, meta = "step_completed", i - 1, {"time_spent_ms": rng.randint(100, 9000)}
        items.append(
            queue_item(
                session_id=session,
                variant=variant,
                event_type=kind,
                step_number=step,
                metadata=meta,
                received_at=at,
                seq=i + 1,
            )
        )
    return items


def drain(items: list[bytes]) -> writer.BatchResult:
    queue.push(items)
    result = writer.drain(batch_size=len(items) + 1)
    assert result.error is None
    return result


def test_events_of_months_without_a_partition_land_in_default_and_maintenance_moves_them_unchanged(rq):
    rng = random.Random(7)
    now = timezone.now()
    far_past, far_future = month(2019, 4), month(2031, 9)
    items = []
    for i in range(20):
        # Each session spans this month, the far past and the far future: one batch, three partitions.
        items += session_items(f"s-{i}", [far_past, now, far_future + timedelta(minutes=i), now], rng)
    assert drain(items).stored == 80
    assert where()["ab_events_default"] == 40
    before = sessions_snapshot()
    assert_rollup_is_a_full_recomputation()

    created = partitions.ensure()

    assert dict(created) == {"ab_events_p2019_04": 20, "ab_events_p2031_09": 20}
    counts = where()
    assert "ab_events_default" not in counts
    assert counts["ab_events_p2019_04"] == counts["ab_events_p2031_09"] == 20
    assert ABEvent.objects.count() == 80
    assert sessions_snapshot() == before  # rows moved partition to partition: no trigger, nothing to change
    assert_rollup_is_a_full_recomputation()
    assert partitions.ensure() == []  # idempotent

    # The new partitions are real ones: the next events of those months go there, not to DEFAULT.
    drain(session_items("later", [far_past + timedelta(days=1), far_future, far_future], rng))
    assert "ab_events_default" not in where()
    assert_rollup_is_a_full_recomputation()


def test_maintenance_creates_the_coming_months_partitions(settings):
    settings.AB_PARTITIONS_AHEAD = 5
    partitions.ensure()
    names = {p.name for p in partitions.listing()}
    first = timezone.now().astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for ahead in range(6):
        y, m = divmod(first.month - 1 + ahead, 12)
        assert f"ab_events_p{first.year + y}_{m + 1:02d}" in names
    assert "ab_events_default" in names


def test_beat_schedules_the_partition_maintenance_task(settings, rq):
    from celery_app import app
    from worker import tasks

    entry = settings.CELERY_BEAT_SCHEDULE["ab-partitions"]
    assert entry["task"] in app.tasks
    assert entry["schedule"] == settings.AB_PARTITION_INTERVAL
    drain([queue_item(received_at=month(2035, 3))])  # lands in DEFAULT
    assert tasks.maintain_partitions()["created"] == [("ab_events_p2035_03", 1)]
    assert "ab_events_default" not in where()


def test_a_copy_and_an_insert_into_the_root_fire_the_rollup_trigger_once_with_every_row():
    """Statement-level triggers with transition tables on the partitioned root: once per statement, all rows
    of every partition in the transition table."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE fired (rows bigint)")
        cursor.execute(
            "CREATE FUNCTION pg_temp.count_fired() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO fired SELECT count(*) FROM new_events; RETURN NULL; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER count_fired AFTER INSERT ON ab_events REFERENCING NEW TABLE AS new_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.count_fired()"
        )
    times = [month(2018, 1), timezone.now(), month(2040, 2), timezone.now()]
    rows = [copyin.encode_row(queue.event_fields(queue.decode_event(queue_item(received_at=t)))) for t in times]
    columns = ", ".join(f'"{c.column}"' for c in copyin.COLUMNS)
    with connection.cursor() as cursor:
        cursor.cursor.copy_expert(
            f"COPY ab_events ({columns}) FROM STDIN WITH (FORMAT binary)", io.BytesIO(copyin.copy_data(rows))
        )
        ABEvent.objects.bulk_create(
            [ABEvent(session_id="bulk", variant="fast", event_type="variant_assigned", timestamp=t) for t in times]
        )
        cursor.execute("SELECT rows FROM fired")
        assert [r[0] for r in cursor.fetchall()] == [4, 4]
        cursor.execute("DROP TRIGGER count_fired ON ab_events")
    assert_rollup_is_a_full_recomputation()


def test_prune_drops_whole_partitions_recomputes_their_sessions_and_leaves_other_months_untouched(rq):
    rng = random.Random(11)
    now = timezone.now()
    old1, old2 = now - timedelta(days=400), now - timedelta(days=370)
    partial = now - timedelta(days=200)  # in the month the cutoff falls in, or near it
    items = []
    for i in range(15):
        # Sessions that lose some events (old months) and keep others (recent ones), and sessions wholly old.
        items += session_items(f"mixed-{i}", [old1, old2 + timedelta(hours=i), partial, now], rng)
        items += session_items(f"old-{i}", [old1, old1, old2, old2], rng)
        items += session_items(f"new-{i}", [now, now, now, now], rng)
    drain(items)
    partitions.ensure()  # the old months get partitions of their own
    cutoff = now - timedelta(days=300)
    whole = retention.whole_partitions(cutoff)
    assert len(whole) >= 2
    assert all(p.high <= cutoff for p in whole)
    keep = set(ABEvent.objects.filter(timestamp__gte=cutoff).values_list("id", "event_id", "session_id", "timestamp"))
    gone_ids = set(ABEvent.objects.filter(timestamp__lt=cutoff).values_list("event_id", flat=True))
    assert len(gone_ids) == 90 and len(keep) == 90

    dry = call("ab_prune", "--older-than", "300d", "--dry-run")
    assert "would delete 90 events" in dry
    assert ABEvent.objects.count() == 180

    out = call("ab_prune", "--older-than", "300d", "--batch-size", "7")

    assert "deleted 90 events" in out
    assert f"by dropping {len(whole)} partitions" in out
    remaining = {p.name for p in partitions.listing()}
    assert not remaining & {p.name for p in whole}
    assert set(ABEvent.objects.values_list("id", "event_id", "session_id", "timestamp")) == keep
    assert not ABEvent.objects.filter(session_id__startswith="old-").exists()
    assert_rollup_is_a_full_recomputation()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM ab_prune_sessions")
        assert cursor.fetchone()[0] == 0
    ids = set(ABEventId.objects.values_list("event_id", flat=True))
    assert not ids & gone_ids
    assert {event_id for _, event_id, _, _ in keep} <= ids


def test_prune_of_a_partially_covered_month_and_default_deletes_rows_and_trims_their_ids(rq):
    now = timezone.now()
    items = [queue_item(session_id=f"d-{i}", received_at=now - timedelta(days=90 + i)) for i in range(9)]
    items += [queue_item(session_id=f"n-{i}", received_at=now) for i in range(4)]
    drain(items)
    assert where().get("ab_events_default") == 9  # no partition for those months: DEFAULT (a partial prune)
    result = retention.prune(now - timedelta(days=30), batch_size=4)
    assert (result.rows, result.statements, result.dropped) == (9, 3, [])
    assert ABEvent.objects.count() == 4
    assert ABEventId.objects.count() == 4
    assert_rollup_is_a_full_recomputation()


def test_an_interrupted_prune_recomputes_the_dropped_sessions_on_its_next_run(rq):
    rng = random.Random(3)
    now = timezone.now()
    drain(session_items("span", [now - timedelta(days=400), now - timedelta(days=400), now, now], rng))
    partitions.ensure()
    (part,) = retention.whole_partitions(now - timedelta(days=300))
    retention._drop(part.name, lock_timeout=5)  # as if the process died right after the drop
    assert rollup.differences()[0] == 1

    result = retention.prune(now - timedelta(days=300))

    assert result.sessions_recomputed == 1
    assert_rollup_is_a_full_recomputation()
    assert ABEvent.objects.filter(session_id="span").count() == 2


def test_a_redelivered_event_is_stored_once_whichever_partition_it_lands_in(rq):
    item = queue_item(session_id="twice", received_at=month(2017, 6))
    assert drain([item]).stored == 1
    assert drain([item]).stored == 1  # a redelivery: silent, counted as stored, not written again
    partitions.ensure()
    assert drain([item]).stored == 1
    assert ABEvent.objects.filter(session_id="twice").count() == 1


def call(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


# --- the migration itself -----------------------------------------------------------------------------

MIGRATION = importlib.import_module("server.apps.front.migrations.0008_partition_ab_events")
PREVIOUS = next(dep for dep in MIGRATION.Migration.dependencies if dep[0] == "front")


@pytest.mark.django_db(transaction=True)
def test_the_migration_converts_a_filled_table_without_losing_a_row_and_back():
    executor = MigrationExecutor(connection)
    executor.migrate([PREVIOUS])
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'ab_events'")
            assert cursor.fetchone()[0] == "r"
            cursor.execute(
                """INSERT INTO ab_events (session_id, variant, event_type, step_number, metadata, "timestamp",
                    event_id, seq)
                SELECT 'm-' || (g % 97), CASE WHEN g % 2 = 0 THEN 'fast' ELSE 'deep' END,
                    (ARRAY['variant_assigned', 'onboarding_started', 'step_completed'])[1 + g % 3], g % 4,
                    jsonb_build_object('time_spent_ms', g % 700), now() - make_interval(hours => g * 7),
                    gen_random_uuid(), g
                FROM generate_series(1, 3000) AS g"""
            )
            cursor.execute('SELECT id, event_id, session_id, "timestamp" FROM ab_events ORDER BY id')
            before = cursor.fetchall()
        sessions = sessions_snapshot()

        executor = MigrationExecutor(connection)
        executor.migrate([("front", "0008_partition_ab_events")])

        with connection.cursor() as cursor:
            cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'ab_events'")
            assert cursor.fetchone()[0] == "p"
            cursor.execute('SELECT id, event_id, session_id, "timestamp" FROM ab_events ORDER BY id')
            assert cursor.fetchall() == before
            cursor.execute("SELECT count(*) FROM ab_events_default")
            assert cursor.fetchone()[0] == 0  # every old month got its partition
            cursor.execute("SELECT count(*), count(DISTINCT event_id) FROM ab_event_ids")
            assert cursor.fetchone() == (3000, 3000)
        assert sessions_snapshot() == sessions
        assert_rollup_is_a_full_recomputation()
        # The sequence goes on after the old ids, and the rollup triggers work on the new table.
        new = ABEvent.objects.create(session_id="m-1", variant="fast", event_type="variant_assigned")
        assert new.id == before[-1][0] + 1
        assert_rollup_is_a_full_recomputation()

        executor = MigrationExecutor(connection)
        executor.migrate([PREVIOUS])
        with connection.cursor() as cursor:
            cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'ab_events'")
            assert cursor.fetchone()[0] == "r"
            cursor.execute("SELECT count(*) FROM ab_events")
            assert cursor.fetchone()[0] == 3001
        assert_rollup_is_a_full_recomputation()
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
