"""The experiment report over 1,000,000 stored events: seconds per report (median of runs).

    .venv/bin/python bench/bench_report.py [--events 1000000] [--runs 5] [--regenerate]

The rows live in a dedicated database, ``abflow_bench_report`` on the server of
``DATABASE_URL`` (override with ``BENCH_DATABASE_URL``), generated once in
PostgreSQL with ``generate_series`` (about 170,000 sessions over 14 days:
both variants, log-normal step times, drop-outs with and without an
``onboarding_abandoned`` event, 1% double-fired events) and kept for later
runs while the row count matches. After ``VACUUM ANALYZE`` each run times:

* ``report``: ``report.build.build_report()``, what the API, the admin page and
  ``ab_report`` call (the SQL plus the statistics);
* ``sql``: ``report.build.fetch_aggregates()`` alone;
* ``report_7_days``: ``build_report`` with a ``since``/``until`` range
  covering half of the events.
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

if "BENCH_DATABASE_URL" not in os.environ:
    # Not abflow_bench: the other benchmarks truncate that one between runs.
    _parts = urlsplit(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    os.environ["BENCH_DATABASE_URL"] = urlunsplit(_parts._replace(path="/abflow_bench_report"))

from bench.common import emit, ensure_database, median, setup_django

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
        cursor.execute("TRUNCATE ab_events RESTART IDENTITY")
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


def time_runs(runs: int, fn: object) -> list[float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--regenerate", action="store_true", help="rebuild the rows even if the count matches")
    args = parser.parse_args()

    ensure_database()
    setup_django()
    from server.apps.front.report.build import build_report, fetch_aggregates, parse_moment

    if args.regenerate or stored_events() != args.events:
        generate(args.events)
        vacuum()
    report = build_report()
    sessions = sum(report["sessions"]["analysed"].values())
    print(
        f"{report['sessions']['events']:,} events, {sessions:,} analysed sessions "
        f"({report['sessions']['contaminated']} contaminated); verdict: {report['verdict']}"
    )
    since, until = parse_moment("2025-03-04"), parse_moment("2025-03-10", end=True)
    figures = {
        "events": report["sessions"]["events"],
        "sessions": sessions,
        "report_s": time_runs(args.runs, build_report),
        "sql_s": time_runs(args.runs, fetch_aggregates),
        "report_7_days_s": time_runs(args.runs, lambda: build_report(since, until)),
    }
    for name in ("report_s", "sql_s", "report_7_days_s"):
        runs = figures[name]
        print(
            f"{name[:-2]:>14}: median {median(runs):.2f}s over {len(runs)} runs "
            f"(min {min(runs):.2f}s, max {max(runs):.2f}s)"
        )
        figures[name] = round(median(runs), 3)
    emit({"bench": "report", **figures})


if __name__ == "__main__":
    main()
