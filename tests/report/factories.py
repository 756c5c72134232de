"""Rows for report tests: events with controlled timestamps, built for ``bulk_create``."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from server.apps.front.models import ABEvent

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
_clock = itertools.count()


def ev(session: str, variant: str, event_type: str, step: int | None = None, ms: Any = None, **kw: Any) -> ABEvent:
    """One event; successive calls get increasing timestamps (one second apart) unless ``at`` is given."""
    at = kw.pop("at", T0 + timedelta(seconds=next(_clock)))
    metadata = {} if ms is None else {"time_spent_ms": ms}
    return ABEvent(
        session_id=session, variant=variant, event_type=event_type, step_number=step, metadata=metadata, timestamp=at
    )


def full_session(session: str, variant: str, step_ms: list[int], *, complete: bool = True) -> list[ABEvent]:
    """Assigned, started, one step_completed per entry of ``step_ms``, and completed unless told otherwise."""
    events = [ev(session, variant, "variant_assigned"), ev(session, variant, "onboarding_started")]
    events += [ev(session, variant, "step_completed", i, ms) for i, ms in enumerate(step_ms, start=1)]
    if complete:
        events.append(ev(session, variant, "onboarding_completed"))
    return events


def bulk_sessions(variant: str, sessions: int, completions: int, rng: random.Random) -> list[ABEvent]:
    """``sessions`` sessions named ``<variant>-<i>``; the first ``completions`` complete all steps, the rest only
    get assigned. fast has 3 steps, deep 4."""
    events = []
    for i in range(sessions):
        sid = f"{variant}-{i}"
        if i < completions:
            steps = [rng.randint(1000, 9000) for _ in range(3 if variant == "fast" else 4)]
            events += full_session(sid, variant, steps)
        else:
            events.append(ev(sid, variant, "variant_assigned"))
    return events
