"""The report's SQL aggregates on real PostgreSQL: sessions, not events, are counted."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from server.apps.front.models import ABEvent
from server.apps.front.report import analytics
from server.apps.front.report.build import build_report, parse_moment, parse_split

from .factories import T0, bulk_sessions, ev, full_session

pytestmark = pytest.mark.django_db


def stage(report: dict[str, Any], variant: str, name: str) -> dict[str, Any]:
    return next(s for s in report["funnel"][variant] if s["stage"] == name)


@pytest.fixture
def small_experiment() -> list[ABEvent]:
    f1 = full_session("f1", "fast", [1000, 2000, 3000])
    # Duplicates (client double-fire: new event ids) of an assignment, a step and the completion.
    f1 += [ev("f1", "fast", "variant_assigned"), ev("f1", "fast", "step_completed", 2, 2000)]
    f1 += [ev("f1", "fast", "onboarding_completed")]
    f2 = [*full_session("f2", "fast", [1500], complete=False), ev("f2", "fast", "onboarding_abandoned", 2)]
    f3 = [ev("f3", "fast", "variant_assigned")]
    f4 = full_session("f4", "fast", [4000, 1000, 500])
    d1 = full_session("d1", "deep", [5000, 6000, 7000, 8000])
    d2 = full_session("d2", "deep", [2500, 3500], complete=False)
    d2 += [ev("d2", "deep", "onboarding_abandoned", 3), ev("d2", "deep", "onboarding_abandoned", 3)]
    d3 = [ev("d3", "deep", "variant_assigned"), ev("d3", "deep", "onboarding_started")]
    d3 += [ev("d3", "deep", "onboarding_started")]
    # A step time that is not a number and a negative one: counted in the funnel, not in the time figures.
    d4 = [ev("d4", "deep", "variant_assigned"), ev("d4", "deep", "onboarding_started")]
    d4 += [ev("d4", "deep", "step_completed", 1, "abc"), ev("d4", "deep", "step_completed", 2, -5)]
    # Seen in both variants: excluded from both, counted as contamination.
    c1 = [ev("c1", "fast", "variant_assigned"), ev("c1", "fast", "onboarding_started")]
    c1 += [ev("c1", "deep", "step_completed", 1, 100), ev("c1", "deep", "onboarding_completed")]
    # No variant_assigned: excluded, counted as unassigned.
    u1 = [ev("u1", "fast", "onboarding_started"), ev("u1", "fast", "step_completed", 1, 900)]
    events = f1 + f2 + f3 + f4 + d1 + d2 + d3 + d4 + c1 + u1
    ABEvent.objects.bulk_create(events)
    return events


def test_funnel_counts_sessions_not_events(small_experiment: list[ABEvent]) -> None:
    report = build_report()
    assert report["sessions"] == {
        "analysed": {"fast": 4, "deep": 4},
        "contaminated": 1,
        "unassigned": 1,
        "events": len(small_experiment),
    }
    fast = {s["stage"]: s["sessions"] for s in report["funnel"]["fast"]}
    assert fast == {"assigned": 4, "started": 3, "step_1": 3, "step_2": 2, "step_3": 2, "completed": 2}
    deep = {s["stage"]: s["sessions"] for s in report["funnel"]["deep"]}
    assert deep == {
        "assigned": 4,
        "started": 4,
        "step_1": 3,
        "step_2": 3,
        "step_3": 1,
        "step_4": 1,
        "completed": 1,
    }
    assert stage(report, "fast", "completed")["share_of_assigned"] == pytest.approx(0.5)
    assert stage(report, "fast", "step_2")["step_to_step"] == pytest.approx(2 / 3)
    assert report["dropout"]["fast"] == [
        {"step": 2, "sessions": 1, "share_of_assigned": 0.25, "share_of_abandoned": 1.0}
    ]
    assert [(d["step"], d["sessions"]) for d in report["dropout"]["deep"]] == [(3, 1)]
    assert report["primary"]["x_a"] == 2 and report["primary"]["n_a"] == 4
    assert report["primary"]["x_b"] == 1 and report["primary"]["n_b"] == 4
    assert report["verdict"] == "insufficient data"


def test_step_times_are_taken_once_per_session_and_step(small_experiment: list[ABEvent]) -> None:
    report = build_report()
    fast = {row["step"]: row for row in report["time_per_step"]["fast"]}
    deep = {row["step"]: row for row in report["time_per_step"]["deep"]}
    # Step 2 of fast: f1 (sent twice, 2000) and f4 (1000); f2 never reached it.
    assert fast[2]["sessions"] == 2
    assert fast[2]["median_ms"] == pytest.approx(1500)
    # Pooled P99 cap per step over both variants, like percentile_cont (linear interpolation).
    pooled_step1 = np.array([1000, 1500, 4000, 5000, 2500])
    cap = np.percentile(pooled_step1, 99)
    assert fast[1]["cap_ms"] == pytest.approx(cap)
    assert fast[1]["mean_ms"] == pytest.approx(np.minimum([1000, 1500, 4000], cap).mean())
    assert fast[1]["mean_raw_ms"] == pytest.approx(np.mean([1000, 1500, 4000]))
    assert fast[1]["p90_ms"] == pytest.approx(np.percentile([1000, 1500, 4000], 90))
    # d4's "abc" and -5 are not times; contaminated c1 and unassigned u1 are not counted.
    assert deep[1]["sessions"] == 2 and deep[2]["sessions"] == 2
    totals = report["time_to_complete"]
    assert totals["fast"]["sessions"] == 2
    assert totals["fast"]["mean_raw_ms"] == pytest.approx((6000 + 5500) / 2)
    assert totals["deep"]["sessions"] == 1 and totals["welch"] is None


def test_first_assignment_decides_the_variant() -> None:
    ABEvent.objects.bulk_create(
        [
            ev("s", "deep", "variant_assigned", at=T0),
            ev("s", "deep", "variant_assigned", at=T0 + timedelta(minutes=5)),
            ev("s", "deep", "onboarding_started", at=T0 + timedelta(minutes=6)),
            ev("x", "fast", "variant_assigned", at=T0 + timedelta(minutes=1)),
            ev("x", "deep", "variant_assigned", at=T0),  # earlier: the session is in both variants
        ]
    )
    report = build_report()
    assert report["sessions"]["analysed"] == {"fast": 0, "deep": 1}
    assert report["sessions"]["contaminated"] == 1


def test_date_range_filters_on_timestamp() -> None:
    day1, day2 = T0, T0 + timedelta(days=1)
    ABEvent.objects.bulk_create(
        [
            ev("a", "fast", "variant_assigned", at=day1),
            ev("a", "fast", "onboarding_started", at=day1),
            ev("b", "deep", "variant_assigned", at=day2),
            ev("b", "deep", "onboarding_completed", at=day2),
        ]
    )
    only_day2 = build_report(since=parse_moment("2025-03-02"))
    assert only_day2["sessions"]["analysed"] == {"fast": 0, "deep": 1}
    only_day1 = build_report(until=parse_moment("2025-03-01", end=True))
    assert only_day1["sessions"]["analysed"] == {"fast": 1, "deep": 0}
    assert only_day1["params"]["until"] == "2025-03-02T00:00:00+00:00"
    moment = build_report(since=parse_moment("2025-03-01T12:00:00"), until=parse_moment("2025-03-01T12:00:00.5"))
    assert moment["sessions"]["events"] == 2


def test_date_range_uses_the_corrected_client_time_where_present() -> None:
    """An event recorded offline on day 1 and received on day 2 belongs to day 1."""
    day1, day2 = T0, T0 + timedelta(days=1)
    late = ev("c", "fast", "variant_assigned", at=day2)
    late.event_time = day1
    ABEvent.objects.bulk_create([late, ev("d", "deep", "variant_assigned", at=day2)])
    only_day1 = build_report(until=parse_moment("2025-03-01", end=True))
    assert only_day1["sessions"]["analysed"] == {"fast": 1, "deep": 0}
    only_day2 = build_report(since=parse_moment("2025-03-02"))
    assert only_day2["sessions"]["analysed"] == {"fast": 0, "deep": 1}


def test_welch_on_time_to_complete_matches_scipy_on_raw_totals() -> None:
    rng = random.Random(5)
    events = bulk_sessions("fast", 150, 60, rng) + bulk_sessions("deep", 150, 70, rng)
    ABEvent.objects.bulk_create(events)
    totals: dict[str, list[float]] = {"fast": [], "deep": []}
    for sid, group in itertools.groupby(
        (e for e in events if e.event_type == "step_completed"), key=lambda e: e.session_id
    ):
        totals[sid.split("-")[0]].append(sum(e.metadata["time_spent_ms"] for e in group))
    cap = np.percentile(totals["fast"] + totals["deep"], 99)
    expected = sps.ttest_ind(np.minimum(totals["deep"], cap), np.minimum(totals["fast"], cap), equal_var=False)
    welch = build_report()["time_to_complete"]["welch"]
    assert welch["t"] == pytest.approx(expected.statistic)
    assert welch["p_value"] == pytest.approx(expected.pvalue)
    secondary = {m["metric"]: m for m in build_report()["secondary"]}
    assert secondary["time to complete (ms)"]["p_value"] == pytest.approx(expected.pvalue)


def test_verdict_from_the_database_deep_wins() -> None:
    rng = random.Random(1)
    ABEvent.objects.bulk_create(bulk_sessions("fast", 200, 60, rng) + bulk_sessions("deep", 200, 110, rng))
    report = build_report()
    assert report["verdict"] == "deep wins"
    assert report["primary"]["p_value"] == pytest.approx(
        sps.chi2_contingency([[60, 140], [110, 90]], correction=False)[1]
    )
    # BH runs over the tested metrics; the completers-only time is description (issue 14: survivorship).
    tested = [m for m in report["secondary"] if m["kind"] == "proportion"]
    adjusted = sps.false_discovery_control([m["p_value"] for m in tested])
    assert [m["p_adjusted"] for m in tested] == pytest.approx(list(adjusted))
    (time,) = [m for m in report["secondary"] if m["kind"] == "mean"]
    assert time["p_adjusted"] is None and time["significant"] is False


def test_verdict_from_the_database_sample_ratio_mismatch() -> None:
    rng = random.Random(2)
    ABEvent.objects.bulk_create(bulk_sessions("fast", 200, 60, rng) + bulk_sessions("deep", 320, 160, rng))
    assert build_report()["verdict"] == "invalid: sample ratio mismatch"
    # The same data is fine against a planned 40/60 split.
    planned = build_report(expected_split=parse_split("fast=0.4,deep=0.6"))
    assert planned["verdict"] == "deep wins"


def test_expected_split_setting(settings: Any) -> None:
    rng = random.Random(3)
    ABEvent.objects.bulk_create(bulk_sessions("fast", 200, 60, rng) + bulk_sessions("deep", 320, 160, rng))
    settings.AB_EXPECTED_SPLIT = "fast=0.4,deep=0.6"
    report = build_report()
    assert report["params"]["expected_split"] == {"fast": 0.4, "deep": 0.6}
    assert report["verdict"] == "deep wins"


def test_empty_table_gives_insufficient_data() -> None:
    report = build_report()
    assert report["verdict"] == "insufficient data"
    assert report["sessions"]["events"] == 0
    assert report["primary"]["p_value"] is None  # NaN becomes null in JSON


@pytest.mark.parametrize("raw", ["fast=1", "fast=0.5,deep=0", "fast=a,deep=1", "fast=0.5,deep=0.5,slow=1"])
def test_parse_split_rejects_bad_input(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_split(raw)


def test_parse_moment_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_moment("yesterday")


def test_spec_functions_return_session_level_data(small_experiment: list[ABEvent]) -> None:
    rates = {row["variant"]: row for row in analytics.get_completion_rates()}
    assert rates["fast"]["assigned"] == 4 and rates["fast"]["total_started"] == 3
    assert rates["fast"]["total_completed"] == 2 and rates["fast"]["completion_rate"] == pytest.approx(50.0)
    steps = analytics.get_average_time_per_step("fast")
    assert [s["step_number"] for s in steps] == [1, 2, 3]
    assert steps[2]["median_ms"] == pytest.approx(1750)  # f1 3000, f4 500
    assert analytics.get_dropout_points("deep") == [{"step_number": 3, "count": 1, "pct": 100.0}]
    compared = analytics.compare_variants()
    assert compared["fast"]["completed"] == 2 and compared["deep"]["completed"] == 1
    assert compared["deep"]["abandon_rate"] == pytest.approx(25.0)
    assert compared["verdict"] == "insufficient data"
    assert compared["difference_pp"] == pytest.approx(-25.0)
