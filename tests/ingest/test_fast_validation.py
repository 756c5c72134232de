"""The event validator's fast path (``ABEventSerializer.fast_validation``) against DRF's full path.

The fast path may only ever accept: for any input, it answers None (and the
full path decides, with its own messages) or exactly what ``run_validation``
returns, the same keys in the same order and the same values.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rest_framework import serializers

from server.apps.front.ingest.serializers import ABEventSerializer
from tests.ingest.test_fuzz import FUZZ_SETTINGS, json_values, near_valid_events

VALID = {
    "event_id": "8c0e4c1a-5a8e-4d8b-9a53-3b1d2c1e0f11",
    "session_id": "  s-1 ",
    "variant": "fast",
    "event_type": "step_completed",
    "step_number": 3,
    "metadata": {"time_spent_ms": 1500, "category": "health", "ok": True, "score": 0.5, "none": None},
    "client_ts": "2024-05-01T10:00:00.250+03:00",
    "seq": 7,
    "unknown": [1, 2],
}


def full_path(data: Any) -> dict[str, Any] | None:
    try:
        return ABEventSerializer().run_validation(data)
    except serializers.ValidationError:
        return None


def assert_agrees(data: Any) -> dict[str, Any] | None:
    fast = ABEventSerializer().fast_validation(data)
    if fast is not None:
        full = full_path(data)
        assert full is not None, f"fast path accepted what DRF refuses: {data!r}"
        assert list(fast.items()) == list(full.items())
    return fast


def test_a_plain_valid_event_takes_the_fast_path_with_drfs_result() -> None:
    fast = assert_agrees(VALID)
    assert fast == {
        "event_id": uuid.UUID(VALID["event_id"]),
        "session_id": "s-1",
        "variant": "fast",
        "event_type": "step_completed",
        "step_number": 3,
        "metadata": VALID["metadata"],
        "client_ts": full_path(VALID)["client_ts"],  # type: ignore[index]
        "seq": 7,
    }
    minimal = {"session_id": "s", "variant": "deep", "event_type": "variant_assigned"}
    assert assert_agrees(minimal) == minimal
    nulls = {**minimal, "step_number": None, "client_ts": None, "seq": None}
    assert assert_agrees(nulls) == nulls
    nested = {**minimal, "metadata": {"a": {"b": [1, 2]}}}
    assert assert_agrees(nested) == nested


@pytest.mark.parametrize(
    "change",
    [
        {"event_id": 7},
        {"event_id": "not-a-uuid"},
        {"session_id": "   "},
        {"session_id": "x" * 101},
        {"session_id": "a\x00b"},
        {"session_id": "\ud800"},
        {"variant": "FAST"},
        {"event_type": 1},
        {"step_number": 1001},
        {"step_number": True},
        {"step_number": 1.0},
        {"metadata": None},
        {"metadata": []},
        {"metadata": {"f": float("nan")}},
        {"metadata": {"n": 2**63}},
        {"metadata": {"a\x00": 1}},
        {"metadata": {"blob": "x" * 4090}},
        {"metadata": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}},
        {"client_ts": "2024-13-01T00:00:00Z"},
        {"client_ts": True},
        {"seq": 0},
        {"seq": "3"},
        {"extra": "x" * 9000},
    ],
)
def test_anything_not_plainly_valid_goes_to_drf(change: dict[str, Any]) -> None:
    # Some of these DRF accepts (1.0 as a step_number): the fast path only has to leave them to it.
    assert assert_agrees({**VALID, **change}) is None


@FUZZ_SETTINGS
@given(st.one_of(near_valid_events(), json_values))
def test_fast_path_never_differs_from_drf(data: Any) -> None:
    assert_agrees(data)


def test_generated_event_ids_are_uuid4_strings_as_str_uuid4_writes_them() -> None:
    from server.apps.front.ingest.service import new_event_ids

    assert new_event_ids(0) == []
    ids = new_event_ids(2000)
    assert len(set(ids)) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
    # Every variant digit occurs (its two low bits are random).
    assert {text[19] for text in ids} == set("89ab")


@FUZZ_SETTINGS
@given(st.lists(json_values, max_size=6) | json_values)
def test_the_batch_envelope_takes_events_as_drfs_list_field_does(events: Any) -> None:
    from rest_framework.fields import ListField

    from server.apps.front.ingest.serializers import EventList

    mine, drf = EventList(), ListField()
    try:
        expected: Any = drf.run_validation(events)
    except serializers.ValidationError as exc:
        with pytest.raises(serializers.ValidationError) as caught:
            mine.run_validation(events)
        assert caught.value.detail == exc.detail
    else:
        assert mine.run_validation(events) == expected
