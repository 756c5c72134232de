"""Workers killed with SIGKILL in the middle of a batch lose nothing and duplicate nothing."""

from __future__ import annotations

import random
import time

import pytest

from .harness import Load, Stack, assert_exactly_once, queue_item, verdict, wait_for

pytestmark = pytest.mark.faults


def _insert_waiting_on_lock(stack: Stack) -> bool:
    with stack.db() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
            ['%INSERT INTO "ab_events"%'],  # the writer's statement starts with the ab_event_ids CTE
        )
        return cur.fetchone()[0] > 0


def _leases(stack: Stack) -> set[bytes]:
    return set(stack.r.zrange(stack.keys().leases, 0, -1))


def test_worker_killed_after_claim_and_after_commit_loses_and_duplicates_nothing(make_stack) -> None:
    """The two crash points of a drain, made deterministic.

    1. After the claim, before the commit: a table lock holds the worker's
       INSERT while it is SIGKILLed; its transaction dies with it.
    2. After the commit, before the ack: Redis writes are paused (CLIENT PAUSE
       WRITE) so the ack cannot run; the worker is SIGKILLed with its rows
       committed and its batch still leased.
    Both batches come back when their lease expires; the rewrite of the
    committed one must store nothing twice.
    """
    stack = make_stack()
    url = stack.start_web()
    with Load(url, "crash-", rate=600, total=600) as load:
        load.wait()
    assert {o.status for o in load.outcomes} == {201}

    with stack.db() as locker:
        locker.autocommit = False
        # 1. killed between claim and commit.
        locker.cursor().execute("LOCK TABLE ab_events IN SHARE MODE")
        # One drain per run (AB_DRAIN_THREADS=1): each crash point is one claimed batch, counted exactly.
        first = stack.start_worker("after-claim", REDIS_SOCKET_TIMEOUT="5", AB_DRAIN_THREADS="1")
        stack.trigger_drain()
        wait_for(lambda: _insert_waiting_on_lock(stack), 30, "the worker's INSERT to wait on the lock")
        assert len(_leases(stack)) == 1
        first.kill9()
        locker.rollback()
        wait_for(lambda: not _insert_waiting_on_lock(stack), 10, "the dead worker's backend to go")
        assert sum(stack.rows_by_key("crash-").values()) == 0, "an uncommitted batch became visible"
        assert len(_leases(stack)) == 1, "the killed worker's batch must stay leased"

        # 2. killed between commit and ack.
        locker.cursor().execute("LOCK TABLE ab_events IN SHARE MODE")
        second = stack.start_worker("after-commit", REDIS_SOCKET_TIMEOUT="5", AB_DRAIN_THREADS="1")
        stack.trigger_drain()
        wait_for(lambda: _insert_waiting_on_lock(stack), 30, "the second worker's INSERT to wait on the lock")
        stack.r.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
        try:
            locker.rollback()
            committed = wait_for(lambda: sum(stack.rows_by_key("crash-").values()), 10, "the batch to commit")
            second.kill9()
        finally:
            stack.r.execute_command("CLIENT", "UNPAUSE")
    assert committed > 0
    time.sleep(0.2)
    assert _leases(stack), "the committed batch was acked although its worker died before the ack"

    # Recovery: a fresh worker and beat; leases expire (2 s) and are reaped.
    stack.start_worker("recovery")
    stack.start_beat()
    accepted = load.accepted()
    stack.wait_drained(accepted, "crash-", timeout=30)
    tally = verdict(stack, "worker kill -9 after claim / commit", "crash-", outcomes=load.outcomes)
    assert_exactly_once(tally)


def test_worker_kill9_mid_batch_repeated_under_load(make_stack) -> None:
    """Four workers in a row are SIGKILLed while draining a backlog, under live load."""
    stack = make_stack(env={"AB_BATCH_SIZE": "100"})
    url = stack.start_web()
    pushed = [f"kill-bk-{i}" for i in range(20_000)]
    stack.push([queue_item(key, i) for i, key in enumerate(pushed)])
    rng = random.Random(5)
    orphaned = 0
    with Load(url, "kill-web-", rate=250, total=5_000) as load:
        for round_ in range(4):
            before = _leases(stack)
            victim = stack.start_worker(f"victim{round_}")
            stack.trigger_drain()
            wait_for(lambda before=before: _leases(stack) - before, 20, "the victim to claim a batch", 0.002)
            time.sleep(rng.uniform(0, 0.15))
            victim.kill9()
            orphaned += len(_leases(stack) - before)
        stack.start_worker("survivor")
        stack.start_beat()
        time.sleep(1)
    assert orphaned >= 1, "no kill landed while a batch was claimed"
    stack.wait_drained(load.accepted() | set(pushed), "kill-", timeout=60)
    tally = verdict(
        stack, f"worker kill -9 x4 ({orphaned} batches orphaned)", "kill-", outcomes=load.outcomes, pushed=pushed
    )
    assert_exactly_once(tally)
