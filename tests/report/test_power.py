"""Power and duration (report/power.py): textbook values and simulated power."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from server.apps.front.report import power
from server.apps.front.report.stats import always_valid_interval, two_proportion_ztest


def test_power_for_40_vs_43_percent_at_5000_per_arm_is_the_textbook_86_percent():
    v = 0.4 * 0.6 / 5000 + 0.43 * 0.57 / 5000
    assert power.power_at(0.03, v, alpha=0.05, sequential=False) == pytest.approx(0.861, abs=0.001)


def test_sessions_needed_is_the_textbook_sample_size():
    # n per arm = (z_{1-a/2} + z_power)**2 (p1 q1 + p2 q2) / delta**2 (e.g. Chow, Shao and Wang, 4.2)
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    per_arm = z**2 * (0.4 * 0.6 + 0.43 * 0.57) / 0.03**2
    total = power.sessions_needed(0.4, 0.075, alpha=0.05, power=0.8, sequential=False)
    assert total == pytest.approx(2 * per_arm, rel=1e-9)


def test_mde_at_the_needed_sample_is_the_target_effect():
    for sequential in (False, True):
        total = power.sessions_needed(0.4, 0.075, alpha=0.05, power=0.8, sequential=sequential)
        v = (0.4 * 0.6 + 0.43 * 0.57) / (total / 2)
        mde = power.detectable_effect(v, alpha=0.05, power=0.8, sequential=sequential)
        assert mde == pytest.approx(0.03, rel=1e-6)


def test_sequential_and_bonferroni_need_more_sessions_than_one_fixed_test():
    fixed = power.plan(x_a=400, n_a=1000, n_b=1000, share_a=0.5, share_b=0.5, target_lift=0.1)
    two = power.plan(x_a=400, n_a=1000, n_b=1000, share_a=0.5, share_b=0.5, target_lift=0.1, comparisons=2)
    seq = power.plan(x_a=400, n_a=1000, n_b=1000, share_a=0.5, share_b=0.5, target_lift=0.1, sequential=True)
    assert two.effective_alpha == 0.025 and seq.effective_alpha == 0.05
    assert fixed.sessions_needed < two.sessions_needed < seq.sessions_needed
    assert fixed.mde_absolute < two.mde_absolute < seq.mde_absolute


def test_simulated_power_at_the_needed_sample_is_the_configured_power():
    rng = np.random.default_rng(8)
    p_a, p_b = 0.4, 0.43
    for sequential in (False, True):
        total = power.sessions_needed(p_a, p_b / p_a - 1, alpha=0.05, power=0.8, sequential=sequential)
        n = math.ceil(total / 2)
        xa, xb = rng.binomial(n, p_a, 40_000), rng.binomial(n, p_b, 40_000)
        if sequential:
            low, _ = always_valid_interval(xa, n, xb, n, 0.05)
            found = (low > 0).mean()
        else:
            found = (two_proportion_ztest(xa, n, xb, n)[1] < 0.05).mean()
        assert found == pytest.approx(0.8, abs=0.015), sequential


def test_plan_counts_sessions_still_needed_and_days_at_the_recent_rate():
    result = power.plan(x_a=400, n_a=1000, n_b=1000, share_a=0.5, share_b=0.5, target_lift=0.075, daily_sessions=500.0)
    assert result.sessions_needed == math.ceil(
        power.sessions_needed(0.4, 0.075, alpha=0.05, power=0.8, sequential=False)
    )
    assert result.sessions_still_needed == result.sessions_needed - 2000
    assert result.days_remaining == pytest.approx(result.sessions_still_needed / 500)
    assert result.mde_relative == pytest.approx(result.mde_absolute / 0.4)
    done = power.plan(x_a=4000, n_a=10000, n_b=10000, share_a=0.5, share_b=0.5, target_lift=0.075, daily_sessions=500.0)
    assert done.sessions_still_needed == 0 and done.days_remaining == 0


def test_plan_without_data_has_no_figures():
    empty = power.plan(x_a=0, n_a=0, n_b=0, share_a=0.5, share_b=0.5)
    assert empty.mde_absolute is None and empty.sessions_needed is None and empty.days_remaining is None
