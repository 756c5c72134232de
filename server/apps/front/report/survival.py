"""Time to complete as survival data: every assigned session counts.

The old figure (mean time of *completed* sessions, Welch-tested) suffers from
survivorship: a variant that makes slow users give up leaves only fast
completers and looks faster although nobody became faster. Here a session that
has not completed is *censored* at its last event: it says "not completed
within this long", which is information, not a missing value.

Figures, per variant (``a`` control, ``b`` treatment, differences ``b - a``):

- the Kaplan-Meier curve of "not yet completed" over time since assignment
  (``scipy.stats.ecdf`` on ``CensoredData``), with its pointwise interval;
- the median time to complete and its interval (Brookmeyer-Crowley: where the
  curve's interval band crosses one half);
- the restricted mean time to complete up to a horizon ``tau``: the area under
  the curve from 0 to tau, i.e. the mean of ``min(time, tau)`` (Greenwood-type
  variance), and the difference between variants with its interval: an
  estimate, deliberately without a p-value (see ``SurvivalComparison``);
- the log-rank test of equal curves (as ``scipy.stats.logrank``): the test.

Assumption, shared by all of them: censoring is not informative (a session that
stopped sending events would have completed like the others still in progress
at that time). Giving up early *because* one is slow breaks it; see
docs/report.md for when that matters and the assumption-free "completed within
T" proportion.

Everything is computed from *counts per time point* (``ArmCounts``: the distinct
times, and how many sessions completed / were censored at each), never from
per-session arrays: the report reads those counts from the database (kept as
cells for the all-time report, grouped by a scan for a date range), so its cost
does not grow with the number of sessions. ``compare_survival_counts`` equals
scipy's ``ecdf`` (curve, log-log band, median) and ``logrank`` on the expanded
sessions to ~1e-12 (tests/report/test_survival.py), in floating point
throughout: scipy's ``logrank`` multiplies at-risk counts as int64 and
overflows past about a million sessions per experiment (its variance turns
negative, "invalid value encountered in sqrt", p = nan).

The lower-level functions (``km_counts``, ``rmst_counts``, ``logrank_counts``)
accept leading batch dimensions, so a simulation evaluates thousands of
experiments in one numpy call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special
from scipy import stats as sps

from server.apps.front.report.stats import DEFAULT_CONFIDENCE

Array = NDArray[np.float64]


def _z(confidence: float) -> float:
    return float(sps.norm.ppf(0.5 + confidence / 2))


# --- counts per time point (vectorised over leading dimensions) -------------------------


def at_risk(completed: Array, censored: Array) -> Array:
    """Sessions still at risk just before each time point (censored at t count as at risk at t)."""
    total = completed.sum(axis=-1, keepdims=True) + censored.sum(axis=-1, keepdims=True)
    gone_before = np.cumsum(completed + censored, axis=-1) - (completed + censored)
    return total - gone_before


def km_counts(completed: ArrayLike, censored: ArrayLike) -> tuple[Array, Array]:
    """Kaplan-Meier "not yet completed" after each time point and its Greenwood variance."""
    d = np.asarray(completed, dtype=float)
    c = np.asarray(censored, dtype=float)
    n = at_risk(d, c)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(n > 0, 1 - d / np.where(n > 0, n, 1), 1.0)
        surv = np.cumprod(factor, axis=-1)
        term = np.where((n > d) & (n > 0), d / (n * (n - d)), 0.0)
    return surv, surv**2 * np.cumsum(term, axis=-1)


def rmst_counts(times: ArrayLike, completed: ArrayLike, censored: ArrayLike, tau: float) -> tuple[Array, Array]:
    """Restricted mean time to complete up to ``tau`` and its variance, from counts at sorted ``times``.

    RMST = integral of S(t) from 0 to tau (S = 1 before the first time point).
    Var = sum over completion times t_i <= tau of A_i**2 d_i / (n_i (n_i - d_i)),
    A_i = integral of S from t_i to tau (Klein and Moeschberger, 4.5).
    """
    t = np.asarray(times, dtype=float)
    d = np.asarray(completed, dtype=float)
    c = np.asarray(censored, dtype=float)
    surv, _ = km_counts(d, c)
    n = at_risk(d, c)
    clipped = np.minimum(t, tau)
    # S is 1 on [0, t_1), S_k on [t_k, t_{k+1}), S_last on [t_last, tau].
    left = np.concatenate([[0.0], clipped])
    right = np.concatenate([clipped, [tau]])
    widths = right - left  # (T + 1,)
    levels = np.concatenate([np.ones((*surv.shape[:-1], 1)), surv], axis=-1)
    pieces = levels * widths
    rmst = pieces.sum(axis=-1)
    # A_i = area from t_i to tau = area of the pieces after piece i (piece i + 1 starts at t_i).
    after = np.flip(np.cumsum(np.flip(pieces, axis=-1), axis=-1), axis=-1)[..., 1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where((n > d) & (t <= tau), after**2 * d / np.where(n > d, n * (n - d), 1), 0.0)
    return rmst, term.sum(axis=-1)


def logrank_counts(
    completed_a: ArrayLike, censored_a: ArrayLike, completed_b: ArrayLike, censored_b: ArrayLike
) -> tuple[Array, Array]:
    """Log-rank test from both arms' counts on one common grid of time points: ``(z, two-sided p)``.

    z = sum(O_b - E_b) / sqrt(sum V), the hypergeometric variance with ties;
    positive z means ``b`` completes *sooner* than expected under equal curves.
    """
    o_e, v = _logrank_sums(completed_a, censored_a, completed_b, censored_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(v > 0, o_e / np.sqrt(np.where(v > 0, v, 1)), 0.0)
    return z, 2 * sps.norm.sf(np.abs(z))


def _logrank_sums(
    completed_a: ArrayLike, censored_a: ArrayLike, completed_b: ArrayLike, censored_b: ArrayLike
) -> tuple[Array, Array]:
    """sum(O_b - E_b) and sum(V) of the log-rank test, in floating point (no int64 overflow)."""
    da, ca, db, cb = (np.asarray(v, dtype=float) for v in (completed_a, censored_a, completed_b, censored_b))
    na, nb = at_risk(da, ca), at_risk(db, cb)
    n, d = na + nb, da + db
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.where(n > 0, d * nb / np.where(n > 0, n, 1), 0.0)
        var = np.where(n > 1, d * na * nb * (n - d) / np.where(n > 1, n**2 * (n - 1), 1), 0.0)
    return (db - expected).sum(axis=-1), var.sum(axis=-1)


def counts_on_grid(times: ArrayLike, completed: ArrayLike, grid: Array) -> tuple[Array, Array]:
    """Completions and censorings of sessions at each point of ``grid`` (which must hold every time)."""
    t = np.asarray(times, dtype=float)
    done = np.asarray(completed, dtype=bool)
    index = np.searchsorted(grid, t)
    d = np.bincount(index[done], minlength=len(grid)).astype(float)
    c = np.bincount(index[~done], minlength=len(grid)).astype(float)
    return d, c


# --- per-session API (the report) ----------------------------------------------------------


@dataclass(frozen=True)
class CurvePoint:
    seconds: float
    not_completed: float  # Kaplan-Meier estimate of the share not yet completed
    low: float
    high: float


@dataclass(frozen=True)
class SurvivalArm:
    sessions: int
    completed: int
    censored: int
    median_seconds: float | None  # None while fewer than half have (by the estimate) completed
    median_low: float | None
    median_high: float | None
    rmst_seconds: float
    rmst_low: float
    rmst_high: float
    curve: list[CurvePoint]


@dataclass(frozen=True)
class SurvivalComparison:
    """Both arms' curves and figures, the log-rank test and the RMST difference ``b - a``."""

    horizon_seconds: float
    confidence: float
    a: SurvivalArm
    b: SurvivalArm
    logrank_statistic: float
    logrank_p: float
    rmst_diff: float
    rmst_diff_low: float
    rmst_diff_high: float
    # Always None: the RMST difference is an estimate with its interval, not a test. Of the two tests of "time
    # to complete differs" the report runs one, pre-specified: log-rank (two would double the chances of a
    # false alarm); RMST also reacts more to speed-dependent giving up (informative censoring), which is
    # exactly the failure this section exists for (docs/report.md).
    rmst_diff_p: float | None = None


def _crossing(quantiles: Array, values: Array) -> float | None:
    """First time at which a non-increasing step curve is at or below one half."""
    below = np.nonzero(values <= 0.5 + 1e-12)[0]
    return float(quantiles[below[0]]) if below.size else None


@dataclass(frozen=True)
class ArmCounts:
    """One variant's sessions as counts per time point: ``times`` sorted and distinct, each with at least one
    session; ``completed`` / ``censored``: how many completed / were censored (last event) at that time."""

    times: Array
    completed: Array
    censored: Array

    @property
    def sessions(self) -> int:
        return int(self.completed.sum() + self.censored.sum())

    @classmethod
    def of_sessions(cls, seconds: ArrayLike, completed: ArrayLike) -> ArmCounts:
        t = np.asarray(seconds, dtype=float)
        done = np.asarray(completed, dtype=bool)
        times = np.unique(t)
        d, c = counts_on_grid(t, done, times)
        return cls(times, d, c)

    @classmethod
    def of_rows(cls, rows: list[tuple[float, bool, int]]) -> ArmCounts:
        """From (time, completed, sessions) rows, in any order, a time possibly on two rows."""
        if not rows:
            empty = np.zeros(0)
            return cls(empty, empty, empty)
        t = np.array([r[0] for r in rows], dtype=float)
        done = np.array([bool(r[1]) for r in rows])
        n = np.array([r[2] for r in rows], dtype=float)
        times = np.unique(t)
        index = np.searchsorted(times, t)
        d = np.bincount(index[done], weights=n[done], minlength=times.size)
        c = np.bincount(index[~done], weights=n[~done], minlength=times.size)
        return cls(times, d, c)

    def on(self, grid: Array) -> tuple[Array, Array]:
        """Completions and censorings on a grid holding every one of ``times``."""
        d, c = np.zeros(grid.size), np.zeros(grid.size)
        index = np.searchsorted(grid, self.times)
        d[index], c[index] = self.completed, self.censored
        return d, c


def _kaplan_meier(counts: ArmCounts, confidence: float) -> tuple[Array, Array, Array]:
    """The curve at ``counts.times`` and its log-log band, as scipy's ``ecdf(...).sf`` and
    ``confidence_interval(method="log-log")`` compute them; where the band is undefined (S = 0 or 1: no
    uncertainty on the log-log scale) it is the estimate itself."""
    d = counts.completed
    n = at_risk(d, counts.censored)
    sf = np.cumprod((n - d) / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = 1 / np.log(sf) ** 2 * np.cumsum(d / (n * (n - d)))
        se = np.sqrt(var)
        z_se = special.ndtri(1 / 2 + confidence / 2) * se
        lnl = np.log(-np.log(sf))
        low = np.exp(-np.exp(lnl + z_se))
        high = np.exp(-np.exp(lnl - z_se))
    low, high = np.clip(low, 0, 1), np.clip(high, 0, 1)
    return sf, np.where(np.isnan(low), sf, low), np.where(np.isnan(high), sf, high)


def survival_arm_counts(
    counts: ArmCounts, *, horizon: float, confidence: float, max_points: int = 200
) -> tuple[SurvivalArm, float]:
    """One variant's figures from its counts, and the variance of its RMST (for the difference)."""
    sessions = counts.sessions
    if sessions == 0:
        nan = math.nan
        return SurvivalArm(0, 0, 0, None, None, None, nan, nan, nan, []), nan
    quantiles = counts.times
    values, low, high = _kaplan_meier(counts, confidence)
    # A chart needs a few hundred points at most: keep every step's end on an even thinning.
    keep = np.unique(np.linspace(0, quantiles.size - 1, min(quantiles.size, max_points)).astype(int))
    points = [CurvePoint(float(quantiles[i]), float(values[i]), float(low[i]), float(high[i])) for i in keep]
    rmst, var = rmst_counts(quantiles, counts.completed, counts.censored, horizon)
    half = _z(confidence) * math.sqrt(float(var))
    completed = int(counts.completed.sum())
    return (
        SurvivalArm(
            sessions=sessions,
            completed=completed,
            censored=sessions - completed,
            median_seconds=_crossing(quantiles, values),
            # The band's lower edge crosses one half first: the lower limit of the median, and vice versa.
            median_low=_crossing(quantiles, low),
            median_high=_crossing(quantiles, high),
            rmst_seconds=float(rmst),
            rmst_low=float(rmst) - half,
            rmst_high=float(rmst) + half,
            curve=points,
        ),
        float(var),
    )


def survival_arm(
    seconds: ArrayLike, completed: ArrayLike, *, horizon: float, confidence: float, max_points: int = 200
) -> tuple[SurvivalArm, float]:
    """One variant's figures from per-session (seconds, completed), and the variance of its RMST."""
    return survival_arm_counts(
        ArmCounts.of_sessions(seconds, completed), horizon=horizon, confidence=confidence, max_points=max_points
    )


def default_horizon(seconds_a: ArrayLike, seconds_b: ArrayLike) -> float:
    """The largest horizon both arms observe: the smaller of the two arms' longest follow-up."""
    a, b = np.asarray(seconds_a, dtype=float), np.asarray(seconds_b, dtype=float)
    if a.size == 0 or b.size == 0:
        return math.nan
    return float(min(a.max(), b.max()))


def logrank_arms(a: ArmCounts, b: ArmCounts) -> tuple[float, float]:
    """The log-rank test of ``b`` against ``a`` as ``scipy.stats.logrank(b, a)``: (statistic, two-sided p),
    positive when ``b`` completes sooner; nan when its variance is 0 (as scipy: 0 / 0)."""
    grid = np.union1d(a.times, b.times)
    o_e, v = _logrank_sums(*a.on(grid), *b.on(grid))
    if not v > 0:
        return math.nan, math.nan
    z = float(o_e / math.sqrt(v))
    return z, float(2 * special.ndtr(-abs(z)))


def compare_survival_counts(
    a: ArmCounts, b: ArmCounts, *, horizon: float | None = None, confidence: float = DEFAULT_CONFIDENCE
) -> SurvivalComparison | None:
    """Time to complete of two variants from their counts (``ArmCounts``); seconds since assignment, to
    completion or censoring. None when either arm has no session or no completion (no curve to compare)."""
    if a.sessions == 0 or b.sessions == 0 or not a.completed.any() or not b.completed.any():
        return None
    tau = default_horizon(a.times, b.times) if horizon is None else float(horizon)
    arm_a, var_a = survival_arm_counts(a, horizon=tau, confidence=confidence)
    arm_b, var_b = survival_arm_counts(b, horizon=tau, confidence=confidence)
    statistic, p_logrank = logrank_arms(a, b)
    diff = arm_b.rmst_seconds - arm_a.rmst_seconds
    half = _z(confidence) * math.sqrt(var_a + var_b)
    return SurvivalComparison(
        horizon_seconds=tau,
        confidence=confidence,
        a=arm_a,
        b=arm_b,
        logrank_statistic=statistic,
        logrank_p=p_logrank,
        rmst_diff=diff,
        rmst_diff_low=diff - half,
        rmst_diff_high=diff + half,
    )


def compare_survival(
    seconds_a: ArrayLike,
    completed_a: ArrayLike,
    seconds_b: ArrayLike,
    completed_b: ArrayLike,
    *,
    horizon: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> SurvivalComparison | None:
    """``compare_survival_counts`` of per-session (seconds, completed) arrays."""
    return compare_survival_counts(
        ArmCounts.of_sessions(seconds_a, completed_a),
        ArmCounts.of_sessions(seconds_b, completed_b),
        horizon=horizon,
        confidence=confidence,
    )


def completed_within(
    seconds: ArrayLike, completed: ArrayLike, followed_for: ArrayLike, within: float
) -> tuple[int, int]:
    """(completed within ``within`` seconds, sessions followed for at least that long).

    Assumption-free: a session counts only once it has been in the experiment
    for ``within`` seconds (``followed_for``: from assignment to the report's
    end), so a recent session that may still complete is not counted as a
    failure; giving up counts as not completing.
    """
    t = np.asarray(seconds, dtype=float)
    done = np.asarray(completed, dtype=bool)
    mature = np.asarray(followed_for, dtype=float) >= within
    return int((mature & done & (t <= within)).sum()), int(mature.sum())
