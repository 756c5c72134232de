"""The report's issue-14 sections: survival time to complete, power and duration, lift over time, data quality.

``add_insights`` takes the report ``build.assemble`` made and adds the four
sections (``Insights``), and applies what they change in the rest:

- the verdict: unequal event loss refuses a winner (``invalid: unequal event
  loss``), after a sample-ratio mismatch and before anything else, as SRM does;
- the completers-only time to complete stays as description: its Welch test is
  no longer counted as a significant secondary metric (survivorship: a variant
  that makes slow users give up leaves faster completers although nobody got
  faster), and the Benjamini-Hochberg adjustment runs over the tested ones.

Reads (one statement each, for the sessions that entered in ``[since, until)``
and were analysed, i.e. assigned to exactly one variant):

- ab_sessions: per variant and whole second since assignment, the sessions
  that completed then or were censored then (their last event), and the
  completed-within-T counts; per day of assignment, assigned and completed;
- ab_sessions' ``seq_max`` / ``seq_events``: per session the highest ``seq`` stored and how many stored
  events carry one (the rollup keeps them, so no statement here reads ab_events);
- the queue's dead letters (Redis), by variant and when they were dead-lettered.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
from django.conf import settings
from django.db import connection
from django.utils import timezone

from server.apps.front.experiment import CONTROL, TREATMENT, VARIANT_NAMES
from server.apps.front.pipeline import queue
from server.apps.front.report import power, quality, stats, survival
from server.apps.front.report.model import CompletedWithin, Insights, Report, finite

RECENT_DAYS = 7  # the daily rate of assigned sessions is their mean over the last full days, at most this many

_ANALYSED = """min_variant = max_variant AND variant IS NOT NULL
    AND (%(since)s::timestamptz IS NULL OR COALESCE(assigned_at, first_event_at) >= %(since)s::timestamptz)
    AND (%(until)s::timestamptz IS NULL OR COALESCE(assigned_at, first_event_at) < %(until)s::timestamptz)"""

# Seconds from assignment to completion, or to the last event for a session not completed (censored there);
# never negative (event times are corrected client clocks and may disagree by a little).
_SECONDS = """ceil(greatest(extract(epoch FROM
    CASE WHEN completed AND completed_at IS NOT NULL THEN completed_at ELSE last_event_at END
    - COALESCE(assigned_at, first_event_at)), 0))::bigint"""

SURVIVAL_SQL = f"""SELECT variant, (completed AND completed_at IS NOT NULL) AS done, {_SECONDS} AS seconds,
        count(*) AS sessions
    FROM ab_sessions WHERE {_ANALYSED} GROUP BY 1, 2, 3 ORDER BY 1, 3"""

WITHIN_SQL = f"""SELECT variant,
        count(*) FILTER (WHERE %(end)s::timestamptz - COALESCE(assigned_at, first_event_at)
            >= make_interval(secs => %(within)s)) AS followed,
        count(*) FILTER (WHERE %(end)s::timestamptz - COALESCE(assigned_at, first_event_at)
            >= make_interval(secs => %(within)s)
            AND completed AND completed_at - COALESCE(assigned_at, first_event_at)
            <= make_interval(secs => %(within)s)) AS completed
    FROM ab_sessions WHERE {_ANALYSED} GROUP BY 1"""

DAILY_SQL = f"""SELECT variant, (COALESCE(assigned_at, first_event_at) AT TIME ZONE 'UTC')::date AS day,
        count(*) AS assigned, count(*) FILTER (WHERE completed) AS completed
    FROM ab_sessions WHERE {_ANALYSED} GROUP BY 1, 2 ORDER BY 2"""

# Per session, from the rollup: expected = the highest seq stored, lost = the numbers below it that never
# arrived (expected minus the events that carry a seq; a client that numbered two events alike cannot make it
# negative). Stored events are idempotent by event_id, so a redelivered event never counts twice.
LOSS_SQL = f"""WITH numbered AS (
        SELECT variant, events, seq_max::bigint AS expected,
            greatest(seq_max - seq_events, 0)::bigint AS lost
        FROM ab_sessions WHERE {_ANALYSED}
    )
    SELECT variant, sum(events)::bigint AS stored, count(expected) AS n,
        coalesce(sum(lost), 0)::bigint AS lost, coalesce(sum(expected), 0)::bigint AS expected,
        coalesce(sum(lost * lost), 0)::numeric AS lost2,
        coalesce(sum(expected * expected), 0)::numeric AS expected2,
        coalesce(sum(lost * expected), 0)::numeric AS cross
    FROM numbered GROUP BY variant"""


def _rows(sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        names = [c.name for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _expand(rows: list[dict[str, Any]], variant: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-session (seconds, completed) arrays of a variant from the grouped counts."""
    mine = [r for r in rows if r["variant"] == variant]
    counts = np.array([r["sessions"] for r in mine], dtype=np.int64)
    seconds = np.repeat(np.array([r["seconds"] for r in mine], dtype=float), counts)
    done = np.repeat(np.array([bool(r["done"]) for r in mine], dtype=bool), counts)
    return seconds, done


def dead_letters_by_variant(since: datetime | None, until: datetime | None) -> dict[str, int]:
    """Dead-lettered events per variant (dead-lettered in the period; every shard). Empty when Redis is down."""
    found: dict[str, int] = {}
    start, chunk = 0, 1000
    try:
        while True:
            letters = queue.dead_letters(start, chunk)
            for letter in letters:
                if letter.at is not None and (
                    (since is not None and letter.at < since) or (until is not None and letter.at >= until)
                ):
                    continue
                try:
                    variant = orjson.loads(letter.item).get("v")
                except (orjson.JSONDecodeError, AttributeError):
                    continue
                if isinstance(variant, str):
                    found[variant] = found.get(variant, 0) + 1
            if len(letters) < chunk:
                return found
            start += chunk
    except Exception:
        return found


def data_end(until: datetime | None) -> datetime:
    """The moment the report's data reach: the latest entry into the experiment (before ``until``).

    Not the wall clock, so that the same data give the same report (and a frozen one stays true): a
    session counts as followed for T seconds once another session entered T seconds after it.
    """
    rows = _rows(
        """SELECT max(COALESCE(assigned_at, first_event_at)) AS last FROM ab_sessions
        WHERE %(until)s::timestamptz IS NULL OR COALESCE(assigned_at, first_event_at) < %(until)s::timestamptz""",
        {"until": until},
    )
    last = rows[0]["last"] if rows else None
    return last if last is not None else (until or timezone.now())


def _daily_rate(days: list[Any], assigned: dict[str, list[int]], end: datetime) -> float | None:
    """Mean assigned sessions per day over the last RECENT_DAYS full days before ``end`` that have data."""
    if not days:
        return None
    today = end.astimezone(UTC).date()
    first = max(days[0], today - timedelta(days=RECENT_DAYS))
    window = [i for i, d in enumerate(days) if first <= d < today]
    if not window:  # the experiment started today: the rate so far, per elapsed day
        elapsed = max((end - datetime.combine(days[0], datetime.min.time(), UTC)).total_seconds() / 86400, 1 / 24)
        return sum(sum(v) for v in assigned.values()) / elapsed
    span = (today - first).days
    return sum(assigned[v][i] for v in assigned for i in window) / max(span, 1)


def compute(
    since: datetime | None,
    until: datetime | None,
    *,
    split: dict[str, float],
    alpha: float,
    sequential: bool,
) -> Insights:
    """The four sections from the database and the queue (see the module's docstring)."""
    params = {"since": since, "until": until}
    end = data_end(until)
    confidence = 1 - alpha
    within_s = float(getattr(settings, "AB_COMPLETE_WITHIN_SECONDS", 600.0))

    rows = _rows(SURVIVAL_SQL, params)
    (ta, da), (tb, db) = _expand(rows, CONTROL), _expand(rows, TREATMENT)
    surv = survival.compare_survival(ta, da, tb, db, confidence=confidence)

    within = {r["variant"]: r for r in _rows(WITHIN_SQL, {**params, "end": end, "within": within_s})}
    wa, wb = within.get(CONTROL, {}), within.get(TREATMENT, {})
    within_result = stats.compare_proportions(
        int(wa.get("completed", 0)),
        int(wa.get("followed", 0)),
        int(wb.get("completed", 0)),
        int(wb.get("followed", 0)),
        confidence=confidence,
    )

    daily = _rows(DAILY_SQL, params)
    days = sorted({r["day"] for r in daily})
    index = {d: i for i, d in enumerate(days)}
    assigned = {v: [0] * len(days) for v in VARIANT_NAMES}
    completed = {v: [0] * len(days) for v in VARIANT_NAMES}
    for r in daily:
        if r["variant"] in assigned:
            assigned[r["variant"]][index[r["day"]]] = int(r["assigned"])
            completed[r["variant"]][index[r["day"]]] = int(r["completed"])
    lift = (
        quality.lift_over_time(
            [d.isoformat() for d in days],
            assigned,
            completed,
            control=CONTROL,
            treatment=TREATMENT,
            confidence=confidence,
        )
        if days
        else []
    )

    n_a, n_b = sum(assigned[CONTROL]), sum(assigned[TREATMENT])
    plan = power.plan(
        x_a=sum(completed[CONTROL]),
        n_a=n_a,
        n_b=n_b,
        share_a=split[CONTROL],
        share_b=split[TREATMENT],
        comparisons=len(VARIANT_NAMES) - 1,
        alpha=alpha,
        power=float(getattr(settings, "AB_POWER", power.DEFAULT_POWER)),
        target_lift=float(getattr(settings, "AB_TARGET_LIFT", power.DEFAULT_TARGET_LIFT)),
        sequential=sequential,
        daily_sessions=_daily_rate(days, assigned, end),
    )

    loss_rows = {r["variant"]: r for r in _rows(LOSS_SQL, params)}
    sums = {
        v: {k: int(r[k]) for k in ("n", "lost", "expected", "lost2", "expected2", "cross")}
        for v, r in loss_rows.items()
    }
    guard = quality.loss_guard(
        sums,
        dead_letters_by_variant(since, until),
        {v: int(r["stored"]) for v, r in loss_rows.items()},
        control=CONTROL,
        treatment=TREATMENT,
    )
    return Insights(surv, CompletedWithin(within_s, within_result), plan, lift, guard)


DESCRIPTIVE_TIME = (
    "sum of step times of completed sessions, capped at the pooled P99: description only, not tested "
    "(completed sessions only: a variant that makes slow users give up looks faster; "
    "see time_to_complete_survival for the test)"
)


def apply(report: Report, insights: Insights, *, alpha: float) -> Report:
    """The report with the sections added, the loss guard in the verdict, and the completers-only time
    as description (no significance mark; BH over the metrics still tested)."""
    secondary = []
    for m in report.secondary:
        if m.kind == "mean":
            m = replace(m, description=DESCRIPTIVE_TIME, p_adjusted=None, significant=False)
        secondary.append(m)
    tested = {m.metric: m.p_value for m in secondary if m.kind != "mean"}
    adjusted = stats.benjamini_hochberg({k: (math.nan if p is None else p) for k, p in tested.items()})
    secondary = [
        replace(m, p_adjusted=adjusted[m.metric], significant=bool(adjusted[m.metric] < alpha))
        if m.metric in adjusted and adjusted[m.metric] is not None and not math.isnan(adjusted[m.metric])
        else m
        for m in secondary
    ]
    verdict, reasons = report.verdict, report.reasons
    guard = insights.data_quality
    if guard.unequal and verdict != stats.INVALID_SRM:
        verdict, reasons = quality.INVALID_LOSS, list(guard.reasons)
    return finite(replace(report, verdict=verdict, reasons=reasons, secondary=secondary, insights=insights))


def add_insights(
    report: Report,
    since: datetime | None,
    until: datetime | None,
    *,
    alpha: float,
    sequential: bool,
) -> Report:
    insights = compute(since, until, split=report.params.expected_split, alpha=alpha, sequential=sequential)
    return apply(report, insights, alpha=alpha)
