"""ab_events becomes a table partitioned by month on "timestamp"; event ids move to ab_event_ids (issue 12).

Why: retention becomes DROP TABLE of an old month instead of a DELETE that bloats, and inserts touch the current
month's partition, whose indexes stay in memory (docs/scaling.md). "timestamp" is the receive time, fixed at
enqueue, so an event never changes partition when it is written again.

How, in this migration's transaction (ACCESS EXCLUSIVE on ab_events throughout; rows are copied once):

1. the old table is renamed ab_events_unpartitioned; its definitions that must survive are read from the catalog
   (not frozen here: a migration that adds a column, a foreign key or a trigger before this one runs is carried
   over as it is): columns, defaults and the identity (CREATE TABLE ... LIKE), foreign keys, and the
   statement-level triggers (the session rollup's, report/rollup.py);
2. the partitioned ab_events is created with monthly partitions for every month the old rows span, the next
   AHEAD months (ab_events_ensure_partitions, below, which beat also calls every hour) and a DEFAULT partition
   that catches any other time, so no insert can fail for want of a partition;
3. the rows are copied, ab_event_ids is filled, the old table dropped, the id sequence renamed back;
4. only then indexes, foreign keys and the triggers: no trigger fires for the copied rows (the rollup already
   holds them) and each index is built once, in bulk.

Indexes kept, each for a query that uses it (the old table had 13; every index is paid on every insert: dropping
the 5 covered ones raised raw COPY from 54.8k to 78.6k rows/s, docs/performance.md):

* PRIMARY KEY (id, "timestamp"): a partitioned table's unique index must hold the partition key; it serves
  Django's pk lookups (admin change page: WHERE id = ...) and retention's bounded DELETE (by id and time);
* (session_id, "timestamp"): the rollup's DELETE trigger and rebuild (WHERE session_id IN / range / ORDER BY
  session_id), the admin's exact session search; it covers the old single-column session_id index and its
  varchar_pattern_ops twin (no query uses LIKE: the admin search is exact, tests/ops/test_admin_search.py);
* (user_id, "timestamp"): the admin's user search and auth_user's ON DELETE CASCADE; covers the old user_id index;
* ("timestamp"): the admin changelist's ORDER BY "timestamp" DESC and date filter, retention's partial-month
  DELETE, ``ab_rollup --rebuild --since``;
* (event_id), not unique: the admin's event_id search and the writer's conflict check (which rows of a batch
  clash with a stored *different* event). Uniqueness now lives in ab_event_ids.

Dropped: variant, event_type (and their _like twins) and (variant, event_type): nothing filters events by them
any more (the report reads ab_sessions; the admin's list filters combine with ORDER BY "timestamp" and use that
index).

Idempotency: UNIQUE (event_id) cannot exist on a partitioned table (it would have to contain "timestamp", and a
client's retry is received again with a new one). ab_event_ids (event_id PRIMARY KEY, received) is the global
key: the writer inserts a batch's ids there first (ON CONFLICT DO NOTHING RETURNING) and moves only the new ones
into ab_events, in the same statement (pipeline/writer.py). A BRIN index on received serves retention's trim
(ids arrive in receive order, so BRIN's block ranges stay tight, and it costs almost nothing per insert).

Partition maintenance: ab_events_add_partition(month) creates one month's partition as a plain table, moves that
month's rows out of DEFAULT into it, and attaches it (SHARE UPDATE EXCLUSIVE on ab_events: inserts go on; an
ACCESS EXCLUSIVE on DEFAULT for the move and the check). Rows move between partitions directly, never through
ab_events, so no rollup trigger fires: the rollup is unchanged, as the rows are. ab_events_ensure_partitions(n)
does that for this month, the next n and every month found in DEFAULT (ops/partitions.py calls it).

ab_prune_sessions: sessions whose events retention removed by dropping a partition (no DELETE trigger fires),
waiting for their rollup to be recomputed (ops/retention.py); kept in a table so that an interrupted ab_prune
finishes the job on its next run.

The model (models.py) keeps ``id`` as Django's primary key (every lookup by id stays right: the sequence still
makes ids unique) and states the kept indexes; the state operations below say the same to the migration graph,
so ``makemigrations --check`` stays clean (tests/ops/test_migrations.py).
"""

import uuid

import django.contrib.postgres.indexes
from django.conf import settings
from django.db import migrations, models

# Months ahead that the migration creates (beat keeps AB_PARTITIONS_AHEAD ahead afterwards).
AHEAD = 3

FUNCTIONS_SQL = r"""
CREATE OR REPLACE FUNCTION ab_events_partition_name(first_day date) RETURNS text LANGUAGE sql IMMUTABLE AS $f$
    SELECT 'ab_events_p' || to_char(first_day, 'YYYY_MM')
$f$;

CREATE OR REPLACE FUNCTION ab_events_add_partition(month date) RETURNS bigint LANGUAGE plpgsql AS $f$
DECLARE
    first_day date := date_trunc('month', month::timestamp)::date;
    name text := ab_events_partition_name(first_day);
    low timestamptz := first_day::timestamp AT TIME ZONE 'UTC';
    high timestamptz := (first_day + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    moved bigint := 0;
BEGIN
    IF to_regclass(quote_ident(name)) IS NOT NULL THEN
        RETURN 0;
    END IF;
    -- Taken first, so that the move and ATTACH's check of DEFAULT (which needs ACCESS EXCLUSIVE on it) never
    -- upgrade a weaker lock while a writer waits: writers hold ROW EXCLUSIVE on ab_events, which ATTACH's
    -- SHARE UPDATE EXCLUSIVE does not conflict with.
    IF to_regclass('ab_events_default') IS NOT NULL THEN
        LOCK TABLE ab_events_default IN ACCESS EXCLUSIVE MODE;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE ab_events INCLUDING DEFAULTS INCLUDING STORAGE)', name);
    IF to_regclass('ab_events_default') IS NOT NULL THEN
        -- Partition to partition: ab_events' statement triggers do not fire (the rollup stays as it is, and
        -- right: the same rows are still stored).
        EXECUTE format(
            'WITH gone AS (DELETE FROM ab_events_default WHERE "timestamp" >= %L AND "timestamp" < %L RETURNING *) '
            'INSERT INTO %I SELECT * FROM gone', low, high, name);
        GET DIAGNOSTICS moved = ROW_COUNT;
    END IF;
    -- A matching CHECK lets ATTACH skip scanning the new partition; it is redundant afterwards.
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK ("timestamp" >= %L AND "timestamp" < %L)',
        name, name || '_range', low, high);
    EXECUTE format('ALTER TABLE ab_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, low, high);
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', name, name || '_range');
    RETURN moved;
END
$f$;

CREATE OR REPLACE FUNCTION ab_events_ensure_partitions(months_ahead integer)
RETURNS TABLE (partition text, moved bigint) LANGUAGE plpgsql AS $f$
DECLARE
    month date;
BEGIN
    -- One maintenance at a time (beat, a migration, an operator).
    PERFORM pg_advisory_xact_lock(hashtext('ab_events_ensure_partitions'));
    FOR month IN
        SELECT m::date FROM generate_series(
            date_trunc('month', now() AT TIME ZONE 'UTC'),
            date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => months_ahead),
            interval '1 month') AS m
        UNION
        SELECT DISTINCT date_trunc('month', d."timestamp" AT TIME ZONE 'UTC')::date FROM ab_events_default AS d
        ORDER BY 1
    LOOP
        IF to_regclass(quote_ident(ab_events_partition_name(month))) IS NULL THEN
            partition := ab_events_partition_name(month);
            moved := ab_events_add_partition(month);
            RETURN NEXT;
        END IF;
    END LOOP;
END
$f$;
"""

# ab_event_ids holds the ids of stored events: an event deleted from ab_events (retention's DELETE, an operator
# removing a clashing row so that the right event can be replayed, tests/pipeline/test_conflicts.py) takes its id
# along, so the same id can be stored again, as when the key was a unique index. Dropping a partition fires no
# trigger: retention trims those ids itself (ops/retention.py).
IDS_TRIGGERS_SQL = """
CREATE OR REPLACE FUNCTION ab_event_ids_on_delete() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    DELETE FROM ab_event_ids WHERE event_id IN (SELECT event_id FROM old_events);
    RETURN NULL;
END
$f$;
-- DELETE, not TRUNCATE: Django's test flush truncates both tables in one statement.
CREATE OR REPLACE FUNCTION ab_event_ids_on_truncate() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    DELETE FROM ab_event_ids;
    RETURN NULL;
END
$f$;
CREATE TRIGGER ab_event_ids_delete AFTER DELETE ON ab_events
    REFERENCING OLD TABLE AS old_events FOR EACH STATEMENT EXECUTE FUNCTION ab_event_ids_on_delete();
CREATE TRIGGER ab_event_ids_truncate AFTER TRUNCATE ON ab_events
    FOR EACH STATEMENT EXECUTE FUNCTION ab_event_ids_on_truncate();
"""

DROP_IDS_TRIGGERS_SQL = """
DROP TRIGGER IF EXISTS ab_event_ids_delete ON ab_events;
DROP TRIGGER IF EXISTS ab_event_ids_truncate ON ab_events;
DROP FUNCTION IF EXISTS ab_event_ids_on_delete();
DROP FUNCTION IF EXISTS ab_event_ids_on_truncate();
"""

DROP_FUNCTIONS_SQL = """
DROP FUNCTION IF EXISTS ab_events_ensure_partitions(integer);
DROP FUNCTION IF EXISTS ab_events_add_partition(date);
DROP FUNCTION IF EXISTS ab_events_partition_name(date);
"""

# name -> definition on the partitioned table (see the docstring for why each one).
PARTITIONED_INDEXES = {
    "ab_events_pkey": 'ALTER TABLE ab_events ADD CONSTRAINT ab_events_pkey PRIMARY KEY (id, "timestamp")',
    "ab_events_session_93a2d1_idx": 'CREATE INDEX ab_events_session_93a2d1_idx ON ab_events (session_id, "timestamp")',
    "ab_events_user_id_63dcf4_idx": 'CREATE INDEX ab_events_user_id_63dcf4_idx ON ab_events (user_id, "timestamp")',
    "ab_events_timestamp_6e540c02": 'CREATE INDEX ab_events_timestamp_6e540c02 ON ab_events ("timestamp")',
    "ab_events_event_id_156eb200": "CREATE INDEX ab_events_event_id_156eb200 ON ab_events (event_id)",
}

# What 0001-0006 created (for the way back).
PLAIN_INDEXES = {
    "ab_events_pkey": "ALTER TABLE ab_events ADD CONSTRAINT ab_events_pkey PRIMARY KEY (id)",
    "ab_events_event_id_key": "ALTER TABLE ab_events ADD CONSTRAINT ab_events_event_id_key UNIQUE (event_id)",
    "ab_events_event_type_52ba085f": "CREATE INDEX ab_events_event_type_52ba085f ON ab_events (event_type)",
    "ab_events_event_type_52ba085f_like": (
        "CREATE INDEX ab_events_event_type_52ba085f_like ON ab_events (event_type varchar_pattern_ops)"
    ),
    "ab_events_session_93a2d1_idx": 'CREATE INDEX ab_events_session_93a2d1_idx ON ab_events (session_id, "timestamp")',
    "ab_events_session_id_6a9fa4dd": "CREATE INDEX ab_events_session_id_6a9fa4dd ON ab_events (session_id)",
    "ab_events_session_id_6a9fa4dd_like": (
        "CREATE INDEX ab_events_session_id_6a9fa4dd_like ON ab_events (session_id varchar_pattern_ops)"
    ),
    "ab_events_timestamp_6e540c02": 'CREATE INDEX ab_events_timestamp_6e540c02 ON ab_events ("timestamp")',
    "ab_events_user_id_4231564a": "CREATE INDEX ab_events_user_id_4231564a ON ab_events (user_id)",
    "ab_events_user_id_63dcf4_idx": 'CREATE INDEX ab_events_user_id_63dcf4_idx ON ab_events (user_id, "timestamp")',
    "ab_events_variant_92dbc5_idx": "CREATE INDEX ab_events_variant_92dbc5_idx ON ab_events (variant, event_type)",
    "ab_events_variant_af82c0f0": "CREATE INDEX ab_events_variant_af82c0f0 ON ab_events (variant)",
    "ab_events_variant_af82c0f0_like": (
        "CREATE INDEX ab_events_variant_af82c0f0_like ON ab_events (variant varchar_pattern_ops)"
    ),
}

OLD = "ab_events_unpartitioned"


def _rebuild_table(cursor, *, partitioned: bool) -> None:
    """Move ab_events into a new table of the other kind, carrying columns, sequence, rows, FKs and triggers."""
    cursor.execute("LOCK TABLE ab_events IN ACCESS EXCLUSIVE MODE")
    if not partitioned:
        cursor.execute(DROP_IDS_TRIGGERS_SQL)  # ab_event_ids goes: not carried over to the plain table
    cursor.execute(f"ALTER TABLE ab_events RENAME TO {OLD}")
    # What must survive, read before the old table goes: foreign keys and the (statement-level) triggers.
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f'",
        [OLD],
    )
    foreign_keys = cursor.fetchall()
    cursor.execute(
        "SELECT tgname, pg_get_triggerdef(oid), (tgtype & 1) = 1 FROM pg_trigger "
        "WHERE tgrelid = %s::regclass AND NOT tgisinternal ORDER BY tgname",
        [OLD],
    )
    triggers = cursor.fetchall()
    if partitioned:
        row_level = [name for name, _, is_row in triggers if is_row]
        # PostgreSQL refuses row triggers with transition tables on a partitioned table; none exist today.
        assert not row_level, f"row-level triggers on ab_events cannot move to a partitioned table: {row_level}"
    cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [OLD])
    (old_sequence,) = cursor.fetchone()
    cursor.execute(f"SELECT last_value, is_called FROM {old_sequence}")
    last_value, is_called = cursor.fetchone()

    suffix = ' PARTITION BY RANGE ("timestamp")' if partitioned else ""
    cursor.execute(
        f"CREATE TABLE ab_events (LIKE {OLD} INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING STORAGE "
        f"INCLUDING COMMENTS){suffix}"
    )
    cursor.execute("SELECT pg_get_serial_sequence('ab_events', 'id')")
    (new_sequence,) = cursor.fetchone()
    cursor.execute("SELECT setval(%s, %s, %s)", [new_sequence, last_value, is_called])

    if partitioned:
        cursor.execute(FUNCTIONS_SQL)
        cursor.execute("CREATE TABLE ab_events_default PARTITION OF ab_events DEFAULT")
        # Every month the old rows span (also the empty ones between: later partitions stay contiguous).
        cursor.execute(
            f"""SELECT ab_events_add_partition(m::date) FROM generate_series(
                (SELECT date_trunc('month', min("timestamp") AT TIME ZONE 'UTC') FROM {OLD}),
                (SELECT date_trunc('month', max("timestamp") AT TIME ZONE 'UTC') FROM {OLD}),
                interval '1 month') AS m"""
        )
        cursor.execute("SELECT count(*) FROM ab_events_ensure_partitions(%s)", [AHEAD])
        cursor.execute(
            "CREATE TABLE ab_event_ids (event_id uuid NOT NULL PRIMARY KEY, received timestamp with time zone NOT NULL)"
        )
        cursor.execute("CREATE INDEX ab_event_ids_received_brin ON ab_event_ids USING brin (received)")
        cursor.execute(f'INSERT INTO ab_event_ids (event_id, received) SELECT event_id, "timestamp" FROM {OLD}')
        cursor.execute("CREATE TABLE ab_prune_sessions (session_id varchar(100) NOT NULL PRIMARY KEY)")

    cursor.execute(f"INSERT INTO ab_events SELECT * FROM {OLD}")
    cursor.execute(f"DROP TABLE {OLD}")
    if not partitioned:
        cursor.execute("DROP TABLE IF EXISTS ab_event_ids, ab_prune_sessions")
        cursor.execute(DROP_FUNCTIONS_SQL)
    # The sequence's name as before (the old one went with its table): Django finds it by
    # pg_get_serial_sequence either way; people and scripts find it by name.
    cursor.execute(f"ALTER SEQUENCE {new_sequence} RENAME TO ab_events_id_seq")

    for sql in (PARTITIONED_INDEXES if partitioned else PLAIN_INDEXES).values():
        cursor.execute(sql)
    for name, definition in foreign_keys:
        cursor.execute(f"ALTER TABLE ab_events ADD CONSTRAINT {name} {definition}")
    for _, definition, _ in triggers:
        cursor.execute(definition.replace(f" ON public.{OLD} ", " ON public.ab_events ", 1))
    if partitioned:
        cursor.execute(IDS_TRIGGERS_SQL)
    cursor.execute("ANALYZE ab_events")


def forwards(apps, schema_editor) -> None:
    with schema_editor.connection.cursor() as cursor:
        _rebuild_table(cursor, partitioned=True)


def backwards(apps, schema_editor) -> None:
    with schema_editor.connection.cursor() as cursor:
        _rebuild_table(cursor, partitioned=False)


class Migration(migrations.Migration):
    # After 0007 (the insight cells); nothing here depends on what 0007 changed: columns, foreign keys
    # and triggers are copied from the catalog as they are when this runs.
    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("front", "0007_report_insight_cells"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forwards, backwards)],
            state_operations=[
                migrations.CreateModel(
                    name="ABEventId",
                    fields=[
                        ("event_id", models.UUIDField(primary_key=True, serialize=False)),
                        ("received", models.DateTimeField()),
                    ],
                    options={
                        "db_table": "ab_event_ids",
                        "indexes": [
                            django.contrib.postgres.indexes.BrinIndex(
                                fields=["received"], name="ab_event_ids_received_brin"
                            )
                        ],
                    },
                ),
                migrations.RemoveIndex(model_name="abevent", name="ab_events_variant_92dbc5_idx"),
                migrations.AlterField(
                    model_name="abevent",
                    name="session_id",
                    field=models.CharField(help_text="ID сессии (для анонимных пользователей)", max_length=100),
                ),
                migrations.AlterField(
                    model_name="abevent",
                    name="variant",
                    field=models.CharField(
                        choices=[("fast", "Fast"), ("deep", "Deep")], help_text="Вариант онбординга", max_length=20
                    ),
                ),
                migrations.AlterField(
                    model_name="abevent",
                    name="event_type",
                    field=models.CharField(
                        choices=[
                            ("variant_assigned", "Вариант назначен"),
                            ("onboarding_started", "Онбординг начат"),
                            ("step_completed", "Шаг завершён"),
                            ("onboarding_completed", "Онбординг завершён"),
                            ("onboarding_abandoned", "Онбординг покинут"),
                        ],
                        help_text="Тип события",
                        max_length=50,
                    ),
                ),
                migrations.AlterField(
                    model_name="abevent",
                    name="event_id",
                    field=models.UUIDField(
                        db_index=True,
                        default=uuid.uuid4,
                        editable=False,
                        help_text="Идентификатор события (идемпотентность записи)",
                    ),
                ),
                migrations.AlterField(
                    model_name="abevent",
                    name="user",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        help_text="Пользователь (null для анонимных)",
                        null=True,
                        on_delete=models.CASCADE,
                        related_name="ab_events",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
        ),
    ]
