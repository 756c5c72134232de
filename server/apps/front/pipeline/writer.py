"""The batch writer: claimed events from Redis into ``ab_events``.

A claimed batch is written in one transaction, one binary ``COPY`` into a
temporary staging table and one statement that inserts the batch's ids into
``ab_event_ids`` (``ON CONFLICT DO NOTHING RETURNING``) and the rows whose id
was new into ``ab_events`` (``copyin.insert_sql``; the wire format is
copyin.py's), and acknowledged in Redis only after the commit, so a crash
anywhere leaves the batch in flight, and the reaper gives it to the next
drain. Writes are idempotent (``ab_event_ids`` holds each stored id once:
``ab_events`` is partitioned by month and cannot have a unique index on
``event_id``), so a batch written twice stores each event once, and
RETURNING tells which rows are new.
The key is global: an event_id already stored
for a *different* event (another session, another payload: a client reusing
ids) is not a redelivery but a conflict, counted
(``abflow_event_id_conflicts_total``) and dead-lettered, never dropped
silently.

Two kinds of failure are told apart:

* the *data* is bad: an item that cannot be decoded or built into a row (any
  exception, e.g. bad JSON, a missing key, a wrong type, a time outside the
  years 1-9999, a value COPY cannot carry) is dead-lettered alone with its
  reason before the write; a row PostgreSQL refuses fails its whole COPY or
  INSERT, so the batch bisects under savepoints (smaller COPYs) until the bad
  events are isolated, each with the database's message. Either way they go to the
  dead-letter list with the error and their batch-mates land in the same
  drain;
* the *database* is unavailable (connection refused, timeout, a statement
  running past AB_WRITER_STATEMENT_TIMEOUT): nothing is split or dropped; the
  batch goes back to the head of the queue and the drain stops until the
  next beat.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, connection, transaction
from django.db.models.base import ModelState
from django.db.models.signals import post_init, pre_init

from server.apps.front.models import ABEvent, ABEventId
from server.apps.front.ops import metrics
from server.apps.front.pipeline import copyin, queue

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
    # The event_ids this batch really inserted (not the redelivered ones), in
    # insertion order, as canonical UUID text: what anything derived from new
    # rows must count (in SQL: ``= ANY(%s::uuid[])``).
    inserted: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Row:
    item: bytes
    event_id: str  # canonical text (lower case, dashes): the key of this batch's bookkeeping
    encoded: bytes  # the row in binary COPY format
    values: dict[str, Any] | None = None  # column values, built when needed (conflict check)

    def fields(self) -> dict[str, Any]:
        if self.values is None:
            self.values = queue.event_fields(queue.decode_event(self.item))
        return self.values


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


def _conflicts(rows: list[_Row]) -> list[tuple[bytes, str]]:
    """Of rows the insert skipped (event_id already stored), those stored for a *different* event.

    Only called with skipped rows, so a batch of new events never pays for it.
    """
    stored = {
        str(values[0]): values[1:]
        for values in ABEvent.objects.filter(event_id__in=[row.event_id for row in rows])
        .order_by()
        .values_list("event_id", *SAME_EVENT_FIELDS)
    }
    found = []
    for row in rows:
        existing = stored.get(row.event_id)
        if existing is None:
            continue  # deleted meanwhile (retention): nothing to clash with
        differing = [
            name
            for name, old in zip(SAME_EVENT_FIELDS, existing, strict=True)
            if not _same(old, row.fields().get(name))
        ]
        if differing:
            found.append(
                (
                    row.item,
                    f"event_id conflict: {row.event_id} is already stored for another event "
                    f"(session_id {existing[0]!r}; differs in {', '.join(differing)}); this event was not stored",
                )
            )
    return found


class _Copier:
    """One batch's COPY + INSERT ... SELECT rounds inside its transaction.

    Round trips are what a batch costs beyond the rows on a busy machine
    (each one waits for the server process to be scheduled), so each round is
    two: the COPY carries its prelude (the transaction's settings the first
    time, then the savepoint and the emptying of the staging table) in the
    same simple query, and the INSERT brings back its new ids. The savepoint
    is plain SQL, not Django's atomic(), which would add two more (SAVEPOINT,
    RELEASE); it is left to the COMMIT to release.
    """

    def __init__(self, cursor: Any, result: BatchResult, prelude: str) -> None:
        self.cursor = cursor
        self.result = result
        self.inserted: set[str] = set()
        self.prelude = prelude
        # The staging table holds rows of an earlier successful round (only
        # while bisecting; COMMIT empties it otherwise).
        self.staged = False

    def copy_insert(self, rows: list[_Row]) -> None:
        """COPY ``rows`` into the staging table under a savepoint and insert them; raises what the database raises."""
        cursor = self.cursor
        sql = f"{self.prelude}SAVEPOINT {_SAVEPOINT}; "
        if self.staged:
            sql += f"{copyin.EMPTY_STAGING}; "
        self.prelude = ""
        data = io.BytesIO(copyin.copy_data([row.encoded for row in rows]))
        # copy_expert is the driver's own method: Django's cursor wrapper does
        # not translate its errors, so do it here (DataError stays DataError).
        with connection.wrap_database_errors:
            cursor.cursor.copy_expert(sql + copyin.COPY_STAGING, data, size=_COPY_CHUNK)
        cursor.execute(_INSERT_SQL)
        self.staged = True
        new = [event_id for (event_id,) in cursor.fetchall()]  # text: see _INSERT_SQL
        self.inserted.update(new)
        self.result.inserted.extend(new)

    def insert(self, rows: list[_Row]) -> list[_Row]:
        """Insert rows under a savepoint; bisect on row errors. Returns the rows not refused.

        A COPY fails whole on one bad row, and so does the INSERT: each half
        is tried again under its own savepoint until the bad rows stand
        alone; each goes to ``result.dead`` with the database's message.
        """
        try:
            self.copy_insert(rows)
        except DatabaseError as exc:
            if not isinstance(exc, DATA_ERRORS):
                raise  # the database, not a row: the caller hands the batch back
            error: Exception = exc
        except NOT_THE_EVENT:
            raise
        except Exception as exc:
            # Raised in this process while sending a row (rows are encoded
            # before, so nothing is expected here): still the rows' error.
            error = exc
        else:
            return rows
        # Back to before this round (its COPY, its INSERT); raises, like any
        # statement, if the database is gone meanwhile.
        self.cursor.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}; RELEASE SAVEPOINT {_SAVEPOINT}")
        if len(rows) == 1:
            self.result.dead.append(queue.dead_entry(rows[0].item, _reason(error)))
            return []
        middle = len(rows) // 2
        return self.insert(rows[:middle]) + self.insert(rows[middle:])


def _first_of_each_id(rows: list[_Row]) -> tuple[list[_Row], list[_Row]]:
    """(the first row of each event_id, the later ones), keeping order."""
    seen: set[str] = set()
    first, later = [], []
    for row in rows:
        if row.event_id in seen:
            later.append(row)
        else:
            seen.add(row.event_id)
            first.append(row)
    return first, later


def _write(copier: _Copier, rows: list[_Row]) -> None:
    """Write the batch's rows, dead-letter the refused and the conflicting ones, count the stored."""
    result = copier.result
    skipped: list[_Row] = []
    stored = 0
    pending = rows
    while pending:
        # A batch may hold one event_id twice: the first is written, the
        # later ones are then checked against it like redeliveries. When the
        # first was refused (a bad row), the next one gets its own try.
        first, later = _first_of_each_id(pending)
        written = copier.insert(first)
        written_ids = {row.event_id for row in written}
        again = [row for row in later if row.event_id in written_ids]
        skipped.extend(row for row in written if row.event_id not in copier.inserted)
        skipped.extend(again)
        stored += len(written) + len(again)
        pending = [row for row in later if row.event_id not in written_ids]
    if skipped:
        clashes = _conflicts(skipped)
        result.dead.extend(queue.dead_entry(item, reason) for item, reason in clashes)
        result.conflicts += len(clashes)
        stored -= len(clashes)
    result.stored = stored


# psycopg2 reads the COPY data in chunks of this size (its default, 8 KiB,
# means a call per 8 KiB).
_COPY_CHUNK = 1 << 20
_SAVEPOINT = "ab_writer_round"
# RETURNING the ids as text: compared with the batch's own keys, and cheaper
# to fetch than UUID objects.
_INSERT_SQL = copyin.insert_sql(ABEvent._meta.db_table, ABEventId._meta.db_table, returning="event_id::text")


def _statement_timeout_ms() -> int:
    seconds = settings.AB_WRITER_STATEMENT_TIMEOUT
    return max(1, round(seconds * 1000)) if seconds > 0 else 0  # 0: PostgreSQL's "no bound"


def write_items(items: list[bytes]) -> BatchResult:
    """Write queued items in one transaction. Raises DatabaseError if the database fails.

    An item that cannot be decoded or built into a row, for whatever reason,
    is dead-lettered alone with that reason; it never fails the batch.
    """
    result = BatchResult(claimed=len(items))
    rows: list[_Row] = []
    fast = copyin.FAST
    for item in items:
        try:
            payload = queue.decode_event(item)
        except NOT_THE_EVENT:
            raise
        except Exception as exc:
            result.dead.append(queue.dead_entry(item, f"undecodable: {_reason(exc)}"))
            continue
        if fast:
            try:
                rows.append(_Row(item, *copyin.encode_item(payload)))
                continue
            except NOT_THE_EVENT:
                raise
            except Exception:
                pass  # not the usual item: the generic path accepts it or says why not
        try:
            values = queue.event_fields(payload)
        except NOT_THE_EVENT:
            raise
        except Exception as exc:
            result.dead.append(queue.dead_entry(item, f"undecodable: {_reason(exc)}"))
            continue
        try:
            rows.append(_Row(item, str(values["event_id"]), copyin.encode_row(values), values))
        except NOT_THE_EVENT:
            raise
        except Exception as exc:
            # Decoded, but a value cannot be sent (a nesting too deep for the
            # JSON encoder, an integer past bigint): a row error, as if the
            # database had refused it.
            result.dead.append(queue.dead_entry(item, _reason(exc)))
    if rows:
        with transaction.atomic():
            with connection.cursor() as cursor:
                # Django makes foreign keys DEFERRABLE INITIALLY DEFERRED, which
                # would report a missing user at COMMIT, too late to bisect.
                # statement_timeout: a statement stuck behind a lock or on a
                # hung server raises (QueryCanceled, an OperationalError), so
                # the batch is handed back like in an outage and the worker
                # moves on; LOCAL ends with this transaction. Sent with the
                # first COPY (before its savepoint, which would undo them), with
                # the staging table's (cheap) IF NOT EXISTS, and a DELETE that
                # finds it empty unless this transaction is nested in an outer
                # one (a test's, a caller's): COMMIT never emptied it. abflow.writer:
                # the INSERT below fills ab_event_ids itself, so ab_events' trigger
                # for other writers' rows stands aside (migration 0009).
                prelude = (
                    f"SET CONSTRAINTS ALL IMMEDIATE; SET LOCAL statement_timeout = {_statement_timeout_ms():d}; "
                    f"SET LOCAL abflow.writer = 'on'; {copyin.CREATE_STAGING}; {copyin.EMPTY_STAGING}; "
                )
                _write(_Copier(cursor, result, prelude), rows)
                # Whatever is derived from the new rows belongs in this
                # transaction: the session rollup's statement-level triggers
                # see exactly the rows the INSERT stored (report/rollup.py);
                # result.inserted lists their ids.
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

    @classmethod
    def combined(cls, results: list[DrainResult]) -> DrainResult:
        """Drains that ran at once, as one: counts added, the longest time, the first error."""
        total = cls()
        for r in results:
            for name in ("batches", "claimed", "stored", "dead_lettered", "conflicts", "requeued"):
                setattr(total, name, getattr(total, name) + getattr(r, name))
            total.seconds = max(total.seconds, r.seconds)
            total.error = total.error or r.error
        return total


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


# --- several drains in one worker process ------------------------------------------------------------
#
# A drain alternates Python work (decoding the claimed items, encoding the COPY) with waiting for
# PostgreSQL (COPY, the insert and its rollup triggers: most of a row's cost). psycopg2 releases the GIL
# while it waits, so a second drain in a thread of the same process keeps the other core busy: a
# 1,000,000-event backlog drained in 35.8 s with two drains against 57.7 s with one (docs/performance.md),
# at the memory of one process instead of two. Drains were already safe to run at once (several workers):
# each claims its own batches under its own lease and writes them in its own transaction, on its own
# database connection (Django's connections are per thread).

_helpers: ThreadPoolExecutor | None = None
_helpers_size = 0
_helpers_lock = threading.Lock()


def _helper_pool(size: int) -> ThreadPoolExecutor:
    """The process's helper threads, kept across runs."""
    global _helpers, _helpers_size
    with _helpers_lock:
        if _helpers is None or _helpers_size != size:
            if _helpers is not None:
                _helpers.shutdown(wait=True)
            _helpers = ThreadPoolExecutor(max_workers=size, thread_name_prefix="ab-drain")
            _helpers_size = size
        return _helpers


def _drain_in_helper(batch_size: int | None, budget: float | None) -> DrainResult:
    try:
        return drain(batch_size, budget)
    finally:
        # Django closes a thread's connection only at the end of a request; a helper has none. Closed after
        # every run (helpers run only while there is a backlog, so a reconnect per run is noise), so no idle
        # connection outlives the backlog.
        connection.close()


def drain_concurrently(threads: int, batch_size: int | None = None, budget: float | None = None) -> DrainResult:
    """``threads`` drains at once (this thread and ``threads - 1`` helpers); their totals combined.

    The helpers only start when the queue holds more than one batch: an idle or light queue costs one
    drain, as before.
    """
    if threads <= 1 or queue.stats().depth <= (batch_size or settings.AB_BATCH_SIZE):
        return drain(batch_size, budget)
    pool = _helper_pool(threads - 1)
    futures = [pool.submit(_drain_in_helper, batch_size, budget) for _ in range(threads - 1)]
    results = [drain(batch_size, budget)]
    for future in futures:
        try:
            results.append(future.result())
        except Exception as exc:  # a helper's own failure must not hide what the others stored
            log.exception("a helper drain failed")
            results.append(DrainResult(error=f"{type(exc).__name__}: {exc}".strip()))
    return DrainResult.combined(results)
