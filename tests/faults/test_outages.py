"""PostgreSQL and Redis go away under load; accepted events still land exactly once."""

from __future__ import annotations

import time

import pytest

from .harness import Load, assert_exactly_once, verdict

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_postgres_down_under_load_events_wait_in_redis_and_land_after(make_stack, how: str) -> None:
    """The endpoint never touches PostgreSQL: it keeps answering 201 while the database is
    stopped (or SIGKILLed); the accepted events wait in Redis and all land once it is back."""
    stack = make_stack()
    url = stack.start_web()
    stack.start_worker()
    stack.start_beat()
    with Load(url, f"pg{how}-", rate=300, total=10_000) as load:
        time.sleep(1.5)
        down_at = time.monotonic()
        if how == "stop":
            stack.pg.stop(mode="fast")
        else:
            stack.pg.kill()
        time.sleep(3)
        during = load.between(down_at, time.monotonic())
        waiting = stack.queue_state()[0]
        stack.pg.start()
        time.sleep(1.5)
    assert during, "no request was answered during the outage"
    assert {o.status for o in during} == {201}, "the endpoint must not depend on PostgreSQL"
    assert waiting > 0, "events should have waited in Redis while PostgreSQL was down"
    stack.wait_drained(load.accepted(), f"pg{how}-", timeout=40)
    tally = verdict(stack, f"postgres {how} + restart ({len(during)} during)", f"pg{how}-", outcomes=load.outcomes)
    assert_exactly_once(tally)


@pytest.mark.parametrize(
    ("how", "appendfsync"),
    [
        # SHUTDOWN fsyncs the AOF, so everysec loses nothing on a clean restart.
        ("restart", "everysec"),
        # A SIGKILL may lose everysec's last second; only `always` promises nothing is lost.
        ("kill", "always"),
    ],
)
def test_redis_restart_under_load_answers_503_quickly_and_loses_no_accepted_event(
    make_stack, how: str, appendfsync: str
) -> None:
    stack = make_stack(appendfsync=appendfsync)
    url = stack.start_web()
    stack.start_worker()
    stack.start_beat()
    with Load(url, f"rd{how}-", rate=300, total=10_000) as load:
        time.sleep(1.5)
        down_at = time.monotonic()
        if how == "restart":
            stack.redis.stop()
        else:
            stack.redis.kill()
        time.sleep(1.5)
        during = load.between(down_at, time.monotonic())
        stack.redis.start()
        time.sleep(2)
    unavailable = [o for o in during if o.status == 503]
    assert unavailable, "Redis was down yet no request got a 503"
    assert {o.status for o in during} <= {201, 503}, "an outage answer must be 503, never 5xx or a hang"
    assert max(o.latency for o in unavailable) < 1.0, "a 503 must come within a second"
    stack.wait_drained(load.accepted(), f"rd{how}-", timeout=60)
    tally = verdict(
        stack,
        f"redis {how} ({appendfsync}, {len(unavailable)} x 503)",
        f"rd{how}-",
        outcomes=load.outcomes,
    )
    assert_exactly_once(tally)
