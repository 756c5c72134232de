"""The batch writer: claimed events from Redis into ``ab_events``.

A claimed batch is written with one ``bulk_create`` in one transaction and
acknowledged in Redis only after the commit, so a crash anywhere leaves the
batch in flight, and the reaper gives it to the next drain. Writes are
idempotent (unique ``event_id`` + ``ignore_conflicts``), so a batch written
twice stores each event once. The key is global: an event_id already stored
for a *different* event (another session, another payload: a client reusing
ids) is not a redelivery but a conflict, counted
(``abflow_event_id_conflicts_total``) and dead-lettered, never dropped
silently.

Two kinds of failure are told apart:

* the *data* is bad: an item that cannot be decoded or built into a row (any
  exception, e.g. bad JSON, a missing key, a wrong type, a time outside the
  years 1-9999) is dead-lettered alone with its reason before the write; a
  row PostgreSQL (or the driver) refuses makes the batch bisect under
  savepoints until the bad events are isolated. Either way they go to the
  dead-letter list with the error and their batch-mates land in the same
  drain;
* the *database* is unavailable (connection refused, timeout, a statement
  running past AB_WRITER_STATEMENT_TIMEOUT): nothing is split or dropped; the
  batch goes back to the head of the queue and the drain stops until the
  next beat.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
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

# Never blamed on an event, though they are ``Exception``s: they say
# something about the process (Celery's soft time limit under a prefork pool,
# memory), so they propagate and the batch stays leased for another try.
NOT_THE_EVENT = (SoftTimeLimitExceeded, MemoryError)


def _reason(exc: BaseException) -> str:
    """A dead letter's reason: the exception's class and message."""
    return f"{type(exc).__name__}: {exc}".strip()


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
    # Of ``dead``: events whose event_id is stored for a different event.
    conflicts: int = 0


class _RowCount:
    """An execute wrapper that adds up the rows the statements really wrote.

    ``ON CONFLICT DO NOTHING`` skips a row whose event_id is already stored
    without a word; the cursor's rowcount is the only trace, and reading it
    costs nothing.
    """

    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        outcome = execute(sql, params, many, context)
        self.rows += max(context["cursor"].rowcount, 0)
        return outcome


# What makes a queued event the same event as a stored one (a redelivery:
# a client retry, a batch written again after a crash). Not the receive
# time or the corrected time (a retry is received again, later), nor the
# user (a retry may be the first request that could resolve it).
SAME_EVENT_FIELDS = ("session_id", "variant", "event_type", "step_number", "metadata", "client_ts")


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values; numbers by value, since jsonb gives ``1.5e300`` back as an int."""
    if type(a) is dict and type(b) is dict:
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if type(a) is list and type(b) is list:
        return len(a) == len(b) and all(map(_same, a, b))
    if type(a) is float or type(b) is float:
        return type(a) in (int, float) and type(b) in (int, float) and float(a) == float(b)
    return type(a) is type(b) and a == b


def _conflicts(rows: list[tuple[bytes, ABEvent]]) -> list[tuple[bytes, str]]:
    """The rows an insert skipped because their event_id is stored for a *different* event.

    Only called when the insert wrote fewer rows than it was given, so a batch
    of new events never pays for it.
    """
    stored = {
        values[0]: values[1:]
        for values in ABEvent.objects.filter(event_id__in=[row.event_id for _, row in rows])
        .order_by()
        .values_list("event_id", *SAME_EVENT_FIELDS)
    }
    found = []
    for item, row in rows:
        existing = stored.get(row.event_id)
        if existing is None:
            continue  # deleted meanwhile (retention): nothing to clash with
        differing = [
            name for name, old in zip(SAME_EVENT_FIELDS, existing, strict=True) if not _same(old, getattr(row, name))
        ]
        if differing:
            found.append(
                (
                    item,
                    f"event_id conflict: {row.event_id} is already stored for another event "
                    f"(session_id {existing[0]!r}; differs in {', '.join(differing)}); this event was not stored",
                )
            )
    return found


def _insert(rows: list[tuple[bytes, ABEvent]], result: BatchResult) -> int:
    """Insert rows under a savepoint; bisect on row errors. Returns rows stored.

    Rows refused, and rows whose event_id belongs to another stored event,
    go to ``result.dead``; a redelivered event counts as stored (it is).
    """
    written = _RowCount()
    try:
        with transaction.atomic(), connection.execute_wrapper(written):
            ABEvent.objects.bulk_create([row for _, row in rows], ignore_conflicts=True)
    except DatabaseError as exc:
        if not isinstance(exc, DATA_ERRORS):
            raise  # the database, not a row: the caller hands the batch back
        error: Exception = exc
    except NOT_THE_EVENT:
        raise
    except Exception as exc:
        # Anything else was raised in this process while the driver adapted a
        # row's values, before the statement reached the server (a nesting too
        # deep for the JSON encoder, a value psycopg2 refuses): a row error.
        error = exc
    else:
        if written.rows >= len(rows):
            return len(rows)
        clashes = _conflicts(rows)
        result.dead.extend(queue.dead_entry(item, reason) for item, reason in clashes)
        result.conflicts += len(clashes)
        return len(rows) - len(clashes)
    if len(rows) == 1:
        result.dead.append(queue.dead_entry(rows[0][0], _reason(error)))
        return 0
    middle = len(rows) // 2
    return _insert(rows[:middle], result) + _insert(rows[middle:], result)


def _statement_timeout_ms() -> int:
    seconds = settings.AB_WRITER_STATEMENT_TIMEOUT
    return max(1, round(seconds * 1000)) if seconds > 0 else 0  # 0: PostgreSQL's "no bound"


def write_items(items: list[bytes]) -> BatchResult:
    """Write queued items in one transaction. Raises DatabaseError if the database fails.

    An item that cannot be decoded or built into a row, for whatever reason,
    is dead-lettered alone with that reason; it never fails the batch.
    """
    result = BatchResult(claimed=len(items))
    rows: list[tuple[bytes, ABEvent]] = []
    for item in items:
        try:
            rows.append((item, event_from_payload(queue.decode_event(item))))
        except NOT_THE_EVENT:
            raise
        except Exception as exc:
            result.dead.append(queue.dead_entry(item, f"undecodable: {_reason(exc)}"))
    if rows:
        with transaction.atomic():
            with connection.cursor() as cursor:
                # Django makes foreign keys DEFERRABLE INITIALLY DEFERRED, which
                # would report a missing user at COMMIT, too late to bisect.
                # statement_timeout: a statement stuck behind a lock or on a
                # hung server raises (QueryCanceled, an OperationalError), so
                # the batch is handed back like in an outage and the worker
                # moves on; LOCAL ends with this transaction. One round trip.
                cursor.execute(
                    "SET CONSTRAINTS ALL IMMEDIATE; SET LOCAL statement_timeout = %s",
                    [_statement_timeout_ms()],
                )
            result.stored = _insert(rows, result)
    return result


def drain_once(batch_size: int | None = None, claimer: queue.Claimer | None = None) -> BatchResult | None:
    """Claim one batch (from the shards in turn: ``claimer``, one per drain run), write it, acknowledge it.

    None when every shard is empty.
    """
    batch = (claimer or queue.claimer()).claim(batch_size or settings.AB_BATCH_SIZE, settings.AB_LEASE_SECONDS)
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
    conflicts: int = 0
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


def drain(
    batch_size: int | None = None,
    budget: float | None = None,
    *,
    progress: Callable[[DrainResult], None] | None = None,
    progress_every: float = 5.0,
) -> DrainResult:
    """Drain until the queue is empty or the time budget is spent.

    First returns expired leases (batches of dead workers) to the queue.
    A database failure ends the run early with ``error`` set; the events wait
    in Redis for the next run. ``progress`` (if given) is called with the
    running totals after a batch once ``progress_every`` seconds have passed
    since the start or its last call (0: after every batch).
    """
    started = time.monotonic()
    reported = started
    budget = settings.AB_DRAIN_BUDGET if budget is None else budget
    result = DrainResult()
    requeued, reaped_dead = queue.reap(settings.AB_MAX_ATTEMPTS)
    result.requeued = requeued
    result.dead_lettered += reaped_dead
    claimer = queue.claimer()  # every shard, in turn from a random one
    _drop_broken_connection()
    while time.monotonic() - started < budget and not _stop.is_set():
        try:
            batch = drain_once(batch_size, claimer)
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
        result.conflicts += batch.conflicts
        metrics.DRAIN_BATCH_SIZE.observe(batch.claimed)
        if progress is not None and time.monotonic() - reported >= progress_every:
            reported = time.monotonic()
            result.seconds = round(reported - started, 4)
            progress(result)
    result.seconds = round(time.monotonic() - started, 4)
    metrics.observe_drain(
        stored=result.stored,
        dead_lettered=result.dead_lettered,
        conflicts=result.conflicts,
        seconds=result.seconds,
        error=result.error,
    )
    if result.error is None:
        # What the "writer stalled" alert and `ab_queue` read.
        queue.record_drain(stored=result.stored, dead_lettered=result.dead_lettered)
    return result
