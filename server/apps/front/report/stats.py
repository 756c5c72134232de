"""Statistics for the A/B report: pure functions on counts and summaries.

Nothing here touches Django or the database, so every function can be checked
against textbook values or scipy on raw arrays, and the A/A simulation can call
the exact decision rule the report uses.

Conventions: ``a`` is the control arm and ``b`` the treatment arm; every
difference is ``b - a`` and the lift is ``b / a - 1``. Distributions come from
``scipy.stats``; the arithmetic around them (standard errors, the delta method,
the mixture boundary) is written out because scipy has no function for it.

The proportion helpers accept numpy arrays as well as scalars, so simulations
can evaluate thousands of experiments in one call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import integrate, special
from scipy import stats as sps

from server.apps.front.report.formatting import HTML

DEFAULT_CONFIDENCE = 0.95
DEFAULT_ALPHA = 0.05
SRM_THRESHOLD = 0.001
MIN_SESSIONS = 100
MIN_OUTCOMES = 5
# Standard deviation of the normal mixing distribution of the mSPRT, on the
# scale of the effect (a difference of two proportions). 0.05 = effects of a
# few percentage points are the plausible ones; the interval is valid for any
# value, this only decides when it is tightest.
DEFAULT_MIXTURE_SD = 0.05

INSUFFICIENT = "insufficient data"
NO_DIFFERENCE = "no significant difference yet"
INVALID_SRM = "invalid: sample ratio mismatch"

Number = float | NDArray[np.float64]


def _z(confidence: float) -> float:
    return float(sps.norm.ppf(0.5 + confidence / 2))


def _nan_if_zero(values: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.where(values == 0, np.nan, values)


def _out(value: NDArray[np.float64]) -> Number:
    """Return a Python float for 0-d results, the array otherwise."""
    return float(value) if np.ndim(value) == 0 else value


# --- single proportions --------------------------------------------------------


def wilson_interval(successes: int, trials: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for one proportion; ``(nan, nan)`` with no trials.

    Wilson rather than Wald because funnel stages near 0% or 100% are common
    and the Wald interval collapses or leaves [0, 1] there.
    """
    if trials <= 0:
        return (math.nan, math.nan)
    # scipy's binomtest(...).proportion_ci(method="wilson") written out, operation for operation (Newcombe
    # 1998): the same floats, without binomtest's p-value computation that cost ~3 ms a call (20 funnel
    # stages per report).
    k, n = int(successes), int(trials)
    p = k / n
    z = float(special.ndtri(0.5 + 0.5 * confidence))
    denom = 2 * (n + z**2)
    center = (2 * n * p + z**2) / denom
    delta = z / denom * math.sqrt(4 * n * p * (1 - p) + z**2)
    return (0.0 if k == 0 else center - delta, 1.0 if k == n else center + delta)


# --- two proportions -------------------------------------------------------------


def two_proportion_ztest(x_a: ArrayLike, n_a: ArrayLike, x_b: ArrayLike, n_b: ArrayLike) -> tuple[Number, Number]:
    """Pooled two-sided z-test of ``p_b == p_a``; returns ``(z, p_value)``.

    Identical to Pearson's chi-square on the 2x2 table without continuity
    correction (z**2 == chi2). When both arms are all-0 or all-1 there is no
    evidence of a difference: z = 0, p = 1.
    """
    xa, na, xb, nb = (np.asarray(v, dtype=float) for v in (x_a, n_a, x_b, n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (xa + xb) / (na + nb)
        se = np.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
        z = np.where(se > 0, (xb / nb - xa / na) / _nan_if_zero(se), 0.0)
    p = 2 * sps.norm.sf(np.abs(z))
    return _out(z), _out(p)


def difference_interval(
    x_a: ArrayLike, n_a: ArrayLike, x_b: ArrayLike, n_b: ArrayLike, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[Number, Number, Number]:
    """Difference ``p_b - p_a`` with its unpooled Wald interval: ``(diff, low, high)``."""
    xa, na, xb, nb = (np.asarray(v, dtype=float) for v in (x_a, n_a, x_b, n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        pa, pb = xa / na, xb / nb
        se = np.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
    diff = pb - pa
    half = _z(confidence) * se
    return _out(diff), _out(diff - half), _out(diff + half)


def lift_interval(
    x_a: ArrayLike, n_a: ArrayLike, x_b: ArrayLike, n_b: ArrayLike, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[Number, Number, Number]:
    """Relative lift ``p_b / p_a - 1`` with a delta-method interval: ``(lift, low, high)``.

    Var(p_b / p_a) ~= Var(p_b) / p_a**2 + p_b**2 Var(p_a) / p_a**4 (independent
    arms, first-order Taylor expansion of the ratio). Undefined (nan) when the
    control rate is 0.
    """
    xa, na, xb, nb = (np.asarray(v, dtype=float) for v in (x_a, n_a, x_b, n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        pa, pb = xa / na, xb / nb
        var_a, var_b = pa * (1 - pa) / na, pb * (1 - pb) / nb
        pa_safe = _nan_if_zero(pa)
        ratio = pb / pa_safe
        se = np.sqrt(var_b / pa_safe**2 + pb**2 * var_a / pa_safe**4)
    half = _z(confidence) * se
    return _out(ratio - 1), _out(ratio - 1 - half), _out(ratio - 1 + half)


def always_valid_interval(
    x_a: ArrayLike,
    n_a: ArrayLike,
    x_b: ArrayLike,
    n_b: ArrayLike,
    alpha: float = DEFAULT_ALPHA,
    mixture_sd: float = DEFAULT_MIXTURE_SD,
) -> tuple[Number, Number]:
    """Always-valid (sequential) interval for ``p_b - p_a``: ``(low, high)``.

    The confidence sequence of the normal-mixture mSPRT (Johari, Pekelis and
    Walsh, "Always valid inference", 2017; the method behind Optimizely's stats
    engine): with V the variance of the estimated difference and tau**2 the
    mixing variance, the interval is

        diff +- sqrt(V (V + tau**2) / tau**2 * (log((V + tau**2) / V) + 2 log(1/alpha)))

    Its coverage holds simultaneously over every look, so a team may check the
    report daily and stop whenever it excludes 0. It is wider than the
    fixed-horizon interval; that is the price of peeking. Relies on the normal
    approximation of the difference, like the z-test.
    """
    xa, na, xb, nb = (np.asarray(v, dtype=float) for v in (x_a, n_a, x_b, n_b))
    tau2 = mixture_sd**2
    with np.errstate(divide="ignore", invalid="ignore"):
        pa, pb = xa / na, xb / nb
        v = _nan_if_zero(pa * (1 - pa) / na + pb * (1 - pb) / nb)
        half = np.sqrt(v * (v + tau2) / tau2 * (np.log((v + tau2) / v) + 2 * np.log(1 / alpha)))
    diff = pb - pa
    return _out(diff - half), _out(diff + half)


def probability_b_better(x_a: int, n_a: int, x_b: int, n_b: int, prior: tuple[float, float] = (1.0, 1.0)) -> float:
    """Posterior probability that ``p_b > p_a`` under independent Beta priors.

    With F_a the posterior CDF of a and Q_b the posterior quantile function of
    b, P(p_b > p_a) = E[F_a(p_b)] = integral over u in (0, 1) of F_a(Q_b(u)).
    Both are regularized incomplete beta functions (``scipy.special.betainc``
    and ``betaincinv``), so the bounded integrand is cheap and adaptive
    quadrature stays accurate even for sharply peaked posteriors.
    """
    alpha0, beta0 = prior
    a_shape = (alpha0 + x_a, beta0 + n_a - x_a)
    b_shape = (alpha0 + x_b, beta0 + n_b - x_b)
    value, _ = integrate.quad(
        lambda u: float(special.betainc(*a_shape, special.betaincinv(*b_shape, u))),
        0.0,
        1.0,
        limit=200,
        epsabs=1e-10,
    )
    return min(1.0, max(0.0, value))


@dataclass(frozen=True)
class ProportionComparison:
    """Everything the report says about one proportion metric, control ``a`` vs treatment ``b``."""

    x_a: int
    n_a: int
    x_b: int
    n_b: int
    rate_a: float
    rate_b: float
    diff: float
    diff_low: float
    diff_high: float
    lift: float
    lift_low: float
    lift_high: float
    z: float
    p_value: float
    seq_low: float
    seq_high: float
    prob_b_better: float
    prob_a_better: float
    confidence: float


def compare_proportions(
    x_a: int,
    n_a: int,
    x_b: int,
    n_b: int,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    mixture_sd: float = DEFAULT_MIXTURE_SD,
) -> ProportionComparison:
    """Frequentist, sequential and Bayesian comparison of two proportions."""
    nan = math.nan
    if n_a <= 0 or n_b <= 0:
        rate_a = x_a / n_a if n_a > 0 else nan
        rate_b = x_b / n_b if n_b > 0 else nan
        return ProportionComparison(x_a, n_a, x_b, n_b, rate_a, rate_b, *([nan] * 12), confidence)
    diff, diff_low, diff_high = difference_interval(x_a, n_a, x_b, n_b, confidence)
    lift, lift_low, lift_high = lift_interval(x_a, n_a, x_b, n_b, confidence)
    z, p = two_proportion_ztest(x_a, n_a, x_b, n_b)
    seq_low, seq_high = always_valid_interval(x_a, n_a, x_b, n_b, 1 - confidence, mixture_sd)
    prob_b = probability_b_better(x_a, n_a, x_b, n_b)
    return ProportionComparison(
        x_a=x_a,
        n_a=n_a,
        x_b=x_b,
        n_b=n_b,
        rate_a=x_a / n_a,
        rate_b=x_b / n_b,
        diff=float(diff),
        diff_low=float(diff_low),
        diff_high=float(diff_high),
        lift=float(lift),
        lift_low=float(lift_low),
        lift_high=float(lift_high),
        z=float(z),
        p_value=float(p),
        seq_low=float(seq_low),
        seq_high=float(seq_high),
        prob_b_better=prob_b,
        prob_a_better=1.0 - prob_b,
        confidence=confidence,
    )


# --- means ---------------------------------------------------------------------


@dataclass(frozen=True)
class WelchResult:
    """Welch's unequal-variance t-test of ``mean_b - mean_a`` from summary statistics."""

    mean_a: float
    mean_b: float
    diff: float
    diff_low: float
    diff_high: float
    t: float
    df: float
    p_value: float
    confidence: float


def welch_ttest(
    mean_a: float,
    sd_a: float,
    n_a: int,
    mean_b: float,
    sd_b: float,
    n_b: int,
    confidence: float = DEFAULT_CONFIDENCE,
) -> WelchResult | None:
    """Welch's t-test from per-arm mean, sample SD and count; None below 2 per arm.

    The database returns count, mean and stddev_samp per arm, so the test is run
    with ``scipy.stats.ttest_ind_from_stats``; the interval uses the
    Welch-Satterthwaite degrees of freedom.
    """
    if n_a < 2 or n_b < 2:
        return None
    result = sps.ttest_ind_from_stats(mean_b, sd_b, n_b, mean_a, sd_a, n_a, equal_var=False)
    var_a, var_b = sd_a**2 / n_a, sd_b**2 / n_b
    se = math.sqrt(var_a + var_b)
    diff = mean_b - mean_a
    if se == 0:
        return WelchResult(mean_a, mean_b, diff, diff, diff, math.nan, math.nan, 1.0 if diff == 0 else 0.0, confidence)
    df = (var_a + var_b) ** 2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))
    half = float(sps.t.ppf(0.5 + confidence / 2, df)) * se
    return WelchResult(
        mean_a=mean_a,
        mean_b=mean_b,
        diff=diff,
        diff_low=diff - half,
        diff_high=diff + half,
        t=float(result.statistic),
        df=df,
        p_value=float(result.pvalue),
        confidence=confidence,
    )


# --- validity checks -------------------------------------------------------------


@dataclass(frozen=True)
class SRMResult:
    """Chi-square goodness-of-fit of assigned sessions against the expected split."""

    observed: dict[str, int]
    expected: dict[str, float]
    expected_share: dict[str, float]
    chi2: float
    p_value: float
    threshold: float
    mismatch: bool


def sample_ratio_mismatch(
    observed: Mapping[str, int], expected_split: Mapping[str, float], threshold: float = SRM_THRESHOLD
) -> SRMResult:
    """Test the arm sizes against ``expected_split`` (weights, normalised here).

    With no sessions at all there is nothing to test: p is nan and no mismatch
    is declared (the sample gate reports the lack of data instead).
    """
    names = list(expected_split)
    weight_sum = sum(expected_split.values())
    if weight_sum <= 0 or any(w <= 0 for w in expected_split.values()):
        raise ValueError(f"expected split needs positive weights, got {dict(expected_split)}")
    share = {name: expected_split[name] / weight_sum for name in names}
    counts = {name: int(observed.get(name, 0)) for name in names}
    total = sum(counts.values())
    expected = {name: total * share[name] for name in names}
    if total == 0:
        return SRMResult(counts, expected, share, math.nan, math.nan, threshold, False)
    result = sps.chisquare([counts[n] for n in names], [expected[n] for n in names])
    p = float(result.pvalue)
    return SRMResult(counts, expected, share, float(result.statistic), p, threshold, p < threshold)


@dataclass(frozen=True)
class SampleGate:
    """Whether each arm has enough sessions, successes and failures for a verdict."""

    ok: bool
    reasons: list[str] = field(default_factory=list)


def sample_gate(
    assigned: Mapping[str, int],
    successes: Mapping[str, int],
    min_sessions: int = MIN_SESSIONS,
    min_outcomes: int = MIN_OUTCOMES,
) -> SampleGate:
    """At least ``min_sessions`` per arm and ``min_outcomes`` successes and failures each.

    Below that the normal approximation behind the z-test is unreliable and one
    early completion can swing the rate by several points.
    """
    reasons = []
    for name, n in assigned.items():
        x = successes.get(name, 0)
        if n < min_sessions:
            reasons.append(f"{name} has {n} sessions; at least {min_sessions} are needed.")
        if x < min_outcomes:
            reasons.append(f"{name} has {x} completions; at least {min_outcomes} are needed.")
        if n - x < min_outcomes:
            reasons.append(f"{name} has {n - x} sessions that did not complete; at least {min_outcomes} are needed.")
    return SampleGate(ok=not reasons, reasons=reasons)


def benjamini_hochberg(p_values: Mapping[str, float]) -> dict[str, float]:
    """BH-adjusted p-values (``scipy.stats.false_discovery_control``); nan stays nan and is not counted."""
    finite = {name: p for name, p in p_values.items() if p is not None and not math.isnan(p)}
    adjusted = dict.fromkeys(p_values, math.nan)
    if finite:
        values = sps.false_discovery_control(list(finite.values()), method="bh")
        adjusted.update({name: float(v) for name, v in zip(finite, values, strict=True)})
    return adjusted


# --- verdict -----------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    verdict: str
    reasons: list[str]


def _pct(value: float) -> str:
    return HTML.pct(value)


def _points(value: float) -> str:
    return HTML.points(value, digits=1, unit=" points")


def decide(
    *,
    control: str,
    treatment: str,
    primary: ProportionComparison,
    srm: SRMResult,
    gate: SampleGate,
    alpha: float = DEFAULT_ALPHA,
    sequential: bool = False,
) -> Decision:
    """The verdict on the primary metric, with its reasons in plain words.

    Order matters: a sample ratio mismatch means assignment or logging is
    broken, so no comparison is trusted; then the sample gate; then the test.
    With ``sequential`` the always-valid interval decides instead of the
    fixed-horizon p-value, which keeps the error rate at ``alpha`` however
    often the report is looked at.
    """
    reasons: list[str] = []
    split = " / ".join(f"{name} {n:,}" for name, n in srm.observed.items())
    if srm.mismatch:
        expected = " / ".join(f"{name} {_pct(share)}" for name, share in srm.expected_share.items())
        reasons.append(
            f"Assigned sessions are {split}, but the expected split is {expected}: "
            f"a chi-square test gives p = {srm.p_value:.2g}, below {srm.threshold}. "
            "Assignment or event logging is losing sessions in one arm, so no comparison can be trusted "
            "until the cause is found."
        )
        return Decision(INVALID_SRM, reasons)
    if not gate.ok:
        return Decision(INSUFFICIENT, [*gate.reasons, "No verdict until every arm has that much data."])

    if not math.isnan(srm.p_value):
        reasons.append(
            f"The split of assigned sessions ({split}) is consistent with the plan (SRM p = {srm.p_value:.2g})."
        )
    level = f"{primary.confidence * 100:.0f}%"
    rates = (
        f"Completion rate: {control} {_pct(primary.rate_a)} ({primary.x_a:,}/{primary.n_a:,}), "
        f"{treatment} {_pct(primary.rate_b)} ({primary.x_b:,}/{primary.n_b:,}); "
        f"difference {_points(primary.diff)}"
    )
    if sequential:
        low, high = primary.seq_low, primary.seq_high
        reasons.append(
            f"{rates}, always-valid {level} interval {_points(low)} to {_points(high)} "
            "(sequential mode: valid however often the report is checked)."
        )
        significant = low > 0 or high < 0
    else:
        reasons.append(
            f"{rates}, {level} interval {_points(primary.diff_low)} to {_points(primary.diff_high)}, "
            f"p = {primary.p_value:.2g} (two-proportion z-test, threshold {alpha})."
        )
        significant = primary.p_value < alpha
    reasons.append(
        f"Chance that {treatment} is better: {_pct(primary.prob_b_better)} (Bayesian, uniform prior); "
        "shown for context, the verdict rests on the test above."
    )
    if not significant:
        reasons.append(
            "The difference is within what chance alone produces; keep the test running or accept that "
            "any effect is smaller than this sample can detect."
        )
        return Decision(NO_DIFFERENCE, reasons)
    winner = treatment if primary.diff > 0 else control
    reasons.append(f"{winner} completes onboarding more often, and the difference is statistically significant.")
    return Decision(f"{winner} wins", reasons)


@dataclass(frozen=True)
class PrimaryAnalysis:
    """The primary metric's comparison, the two validity checks and the verdict they give."""

    primary: ProportionComparison
    srm: SRMResult
    gate: SampleGate
    decision: Decision


def analyse_primary(
    assigned: Mapping[str, int],
    completed: Mapping[str, int],
    *,
    control: str,
    treatment: str,
    split: Mapping[str, float],
    alpha: float = DEFAULT_ALPHA,
    sequential: bool = False,
) -> PrimaryAnalysis:
    """Completion counts per variant to a verdict: the one decision rule the report
    and the simulations share."""
    primary = compare_proportions(
        completed[control], assigned[control], completed[treatment], assigned[treatment], confidence=1 - alpha
    )
    srm = sample_ratio_mismatch(assigned, split)
    gate = sample_gate(assigned, completed)
    decision = decide(
        control=control, treatment=treatment, primary=primary, srm=srm, gate=gate, alpha=alpha, sequential=sequential
    )
    return PrimaryAnalysis(primary, srm, gate, decision)
