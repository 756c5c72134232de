"""The onboarding experiment, defined once: every other module reads it from here.

Its variants (and which is the control), the planned split, the event types
in funnel order, the chart colours and the simulator's defaults. A third
variant or another event type starts here; the model's ``choices`` come from
this module too, so a change of names or labels shows up as a migration.

No Django imports at module level: the settings, the fault harness and the
benchmarks may read it without an app registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str  # as sent by the frontend and stored in ab_events.variant
    label: str  # the model's choice label (admin)
    colour: str  # the report's charts


VARIANT_DEFS: tuple[Variant, ...] = (
    Variant("fast", "Fast", "#1f77b4"),
    Variant("deep", "Deep", "#ff7f0e"),
)
CONTROL = "fast"
TREATMENT = "deep"

VARIANTS: list[tuple[str, str]] = [(v.name, v.label) for v in VARIANT_DEFS]  # the model's choices
VARIANT_NAMES: list[str] = [v.name for v in VARIANT_DEFS]
COLORS: dict[str, str] = {v.name: v.colour for v in VARIANT_DEFS}

# The planned split; the AB_EXPECTED_SPLIT setting overrides it (the SRM check compares against it).
DEFAULT_SPLIT = ",".join(f"{name}={1 / len(VARIANT_NAMES):g}" for name in VARIANT_NAMES)

# --- event types, in funnel order ----------------------------------------------------

VARIANT_ASSIGNED = "variant_assigned"
ONBOARDING_STARTED = "onboarding_started"
STEP_COMPLETED = "step_completed"
ONBOARDING_COMPLETED = "onboarding_completed"
ONBOARDING_ABANDONED = "onboarding_abandoned"

# The model's choices; the labels are user-facing (admin) and stay in the spec's Russian.
EVENT_TYPES: list[tuple[str, str]] = [
    (VARIANT_ASSIGNED, "Вариант назначен"),
    (ONBOARDING_STARTED, "Онбординг начат"),
    (STEP_COMPLETED, "Шаг завершён"),
    (ONBOARDING_COMPLETED, "Онбординг завершён"),
    (ONBOARDING_ABANDONED, "Онбординг покинут"),
]
EVENT_TYPE_NAMES: list[str] = [name for name, _ in EVENT_TYPES]

# --- the simulator's defaults (manage.py ab_simulate) ------------------------------------

# Median time per onboarding step, per variant: the variant's number of steps is the list's length.
STEP_MEDIAN_MS: dict[str, list[int]] = {
    "fast": [8_000, 12_000, 6_000],
    "deep": [15_000, 25_000, 20_000, 30_000, 18_000, 10_000],
}
STEP_SIGMA = 0.5  # log-normal spread of step times
OUTLIER_RATE = 0.01  # steps whose tab was left open (5-20x the time)
START_RATE = 0.9  # assigned sessions that start onboarding
CATEGORIES = ["health", "fitness", "sleep", "nutrition", "mindfulness"]  # step 1's choice
SIMULATED_CONTROL_COMPLETION = 0.55
SIMULATED_TREATMENT_LIFT = 0.03  # absolute, on the completion probability
SIMULATED_CONTAMINATION = 0.002
SIMULATED_DUPLICATES = 0.01
SIMULATED_ABANDON_REPORT_RATE = 0.6


# --- the planned split -----------------------------------------------------------------


def parse_split(raw: str | dict[str, float]) -> dict[str, float]:
    """``"fast=0.5,deep=0.5"`` (or a dict) to normalised shares of every variant."""
    if isinstance(raw, dict):
        weights = {str(k): float(v) for k, v in raw.items()}
    else:
        weights = {}
        for part in filter(None, (p.strip() for p in raw.split(","))):
            name, sep, value = part.partition("=")
            try:
                weights[name.strip()] = float(value)
            except ValueError:
                raise ValueError(f"expected split part {part!r} is not name=weight") from None
            if not sep:
                raise ValueError(f"expected split part {part!r} is not name=weight")
    if set(weights) != set(VARIANT_NAMES):
        raise ValueError(f"expected split must give a weight to each of {VARIANT_NAMES}, got {sorted(weights)}")
    if any(not math.isfinite(w) or w <= 0 for w in weights.values()):
        raise ValueError(f"expected split weights must be positive, got {weights}")
    total = sum(weights.values())
    return {name: weights[name] / total for name in VARIANT_NAMES}


def configured_split() -> dict[str, float]:
    """The planned split from the ``AB_EXPECTED_SPLIT`` setting (default: :data:`DEFAULT_SPLIT`)."""
    from django.conf import settings

    return parse_split(getattr(settings, "AB_EXPECTED_SPLIT", None) or DEFAULT_SPLIT)
