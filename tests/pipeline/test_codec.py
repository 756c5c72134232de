"""The queue's item codec and key naming: pure functions, plus two reads checked on fakeredis.

Narrow unit tests that need no real Redis (the protocol's scripts are tested
against the real server in test_pipeline.py and tests/faults/): fakeredis
holds a list for the read-only helpers that parse what sits in it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import fakeredis
import orjson
import pytest

from server.apps.front.pipeline import queue
from tests.factories import queue_item

RECEIVED = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_an_item_decodes_to_the_column_values_it_was_encoded_from() -> None:
    event_id = uuid.uuid4()
    client_ts = RECEIVED - timedelta(seconds=3, microseconds=7)
    event_time = RECEIVED - timedelta(seconds=2)
    sent = {
        "event_id": event_id,
        "session_id": "s-1",
        "variant": "deep",
        "event_type": "step_completed",
        "step_number": 3,
        "metadata": {"k": [1, 2]},
        "client_ts": client_ts,
        "seq": 7,
    }
    item = queue.encode_event(sent, user_id=42, received_at=RECEIVED, event_time=event_time)
    expected = {**sent, "timestamp": RECEIVED, "user_id": 42, "event_time": event_time}
    assert queue.event_fields(queue.decode_event(item)) == expected
    assert queue.event_id_of(item) == str(event_id)
    assert queue.received_micros(item) == queue.to_micros(RECEIVED)


def test_an_event_without_an_id_gets_one_and_no_clock_fields() -> None:
    item = queue.encode_event(
        {"session_id": "s", "variant": "fast", "event_type": "variant_assigned"}, user_id=None, received_at=RECEIVED
    )
    fields = queue.event_fields(queue.decode_event(item))
    assert isinstance(fields["event_id"], uuid.UUID)
    assert fields["client_ts"] is None and fields["event_time"] is None and fields["metadata"] == {}
    assert fields["seq"] is None and b'"q"' not in item  # nothing to number: the item stays as before


@pytest.mark.parametrize("item", [b"[1, 2]", b'"text"', b"{not json"])
def test_an_item_that_is_not_a_json_object_is_refused(item: bytes) -> None:
    with pytest.raises(ValueError):
        queue.decode_event(item)


def test_an_item_missing_a_column_is_refused() -> None:
    payload = queue.decode_event(queue_item())
    del payload["s"]
    with pytest.raises(KeyError):
        queue.event_fields(payload)


def test_microseconds_survive_the_round_trip_exactly() -> None:
    for moment in (queue.EPOCH, RECEIVED, datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)):
        assert queue.from_micros(queue.to_micros(moment)) == moment


def test_every_key_shares_the_prefix_and_one_cluster_hash_slot() -> None:
    k = queue.Keys("pfx")
    names = [k.queue, k.leases, k.dead, k.attempts, k.drain, k.inflight("abc")]
    assert len(set(names)) == len(names)
    assert all(name.startswith("pfx:{abflow}:") for name in names)
    assert k.inflight("abc").startswith(k.inflight_prefix)


def test_dead_letters_are_parsed_from_the_list_whatever_sits_in_it() -> None:
    client = fakeredis.FakeRedis()
    good = queue_item(session_id="poison")
    client.rpush(
        queue.keys().dead,
        queue.dead_entry(good, "IntegrityError: no such user"),
        b"not a dead-letter entry",
        orjson.dumps({"event": "{broken", "error": "undecodable", "at": 0}),
    )
    first, raw, broken = queue.dead_letters(0, 10, client=client)
    assert (first.index, first.event_id, first.error) == (0, queue.event_id_of(good), "IntegrityError: no such user")
    assert first.item == good.decode() and first.at is not None
    assert (raw.event_id, raw.error, raw.at) == (None, "not a dead-letter entry", None)
    assert (broken.event_id, broken.item, broken.at) == (None, "{broken", queue.EPOCH)
    assert queue.dead_letters(1, 1, client=client) == [raw]


def test_queue_stats_age_the_head_item_by_its_receive_time() -> None:
    client = fakeredis.FakeRedis()
    client.rpush(queue.keys().queue, queue_item(age_seconds=30), queue_item())
    stats = queue.stats(client=client)
    assert stats.depth == 2 and stats.inflight == 0 and stats.dead == 0
    assert stats.oldest_age_seconds is not None and 29 < stats.oldest_age_seconds < 60
    assert stats.last_drain_at is None
