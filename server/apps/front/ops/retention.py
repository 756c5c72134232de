"""Retention: old events leave ``ab_events`` by whole partitions, the rest in short batches that never lock it.

``ab_events`` is partitioned by month on ``timestamp`` (migration 0008). ``prune(cutoff)``:

1. drops every monthly partition whose range ends at or before ``cutoff`` (``DROP TABLE``: no bloat, no
   row-by-row work). A drop fires no DELETE trigger, so first the sessions that had events in it are recorded
   in ``ab_prune_sessions`` (same transaction as the drop), and afterwards their rollup rows (``ab_sessions``
   and, through its triggers, the report cells) are recomputed from the events that remain, in bounded batches
   (report/rollup.py). The list is a table: a run interrupted after a drop finishes the recomputation on the
   next run, before anything else;
2. deletes what is left before ``cutoff`` (the partially covered month, and DEFAULT) by bounded ``DELETE``
   statements through ``ab_events``, each committed on its own: row locks on those rows only, for
   milliseconds; the rollup's DELETE trigger recomputes the touched sessions;
3. trims ``ab_event_ids`` (the idempotency keys) received before ``cutoff`` whose events are gone, in bounded
   batches (a DELETE through ``ab_events`` takes its ids along by trigger; a dropped partition's are trimmed
   here).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection, transaction

from server.apps.front.models import ABEvent
from server.apps.front.ops import partitions
from server.apps.front.report import rollup

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

# Sessions recomputed per transaction after a partition drop (~10 events each: ~50,000 events read).
SESSIONS_PER_BATCH = 5000


def parse_age(text: str) -> timedelta:
    """``180d``, ``12h``, ``90m``, ``3600s``, ``2w`` -> timedelta."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not an age like 180d, 12h, 90m, 3600s or 2w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@dataclass
class PruneResult:
    rows: int = 0  # events deleted in all (dropped partitions' and DELETEd)
    statements: int = 0  # bounded DELETE statements on ab_events
    dropped: list[str] = field(default_factory=list)  # partitions dropped
    dropped_rows: int = 0
    sessions_recomputed: int = 0
    ids_trimmed: int = 0


def whole_partitions(cutoff: datetime) -> list[partitions.Partition]:
    """The monthly partitions whose every possible row was received before ``cutoff``."""
    return [p for p in partitions.listing() if p.high is not None and p.high <= cutoff]


def prune(cutoff: datetime, *, batch_size: int = 5000, pause: float = 0.0, lock_timeout: float = 10.0) -> PruneResult:
    """Remove events received before ``cutoff`` (see the module's docstring)."""
    result = PruneResult()
    result.sessions_recomputed += _recompute_pending()
    for part in whole_partitions(cutoff):
        result.dropped_rows += _drop(part.name, lock_timeout)
        result.dropped.append(part.name)
    # Once for all the drops: a session with events in several dropped months is recomputed once.
    result.sessions_recomputed += _recompute_pending()
    result.rows += result.dropped_rows
    if result.dropped:
        rollup.purge_empty_cells()

    table = connection.ops.quote_name(ABEvent._meta.db_table)
    # By (id, timestamp), the primary key; the outer condition on timestamp lets PostgreSQL skip the later
    # partitions. The table name is ours; the values are parameters.
    sql = (
        f'DELETE FROM {table} WHERE "timestamp" < %s AND (id, "timestamp") IN '
        f'(SELECT id, "timestamp" FROM {table} WHERE "timestamp" < %s LIMIT %s)'
    )
    while True:
        with connection.cursor() as cursor:
            cursor.execute(sql, [cutoff, cutoff, batch_size])
            deleted = cursor.rowcount
        result.statements += 1
        result.rows += deleted
        if deleted < batch_size:
            break
        if pause:
            time.sleep(pause)
    result.ids_trimmed = trim_ids(cutoff, batch_size=batch_size, pause=pause)
    return result


def _drop(name: str, lock_timeout: float) -> int:
    """Record the partition's sessions for recomputation and drop it, in one transaction; its row count."""
    quoted = connection.ops.quote_name(name)
    with transaction.atomic(), connection.cursor() as cursor:
        # DROP of a partition takes ACCESS EXCLUSIVE on ab_events for a moment: never queue behind a long
        # report (and hold up the writers queued behind this) for more than lock_timeout.
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{max(1, round(lock_timeout * 1000))}ms"])
        cursor.execute(f"LOCK TABLE {quoted} IN ACCESS EXCLUSIVE MODE")
        cursor.execute(f"SELECT count(*) FROM {quoted}")
        (rows,) = cursor.fetchone()
        cursor.execute(
            f"INSERT INTO ab_prune_sessions (session_id) SELECT DISTINCT session_id FROM {quoted} "
            "ON CONFLICT DO NOTHING"
        )
        cursor.execute(f"DROP TABLE {quoted}")
    return int(rows)


def _recompute_pending() -> int:
    """Recompute the rollup of the sessions recorded by _drop, in batches; how many."""
    done = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT session_id FROM ab_prune_sessions ORDER BY session_id LIMIT %s FOR UPDATE",
                [SESSIONS_PER_BATCH],
            )
            ids = [row[0] for row in cursor.fetchall()]
            if not ids:
                return done
            # In this batch's transaction: recomputed and crossed off together.
            rollup.recompute_sessions(ids)
            cursor.execute("DELETE FROM ab_prune_sessions WHERE session_id = ANY(%s)", [ids])
        done += len(ids)


def trim_ids(cutoff: datetime, *, batch_size: int = 5000, pause: float = 0.0) -> int:
    """Delete ab_event_ids received before ``cutoff`` whose event is no longer stored; how many."""
    sql = """DELETE FROM ab_event_ids WHERE event_id IN (
        SELECT i.event_id FROM ab_event_ids AS i
        WHERE i.received < %s AND NOT EXISTS (SELECT 1 FROM ab_events AS e WHERE e.event_id = i.event_id)
        LIMIT %s)"""
    trimmed = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(sql, [cutoff, batch_size])
            deleted = cursor.rowcount
        trimmed += deleted
        if deleted < batch_size:
            return trimmed
        if pause:
            time.sleep(pause)


def count_older(cutoff: datetime) -> int:
    """How many events ``prune(cutoff)`` would delete."""
    return ABEvent.objects.filter(timestamp__lt=cutoff).count()
