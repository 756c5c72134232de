"""The drain's cost of the insight cells: events/s with and without them, alternated, same run.

    .venv/bin/python bench/bench_cells_cost.py [--events 20000] [--rounds 3] [--order interleaved|session]

The all-time report reads issue 14's sections from cells the ab_sessions triggers keep (ab_report_survival,
ab_report_daily, ab_report_loss; migration 0007). Every drain pays for them: this measures how much. Each round
drains ``--events`` new events twice, once with the ab_sessions trigger functions as migration 0006 left them
(the base report's five cell tables: ``before``) and once with the current ones (eight tables: ``after``), the
order of the two sides alternating from round to round. The writer is ``writer.drain()``, what the worker runs.

``--order interleaved`` (default) queues every session's first event, then every session's second event, and
so on: a batch then *updates* many sessions stored by earlier batches (each update subtracts the old row's
cells and adds the new row's), as live traffic does when a session's events trickle in over minutes.
``--order session`` queues each session's ten events together (mostly inserts).

Runs on its own database (``abflow_bench_cells``, or ``BENCH_DATABASE_URL``) and the Redis database of
``BENCH_REDIS_URL`` (default 15) under its own key prefix. At the end the current bodies are installed and the
insight cells are refilled from ab_sessions (then checked: 0 differences).

Then, less noisy on a shared machine: one ``UPDATE`` of ``--statement-sessions`` existing ab_sessions rows
(what a drain's insert trigger does to sessions it already holds) timed with each side's bodies, rolled back,
``--statement-rounds`` alternations, medians: the cell triggers' own cost, without Redis, decoding or commit.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if "BENCH_DATABASE_URL" not in os.environ:
    from urllib.parse import urlsplit, urlunsplit

    from server.defaults import DEFAULT_DATABASE_URL

    _parts = urlsplit(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    os.environ["BENCH_DATABASE_URL"] = urlunsplit(_parts._replace(path="/abflow_bench_cells"))

from bench.common import drain_all, emit, ensure_database, median, setup_django

INSIGHT_TABLES = ("ab_report_survival", "ab_report_daily", "ab_report_loss")


def session_bodies(with_insights: bool) -> str:
    """CREATE OR REPLACE of the four ab_sessions trigger functions, with or without the insight cells."""
    from server.apps.front.report import rollup

    saved = dict(rollup.CELL_TABLES)
    try:
        if not with_insights:
            for table in INSIGHT_TABLES:
                del rollup.CELL_TABLES[table]
        bodies = rollup.function_bodies()
    finally:
        rollup.CELL_TABLES.clear()
        rollup.CELL_TABLES.update(saved)
    names = [*rollup.SESSION_TRIGGERS, "ab_report_on_session_truncate"]
    return "".join(
        f"CREATE OR REPLACE FUNCTION {n}() RETURNS trigger LANGUAGE plpgsql AS $body${bodies[n]}$body$;\n"
        for n in names
    )


def items(sessions: int, prefix: str, order: str) -> list[bytes]:
    """``sessions`` new sessions of 10 events each (assigned, started, 7 timed steps, completed)."""
    from django.utils import timezone

    from server.apps.front.pipeline import queue

    now = timezone.now()
    kinds = [("variant_assigned", None), ("onboarding_started", None)]
    kinds += [("step_completed", step) for step in range(1, 8)] + [("onboarding_completed", None)]
    per_session = []
    for i in range(sessions):
        events = []
        for k, (kind, step) in enumerate(kinds):
            data = {
                "event_id": uuid.uuid4(),
                "session_id": f"{prefix}-{i}",
                "variant": "fast" if i % 2 else "deep",
                "event_type": kind,
                "step_number": step,
                "metadata": {"time_spent_ms": 1000 + (i * 7 + k) % 5000} if step else {},
                "client_ts": None,
                "seq": k + 1,
            }
            at = now - timedelta(seconds=20 * (len(kinds) - k) + i % 3600)  # 20 s apart, spread over an hour
            events.append(queue.encode_event(data, user_id=None, received_at=now, event_time=at))
        per_session.append(events)
    if order == "session":
        return [e for events in per_session for e in events]
    return [events[k] for k in range(len(kinds)) for events in per_session]


def statement_cost(bodies: dict[str, str], sessions: int, rounds: int) -> dict[str, float]:
    """Milliseconds of one UPDATE of ``sessions`` existing ab_sessions rows (what a drain's insert trigger
    does to sessions it already holds), with the cell triggers of each side; rolled back, sides alternated,
    medians. Less noisy than the whole drain on a shared machine: no Redis, no decoding, no commit."""
    from django.db import connection, transaction

    times: dict[str, list[float]] = {side: [] for side in bodies}
    sides = list(bodies)
    for round_ in range(rounds):
        for side in sides if round_ % 2 == 0 else sides[::-1]:
            with connection.cursor() as cursor:
                cursor.execute(bodies[side])
            try:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(
                        "CREATE TEMP TABLE pick ON COMMIT DROP AS "
                        "SELECT session_id FROM ab_sessions TABLESAMPLE BERNOULLI (50) LIMIT %s",
                        [sessions],
                    )
                    started = time.perf_counter()
                    cursor.execute(
                        "UPDATE ab_sessions SET events = events + 1, last_event_at = last_event_at + interval '1 s' "
                        "WHERE session_id IN (SELECT session_id FROM pick)"
                    )
                    times[side].append((time.perf_counter() - started) * 1000)
                    raise _Rollback
            except _Rollback:
                pass
    return {side: median(ms) for side, ms in times.items()}


class _Rollback(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--order", choices=("interleaved", "session"), default="interleaved")
    parser.add_argument("--statement-sessions", type=int, default=1000, help="sessions per timed UPDATE")
    parser.add_argument("--statement-rounds", type=int, default=15)
    args = parser.parse_args()

    ensure_database()
    setup_django(AB_QUEUE_KEY_PREFIX="abbench-cells")
    from django.db import connection

    from server.apps.front.pipeline import queue
    from server.apps.front.report import rollup

    print(f"load average: {os.getloadavg()}")
    bodies = {"before": session_bodies(False), "after": session_bodies(True)}
    rates: dict[str, list[float]] = {"before": [], "after": []}
    # Warm-up (not counted): the connection, the plans, the first pages of the tables.
    queue.push(items(200, f"warm-{time.time_ns()}", args.order))
    drain_all()
    for round_ in range(args.rounds):
        for side in ("before", "after") if round_ % 2 == 0 else ("after", "before"):
            with connection.cursor() as cursor:
                cursor.execute(bodies[side])
            queue.push(items(args.events // 10, f"{side}-{round_}-{time.time_ns()}", args.order))
            started = time.perf_counter()
            stored = drain_all()
            rates[side].append(stored / (time.perf_counter() - started))
            print(f"round {round_} {side:>6}: {rates[side][-1]:,.0f} events/s", flush=True)
    statement = statement_cost(bodies, args.statement_sessions, args.statement_rounds)
    print(
        f"UPDATE of {args.statement_sessions} sessions (cell triggers only): {statement['before']:.1f} ms before, "
        f"{statement['after']:.1f} ms with the insight cells ({statement['after'] / statement['before']:.2f}x)"
    )
    with connection.cursor() as cursor:
        cursor.execute(bodies["after"])
        cursor.execute(f"SELECT pg_advisory_xact_lock({rollup.ROLLUP_LOCK})")
        cells = rollup.cells_sql("ab_sessions")
        for table in INSIGHT_TABLES:
            keys, sums = rollup.CELL_TABLES[table]
            cols = ", ".join(keys + sums)
            cursor.execute(f"DELETE FROM {table}")
            cursor.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM ({cells[table]}) AS c")
    differences = rollup.cell_differences()
    before, after = median(rates["before"]), median(rates["after"])
    print(
        f"drain ({args.order}): {before:,.0f} events/s before, {after:,.0f} with the insight cells "
        f"({after / before:.2f}x; {1e6 / after - 1e6 / before:+.1f} us per event); cells in step: {differences}"
    )
    print(f"load average: {os.getloadavg()}")
    emit(
        {
            "bench": "cells_cost",
            "order": args.order,
            "before_events_s": round(before),
            "after_events_s": round(after),
            "ratio": round(after / before, 3),
            "cost_us_per_event": round(1e6 / after - 1e6 / before, 1),
            "update_ms_before": round(statement["before"], 2),
            "update_ms_after": round(statement["after"], 2),
        }
    )
    if any(differences.values()):
        raise SystemExit("cells differ from ab_sessions")


if __name__ == "__main__":
    main()
