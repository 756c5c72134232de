"""Schemathesis against the app, in-process (WSGI), real Redis and PostgreSQL.

For every operation of /api/schema/: generated requests (valid and invalid)
get responses that conform to the schema (status code documented, body and
headers as declared) and never a 5xx. On the ingest endpoints each example is
followed by a drain into ab_events: every event a 2xx accepted is stored
exactly once, and nothing a 4xx refused is.

Bounded for `make test` (ABFLOW_SCHEMATHESIS_EXAMPLES examples per operation,
default 50); a longer run: ABFLOW_SCHEMATHESIS_EXAMPLES=1000 make test ARGS=tests/contract.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from django.utils.dateparse import parse_datetime
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from rest_framework.authtoken.models import Token
from schemathesis.specs.openapi.checks import positive_data_acceptance

from server.apps.front.models import ABEvent
from server.apps.front.pipeline import writer
from server.wsgi import application

EXAMPLES = int(os.environ.get("ABFLOW_SCHEMATHESIS_EXAMPLES", "50"))


@schemathesis.serializer("text/plain")
def _beacon_body(ctx: Any, value: Any) -> bytes:
    """What navigator.sendBeacon sends: the JSON text as text/plain (schemathesis would send repr())."""
    if isinstance(value, bytes):
        return value
    return json.dumps(value).encode("utf-8")


@pytest.fixture
def wsgi_app(db: None) -> Iterator[Any]:
    """The project's WSGI application, inside the test's transaction.

    Each request ends with Django closing "old" database connections, the
    test's own included (its transaction holds the data). Django's test
    client unhooks that for its requests; the raw WSGI app needs the same.
    """
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield application
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


# Fixed, because schemathesis builds some requests (its coverage phase) at collection.
STAFF_TOKEN = "schemathesis-contract-staff-token-000001"


@pytest.fixture
def staff_token(django_user_model: Any) -> str:
    user = django_user_model.objects.create_user("contract-staff", password="x", is_staff=True)
    return Token.objects.create(user=user, key=STAFF_TOKEN).key


# Loaded at collection, one test per operation. (schemathesis.pytest.from_fixture
# fails under pytest 9: it sets the removed Function._nodeid.) The schema view
# needs no database.
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)


@schema.auth(refresh_interval=None).apply_to(path="/api/rest/front/ab-report/")
class StaffToken:
    """The report's credentials, given to schemathesis so that its auth checks can remove or spoil them."""

    def get(self, case: Any, ctx: Any) -> str:
        return STAFF_TOKEN

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Token {data}"}


# What JSON Schema cannot say about an event (docs/openapi.yaml states them as
# x-max-bytes / x-max-depth and in words): metadata's size, depth and values
# (no NUL, finite, 64-bit integers), and the event's whole size.
UNSCHEMATIZED_LIMITS = {"metadata", "event"}


def assert_valid_data_accepted(case: Any, response: Any) -> None:
    """Schemathesis's positive_data_acceptance, less the limits JSON Schema cannot express.

    A request generated as schema-valid may be refused only for those, and
    then only by those fields.
    """
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    if response.status_code == 400 and case.method == "POST":
        errors = response.json()["errors"]
        assert set(errors) <= UNSCHEMATIZED_LIMITS, errors
        return
    # 403: schemathesis fills the declared security schemes (tokenAuth, cookieAuth,
    # metricsToken) with made-up credentials, which are refused, as they should be.
    assert response.status_code < 400 or response.status_code == 403, (response.status_code, response.text)

    query = case.query or {}
    until = query.get("until")
    if isinstance(until, str) and until.strip() == "9999-12-31":
        return True
    for name in ("since", "until"):
        value = query.get(name)
        try:
            moment = parse_datetime(value.strip()) if isinstance(value, str) else None
        except ValueError:
            moment = None
        offset = moment.utcoffset() if moment is not None else None
        if offset is not None and abs(offset) >= timedelta(hours=16):
            return True
    return False


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if isinstance(value, str) else None
    except ValueError:
        return None


def accepted_events(case: Any, response: Any) -> list[dict[str, Any]]:
    """The events of ``case`` that a 2xx ``response`` said were queued."""
    if case.path.endswith("/ab-event/"):
        return [case.body] if response.status_code == 201 else []
    if response.status_code != 200:
        return []
    answer = response.json()
    refused = {item["index"] for item in answer["rejected"]}
    events = case.body["events"]
    accepted = [event for index, event in enumerate(events) if index not in refused]
    assert answer["accepted"] == len(accepted) == len(events) - len(refused)
    return accepted


def assert_stored_exactly_once(accepted: list[dict[str, Any]], before: set[uuid.UUID], rows_before: int) -> None:
    """Drain, then: one new row per accepted event, except an id already stored.

    An id already stored is a redelivery (nothing new) or, for a different
    event, an id conflict (pipeline/writer.py dead-letters it, by design);
    nothing else is dead-lettered: validation let nothing through that
    PostgreSQL refuses.
    """
    result = writer.drain(budget=30)
    assert result.error is None, result.error
    assert result.dead_lettered == result.conflicts, result
    ids = [_uuid(event.get("event_id")) for event in accepted]
    new_ids = {i for i in ids if i is not None} - before
    without_id = ids.count(None)
    assert ABEvent.objects.count() - rows_before == without_id + len(new_ids)
    assert set(ABEvent.objects.filter(event_id__in=new_ids).values_list("event_id", flat=True)) == new_ids
    # Conflicts only among the events whose id was taken (before, or earlier in the same batch).
    assert result.conflicts <= len(ids) - without_id - len(new_ids)


@schema.parametrize()
@hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_its_schema(case: Any, wsgi_app: Any, staff_token: str) -> None:
    is_ingest = case.method == "POST"
    if is_ingest:
        rows_before = ABEvent.objects.count()
        before = set(ABEvent.objects.values_list("event_id", flat=True))
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500, response.text
    assert_valid_data_accepted(case, response)
    if is_ingest:
        assert_stored_exactly_once(accepted_events(case, response), before, rows_before)
