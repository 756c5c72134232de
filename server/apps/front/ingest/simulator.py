"""Push simulated onboarding sessions through the real ingest path.

Every event is validated and queued by the ingest service
(``ingest/service.py``), the one behind ``POST /api/rest/front/ab-event/``,
so it lands in the same Redis queue and reaches PostgreSQL through the same
writer (the Celery drain, or ``--drain`` here). Nothing is written to the
table directly.

The sessions look like the real thing: fewer steps in ``fast`` than in
``deep``, log-normal step times with a few left-open-tab outliers, silent
drop-outs beside explicit ``onboarding_abandoned`` events, double-fired
events (a second event id, so they reach the table) and a few sessions that
switch variant mid-way (contamination).
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from server.apps.front import experiment
from server.apps.front.experiment import (
    CATEGORIES,
    OUTLIER_RATE,
    START_RATE,
    STEP_MEDIAN_MS,
    STEP_SIGMA,
    TREATMENT,
    VARIANT_NAMES,
    configured_split,
    parse_split,
)
from server.apps.front.ingest import service


@dataclass(frozen=True)
class Plan:
    sessions: int
    fast_completion: float
    deep_lift: float
    split: dict[str, float]
    contamination: float
    duplicates: float
    abandon_report_rate: float

    def completion(self, variant: str) -> float:
        return self.fast_completion + (self.deep_lift if variant == TREATMENT else 0.0)


@dataclass
class Tally:
    """What was generated, to compare with what the report finds (per variant: clean sessions only)."""

    sessions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VARIANT_NAMES, 0))
    completed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VARIANT_NAMES, 0))
    contaminated: int = 0
    events: int = 0
    duplicates: int = 0


def _step_time(rng: random.Random, median_ms: int) -> int:
    ms = rng.lognormvariate(math.log(median_ms), STEP_SIGMA)
    if rng.random() < OUTLIER_RATE:
        ms *= rng.uniform(5, 20)  # the tab was left open
    return max(1, round(ms))


def session_events(plan: Plan, rng: random.Random, tally: Tally) -> list[dict[str, Any]]:
    """One session's events as the frontend would send them (serializer input)."""
    variant = rng.choices(list(plan.split), weights=list(plan.split.values()))[0]
    sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    medians = STEP_MEDIAN_MS[variant]
    # Per-step continuation chosen so that P(complete) = START_RATE * q**steps.
    q = (plan.completion(variant) / START_RATE) ** (1 / len(medians))
    events: list[dict[str, Any]] = [{"event_type": experiment.VARIANT_ASSIGNED, "metadata": {}}]
    completed = False
    if rng.random() < START_RATE:
        events.append({"event_type": experiment.ONBOARDING_STARTED, "metadata": {}})
        for step, median in enumerate(medians, start=1):
            if rng.random() >= q:
                if rng.random() < plan.abandon_report_rate:
                    partial = _step_time(rng, median) // 2
                    events.append(
                        {
                            "event_type": experiment.ONBOARDING_ABANDONED,
                            "step_number": step,
                            "metadata": {"time_spent_ms": partial},
                        }
                    )
                break
            metadata: dict[str, Any] = {"time_spent_ms": _step_time(rng, median)}
            if step == 1:
                metadata["category_selected"] = rng.choice(CATEGORIES)
            events.append({"event_type": experiment.STEP_COMPLETED, "step_number": step, "metadata": metadata})
        else:
            completed = True
            events.append({"event_type": experiment.ONBOARDING_COMPLETED, "metadata": {}})
    # A contaminated session moves to another variant (the next one, cyclically).
    other = VARIANT_NAMES[(VARIANT_NAMES.index(variant) + 1) % len(VARIANT_NAMES)]
    switch_at = len(events) if len(events) < 2 or rng.random() >= plan.contamination else rng.randrange(1, len(events))
    if switch_at < len(events):
        tally.contaminated += 1
    else:
        tally.sessions[variant] += 1
        tally.completed[variant] += completed
    # Client clocks as abtrack.js sends them: the session ended a little before the batch is sent (the
    # simulator's "now"), each event at the session's start plus the step times so far, so the report's
    # survival time to complete has real durations; a per-session seq numbers the events as the SDK does.
    durations = [int(e.get("metadata", {}).get("time_spent_ms", 0)) for e in events]
    end_ms = int(time.time() * 1000) - rng.randint(1_000, 3_600_000)
    at_ms = end_ms - sum(durations)
    out = []
    for index, event in enumerate(events):
        at_ms += durations[index]
        event.update(
            session_id=sid,
            variant=variant if index < switch_at else other,
            event_id=str(uuid.uuid4()),
            client_ts=at_ms,
        )
        out.append(event)
        if rng.random() < plan.duplicates:
            out.append({**event, "event_id": str(uuid.uuid4())})  # double-fired: a new id, so it is stored
            tally.duplicates += 1
    for seq, event in enumerate(out, start=1):
        event["seq"] = seq  # a double-fired call is a call of its own to the SDK: the next number
    tally.events += len(out)
    return out


def generate(
    plan: Plan, tally: Tally, seed: int | None = None, batch_size: int = 2000
) -> Iterator[list[dict[str, Any]]]:
    """Yield batches of events (whole sessions, about ``batch_size`` events); ``tally`` counts what was made."""
    rng = random.Random(seed)
    batch: list[dict[str, Any]] = []
    for _ in range(plan.sessions):
        batch.extend(session_events(plan, rng, tally))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def push_batch(batch: list[dict[str, Any]]) -> None:
    """Validate and enqueue with the endpoints' ingest service; nothing is queued if any event is refused.

    Raises ValueError for a refused event, and what ``queue.push`` raises.
    """
    valid, outcome = service.validate(batch)
    if outcome.rejected:
        raise ValueError(f"the simulator produced an event the endpoint refuses: {outcome.rejected[0]['errors']}")
    # sent_at "now" on the simulated client's clock (the same as the server's): client_ts becomes event_time.
    service.enqueue(valid, sent_at=datetime.now(UTC))


def make_plan(opts: dict[str, Any]) -> Plan:
    """The plan from ``ab_simulate``'s options; ValueError naming the option that is out of range."""
    split = parse_split(opts["split"]) if opts["split"] else configured_split()
    plan = Plan(
        sessions=opts["sessions"],
        fast_completion=opts["fast_completion"],
        deep_lift=opts["deep_lift"],
        split=split,
        contamination=opts["contamination"],
        duplicates=opts["duplicates"],
        abandon_report_rate=opts["abandon_report_rate"],
    )
    if plan.sessions < 0:
        raise ValueError("--sessions must be >= 0")
    for variant in VARIANT_NAMES:
        if not 0 < plan.completion(variant) <= START_RATE:
            raise ValueError(
                f"{variant}'s completion probability {plan.completion(variant):.3f} must be in (0, {START_RATE}] "
                f"(only {START_RATE:.0%} of sessions start onboarding)"
            )
    for name in ("contamination", "duplicates", "abandon_report_rate"):
        if not 0 <= getattr(plan, name) <= 1:
            raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 1")
    if opts["batch_size"] < 1:
        raise ValueError("--batch-size must be >= 1")
    return plan


def simulate(plan: Plan, seed: int | None = None, batch_size: int = 2000) -> Tally:
    """Generate the plan's sessions and push them through the ingest service; returns what was generated."""
    tally = Tally()
    for batch in generate(plan, tally, seed, batch_size):
        push_batch(batch)
    return tally
