"""The report's issue-14 sections: survival time to complete, power and duration, lift over time, data quality.

``add_insights`` takes the report ``build.assemble`` made and adds the four
sections (``Insights``), and applies what they change in the rest:

- the verdict: unequal event loss refuses a winner (``invalid: unequal event
  loss``), after a sample-ratio mismatch and before anything else, as SRM does;
- the completers-only time to complete stays as description: its Welch test is
  no longer counted as a significant secondary metric (survivorship: a variant
  that makes slow users give up leaves faster completers although nobody got
  faster), and the Benjamini-Hochberg adjustment runs over the tested ones.

Reads, two ways, the same numbers (tests/report/test_rollup.py compares them):

- the all-time report (no ``since``/``until``, source ``rollup``; as build.py does for the funnel and the
  times): the cells the ab_sessions triggers keep (report/rollup.py): ``ab_report_survival`` (per variant,
  completed or not, and whole second since entry: sessions), ``ab_report_daily``, ``ab_report_loss``; plus the
  few sessions that entered in the last T seconds before the data's end (the index on the entry time), which
  "completed within T" subtracts from the survival cells. A few thousand rows whatever the number of events.
- a date range (or ``source="events"``, the reference): one scan of the selected ab_sessions rows, grouped
  into the same counts.

Time to complete as survival data is computed from counts per time point (report/survival.py), never from
per-session arrays. The queue's dead letters (Redis) are read by variant and when they were dead-lettered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.utils import timezone

from server.apps.front.experiment import CONTROL, TREATMENT, VARIANT_NAMES
from server.apps.front.pipeline import queue
from server.apps.front.report import power, quality, rollup, stats, survival
from server.apps.front.report.build import report_cursor
from server.apps.front.report.model import CompletedWithin, Insights, Report, finite

LOSS_SUMS = ("stored", "n", "lost", "expected", "lost_sq", "expected_sq", "lost_expected")

RECENT_DAYS = 7  # the daily rate of assigned sessions is their mean over the last full days, at most this many

_ANALYSED = f"""min_variant = max_variant AND variant IS NOT NULL
    AND (%(since)s::timestamptz IS NULL OR {rollup.entry_sql("s")} >= %(since)s::timestamptz)
    AND (%(until)s::timestamptz IS NULL OR {rollup.entry_sql("s")} < %(until)s::timestamptz)"""

# "Followed for T": entered at least T seconds before the data's end; "completed within T": completed at most T
# seconds after entering (exact interval arithmetic, whatever T).
_FOLLOWED = f"%(end)s::timestamptz - {rollup.entry_sql('s')} >= make_interval(secs => %(within)s)"
_WITHIN = f"s.completed AND s.completed_at - {rollup.entry_sql('s')} <= make_interval(secs => %(within)s)"

WITHIN_SQL = f"""SELECT s.variant, count(*) FILTER (WHERE {_FOLLOWED}) AS followed,
        count(*) FILTER (WHERE {_FOLLOWED} AND {_WITHIN}) AS completed
    FROM ab_sessions AS s WHERE {_ANALYSED} GROUP BY 1"""

_JSON_ROWS = "(SELECT coalesce(json_agg(json_build_array({cols})), '[]'::json) FROM ({query}) AS q)"


def _json_rows(query: str, cols: str) -> str:
    return _JSON_ROWS.format(query=query, cols=cols)


# The date-range (and reference) path: one pass over the selected sessions, grouped into the same counts the
# cells hold (rollup.cells_from's definitions, applied to these rows).
_SCAN_CELLS = rollup.cells_from("analysed", "(SELECT NULL)", "(SELECT NULL)")
_SCAN_WITHIN = """SELECT variant, count(*) FILTER (WHERE followed) AS followed,
    count(*) FILTER (WHERE followed AND within) AS completed FROM analysed GROUP BY 1"""
_SCAN_PARTS = {
    "survival": _json_rows(_SCAN_CELLS["ab_report_survival"], "variant, done, seconds, sessions"),
    "within": _json_rows(_SCAN_WITHIN, "variant, completed, followed"),
    "daily": _json_rows(_SCAN_CELLS["ab_report_daily"], "variant, day, assigned, completed"),
    "loss": _json_rows(_SCAN_CELLS["ab_report_loss"], "variant, " + ", ".join(LOSS_SUMS)),
}
SCAN_SQL = f"""WITH analysed AS MATERIALIZED (
        SELECT s.variant, s.events, s.completed, s.completed_at, s.last_event_at, s.assigned_at,
            s.first_event_at, s.seq_max, s.seq_events, 'analysed' AS status,
            {_FOLLOWED} AS followed, {_WITHIN} AS within
        FROM ab_sessions AS s WHERE {_ANALYSED}
    )
    SELECT json_build_object({", ".join(f"'{k}', {v}" for k, v in _SCAN_PARTS.items())})"""

# The all-time path: the cells, and per variant the analysed sessions that entered in the last T seconds before
# the data's end and those of them completed within T (an index range scan on the entry time).
_RECENT = f"""SELECT r.variant, count(*) AS sessions,
        count(*) FILTER (WHERE r.done AND r.seconds <= %(within)s) AS within
    FROM (
        SELECT s.variant, {rollup.done_sql("s")} AS done, {rollup.seconds_sql("s")} AS seconds
        FROM ab_sessions AS s
        WHERE {rollup.entry_sql("s")} > (SELECT at FROM last) - make_interval(secs => %(within)s)
            AND s.min_variant = s.max_variant AND s.variant IS NOT NULL
    ) AS r GROUP BY 1"""
_CELL_PARTS = {
    "survival": _json_rows(
        "SELECT variant, done, seconds, sessions FROM ab_report_survival WHERE sessions <> 0",
        "variant, done, seconds, sessions",
    ),
    "recent": _json_rows(_RECENT, "variant, sessions, within"),
    "daily": _json_rows(
        "SELECT variant, day, assigned, completed FROM ab_report_daily WHERE assigned <> 0",
        "variant, day, assigned, completed",
    ),
    "loss": _json_rows(
        "SELECT variant, " + ", ".join(LOSS_SUMS) + " FROM ab_report_loss WHERE sessions <> 0",
        "variant, " + ", ".join(LOSS_SUMS),
    ),
}
CELLS_SQL = f"""WITH last AS (SELECT max({rollup.entry_sql("s")}) AS at FROM ab_sessions AS s)
    SELECT (SELECT at FROM last), json_build_object({", ".join(f"'{k}', {v}" for k, v in _CELL_PARTS.items())})"""


def _rows(sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with report_cursor() as cursor:
        cursor.execute(sql, params)
        names = [c.name for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


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
    session counts as followed for T seconds once another session entered T seconds after it. A backward
    scan of the index on the entry time.
    """
    rows = _rows(
        f"""SELECT max({rollup.entry_sql("s")}) AS last FROM ab_sessions AS s
        WHERE %(until)s::timestamptz IS NULL OR {rollup.entry_sql("s")} < %(until)s::timestamptz""",
        {"until": until},
    )
    last = rows[0]["last"] if rows else None
    return last if last is not None else (until or timezone.now())


@dataclass
class Counts:
    """What the sections are computed from, however it was read."""

    end: datetime
    survival: dict[str, survival.ArmCounts]
    within: dict[str, tuple[int, int]]  # variant: (completed within T, followed for T)
    daily: list[tuple[str, date, int, int]]  # (variant, day, assigned, completed)
    loss: dict[str, dict[str, int]]  # variant: LOSS_SUMS


def _arms(rows: list[list[Any]]) -> dict[str, survival.ArmCounts]:
    by_variant: dict[str, list[tuple[float, bool, int]]] = {v: [] for v in VARIANT_NAMES}
    for variant, done, seconds, sessions in rows:
        by_variant.setdefault(variant, []).append((seconds, done, sessions))
    return {v: survival.ArmCounts.of_rows(r) for v, r in by_variant.items()}


def _common(document: dict[str, Any], end: datetime, within: dict[str, tuple[int, int]]) -> Counts:
    return Counts(
        end=end,
        survival=_arms(document["survival"]),
        within=within,
        daily=[(v, date.fromisoformat(d), int(a), int(c)) for v, d, a, c in document["daily"]],
        loss={r[0]: dict(zip(LOSS_SUMS, (int(x) for x in r[1:]), strict=True)) for r in document["loss"]},
    )


def _document(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else orjson.loads(value)


def counts_from_scan(since: datetime | None, until: datetime | None, within_s: float) -> Counts:
    """The counts of the sessions that entered in ``[since, until)``: one scan of ab_sessions."""
    end = data_end(until)
    with report_cursor() as cursor:
        # The planner expects a few hundred selected sessions where there are tens of thousands (the
        # optional bounds, min_variant = max_variant) and sorts them to disk for each grouping; hashing them
        # is what it would pick knowing the numbers (0.42 s instead of 0.62 s over 88k sessions).
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute(SCAN_SQL, {"since": since, "until": until, "end": end, "within": within_s})
        document = _document(cursor.fetchone()[0])
    within = {v: (int(c), int(f)) for v, c, f in document["within"]}
    return _common(document, end, within)


def counts_from_cells(within_s: float) -> Counts:
    """The counts of every session, from the cells (see the module's docstring)."""
    with report_cursor() as cursor:
        # The sessions of the last T seconds must come from the index on the entry time: their lower bound is
        # only known while the statement runs (the data's end minus T), so the planner guesses a third of the
        # table and may pick a (parallel) sequential scan of every session. The cell tables are tiny either way.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(CELLS_SQL, {"within": within_s})
        last, raw = cursor.fetchone()
    document = _document(raw)
    end = last if last is not None else timezone.now()
    if not float(within_s).is_integer():
        # The cells hold whole seconds: "within T" for a fractional T needs the exact times (one scan).
        params = {"since": None, "until": None, "end": end, "within": within_s}
        within = {r["variant"]: (int(r["completed"]), int(r["followed"])) for r in _rows(WITHIN_SQL, params)}
        return _common(document, end, within)
    # Followed for T = every analysed session but those that entered in the last T seconds; completed within
    # T = completed at most T whole seconds after entry (equal to the exact comparison for a whole T: the
    # seconds are rounded up), among the followed.
    within_sessions: dict[str, list[int]] = {}
    for variant, done, seconds, sessions in document["survival"]:
        total = within_sessions.setdefault(variant, [0, 0])
        total[1] += sessions
        if done and seconds <= within_s:
            total[0] += sessions
    for variant, sessions, within in document["recent"]:
        total = within_sessions.setdefault(variant, [0, 0])
        total[0] -= within
        total[1] -= sessions
    return _common(document, end, {v: (c, f) for v, (c, f) in within_sessions.items()})


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
    source: str = "rollup",
) -> Insights:
    """The four sections from the database and the queue (see the module's docstring)."""
    within_s = float(getattr(settings, "AB_COMPLETE_WITHIN_SECONDS", 600.0))
    if source == "rollup" and since is None and until is None:
        counts = counts_from_cells(within_s)
    else:
        counts = counts_from_scan(since, until, within_s)
    end = counts.end
    confidence = 1 - alpha
    empty = survival.ArmCounts.of_rows([])
    surv = survival.compare_survival_counts(
        counts.survival.get(CONTROL, empty), counts.survival.get(TREATMENT, empty), confidence=confidence
    )

    (xa, na), (xb, nb) = counts.within.get(CONTROL, (0, 0)), counts.within.get(TREATMENT, (0, 0))
    within_result = stats.compare_proportions(xa, na, xb, nb, confidence=confidence)

    days = sorted({day for _, day, _, _ in counts.daily})
    index = {d: i for i, d in enumerate(days)}
    assigned = {v: [0] * len(days) for v in VARIANT_NAMES}
    completed = {v: [0] * len(days) for v in VARIANT_NAMES}
    for variant, day, n_assigned, n_completed in counts.daily:
        if variant in assigned:
            assigned[variant][index[day]] = n_assigned
            completed[variant][index[day]] = n_completed
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

    sums = {
        v: {
            "n": r["n"],
            "lost": r["lost"],
            "expected": r["expected"],
            "lost2": r["lost_sq"],
            "expected2": r["expected_sq"],
            "cross": r["lost_expected"],
        }
        for v, r in counts.loss.items()
    }
    guard = quality.loss_guard(
        sums,
        dead_letters_by_variant(since, until),
        {v: r["stored"] for v, r in counts.loss.items()},
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
    source: str = "rollup",
) -> Report:
    insights = compute(
        since, until, split=report.params.expected_split, alpha=alpha, sequential=sequential, source=source
    )
    return apply(report, insights, alpha=alpha)
