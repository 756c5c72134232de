"""``ab_report`` and ``ab_simulate``: the simulator goes through the real queue and writer."""

from __future__ import annotations

import io
import json
import random
import re

import pytest
from django.core.management import CommandError, call_command

from server.apps.front.ingest.serializers import ABEventSerializer
from server.apps.front.ingest.simulator import Plan, Tally, generate
from server.apps.front.models import ABEvent
from server.apps.front.pipeline import queue
from server.apps.front.report.build import build_report

from .factories import bulk_sessions

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_ab_report_text_and_json() -> None:
    rng = random.Random(8)
    ABEvent.objects.bulk_create(bulk_sessions("fast", 150, 40, rng) + bulk_sessions("deep", 150, 80, rng))
    text = run("ab_report")
    assert text.startswith("VERDICT: deep wins")
    assert "Funnel deep" in text and "Step 4 done" in text
    report = json.loads(run("ab_report", "--json"))
    assert report["verdict"] == "deep wins"
    assert report["primary"]["n_a"] == 150 and report["primary"]["x_a"] == 40
    empty = json.loads(run("ab_report", "--json", "--until", "2025-02-28"))
    assert empty["verdict"] == "insufficient data" and empty["sessions"]["events"] == 0
    assert json.loads(run("ab_report", "--json", "--sequential"))["params"]["sequential"] is True


@pytest.mark.parametrize("args", [("--since", "tomorrow"), ("--expected-split", "fast=2")])
def test_ab_report_rejects_bad_arguments(args: tuple[str, str]) -> None:
    with pytest.raises(CommandError):
        run("ab_report", *args)


def test_simulated_events_are_ones_the_endpoint_accepts() -> None:
    plan = Plan(200, 0.5, 0.05, {"fast": 0.5, "deep": 0.5}, 0.05, 0.05, 0.6)
    events = [event for batch in generate(plan, Tally(), seed=1) for event in batch]
    serializer = ABEventSerializer(data=events, many=True)
    assert serializer.is_valid(), [e for e in serializer.errors if e][:3]
    kinds = {e["event_type"] for e in events}
    assert kinds == {
        "variant_assigned",
        "onboarding_started",
        "step_completed",
        "onboarding_completed",
        "onboarding_abandoned",
    }


def test_ab_simulate_goes_through_the_queue_and_the_report_finds_what_was_made() -> None:
    output = run("ab_simulate", "--sessions", "1500", "--deep-lift", "0.1", "--seed", "5", "--contamination", "0.02")
    # Without --drain the events wait in Redis: nothing was written to the table directly.
    assert ABEvent.objects.count() == 0
    queued = int(re.search(r"queued ([\d,]+) events", output)[1].replace(",", ""))
    assert queue.stats().depth == queued

    call_command("ab_flush", stdout=io.StringIO())
    assert ABEvent.objects.count() == queued
    tally = Tally()
    for _ in generate(Plan(1500, 0.55, 0.1, {"fast": 0.5, "deep": 0.5}, 0.02, 0.01, 0.6), tally, seed=5):
        pass
    report = build_report()
    assert report["sessions"]["analysed"] == tally.sessions
    assert report["sessions"]["contaminated"] == tally.contaminated > 0
    assert report["sessions"]["events"] == tally.events == queued
    assert {v: report["primary"][k] for v, k in (("fast", "x_a"), ("deep", "x_b"))} == tally.completed
    assert report["verdict"] == "deep wins"
    assert [s["stage"] for s in report["funnel"]["deep"]][-2:] == ["step_6", "completed"]
    # As abtrack.js sends them: every event numbered per session and carrying the client's clock, so the
    # survival time to complete and the event-loss guard have data (nothing is lost in a simulation).
    assert not ABEvent.objects.filter(seq__isnull=True).exists()
    assert not ABEvent.objects.filter(event_time__isnull=True).exists()
    loss = report["data_quality"]
    assert loss["unequal"] is False
    assert all(arm["sessions_with_seq"] > 0 and arm["lost_events"] == 0 for arm in loss["arms"].values()), loss
    survival = report["time_to_complete_survival"]["comparison"]
    assert survival["a"]["completed"] > 0 and survival["b"]["completed"] > 0
    assert survival["a"]["rmst_seconds"] > 30 and survival["b"]["rmst_seconds"] > 30, survival


def test_ab_simulate_with_a_skewed_split_trips_the_srm_check() -> None:
    output = run("ab_simulate", "--sessions", "2000", "--split", "fast=0.6,deep=0.4", "--seed", "2", "--drain")
    assert "stored" in output
    report = build_report()
    assert report["verdict"] == "invalid: sample ratio mismatch"


@pytest.mark.parametrize(
    "args",
    [("--deep-lift", "0.5"), ("--split", "fast=1"), ("--duplicates", "2"), ("--sessions", "-1")],
)
def test_ab_simulate_rejects_impossible_plans(args: tuple[str, str]) -> None:
    with pytest.raises(CommandError):
        run("ab_simulate", *args)
