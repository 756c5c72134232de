"""ab_event_ids holds every stored event's id, whoever stored it (migration 0009).

The writer fills it in the statement that stores a batch; a row that enters
ab_events another way (a partial restore, ``bulk_create``, an operator's
INSERT) fills it by trigger. So a stored event cannot be stored again by the
queue, and a second row with a stored id is refused as the unique index of
before 0008 refused it.
"""

from __future__ import annotations

import uuid

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from server.apps.front.models import ABEvent, ABEventId
from server.apps.front.pipeline import queue, writer
from tests.factories import queue_item

pytestmark = pytest.mark.django_db


def _restored(event_id: uuid.UUID, session: str = "restored") -> ABEvent:
    return ABEvent(
        session_id=session, variant="fast", event_type="variant_assigned", event_id=event_id, timestamp=timezone.now()
    )


def test_a_row_stored_outside_the_writer_registers_its_id_so_the_queue_cannot_store_it_again(rq):
    event_id = uuid.uuid4()
    ABEvent.objects.bulk_create([_restored(event_id)])  # e.g. a restore of some rows
    assert ABEventId.objects.filter(event_id=event_id).exists()

    queue.push([queue_item(session_id="restored", event_id=str(event_id)), queue_item(session_id="other")])
    result = writer.drain()

    assert result.error is None
    assert ABEvent.objects.filter(event_id=event_id).count() == 1
    assert ABEvent.objects.filter(session_id="other").count() == 1


def test_a_second_row_with_a_stored_id_is_refused_as_the_unique_index_refused_it():
    event_id = uuid.uuid4()
    ABEvent.objects.bulk_create([_restored(event_id)])
    with pytest.raises(IntegrityError), transaction.atomic():
        ABEvent.objects.bulk_create([_restored(event_id, "another")])
    twice = uuid.uuid4()
    with pytest.raises(IntegrityError), transaction.atomic():  # the same new id twice in one statement
        ABEvent.objects.bulk_create([_restored(twice, "a"), _restored(twice, "b")])
    assert list(ABEvent.objects.values_list("session_id", flat=True)) == ["restored"]


def test_the_writer_registers_each_id_once_and_its_rows_pass_the_trigger(rq):
    items = [queue_item(session_id=f"w-{i}") for i in range(50)]
    queue.push(items + items[:10])  # ten delivered twice
    writer.drain()
    assert ABEvent.objects.count() == 50
    assert ABEventId.objects.count() == 50
    assert set(ABEventId.objects.values_list("event_id", flat=True)) == set(
        ABEvent.objects.values_list("event_id", flat=True)
    )


@pytest.mark.django_db(transaction=True)
def test_the_migration_registers_the_ids_rows_stored_before_it_lacked():
    executor = MigrationExecutor(connection)
    executor.migrate([("front", "0008_partition_ab_events")])
    try:
        with connection.cursor() as cursor:  # at 0008 nothing registers the ids of these rows
            cursor.execute(
                """INSERT INTO ab_events (session_id, variant, event_type, metadata, "timestamp", event_id)
                SELECT 'mig-' || g, 'fast', 'variant_assigned', '{}'::jsonb, now(), gen_random_uuid()
                FROM generate_series(1, 500) AS g"""
            )
            cursor.execute("SELECT count(*) FROM ab_event_ids")
            assert cursor.fetchone()[0] == 0
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM ab_events AS e JOIN ab_event_ids AS i USING (event_id)"
                ' WHERE i.received = e."timestamp"'
            )
            assert cursor.fetchone()[0] == 500
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
        ABEvent.objects.all().delete()
