"""Every row that enters ab_events outside the writer puts its id into ab_event_ids too.

Since 0008 uniqueness of ``event_id`` lives in ab_event_ids (a partitioned table cannot hold UNIQUE (event_id)),
and only the writer filled it, in the statement that stores a batch. A row put into ab_events another way (a
restore of some rows, ``bulk_create`` in a script, an operator's INSERT) had no id there: the queue could then
store the same event a second time, and a second such row with the same id went in silently, where the unique
index of before 0008 refused it. This trigger closes both: after any INSERT into ab_events that is not the
writer's, the new rows' ids go into ab_event_ids, and an id already there fails the statement with a unique
violation (23505), as the old index did. The writer marks its own transactions (``SET LOCAL abflow.writer``,
pipeline/writer.py): it has already inserted the ids, and skipped the events whose id was not new.

Only statements on ab_events itself fire it (a statement-level trigger of a partitioned table): moving rows
between partitions (ops/partitions.py works on the partitions directly) leaves ab_event_ids as it is, as the
delete trigger of 0008 does. A full pg_dump restore loads data before it creates triggers, ab_event_ids
included. Rows stored before this migration whose ids are missing are added here.
"""

from django.db import migrations

INSERT_TRIGGER_SQL = """
CREATE OR REPLACE FUNCTION ab_event_ids_on_insert() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    -- The writer inserted these ids itself, in the same statement (only the new ones reached ab_events).
    IF current_setting('abflow.writer', true) = 'on' THEN
        RETURN NULL;
    END IF;
    INSERT INTO ab_event_ids (event_id, received) SELECT event_id, "timestamp" FROM new_events;
    RETURN NULL;
END
$f$;
CREATE TRIGGER ab_event_ids_insert AFTER INSERT ON ab_events
    REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION ab_event_ids_on_insert();
INSERT INTO ab_event_ids (event_id, received)
    SELECT e.event_id, e."timestamp" FROM ab_events AS e
    WHERE NOT EXISTS (SELECT 1 FROM ab_event_ids AS i WHERE i.event_id = e.event_id)
    ON CONFLICT (event_id) DO NOTHING;
"""

DROP_INSERT_TRIGGER_SQL = """
DROP TRIGGER IF EXISTS ab_event_ids_insert ON ab_events;
DROP FUNCTION IF EXISTS ab_event_ids_on_insert();
"""


class Migration(migrations.Migration):
    dependencies = [("front", "0008_partition_ab_events")]

    operations = [migrations.RunSQL(INSERT_TRIGGER_SQL, DROP_INSERT_TRIGGER_SQL)]
