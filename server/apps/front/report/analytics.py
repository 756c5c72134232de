"""The spec's four analytics functions, answered from the session-level report.

The spec counted raw events (a duplicated event counted twice, a session seen
in both variants counted in both) and called any difference a win. These keep
the spec's names and keys, return data instead of printing it, and take their
numbers from ``report.build_report``: sessions, not events, as the unit;
completion as a share of *assigned* sessions; and a verdict only when the test
says so. Rates are percentages, as in the spec.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from server.apps.front.experiment import CONTROL
from server.apps.front.report.build import build_report


def _pct(value: float | None) -> float | None:
    return None if value is None else value * 100


def _stage(report: dict[str, Any], variant: str, stage: str) -> dict[str, Any]:
    return next(s for s in report["funnel"][variant] if s["stage"] == stage)


def get_completion_rates(since: datetime | None = None, until: datetime | None = None) -> list[dict[str, Any]]:
    """Per variant: assigned, started and completed sessions, completion rate (% of assigned) with its 95% CI."""
    report = build_report(since, until)
    rows = []
    for variant in (report["control"], report["treatment"]):
        completed = _stage(report, variant, "completed")
        rows.append(
            {
                "variant": variant,
                "assigned": _stage(report, variant, "assigned")["sessions"],
                "total_started": _stage(report, variant, "started")["sessions"],
                "total_completed": completed["sessions"],
                "completion_rate": _pct(completed["share_of_assigned"]),
                "ci_low": _pct(completed["ci_low"]),
                "ci_high": _pct(completed["ci_high"]),
            }
        )
    return rows


def get_average_time_per_step(
    variant: str = CONTROL, since: datetime | None = None, until: datetime | None = None
) -> list[dict[str, Any]]:
    """Per step: mean time (capped at the pooled P99), median and P90, in ms.

    Descriptive only: each step's figures cover the sessions that completed it.
    """
    report = build_report(since, until)
    return [
        {
            "step_number": row["step"],
            "avg_time_ms": row["mean_ms"],
            "median_ms": row["median_ms"],
            "p90_ms": row["p90_ms"],
            "sessions": row["sessions"],
        }
        for row in report["time_per_step"].get(variant, [])
    ]


def get_dropout_points(
    variant: str = CONTROL, since: datetime | None = None, until: datetime | None = None
) -> list[dict[str, Any]]:
    """Sessions that sent ``onboarding_abandoned``, by step, most frequent first (pct = % of those sessions)."""
    report = build_report(since, until)
    rows = [
        {"step_number": row["step"], "count": row["sessions"], "pct": _pct(row["share_of_abandoned"])}
        for row in report["dropout"].get(variant, [])
    ]
    return sorted(rows, key=lambda row: -row["count"])


def compare_variants(since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    """Both variants' session counts and rates, plus the report's verdict and its reasons."""
    report = build_report(since, until)
    result: dict[str, Any] = {}
    for variant in (report["control"], report["treatment"]):
        assigned = _stage(report, variant, "assigned")["sessions"]
        abandoned = sum(row["sessions"] for row in report["dropout"][variant])
        result[variant] = {
            "assigned": assigned,
            "started": _stage(report, variant, "started")["sessions"],
            "completed": _stage(report, variant, "completed")["sessions"],
            "abandoned": abandoned,
            "completion_rate": _pct(_stage(report, variant, "completed")["share_of_assigned"]),
            "abandon_rate": _pct(abandoned / assigned) if assigned else None,
        }
    primary = report["primary"]
    result["difference_pp"] = _pct(primary["diff"])
    result["p_value"] = primary["p_value"]
    result["verdict"] = report["verdict"]
    result["reasons"] = report["reasons"]
    return result
