"""Poison items in the queue: each one is dead-lettered alone, its batch-mates land in the same drain.

The items are pushed straight into the real Redis queue (bypassing
validation, as an item queued by an older or buggy release, a hand-edited
replay or a future validation hole would be), among valid items, and drained by
the real writer into the real PostgreSQL.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from io import StringIO

import orjson
import pytest
from django.core.management import call_command
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from server.apps.front.models import ABEvent
from server.apps.front.pipeline import queue, writer

pytestmark = pytest.mark.django_db

# One microsecond past the last instant a datetime can hold, and one before the first.
AFTER_9999 = queue.to_micros(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) + 1
BEFORE_0001 = queue.to_micros(datetime(1, 1, 1, tzinfo=UTC)) - 1


def payload(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "s": f"good-{uuid.uuid4().hex[:8]}",
        "v": "fast",
        "e": "variant_assigned",
        "n": None,
        "m": {},
        "t": queue.to_micros(timezone.now()),
        "u": None,
    }
    data.update(overrides)
    return data


def without(*names: str) -> bytes:
    data = payload()
    for name in names:
        del data[name]
    return orjson.dumps(data)


def nested_metadata(depth: int) -> bytes:
    """A valid item whose metadata nests ``depth`` objects (orjson.dumps stops at 254; loads allows 1023)."""
    data = payload()
    del data["m"]
    head = orjson.dumps(data)[:-1]
    return head + b',"m":' + b'{"k":' * depth + b"{}" + b"}" * depth + b"}"


# (label, queued item, a word the dead letter's reason must contain). The
# labels only name the cases; the reasons are the exceptions' own.
POISON: list[tuple[str, bytes, str]] = [
    # Unconvertible times: the microsecond conversion overflows datetime.
    ("receive time after 9999", orjson.dumps(payload(t=AFTER_9999)), "OverflowError: 't'="),
    ("client_ts before 0001", orjson.dumps(payload(c=BEFORE_0001)), "OverflowError: 'c'="),
    ("event_time after 9999", orjson.dumps(payload(w=AFTER_9999)), "OverflowError: 'w'="),
    ("receive time as a huge float", orjson.dumps(payload(t=1e29)), "TypeError: 't' must be integer"),
    # Undecodable bytes.
    ("garbage bytes", b"\xff\xfe\x00\x81 not json at all", "JSONDecodeError"),
    ("truncated JSON", orjson.dumps(payload())[:-7], "JSONDecodeError"),
    ("lone surrogate", b'{"id": "\\ud800"}', "JSONDecodeError"),
    ("JSON array", b"[1, 2, 3]", "not a JSON object"),
    ("JSON null", b"null", "not a JSON object"),
    ("empty item", b"", "JSONDecodeError"),
    # Valid JSON, keys missing.
    ("empty object", b"{}", "KeyError: 'id'"),
    ("no id", without("id"), "KeyError: 'id'"),
    ("no session", without("s"), "KeyError: 's'"),
    ("no receive time", without("t"), "KeyError: 't'"),
    # Valid JSON, wrong types.
    ("id is an integer", orjson.dumps(payload(id=7)), "'id' must be a string"),
    ("id is a boolean", orjson.dumps(payload(id=True)), "'id' must be a string"),
    ("id is an object", orjson.dumps(payload(id={"a": 1})), "'id' must be a string"),
    ("id is not a UUID", orjson.dumps(payload(id="not-a-uuid")), "ValueError"),
    ("session is an object", orjson.dumps(payload(s={"a": 1})), "'s' must be a string"),
    ("session is a number", orjson.dumps(payload(s=12)), "'s' must be a string"),
    ("session holds NUL", orjson.dumps(payload(s="a\x00b")), "NUL"),
    ("variant is a list", orjson.dumps(payload(v=["fast"])), "'v' must be a string"),
    ("event type is null", orjson.dumps(payload(e=None)), "'e' must be a string"),
    ("step is a string", orjson.dumps(payload(n="3")), "'n' must be an integer"),
    ("step is a float", orjson.dumps(payload(n=1.5)), "'n' must be an integer"),
    ("step is a boolean", orjson.dumps(payload(n=True)), "'n' must be an integer"),
    ("metadata is a list", orjson.dumps(payload(m=[1, 2])), "'m' must be an object"),
    ("metadata is a string", orjson.dumps(payload(m="x")), "'m' must be an object"),
    ("receive time is a string", orjson.dumps(payload(t="now")), "'t' must be integer"),
    ("receive time is a float", orjson.dumps(payload(t=1.5)), "'t' must be integer"),
    ("user is a string", orjson.dumps(payload(u="alice")), "'u' must be an integer"),
    ("user is a boolean", orjson.dumps(payload(u=True)), "'u' must be an integer"),
    ("client_ts is a list", orjson.dumps(payload(c=[1])), "'c' must be integer"),
    # Passes the builder, refused while adapting the row for the database
    # (Python's JSON encoder recurses per nesting level).
    ("metadata nested 1000 deep", nested_metadata(1020), "RecursionError"),
]


def dead_letters(rq) -> list[dict]:
    return [orjson.loads(x) for x in rq.lrange(queue.keys().dead, 0, -1)]


def interleave(good: list[bytes], poison: list[bytes]) -> list[bytes]:
    """Poison spread through the batch: first, last and in between."""
    items = list(good)
    step = max(1, len(good) // len(poison))
    for i, bad in enumerate(poison):
        items.insert(min(len(items), i * (step + 1)), bad)
    items.append(poison[0])  # the same poison twice, once at the very end
    return items


def stored_sessions() -> list[str]:
    return list(ABEvent.objects.order_by("session_id").values_list("session_id", flat=True))


def test_every_poison_item_is_dead_lettered_with_its_reason_and_its_batch_mates_land_in_the_same_drain(rq):
    good = [orjson.dumps(payload(s=f"good-{i:03d}")) for i in range(120)]
    poison = [bad for _, bad, _ in POISON]
    queue.push(interleave(good, poison))

    result = writer.drain(batch_size=10_000)

    assert result.error is None
    assert result.batches == 1  # one claim, one write: nothing released or reclaimed
    assert result.stored == len(good)
    assert stored_sessions() == [f"good-{i:03d}" for i in range(120)]  # each exactly once
    dead = dead_letters(rq)
    assert result.dead_lettered == len(dead) == len(POISON) + 1
    by_item = {d["event"]: d["error"] for d in dead}
    for label, bad, reason in POISON:
        error = by_item[bad.decode("utf-8", "replace")]
        assert reason in error, (label, error)
    stats = queue.stats()
    assert (stats.depth, stats.inflight, stats.inflight_batches) == (0, 0, 0)
    # The operator's view of them works too: every entry parsed, with its reason.
    listed = queue.dead_letters(0, 1000)
    assert [d.error for d in listed] == [d["error"] for d in dead]
    out = StringIO()
    call_command("ab_deadletters", "list", "--limit", "1000", stdout=out)
    assert f"{len(dead)} shown of {len(dead)} dead letters" in out.getvalue()


@pytest.mark.parametrize(("label", "bad", "reason"), POISON, ids=[label for label, _, _ in POISON])
def test_one_poison_item_among_valid_ones_costs_only_itself(rq, label, bad, reason):
    good = [orjson.dumps(payload(s=f"mate-{i}")) for i in range(9)]
    queue.push([*good[:4], bad, *good[4:]])

    result = writer.drain(batch_size=100)

    assert (result.error, result.batches, result.stored, result.dead_lettered) == (None, 1, 9, 1)
    assert stored_sessions() == [f"mate-{i}" for i in range(9)]
    (dead,) = dead_letters(rq)
    assert reason in dead["error"]


def test_replayed_poison_is_dead_lettered_again_with_its_reason_and_never_crashes_the_drain(rq):
    poison = [bad for _, bad, _ in POISON]
    queue.push([*poison, orjson.dumps(payload(s="first"))])
    writer.drain(batch_size=10_000)
    first = {d["event"]: d["error"] for d in dead_letters(rq)}
    assert len(first) == len(POISON)

    assert queue.replay_dead() == len(POISON)
    queue.push([orjson.dumps(payload(s="second"))])
    result = writer.drain(batch_size=10_000)

    assert result.error is None
    assert (result.stored, result.dead_lettered) == (1, len(POISON))
    assert stored_sessions() == ["first", "second"]
    again = {d["event"]: d["error"] for d in dead_letters(rq)}
    # The same items, for the same reasons. (Bytes that are not UTF-8 are kept
    # as their replacement text, so the decoder's message may change; its
    # exception class does not.)
    assert again.keys() == first.keys()
    assert {k: v.split(":")[:2] for k, v in again.items()} == {k: v.split(":")[:2] for k, v in first.items()}
    assert sum(again[k] != first[k] for k in first) <= 1
    assert queue.stats().depth == queue.stats().inflight == 0


def test_poison_in_a_batch_whose_worker_died_is_reaped_and_dead_lettered_without_crashing_the_drain(rq, settings):
    # Ids of the wrong JSON type reach the Lua scripts that count attempts.
    odd_ids = [orjson.dumps(payload(id=value)) for value in ({"a": 1}, True, [1], 7, 1.5)]
    good = [orjson.dumps(payload(s=f"reaped-{i}")) for i in range(5)]
    queue.push(odd_ids + good)
    abandoned = queue.claim(100, lease_seconds=0.05)  # a worker claims the batch and dies
    assert abandoned is not None
    time.sleep(0.1)

    result = writer.drain(batch_size=100)  # reap, then write

    assert result.error is None
    assert result.requeued + result.dead_lettered >= len(odd_ids) + len(good)
    assert stored_sessions() == [f"reaped-{i}" for i in range(5)]
    dead = dead_letters(rq)
    assert len(dead) == len(odd_ids)
    # Each counted and requeued by the reaper, then refused by the writer with its true reason.
    assert all("'id' must be a string" in d["error"] for d in dead), dead
    stats = queue.stats()
    assert (stats.depth, stats.inflight) == (0, 0)


def test_a_dead_letter_is_written_even_when_the_reason_quotes_an_unencodable_string():
    entry = orjson.loads(queue.dead_entry(b"\xff{", "ValueError: bad value '\ud800'"))
    assert entry["event"] == "\ufffd{"
    assert entry["error"] == "ValueError: bad value '?'"


# --- property: whatever sits in the queue, the drain finishes and accounts for every item ---

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # orjson's range
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)
MICROS = st.integers(min_value=BEFORE_0001 - 5, max_value=AFTER_9999 + 5)
# Each field mostly well-formed, sometimes any JSON value at all; optional keys sometimes missing.
QUEUED_PAYLOAD = st.fixed_dictionaries(
    {
        "id": st.uuids().map(str) | JSON,
        "s": st.text(min_size=1, max_size=110) | JSON,
        "v": st.sampled_from(["fast", "deep"]) | JSON,
        "e": st.sampled_from(["variant_assigned", "step_completed"]) | JSON,
        "t": MICROS | JSON,
    },
    optional={
        "n": st.none() | st.integers(min_value=-(2**40), max_value=2**40) | JSON,
        "m": st.dictionaries(st.text(max_size=6), JSON, max_size=4) | JSON,
        "u": st.none() | JSON,
        "c": st.none() | MICROS | JSON,
        "w": st.none() | MICROS | JSON,
    },
)
QUEUED_ITEM = QUEUED_PAYLOAD | JSON | st.binary(max_size=40)


def queued(value: object) -> bytes:
    """The item as queued. A well-formed id is replaced by a fresh one: hypothesis repeats
    values across examples, and a repeated id is a redelivery or a conflict (tests/test_conflicts.py)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        try:
            uuid.UUID(value["id"])
        except ValueError:
            pass
        else:
            value = {**value, "id": str(uuid.uuid4())}
    return orjson.dumps(value)


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(arbitrary=st.lists(QUEUED_ITEM, min_size=1, max_size=8))
def test_any_queued_items_are_each_stored_once_or_dead_lettered_and_never_stop_their_batch_mates(rq, arbitrary):
    tag = uuid.uuid4().hex[:8]
    mates = [orjson.dumps(payload(s=f"{tag}-{i}")) for i in range(3)]
    rows_before, dead_before = ABEvent.objects.count(), rq.llen(queue.keys().dead)
    items = [queued(value) for value in arbitrary]
    queue.push([mates[0], *items[: len(items) // 2], mates[1], *items[len(items) // 2 :], mates[2]])

    result = writer.drain(batch_size=1000)

    assert result.error is None and result.batches == 1
    assert sorted(ABEvent.objects.filter(session_id__startswith=tag).values_list("session_id", flat=True)) == [
        f"{tag}-{i}" for i in range(3)
    ]
    stored = ABEvent.objects.count() - rows_before
    dead = rq.llen(queue.keys().dead) - dead_before
    assert stored == result.stored and dead == result.dead_lettered
    assert stored + dead == len(arbitrary) + len(mates)  # every item in exactly one place
    stats = queue.stats()
    assert (stats.depth, stats.inflight) == (0, 0)
