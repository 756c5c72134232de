"""Each statistic against a worked example computed independently of ``stats``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special
from scipy import stats as sps

from server.apps.front.report import stats

SPLIT = {"fast": 0.5, "deep": 0.5}


# --- single proportion ---------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "n", "low", "high"),
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, Wilson method.
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_interval_matches_newcombe_table(x: int, n: int, low: float, high: float) -> None:
    got = stats.wilson_interval(x, n)
    assert got == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize("confidence", [0.95, 0.99, 0.9])
def test_wilson_interval_is_scipys_to_the_last_bit(confidence: float) -> None:
    from scipy.stats import binomtest

    for n in (1, 2, 3, 7, 40, 1000, 123457, 10**7):
        for x in {0, 1, n // 3, n // 2, n - 1, n}:
            ci = binomtest(x, n).proportion_ci(confidence_level=confidence, method="wilson")
            assert stats.wilson_interval(x, n, confidence) == (float(ci.low), float(ci.high)), (x, n)


def test_wilson_interval_without_trials_is_undefined() -> None:
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))


# --- two proportions -----------------------------------------------------------


@pytest.mark.parametrize(("x_a", "n_a", "x_b", "n_b"), [(120, 1000, 150, 1000), (48, 80, 56, 70), (5, 300, 9, 250)])
def test_ztest_equals_pearson_chi_square_without_correction(x_a: int, n_a: int, x_b: int, n_b: int) -> None:
    table = [[x_a, n_a - x_a], [x_b, n_b - x_b]]
    chi2, p, _, _ = sps.chi2_contingency(table, correction=False)
    z, p_value = stats.two_proportion_ztest(x_a, n_a, x_b, n_b)
    assert p_value == pytest.approx(p, rel=1e-9)
    assert z**2 == pytest.approx(chi2, rel=1e-9)
    assert math.copysign(1, z) == math.copysign(1, x_b / n_b - x_a / n_a)


def test_ztest_vectorised_matches_scalar_calls() -> None:
    xa, xb = np.array([10, 40, 0]), np.array([20, 40, 0])
    z, p = stats.two_proportion_ztest(xa, 100, xb, 100)
    for i in range(3):
        zi, pi = stats.two_proportion_ztest(int(xa[i]), 100, int(xb[i]), 100)
        assert (z[i], p[i]) == pytest.approx((zi, pi))
    assert (z[2], p[2]) == (0.0, 1.0)  # both arms all-zero: no evidence of a difference


def test_difference_interval_matches_newcombe_wald_example() -> None:
    # Newcombe (1998), "Interval estimation for the difference between independent proportions",
    # example (a): 56/70 vs 48/80, simple asymptotic (Wald) interval 0.0575 to 0.3425.
    diff, low, high = stats.difference_interval(48, 80, 56, 70)
    assert diff == pytest.approx(0.2)
    assert (low, high) == pytest.approx((0.0575, 0.3425), abs=1e-4)


def test_difference_interval_from_raw_arrays() -> None:
    a = np.r_[np.ones(312), np.zeros(1000 - 312)]
    b = np.r_[np.ones(355), np.zeros(1050 - 355)]
    se = math.sqrt(a.var() / a.size + b.var() / b.size)
    z = sps.norm.ppf(0.975)
    diff, low, high = stats.difference_interval(312, 1000, 355, 1050)
    assert diff == pytest.approx(b.mean() - a.mean())
    assert (low, high) == pytest.approx((diff - z * se, diff + z * se))


def test_lift_interval_delta_method_matches_numeric_gradient_and_simulation() -> None:
    x_a, n_a, x_b, n_b = 300, 1000, 345, 1000
    pa, pb = x_a / n_a, x_b / n_b
    var_a, var_b = pa * (1 - pa) / n_a, pb * (1 - pb) / n_b
    h = 1e-6
    d_pa = ((pb / (pa + h)) - (pb / (pa - h))) / (2 * h)
    d_pb = (((pb + h) / pa) - ((pb - h) / pa)) / (2 * h)
    se_numeric = math.sqrt(d_pa**2 * var_a + d_pb**2 * var_b)
    lift, low, high = stats.lift_interval(x_a, n_a, x_b, n_b)
    assert lift == pytest.approx(0.15)
    assert (high - low) / 2 == pytest.approx(sps.norm.ppf(0.975) * se_numeric, rel=1e-6)
    # The delta-method SE is the sampling SD of the estimated ratio, to first order.
    rng = np.random.default_rng(7)
    ratios = rng.binomial(n_b, pb, 200_000) / rng.binomial(n_a, pa, 200_000)
    assert ratios.std() == pytest.approx(se_numeric, rel=0.03)


def test_lift_is_undefined_when_control_rate_is_zero() -> None:
    lift, low, high = stats.lift_interval(0, 100, 5, 100)
    assert math.isnan(lift) and math.isnan(low) and math.isnan(high)


# --- Bayesian ------------------------------------------------------------------


def _miller_closed_form(x_a: int, n_a: int, x_b: int, n_b: int) -> float:
    """Evan Miller's exact sum for P(p_b > p_a) with Beta(1, 1) priors."""
    a_a, b_a, a_b, b_b = 1 + x_a, 1 + n_a - x_a, 1 + x_b, 1 + n_b - x_b
    i = np.arange(a_b)
    terms = special.betaln(a_a + i, b_a + b_b) - np.log(b_b + i) - special.betaln(1 + i, b_b) - special.betaln(a_a, b_a)
    return float(np.exp(terms).sum())


@pytest.mark.parametrize(("x_a", "n_a", "x_b", "n_b"), [(1, 10, 2, 10), (30, 100, 40, 100), (200, 1000, 190, 1000)])
def test_probability_b_better_matches_closed_form(x_a: int, n_a: int, x_b: int, n_b: int) -> None:
    assert stats.probability_b_better(x_a, n_a, x_b, n_b) == pytest.approx(
        _miller_closed_form(x_a, n_a, x_b, n_b), abs=1e-8
    )


@pytest.mark.parametrize(("x_a", "n_a", "x_b", "n_b"), [(1500, 5000, 1600, 5000), (30, 100, 30_000, 100_000)])
def test_probability_b_better_matches_monte_carlo(x_a: int, n_a: int, x_b: int, n_b: int) -> None:
    rng = np.random.default_rng(11)
    draws = 2_000_000
    pa = rng.beta(1 + x_a, 1 + n_a - x_a, draws)
    pb = rng.beta(1 + x_b, 1 + n_b - x_b, draws)
    mc = float((pb > pa).mean())
    tolerance = 4 * math.sqrt(mc * (1 - mc) / draws) + 1e-6
    assert stats.probability_b_better(x_a, n_a, x_b, n_b) == pytest.approx(mc, abs=tolerance)


def test_probability_is_symmetric() -> None:
    forward = stats.probability_b_better(120, 1000, 150, 1000)
    backward = stats.probability_b_better(150, 1000, 120, 1000)
    assert forward + backward == pytest.approx(1.0, abs=1e-9)


# --- always-valid interval -------------------------------------------------------


def test_always_valid_bounds_are_where_the_msprt_statistic_reaches_one_over_alpha() -> None:
    """At each bound the mixture likelihood ratio, integrated numerically, equals 1/alpha."""
    x_a, n_a, x_b, n_b, alpha, tau = 300, 1000, 345, 1000, 0.05, 0.05
    pa, pb = x_a / n_a, x_b / n_b
    var = pa * (1 - pa) / n_a + pb * (1 - pb) / n_b
    diff = pb - pa
    low, high = stats.always_valid_interval(x_a, n_a, x_b, n_b, alpha, tau)

    def mixture_ratio(theta0: float) -> float:
        null = sps.norm.pdf(diff, theta0, math.sqrt(var))
        value, _ = integrate.quad(
            lambda t: sps.norm.pdf(diff, t, math.sqrt(var)) * sps.norm.pdf(t, theta0, tau) / null,
            theta0 - 12 * tau,
            theta0 + 12 * tau,
            points=[diff],
        )
        return value

    assert mixture_ratio(low) == pytest.approx(1 / alpha, rel=1e-6)
    assert mixture_ratio(high) == pytest.approx(1 / alpha, rel=1e-6)
    fixed_diff, fixed_low, fixed_high = stats.difference_interval(x_a, n_a, x_b, n_b)
    assert low < fixed_low < fixed_diff < fixed_high < high


# --- means ---------------------------------------------------------------------


def test_welch_from_summaries_matches_scipy_on_raw_arrays() -> None:
    rng = np.random.default_rng(3)
    a = rng.lognormal(10, 0.5, 400)
    b = rng.lognormal(10.1, 0.7, 350)
    result = stats.welch_ttest(a.mean(), a.std(ddof=1), a.size, b.mean(), b.std(ddof=1), b.size)
    assert result is not None
    expected = sps.ttest_ind(b, a, equal_var=False)
    ci = expected.confidence_interval(0.95)
    assert result.t == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.df == pytest.approx(expected.df)
    assert (result.diff_low, result.diff_high) == pytest.approx((ci.low, ci.high))


def test_welch_needs_two_observations_per_arm() -> None:
    assert stats.welch_ttest(1.0, 0.0, 1, 2.0, 1.0, 10) is None


# --- validity checks -------------------------------------------------------------


def test_srm_matches_scipy_chisquare_and_flags_a_mismatch() -> None:
    fine = stats.sample_ratio_mismatch({"fast": 5000, "deep": 5150}, SPLIT)
    expected = sps.chisquare([5000, 5150], [5075, 5075])
    assert fine.chi2 == pytest.approx(expected.statistic)
    assert fine.p_value == pytest.approx(expected.pvalue)
    assert not fine.mismatch
    broken = stats.sample_ratio_mismatch({"fast": 5000, "deep": 5400}, SPLIT)
    assert broken.p_value == pytest.approx(sps.chisquare([5000, 5400]).pvalue)
    assert broken.p_value < 0.001 and broken.mismatch


def test_srm_uses_the_planned_split() -> None:
    planned = {"fast": 3.0, "deep": 2.0}  # weights, normalised to 60/40
    result = stats.sample_ratio_mismatch({"fast": 6000, "deep": 4000}, planned)
    assert result.expected == {"fast": 6000.0, "deep": 4000.0}
    assert result.p_value == pytest.approx(1.0) and not result.mismatch
    assert stats.sample_ratio_mismatch({"fast": 5000, "deep": 5000}, planned).mismatch


def test_srm_without_sessions_is_not_a_mismatch() -> None:
    result = stats.sample_ratio_mismatch({}, SPLIT)
    assert math.isnan(result.p_value) and not result.mismatch


def test_benjamini_hochberg_matches_scipy_and_keeps_nan_out() -> None:
    p = {"a": 0.01, "b": 0.04, "c": 0.03, "d": math.nan, "e": 0.5}
    adjusted = stats.benjamini_hochberg(p)
    expected = sps.false_discovery_control([0.01, 0.04, 0.03, 0.5], method="bh")
    assert [adjusted[k] for k in "abce"] == pytest.approx(list(expected))
    assert math.isnan(adjusted["d"])
    # Textbook: m = 4, sorted 0.01, 0.03, 0.04, 0.5 -> 0.04, 0.0533, 0.0533, 0.5.
    assert adjusted["a"] == pytest.approx(0.04) and adjusted["c"] == pytest.approx(0.04 * 4 / 3)


@pytest.mark.parametrize(
    ("assigned", "completed", "ok", "fragment"),
    [
        ({"fast": 100, "deep": 100}, {"fast": 5, "deep": 95}, True, ""),
        ({"fast": 99, "deep": 500}, {"fast": 50, "deep": 250}, False, "fast has 99 sessions"),
        ({"fast": 200, "deep": 200}, {"fast": 4, "deep": 100}, False, "fast has 4 completions"),
        ({"fast": 200, "deep": 200}, {"fast": 100, "deep": 196}, False, "deep has 4 sessions that did not complete"),
    ],
)
def test_sample_gate(assigned: dict[str, int], completed: dict[str, int], ok: bool, fragment: str) -> None:
    gate = stats.sample_gate(assigned, completed)
    assert gate.ok is ok
    assert (not gate.reasons) if ok else any(fragment in r for r in gate.reasons)


# --- verdict -----------------------------------------------------------------------


def _decide(x_a: int, n_a: int, x_b: int, n_b: int, *, sequential: bool = False, split=SPLIT) -> stats.Decision:
    return stats.analyse_primary(
        {"fast": n_a, "deep": n_b},
        {"fast": x_a, "deep": x_b},
        control="fast",
        treatment="deep",
        split=split,
        sequential=sequential,
    ).decision


def test_verdict_deep_wins() -> None:
    decision = _decide(500, 1000, 580, 1000)
    assert decision.verdict == "deep wins"
    assert any("p = " in r for r in decision.reasons)


def test_verdict_fast_wins() -> None:
    assert _decide(580, 1000, 500, 1000).verdict == "fast wins"


def test_verdict_no_significant_difference() -> None:
    decision = _decide(500, 1000, 520, 1000)
    assert decision.verdict == "no significant difference yet"
    assert any("within what chance alone produces" in r for r in decision.reasons)


def test_verdict_insufficient_data_despite_a_large_difference() -> None:
    decision = _decide(10, 60, 50, 60)
    assert decision.verdict == "insufficient data"
    assert any("fast has 60 sessions; at least 100" in r for r in decision.reasons)


def test_verdict_invalid_on_sample_ratio_mismatch_even_with_a_clear_winner() -> None:
    decision = _decide(500, 1000, 800, 1300)
    assert decision.verdict == "invalid: sample ratio mismatch"
    assert "no comparison can be trusted" in decision.reasons[0]


def test_sequential_verdict_is_more_conservative() -> None:
    # p ~= 0.03 at a fixed horizon, but the always-valid interval still contains 0.
    fixed = _decide(1500, 5000, 1600, 5000)
    assert fixed.verdict == "deep wins"
    sequential = _decide(1500, 5000, 1600, 5000, sequential=True)
    assert sequential.verdict == "no significant difference yet"
    assert any("always-valid" in r for r in sequential.reasons)
    assert _decide(1500, 5000, 1700, 5000, sequential=True).verdict == "deep wins"
