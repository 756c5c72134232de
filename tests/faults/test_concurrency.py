"""Several drains at once (two workers, overlapping beat runs, manual flushes) and poison events."""

from __future__ import annotations

import random
import re
import uuid

import pytest

from .harness import Load, assert_exactly_once, queue_item, verdict, wait_for

pytestmark = pytest.mark.faults


def test_two_workers_overlapping_beats_and_flushes_store_each_event_once(make_stack) -> None:
    """Two workers take beat runs every 0.2 s (each run lasts longer than that, so runs
    overlap) while two ``manage.py ab_flush`` processes drain the same queue."""
    # Long leases: no batch may be legitimately reclaimed here, so the drains' own
    # counts must add up to exactly the events sent (a double claim would show).
    stack = make_stack(env={"AB_BATCH_SIZE": "100", "AB_FLUSH_INTERVAL": "0.2", "AB_LEASE_SECONDS": "60"})
    url = stack.start_web()
    workers = [stack.start_worker("w1"), stack.start_worker("w2")]
    pushed = [f"cc-bk-{i}" for i in range(30_000)]
    stack.push([queue_item(key, i) for i, key in enumerate(pushed)])
    with Load(url, "cc-web-", rate=400, total=2_000) as load:
        stack.start_beat()
        flushes = [stack.start_flush(), stack.start_flush()]
        load.wait()
    for flush in flushes:
        wait_for(lambda flush=flush: not flush.alive(), 60, "ab_flush to finish")
    stack.wait_drained(load.accepted() | set(pushed), "cc-", timeout=60)
    by_worker = [w.stored_by_drains() for w in workers]
    by_flush = [int(m.group(1)) for f in flushes for m in re.finditer(r"stored (\d+) events", f.output())]
    tally = verdict(
        stack, f"2 workers {by_worker} + 2 flushes {by_flush}", "cc-", outcomes=load.outcomes, pushed=pushed
    )
    assert_exactly_once(tally)
    assert all(by_worker), f"both workers should have drained concurrently, stored {by_worker}"
    assert sum(by_worker) + sum(by_flush) == tally.accepted, "some event was claimed and written twice"


def _poison(n: int) -> list[tuple[str, bytes]]:
    """Queue items PostgreSQL refuses (the endpoint would have, but a queue can hold anything)."""

    def item(**fields: object) -> bytes:
        return queue_item(f"po-x-{n}", n, event_id=uuid.uuid4(), **fields)

    return [
        ("step_number beyond int32", item(step_number=2**40)),
        ("user that does not exist", item(user_id=987_654_321)),
        ("NUL in metadata", item(metadata={"note": "a\u0000b"})),
        ("session_id over 100 chars", item(session_id="po-x-" + "s" * 120)),
        ("variant over 20 chars", item(variant="v" * 30)),
        ("not JSON at all", b"{not json"),
    ]


def test_poison_events_are_dead_lettered_and_their_batch_mates_land(make_stack) -> None:
    stack = make_stack(env={"AB_BATCH_SIZE": "150"})
    url = stack.start_web()
    stack.start_worker()
    good = [(f"po-bk-{i}", queue_item(f"po-bk-{i}", i)) for i in range(3_000)]
    poison = [p for n in range(3) for p in _poison(n)]
    mixed = [item for _, item in good]
    rng = random.Random(2)
    for _, item in poison:
        mixed.insert(rng.randrange(len(mixed)), item)
    stack.push(mixed)
    with Load(url, "po-web-", rate=400, total=1_000) as load:
        stack.start_beat()
        load.wait()
    pushed = [key for key, _ in good]
    stack.wait_drained(load.accepted() | set(pushed), "po-", timeout=60)
    tally = verdict(
        stack, "poison mixed into load", "po-", outcomes=load.outcomes, pushed=pushed, expected_dead=len(poison)
    )
    assert_exactly_once(tally)
    dead = stack.dead_letters()
    assert sorted(d["event"].encode() for d in dead) == sorted(item.decode().encode() for _, item in poison)
    assert all(d["error"] for d in dead), "every dead letter must say why"
