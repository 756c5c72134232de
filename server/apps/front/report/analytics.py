"""The spec's four analytics functions, answered from the session-level report.

The spec counted raw events (a duplicated event counted twice, a session seen
in both variants counted in both) and called any difference a win. These keep
the spec's names and keys, return data instead of printing it, and take their
numbers from the typed report (``build.analyse``): sessions, not events, as the unit;
completion as a share of *assigned* sessions; and a verdict only when the test
says so. Rates are percentages, as in the spec.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from server.apps.front.experiment import CONTROL
from server.apps.front.report.build import analyse
from server.apps.front.report.formatting import percent


def get_completion_rates(since: datetime | None = None, until: datetime | None = None) -> list[dict[str, Any]]:
    """Per variant: assigned, started and completed sessions, completion rate (% of assigned) with its 95% CI."""
    report = analyse(since, until)
    rows = []
    for variant in report.variants:
        completed = report.stage(variant, "completed")
        rows.append(
            {
                "variant": variant,
                "assigned": report.stage(variant, "assigned").sessions,
                "total_started": report.stage(variant, "started").sessions,
                "total_completed": completed.sessions,
                "completion_rate": percent(completed.share_of_assigned),
                "ci_low": percent(completed.ci_low),
                "ci_high": percent(completed.ci_high),
            }
        )
    return rows


def get_average_time_per_step(
    variant: str = CONTROL, since: datetime | None = None, until: datetime | None = None
) -> list[dict[str, Any]]:
    """Per step: mean time (capped at the pooled P99), median and P90, in ms.

    Descriptive only: each step's figures cover the sessions that completed it.
    """
    report = analyse(since, until)
    return [
        {
            "step_number": row.step,
            "avg_time_ms": row.mean_ms,
            "median_ms": row.median_ms,
            "p90_ms": row.p90_ms,
            "sessions": row.sessions,
        }
        for row in report.time_per_step.get(variant, [])
    ]


def get_dropout_points(
    variant: str = CONTROL, since: datetime | None = None, until: datetime | None = None
) -> list[dict[str, Any]]:
    """Sessions that sent ``onboarding_abandoned``, by step, most frequent first (pct = % of those sessions)."""
    report = analyse(since, until)
    rows = [
        {"step_number": row.step, "count": row.sessions, "pct": percent(row.share_of_abandoned)}
        for row in report.dropout.get(variant, [])
    ]
    return sorted(rows, key=lambda row: -row["count"])


def compare_variants(since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    """Both variants' session counts and rates, plus the report's verdict and its reasons."""
    report = analyse(since, until)
    result: dict[str, Any] = {}
    for variant in report.variants:
        assigned = report.stage(variant, "assigned").sessions
        abandoned = sum(row.sessions for row in report.dropout[variant])
        result[variant] = {
            "assigned": assigned,
            "started": report.stage(variant, "started").sessions,
            "completed": report.stage(variant, "completed").sessions,
            "abandoned": abandoned,
            "completion_rate": percent(report.stage(variant, "completed").share_of_assigned),
            "abandon_rate": percent(abandoned / assigned) if assigned else None,
        }
    primary = report.primary.result
    result["difference_pp"] = percent(primary.diff)
    result["p_value"] = primary.p_value
    result["verdict"] = report.verdict
    result["reasons"] = report.reasons
    return result
