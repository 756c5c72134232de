"""The report at scale: the rollup ab_sessions, its rebuild, the JSON API over 1M / 10M events.

    .venv/bin/python bench/bench_report.py [--events 1000000] [--runs 7] [--regenerate] [--reference]
                                           [--drain-events 20000]

The rows live in a dedicated database per size, ``abflow_bench_report_<events>``
on the server of ``DATABASE_URL`` (override with ``BENCH_DATABASE_URL``),
generated once in PostgreSQL with ``generate_series`` (about one session per
5.8 events: both variants, log-normal step times, drop-outs with and without
an ``onboarding_abandoned`` event, 1% double-fired events), with the rollup's
triggers off for the load, then kept for later runs while the row count
matches. Then:

* ``rebuild``: ``ab_rollup --rebuild`` (``rollup.rebuild``) of the whole
  rollup, timed, while a thread keeps pushing new events into the queue and
  draining them with the real writer (``ingest_during_rebuild`` events stored
  meanwhile); afterwards the rollup is checked against a full scan
  (``rollup.differences``) — skipped without ``--regenerate`` when it is
  already up to date;
* ``api``: ``GET /api/rest/front/ab-report/`` as staff through Django's test
  client (routing, permission, the SQL over ab_sessions, statistics, JSON), warm,
  median of ``--runs``; ``report``, ``sql``: ``build_report()`` and
  ``fetch_aggregates()`` alone; ``report_7_days``: a date range of half the
  sessions;
* ``reference``: with ``--reference``, the same report from a full scan of
  ab_events (``source="events"``), once, and whether it equals the rollup's;
* ``drain``: the writer's cost per event with the rollup's insert trigger on
  and off: ``--drain-events`` new events (10 per session) queued and drained,
  the two sides alternated three times each; medians.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.defaults import DEFAULT_DATABASE_URL


def _events_arg() -> int:
    for i, arg in enumerate(sys.argv):
        if arg == "--events" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if arg.startswith("--events="):
            return int(arg.split("=", 1)[1])
    return 1_000_000


if "BENCH_DATABASE_URL" not in os.environ:
    # Not abflow_bench: the other benchmarks truncate that one between runs. One database per size, so
    # the 1M and 10M tables are both kept.
    _parts = urlsplit(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    os.environ["BENCH_DATABASE_URL"] = urlunsplit(_parts._replace(path=f"/abflow_bench_report_{_events_arg()}"))

from bench.common import drain_all, emit, ensure_database, median, setup_django  # noqa: E402

T0 = "2025-03-01 00:00:00+00"
EVENTS_PER_SESSION = 5.8  # what the generator below averages; sessions = events / this, then trimmed

GENERATE_SQL = """
WITH s AS (
    SELECT g AS n,
        md5(g::text) AS sid,
        CASE WHEN random() < 0.5 THEN 'fast' ELSE 'deep' END AS variant,
        random() < 0.9 AS started,
        random() AS u_steps,
        random() < 0.6 AS reports_abandon,
        timestamptz %(t0)s + random() * interval '14 days' AS start_at
    FROM generate_series(1, %(sessions)s) AS g
),
p AS (
    SELECT s.*,
        CASE WHEN variant = 'fast' THEN 3 ELSE 6 END AS k,
        -- per-step continuation so that P(complete | started) is 0.61 (fast) and 0.64 (deep)
        CASE WHEN variant = 'fast' THEN 0.848 ELSE 0.928 END AS q
    FROM s
),
d AS (
    SELECT p.*,
        CASE WHEN NOT started THEN 0
             ELSE least(k, floor(ln(u_steps) / ln(q))::int) END AS steps_done
    FROM p
),
rows AS (
    SELECT sid, variant, 'variant_assigned' AS event_type, NULL::int AS step, '{}'::jsonb AS metadata, start_at AS at
    FROM d
    UNION ALL
    SELECT sid, variant, 'onboarding_started', NULL, '{}'::jsonb, start_at + interval '2 seconds'
    FROM d WHERE started
    UNION ALL
    SELECT sid, variant, 'step_completed', st,
        jsonb_build_object('time_spent_ms', round(
            (CASE WHEN variant = 'fast' THEN 8000 ELSE 18000 END)
            * exp(0.5 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())))),
        start_at + st * interval '20 seconds'
    FROM d CROSS JOIN LATERAL generate_series(1, steps_done) AS st
    UNION ALL
    SELECT sid, variant, 'onboarding_completed', NULL, '{}'::jsonb, start_at + (k + 1) * interval '20 seconds'
    FROM d WHERE steps_done = k
    UNION ALL
    SELECT sid, variant, 'onboarding_abandoned', steps_done + 1, '{}'::jsonb,
        start_at + (steps_done + 1) * interval '20 seconds'
    FROM d WHERE started AND steps_done < k AND reports_abandon
)
INSERT INTO ab_events (session_id, variant, event_type, step_number, metadata, "timestamp", event_id)
SELECT sid, variant, event_type, step, metadata, at, gen_random_uuid() FROM rows
"""

DUPLICATE_SQL = """
INSERT INTO ab_events (session_id, variant, event_type, step_number, metadata, "timestamp", event_id, user_id)
SELECT session_id, variant, event_type, step_number, metadata, "timestamp" + interval '1 second',
    gen_random_uuid(), user_id
FROM ab_events TABLESAMPLE BERNOULLI (1)
"""


def generate(events: int) -> None:
    from django.db import connection

    sessions = int(events / EVENTS_PER_SESSION * 1.03) + 1
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE ab_events, ab_event_ids RESTART IDENTITY")
        # The load skips the rollup's triggers (this session only): ab_rollup --rebuild builds it afterwards,
        # timed, as after adding the rollup to an existing database.
        cursor.execute("SET session_replication_role = replica")
        cursor.execute(GENERATE_SQL, {"t0": T0, "sessions": sessions})
        cursor.execute(DUPLICATE_SQL)
        cursor.execute("SELECT count(*) FROM ab_events")
        (count,) = cursor.fetchone()
        if count < events:
            raise SystemExit(f"generated {count} events, fewer than {events}: raise EVENTS_PER_SESSION's margin")
        # Trim to exactly ``events`` rows (the last session may lose its tail, as at a cut-off).
        cursor.execute(
            "DELETE FROM ab_events WHERE id > (SELECT id FROM ab_events ORDER BY id OFFSET %s LIMIT 1)", [events - 1]
        )
        cursor.execute("SET session_replication_role = DEFAULT")
        cursor.execute("DELETE FROM ab_sessions")
    print(f"generated {events:,} events for {sessions:,} sessions in {time.perf_counter() - started:.1f}s")


def stored_events() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM ab_events")
        return cursor.fetchone()[0]


def vacuum() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE ab_events")
        cursor.execute("VACUUM ANALYZE ab_sessions")


def time_runs(runs: int, fn: object) -> list[float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        seconds.append(time.perf_counter() - started)
    return seconds


def new_items(sessions: int, prefix: str) -> list[bytes]:
    """Queue items of ``sessions`` new sessions, 10 events each (assigned, started, 7 steps, completed)."""
    import uuid

    from django.utils import timezone

    from server.apps.front.pipeline import queue

    now = timezone.now()
    items = []
    for i in range(sessions):
        sid = f"{prefix}-{i}"
        kinds = [("variant_assigned", None), ("onboarding_started", None)]
        kinds += [("step_completed", step) for step in range(1, 8)] + [("onboarding_completed", None)]
        for kind, step in kinds:
            data = {
                "event_id": uuid.uuid4(),
                "session_id": sid,
                "variant": "fast" if i % 2 else "deep",
                "event_type": kind,
                "step_number": step,
                "metadata": {"time_spent_ms": 1000 + i % 5000} if step else {},
                "client_ts": None,
            }
            items.append(queue.encode_event(data, user_id=None, received_at=now, event_time=None))
    return items


def rebuild_while_ingesting(batch_events: int) -> dict[str, object]:
    """Time a full rebuild while a thread queues and drains new events the whole time."""
    import threading

    from django.db import connection

    from server.apps.front.pipeline import queue
    from server.apps.front.report.build import rollup

    stop = threading.Event()
    stored = [0]
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            round_ = 0
            while not stop.is_set():
                queue.push(new_items(50, f"during-rebuild-{round_}"))
                stored[0] += drain_all()
                round_ += 1
                time.sleep(0.2)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=ingest)
    thread.start()
    lines = 0

    def progress(p: rollup.RebuildProgress) -> None:
        nonlocal lines
        lines += 1
        if lines % 20 == 1:
            print("  " + p.line(), flush=True)

    started = time.perf_counter()
    done = rollup.rebuild(batch_events=batch_events, progress=progress)
    seconds = time.perf_counter() - started
    during = stored[0]
    stop.set()
    thread.join()
    if errors:
        raise errors[0]
    print(
        f"rebuild: {done.sessions:,} sessions, {done.events:,} events in {seconds:.1f}s "
        f"({done.batches} batches); {during:,} events ingested and drained meanwhile"
    )
    check_started = time.perf_counter()
    count, sample = rollup.differences()
    print(f"check against a full scan: {count} sessions differ {sample} ({time.perf_counter() - check_started:.1f}s)")
    cells = rollup.cell_differences()
    print(f"report cells differing from the sessions: {cells}")
    if count or any(cells.values()):
        raise SystemExit("the rebuilt rollup differs from a full scan")
    return {"rebuild_s": round(seconds, 1), "rebuild_batches": done.batches, "ingested_during_rebuild": during}


def drain_cost(events: int) -> dict[str, object]:
    """Writer throughput with the rollup's insert trigger on and off, alternated."""
    from django.db import connection
    from django.utils import timezone

    from server.apps.front.pipeline import queue

    began = timezone.now()
    sides: dict[str, list[float]] = {"on": [], "off": []}
    for round_ in range(3):
        for side in ("on", "off"):
            with connection.cursor() as cursor:
                state = "ENABLE" if side == "on" else "DISABLE"
                cursor.execute(f"ALTER TABLE ab_events {state} TRIGGER ab_events_rollup_insert")
            queue.push(new_items(events // 10, f"drain-{side}-{round_}-{time.time_ns()}"))
            started = time.perf_counter()
            stored = drain_all()
            sides[side].append(stored / (time.perf_counter() - started))
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE ab_events ENABLE TRIGGER ab_events_rollup_insert")
    on, off = median(sides["on"]), median(sides["off"])
    print(
        f"drain: {on:,.0f} events/s with the rollup, {off:,.0f} without ({on / off:.2f}x); "
        f"cost {1e6 / on - 1e6 / off:.1f} us per event"
    )
    # The "off" rounds left their sessions out of the rollup: bring it back in line.
    from server.apps.front.report.build import rollup

    rollup.rebuild(since=began, batch_events=200_000)
    return {
        "drain_on_events_s": round(on),
        "drain_off_events_s": round(off),
        "rollup_cost_us_per_event": round(1e6 / on - 1e6 / off, 1),
    }


def api_client():  # type: ignore[no-untyped-def]
    from django.contrib.auth import get_user_model
    from django.test import Client

    user, _ = get_user_model().objects.get_or_create(username="bench-staff", defaults={"is_staff": True})
    client = Client()
    client.force_login(user)
    return client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--regenerate", action="store_true", help="rebuild the rows even if the count matches")
    parser.add_argument("--reference", action="store_true", help="also time the full-scan report once")
    parser.add_argument("--drain-events", type=int, default=20_000, help="0: skip the drain on/off comparison")
    parser.add_argument("--batch-events", type=int, default=50_000, help="events per rebuild batch")
    args = parser.parse_args()

    ensure_database()
    # Its own queue keys: the other benchmarks share Redis database 15 and flush it.
    setup_django(AB_QUEUE_KEY_PREFIX="abbench-report")
    from django.db import connection

    from server.apps.front.report import rollup
    from server.apps.front.report.build import build_report, fetch_aggregates, parse_moment

    print(f"load average: {os.getloadavg()}")
    figures: dict[str, object] = {"events_requested": args.events}
    regenerated = args.regenerate or stored_events() < args.events
    if regenerated:
        generate(args.events)
        vacuum()
    if regenerated or rollup.differences()[0] or any(rollup.cell_differences().values()):
        figures.update(rebuild_while_ingesting(args.batch_events))
        vacuum()
    if args.drain_events:
        figures.update(drain_cost(args.drain_events))
        vacuum()

    report = build_report()
    sessions = sum(report["sessions"]["analysed"].values())
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM ab_sessions")
        (rollup_rows,) = cursor.fetchone()
    print(
        f"{report['sessions']['events']:,} events, {rollup_rows:,} sessions in the rollup, {sessions:,} analysed "
        f"({report['sessions']['contaminated']} contaminated); verdict: {report['verdict']}"
    )
    client = api_client()

    def api() -> None:
        response = client.get("/api/rest/front/ab-report/", HTTP_HOST="localhost")
        assert response.status_code == 200, response.status_code

    since, until = parse_moment("2025-03-04"), parse_moment("2025-03-10", end=True)
    api()  # warm
    figures.update(
        {
            "events": report["sessions"]["events"],
            "sessions": rollup_rows,
            "api_s": time_runs(args.runs, api),
            "report_s": time_runs(args.runs, build_report),
            "sql_s": time_runs(args.runs, fetch_aggregates),
            "report_7_days_s": time_runs(args.runs, lambda: build_report(since, until)),
        }
    )
    for name in ("api_s", "report_s", "sql_s", "report_7_days_s"):
        runs = figures[name]
        assert isinstance(runs, list)
        print(
            f"{name[:-2]:>14}: median {median(runs):.3f}s over {len(runs)} runs "
            f"(min {min(runs):.3f}s, max {max(runs):.3f}s)"
        )
        figures[name] = round(median(runs), 3)
    if args.reference:
        started = time.perf_counter()
        reference = build_report(source="events")
        figures["reference_s"] = round(time.perf_counter() - started, 2)
        figures["reference_equal"] = reference == build_report()
        print(f"     reference: full scan {figures['reference_s']}s; equal: {figures['reference_equal']}")
    print(f"load average: {os.getloadavg()}")
    emit({"bench": "report", **figures})


if __name__ == "__main__":
    main()
