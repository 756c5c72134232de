"""The ingest endpoint: contract, hardening, authentication and Redis failures.

Real Redis and real PostgreSQL; events are drained with the real writer.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client import REGISTRY
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from devtools.embedded import free_port
from server.apps.front.ingest import authentication
from server.apps.front.models import ABEvent
from server.apps.front.ops import metrics
from server.apps.front.pipeline import queue
from server.apps.front.pipeline.writer import drain

URL = "/api/rest/front/ab-event/"
pytestmark = pytest.mark.django_db


def event(**overrides):
    data = {"session_id": "s-1", "variant": "fast", "event_type": "variant_assigned"}
    data.update(overrides)
    return data


def post_json(client: APIClient, body, **extra):
    raw = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(URL, data=raw, content_type="application/json", **extra)


@pytest.fixture
def client() -> APIClient:
    return APIClient()


def test_accepted_event_is_queued_not_written_until_drained(client, rq):
    response = post_json(client, event())
    assert response.status_code == 201
    assert response.json() == {"success": True}
    assert ABEvent.objects.count() == 0
    assert queue.stats().depth == 1
    assert drain().stored == 1
    assert ABEvent.objects.count() == 1
    assert queue.stats().depth == 0


def test_endpoint_makes_no_database_query_for_an_anonymous_event(client):
    with CaptureQueriesContext(connection) as queries:
        response = post_json(client, event())
    assert response.status_code == 201
    assert len(queries) == 0, [q["sql"] for q in queries]


def test_timestamp_is_the_receive_time_not_the_flush_time(client):
    before = timezone.now()
    assert post_json(client, event()).status_code == 201
    after = timezone.now()
    time.sleep(1.2)
    drain()
    stored = ABEvent.objects.get()
    assert before <= stored.timestamp <= after


def test_client_event_id_is_kept_and_a_retry_is_stored_once(client):
    event_id = str(uuid.uuid4())
    assert post_json(client, event(event_id=event_id)).status_code == 201
    assert post_json(client, event(event_id=event_id)).status_code == 201
    drain()
    assert ABEvent.objects.filter(event_id=event_id).count() == 1


def test_user_in_the_body_is_ignored(client):
    user = get_user_model().objects.create_user("victim", password="x" * 12)
    assert post_json(client, event(user=user.pk, user_id=user.pk)).status_code == 201
    drain()
    assert ABEvent.objects.get().user is None


def test_token_authenticated_post_links_the_user(client):
    user = get_user_model().objects.create_user("alice", password="x" * 12)
    token = Token.objects.create(user=user)
    response = post_json(client, event(), HTTP_AUTHORIZATION=f"Token {token.key}")
    assert response.status_code == 201
    drain()
    assert ABEvent.objects.get().user == user


def test_session_authenticated_post_links_the_user(client):
    user = get_user_model().objects.create_user("bob", password="x" * 12)
    client.force_login(user)
    assert post_json(client, event()).status_code == 201
    drain()
    assert ABEvent.objects.get().user == user


def test_text_plain_body_from_send_beacon_is_accepted(client):
    response = client.post(URL, data=json.dumps(event()), content_type="text/plain;charset=UTF-8")
    assert response.status_code == 201
    drain()
    assert ABEvent.objects.count() == 1


@pytest.mark.parametrize(
    "body",
    ['{"session_id": "s", "variant": ', "not json at all", b"\xff\xfe{}"],
    ids=["truncated", "garbage", "bad-utf8"],
)
def test_malformed_json_gets_the_error_envelope(client, body):
    response = post_json(client, body)
    assert response.status_code == 400
    payload = response.json()
    assert payload["success"] is False
    assert "body" in payload["errors"]


def test_unsupported_media_type_gets_the_error_envelope(client):
    response = client.post(URL, data="a=b", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.json()["success"] is False
    assert "content_type" in response.json()["errors"]


def test_get_is_not_allowed_and_answers_in_the_envelope(client):
    response = client.get(URL)
    assert response.status_code == 405
    assert response.json()["success"] is False


def test_body_that_is_not_an_object_is_rejected(client):
    response = post_json(client, [event()])
    assert response.status_code == 400
    assert response.json()["errors"]["non_field_errors"]


# --- hardening: each case gets a 4xx naming the field ---------------------------

HARDENING_CASES = {
    "missing-session": ({"session_id": None}, "session_id"),
    "session-too-long": ({"session_id": "x" * 101}, "session_id"),
    # The schema's maxLength is about the string as sent: whitespace that would be trimmed counts.
    "session-too-long-with-trimmed-space": ({"session_id": "x" * 100 + " "}, "session_id"),
    "session-nul": ({"session_id": "abc\x00def"}, "session_id"),
    "session-number": ({"session_id": 12345}, "session_id"),
    "session-lone-surrogate": ('"session_id": "\\ud800abc"', "session_id"),
    "variant-invalid": ({"variant": "invalid"}, "variant"),
    "event-type-invalid": ({"event_type": "clicked"}, "event_type"),
    "step-negative": ({"step_number": -1}, "step_number"),
    "step-over-range": ({"step_number": 1001}, "step_number"),
    "step-over-int32": ({"step_number": 2**31}, "step_number"),
    "step-float": ({"step_number": 1.5}, "step_number"),
    "step-nan": ('"step_number": NaN', "step_number"),
    "event-id-not-uuid": ({"event_id": "123"}, "event_id"),
    # DRF's UUIDField reads integers as UUID(int=...): 7 and true would be ids.
    "event-id-integer": ({"event_id": 7}, "event_id"),
    "event-id-true": ({"event_id": True}, "event_id"),
    "event-id-uuid-as-integer": ({"event_id": 2**128 - 1}, "event_id"),
    "metadata-list": ({"metadata": [1, 2]}, "metadata"),
    "metadata-string": ({"metadata": "x"}, "metadata"),
    "metadata-nan": ('"metadata": {"time_spent_ms": NaN}', "metadata"),
    "metadata-infinity": ('"metadata": {"t": Infinity}', "metadata"),
    "metadata-overflow-float": ('"metadata": {"t": 1e999}', "metadata"),
    "metadata-nul": ({"metadata": {"note": "a\x00b"}}, "metadata"),
    "metadata-nul-key": ({"metadata": {"a\x00": 1}}, "metadata"),
    "metadata-lone-surrogate": ('"metadata": {"note": "\\udc00"}', "metadata"),
    "metadata-too-deep": ({"metadata": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}, "metadata"),
    "metadata-too-large": ({"metadata": {"blob": "x" * 5000}}, "metadata"),
    "metadata-int-over-int64": ({"metadata": {"n": 2**64 - 1}}, "metadata"),
}


@pytest.mark.parametrize("override,field", HARDENING_CASES.values(), ids=HARDENING_CASES.keys())
def test_hardening_rejects_with_a_4xx_naming_the_field(client, override, field):
    if isinstance(override, str):
        # Raw JSON fragments: things json.dumps would not produce.
        body = '{"session_id": "s-1", "variant": "fast", "event_type": "variant_assigned", %s}' % override
        if override.startswith('"session_id"'):
            body = '{"variant": "fast", "event_type": "variant_assigned", %s}' % override
    else:
        data = event(**override)
        data = {k: v for k, v in data.items() if v is not None}
        body = json.dumps(data)
    response = post_json(client, body)
    assert response.status_code == 400, response.content
    payload = response.json()
    assert payload["success"] is False
    assert field in payload["errors"], payload
    assert queue.stats().depth == 0


def test_largest_accepted_values_are_written_by_postgresql(client):
    """What validation lets through, PostgreSQL must store (no failure at flush time)."""
    accepted = [
        event(session_id="x" * 100, step_number=1000),
        event(metadata={"a": {"b": {"c": {"d": {"e": 1}}}}}),
        event(metadata={"n": 2**63 - 1, "f": -1.5e300, "s": "ü漢字🙂", "l": [None, True, 0]}),
        event(metadata={"blob": "x" * 3900}),
    ]
    for data in accepted:
        assert post_json(client, data).status_code == 201, data
    result = drain()
    assert result.stored == len(accepted)
    assert result.dead_lettered == 0
    assert ABEvent.objects.count() == len(accepted)


# --- Redis failures -----------------------------------------------------------------


def test_redis_down_gives_503_with_retry_after_in_under_a_second(client, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    started = time.monotonic()
    response = post_json(client, event())
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["success"] is False
    assert "queue" in response.json()["errors"]
    assert int(response["Retry-After"]) > 0
    assert elapsed < 1.0


def test_unresponsive_redis_gives_503_in_under_a_second(client, settings):
    """A Redis that accepts connections but never answers (e.g. stopped with SIGSTOP)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        settings.REDIS_URL = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        started = time.monotonic()
        response = post_json(client, event())
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert response.status_code == 503
    assert elapsed < 1.0


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def log_records():
    """Records of django.request and abflow.metrics (the "django" logger does not propagate to caplog)."""
    handler = Records()
    loggers = [logging.getLogger("django.request"), logging.getLogger("abflow.metrics")]
    metrics.REJECTIONS.flush()  # what earlier tests left pending
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.records
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.mark.parametrize("cause", ["redis_down", "queue_full"])
def test_503s_are_logged_per_class_not_per_request(client, settings, log_records, cause):
    if cause == "redis_down":
        settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    else:
        settings.AB_QUEUE_MAX = 0
    codes = [post_json(client, event()).status_code for _ in range(20)]
    codes.append(client.post(BATCH_URL, {"events": [event()]}, format="json").status_code)
    metrics.REJECTIONS.flush()
    assert codes == [503] * 21
    assert [r for r in log_records if r.name == "django.request"] == []
    summaries = [r for r in log_records if r.getMessage() == "ab_rejected" and r.reason == cause]
    assert sum(r.count for r in summaries) == 21
    assert len(summaries) <= 2  # the first at once, the rest as one count


def test_a_500_is_still_logged_by_django(client, log_records, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("server.apps.front.ingest.service.enqueue", broken)
    client.raise_request_exception = False
    response = post_json(client, event())
    assert response.status_code == 500
    assert response.json() == {"success": False, "errors": {"server": ["Internal Server Error."]}}
    assert [r.levelname for r in log_records if r.name == "django.request"] == ["ERROR"]


def test_full_queue_gives_503_backpressure_and_keeps_what_was_queued(client, settings):
    settings.AB_QUEUE_MAX = 3
    codes = [post_json(client, event(session_id=f"s-{i}")).status_code for i in range(5)]
    assert codes == [201, 201, 201, 503, 503]
    assert queue.stats().depth == 3
    drain()
    assert ABEvent.objects.count() == 3


def test_receive_time_survives_a_long_queue_wait(client):
    assert post_json(client, event()).status_code == 201
    # Simulate a backlog: the head of the queue is older than the flush.
    stats = queue.stats()
    assert stats.oldest_age_seconds is not None and stats.oldest_age_seconds < 5
    drain()
    assert timezone.now() - ABEvent.objects.get().timestamp < timedelta(seconds=5)


# --- no 5xx for any input: every answer in the envelope, in production and in DEBUG -------

BATCH_URL = "/api/rest/front/ab-events/"
ENDPOINTS = [URL, BATCH_URL]
VALID_EVENT = b'{"session_id": "s-1", "variant": "fast", "event_type": "variant_assigned"}'


@pytest.fixture(params=[False, True], ids=["production", "debug"])
def debug(request, settings):
    settings.DEBUG = request.param
    return request.param


def send(client: APIClient, url: str, body: bytes, content_type: str = "application/json", **extra):
    """POST raw bytes: client.post() would re-encode them in the declared charset first."""
    return client.generic("POST", url, body, content_type=content_type, **extra)


def assert_envelope(response, status: int, field: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    payload = json.loads(response.content.decode("utf-8"))
    assert payload["success"] is False
    assert field in payload["errors"], payload
    return payload


def as_batch(event_json: bytes) -> bytes:
    return b'{"events": [%s, %s]}' % (event_json, VALID_EVENT)


@pytest.mark.parametrize("url", ENDPOINTS)
@pytest.mark.parametrize(
    "charset", ["rot13", "base64", "hex", "zlib", "bz2", "uu", "quopri", "no-such-charset", "undefined", "punycode"]
)
@pytest.mark.parametrize("body", [b"{", VALID_EVENT], ids=["broken", "valid"])
def test_a_charset_that_is_not_a_text_encoding_gets_415(client, debug, url, charset, body):
    response = send(client, url, body, content_type=f"application/json; charset={charset}")
    assert_envelope(response, 415, "content_type")
    assert queue.stats().depth == 0


@pytest.mark.parametrize("charset", ["rot13", "base64", "undefined", "punycode"])
def test_a_useless_charset_with_a_query_string_is_no_500_before_any_middleware(client, debug, charset):
    # Django decodes the query string with the request's charset while it builds the request.
    content_type = f"application/json; charset={charset}"
    for url in ENDPOINTS:
        assert_envelope(send(client, f"{url}?x=1&y=%ff", VALID_EVENT, content_type=content_type), 415, "content_type")
    assert client.get("/healthz?x=1", content_type=content_type).status_code == 200
    assert queue.stats().depth == 0


def test_a_body_in_its_declared_text_charset_is_still_read(client):
    body = VALID_EVENT.decode().replace("s-1", "ßü").encode("utf-16")
    assert send(client, URL, body, content_type="application/json; charset=utf-16").status_code == 201
    drain()
    assert ABEvent.objects.get().session_id == "ßü"


DEEP_BODIES = {
    # Past orjson's 1,024 levels: the lenient parser would recurse to a RecursionError.
    "array-1025": b"[" * 1025 + b"]" * 1025,
    "object-5000": b'{"a":' * 5000 + b"1" + b"}" * 5000,
}


@pytest.mark.parametrize("url", ENDPOINTS)
@pytest.mark.parametrize("body", DEEP_BODIES.values(), ids=DEEP_BODIES.keys())
def test_a_body_nested_too_deeply_to_parse_gets_400(client, debug, url, body):
    assert_envelope(send(client, url, body), 400, "body")
    assert queue.stats().depth == 0


@pytest.mark.parametrize("url", ENDPOINTS)
def test_a_deep_body_the_lenient_parser_reads_gets_a_4xx(client, debug, url):
    # Within orjson's depth, but NaN sends it to the stdlib parser, which may
    # or may not reach the recursion limit (that depends on the stack's depth).
    body = b'{"t": NaN, "x": ' + b"[" * 990 + b"]" * 990 + b"}"
    for sent in (body, b'{"events": [%s]}' % body):
        response = send(client, url, sent)
        assert response.status_code in (200, 400), response.content
        assert json.loads(response.content)["success"] is (response.status_code == 200)
    assert queue.stats().depth == 0


def nested_event(key: str, levels: int) -> bytes:
    return VALID_EVENT[:-1] + b', "%s": %s1%s}' % (key.encode(), b'{"a":' * levels, b"}" * levels)


@pytest.mark.parametrize("levels", [300, 950])
@pytest.mark.parametrize(("key", "field"), [("metadata", "metadata"), ("unknown_key", "event")])
def test_an_event_nested_too_deeply_to_measure_is_refused_by_field(client, debug, key, field, levels):
    body = nested_event(key, levels)
    assert_envelope(send(client, URL, body), 400, field)
    response = send(client, BATCH_URL, as_batch(body))
    assert response.status_code == 200
    assert response.json()["accepted"] == 1
    assert field in response.json()["rejected"][0]["errors"]
    drain()
    assert ABEvent.objects.count() == 1


LONE_SURROGATES = {
    "variant": b'"variant": "\\ud800"',
    "event_type": b'"event_type": "x\\udfff"',
    "session_id": b'"session_id": "\\ud800"',
    "event_id": b'"event_id": "\\udc00"',
    "client_ts": b'"client_ts": "2024-01-01T00:00:00Z\\ud800"',
    "metadata": b'"metadata": {"\\ud800": 1}',
}


def with_field(fragment: bytes) -> bytes:
    # A later key wins in JSON objects: the fragment replaces the valid value.
    return VALID_EVENT[:-1] + b", " + fragment + b"}"


@pytest.mark.parametrize(("field", "fragment"), LONE_SURROGATES.items(), ids=LONE_SURROGATES.keys())
def test_a_lone_surrogate_is_refused_without_breaking_the_answer(client, debug, field, fragment):
    assert_envelope(send(client, URL, with_field(fragment)), 400, field)
    response = send(client, BATCH_URL, as_batch(with_field(fragment)))
    assert response.status_code == 200
    payload = json.loads(response.content.decode("utf-8"))
    assert payload["accepted"] == 1
    assert field in payload["rejected"][0]["errors"]


@pytest.mark.parametrize("url", ENDPOINTS)
def test_gzip_bodies_take_the_same_paths(client, debug, url):
    deep = gzip.compress(DEEP_BODIES["array-1025"])
    assert_envelope(send(client, url, deep, HTTP_CONTENT_ENCODING="gzip"), 400, "body")
    rot13 = gzip.compress(VALID_EVENT)
    response = send(client, url, rot13, content_type="text/plain; charset=rot13", HTTP_CONTENT_ENCODING="gzip")
    assert_envelope(response, 415, "content_type")
    assert_envelope(send(client, url, b"not gzip", HTTP_CONTENT_ENCODING="gzip"), 400, "body")
    assert_envelope(send(client, url, VALID_EVENT, HTTP_CONTENT_ENCODING="br"), 415, "content_encoding")


@pytest.mark.parametrize("path", ["/api/rest/front/ab-event", "/api/rest/front/ab-events", "/api/rest/front/nope/"])
def test_a_post_to_no_endpoint_gets_404_in_the_envelope(client, debug, path):
    # Without the slash CommonMiddleware would redirect (a POST turned GET) or, in DEBUG, raise.
    assert_envelope(send(client, path, VALID_EVENT), 404, "path")


@pytest.mark.parametrize("url", ENDPOINTS)
def test_request_level_errors_are_in_the_envelope(client, debug, url, settings):
    assert_envelope(client.get(url), 405, "method")
    assert_envelope(send(client, url, VALID_EVENT, HTTP_ACCEPT="text/html"), 406, "accept")
    assert_envelope(send(client, url, VALID_EVENT, content_type="application/xml"), 415, "content_type")
    assert_envelope(send(client, url, VALID_EVENT, HTTP_HOST="bad host"), 400, "request")
    settings.AB_MAX_BODY_BYTES = 1024
    assert_envelope(send(client, url, b" " * 2000), 413, "body")


# --- PostgreSQL down: credentials must not turn ingest into a 500 ---------------------------


@contextmanager
def database_unreachable(port: int | None = None, connect_timeout: int | None = None) -> Iterator[None]:
    """This process's connection really cannot reach PostgreSQL: closed, then pointed at a dead port."""
    saved_port = connection.settings_dict["PORT"]
    saved_options = connection.settings_dict["OPTIONS"]
    connection.close()
    connection.settings_dict["PORT"] = str(port or free_port())
    if connect_timeout is not None:
        connection.settings_dict["OPTIONS"] = {**saved_options, "connect_timeout": connect_timeout}
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["PORT"] = saved_port
        connection.settings_dict["OPTIONS"] = saved_options


@pytest.fixture
def outage_state():
    authentication.OUTAGE.reset()
    yield authentication.OUTAGE
    authentication.OUTAGE.reset()


def anonymous_by_outage(method: str) -> float:
    return REGISTRY.get_sample_value("abflow_auth_db_unavailable_total", {"method": method}) or 0.0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("url", ENDPOINTS)
@pytest.mark.parametrize("method", ["token", "session"])
def test_with_postgresql_down_a_token_or_session_event_is_accepted_as_anonymous(outage_state, url, method):
    user = get_user_model().objects.create_user("carol", password="x" * 12)
    client = APIClient()
    if method == "token":
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    else:
        client.force_login(user)
    body = event() if url == URL else {"events": [event()]}
    before = anonymous_by_outage(method)
    with database_unreachable():
        response = client.post(url, body, format="json")
    assert response.status_code in (200, 201), response.content
    assert response.json()["success"] is True
    assert anonymous_by_outage(method) == before + 1
    assert drain().stored == 1
    assert ABEvent.objects.get().user is None
    # With the database back (and the breaker reset) the same credentials link the user again.
    outage_state.reset()
    assert client.post(url, body, format="json").status_code in (200, 201)
    drain()
    assert ABEvent.objects.filter(user=user).count() == 1


@pytest.mark.django_db(transaction=True)
def test_csrf_is_enforced_for_session_users_while_the_database_answers(outage_state):
    user = get_user_model().objects.create_user("dave", password="x" * 12)
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    refused = post_json(client, event())
    assert refused.status_code == 403
    assert "auth" in refused.json()["errors"]
    # Unreachable: the cookie proves nothing, the event is anonymous, as without the cookie.
    with database_unreachable():
        assert post_json(client, event()).status_code == 201
    drain()
    assert ABEvent.objects.get().user is None


@pytest.mark.django_db(transaction=True)
def test_an_unresponsive_database_is_waited_for_once_then_skipped(outage_state, monkeypatch):
    """A host that accepts connections but never answers: each lookup would wait for the connect timeout."""
    import socket

    user = get_user_model().objects.create_user("erin", password="x" * 12)
    client = APIClient(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    monkeypatch.setattr(authentication, "BACKOFF_SECONDS", 1.5)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        with database_unreachable(port=listener.getsockname()[1], connect_timeout=1):
            timings = []
            for _ in range(4):
                started = time.monotonic()
                assert post_json(client, event()).status_code == 201
                timings.append(time.monotonic() - started)
    finally:
        listener.close()
    assert timings[0] >= 0.9  # the one lookup that waited for the timeout
    assert max(timings[1:]) < 0.5, timings
    time.sleep(1.6)  # the breaker closes: the database is asked again, and answers
    assert post_json(client, event()).status_code == 201
    drain()
    assert ABEvent.objects.filter(user=user).count() == 1
    assert ABEvent.objects.filter(user=None).count() == 4
