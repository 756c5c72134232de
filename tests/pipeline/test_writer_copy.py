"""The COPY writer (pipeline/writer.py + pipeline/copyin.py) on real Redis and real PostgreSQL.

The promises of the writer are tested in test_pipeline, test_poison and
test_conflicts; here: that a batch really goes through one COPY and one
INSERT ... SELECT, that rows come out of COPY exactly as the model stores
them, the database's own messages for refused rows, the ids a batch really
inserted, and that the fast payload encoder is the generic one, faster.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from server.apps.front.models import ABEvent
from server.apps.front.pipeline import copyin, queue, writer
from tests.factories import queue_item as item

pytestmark = pytest.mark.django_db


def dead_reasons(result: writer.BatchResult) -> list[str]:
    return [orjson.loads(entry)["error"] for entry in result.dead]


def test_a_batch_is_one_insert_from_the_staging_table_however_many_events():
    items = [item(session_id=f"s-{i}") for i in range(500)]
    with CaptureQueriesContext(connection) as queries:
        result = writer.write_items(items)
    assert result.stored == 500
    inserts = [q["sql"] for q in queries.captured_queries if "INSERT" in q["sql"].upper()]
    assert len(inserts) == 1
    assert f"FROM {copyin.STAGING}" in inserts[0] and "ON CONFLICT DO NOTHING" in inserts[0]
    assert ABEvent.objects.count() == 500


def test_the_copy_columns_are_the_models_concrete_fields_but_the_auto_primary_key():
    expected = [f.column for f in ABEvent._meta.concrete_fields if f is not ABEvent._meta.pk]
    assert [c.column for c in copyin.COLUMNS] == expected


def test_a_row_comes_out_of_copy_exactly_as_the_model_stores_it(django_user_model):
    user = django_user_model.objects.create(username="copy-user")
    received = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    client_ts = datetime(2026, 3, 1, 11, 59, 58, 1, tzinfo=UTC)
    metadata = {"ms": 1250, "ratio": 0.1, "big": 1.5e300, "text": 'é\t\n\\ "q" 日本', "list": [1, None, True]}
    event_id = uuid.uuid4()
    queued = item(
        event_id=event_id,
        session_id="tab\tnew\nline\\",
        variant="deep",
        event_type="step_completed",
        step_number=-3,
        metadata=metadata,
        user_id=user.pk,
        received_at=received,
        client_ts=client_ts,
        event_time=received,
    )
    assert writer.write_items([queued]).stored == 1
    row = ABEvent.objects.get(event_id=event_id)
    expected = queue.event_fields(queue.decode_event(queued))
    for name, value in expected.items():
        if name == "metadata":  # jsonb gives 1.5e300 back as an int: equal as JSON numbers
            assert writer._same(row.metadata, value)
        else:
            assert getattr(row, name) == value, name
    assert row.metadata["text"] == metadata["text"]


def test_rows_the_database_refuses_are_dead_lettered_with_its_message_and_the_others_land():
    good = [item(session_id=f"good-{i}") for i in range(40)]
    too_long = item(session_id="x" * 101)  # varchar(100), checked by the INSERT
    nul_in_json = item(metadata={"x": "a\u0000b"})  # jsonb cannot hold \u0000, refused by the COPY
    no_such_user = item(user_id=987654321)  # foreign key, checked at once (SET CONSTRAINTS ALL IMMEDIATE)
    result = writer.write_items([*good[:10], too_long, *good[10:20], nul_in_json, *good[20:], no_such_user])

    assert result.stored == 40
    assert sorted(ABEvent.objects.values_list("session_id", flat=True)) == sorted(f"good-{i}" for i in range(40))
    reasons = dead_reasons(result)
    assert len(reasons) == 3
    assert any("value too long for type character varying(100)" in r for r in reasons)
    assert any("unsupported Unicode escape sequence" in r for r in reasons)
    assert any("violates foreign key constraint" in r for r in reasons)


def test_an_integer_outside_its_column_is_dead_lettered_naming_the_column():
    result = writer.write_items([item(step_number=2**40), item(session_id="fine")])
    assert result.stored == 1
    (reason,) = dead_reasons(result)
    assert "step_number" in reason and "outside the integer range" in reason


def test_inserted_lists_only_the_event_ids_this_batch_really_stored():
    first = [item() for _ in range(5)]
    assert len(writer.write_items(first).inserted) == 5
    new = [item() for _ in range(3)]
    result = writer.write_items(first[:2] + new)  # two redelivered, three new
    assert result.stored == 5
    assert sorted(result.inserted) == sorted(queue.event_id_of(x) for x in new)


def test_a_later_copy_of_an_event_id_lands_when_the_first_in_the_batch_was_refused():
    shared = uuid.uuid4()
    refused = item(event_id=shared, session_id="x" * 101)
    accepted = item(event_id=shared, session_id="right")
    result = writer.write_items([refused, accepted])
    assert (result.stored, len(result.dead), result.inserted) == (1, 1, [str(shared)])
    assert ABEvent.objects.get(event_id=shared).session_id == "right"


def test_a_batch_inside_an_outer_transaction_never_inserts_an_earlier_batchs_rows_again():
    # pytest-django runs this test in a transaction, as a caller might: no
    # COMMIT empties the staging table between the two batches.
    earlier = item(session_id="earlier")
    writer.write_items([earlier])
    ABEvent.objects.all().delete()
    writer.write_items([item(session_id="later")])
    assert list(ABEvent.objects.values_list("session_id", flat=True)) == ["later"]


def test_a_failed_round_is_rolled_back_and_the_transaction_goes_on():
    # The bisection's savepoint: after a refused round the same transaction
    # takes the next statements (no "current transaction is aborted").
    result = writer.write_items([item(session_id="x" * 101)] + [item(session_id=f"ok-{i}") for i in range(3)])
    assert result.stored == 3
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
_micros = st.integers(min_value=copyin._MIN_MICROS - 2, max_value=copyin._MAX_MICROS + 2) | st.sampled_from(
    [0, queue.to_micros(datetime(2026, 1, 1, tzinfo=UTC))]
)
_any = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4) | st.lists(st.integers(), max_size=2)
)
_payloads = st.fixed_dictionaries(
    {
        "id": st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper()) | st.uuids().map(lambda u: u.hex) | _any,
        "s": st.text(max_size=20) | _any,
        "v": st.sampled_from(["fast", "deep"]) | _any,
        "e": st.text(max_size=10) | _any,
        "t": _micros | _any,
    },
    optional={
        "n": st.none() | st.integers(min_value=-(2**33), max_value=2**33) | _any,
        "m": st.none() | st.dictionaries(st.text(max_size=5), _json_values, max_size=4) | _any,
        "u": st.none() | st.integers(min_value=-(2**33), max_value=2**33) | _any,
        "c": st.none() | _micros,
        "w": st.none() | _micros,
        "q": st.none() | st.integers(min_value=-(2**33), max_value=2**33) | _any,
    },
)


@pytest.mark.django_db(False)
@hypothesis_settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=_payloads)
def test_the_fast_encoder_gives_the_generic_encoders_bytes_or_leaves_the_payload_to_it(payload):
    assert copyin.FAST  # the model today: the drain takes the fast path
    try:
        generic_values = queue.event_fields(payload)
        generic = (str(generic_values["event_id"]), copyin.encode_row(generic_values))
    except Exception:
        generic = None
    try:
        fast = copyin.encode_item(payload)
    except Exception:
        return  # the writer then takes the generic path: nothing to compare
    assert fast == generic
