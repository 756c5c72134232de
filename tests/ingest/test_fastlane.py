"""The fast lane answers exactly as Django does, queues exactly what Django queues, and steps aside otherwise.

Three kinds of proof:

* every recorded case of test_request_path.py through the lane gives the recorded
  answer, and the lane did answer the plain ones itself (a lane that never
  answers would pass the first half);
* generated requests (headers, hosts, origins, schemes, cookies, bodies, and the
  settings that shape the answer) get the same status, headers *in the same
  order* and body from the lane as from Django's handler, and put the same event
  in the queue;
* a stack or setting the lane does not model switches it off.
"""

from __future__ import annotations

import io
import json
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.test import override_settings
from hypothesis import event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from server.apps.front.ingest.fastlane import BATCH_PATH, PATH, IngestFastLane
from server.apps.front.pipeline import queue
from tests.ingest.conftest import ALLOWED_ORIGIN
from tests.ingest.test_fuzz import EXAMPLES, FUZZ_SETTINGS, near_valid_events
from tests.ingest.test_request_path import CASES, answer_of, call, golden_path

pytestmark = pytest.mark.django_db(transaction=False)


class CountingLane(IngestFastLane):
    """The lane, counting the requests it answered itself."""

    def __init__(self, app: Callable[..., Any]) -> None:
        super().__init__(app)
        self.answered = 0

    def answer(self, environ: dict[str, Any]) -> Any:
        result = super().answer(environ)
        self.answered += result is not None
        return result


# The recorded cases the lane must answer itself, on both endpoints: plain anonymous JSON events.
LANE_CASES = {
    "valid",
    "text_plain_beacon",
    "cors_post_allowed",
    "cors_post_disallowed",
    "accept_json",
    "accept_any",
    "redis_down",
}


@pytest.mark.parametrize(("url", "name"), list(CASES), ids=[f"{u.split('/')[-2]}-{n}" for u, n in CASES])
def test_every_recorded_answer_is_the_same_through_the_lane(url: str, name: str, settings: Any) -> None:
    lanes: list[CountingLane] = []

    def wrap(app: WSGIHandler) -> CountingLane:
        lanes.append(CountingLane(app))
        return lanes[-1]

    got = answer_of(url, name, settings, wrap=wrap)
    assert got == json.loads(golden_path(url, name).read_text())
    assert lanes[0].answered == (1 if name in LANE_CASES else 0)


# --- generated requests, Django and the lane side by side ----------------------------------------------------

MAX_AGE_US = 7 * 86_400 * 1_000_000


def _queued(body: bytes) -> list[dict[str, Any]]:
    """The queue's items, emptied, with what differs between two runs normalised (ids made here, receive times)."""
    client = queue.get_redis()
    key = queue.keys(0).queue
    items = client.lrange(key, 0, -1)
    client.delete(key)
    sent = _client_ids(body)
    out = []
    for item in items:
        payload = queue.decode_event(item)
        received = payload.pop("t")
        if payload["id"] not in sent:
            payload["id"] = "<made by the server>"
        if "w" in payload:
            w = payload["w"]
            payload["w"] = "received" if w == received else "oldest" if w == received - MAX_AGE_US else w
        out.append(payload)
    return out


def _client_ids(body: bytes) -> set[str]:
    """The event ids the body carries, in their canonical form (any form ``uuid.UUID`` reads)."""
    try:
        data = json.loads(body)
    except ValueError:
        return set()
    events = data.get("events") if isinstance(data, dict) and "events" in data else [data]
    ids = set()
    for item in events if isinstance(events, list) else []:
        try:
            ids.add(str(uuid.UUID(str(item["event_id"]))))
        except (TypeError, KeyError, ValueError, AttributeError):
            continue
    return ids


def _environ(body: bytes, headers: dict[str, str], scheme: str, path: str = PATH) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "CONTENT_LENGTH": str(len(body)),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": "127.0.0.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    environ.update(headers)
    return environ


def _same_run(value: str) -> str:
    """A header value with what Django makes anew per request (a fresh CSRF secret, its cookie's expiry) masked."""
    value = re.sub(r"=[A-Za-z0-9]{32};", "=<new secret>;", value)  # whatever CSRF_COOKIE_NAME is
    return re.sub(r"expires=[^;]+;", "expires=<a year on>;", value)


def _side_by_side(body: bytes, headers: dict[str, str], scheme: str = "http", path: str = PATH) -> Iterator[Any]:
    django_app = WSGIHandler()
    lane = CountingLane(django_app)
    for app in (django_app, lane):
        status, response_headers, payload = call(app, _environ(body, headers, scheme, path))
        yield status, [(k, _same_run(v)) for k, v in response_headers if k != "Date"], payload, _queued(body)
    yield lane.answered


def assert_same_answer(body: bytes, headers: dict[str, str], scheme: str = "http", path: str = PATH) -> int:
    """Django's answer and queue == the lane's; returns whether the lane answered itself."""
    django_side, lane_side, answered = _side_by_side(body, headers, scheme, path)
    assert lane_side == django_side
    return answered


# Each request header from values the lane answers for ("plain") and values it hands to Django; a request
# is drawn either plain in every header or from both kinds, so that both sides are exercised often.
_PLAIN = {
    "CONTENT_TYPE": ["application/json", "application/json; charset=utf-8", "text/plain;charset=UTF-8"],
    "HTTP_HOST": ["127.0.0.1:8000", "localhost", "testserver"],
    "HTTP_ACCEPT": [None, "*/*", "application/json"],
    "HTTP_COOKIE": [None, "theme=dark"],
}
_OTHER = {
    "CONTENT_TYPE": ["application/json; charset=latin-1", "application/xml", ""],
    "HTTP_HOST": ["evil.example.org", "127.0.0.1:bad", None],
    "HTTP_ACCEPT": ["text/html", "application/json; indent=2"],
    "HTTP_COOKIE": ["sessionid=nope", "csrftoken=short", "a=1; csrftoken=x"],
}
# Headers that shape the answer whichever side serves it.
_ANY = {
    "HTTP_ORIGIN": [None, ALLOWED_ORIGIN, "https://evil.example.org", "null", "http://[bad", ""],
    "HTTP_X_FORWARDED_PROTO": [None, "https", "http", "https, http", " https "],
}


def _valid_event(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "session_id": draw(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)),
        "variant": draw(st.sampled_from(["fast", "deep"])),
        "event_type": draw(st.sampled_from(["variant_assigned", "step_completed", "onboarding_completed"])),
    }
    if draw(st.booleans()):
        event["event_id"] = str(draw(st.uuids()))
    if draw(st.booleans()):
        event["step_number"] = draw(st.integers(min_value=0, max_value=1000))
    if draw(st.booleans()):
        event["client_ts"] = draw(st.sampled_from(["2026-11-26T10:00:00Z", 1_790_000_000_000, "2020-01-01T00:00:00Z"]))
    return event


valid_events = st.composite(_valid_event)()
events = st.one_of(valid_events, near_valid_events())
_SENT_AT = st.sampled_from([None, "2026-01-01T00:00:00Z", 1767225600000, "yesterday", "", 1e300])
_BATCH_BODIES = st.one_of(
    st.builds(
        lambda batch, sent_at, extra: json.dumps(
            {"events": batch, **({} if sent_at is None else {"sent_at": sent_at}), **extra}
        ).encode(),
        st.lists(events, max_size=4),
        _SENT_AT,
        st.sampled_from([{}, {}, {"unknown": 1}, {"events": None}]),
    ),
    st.lists(events, max_size=3).map(lambda batch: json.dumps(batch).encode()),
    st.sampled_from([b'{"events": []}', b'{"events": {}}', b'{"events": "x"}', b'{"sent_at": null}', b"[]"]),
)
_SINGLE_BODIES = st.one_of(
    events.map(lambda event: json.dumps(event).encode()),
    events.map(lambda event: json.dumps({**event, "sent_at": "2026-01-01T00:00:00Z"}).encode()),
    st.sampled_from([b"", b"null", b"[]", b"{", b'{"session_id": NaN}', b"\xff\xfe", b'{"a":1}']),
)


@hypothesis_settings(FUZZ_SETTINGS, max_examples=3 * EXAMPLES)
@given(
    endpoint=st.sampled_from(["single", "batch"]),
    plain=st.booleans(),
    data=st.data(),
    scheme=st.sampled_from(["http", "https"]),
    hsts=st.sampled_from([0, 3600]),
    proxy_header=st.booleans(),
    ssl_redirect=st.booleans(),
)
def test_generated_requests_get_djangos_answer_and_queue_djangos_event(
    endpoint: str, plain: bool, data: st.DataObject, scheme: str, hsts: int, proxy_header: bool, ssl_redirect: bool
) -> None:
    body = data.draw(_SINGLE_BODIES if endpoint == "single" else _BATCH_BODIES, label="body")
    headers: dict[str, str] = {}
    for name, plain_values in _PLAIN.items():
        values = plain_values if plain else plain_values + _OTHER[name]
        value = data.draw(st.sampled_from(values), label=name)
        if value is not None:
            headers[name] = value
    for name, values in _ANY.items():
        value = data.draw(st.sampled_from(values), label=name)
        if value is not None:
            headers[name] = value
    with override_settings(
        CORS_ALLOWED_ORIGINS=[ALLOWED_ORIGIN],
        SECURE_HSTS_SECONDS=hsts,
        SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https") if proxy_header else None,
        # As in production: on, with the ingest paths exempt (settings.SECURE_REDIRECT_EXEMPT).
        SECURE_SSL_REDIRECT=ssl_redirect,
    ):
        answered = assert_same_answer(body, headers, scheme, PATH if endpoint == "single" else BATCH_PATH)
    event(f"{endpoint}: answered by the lane: {bool(answered)}")


def test_a_plain_event_is_answered_by_the_lane_with_djangos_answer() -> None:
    body = json.dumps({"session_id": "lane-1", "variant": "deep", "event_type": "step_completed", "step_number": 2})
    with override_settings(CORS_ALLOWED_ORIGINS=[ALLOWED_ORIGIN]):
        for headers in (
            {"CONTENT_TYPE": "application/json", "HTTP_HOST": "127.0.0.1:8000"},
            {"CONTENT_TYPE": "text/plain;charset=UTF-8", "HTTP_HOST": "localhost", "HTTP_ORIGIN": ALLOWED_ORIGIN},
            {"CONTENT_TYPE": "application/json", "HTTP_HOST": "localhost", "HTTP_COOKIE": "theme=dark"},
        ):
            assert assert_same_answer(body.encode(), headers) == 1


def test_a_secure_request_behind_the_proxy_gets_hsts_from_the_lane_as_from_django() -> None:
    body = json.dumps({"session_id": "lane-2", "variant": "fast", "event_type": "variant_assigned"}).encode()
    headers = {"CONTENT_TYPE": "application/json", "HTTP_HOST": "localhost", "HTTP_X_FORWARDED_PROTO": "https"}
    with override_settings(SECURE_HSTS_SECONDS=60, SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
        django_side, lane_side, answered = _side_by_side(body, headers)
    assert answered == 1
    assert lane_side == django_side
    assert ("Strict-Transport-Security", "max-age=60; includeSubDomains") in lane_side[1]


def test_a_full_queue_is_the_views_503_from_the_lane(rq: Any) -> None:
    body = json.dumps({"session_id": "lane-3", "variant": "fast", "event_type": "variant_assigned"}).encode()
    rq.rpush(queue.keys(0).queue, b"{}")  # one item, and a cap of one
    with override_settings(AB_QUEUE_MAX=1):
        django_app = WSGIHandler()
        lane = CountingLane(django_app)
        headers = {"CONTENT_TYPE": "application/json", "HTTP_HOST": "localhost"}
        answers = [call(app, _environ(body, headers, "http")) for app in (django_app, lane)]
    assert answers[0][0].startswith("503")
    assert answers[1] == answers[0]
    assert lane.answered == 1
    assert rq.llen(queue.keys(0).queue) == 1  # nothing queued by either


def test_an_ssl_redirect_is_left_to_django() -> None:
    body = json.dumps({"session_id": "lane-4", "variant": "fast", "event_type": "variant_assigned"}).encode()
    headers = {"CONTENT_TYPE": "application/json", "HTTP_HOST": "localhost"}
    with override_settings(SECURE_SSL_REDIRECT=True, SECURE_REDIRECT_EXEMPT=[]):
        django_side, lane_side, answered = _side_by_side(body, headers)
    assert answered == 0
    assert lane_side == django_side
    assert django_side[0].startswith("301")


# --- off when the stack is not the one it models ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"AB_FAST_LANE": False}, "AB_FAST_LANE is off"),
        ({"AB_THROTTLE_RATE": "100/s"}, "AB_THROTTLE_RATE is set"),
        ({"DISALLOWED_USER_AGENTS": []}, ""),
        ({"PREPEND_WWW": True}, "PREPEND_WWW"),
    ],
)
def test_the_lane_switches_off_for_settings_it_does_not_model(overrides: dict[str, Any], reason: str) -> None:
    lane = IngestFastLane(WSGIHandler())
    with override_settings(**overrides):
        assert lane.config.enabled is (reason == "")
        assert reason in lane.config.reason


def test_another_middleware_switches_the_lane_off(settings: Any) -> None:
    lane = IngestFastLane(WSGIHandler())
    assert lane.config.enabled
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django.middleware.gzip.GZipMiddleware"]
    assert not lane.config.enabled
    body = json.dumps({"session_id": "lane-5", "variant": "fast", "event_type": "variant_assigned"}).encode()
    environ = _environ(body, {"CONTENT_TYPE": "application/json", "HTTP_HOST": "localhost"}, "http")
    assert lane.answer(environ) is None
    assert environ["wsgi.input"].read() == body  # Django still reads the whole body


# --- what ops watch: the same metrics from the lane as from Django ---------------------------------------------


def _metrics() -> dict[str, float]:
    from prometheus_client import REGISTRY

    latency = "abflow_http_request_duration_seconds_count"
    labels = {"route": PATH.lstrip("/"), "method": "POST"}
    return {
        "accepted": REGISTRY.get_sample_value("abflow_events_accepted_total") or 0.0,
        "201": REGISTRY.get_sample_value(latency, {**labels, "status": "201"}) or 0.0,
        "503": REGISTRY.get_sample_value(latency, {**labels, "status": "503"}) or 0.0,
        "full": REGISTRY.get_sample_value("abflow_events_rejected_total", {"reason": "queue_full", "field": ""}) or 0.0,
    }


def _delta(app: Callable[..., Any], environ: dict[str, Any]) -> dict[str, float]:
    before = _metrics()
    call(app, environ)
    return {key: value - before[key] for key, value in _metrics().items()}


def test_the_lane_counts_what_django_counts(rq: Any) -> None:
    body = json.dumps({"session_id": "lane-6", "variant": "fast", "event_type": "variant_assigned"}).encode()
    headers = {"CONTENT_TYPE": "application/json", "HTTP_HOST": "localhost"}
    django_app = WSGIHandler()
    lane = CountingLane(django_app)
    accepted = [_delta(app, _environ(body, headers, "http")) for app in (django_app, lane)]
    assert accepted[0] == accepted[1] == {"accepted": 1, "201": 1, "503": 0, "full": 0}
    with override_settings(AB_QUEUE_MAX=1):
        full = [_delta(app, _environ(body, headers, "http")) for app in (django_app, lane)]
    assert full[0] == full[1] == {"accepted": 0, "201": 0, "503": 1, "full": 1}
    assert lane.answered == 2
