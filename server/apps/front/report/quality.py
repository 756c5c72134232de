"""Data quality: does each variant lose events equally? And the lift over time.

Event loss. Clients number each session's events (``seq``: 1, 2, 3, ...). For
a session, ``expected`` is the highest number seen and ``received`` the number
of distinct numbers stored; ``expected - received`` events were lost on the
way (a page unloaded before its beacon left, a network drop, ...). A variant
that loses more events than the other biases its funnel even when the split
looks perfect (no sample-ratio mismatch), so the report refuses a winner when
the loss rates differ (``invalid: unequal event loss``), as it does for SRM.

The test is the two-proportion z-test of lost / expected events, with the
variance computed with *sessions* as the units (delta method for a ratio of
sums): events of one session are lost together (one unload takes its tail), so
treating events as independent would understate the variance and raise false
alarms. Dead letters (events accepted but refused by the database) are
compared per variant with the plain two-proportion z-test (they are rare and
independent faults).

Limit: a session's *trailing* lost events leave no gap (the highest number
seen is lower); only losses followed by a later stored event are counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as sps

from server.apps.front.report import stats
from server.apps.front.report.stats import SRM_THRESHOLD, Number

INVALID_LOSS = "invalid: unequal event loss"
LOSS_THRESHOLD = SRM_THRESHOLD  # a validity check like SRM: only a clear difference stops the verdict


def _out(value: NDArray[np.float64]) -> Number:
    return float(value) if np.ndim(value) == 0 else value


def ratio_variance(
    n: ArrayLike, lost: ArrayLike, expected: ArrayLike, lost2: ArrayLike, expected2: ArrayLike, cross: ArrayLike
) -> Number:
    """Variance of sum(lost) / sum(expected) over ``n`` sessions (delta method), from per-session sums.

    ``lost2``, ``expected2`` and ``cross`` are the sums of squares and of products over sessions.
    With r the ratio and e-bar the mean expected per session:
    Var(r) = (S_ll - 2 r S_le + r**2 S_ee) / (n (n - 1) e-bar**2)
    (the sample variance of the residuals lost_i - r expected_i; unbiased form).
    """
    n_, l_, e_, l2, e2, le = (np.asarray(v, dtype=float) for v in (n, lost, expected, lost2, expected2, cross))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = l_ / e_
        residual = l2 - 2 * r * le + r**2 * e2
        var = residual / ((n_ - 1) * n_ * (e_ / n_) ** 2)
    return _out(var)


def clustered_ztest(a: dict[str, ArrayLike], b: dict[str, ArrayLike]) -> tuple[Number, Number]:
    """z and two-sided p of loss rate ``b`` minus ``a``, sessions as clusters (keys of :func:`ratio_variance`).

    Each arm's variance is the delta-method one of its own ratio; with one event per session this is
    the unpooled two-proportion z-test (up to the unbiased n / (n - 1)).
    """
    keys = ("n", "lost", "expected", "lost2", "expected2", "cross")
    va = ratio_variance(*(a[k] for k in keys))
    vb = ratio_variance(*(b[k] for k in keys))
    with np.errstate(divide="ignore", invalid="ignore"):
        rate_a = np.asarray(a["lost"], dtype=float) / np.asarray(a["expected"], dtype=float)
        rate_b = np.asarray(b["lost"], dtype=float) / np.asarray(b["expected"], dtype=float)
        se = np.sqrt(np.asarray(va) + np.asarray(vb))
        z = np.where(se > 0, (rate_b - rate_a) / np.where(se > 0, se, 1), 0.0)
    z = np.nan_to_num(z, nan=0.0)
    return _out(z), _out(2 * sps.norm.sf(np.abs(z)))


@dataclass(frozen=True)
class LossArm:
    sessions_with_seq: int
    expected_events: int  # sum over sessions of the highest seq seen
    received_events: int  # distinct seqs stored
    lost_events: int
    loss_rate: float | None
    accepted_events: int  # stored + dead-lettered
    dead_lettered: int
    dead_letter_rate: float | None


@dataclass(frozen=True)
class LossGuard:
    arms: dict[str, LossArm]
    loss_diff: float | None  # treatment minus control
    loss_z: float | None
    loss_p: float | None
    dead_letter_diff: float | None
    dead_letter_p: float | None
    threshold: float
    unequal: bool
    reasons: list[str]


def loss_guard(
    sums: dict[str, dict[str, int]],
    dead: dict[str, int],
    stored: dict[str, int],
    *,
    control: str,
    treatment: str,
    threshold: float = LOSS_THRESHOLD,
) -> LossGuard:
    """Compare event loss and dead letters between ``control`` and ``treatment``.

    ``sums[v]``: n (sessions with a seq), lost, expected, lost2, expected2, cross (per-session sums,
    see :func:`ratio_variance`) and received; ``dead[v]`` dead-lettered and ``stored[v]`` stored events.
    """
    arms: dict[str, LossArm] = {}
    for v in (control, treatment):
        s = sums.get(v) or {}
        expected, lost = int(s.get("expected", 0)), int(s.get("lost", 0))
        accepted = int(stored.get(v, 0)) + int(dead.get(v, 0))
        arms[v] = LossArm(
            sessions_with_seq=int(s.get("n", 0)),
            expected_events=expected,
            received_events=expected - lost,
            lost_events=lost,
            loss_rate=lost / expected if expected else None,
            accepted_events=accepted,
            dead_lettered=int(dead.get(v, 0)),
            dead_letter_rate=int(dead.get(v, 0)) / accepted if accepted else None,
        )
    a, b = arms[control], arms[treatment]
    reasons: list[str] = []
    loss_diff = loss_z = loss_p = None
    sa, sb = sums.get(control) or {}, sums.get(treatment) or {}
    if a.sessions_with_seq >= 2 and b.sessions_with_seq >= 2 and a.expected_events and b.expected_events:
        z, p = clustered_ztest(sa, sb)  # type: ignore[arg-type]
        loss_z, loss_p = float(z), float(p)
        loss_diff = (b.loss_rate or 0.0) - (a.loss_rate or 0.0)
    dl_diff = dl_p = None
    if a.accepted_events and b.accepted_events:
        _, p = stats.two_proportion_ztest(a.dead_lettered, a.accepted_events, b.dead_lettered, b.accepted_events)
        dl_p = float(p)
        dl_diff = (b.dead_letter_rate or 0.0) - (a.dead_letter_rate or 0.0)
    unequal = False
    for name, p, ra, rb in (
        ("events lost in transit (gaps in seq)", loss_p, a.loss_rate, b.loss_rate),
        ("events dead-lettered", dl_p, a.dead_letter_rate, b.dead_letter_rate),
    ):
        if p is not None and not math.isnan(p) and p < threshold:
            unequal = True
            reasons.append(
                f"Share of {name}: {control} {stats.HTML.pct(ra or 0.0)}, {treatment} {stats.HTML.pct(rb or 0.0)} "
                f"(p = {p:.2g}, below {threshold}). One variant loses more of its events, so its funnel is "
                "biased even though the split looks right; no comparison can be trusted until the cause is found."
            )
    return LossGuard(arms, loss_diff, loss_z, loss_p, dl_diff, dl_p, threshold, unequal, reasons)


# --- lift over time --------------------------------------------------------------------------


@dataclass(frozen=True)
class DayPoint:
    day: str  # ISO date of assignment (UTC)
    assigned: dict[str, int]  # that day
    share: dict[str, float | None]  # that day's split
    cumulative_assigned: dict[str, int]
    cumulative_completed: dict[str, int]
    lift: float | None  # cumulative, treatment over control
    lift_low: float | None
    lift_high: float | None


def lift_over_time(
    days: list[str],
    assigned: dict[str, ArrayLike],
    completed: dict[str, ArrayLike],
    *,
    control: str,
    treatment: str,
    confidence: float = stats.DEFAULT_CONFIDENCE,
) -> list[DayPoint]:
    """Per day of assignment: that day's split, and the cumulative completion lift with its interval.

    The interval on each day is the fixed-horizon one (stats.lift_interval): read the curve for drift
    and novelty effects, not as a test repeated daily (that is what the sequential mode is for).
    """
    names = list(assigned)
    n = {v: np.asarray(assigned[v], dtype=float) for v in names}
    x = {v: np.asarray(completed[v], dtype=float) for v in names}
    cn = {v: np.cumsum(n[v]) for v in names}
    cx = {v: np.cumsum(x[v]) for v in names}
    lift, low, high = stats.lift_interval(cx[control], cn[control], cx[treatment], cn[treatment], confidence)
    lift, low, high = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (lift, low, high))
    points = []
    for i, day in enumerate(days):
        total = sum(n[v][i] for v in names)
        points.append(
            DayPoint(
                day=day,
                assigned={v: int(n[v][i]) for v in names},
                share={v: (float(n[v][i] / total) if total else None) for v in names},
                cumulative_assigned={v: int(cn[v][i]) for v in names},
                cumulative_completed={v: int(cx[v][i]) for v in names},
                lift=float(lift[i]),
                lift_low=float(low[i]),
                lift_high=float(high[i]),
            )
        )
    return points
