"""Event-loss guard and lift over time (report/quality.py)."""

from __future__ import annotations

import numpy as np
import pytest

from server.apps.front.report import quality, stats


def _session_sums(expected: np.ndarray, lost: np.ndarray) -> dict[str, np.ndarray]:
    """Per-experiment sums over sessions (the last axis), as the report's query returns them."""
    return {
        "n": np.full(expected.shape[:-1], expected.shape[-1]),
        "lost": lost.sum(axis=-1),
        "expected": expected.sum(axis=-1),
        "lost2": (lost**2).sum(axis=-1),
        "expected2": (expected**2).sum(axis=-1),
        "cross": (lost * expected).sum(axis=-1),
    }


def _simulate(rng, experiments, sessions, loss_rate):
    """Sessions of 3..12 numbered events; loss clustered by session (a Beta-distributed rate per session)."""
    expected = rng.integers(3, 13, (experiments, sessions)).astype(float)
    rate = rng.beta(0.5, 0.5 * (1 - loss_rate) / loss_rate, (experiments, sessions))
    lost = rng.binomial(expected.astype(int), rate).astype(float)
    return expected, lost


def test_with_one_event_per_session_the_clustered_test_is_the_two_proportion_z_test():
    rng = np.random.default_rng(1)
    la, lb = (rng.random(500) < 0.1).astype(float), (rng.random(400) < 0.14).astype(float)
    z, _ = quality.clustered_ztest(_session_sums(np.ones(500), la), _session_sums(np.ones(400), lb))
    diff, low, _ = stats.difference_interval(la.sum(), 500, lb.sum(), 400)
    wald_z = diff / ((diff - low) / 1.959963984540054)
    # The unpooled (Wald) z, up to the n / (n - 1) of the unbiased variance.
    assert z == pytest.approx(wald_z, rel=2e-3)


def test_ratio_variance_matches_the_spread_of_simulated_loss_rates():
    rng = np.random.default_rng(2)
    expected, lost = _simulate(rng, 4000, 300, 0.05)
    sums = _session_sums(expected, lost)
    rates = sums["lost"] / sums["expected"]
    predicted = quality.ratio_variance(**sums)
    assert np.mean(predicted) == pytest.approx(rates.var(), rel=0.08)


def test_aa_false_positive_rate_of_the_loss_test_stays_at_alpha_and_the_naive_test_does_not():
    rng = np.random.default_rng(20261126)
    experiments, sessions = 10_000, 300
    (ea, la), (eb, lb) = (_simulate(rng, experiments, sessions, 0.05) for _ in range(2))
    _, p = quality.clustered_ztest(_session_sums(ea, la), _session_sums(eb, lb))
    rate = (p < 0.05).mean()
    assert 0.04 <= rate <= 0.055, rate
    # Events of a session are lost together: treating them as independent raises false alarms.
    _, naive = stats.two_proportion_ztest(la.sum(1), ea.sum(1), lb.sum(1), eb.sum(1))
    assert (naive < 0.05).mean() > 0.1


def _guard_inputs(rng, sessions, loss_a, loss_b):
    sums = {}
    for name, loss in (("fast", loss_a), ("deep", loss_b)):
        expected, lost = (
            _simulate(rng, 1, sessions, loss)
            if loss
            else (rng.integers(3, 13, (1, sessions)) * 1.0, np.zeros((1, sessions)))
        )
        sums[name] = {k: int(v[0]) for k, v in _session_sums(expected, lost).items()}
    return sums


def test_unequal_loss_is_caught_and_refuses_a_verdict():
    rng = np.random.default_rng(3)
    sums = _guard_inputs(rng, 4000, 0.0, 0.15)  # deep loses 15% of its events, fast none
    guard = quality.loss_guard(sums, {}, {"fast": 30000, "deep": 30000}, control="fast", treatment="deep")
    assert guard.unequal and guard.loss_p < 1e-6
    assert guard.arms["deep"].loss_rate == pytest.approx(0.15, abs=0.02)
    assert "lost in transit" in guard.reasons[0]


def test_equal_loss_is_not_flagged():
    rng = np.random.default_rng(4)
    sums = _guard_inputs(rng, 4000, 0.05, 0.05)
    guard = quality.loss_guard(
        sums, {"fast": 3, "deep": 4}, {"fast": 30000, "deep": 30000}, control="fast", treatment="deep"
    )
    assert not guard.unequal and guard.reasons == []
    assert guard.arms["fast"].dead_letter_rate == pytest.approx(3 / 30003)


def test_unequal_dead_letters_are_caught():
    guard = quality.loss_guard(
        {}, {"fast": 2, "deep": 300}, {"fast": 30000, "deep": 29700}, control="fast", treatment="deep"
    )
    assert guard.unequal and guard.loss_p is None and "dead-lettered" in guard.reasons[0]


def test_no_seq_at_all_is_no_loss_figure_and_no_alarm():
    guard = quality.loss_guard({}, {}, {"fast": 100, "deep": 100}, control="fast", treatment="deep")
    assert not guard.unequal and guard.loss_p is None and guard.arms["fast"].loss_rate is None


def test_lift_over_time_is_cumulative_with_each_days_split():
    days = ["2026-11-01", "2026-11-02", "2026-11-03"]
    assigned = {"fast": [100, 200, 150], "deep": [110, 190, 160]}
    completed = {"fast": [40, 80, 60], "deep": [50, 85, 70]}
    points = quality.lift_over_time(days, assigned, completed, control="fast", treatment="deep")
    assert [p.day for p in points] == days
    assert points[1].cumulative_assigned == {"fast": 300, "deep": 300}
    assert points[2].share["deep"] == pytest.approx(160 / 310)
    lift, low, high = stats.lift_interval(180, 450, 205, 460)
    assert (points[2].lift, points[2].lift_low, points[2].lift_high) == pytest.approx((lift, low, high))
