"""The experiment report: session-level aggregates from PostgreSQL, statistics, verdict.

One SQL statement does all the counting (``AGGREGATES_SQL``): it reads one
row per session from the rollup ``ab_sessions`` (kept by the database as
events are stored, report/rollup.py), then groups those rows into the funnel,
the drop-off, and the time figures, and returns them as one JSON document.
Python only turns those few dozen numbers into statistics (``stats``) and a
verdict. The same statement over sessions folded from every event
(``source="events"``) is the reference the rollup is tested against.

Definitions (see docs/report.md for how to read them):

* the unit is the session; a session's variant is that of its
  ``variant_assigned`` event; a date range selects sessions by when they
  entered the experiment (their first ``variant_assigned``; a session without
  one by its first event) and counts all their events;
* a session with events in both variants is *contaminated* and excluded
  (so "the variant of its first ``variant_assigned``" and "of any" agree for
  every session that is kept); one without ``variant_assigned`` is
  *unassigned* and excluded; both are counted and shown;
* every funnel count is a count of sessions (``bool_or`` per session), so a
  duplicated event never counts twice; a step's time is taken once per
  session and step (the smallest ``time_spent_ms`` sent for it);
* "step k done" = the session completed step k or a later one; a session's
  drop-off step is the furthest step at which it sent ``onboarding_abandoned``;
* time to complete = the sum of the session's step times
  (``metadata.time_spent_ms``, measured by the client) over completed
  sessions. Chosen over "completed minus started timestamp" because
  ``timestamp`` is the server's receive time: it includes network and retry
  delays, and is identical for events that arrive in one batch.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import connection, transaction
from django.utils.dateparse import parse_date, parse_datetime

from server.apps.front.experiment import CONTROL, TREATMENT, VARIANT_NAMES, configured_split, parse_split
from server.apps.front.report import rollup, stats
from server.apps.front.report.model import (
    CompletionTime,
    Dropout,
    Params,
    PrimaryMetric,
    Report,
    SecondaryMetric,
    SessionCounts,
    Stage,
    StepTime,
    TimeToComplete,
    finite,
)

T = TypeVar("T")

# Where the report's sessions come from: the rollup ab_sessions (what requests read), or the same rows
# folded from every event in ab_events (the reference implementation: tests and --full-scan compare the two).
# Both select sessions by when they entered the experiment: the time of their first variant_assigned event,
# or for a session that never got one (counted as "unassigned" only) the time of its first event.
_SESSION_COLUMNS = """session_id, events, variant, min_variant, max_variant,
        started, completed, abandoned, abandoned_step, min_step, max_step, step_ms"""
_IN_RANGE = """(%(since)s::timestamptz IS NULL OR COALESCE(assigned_at, first_event_at) >= %(since)s::timestamptz)
      AND (%(until)s::timestamptz IS NULL OR COALESCE(assigned_at, first_event_at) < %(until)s::timestamptz)"""
SESSIONS_FROM_ROLLUP = f"SELECT {_SESSION_COLUMNS} FROM ab_sessions WHERE {_IN_RANGE}"
SESSIONS_FROM_EVENTS = (
    f"SELECT {_SESSION_COLUMNS} FROM ({rollup.session_rows_sql('ab_events')}) AS folded WHERE {_IN_RANGE}"
)

_OUTPUT = """SELECT json_build_object(
    'funnel', (SELECT coalesce(json_agg(funnel), '[]'::json) FROM funnel),
    'steps', (SELECT coalesce(json_agg(step_stats ORDER BY variant, step), '[]'::json) FROM step_stats),
    'totals', (SELECT coalesce(json_agg(total_stats ORDER BY variant), '[]'::json) FROM total_stats)
)"""

# The standard deviation as PostgreSQL's stddev_samp computes it for numeric, written out so that both
# statements below use one formula: sqrt((n*S2 - S1^2) / (n*(n-1))), 0 when the numerator is not positive.
# Sums are rounded to a fixed scale first: two equal exact sums can carry different display scales (trailing
# zeros) depending on how they were added up, and numeric division and sqrt pick their precision from that.
_SD = """CASE WHEN {n} > 1 THEN sqrt(greatest({n} * round({s2}, 30) - round({s1}, 30) * round({s1}, 30), 0)
    / ({n} * ({n} - 1)))::double precision END"""


def _sd(n: str, s1: str, s2: str) -> str:
    return _SD.format(n=n, s1=s1, s2=s2)


def _mean(total: str, n: str) -> str:
    """An exact numeric sum over a count, as double precision (the scale fixed, see _SD)."""
    return f"(round({total}, 30) / {n})::double precision"


# The report from session rows (a date range over ab_sessions, or the full-scan reference): fold the selected
# sessions, sort their times for the percentiles (percentile_cont), sum in numeric (exact, so the result does
# not depend on the order rows are read in). Cost: proportional to the sessions selected.
SESSIONS_AGGREGATES_SQL = f"""
WITH sessions AS MATERIALIZED ({{sessions}}),
classified AS MATERIALIZED ({rollup.classified_sql("sessions")}),
funnel AS (
    SELECT status, variant, max_step, abandoned_step,
        GROUPING(max_step, abandoned_step) AS level,
        count(*) AS sessions,
        sum(events)::bigint AS events,
        count(*) FILTER (WHERE started) AS started,
        count(*) FILTER (WHERE completed) AS completed,
        count(*) FILTER (WHERE abandoned) AS abandoned,
        min(min_step) AS first_step
    FROM classified
    GROUP BY GROUPING SETS ((status, variant), (status, variant, max_step), (status, variant, abandoned_step))
),
step_times AS MATERIALIZED ({rollup.step_times_sql("sessions")}),
step_caps AS MATERIALIZED (
    SELECT step, percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS cap FROM step_times GROUP BY step
),
step_stats AS (
    SELECT t.variant, t.step, count(*) AS sessions,
        {_mean("sum(least(t.ms, c.cap)::numeric)", "count(*)")} AS mean_ms,
        {_mean("sum(t.ms::numeric)", "count(*)")} AS mean_raw_ms,
        percentile_cont(0.5) WITHIN GROUP (ORDER BY t.ms) AS median_ms,
        percentile_cont(0.9) WITHIN GROUP (ORDER BY t.ms) AS p90_ms,
        max(c.cap) AS cap_ms
    FROM step_times t JOIN step_caps c USING (step)
    GROUP BY t.variant, t.step
),
totals AS MATERIALIZED ({rollup.total_times_sql("sessions")}),
total_cap AS MATERIALIZED (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY total_ms) AS cap FROM totals),
total_sums AS (
    SELECT t.variant, count(*) AS n,
        sum(least(t.total_ms, c.cap)::numeric) AS s1,
        sum(least(t.total_ms, c.cap)::numeric * least(t.total_ms, c.cap)::numeric) AS s2,
        sum(t.total_ms::numeric) AS raw,
        percentile_cont(0.5) WITHIN GROUP (ORDER BY t.total_ms) AS median_ms,
        percentile_cont(0.9) WITHIN GROUP (ORDER BY t.total_ms) AS p90_ms,
        max(c.cap) AS cap
    FROM totals t CROSS JOIN total_cap c
    GROUP BY t.variant
),
total_stats AS (
    SELECT variant, n AS sessions, {_mean("s1", "n")} AS mean_ms, {_sd("n", "s1", "s2")} AS sd_ms,
        {_mean("raw", "n")} AS mean_raw_ms, median_ms, p90_ms, cap AS cap_ms
    FROM total_sums
)
{_OUTPUT}
"""


def _percentiles(buckets: str, group: tuple[str, ...], ps: tuple[float, ...], values: str) -> str:
    """percentile_cont(p) per group from a two-level histogram, exactly as PostgreSQL computes it.

    ``buckets`` has the group columns, ``bucket`` and ``sessions``; ``values`` is a subquery giving
    (value, sessions) of one bucket, correlated on ``b`` (that bucket's row). The same two ranks
    (floor and ceil of p * (n - 1), 0-based) and the same float8 interpolation ``lo + frac * (hi - lo)`` as
    percentile_cont's final function; each rank finds its bucket by the buckets' running counts, then
    its value among that bucket's values only.
    """
    g = ", ".join(group)
    on = " AND ".join(f"b.{k} = r.{k}" for k in group)
    pick = "min(x.value) FILTER (WHERE x.which = {0})"
    lo, hi = pick.format(0), pick.format(1)
    values_list = ", ".join(f"({p!r}::double precision)" for p in ps)
    h = "p.p * (t.n - 1)::double precision"
    return f"""SELECT {", ".join(f"x.{k}" for k in group)}, x.p, {lo} + x.frac * ({hi} - {lo}) AS value
    FROM (
        SELECT {", ".join(f"r.{k}" for k in group)}, r.p, r.frac, r.which,
            (SELECT f.value FROM (
                SELECT v.value, sum(v.sessions) OVER (ORDER BY v.value) AS upto FROM ({values}) AS v
             ) AS f WHERE f.upto > r.rank - b.before ORDER BY f.value LIMIT 1) AS value
        FROM (
            SELECT w.*, k.which, CASE k.which WHEN 0 THEN w.lo ELSE w.hi END AS rank
            FROM (
                SELECT t.*, p.p, floor({h}) AS lo, ceil({h}) AS hi, {h} - floor({h}) AS frac
                FROM (SELECT {g}, sum(sessions) AS n FROM {buckets} GROUP BY {g}) AS t
                CROSS JOIN (VALUES {values_list}) AS p (p)
            ) AS w CROSS JOIN (VALUES (0), (1)) AS k (which)
        ) AS r
        JOIN (
            SELECT {g}, bucket, sessions,
                sum(sessions) OVER (PARTITION BY {g} ORDER BY bucket) - sessions AS before
            FROM {buckets}
        ) AS b ON {on} AND b.before <= r.rank AND r.rank < b.before + b.sessions
        -- A fence: without it the planner pulls this subquery up and copies the correlated lookup into
        -- each of the three references to x.value below, evaluating it three times per rank.
        OFFSET 0
    ) AS x
    GROUP BY {", ".join(f"x.{k}" for k in group)}, x.p, x.frac"""


_STEP_PCTS = _percentiles(
    "step_bk",
    ("variant", "step"),
    (0.5, 0.9),
    "SELECT ms AS value, sessions FROM ab_report_step_values "
    "WHERE step = b.step AND bucket = b.bucket AND variant = b.variant AND sessions <> 0",
)
_STEP_CAPS = _percentiles(
    "(SELECT step, bucket, sum(sessions) AS sessions FROM step_bk GROUP BY step, bucket) AS pooled",
    ("step",),
    (0.99,),
    "SELECT ms AS value, sum(sessions) AS sessions FROM ab_report_step_values "
    "WHERE step = b.step AND bucket = b.bucket GROUP BY ms HAVING sum(sessions) <> 0",
)
_TOTAL_PCTS = _percentiles(
    "total_bk",
    ("variant",),
    (0.5, 0.9),
    "SELECT total_ms AS value, sessions FROM ab_report_total_values "
    "WHERE bucket = b.bucket AND variant = b.variant AND sessions <> 0",
)
_TOTAL_CAP = _percentiles(
    "(SELECT 1 AS pool, bucket, sum(sessions) AS sessions FROM total_bk GROUP BY bucket) AS pooled",
    ("pool",),
    (0.99,),
    "SELECT total_ms AS value, sum(sessions) AS sessions FROM ab_report_total_values "
    "WHERE bucket = b.bucket GROUP BY total_ms HAVING sum(sessions) <> 0",
)

# The all-time report from the cells the triggers keep (rollup.py): funnel counts, and two-level
# histograms of the step times and of the times to complete. It reads a few thousand rows whatever the
# number of events: the buckets' counts and sums, plus the values of the few buckets a percentile or a cap
# falls in (index ranges). Same figures as SESSIONS_AGGREGATES_SQL over all sessions, to the last digit:
# exact numeric sums split at the cap's bucket, percentile_cont's own interpolation.
CELLS_AGGREGATES_SQL = f"""
WITH funnel AS (
    SELECT status, variant, max_step, abandoned_step,
        GROUPING(max_step, abandoned_step) AS level,
        sum(sessions)::bigint AS sessions,
        sum(events)::bigint AS events,
        sum(started)::bigint AS started,
        sum(completed)::bigint AS completed,
        sum(abandoned)::bigint AS abandoned,
        min(min_step) AS first_step
    FROM (
        SELECT status, NULLIF(variant, '') AS variant, NULLIF(max_step, -1) AS max_step,
            NULLIF(abandoned_step, -1) AS abandoned_step, NULLIF(min_step, -1) AS min_step,
            sessions, events, started, completed, abandoned
        FROM ab_report_funnel WHERE sessions <> 0
    ) AS c
    GROUP BY GROUPING SETS ((status, variant), (status, variant, max_step), (status, variant, abandoned_step))
),
step_bk AS MATERIALIZED (SELECT * FROM ab_report_step_buckets WHERE sessions <> 0),
step_caps AS MATERIALIZED (
    SELECT step, value AS cap, {rollup.bucket_sql("value")} AS cap_bucket FROM ({_STEP_CAPS}) AS q
),
step_pcts AS MATERIALIZED ({_STEP_PCTS}),
step_cap_bucket AS (
    SELECT v.variant, v.step, sum(least(v.ms, c.cap)::numeric * v.sessions) AS capped
    -- LATERAL ... OFFSET 0: an index range per cap's bucket (the planner, expecting dozens of caps where there
    -- are a few, would otherwise hash-join the whole values table).
    FROM step_caps c CROSS JOIN LATERAL (
        SELECT * FROM ab_report_step_values v WHERE v.step = c.step AND v.bucket = c.cap_bucket OFFSET 0
    ) AS v
    GROUP BY v.variant, v.step
),
step_stats AS (
    SELECT b.variant, b.step, sum(b.sessions)::bigint AS sessions,
        {
    _mean(
        "coalesce(sum(b.sum_ms) FILTER (WHERE b.bucket < c.cap_bucket), 0) + coalesce(max(f.capped), 0)"
        " + c.cap::numeric * coalesce(sum(b.sessions) FILTER (WHERE b.bucket > c.cap_bucket), 0)",
        "sum(b.sessions)",
    )
} AS mean_ms,
        {_mean("sum(b.sum_ms)", "sum(b.sessions)")} AS mean_raw_ms,
        max(m.value) AS median_ms,
        max(q.value) AS p90_ms,
        c.cap AS cap_ms
    FROM step_bk b JOIN step_caps c USING (step)
    LEFT JOIN step_cap_bucket f ON f.variant = b.variant AND f.step = b.step
    JOIN step_pcts m ON m.variant = b.variant AND m.step = b.step AND m.p = 0.5
    JOIN step_pcts q ON q.variant = b.variant AND q.step = b.step AND q.p = 0.9
    GROUP BY b.variant, b.step, c.cap
),
total_bk AS MATERIALIZED (SELECT * FROM ab_report_total_buckets WHERE sessions <> 0),
total_cap AS MATERIALIZED (
    SELECT value AS cap, {rollup.bucket_sql("value")} AS cap_bucket FROM ({_TOTAL_CAP}) AS q
),
total_pcts AS MATERIALIZED ({_TOTAL_PCTS}),
total_cap_bucket AS (
    SELECT v.variant,
        sum(least(v.total_ms, c.cap)::numeric * v.sessions) AS s1,
        sum(least(v.total_ms, c.cap)::numeric * least(v.total_ms, c.cap)::numeric * v.sessions) AS s2
    FROM total_cap c CROSS JOIN LATERAL (
        SELECT * FROM ab_report_total_values v WHERE v.bucket = c.cap_bucket OFFSET 0
    ) AS v
    GROUP BY v.variant
),
total_sums AS (
    SELECT b.variant, sum(b.sessions) AS n,
        coalesce(sum(b.sum_ms) FILTER (WHERE b.bucket < c.cap_bucket), 0) + coalesce(max(f.s1), 0)
            + c.cap::numeric * coalesce(sum(b.sessions) FILTER (WHERE b.bucket > c.cap_bucket), 0) AS s1,
        coalesce(sum(b.sum_sq) FILTER (WHERE b.bucket < c.cap_bucket), 0) + coalesce(max(f.s2), 0)
            + c.cap::numeric * c.cap::numeric * coalesce(sum(b.sessions) FILTER (WHERE b.bucket > c.cap_bucket), 0)
            AS s2,
        sum(b.sum_ms) AS raw,
        c.cap
    FROM total_bk b CROSS JOIN total_cap c LEFT JOIN total_cap_bucket f USING (variant)
    GROUP BY b.variant, c.cap
),
total_stats AS (
    SELECT s.variant, s.n::bigint AS sessions, {_mean("s.s1", "s.n")} AS mean_ms,
        {_sd("s.n", "s.s1", "s.s2")} AS sd_ms,
        {_mean("s.raw", "s.n")} AS mean_raw_ms, m.value AS median_ms, q.value AS p90_ms, s.cap AS cap_ms
    FROM total_sums s
    JOIN total_pcts m ON m.variant = s.variant AND m.p = 0.5
    JOIN total_pcts q ON q.variant = s.variant AND q.p = 0.9
)
{_OUTPUT}
"""

SOURCES = {"rollup": SESSIONS_FROM_ROLLUP, "events": SESSIONS_FROM_EVENTS}


def aggregates_sql(since: datetime | None, until: datetime | None, source: str) -> str:
    """The statement for a report: the kept cells for the all-time report from the rollup; else the
    selected sessions (of the rollup by their entry time, or folded from every event: the reference)."""
    if source == "rollup" and since is None and until is None:
        return CELLS_AGGREGATES_SQL
    return SESSIONS_AGGREGATES_SQL.replace("{sessions}", SOURCES[source])


# --- options -----------------------------------------------------------------------


def parse_moment(raw: str | datetime | date | None, *, end: bool = False) -> datetime | None:
    """A ``since``/``until`` bound: ISO date or datetime (naive = UTC).

    A bare date as the end of the range includes that whole day, so
    ``--since 2025-01-01 --until 2025-01-31`` covers all of January.
    """
    if raw is None or raw == "":
        return None
    if isinstance(raw, datetime):
        moment = raw
    elif isinstance(raw, date):
        if end and raw == date.max:
            return None  # the end of the last representable day: no bound
        moment = datetime.combine(raw + timedelta(days=1) if end else raw, time.min)
    else:
        text = raw.strip()
        moment_or_none = parse_datetime(text) if "T" in text or " " in text else None
        if moment_or_none is None:
            day = parse_date(text)
            if day is None:
                raise ValueError(f"{text!r} is not an ISO date (YYYY-MM-DD) or datetime")
            return parse_moment(day, end=end)
        moment = moment_or_none
    # In UTC: PostgreSQL refuses offsets beyond +-15:59, which ISO 8601 and Python allow.
    try:
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except OverflowError as exc:
        raise ValueError(f"{raw!r} is outside the representable dates") from exc


TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


def options_from_query(query: Mapping[str, str]) -> dict[str, Any]:
    """``build_report`` keyword arguments from a query string (``since``, ``until``, ``sequential``, ``split``).

    Raises ValueError with a message fit for the user.
    """
    options: dict[str, Any] = {
        "since": parse_moment(query.get("since")),
        "until": parse_moment(query.get("until"), end=True),
    }
    if query.get("split"):
        options["expected_split"] = parse_split(query["split"])
    if "sequential" in query:
        word = query["sequential"].strip().lower()
        if word not in TRUE_WORDS | FALSE_WORDS:
            raise ValueError(f"sequential={query['sequential']!r} is not a boolean")
        options["sequential"] = word in TRUE_WORDS
    return options


# --- database ----------------------------------------------------------------------


@contextmanager
def report_cursor() -> Iterator[Any]:
    """A cursor for the report's statements, with PostgreSQL's JIT compiler off (for this transaction).

    Once the cell tables are ANALYZEd, the planner's cost estimate of the cells statement (a correlated
    lookup per percentile bucket) crosses ``jit_above_cost``, and compiling its ~600 expressions took 1.7 s of
    a 2.8 s statement over a few thousand rows (1M events, load average 7). These statements read few rows or
    are bounded by I/O: JIT does not pay for itself here.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL jit = off")
        yield cursor


def fetch_aggregates(
    since: datetime | None = None, until: datetime | None = None, *, source: str = "rollup"
) -> dict[str, Any]:
    """Run ``AGGREGATES_SQL``: session-level counts and time summaries as one JSON document.

    ``source``: ``"rollup"`` reads ab_sessions; ``"events"`` folds every event of ab_events (the reference,
    its cost grows with the table).
    """
    sql = aggregates_sql(since, until, source)
    with report_cursor() as cursor:
        cursor.execute(sql, {"since": since, "until": until})
        (document,) = cursor.fetchone()
    # psycopg decodes ``json`` columns itself; a plain string means a driver that does not.
    return document if isinstance(document, dict) else json.loads(document)


# --- assembly ------------------------------------------------------------------------


def _pick(cls: type[T], row: dict[str, Any]) -> T:
    """A report part from an aggregates row: the dataclass's fields, in its order."""
    return cls(**{f.name: row[f.name] for f in fields(cls)})  # type: ignore[arg-type]


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _stage(stage: str, label: str, sessions: int, assigned: int, previous: int | None) -> Stage:
    low, high = stats.wilson_interval(sessions, assigned)
    return Stage(
        stage=stage,
        label=label,
        sessions=sessions,
        share_of_assigned=_share(sessions, assigned),
        ci_low=low,
        ci_high=high,
        step_to_step=None if previous is None else _share(sessions, previous),
    )


def _funnel(totals: dict[str, int], reached_hist: dict[int, int], steps: list[int]) -> list[Stage]:
    """Assigned, started, each step, completed: sessions, share of assigned with its interval, step-to-step."""
    assigned = totals["sessions"]
    stages = [_stage("assigned", "Assigned", assigned, assigned, None)]
    stages.append(_stage("started", "Started", totals["started"], assigned, assigned))
    previous = totals["started"]
    for step in steps:
        reached = sum(n for max_step, n in reached_hist.items() if max_step >= step)
        stages.append(_stage(f"step_{step}", f"Step {step} done", reached, assigned, previous))
        previous = reached
    stages.append(_stage("completed", "Completed", totals["completed"], assigned, previous))
    return stages


def _secondary(
    totals: dict[str, dict[str, int]], time_stats: dict[str, dict[str, Any]], confidence: float, alpha: float
) -> tuple[list[SecondaryMetric], stats.WelchResult | None]:
    """Secondary metrics, their tests, and BH-adjusted p-values across them."""
    a, b = totals[CONTROL], totals[TREATMENT]
    metrics: list[SecondaryMetric] = []
    for name, key, description in (
        ("start rate", "started", "share of assigned sessions that started onboarding"),
        ("abandonment rate", "abandoned", "share of assigned sessions that sent onboarding_abandoned"),
    ):
        c = stats.compare_proportions(a[key], a["sessions"], b[key], b["sessions"], confidence=confidence)
        metrics.append(
            SecondaryMetric(
                metric=name,
                description=description,
                kind="proportion",
                control=c.rate_a,
                treatment=c.rate_b,
                diff=c.diff,
                diff_low=c.diff_low,
                diff_high=c.diff_high,
                p_value=c.p_value,
            )
        )
    welch = None
    ta, tb = time_stats.get(CONTROL), time_stats.get(TREATMENT)
    if ta and tb:
        welch = stats.welch_ttest(
            ta["mean_ms"],
            ta["sd_ms"] or 0.0,
            ta["sessions"],
            tb["mean_ms"],
            tb["sd_ms"] or 0.0,
            tb["sessions"],
            confidence,
        )
    metrics.append(
        SecondaryMetric(
            metric="time to complete (ms)",
            description="sum of step times of completed sessions, capped at the pooled P99; Welch t-test",
            kind="mean",
            control=welch.mean_a if welch else None,
            treatment=welch.mean_b if welch else None,
            diff=welch.diff if welch else None,
            diff_low=welch.diff_low if welch else None,
            diff_high=welch.diff_high if welch else None,
            p_value=welch.p_value if welch else None,
        )
    )
    adjusted = stats.benjamini_hochberg({m.metric: (math.nan if m.p_value is None else m.p_value) for m in metrics})
    # nan < alpha is False: a metric without a test is never significant.
    metrics = [replace(m, p_adjusted=adjusted[m.metric], significant=bool(adjusted[m.metric] < alpha)) for m in metrics]
    return metrics, welch


def assemble(
    aggregates: dict[str, Any],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    expected_split: dict[str, float] | None = None,
    sequential: bool = False,
    alpha: float = stats.DEFAULT_ALPHA,
) -> Report:
    """Turn the aggregates into the typed report (pure: no database access)."""
    split = parse_split(expected_split) if expected_split else configured_split()
    confidence = 1 - alpha
    totals = {v: {"sessions": 0, "events": 0, "started": 0, "completed": 0, "abandoned": 0} for v in VARIANT_NAMES}
    reached: dict[str, dict[int, int]] = {v: {} for v in VARIANT_NAMES}
    abandoned_at: dict[str, dict[int | None, int]] = {v: {} for v in VARIANT_NAMES}
    first_step: dict[str, int] = {}
    excluded: dict[str, int] = defaultdict(int)
    excluded_events = 0
    for row in aggregates["funnel"]:
        if row["status"] != "analysed" or row["variant"] not in totals:
            if row["level"] == 3:
                excluded[row["status"]] += row["sessions"]
                excluded_events += row["events"]
            continue
        variant = row["variant"]
        if row["level"] == 3:
            totals[variant] = {k: int(row[k]) for k in totals[variant]}
            first_step[variant] = row["first_step"]
        elif row["level"] == 1 and row["max_step"] is not None:
            reached[variant][row["max_step"]] = row["sessions"]
        elif row["level"] == 2 and row["abandoned"]:
            # The NULL group also holds the sessions that never abandoned: count only those that did.
            abandoned_at[variant][row["abandoned_step"]] = row["abandoned"]

    time_stats = {row["variant"]: row for row in aggregates["totals"]}
    steps_by_variant = {v: list(range(first_step[v], max(reached[v]) + 1)) if reached[v] else [] for v in VARIANT_NAMES}
    assigned = {v: totals[v]["sessions"] for v in VARIANT_NAMES}
    completed = {v: totals[v]["completed"] for v in VARIANT_NAMES}

    analysis = stats.analyse_primary(
        assigned, completed, control=CONTROL, treatment=TREATMENT, split=split, alpha=alpha, sequential=sequential
    )
    secondary, welch = _secondary(totals, time_stats, confidence, alpha)

    report = Report(
        verdict=analysis.decision.verdict,
        reasons=analysis.decision.reasons,
        control=CONTROL,
        treatment=TREATMENT,
        params=Params(
            since=since.isoformat() if since else None,
            until=until.isoformat() if until else None,
            expected_split=split,
            alpha=alpha,
            confidence=confidence,
            sequential=sequential,
            min_sessions=stats.MIN_SESSIONS,
            min_outcomes=stats.MIN_OUTCOMES,
            srm_threshold=stats.SRM_THRESHOLD,
        ),
        sessions=SessionCounts(
            analysed=assigned,
            contaminated=excluded.get("contaminated", 0),
            unassigned=excluded.get("unassigned", 0),
            events=sum(t["events"] for t in totals.values()) + excluded_events,
        ),
        srm=analysis.srm,
        gate=analysis.gate,
        primary=PrimaryMetric(
            metric="completion rate",
            description="share of assigned sessions that completed onboarding",
            result=analysis.primary,
        ),
        secondary=secondary,
        funnel={v: _funnel(totals[v], reached[v], steps_by_variant[v]) for v in VARIANT_NAMES},
        dropout={
            v: [
                Dropout(
                    step=step,
                    sessions=n,
                    share_of_assigned=_share(n, assigned[v]),
                    share_of_abandoned=_share(n, totals[v]["abandoned"]),
                )
                for step, n in sorted(abandoned_at[v].items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
            ]
            for v in VARIANT_NAMES
        },
        time_per_step={
            v: [_pick(StepTime, row) for row in aggregates["steps"] if row["variant"] == v] for v in VARIANT_NAMES
        },
        time_to_complete=TimeToComplete(
            definition="sum of a completed session's step times (metadata.time_spent_ms), "
            "mean capped at the pooled 99th percentile",
            by_variant={v: _pick(CompletionTime, time_stats[v]) if v in time_stats else None for v in VARIANT_NAMES},
            welch=welch,
        ),
    )
    # JSON has no NaN: every consumer reads None instead.
    return finite(report)


def analyse(
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    expected_split: dict[str, float] | None = None,
    sequential: bool | None = None,
    alpha: float = stats.DEFAULT_ALPHA,
    source: str = "rollup",
) -> Report:
    """The typed report for the sessions that entered the experiment in ``[since, until)``.

    A session enters at its first ``variant_assigned`` event (``COALESCE(event_time, timestamp)``); all its
    events count, whenever they happened. ``source="events"`` computes it from a full scan of ab_events.
    """
    if sequential is None:
        sequential = bool(getattr(settings, "AB_REPORT_SEQUENTIAL", False))
    report = assemble(
        fetch_aggregates(since, until, source=source),
        since=since,
        until=until,
        expected_split=expected_split,
        sequential=sequential,
        alpha=alpha,
    )
    if getattr(settings, "AB_REPORT_INSIGHTS", True):
        from server.apps.front.report.insights import add_insights  # issue 14's sections and loss guard

        report = add_insights(report, since, until, alpha=alpha, sequential=sequential, source=source)
    return report


def build_report(since: datetime | None = None, until: datetime | None = None, **options: Any) -> dict[str, Any]:
    """The full report as the JSON API's document; the options are :func:`analyse`'s."""
    return analyse(since, until, **options).to_dict()
