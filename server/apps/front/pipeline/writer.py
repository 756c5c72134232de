"""The batch writer: claimed events from Redis into ``ab_events``.

A claimed batch is written with one ``bulk_create`` in one transaction and
acknowledged in Redis only after the commit, so a crash anywhere leaves the
batch in flight, and the reaper gives it to the next drain. Writes are
idempotent (unique ``event_id`` + ``ignore_conflicts``), so a batch written
twice stores each event once.

Two kinds of failure are told apart:

* the *data* is bad (a row PostgreSQL refuses): the batch is bisected under
  savepoints until the bad events are isolated; they go to the dead-letter
  list with the error and their batch-mates land;
* the *database* is unavailable (connection refused, timeout): nothing is
  split or dropped; the batch goes back to the head of the queue and the
  drain stops until the next beat.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, connection, transaction
from django.db.models.base import ModelState
from django.db.models.signals import post_init, pre_init

from server.apps.front.models import ABEvent
from server.apps.front.ops import metrics
from server.apps.front.pipeline import queue

log = logging.getLogger(__name__)

# Errors that belong to a row, not to the database as a whole.
DATA_ERRORS = (DataError, IntegrityError)


def event_from_payload(payload: dict[str, Any]) -> ABEvent:
    """Build the (unsaved) row for one decoded queued event; raises on a malformed payload."""
    return _new_row(queue.event_fields(payload))


def _new_row(values: dict[str, Any]) -> ABEvent:
    """``ABEvent(**values)`` at about half the cost, for the drain's hot loop.

    Model.__init__ matches keywords to fields generically and sends the
    pre_init/post_init signals; building rows was the largest cost of a drain
    outside bulk_create itself (bench/bench_drain.py). The row is the same:
    every concrete field set (its default when not given, e.g. the auto
    ``id``) and a fresh ModelState. Should anything ever listen to those
    signals, the ordinary constructor is used.
    """
    if pre_init.receivers or post_init.receivers:
        return ABEvent(**values)
    row = ABEvent.__new__(ABEvent)
    row._state = ModelState()
    attrs = row.__dict__
    attrs.update(values)
    for name, default in _ROW_DEFAULTS:
        if name not in attrs:
            attrs[name] = default()
    return row


_ROW_DEFAULTS = [(f.attname, f.get_default) for f in ABEvent._meta.concrete_fields]


@dataclass
class BatchResult:
    claimed: int = 0
    stored: int = 0
    dead: list[bytes] = field(default_factory=list)


def _insert(rows: list[tuple[bytes, ABEvent]], dead: list[bytes]) -> int:
    """Insert rows under a savepoint; bisect on data errors. Returns rows written."""
    try:
        with transaction.atomic():
            ABEvent.objects.bulk_create([row for _, row in rows], ignore_conflicts=True)
        return len(rows)
    except DATA_ERRORS as exc:
        if len(rows) == 1:
            item = rows[0][0]
            dead.append(queue.dead_entry(item, f"{type(exc).__name__}: {exc}".strip()))
            return 0
        middle = len(rows) // 2
        return _insert(rows[:middle], dead) + _insert(rows[middle:], dead)


def write_items(items: list[bytes]) -> BatchResult:
    """Write queued items in one transaction. Raises DatabaseError if the database fails."""
    result = BatchResult(claimed=len(items))
    rows: list[tuple[bytes, ABEvent]] = []
    for item in items:
        try:
            rows.append((item, event_from_payload(queue.decode_event(item))))
        except (ValueError, KeyError, TypeError) as exc:
            result.dead.append(queue.dead_entry(item, f"undecodable: {exc}"))
    if rows:
        with transaction.atomic():
            # Django makes foreign keys DEFERRABLE INITIALLY DEFERRED, which
            # would report a missing user at COMMIT, too late to bisect.
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            result.stored = _insert(rows, result.dead)
    return result


def drain_once(batch_size: int | None = None) -> BatchResult | None:
    """Claim one batch, write it, acknowledge it. None when the queue is empty."""
    batch = queue.claim(batch_size or settings.AB_BATCH_SIZE, settings.AB_LEASE_SECONDS)
    if batch is None:
        return None
    try:
        result = write_items(batch.items)
    except DatabaseError:
        # Not the data's fault (connection refused, timeout, server restart):
        # hand the batch back whole and let the next run retry it.
        queue.release(batch)
        raise
    queue.ack(batch, result.dead)
    return result


def _drop_broken_connection() -> None:
    """A connection broken by a database restart must not fail the next run.

    (Django does this per request; a worker has no requests. Skipped inside an
    outer transaction, e.g. a test's, where closing would end it.)
    """
    if not connection.in_atomic_block:
        connection.close_if_unusable_or_obsolete()


@dataclass
class DrainResult:
    batches: int = 0
    claimed: int = 0
    stored: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    seconds: float = 0.0
    error: str | None = None

    def as_log(self) -> dict[str, Any]:
        return {"event": "ab_drain", **self.__dict__}


# Set on a warm shutdown (SIGTERM to the Celery worker, see worker/tasks.py):
# the running drain finishes and acks the batch it holds, then claims no more,
# so the worker exits promptly without leaving a leased batch behind.
_stop = threading.Event()


def request_stop() -> None:
    _stop.set()


def drain(batch_size: int | None = None, budget: float | None = None) -> DrainResult:
    """Drain until the queue is empty or the time budget is spent.

    First returns expired leases (batches of dead workers) to the queue.
    A database failure ends the run early with ``error`` set; the events wait
    in Redis for the next run.
    """
    started = time.monotonic()
    budget = settings.AB_DRAIN_BUDGET if budget is None else budget
    result = DrainResult()
    requeued, reaped_dead = queue.reap(settings.AB_MAX_ATTEMPTS)
    result.requeued = requeued
    result.dead_lettered += reaped_dead
    _drop_broken_connection()
    while time.monotonic() - started < budget and not _stop.is_set():
        try:
            batch = drain_once(batch_size)
        except DatabaseError as exc:
            result.error = f"{type(exc).__name__}: {exc}".strip()
            log.warning("database unavailable, batch returned to the queue: %s", result.error)
            _drop_broken_connection()
            break
        if batch is None:
            break
        result.batches += 1
        result.claimed += batch.claimed
        result.stored += batch.stored
        result.dead_lettered += len(batch.dead)
        metrics.DRAIN_BATCH_SIZE.observe(batch.claimed)
    result.seconds = round(time.monotonic() - started, 4)
    metrics.observe_drain(
        stored=result.stored, dead_lettered=result.dead_lettered, seconds=result.seconds, error=result.error
    )
    if result.error is None:
        # What the "writer stalled" alert and `ab_queue` read.
        queue.record_drain(stored=result.stored, dead_lettered=result.dead_lettered)
    return result
