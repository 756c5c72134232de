"""Time to complete as survival data (report/survival.py): against scipy, textbook values and simulations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats as sps

from server.apps.front.report import survival
from server.apps.front.report.stats import two_proportion_ztest

GRID = 1200  # seconds; simulated times are whole seconds in [1, GRID)


def _censored(t: np.ndarray, done: np.ndarray) -> sps.CensoredData:
    return sps.CensoredData(uncensored=t[done], right=t[~done])


def test_counts_kaplan_meier_equals_scipy_ecdf_survival_function():
    rng = np.random.default_rng(1)
    t = np.round(rng.exponential(10, 300), 1)
    done = rng.random(300) < 0.7
    grid = np.unique(t)
    d, c = survival.counts_on_grid(t, done, grid)
    surv, var = survival.km_counts(d, c)
    sf = sps.ecdf(_censored(t, done)).sf
    np.testing.assert_allclose(surv, sf.evaluate(grid), atol=1e-12)
    # Greenwood's variance: scipy's "linear" band is S +- z * sqrt(Greenwood).
    band = sf.confidence_interval(0.95, method="linear")
    inner = (surv > 0.05) & (surv < 0.95)
    half = (band.high.evaluate(grid) - band.low.evaluate(grid))[inner] / 2
    np.testing.assert_allclose(half, sps.norm.ppf(0.975) * np.sqrt(var[inner]), rtol=1e-9)


def test_counts_log_rank_equals_scipy_logrank():
    rng = np.random.default_rng(2)
    ta, tb = np.round(rng.exponential(10, 300)), np.round(rng.exponential(12, 250))  # many ties
    da, db = rng.random(300) < 0.7, rng.random(250) < 0.6
    grid = np.unique(np.concatenate([ta, tb]))
    z, p = survival.logrank_counts(*survival.counts_on_grid(ta, da, grid), *survival.counts_on_grid(tb, db, grid))
    expected = sps.logrank(_censored(tb, db), _censored(ta, da))
    assert z == pytest.approx(expected.statistic, rel=1e-12)
    assert p == pytest.approx(expected.pvalue, rel=1e-12)


def test_rmst_without_censoring_is_the_mean_of_times_capped_at_the_horizon():
    rng = np.random.default_rng(3)
    t = rng.exponential(10, 1000)
    grid = np.unique(t)
    rmst, var = survival.rmst_counts(grid, *survival.counts_on_grid(t, np.ones(t.size, bool), grid), 15.0)
    capped = np.minimum(t, 15.0)
    assert rmst == pytest.approx(capped.mean(), rel=1e-12)
    # Without censoring the variance is that of the capped mean (population form).
    assert np.sqrt(var) == pytest.approx(capped.std() / np.sqrt(t.size), rel=1e-9)


def test_rmst_textbook_example_with_censoring():
    # Times 1, 2+, 3, 4 (2 censored): S = 3/4 after 1, 3/4 * 1/2 = 3/8 after 3, 0 after 4.
    grid = np.array([1.0, 2.0, 3.0, 4.0])
    d, c = np.array([1, 0, 1, 1.0]), np.array([0, 1, 0, 0.0])
    rmst, _ = survival.rmst_counts(grid, d, c, 3.5)
    assert rmst == pytest.approx(1 + 0.75 * 2 + 0.375 * 0.5)


def test_median_and_its_interval_come_from_the_curve_and_its_band():
    rng = np.random.default_rng(4)
    ta, tb = rng.exponential(60, 2000), rng.exponential(60, 2000)
    result = survival.compare_survival(ta, np.ones(2000, bool), tb, np.ones(2000, bool))
    assert result is not None
    arm = result.a
    assert arm.median_seconds == pytest.approx(np.quantile(ta, 0.5, method="inverted_cdf"))
    assert arm.median_low < arm.median_seconds < arm.median_high
    assert arm.median_low == pytest.approx(60 * np.log(2), rel=0.15)
    assert result.rmst_diff_low < result.rmst_diff < result.rmst_diff_high
    assert 0 < len(arm.curve) <= 200 and arm.curve[0].not_completed >= arm.curve[-1].not_completed


def test_no_comparison_without_completions():
    assert survival.compare_survival([1.0, 2.0], [False, False], [1.0], [True]) is None


def test_completed_within_counts_only_sessions_followed_that_long():
    seconds = np.array([10, 50, 30, 5, 200.0])
    completed = np.array([True, True, False, True, True])
    followed = np.array([1000, 1000, 1000, 20, 1000.0])  # the 4th entered 20 s before the report's end
    assert survival.completed_within(seconds, completed, followed, 60) == (2, 4)


# --- simulations: many experiments at once, times on a grid of whole seconds -----------------


def _counts(t: np.ndarray, done: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Completions and censorings per (experiment, second)."""
    experiments = t.shape[0]
    index = np.arange(experiments)[:, None] * GRID + t
    d = np.bincount(index[done], minlength=experiments * GRID).reshape(experiments, GRID).astype(float)
    c = np.bincount(index[~done], minlength=experiments * GRID).reshape(experiments, GRID).astype(float)
    return d, c


def _steps(rng: np.random.Generator, experiments: int, sessions: int, speed: float = 1.0) -> np.ndarray:
    return rng.lognormal(np.log(20), 0.5, (experiments, sessions, 6)) / speed


def _whole_seconds(t: np.ndarray) -> np.ndarray:
    return np.ceil(t).clip(1, GRID - 1).astype(int)


def _survival_tests(ta, da, tb, db, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    (dca, cca), (dcb, ccb) = _counts(ta, da), _counts(tb, db)
    _, logrank_p = survival.logrank_counts(dca, cca, dcb, ccb)
    grid = np.arange(GRID, dtype=float)
    ra, va = survival.rmst_counts(grid, dca, cca, horizon)
    rb, vb = survival.rmst_counts(grid, dcb, ccb, horizon)
    rmst_p = 2 * sps.norm.sf(np.abs(rb - ra) / np.sqrt(va + vb))
    return logrank_p, rmst_p


def _welch_completers(ta, da, tb, db) -> np.ndarray:
    """The old figure's test, per experiment: Welch on completed sessions only."""

    def moments(t, d):
        n = d.sum(axis=1)
        mean = np.where(d, t, 0).sum(axis=1) / n
        var = np.where(d, (t - mean[:, None]) ** 2, 0).sum(axis=1) / (n - 1)
        return mean, var, n

    (ma, va, na), (mb, vb, nb) = moments(ta, da), moments(tb, db)
    return sps.ttest_ind_from_stats(mb, np.sqrt(vb), nb, ma, np.sqrt(va), na, equal_var=False).pvalue


def _aa_pvalues(rng: np.random.Generator, experiments: int, sessions: int) -> dict[str, np.ndarray]:
    arms = []
    for _ in range(2):
        t = _steps(rng, experiments, sessions).sum(axis=-1)
        quits = rng.random((experiments, sessions)) < 0.4  # stop at a random point, independent of speed
        t = np.where(quits, t * rng.random((experiments, sessions)), t)
        arms.append((_whole_seconds(t), ~quits))
    (ta, da), (tb, db) = arms
    logrank_p, rmst_p = _survival_tests(ta, da, tb, db, horizon=150.0)
    within = 120
    xa, xb = (da & (ta <= within)).sum(axis=1), (db & (tb <= within)).sum(axis=1)
    _, within_p = two_proportion_ztest(xa, sessions, xb, sessions)
    return {"log-rank": logrank_p, "RMST": rmst_p, "completed within": within_p}


def test_aa_false_positive_rates_of_log_rank_rmst_and_completed_within_stay_at_alpha():
    # 12,000 experiments (in chunks, to bound memory): the binomial standard error of a 5% rate is
    # then 0.2 points, so the 5.5% bound tests the method, not the luck of the draw.
    rng = np.random.default_rng(20261126)
    chunks = [_aa_pvalues(rng, 2000, 300) for _ in range(6)]
    for name in chunks[0]:
        rate = (np.concatenate([c[name] for c in chunks]) < 0.05).mean()
        assert 0.04 <= rate <= 0.055, (name, rate)  # at alpha, and not a test that never fires


def test_survivorship_slow_users_giving_up_is_no_time_difference_but_welch_on_completers_flags_one():
    # Nobody's speed changes; in deep, the slowest 30% give up on reaching the last step (their last
    # event is the end of step 5: censored there). Completers of deep are the fast ones.
    rng = np.random.default_rng(14)
    experiments, sessions = 200, 2000
    steps_a, steps_b = _steps(rng, experiments, sessions), _steps(rng, experiments, sessions)
    ta = steps_a.sum(axis=-1)
    tb_full = steps_b.sum(axis=-1)
    slow = tb_full > np.quantile(tb_full, 0.7, axis=1, keepdims=True)
    tb = np.where(slow, steps_b[..., :5].sum(axis=-1), tb_full)
    ta, tb = _whole_seconds(ta), _whole_seconds(tb)
    da, db = np.ones_like(ta, dtype=bool), ~slow
    welch_p = _welch_completers(ta, da, tb, db)
    logrank_p, _ = _survival_tests(ta, da, tb, db, horizon=180.0)
    assert (welch_p < 1e-10).mean() == 1.0  # the old figure: "deep is faster", every time
    assert (logrank_p < 0.05).mean() <= 0.08  # the survival test: at its nominal rate


def test_a_true_speed_up_is_found_by_log_rank_and_rmst():
    rng = np.random.default_rng(15)
    experiments, sessions = 200, 1000
    ta = _whole_seconds(_steps(rng, experiments, sessions).sum(axis=-1))
    tb = _whole_seconds(_steps(rng, experiments, sessions, speed=1.1).sum(axis=-1))
    quits_a, quits_b = (rng.random((experiments, sessions)) < 0.3 for _ in range(2))
    ta = np.where(quits_a, np.maximum(1, (ta * 0.5).astype(int)), ta)
    tb = np.where(quits_b, np.maximum(1, (tb * 0.5).astype(int)), tb)
    logrank_p, rmst_p = _survival_tests(ta, ~quits_a, tb, ~quits_b, horizon=180.0)
    assert (logrank_p < 0.05).mean() >= 0.9
    assert (rmst_p < 0.05).mean() >= 0.9


def test_median_interval_ignores_the_band_where_it_is_undefined():
    # Sessions censored before the first completion: the curve is still 1 there and scipy's log-log band
    # is undefined (nan); it must not read as "already below one half".
    rng = np.random.default_rng(6)
    done_a = rng.exponential(100, 500) + 50
    seconds = np.concatenate([np.arange(1.0, 21.0), done_a])
    completed = np.concatenate([np.zeros(20, bool), np.ones(500, bool)])
    result = survival.compare_survival(seconds, completed, seconds, completed)
    assert result is not None
    arm = result.a
    assert 50 < arm.median_low < arm.median_seconds < arm.median_high
    assert all(p.low <= p.not_completed <= p.high for p in arm.curve)


# --- the counts path equals scipy's per-session estimators ------------------------------------------


def _scipy_reference(ta, da, tb, db, confidence=0.95, max_points=200):
    """What the report computed before it read counts: scipy's ecdf (curve, log-log band, median) and logrank
    on per-session arrays (the code of report/survival.py up to this change)."""

    def arm(t, d):
        sf = sps.ecdf(_censored(t, d)).sf
        q, v = np.asarray(sf.quantiles, float), np.asarray(sf.probabilities, float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # undefined band points: replaced below
            band = sf.confidence_interval(confidence, method="log-log")
            low, high = np.asarray(band.low.evaluate(q), float), np.asarray(band.high.evaluate(q), float)
        low, high = np.where(np.isnan(low), v, low), np.where(np.isnan(high), v, high)
        keep = np.unique(np.linspace(0, q.size - 1, min(q.size, max_points)).astype(int))
        crossing = survival._crossing
        return (q, v, low, high, keep), (crossing(q, v), crossing(q, low), crossing(q, high))

    test = sps.logrank(_censored(tb, db), _censored(ta, da))
    return arm(ta, da), arm(tb, db), (float(test.statistic), float(test.pvalue))


def _random_arm(rng: np.random.Generator, n: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    t = rng.exponential(30, n)
    t = np.ceil(t) if ties else t
    return t, rng.random(n) < rng.uniform(0.2, 0.95)


@pytest.mark.parametrize("seed", range(40))
def test_counts_path_equals_scipy_ecdf_and_logrank_per_session(seed):
    rng = np.random.default_rng(1000 + seed)
    # Tiny samples (1 to 5 sessions) and larger ones, times with many ties (whole seconds) or none.
    size = (lambda: int(rng.integers(1, 6))) if seed % 3 == 0 else (lambda: int(rng.integers(20, 800)))
    ties = seed % 2 == 0
    (ta, da), (tb, db) = _random_arm(rng, size(), ties), _random_arm(rng, size(), ties)
    da[0], db[0] = True, True  # at least one completion each: otherwise there is no comparison
    result = survival.compare_survival(ta, da, tb, db)
    assert result is not None
    (curve_a, medians_a), (curve_b, medians_b), (statistic, p) = _scipy_reference(ta, da, tb, db)
    for got, (q, v, low, high, keep), medians in ((result.a, curve_a, medians_a), (result.b, curve_b, medians_b)):
        assert [pt.seconds for pt in got.curve] == list(q[keep])
        np.testing.assert_allclose([pt.not_completed for pt in got.curve], v[keep], rtol=0, atol=1e-12)
        np.testing.assert_allclose([pt.low for pt in got.curve], low[keep], rtol=0, atol=1e-12)
        np.testing.assert_allclose([pt.high for pt in got.curve], high[keep], rtol=0, atol=1e-12)
        assert (got.median_seconds, got.median_low, got.median_high) == medians
    if np.isnan(statistic):
        assert np.isnan(result.logrank_statistic) and np.isnan(result.logrank_p)
    else:
        assert result.logrank_statistic == pytest.approx(statistic, rel=1e-9, abs=1e-12)
        assert result.logrank_p == pytest.approx(p, rel=1e-9, abs=1e-15)


def test_counts_from_grouped_rows_equal_counts_from_sessions():
    rng = np.random.default_rng(8)
    t, d = np.ceil(rng.exponential(20, 500)), rng.random(500) < 0.6
    times, done = np.unique(np.stack([t, d]), axis=1)
    rows = [(x, bool(y), int(((t == x) & (d == y)).sum())) for x, y in zip(times, done, strict=True)]
    rng.shuffle(rows)
    grouped, direct = survival.ArmCounts.of_rows(rows), survival.ArmCounts.of_sessions(t, d)
    for name in ("times", "completed", "censored"):
        np.testing.assert_array_equal(getattr(grouped, name), getattr(direct, name))


def test_log_rank_stays_finite_where_scipy_overflows_int64():
    # About 2M sessions per arm in counts: scipy's int64 at-risk products overflow (its variance turns
    # negative and the p-value nan); the counts path is in floating point.
    times = np.arange(1.0, 2001.0)
    a = survival.ArmCounts(times, np.full(2000, 900.0), np.full(2000, 100.0))
    b = survival.ArmCounts(times, np.full(2000, 905.0), np.full(2000, 95.0))
    result = survival.compare_survival_counts(a, b)
    assert result is not None
    assert np.isfinite(result.logrank_statistic) and 0 < result.logrank_p < 1
    # The same arithmetic as scipy's, done with int64 as scipy does, is what breaks:
    n = 4_000_000 - np.cumsum(np.full(2000, 2000.0)) + 2000
    assert (n.astype(np.int64) ** 2 * 1805 * (n.astype(np.int64) - 1805) < 0).any()
