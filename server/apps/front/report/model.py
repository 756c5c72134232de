"""The typed report: what ``build.analyse`` returns and every consumer reads.

Modelled on how GrowthBook's gbstats types its results: small frozen
dataclasses per part (the primary comparison, each secondary metric, each
funnel stage, ...), reusing the statistics' own result types (``stats``).
Every float in a report is finite or None (JSON has no NaN), so the
consumers (text and HTML rendering, charts, the spec's analytics functions)
never see a NaN. :meth:`Report.to_dict` is the JSON API's document, key for
key and in the same order as the API has always answered.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar

from server.apps.front.report.power import PowerReport
from server.apps.front.report.quality import DayPoint, LossGuard
from server.apps.front.report.stats import ProportionComparison, SampleGate, SRMResult, WelchResult
from server.apps.front.report.survival import SurvivalComparison

T = TypeVar("T")


def finite(value: Any) -> Any:
    """NaN and infinities become None, in numbers, dicts, lists and dataclasses (tuples become lists, as in JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if hasattr(value, "__dataclass_fields__") and not isinstance(value, type):
        return replace(value, **{f.name: finite(getattr(value, f.name)) for f in fields(value) if f.init})
    return value


@dataclass(frozen=True)
class Params:
    since: str | None
    until: str | None
    expected_split: dict[str, float]
    alpha: float
    confidence: float
    sequential: bool
    min_sessions: int
    min_outcomes: int
    srm_threshold: float


@dataclass(frozen=True)
class SessionCounts:
    analysed: dict[str, int]  # per variant
    contaminated: int
    unassigned: int
    events: int


@dataclass(frozen=True)
class PrimaryMetric:
    metric: str
    description: str
    result: ProportionComparison

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "description": self.description, **asdict(self.result)}


@dataclass(frozen=True)
class SecondaryMetric:
    metric: str
    description: str
    kind: str  # "proportion" or "mean" (ms)
    control: float | None
    treatment: float | None
    diff: float | None
    diff_low: float | None
    diff_high: float | None
    p_value: float | None
    p_adjusted: float | None = None  # Benjamini-Hochberg across the secondary metrics
    significant: bool = False


@dataclass(frozen=True)
class Stage:
    """One funnel stage of one variant."""

    stage: str
    label: str
    sessions: int
    share_of_assigned: float | None
    ci_low: float | None
    ci_high: float | None
    step_to_step: float | None


@dataclass(frozen=True)
class Dropout:
    """Sessions that sent ``onboarding_abandoned`` at one step (None: the step was not given)."""

    step: int | None
    sessions: int
    share_of_assigned: float | None
    share_of_abandoned: float | None


@dataclass(frozen=True)
class StepTime:
    step: int
    sessions: int
    mean_ms: float | None  # capped at the pooled P99
    mean_raw_ms: float | None
    median_ms: float | None
    p90_ms: float | None
    cap_ms: float | None


@dataclass(frozen=True)
class CompletionTime:
    sessions: int
    mean_ms: float | None  # capped at the pooled P99
    sd_ms: float | None
    mean_raw_ms: float | None
    median_ms: float | None
    p90_ms: float | None


@dataclass(frozen=True)
class TimeToComplete:
    definition: str
    by_variant: dict[str, CompletionTime | None]
    welch: WelchResult | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "definition": self.definition,
            **{v: asdict(t) if t is not None else None for v, t in self.by_variant.items()},
            "welch": asdict(self.welch) if self.welch is not None else None,
        }


# --- issue 14's sections (computed by report/insights.py) ---------------------------------------------

SURVIVAL_DEFINITION = (
    "seconds from assignment to completion; a session not completed is censored at its last event "
    "(Kaplan-Meier; log-rank test; restricted mean up to the horizon)"
)


@dataclass(frozen=True)
class CompletedWithin:
    seconds: float
    result: ProportionComparison  # among sessions followed for at least that long


@dataclass(frozen=True)
class Insights:
    survival: SurvivalComparison | None
    completed_within: CompletedWithin
    power: PowerReport
    lift_over_time: list[DayPoint]
    data_quality: LossGuard

    def to_dict(self) -> dict[str, Any]:
        within = self.completed_within
        return finite(
            {
                "time_to_complete_survival": {
                    "definition": SURVIVAL_DEFINITION,
                    "comparison": asdict(self.survival) if self.survival is not None else None,
                    "completed_within": {"seconds": within.seconds, **asdict(within.result)},
                },
                "power": asdict(self.power),
                "lift_over_time": [asdict(p) for p in self.lift_over_time],
                "data_quality": asdict(self.data_quality),
            }
        )


@dataclass(frozen=True)
class Report:
    verdict: str
    reasons: list[str]
    control: str
    treatment: str
    params: Params
    sessions: SessionCounts
    srm: SRMResult
    gate: SampleGate
    primary: PrimaryMetric
    secondary: list[SecondaryMetric]
    funnel: dict[str, list[Stage]]
    dropout: dict[str, list[Dropout]]
    time_per_step: dict[str, list[StepTime]]
    time_to_complete: TimeToComplete
    # Issue 14's sections (survival, power, lift over time, data quality): report/insights.py adds them.
    insights: Insights | None = None

    @property
    def variants(self) -> tuple[str, str]:
        return (self.control, self.treatment)

    def stage(self, variant: str, stage: str) -> Stage:
        return next(s for s in self.funnel[variant] if s.stage == stage)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``GET /api/rest/front/ab-report/`` (and ``ab_report --json``)."""
        by_variant = lambda parts: {v: [asdict(p) for p in rows] for v, rows in parts.items()}  # noqa: E731
        return finite(
            {
                "verdict": self.verdict,
                "reasons": self.reasons,
                "control": self.control,
                "treatment": self.treatment,
                "params": asdict(self.params),
                "sessions": asdict(self.sessions),
                "srm": asdict(self.srm),
                "gate": asdict(self.gate),
                "primary": self.primary.to_dict(),
                "secondary": [asdict(m) for m in self.secondary],
                "funnel": by_variant(self.funnel),
                "dropout": by_variant(self.dropout),
                "time_per_step": by_variant(self.time_per_step),
                "time_to_complete": self.time_to_complete.to_dict(),
                **(self.insights.to_dict() if self.insights is not None else {}),
            }
        )
