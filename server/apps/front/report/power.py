"""Power and duration of the experiment: how small an effect the data can see, and how long to wait.

For the primary metric (a proportion, control rate ``p``), with ``V`` the
variance of the estimated difference at the given sample and ``z_a`` the
two-sided critical value at the *effective* alpha:

- fixed horizon (the z-test decides): alpha is split over the comparisons
  with the control (Bonferroni: ``alpha / (variants - 1)``); the minimum
  detectable effect (MDE) is ``(z_a + z_power) * sqrt(V)``, the textbook
  normal approximation (power 86.1% for 40% vs 43% at 5,000 per arm);
- sequential (the always-valid interval decides): the MDE is the interval's
  half-width plus ``z_power * sqrt(V)``: the effect whose estimate clears the
  wider always-valid interval with probability ``power`` *at this sample*.
  Conservative: with daily looks a real effect is usually found earlier.

Sessions still needed for a target relative lift solve MDE(N) = target for the
total N (split as planned); days remaining divide what is missing by the recent
daily rate of assigned sessions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import optimize
from scipy import stats as sps

from server.apps.front.report.stats import DEFAULT_ALPHA, DEFAULT_MIXTURE_SD

DEFAULT_POWER = 0.8
DEFAULT_TARGET_LIFT = 0.05  # relative: +5% on the control's completion rate


def _unit_variance(p_a: float, p_b: float, share_a: float, share_b: float) -> float:
    """Variance of the difference of proportions times the total sample size."""
    return p_a * (1 - p_a) / share_a + p_b * (1 - p_b) / share_b


def _av_half_width(v: float, alpha: float, mixture_sd: float) -> float:
    """Half-width of the always-valid interval (stats.always_valid_interval) at variance ``v``."""
    tau2 = mixture_sd**2
    return math.sqrt(v * (v + tau2) / tau2 * (math.log((v + tau2) / v) + 2 * math.log(1 / alpha)))


def detectable_effect(
    v: float, *, alpha: float, power: float, sequential: bool, mixture_sd: float = DEFAULT_MIXTURE_SD
) -> float:
    """Smallest absolute difference found with probability ``power`` when the estimate's variance is ``v``."""
    if not v > 0:
        return math.nan
    z_power = float(sps.norm.ppf(power))
    if sequential:
        return _av_half_width(v, alpha, mixture_sd) + z_power * math.sqrt(v)
    return (float(sps.norm.ppf(1 - alpha / 2)) + z_power) * math.sqrt(v)


def power_at(diff: float, v: float, *, alpha: float, sequential: bool, mixture_sd: float = DEFAULT_MIXTURE_SD) -> float:
    """Probability of a significant result for a true absolute difference ``diff`` (one direction)."""
    if not v > 0:
        return math.nan
    threshold = (
        _av_half_width(v, alpha, mixture_sd) if sequential else float(sps.norm.ppf(1 - alpha / 2)) * math.sqrt(v)
    )
    return float(sps.norm.cdf((abs(diff) - threshold) / math.sqrt(v)))


def sessions_needed(
    p_a: float,
    relative_lift: float,
    *,
    alpha: float,
    power: float,
    sequential: bool,
    share_a: float = 0.5,
    share_b: float = 0.5,
    mixture_sd: float = DEFAULT_MIXTURE_SD,
) -> float:
    """Total sessions (both arms, split ``share_a``/``share_b``) to detect ``p_a -> p_a (1 + lift)``."""
    p_b = p_a * (1 + relative_lift)
    diff = p_b - p_a
    if not (0 < p_a < 1 and 0 < p_b < 1) or diff == 0:
        return math.nan
    unit = _unit_variance(p_a, p_b, share_a, share_b)
    if not sequential:
        z = float(sps.norm.ppf(1 - alpha / 2)) + float(sps.norm.ppf(power))
        return z**2 * unit / diff**2

    def gap(log_n: float) -> float:
        return detectable_effect(
            unit / math.exp(log_n), alpha=alpha, power=power, sequential=True, mixture_sd=mixture_sd
        ) - abs(diff)

    low, high = math.log(2.0), math.log(1e12)
    if gap(high) > 0:
        return math.inf
    if gap(low) <= 0:
        return 2.0
    return math.exp(optimize.brentq(gap, low, high, xtol=1e-9))


@dataclass(frozen=True)
class PowerReport:
    """What the current sample can detect and how long the experiment still needs."""

    method: str  # "fixed horizon, Bonferroni over N comparisons" or "sequential (always valid)"
    alpha: float
    effective_alpha: float
    power: float
    baseline_rate: float | None
    sessions: int  # assigned, both arms
    mde_absolute: float | None  # at the current sample
    mde_relative: float | None
    target_lift: float  # relative
    power_for_target: float | None  # at the current sample
    sessions_needed: int | None  # total, for the target lift
    sessions_still_needed: int | None
    daily_sessions: float | None  # recent daily rate of assigned sessions
    days_remaining: float | None


def plan(
    *,
    x_a: int,
    n_a: int,
    n_b: int,
    share_a: float,
    share_b: float,
    comparisons: int = 1,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
    target_lift: float = DEFAULT_TARGET_LIFT,
    sequential: bool = False,
    daily_sessions: float | None = None,
    mixture_sd: float = DEFAULT_MIXTURE_SD,
) -> PowerReport:
    """Power and duration for the primary metric at the current counts (control ``x_a``/``n_a``, treatment ``n_b``)."""
    effective = alpha if sequential else alpha / max(1, comparisons)
    method = "sequential (always valid)" if sequential else f"fixed horizon, Bonferroni over {max(1, comparisons)}"
    total = n_a + n_b
    p = x_a / n_a if n_a > 0 else math.nan
    mde = mde_rel = needed = still = days = power_now = None
    if n_a > 0 and n_b > 0 and 0 < p < 1:
        v = p * (1 - p) * (1 / n_a + 1 / n_b)
        mde = detectable_effect(v, alpha=effective, power=power, sequential=sequential, mixture_sd=mixture_sd)
        mde_rel = mde / p
        p_b = min(max(p * (1 + target_lift), 1e-12), 1 - 1e-12)
        v_target = p * (1 - p) / n_a + p_b * (1 - p_b) / n_b
        power_now = power_at(p_b - p, v_target, alpha=effective, sequential=sequential, mixture_sd=mixture_sd)
        n_total = sessions_needed(
            p,
            target_lift,
            alpha=effective,
            power=power,
            sequential=sequential,
            share_a=share_a,
            share_b=share_b,
            mixture_sd=mixture_sd,
        )
        if math.isfinite(n_total):
            needed = math.ceil(n_total)
            still = max(0, needed - total)
            if daily_sessions and daily_sessions > 0:
                days = still / daily_sessions
    return PowerReport(
        method=method,
        alpha=alpha,
        effective_alpha=effective,
        power=power,
        baseline_rate=p if math.isfinite(p) else None,
        sessions=total,
        mde_absolute=mde,
        mde_relative=mde_rel,
        target_lift=target_lift,
        power_for_target=power_now,
        sessions_needed=needed,
        sessions_still_needed=still,
        daily_sessions=daily_sessions,
        days_remaining=days,
    )
