"""Client clocks: client_ts + (received_at - sent_at), clamped, stored beside the receive time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from server.apps.front.ingest.clocks import corrected_time
from server.apps.front.models import ABEvent
from server.apps.front.pipeline import queue
from server.apps.front.pipeline.writer import drain
from tests.factories import queue_item
from tests.ingest.conftest import BATCH_URL, SINGLE_URL, event, post

pytestmark = pytest.mark.django_db

# Tolerance for the time between building the request and the server stamping it.
SLACK = timedelta(seconds=2)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_skewed_client_clock_gets_a_corrected_event_time(client):
    skew = timedelta(hours=-3, minutes=-17)  # the browser's clock is 3h17m behind
    now_on_client = timezone.now() + skew
    events = [
        event(session_id="early", client_ts=iso(now_on_client - timedelta(seconds=40))),
        event(session_id="late", client_ts=iso(now_on_client - timedelta(seconds=5))),
    ]
    response = post(client, BATCH_URL, {"events": events, "sent_at": iso(now_on_client)})
    assert response.json()["accepted"] == 2
    drain()
    early = ABEvent.objects.get(session_id="early")
    late = ABEvent.objects.get(session_id="late")
    # The client's reading is kept as sent ...
    assert early.client_ts == now_on_client - timedelta(seconds=40)
    # ... and the event time is on the server's clock: 40 s / 5 s before receipt.
    assert abs(early.event_time - (early.timestamp - timedelta(seconds=40))) < SLACK
    assert abs(late.event_time - (late.timestamp - timedelta(seconds=5))) < SLACK
    assert late.event_time - early.event_time == timedelta(seconds=35)  # exact: same offset


def test_epoch_milliseconds_are_accepted_like_iso_8601(client):
    now_ms = int(timezone.now().timestamp() * 1000)
    body = {"events": [event(client_ts=now_ms - 60_000)], "sent_at": now_ms}
    assert post(client, BATCH_URL, body).json()["accepted"] == 1
    drain()
    row = ABEvent.objects.get()
    assert row.client_ts == datetime.fromtimestamp((now_ms - 60_000) / 1000, tz=UTC)
    assert abs(row.event_time - (row.timestamp - timedelta(seconds=60))) < SLACK


def test_event_time_is_never_in_the_future(client):
    sent = timezone.now()
    body = {"events": [event(client_ts=iso(sent + timedelta(hours=2)))], "sent_at": iso(sent)}
    post(client, BATCH_URL, body)
    drain()
    row = ABEvent.objects.get()
    assert row.event_time == row.timestamp


def test_event_time_is_bounded_in_the_past(client, settings):
    settings.AB_CLIENT_TS_MAX_AGE = 7 * 86_400
    sent = timezone.now()
    body = {"events": [event(client_ts=iso(sent - timedelta(days=40)))], "sent_at": iso(sent)}
    post(client, BATCH_URL, body)
    drain()
    row = ABEvent.objects.get()
    assert row.event_time == row.timestamp - timedelta(days=7)


def test_without_sent_at_the_client_time_is_kept_but_not_trusted(client):
    body = {"events": [event(client_ts="2020-01-01T00:00:00Z"), event(session_id="plain")]}
    post(client, BATCH_URL, body)
    drain()
    row = ABEvent.objects.get(session_id="s-1")
    assert row.client_ts == datetime(2020, 1, 1, tzinfo=UTC)
    assert row.event_time is None
    plain = ABEvent.objects.get(session_id="plain")
    assert plain.client_ts is None and plain.event_time is None


def test_single_endpoint_corrects_with_a_top_level_sent_at(client):
    sent = datetime(2001, 1, 1, 12, 0, tzinfo=UTC)  # a clock decades off
    body = event(client_ts=iso(sent - timedelta(seconds=3)), sent_at=iso(sent))
    assert post(client, SINGLE_URL, body).status_code == 201
    drain()
    row = ABEvent.objects.get()
    assert abs(row.event_time - (row.timestamp - timedelta(seconds=3))) < SLACK


@pytest.mark.parametrize("bad", ["tomorrow", "2024-13-01T00:00:00Z", True, 1e300, [1], {"t": 1}])
def test_an_unreadable_client_ts_is_rejected_by_field(client, bad):
    response = post(client, BATCH_URL, {"events": [event(client_ts=bad), event()], "sent_at": 0})
    assert response.json()["accepted"] == 1
    assert "client_ts" in response.json()["rejected"][0]["errors"]


def test_a_queued_item_from_before_the_clock_fields_still_drains(rq):
    """Items pushed by the previous release carry neither ``c`` nor ``w``."""
    old_item = queue_item(
        event_id="0b8a2f6e-1c1d-4a57-9d53-2a3c4f1e0001",
        session_id="old",
        variant="deep",
        event_type="onboarding_started",
    )
    queue.push([old_item])
    assert drain().stored == 1
    row = ABEvent.objects.get()
    assert row.session_id == "old" and row.client_ts is None and row.event_time is None


# Valid ISO-8601 and epoch milliseconds, but outside the years 1-9999 once in
# UTC: the writer could not turn them back into a datetime (OverflowError).
UNSTORABLE_TIMES = [
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:30:00+00:59",
    -62_135_596_800_001,  # one millisecond before 0001-01-01T00:00:00Z
    253_402_300_800_000,  # 10000-01-01T00:00:00Z
]


@pytest.mark.parametrize("bad", UNSTORABLE_TIMES)
def test_a_client_ts_outside_the_storable_years_is_refused_by_field_on_the_single_endpoint(client, bad):
    response = post(client, SINGLE_URL, event(client_ts=bad, sent_at=iso(timezone.now())))
    assert response.status_code == 400
    assert response.json()["success"] is False
    assert "client_ts" in response.json()["errors"]
    assert queue.stats().depth == 0


@pytest.mark.parametrize("bad", UNSTORABLE_TIMES)
def test_a_sent_at_outside_the_storable_years_is_refused_by_field(client, bad):
    single = post(client, SINGLE_URL, event(sent_at=bad))
    assert single.status_code == 400
    assert "sent_at" in single.json()["errors"]
    batch = post(client, BATCH_URL, {"events": [event()], "sent_at": bad})
    assert batch.status_code == 400
    assert "sent_at" in batch.json()["errors"]
    assert queue.stats().depth == 0


@pytest.mark.parametrize("bad", UNSTORABLE_TIMES)
def test_an_unstorable_client_ts_is_rejected_by_index_and_its_batch_mates_land(client, bad):
    events = [event(session_id="before"), event(session_id="poison", client_ts=bad), event(session_id="after")]
    response = post(client, BATCH_URL, {"events": events, "sent_at": iso(timezone.now())})
    assert response.status_code == 200
    assert response.json()["accepted"] == 2
    assert [r["index"] for r in response.json()["rejected"]] == [1]
    assert "client_ts" in response.json()["rejected"][0]["errors"]
    result = drain()
    assert (result.stored, result.dead_lettered) == (2, 0)
    assert sorted(ABEvent.objects.values_list("session_id", flat=True)) == ["after", "before"]


@pytest.mark.parametrize(
    ("edge", "expected"),
    [
        ("0001-01-01T01:00:00+01:00", datetime(1, 1, 1, tzinfo=UTC)),
        ("9999-12-31T22:59:59.999999-01:00", datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        (-62_135_596_800_000, datetime(1, 1, 1, tzinfo=UTC)),
    ],
)
def test_the_first_and_last_storable_instants_are_accepted_and_stored_exactly(client, edge, expected):
    response = post(client, BATCH_URL, {"events": [event(client_ts=edge)], "sent_at": iso(timezone.now())})
    assert response.json()["accepted"] == 1
    result = drain()
    assert (result.stored, result.dead_lettered) == (1, 0)
    row = ABEvent.objects.get()
    assert row.client_ts == expected
    # The corrected time is clamped to the last AB_CLIENT_TS_MAX_AGE seconds whatever the reading.
    assert row.timestamp - timedelta(seconds=7 * 86_400) <= row.event_time <= row.timestamp


def test_a_max_age_reaching_back_past_year_one_clamps_instead_of_overflowing():
    now = timezone.now()
    first = datetime(1, 1, 1, tzinfo=UTC)
    corrected = corrected_time(first, now, now, timedelta(days=800_000))  # ~2,190 years back
    assert corrected == first
