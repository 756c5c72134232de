"""Simulated experiments: the verdict's error rates, using the report's own decision rule.

Counts are drawn with numpy (no database); each experiment goes through the
same ``stats.analyse_primary`` the report calls, so these rates are the
verdict's, not a textbook's.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from server.apps.front.report import stats

SPLIT = {"fast": 0.5, "deep": 0.5}
EXPERIMENTS = 2000
SESSIONS = 4000  # per experiment, split at random like real assignment


def _verdicts(rng: np.random.Generator, p_fast: float, p_deep: float, *, sequential: bool = False) -> Counter[str]:
    n_fast = rng.binomial(SESSIONS, SPLIT["fast"], EXPERIMENTS)
    n_deep = SESSIONS - n_fast
    x_fast = rng.binomial(n_fast, p_fast)
    x_deep = rng.binomial(n_deep, p_deep)
    verdicts: Counter[str] = Counter()
    for na, xa, nb, xb in zip(n_fast.tolist(), x_fast.tolist(), n_deep.tolist(), x_deep.tolist(), strict=True):
        analysis = stats.analyse_primary(
            {"fast": na, "deep": nb},
            {"fast": xa, "deep": xb},
            control="fast",
            treatment="deep",
            split=SPLIT,
            sequential=sequential,
        )
        verdicts[analysis.decision.verdict] += 1
    return verdicts


def test_aa_false_positive_rate_is_near_five_percent() -> None:
    verdicts = _verdicts(np.random.default_rng(20240501), 0.40, 0.40)
    false_positive = (verdicts["deep wins"] + verdicts["fast wins"]) / EXPERIMENTS
    assert 0.03 <= false_positive <= 0.07, verdicts
    # Two-sided: neither arm is favoured.
    assert abs(verdicts["deep wins"] - verdicts["fast wins"]) < 0.03 * EXPERIMENTS, verdicts
    # SRM at p < 0.001 on a fair coin: about 2 of 2000.
    assert verdicts["invalid: sample ratio mismatch"] <= 10, verdicts


def test_true_lift_is_detected_with_high_power() -> None:
    # 40% -> 45% with 2000 sessions per arm: power of the z-test is about 0.9.
    verdicts = _verdicts(np.random.default_rng(7), 0.40, 0.45)
    assert verdicts["deep wins"] / EXPERIMENTS >= 0.8, verdicts
    assert verdicts["fast wins"] == 0, verdicts


def test_sequential_interval_survives_daily_peeking_where_the_z_test_does_not() -> None:
    """An A/A test checked after every 200 sessions for 40 looks, stopping at the first 'win'."""
    rng = np.random.default_rng(99)
    experiments, looks, per_look = 2000, 40, 100  # per arm per look
    xa = rng.binomial(per_look, 0.3, (experiments, looks)).cumsum(axis=1)
    xb = rng.binomial(per_look, 0.3, (experiments, looks)).cumsum(axis=1)
    n = per_look * np.arange(1, looks + 1)
    _, p = stats.two_proportion_ztest(xa, n, xb, n)
    low, high = stats.always_valid_interval(xa, n, xb, n, alpha=0.05)
    naive_fpr = (p < 0.05).any(axis=1).mean()
    sequential_fpr = ((low > 0) | (high < 0)).any(axis=1).mean()
    assert naive_fpr > 0.15  # peeking at a fixed-horizon test inflates the error rate
    assert sequential_fpr <= 0.05
