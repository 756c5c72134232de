"""The session rollup ``ab_sessions``: one row per session, kept by PostgreSQL as events are stored.

The report used to fold every event into sessions on each request, a cost
that grew with the experiment's age (4 s over 1M events). ``ab_sessions``
holds what the report needs per session, so a report reads one narrow row per
session instead.

How it is kept (one rule for every path that writes ``ab_events``):

* a statement-level ``AFTER INSERT`` trigger on ``ab_events`` with a
  transition table (``REFERENCING NEW TABLE``) folds the rows *that statement
  actually inserted* into their sessions, in the inserting transaction. An
  ``INSERT ... ON CONFLICT DO NOTHING`` that skips a duplicate ``event_id``
  leaves it out of the transition table, so a redelivered event changes
  nothing; a rolled-back savepoint (the writer's bisection) rolls its delta
  back with its rows; ``COPY`` fires the trigger too. The writer's code does
  not change, whichever way it inserts (``bulk_create`` today, COPY later).
* the delta is merged commutatively (``ON CONFLICT (session_id) DO UPDATE``):
  counts add, flags OR, steps and times by min/max, and a step's time is the
  *smallest* ``time_spent_ms`` sent for that step, so the result does not
  depend on the order in which a session's events arrive, across batches and
  concurrent drains. Rows are upserted in ``session_id`` order so two drains
  touching the same sessions lock them in the same order (no deadlock).
* a statement-level ``AFTER DELETE`` trigger (retention, ``ab_prune``)
  recomputes the touched sessions from the events that remain.
* ``TRUNCATE ab_events`` empties ab_sessions too.
* ``UPDATE`` of ``ab_events`` is not followed (nothing updates events: the
  admin is read-only); after a restore or a manual edit, run
  ``manage.py ab_rollup --rebuild``.

The per-session fold is one SQL template (``session_rows_sql``) used by the
trigger (over the transition table), by the rebuild (over a range of
``ab_events``) and by the report's full-scan reference (over all of
``ab_events``), so the three cannot drift apart; the equivalence tests check
that the kept rows and the report equal a full scan, number for number.

Rebuild (``rebuild``): bounded batches of sessions by ``session_id`` range,
each in its own short transaction that first takes ``SHARE ROW EXCLUSIVE`` on
``ab_sessions``. That lock conflicts with the trigger's upsert (``ROW
EXCLUSIVE``), so every writer transaction is either committed before the
batch's snapshot (its events are read by the rebuild) or applies its delta
after the batch commits (on top of the rebuilt row): none is lost or counted
twice. Writers wait for at most one batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction

from server.apps.front import experiment

# A step time outside [0, MAX_STEP_MS] ms is not a time (a client bug or a tab left open for years): left out.
# The bound also keeps the cast to double precision from overflowing on a huge JSON number, which would
# otherwise fail the insert and dead-letter a valid event.
MAX_STEP_MS = 10**12

_TYPES = {
    "assigned": experiment.VARIANT_ASSIGNED,
    "started": experiment.ONBOARDING_STARTED,
    "step": experiment.STEP_COMPLETED,
    "completed": experiment.ONBOARDING_COMPLETED,
    "abandoned": experiment.ONBOARDING_ABANDONED,
}
for _name in _TYPES.values():  # they are written into SQL as literals (the trigger's body is static)
    assert _name.isidentifier(), _name

# The columns of ab_sessions, in the order session_rows_sql returns them.
COLUMNS = (
    "session_id",
    "events",
    "variant",
    "min_variant",
    "max_variant",
    "started",
    "completed",
    "abandoned",
    "abandoned_step",
    "min_step",
    "max_step",
    "step_ms",
    "first_event_at",
    "last_event_at",
    "assigned_at",
    "started_at",
    "completed_at",
    "seq_max",
    "seq_events",
)


def session_rows_sql(source: str) -> str:
    """SELECT of one ab_sessions row per session over the events in ``source`` (a table name or subquery).

    A session's time is ``COALESCE(event_time, "timestamp")`` (the event's own
    moment where the client sent one, docs/frontend.md). ``step_ms`` is a JSON
    object {step: smallest time_spent_ms of that step's step_completed events}
    (NULL when there is none); ``source`` is read twice.
    """
    t = {k: f"'{v}'" for k, v in _TYPES.items()}
    at = 'COALESCE(e.event_time, e."timestamp")'
    # CASE, not AND: SQL does not promise to test the type before it casts a string.
    ms = (
        "CASE WHEN jsonb_typeof(e.metadata -> 'time_spent_ms') = 'number' "
        "THEN (e.metadata ->> 'time_spent_ms')::numeric END"
    )
    return f"""
    SELECT a.*, m.step_ms FROM (
        SELECT e.session_id,
            count(*) AS events,
            min(e.variant) FILTER (WHERE e.event_type = {t["assigned"]}) AS variant,
            min(e.variant) AS min_variant,
            max(e.variant) AS max_variant,
            bool_or(e.event_type = {t["started"]}) AS started,
            bool_or(e.event_type = {t["completed"]}) AS completed,
            bool_or(e.event_type = {t["abandoned"]}) AS abandoned,
            max(e.step_number) FILTER (WHERE e.event_type = {t["abandoned"]}) AS abandoned_step,
            min(e.step_number) FILTER (WHERE e.event_type = {t["step"]}) AS min_step,
            max(e.step_number) FILTER (WHERE e.event_type = {t["step"]}) AS max_step,
            min({at}) AS first_event_at,
            max({at}) AS last_event_at,
            min({at}) FILTER (WHERE e.event_type = {t["assigned"]}) AS assigned_at,
            min({at}) FILTER (WHERE e.event_type = {t["started"]}) AS started_at,
            min({at}) FILTER (WHERE e.event_type = {t["completed"]}) AS completed_at,
            max(e.seq) AS seq_max,
            count(e.seq) AS seq_events
        FROM {source} AS e
        GROUP BY e.session_id
    ) AS a LEFT JOIN (
        SELECT x.session_id, jsonb_object_agg(x.step, x.ms) AS step_ms FROM (
            SELECT e.session_id, e.step_number AS step, min({ms})::double precision AS ms
            FROM {source} AS e
            WHERE e.event_type = {t["step"]} AND e.step_number IS NOT NULL AND {ms} BETWEEN 0 AND {MAX_STEP_MS}
            GROUP BY e.session_id, e.step_number
        ) AS x GROUP BY x.session_id
    ) AS m ON m.session_id = a.session_id"""


def _merge(column: str) -> str:
    """How an existing row (``s``) and a delta (``EXCLUDED``) combine, commutatively and associatively."""
    old, new = f"s.{column}", f"EXCLUDED.{column}"
    if column in ("events", "seq_events"):
        return f"{old} + {new}"
    if column in ("started", "completed", "abandoned"):
        return f"{old} OR {new}"
    if column in ("variant", "min_variant", "min_step", "first_event_at", "assigned_at", "started_at", "completed_at"):
        return f"LEAST({old}, {new})"  # LEAST/GREATEST skip NULLs
    if column in ("max_variant", "abandoned_step", "max_step", "last_event_at", "seq_max"):
        return f"GREATEST({old}, {new})"
    if column == "step_ms":
        return (
            f"CASE WHEN {old} IS NULL THEN {new} WHEN {new} IS NULL THEN {old} ELSE ("
            "SELECT jsonb_object_agg(u.key, u.ms) FROM ("
            "SELECT key, min(value::double precision) AS ms "
            f"FROM (SELECT * FROM jsonb_each({old}) UNION ALL SELECT * FROM jsonb_each({new})) AS j GROUP BY key"
            ") AS u) END"
        )
    raise ValueError(column)


def upsert_sql(source: str) -> str:
    """Fold the events in ``source`` into ab_sessions (merge into existing rows), in session_id order."""
    names = ", ".join(COLUMNS)
    updates = ",\n        ".join(f"{c} = {_merge(c)}" for c in COLUMNS if c != "session_id")
    return f"""INSERT INTO ab_sessions AS s ({names})
    SELECT {names} FROM ({session_rows_sql(source)}) AS d
    ORDER BY session_id
    ON CONFLICT (session_id) DO UPDATE SET
        {updates}"""


def replace_sql(source: str) -> str:
    """Recompute ab_sessions rows from all their events in ``source`` (overwrite, no merge)."""
    names = ", ".join(COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c != "session_id")
    return f"""INSERT INTO ab_sessions AS s ({names})
    SELECT {names} FROM ({session_rows_sql(source)}) AS d
    ORDER BY session_id
    ON CONFLICT (session_id) DO UPDATE SET {updates}"""


# --- the report's cells: the all-time report, kept as counts ---------------------------------------------------
#
# The report over every session needs only counts: per (status, variant, furthest step, abandon step, first
# step) the sessions, events and flags; per (variant, step, time) and per (variant, total time) the number
# of analysed sessions. Percentiles, capped means and standard deviations follow exactly from those
# histograms (build.py), so the all-time report reads a few thousand rows instead of every session.
# Statement-level triggers on ab_sessions add each changed session's new contribution and subtract its old
# one (transition tables hold both versions of every row a statement changed).

#
# Issue 14's sections have cells of their own (same triggers), each keyed by what ONE ab_sessions row
# determines (so adding a row's new version and subtracting its old one is exact):
# - ab_report_survival: per (variant, completed, whole seconds from entry to completion or to the last event)
#   the analysed sessions: the Kaplan-Meier curves, RMST and log-rank read counts per time point; "completed
#   within T" is these cells minus the few sessions that entered in the last T seconds (read by the index on
#   the entry time), so T stays a setting and is not baked into any cell;
# - ab_report_daily: per (variant, UTC day of entry) the analysed sessions and those completed;
# - ab_report_loss: per variant the sums of the event-loss guard (seq gaps).
FUNNEL_KEY = ("status", "variant", "max_step", "abandoned_step", "min_step")
FUNNEL_SUMS = ("sessions", "events", "started", "completed", "abandoned")
# Times are kept twice: every distinct value with its number of sessions (``*_values``), and coarse
# buckets of about 5% width with their counts and exact sums (``*_buckets``). A percentile then finds its
# bucket among a few hundred and reads that bucket's values only (an index range); a capped mean or a
# standard deviation adds whole buckets' sums and reads the values of the one bucket the cap falls in.
CELL_TABLES = {
    "ab_report_funnel": (FUNNEL_KEY, FUNNEL_SUMS),
    "ab_report_step_values": (("step", "bucket", "ms", "variant"), ("sessions",)),
    "ab_report_step_buckets": (("variant", "step", "bucket"), ("sessions", "sum_ms")),
    "ab_report_total_values": (("bucket", "total_ms", "variant"), ("sessions",)),
    "ab_report_total_buckets": (("variant", "bucket"), ("sessions", "sum_ms", "sum_sq")),
    "ab_report_survival": (("variant", "done", "seconds"), ("sessions",)),
    "ab_report_daily": (("variant", "day"), ("assigned", "completed")),
    "ab_report_loss": (
        ("variant",),
        ("sessions", "stored", "n", "lost", "expected", "lost_sq", "expected_sq", "lost_expected"),
    ),
}
# Sums kept as numeric (exact; the others are bigint counts).
NUMERIC_SUMS = frozenset({"sum_ms", "sum_sq", "lost_sq", "expected_sq", "lost_expected"})
# NULL is not a key value a unique constraint can match: the cells store '' for no variant and -1 for no
# step (steps are >= 0, the serializer's rule); build.py turns them back into NULL.
NO_VARIANT, NO_STEP = "''", -1


def entry_sql(s: str) -> str:
    """When session row ``s`` entered the experiment: its first variant_assigned, else its first event.
    ab_sessions has an expression index on exactly this (ab_sessions_entered_at)."""
    return f"COALESCE({s}.assigned_at, {s}.first_event_at)"


def done_sql(s: str) -> str:
    """Session row ``s`` completed (and has a completion time)."""
    return f"({s}.completed AND {s}.completed_at IS NOT NULL)"


def seconds_sql(s: str) -> str:
    """Whole seconds from entry to completion, or to the last event for a session not completed (censored
    there); never negative (event times are corrected client clocks and may disagree by a little)."""
    return f"""ceil(greatest(extract(epoch FROM
    CASE WHEN {done_sql(s)} THEN {s}.completed_at ELSE {s}.last_event_at END - {entry_sql(s)}), 0))::bigint"""


def lost_sql(s: str) -> str:
    """Events of session row ``s`` that never arrived: the numbers below its highest ``seq`` stored, minus the
    events that carry one (a client that numbered two events alike cannot make it negative); NULL without seq."""
    return f"greatest({s}.seq_max - {s}.seq_events, 0)::bigint"


def bucket_sql(ms: str) -> str:
    """A time's bucket (monotonic in the time, about 5% wide); build.py uses the same expression."""
    return f"floor(ln({ms} + 1) * 20)::integer"


INSIGHT_CELLS_DDL = """
CREATE TABLE IF NOT EXISTS ab_report_survival (
    variant text NOT NULL, done boolean NOT NULL, seconds bigint NOT NULL, sessions bigint NOT NULL,
    PRIMARY KEY (variant, done, seconds)
);
CREATE TABLE IF NOT EXISTS ab_report_daily (
    variant text NOT NULL, day date NOT NULL, assigned bigint NOT NULL, completed bigint NOT NULL,
    PRIMARY KEY (variant, day)
);
CREATE TABLE IF NOT EXISTS ab_report_loss (
    variant text NOT NULL PRIMARY KEY,
    sessions bigint NOT NULL, stored bigint NOT NULL, n bigint NOT NULL, lost bigint NOT NULL,
    expected bigint NOT NULL, lost_sq numeric NOT NULL, expected_sq numeric NOT NULL, lost_expected numeric NOT NULL
);
"""

_BASE_CELLS_DDL = f"""
CREATE TABLE IF NOT EXISTS ab_report_funnel (
    status text NOT NULL, variant text NOT NULL, max_step integer NOT NULL, abandoned_step integer NOT NULL,
    min_step integer NOT NULL,
    sessions bigint NOT NULL, events bigint NOT NULL, started bigint NOT NULL, completed bigint NOT NULL,
    abandoned bigint NOT NULL,
    PRIMARY KEY ({", ".join(FUNNEL_KEY)})
);
CREATE TABLE IF NOT EXISTS ab_report_step_values (
    step integer NOT NULL, bucket integer NOT NULL, ms double precision NOT NULL, variant text NOT NULL,
    sessions bigint NOT NULL,
    PRIMARY KEY (step, bucket, ms, variant)
);
CREATE TABLE IF NOT EXISTS ab_report_step_buckets (
    variant text NOT NULL, step integer NOT NULL, bucket integer NOT NULL,
    sessions bigint NOT NULL, sum_ms numeric NOT NULL,
    PRIMARY KEY (variant, step, bucket)
);
CREATE TABLE IF NOT EXISTS ab_report_total_values (
    bucket integer NOT NULL, total_ms double precision NOT NULL, variant text NOT NULL, sessions bigint NOT NULL,
    PRIMARY KEY (bucket, total_ms, variant)
);
CREATE TABLE IF NOT EXISTS ab_report_total_buckets (
    variant text NOT NULL, bucket integer NOT NULL,
    sessions bigint NOT NULL, sum_ms numeric NOT NULL, sum_sq numeric NOT NULL,
    PRIMARY KEY (variant, bucket)
);
"""
CELLS_DDL = _BASE_CELLS_DDL + INSIGHT_CELLS_DDL


def classified_sql(source: str) -> str:
    """ab_sessions-shaped rows in ``source`` with their report status."""
    return f"""SELECT s.*, CASE WHEN s.min_variant <> s.max_variant THEN 'contaminated'
                     WHEN s.variant IS NULL THEN 'unassigned' ELSE 'analysed' END AS status
        FROM {source} AS s"""


def step_times_from(classified: str) -> str:
    """(variant, step, ms) of every analysed session's timed step, from classified session rows."""
    return f"""SELECT c.variant, u.key::integer AS step, u.value::double precision AS ms
        FROM {classified} AS c CROSS JOIN LATERAL jsonb_each_text(c.step_ms) AS u
        WHERE c.status = 'analysed'"""


def total_times_from(classified: str) -> str:
    """(variant, total_ms) of every analysed completed session with step times: the sum of its step times
    (exact in numeric, so it does not depend on the order of the steps)."""
    return f"""SELECT c.variant,
            (SELECT sum(u.value::numeric) FROM jsonb_each_text(c.step_ms) AS u)::double precision AS total_ms
        FROM {classified} AS c
        WHERE c.status = 'analysed' AND c.completed AND c.step_ms IS NOT NULL"""


def step_times_sql(source: str) -> str:
    return step_times_from(f"({classified_sql(source)})")


def total_times_sql(source: str) -> str:
    return total_times_from(f"({classified_sql(source)})")


def cells_from(classified: str, steps: str, totals: str) -> dict[str, str]:
    """Per cell table: the SELECT of its rows (key columns, then sums) from classified sessions, their step
    times and their times to complete (relations or parenthesised subqueries)."""
    return {
        "ab_report_funnel": f"""SELECT c.status, coalesce(c.variant, {NO_VARIANT}) AS variant,
            coalesce(c.max_step, {NO_STEP}) AS max_step, coalesce(c.abandoned_step, {NO_STEP}) AS abandoned_step,
            coalesce(c.min_step, {NO_STEP}) AS min_step,
            count(*) AS sessions, sum(c.events)::bigint AS events, count(*) FILTER (WHERE c.started) AS started,
            count(*) FILTER (WHERE c.completed) AS completed, count(*) FILTER (WHERE c.abandoned) AS abandoned
            FROM {classified} AS c GROUP BY 1, 2, 3, 4, 5""",
        "ab_report_step_values": f"""SELECT t.step, {bucket_sql("t.ms")} AS bucket, t.ms, t.variant,
            count(*) AS sessions FROM {steps} AS t GROUP BY 1, 2, 3, 4""",
        "ab_report_step_buckets": f"""SELECT t.variant, t.step, {bucket_sql("t.ms")} AS bucket,
            count(*) AS sessions, sum(t.ms::numeric) AS sum_ms FROM {steps} AS t GROUP BY 1, 2, 3""",
        "ab_report_total_values": f"""SELECT {bucket_sql("t.total_ms")} AS bucket, t.total_ms, t.variant,
            count(*) AS sessions FROM {totals} AS t GROUP BY 1, 2, 3""",
        "ab_report_total_buckets": f"""SELECT t.variant, {bucket_sql("t.total_ms")} AS bucket,
            count(*) AS sessions, sum(t.total_ms::numeric) AS sum_ms, sum(t.total_ms::numeric ^ 2) AS sum_sq
            FROM {totals} AS t GROUP BY 1, 2""",
        "ab_report_survival": f"""SELECT c.variant, {done_sql("c")} AS done, {seconds_sql("c")} AS seconds,
            count(*) AS sessions FROM {classified} AS c WHERE c.status = 'analysed' GROUP BY 1, 2, 3""",
        "ab_report_daily": f"""SELECT c.variant, ({entry_sql("c")} AT TIME ZONE 'UTC')::date AS day,
            count(*) AS assigned, count(*) FILTER (WHERE c.completed) AS completed
            FROM {classified} AS c WHERE c.status = 'analysed' GROUP BY 1, 2""",
        "ab_report_loss": f"""SELECT c.variant, count(*) AS sessions, sum(c.events)::bigint AS stored,
            count(c.seq_max) AS n, coalesce(sum({lost_sql("c")}), 0)::bigint AS lost,
            coalesce(sum(c.seq_max), 0)::bigint AS expected,
            coalesce(sum({lost_sql("c")}::numeric * {lost_sql("c")}), 0) AS lost_sq,
            coalesce(sum(c.seq_max::numeric * c.seq_max), 0) AS expected_sq,
            coalesce(sum({lost_sql("c")}::numeric * c.seq_max), 0) AS lost_expected
            FROM {classified} AS c WHERE c.status = 'analysed' GROUP BY 1""",
    }


def cells_sql(source: str) -> dict[str, str]:
    """Per cell table: the SELECT of its rows over ab_sessions-shaped rows in ``source``."""
    return cells_from(f"({classified_sql(source)})", f"({step_times_sql(source)})", f"({total_times_sql(source)})")


def _apply_cells_sql(new: str | None, old: str | None) -> str:
    """One statement: add the contributions of the rows in ``new``, subtract those in ``old``, in every cell
    table. Each side is classified and its times expanded once (MATERIALIZED), then shared by the five
    upserts (data-modifying CTEs)."""
    ctes = []
    sides = []
    for prefix, source, sign in (("n", new, 1), ("o", old, -1)):
        if source:
            ctes += [
                f"{prefix}c AS MATERIALIZED ({classified_sql(source)})",
                f"{prefix}s AS MATERIALIZED ({step_times_from(prefix + 'c')})",
                f"{prefix}t AS MATERIALIZED ({total_times_from(prefix + 'c')})",
            ]
            sides.append((cells_from(f"{prefix}c", f"{prefix}s", f"{prefix}t"), sign))
    upserts = []
    for table, (keys, sums) in CELL_TABLES.items():
        parts = " UNION ALL ".join(f"SELECT *, {sign} AS sign FROM ({cells[table]}) AS x" for cells, sign in sides)
        key = ", ".join(keys)
        totals = ", ".join(f"sum({c} * sign)" + ("" if c in NUMERIC_SUMS else "::bigint") + f" AS {c}" for c in sums)
        nonzero = " OR ".join(f"sum({c} * sign) <> 0" for c in sums)
        updates = ", ".join(f"{c} = t.{c} + EXCLUDED.{c}" for c in sums)
        upserts.append(
            f"""INSERT INTO {table} AS t ({key}, {", ".join(sums)})
    SELECT {key}, {totals} FROM ({parts}) AS d
    GROUP BY {key} HAVING {nonzero}
    ON CONFLICT ({key}) DO UPDATE SET {updates}"""
        )
    ctes += [f"u{i} AS ({sql})" for i, sql in enumerate(upserts[:-1])]
    return "WITH " + ",\n    ".join(ctes) + "\n    " + upserts[-1]


# Every change to the rollup (the triggers, the rebuild) runs under this transaction-level advisory lock,
# taken first: the cells' old-minus-new arithmetic then never interleaves, and the lock order is one.
ROLLUP_LOCK = 0x61625F73657373  # "ab_sess"


# --- the triggers (installed by migration 0003; a test checks the installed bodies equal these) ---------------

INSERT_FUNCTION = "ab_sessions_on_insert"
DELETE_FUNCTION = "ab_sessions_on_delete"
TRUNCATE_FUNCTION = "ab_sessions_on_truncate"


def insert_function_body() -> str:
    return f"""
BEGIN
    PERFORM pg_advisory_xact_lock({ROLLUP_LOCK});
    {upsert_sql("new_events")};
    RETURN NULL;
END
"""


def delete_function_body() -> str:
    touched = "(SELECT DISTINCT session_id FROM old_events)"
    return f"""
BEGIN
    PERFORM pg_advisory_xact_lock({ROLLUP_LOCK});
    DELETE FROM ab_sessions WHERE session_id IN {touched};
    {replace_sql(f"(SELECT * FROM ab_events WHERE session_id IN {touched})")};
    RETURN NULL;
END
"""


def sessions_function_body(new: str | None, old: str | None) -> str:
    return f"""
BEGIN
    {_apply_cells_sql(new, old)};
    RETURN NULL;
END
"""


def sessions_truncate_body() -> str:
    return f"""
BEGIN
    {"; ".join(f"DELETE FROM {table}" for table in CELL_TABLES)};
    RETURN NULL;
END
"""


def truncate_function_body() -> str:
    # DELETE, not TRUNCATE: a TRUNCATE naming both tables (Django's test flush) is still using ab_sessions.
    return """
BEGIN
    DELETE FROM ab_sessions;
    RETURN NULL;
END
"""


SESSION_TRIGGERS = {
    # function name: (event, transition tables, body)
    "ab_report_on_session_insert": ("INSERT", "REFERENCING NEW TABLE AS new_sessions", ("new_sessions", None)),
    "ab_report_on_session_update": (
        "UPDATE",
        "REFERENCING OLD TABLE AS old_sessions NEW TABLE AS new_sessions",
        ("new_sessions", "old_sessions"),
    ),
    "ab_report_on_session_delete": ("DELETE", "REFERENCING OLD TABLE AS old_sessions", (None, "old_sessions")),
}


def function_bodies() -> dict[str, str]:
    bodies = {
        INSERT_FUNCTION: insert_function_body(),
        DELETE_FUNCTION: delete_function_body(),
        TRUNCATE_FUNCTION: truncate_function_body(),
        "ab_report_on_session_truncate": sessions_truncate_body(),
    }
    for name, (_, _, (new, old)) in SESSION_TRIGGERS.items():
        bodies[name] = sessions_function_body(new, old)
    return bodies


def install_sql() -> str:
    """The DDL of the rollup's type, functions and triggers (idempotent)."""
    functions = "".join(
        f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $body${body}$body$;\n"
        for name, body in function_bodies().items()
    )
    on_sessions = "".join(
        f"DROP TRIGGER IF EXISTS {name} ON ab_sessions;\n"
        f"CREATE TRIGGER {name} AFTER {event} ON ab_sessions {transition} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {name}();\n"
        for name, (event, transition, _) in SESSION_TRIGGERS.items()
    )
    return (
        CELLS_DDL
        + functions
        + on_sessions
        + f"""
DROP TRIGGER IF EXISTS ab_report_on_session_truncate ON ab_sessions;
CREATE TRIGGER ab_report_on_session_truncate AFTER TRUNCATE ON ab_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION ab_report_on_session_truncate();
DROP TRIGGER IF EXISTS ab_events_rollup_insert ON ab_events;
CREATE TRIGGER ab_events_rollup_insert AFTER INSERT ON ab_events
    REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION {INSERT_FUNCTION}();
DROP TRIGGER IF EXISTS ab_events_rollup_delete ON ab_events;
CREATE TRIGGER ab_events_rollup_delete AFTER DELETE ON ab_events
    REFERENCING OLD TABLE AS old_events FOR EACH STATEMENT EXECUTE FUNCTION {DELETE_FUNCTION}();
DROP TRIGGER IF EXISTS ab_events_rollup_truncate ON ab_events;
CREATE TRIGGER ab_events_rollup_truncate AFTER TRUNCATE ON ab_events
    FOR EACH STATEMENT EXECUTE FUNCTION {TRUNCATE_FUNCTION}();
"""
    )


UNINSTALL_SQL = f"""
DROP TABLE IF EXISTS ab_report_funnel, ab_report_step_values, ab_report_step_buckets, ab_report_total_values,
    ab_report_total_buckets, ab_report_survival, ab_report_daily, ab_report_loss;
DROP FUNCTION IF EXISTS ab_report_on_session_insert() CASCADE;
DROP FUNCTION IF EXISTS ab_report_on_session_update() CASCADE;
DROP FUNCTION IF EXISTS ab_report_on_session_delete() CASCADE;
DROP FUNCTION IF EXISTS ab_report_on_session_truncate() CASCADE;
DROP TRIGGER IF EXISTS ab_events_rollup_insert ON ab_events;
DROP TRIGGER IF EXISTS ab_events_rollup_delete ON ab_events;
DROP TRIGGER IF EXISTS ab_events_rollup_truncate ON ab_events;
DROP FUNCTION IF EXISTS {INSERT_FUNCTION}();
DROP FUNCTION IF EXISTS {DELETE_FUNCTION}();
DROP FUNCTION IF EXISTS {TRUNCATE_FUNCTION}();
"""


def installed_bodies() -> dict[str, str]:
    """The trigger functions' bodies as installed in the database."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT proname, prosrc FROM pg_proc WHERE proname = ANY(%s)", [list(function_bodies())])
        return dict(cursor.fetchall())


# --- rebuild -------------------------------------------------------------------------------


@dataclass
class RebuildProgress:
    batches: int = 0
    sessions: int = 0
    events: int = 0
    seconds: float = 0.0
    last_session_id: str | None = None

    def line(self) -> str:
        rate = self.events / self.seconds if self.seconds else 0.0
        return (
            f"batch {self.batches}: {self.sessions} sessions, {self.events} events in {self.seconds:.1f} s "
            f"({rate:,.0f} events/s), up to session {self.last_session_id!r}"
        )


def _rebuild_range(low: str | None, high: str | None) -> tuple[int, int]:
    """Recompute ab_sessions for low <= session_id < high in one short transaction; (sessions, events)."""
    where = "(%(low)s::text IS NULL OR session_id >= %(low)s) AND (%(high)s::text IS NULL OR session_id < %(high)s)"
    params = {"low": low, "high": high}
    with transaction.atomic(), connection.cursor() as cursor:
        # Conflicts with the insert trigger's upsert (ROW EXCLUSIVE): every writer transaction is either
        # committed before the next statement's snapshot or applies its delta after this one commits.
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ROLLUP_LOCK])
        cursor.execute("LOCK TABLE ab_sessions IN SHARE ROW EXCLUSIVE MODE")
        cursor.execute(f"DELETE FROM ab_sessions WHERE {where}", params)
        cursor.execute(replace_sql(f"(SELECT * FROM ab_events WHERE {where})"), params)
        sessions = cursor.rowcount
        cursor.execute(f"SELECT coalesce(sum(events), 0) FROM ab_sessions WHERE {where}", params)
        (events,) = cursor.fetchone()
    return sessions, int(events)


def _boundaries(batch_events: int) -> Iterator[tuple[str | None, str | None]]:
    """[low, high) session_id ranges covering the whole key space, about ``batch_events`` events each."""
    low: str | None = None
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT session_id FROM ab_events WHERE (%(low)s::text IS NULL OR session_id >= %(low)s) "
                "ORDER BY session_id OFFSET %(n)s LIMIT 1",
                {"low": low, "n": batch_events},
            )
            row = cursor.fetchone()
            if row is not None and row[0] == low:
                # One session holds more than batch_events events: the range is that session alone.
                cursor.execute("SELECT min(session_id) FROM ab_events WHERE session_id > %s", [low])
                row = cursor.fetchone()
                row = None if row[0] is None else row
        if row is None:
            yield low, None
            return
        yield low, row[0]
        low = row[0]


def rebuild(
    *,
    since: datetime | None = None,
    batch_events: int = 50_000,
    progress: Callable[[RebuildProgress], None] | None = None,
) -> RebuildProgress:
    """Rebuild ab_sessions from ab_events, in batches, while ingest and drains go on.

    Without ``since``: every session, by session_id range (rows whose session
    has no event left are deleted). With ``since``: only the sessions that
    received an event at or after it (``ab_events.timestamp``, the receive
    time, which is indexed and never earlier than ``event_time``).
    """
    done = RebuildProgress()
    started = time.monotonic()

    def report(sessions: int, events: int, last: str | None) -> None:
        done.batches += 1
        done.sessions += sessions
        done.events += events
        done.last_session_id = last
        done.seconds = time.monotonic() - started
        if progress is not None:
            progress(done)

    if since is None:
        for low, high in _boundaries(batch_events):
            sessions, events = _rebuild_range(low, high)
            report(sessions, events, high)
        purge_empty_cells()
        return done
    with connection.cursor() as cursor:
        cursor.execute('SELECT DISTINCT session_id FROM ab_events WHERE "timestamp" >= %s ORDER BY session_id', [since])
        touched = [row[0] for row in cursor.fetchall()]
    # About batch_events events per batch, assuming ~10 events per session.
    step = max(1, batch_events // 10)
    for i in range(0, len(touched), step):
        chunk = touched[i : i + step]
        sessions, events = _rebuild_sessions(chunk)
        report(sessions, events, chunk[-1])
    return done


def recompute_sessions(session_ids: list[str]) -> tuple[int, int]:
    """Recompute these sessions' rows from the events that remain (a row whose session has none left goes);
    (sessions, events). For a change of ab_events that fired no trigger: retention dropping a partition."""
    return _rebuild_sessions(session_ids)


def _rebuild_sessions(session_ids: list[str]) -> tuple[int, int]:
    """Recompute the given sessions' rows in one short transaction; (sessions, events)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ROLLUP_LOCK])
        cursor.execute("LOCK TABLE ab_sessions IN SHARE ROW EXCLUSIVE MODE")
        cursor.execute("DELETE FROM ab_sessions WHERE session_id = ANY(%s)", [session_ids])
        cursor.execute(replace_sql("(SELECT * FROM ab_events WHERE session_id = ANY(%(ids)s))"), {"ids": session_ids})
        sessions = cursor.rowcount
        cursor.execute("SELECT coalesce(sum(events), 0) FROM ab_sessions WHERE session_id = ANY(%s)", [session_ids])
        (events,) = cursor.fetchone()
    return sessions, int(events)


def purge_empty_cells() -> None:
    """Drop cells whose count fell to zero (a time no session has any more), under the rollup's lock."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ROLLUP_LOCK])
        for table, (_, sums) in CELL_TABLES.items():
            cursor.execute(f"DELETE FROM {table} WHERE " + " AND ".join(f"{c} = 0" for c in sums))


def cell_differences() -> dict[str, int]:
    """Per cell table: rows that differ from the cells computed from ab_sessions now (0 everywhere = in step)."""
    out = {}
    with connection.cursor() as cursor:
        for table, (keys, sums) in CELL_TABLES.items():
            cols = ", ".join(keys + sums)
            live = f"SELECT {cols} FROM {table} WHERE " + " OR ".join(f"{c} <> 0" for c in sums)
            computed = f"SELECT {cols} FROM ({cells_sql('ab_sessions')[table]}) AS c"
            both = f"({live} EXCEPT ALL {computed}) UNION ALL ({computed} EXCEPT ALL {live})"
            cursor.execute(f"SELECT count(*) FROM ({both}) AS d")
            out[table] = cursor.fetchone()[0]
    return out


def differences(limit: int = 10) -> tuple[int, list[str]]:
    """Sessions whose ab_sessions row differs from a fold of their events (missing or extra rows included).

    A full scan of ab_events: for checks after a migration or a restore, and for the tests.
    """
    names = ", ".join(COLUMNS)
    differ = " OR ".join(f"k.{c} IS DISTINCT FROM f.{c}" for c in COLUMNS[1:])
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT coalesce(k.session_id, f.session_id) FROM (SELECT {names} FROM ab_sessions) AS k
            FULL JOIN (SELECT {names} FROM ({session_rows_sql("ab_events")}) AS e) AS f ON f.session_id = k.session_id
            WHERE k.session_id IS NULL OR f.session_id IS NULL OR {differ}
            ORDER BY 1"""
        )
        rows = [row[0] for row in cursor.fetchall()]
    return len(rows), rows[:limit]
