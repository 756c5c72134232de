"""Edge cases of the ingest fast lane (server/apps/front/ingest/fastlane.py), from an adversarial review.

Each test runs Django's handler and the lane on the same request and holds their answers (and queued events,
and metrics) equal. The first group are inputs where the two once differed, each now handed to Django by the
lane (an open authentication breaker, an unreadable body, Apache's script URL, DRF settings the lane does not
model); the rest are probes that agreed from the start and stay as regression tests.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.test import override_settings

from server.apps.front.ingest.authentication import OUTAGE
from server.apps.front.ingest.fastlane import BATCH_PATH, PATH
from tests.ingest.conftest import ALLOWED_ORIGIN
from tests.ingest.test_fastlane import (
    CountingLane,
    _environ,
    _queued,
    _same_run,
    _side_by_side,
    assert_same_answer,
)
from tests.ingest.test_request_path import call

pytestmark = pytest.mark.django_db(transaction=False)

PLAIN = {"CONTENT_TYPE": "application/json", "HTTP_HOST": "localhost"}


def _event(**extra: Any) -> dict[str, Any]:
    return {"session_id": "rv-1", "variant": "fast", "event_type": "variant_assigned", **extra}


def _body(value: Any) -> bytes:
    return json.dumps(value).encode()


@pytest.fixture(autouse=True)
def _no_outage() -> Any:
    OUTAGE.reset()
    yield
    OUTAGE.reset()


# --- inputs that once differed: the lane now hands them to Django ------------------------------------


def test_while_the_auth_breaker_is_open_django_answers_without_vary_cookie_and_the_lane_steps_aside() -> None:
    """After one request with a session cookie hit a PostgreSQL error, OUTAGE is 'down' for 5 s.

    In that window IngestSessionAuthentication returns None without touching request.user, so the
    session is never accessed and SessionMiddleware adds no ``Vary: Cookie``.
    """
    OUTAGE.failed()  # what one cookie-carrying request during a PostgreSQL blip does
    with override_settings(CORS_ALLOWED_ORIGINS=[ALLOWED_ORIGIN]):
        django_side, lane_side, answered = _side_by_side(_body(_event()), {**PLAIN, "HTTP_ORIGIN": ALLOWED_ORIGIN})
    assert answered == 0
    assert lane_side == django_side
    assert ("Vary", "origin") in django_side[1]


def test_while_the_auth_breaker_is_open_a_batch_goes_to_django_too() -> None:
    OUTAGE.failed()
    django_side, lane_side, answered = _side_by_side(_body({"events": [_event()]}), PLAIN, path=BATCH_PATH)
    assert answered == 0
    assert lane_side == django_side


class _BrokenInput:
    """A wsgi.input whose read fails: the client went away mid-body (mod_wsgi, uWSGI raise OSError)."""

    def read(self, *args: Any) -> bytes:
        raise OSError("request data read error")

    def readline(self, *args: Any) -> bytes:
        raise OSError("request data read error")


def _broken_environ(path: str = PATH) -> dict[str, Any]:
    environ = _environ(b"", PLAIN, "http", path)
    environ["CONTENT_LENGTH"] = "60"
    environ["wsgi.input"] = _BrokenInput()
    return environ


@pytest.mark.parametrize("path", [PATH, BATCH_PATH])
def test_an_unreadable_body_is_djangos_400_through_the_lane_too(path: str) -> None:
    django_app = WSGIHandler()
    django_answer = call(django_app, _broken_environ(path))
    assert django_answer[0].startswith(
        "400"
    )  # {"success":false,"errors":{"body":["The request body could not be read."]}}
    lane = CountingLane(django_app)
    lane_answer = call(lane, _broken_environ(path))  # the lane hands Django a stream that fails the same way
    assert lane_answer == django_answer
    assert lane.answered == 0


def test_a_script_url_goes_to_django_whose_path_then_is_not_redirect_exempt() -> None:
    """Behind Apache mod_rewrite (SCRIPT_URL/REDIRECT_URL in the environ), Django's request.path has a script
    prefix, so SECURE_REDIRECT_EXEMPT (matched on request.path) does not exempt the ingest path: a 301."""
    body = _body(_event())
    headers = {**PLAIN, "SCRIPT_URL": "/app" + PATH}
    with override_settings(SECURE_SSL_REDIRECT=True):  # production: on, ingest paths exempt
        django_side, lane_side, _answered = _side_by_side(body, headers)
    assert django_side[0].startswith("301")
    assert lane_side == django_side


def test_a_script_url_is_timed_as_django_times_it() -> None:
    """Same environ, no redirect: Django's IngestLatencyMiddleware tests request.path (with the script
    prefix) and records nothing; so does the lane, which hands the request on."""
    from prometheus_client import REGISTRY

    def count() -> float:
        labels = {"route": PATH.lstrip("/"), "method": "POST", "status": "201"}
        return REGISTRY.get_sample_value("abflow_http_request_duration_seconds_count", labels) or 0.0

    body = _body(_event())
    django_app = WSGIHandler()
    deltas = []
    for app in (django_app, CountingLane(django_app)):
        before = count()
        environ = _environ(body, {**PLAIN, "SCRIPT_URL": "/app" + PATH}, "http")
        status, _headers, _payload = call(app, environ)
        assert status.startswith("201")
        _queued(body)
        deltas.append(count() - before)
    assert deltas[1] == deltas[0]


def test_a_drf_versioning_class_on_the_view_switches_the_lane_off(monkeypatch: Any) -> None:
    """REST_FRAMEWORK["DEFAULT_VERSIONING_CLASS"] lands on the view class at import. With host-name versioning
    and ALLOWED_VERSIONS, Django answers 404 for an unknown version's host."""
    from rest_framework.versioning import HostNameVersioning

    from server.apps.front.ingest import views

    class OnlyV1(HostNameVersioning):
        allowed_versions = ["v1"]

    monkeypatch.setattr(views.track_ab_event.cls, "versioning_class", OnlyV1)
    with override_settings(ALLOWED_HOSTS=["*"]):
        django_side, lane_side, _answered = _side_by_side(_body(_event()), {**PLAIN, "HTTP_HOST": "v2.example.com"})
    assert django_side[0].startswith("404")
    assert lane_side == django_side


def test_another_drf_exception_handler_switches_the_lane_off(rq: Any) -> None:
    """The lane's 503 is the envelope's, with Retry-After; DRF's default handler answers otherwise."""
    from django.conf import settings

    from server.apps.front.pipeline import queue

    rq.rpush(queue.keys(0).queue, b"{}")
    rest = {**settings.REST_FRAMEWORK, "EXCEPTION_HANDLER": "rest_framework.views.exception_handler"}
    with override_settings(AB_QUEUE_MAX=1, REST_FRAMEWORK=rest):
        django_app = WSGIHandler()
        answers = [
            call(app, _environ(_body(_event()), PLAIN, "http")) for app in (django_app, CountingLane(django_app))
        ]
    assert answers[0][0].startswith("503")
    assert answers[1][1:] == answers[0][1:]


def test_unauthenticated_user_none_switches_the_lane_off() -> None:
    from django.conf import settings

    rest = {**settings.REST_FRAMEWORK, "UNAUTHENTICATED_USER": None}
    with override_settings(REST_FRAMEWORK=rest):
        django_app = WSGIHandler()
        answers = [
            call(app, _environ(_body(_event()), PLAIN, "http"))[0] for app in (django_app, CountingLane(django_app))
        ]
        _queued(b"")
    assert answers[1] == answers[0]


# --- probes that agreed ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["localhost.", "LOCALHOST", "LocalHost:8000", "[::1]", "[::1]:8000", "127.0.0.1.", "localhost:", "localhost:0"],
)
def test_the_lane_agrees_with_django_on_odd_hosts(host: str) -> None:
    assert_same_answer(_body(_event()), {**PLAIN, "HTTP_HOST": host})


@pytest.mark.parametrize(
    "host", ["foo.localhost", "localhost..", " localhost", "localhost ", "[::1", "[::2]", "localhost:abc"]
)
def test_the_lane_agrees_with_django_on_odd_hosts_debug_empty_allowed_hosts(host: str) -> None:
    with override_settings(DEBUG=True, ALLOWED_HOSTS=[]):
        assert_same_answer(_body(_event()), {**PLAIN, "HTTP_HOST": host})


@pytest.mark.parametrize(
    "origin",
    [
        "null",
        ALLOWED_ORIGIN + "/",
        ALLOWED_ORIGIN + "/path?x=1",
        "HTTPS://app.example.com",
        "https://APP.example.com",
        "https://app.example.com:443",
        " https://app.example.com",
        "https://app.example.com\t",
        "http://[::1",
        "*",
    ],
)
@pytest.mark.parametrize(
    "cors",
    [
        {"CORS_ALLOWED_ORIGINS": [ALLOWED_ORIGIN]},
        {"CORS_ALLOWED_ORIGINS": [ALLOWED_ORIGIN, "null"]},
        {"CORS_ALLOW_ALL_ORIGINS": True},
        {"CORS_ALLOW_ALL_ORIGINS": True, "CORS_ALLOW_CREDENTIALS": False},
        {"CORS_ALLOWED_ORIGIN_REGEXES": [r"^https://.*\.example\.com$"], "CORS_EXPOSE_HEADERS": []},
    ],
)
def test_the_lane_agrees_with_django_on_origins(origin: str, cors: dict[str, Any]) -> None:
    with override_settings(**cors):
        assert assert_same_answer(_body(_event()), {**PLAIN, "HTTP_ORIGIN": origin}) == 1


@pytest.mark.parametrize("length", ["00060", "+60", " 60 ", "6_0", "0", "-1", "1e2", "99999999999"])
def test_the_lane_agrees_with_django_on_content_length_forms(length: str) -> None:
    body = _body(_event(session_id="x" * 18))
    django_app = WSGIHandler()
    answers = []
    for app in (django_app, CountingLane(django_app)):
        environ = _environ(body, PLAIN, "http")
        environ["CONTENT_LENGTH"] = length.replace("60", str(len(body)))
        status, headers, payload = call(app, environ)
        answers.append((status, [(k, _same_run(v)) for k, v in headers if k != "Date"], payload, _queued(body)))
    assert answers[1] == answers[0]


def test_the_lane_agrees_with_django_on_content_length_shorter_and_longer_than_body() -> None:
    body = _body(_event())
    django_app = WSGIHandler()
    for delta in (-1, 1, 5):
        answers = []
        for app in (django_app, CountingLane(django_app)):
            environ = _environ(body, PLAIN, "http")
            environ["CONTENT_LENGTH"] = str(len(body) + delta)
            status, headers, payload = call(app, environ)
            answers.append((status, [(k, v) for k, v in headers if k != "Date"], payload, _queued(body)))
        assert answers[1] == answers[0]


@pytest.mark.parametrize(
    "body",
    [
        b"\xef\xbb\xbf" + _body(_event()),
        b'{"session_id":"a","session_id":"b","variant":"fast","event_type":"variant_assigned"}',
        b'{"session_id":"a","variant":"fast","event_type":"variant_assigned","step_number":-0}',
        b'{"session_id":"a","variant":"fast","event_type":"variant_assigned","step_number":1e400}',
        b'{"session_id":"a","variant":"fast","event_type":"variant_assigned","metadata":{"x":1e400}}',
        b'{"session_id":"a","variant":"fast","event_type":"variant_assigned","metadata":{"x":-0.0}}',
        b'{"session_id":"a","variant":"fast","event_type":"variant_assigned","metadata":{"x":99999999999999999999}}',
        b'{"session_id":"a","variant":"fast","event_type":"variant_assigned","metadata":{"x":18446744073709551615}}',
        b'{"session_id":"a","variant":"fast","event_type":"variant_assigned","metadata":{"x":-9223372036854775808}}',
        b'{"session_id":"a","variant":"fast","event_type":"variant_assigned","metadata":{"x":9223372036854775808}}',
        b'{"session_id":"a","variant":"fast","event_type":"variant_assigned","metadata":{}}',
        b'{"session_id":"a","variant":"fast","event_type":"variant_assigned","metadata":{"a":{"b":[1,{"c":null}]}}}',
        b'{"session_id":"  a  ","variant":"fast","event_type":"variant_assigned"}',
        b'{"session_id":"\\u00a0","variant":"fast","event_type":"variant_assigned"}',
        b'{"session_id":"\\u2028x\\u3000","variant":"fast","event_type":"variant_assigned"}',
        b'{"session_id":"\\ud800","variant":"fast","event_type":"variant_assigned"}',
        b'{"session_id":"a","variant":"fast","event_type":"variant_assigned","sent_at":null}',
        b'{"session_id":"a","variant":"fast","event_type":"variant_assigned","sent_at":false}',
        b'{"session_id":"a","variant":"fast","event_type":"variant_assigned","sent_at":0}',
        b" \n" + _body(_event()) + b"\n ",
    ],
)
@pytest.mark.parametrize("content_type", ["application/json", "text/plain;charset=UTF-8"])
def test_the_lane_agrees_with_django_on_odd_single_bodies(body: bytes, content_type: str) -> None:
    assert_same_answer(body, {**PLAIN, "CONTENT_TYPE": content_type})


@pytest.mark.parametrize(
    "field",
    [
        {"seq": 1},
        {"seq": 0},
        {"seq": 2**31 - 1},
        {"seq": 2**31},
        {"seq": None},
        {"seq": True},
        {"seq": 1.0},
        {"step_number": 1000},
        {"step_number": 1001},
        {"step_number": None},
        {"step_number": False},
        {"client_ts": 0},
        {"client_ts": -62135596800000},
        {"client_ts": -62135596800001},
        {"client_ts": 253402300799999},
        {"client_ts": 253402300800000},
        {"client_ts": 1.5},
        {"client_ts": 1790000000000.4999},
        {"client_ts": "0001-01-01T00:00:00+01:00"},
        {"client_ts": "9999-12-31T23:59:59-01:00"},
        {"client_ts": "2026-11-26T10:00:00"},
        {"client_ts": " 2026-11-26T10:00:00Z "},
        {"client_ts": "2026-11-26 10:00:00.123456789+05:30"},
        {"client_ts": "2026-02-30T00:00:00Z"},
        {"client_ts": None},
        {"event_id": "A1B2C3D4-E5F6-4A7B-8C9D-0E1F2A3B4C5D"},
        {"event_id": "{a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d}"},
        {"event_id": "urn:uuid:a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"},
        {"event_id": "a1b2c3d4e5f64a7b8c9d0e1f2a3b4c5d"},
        {"event_id": "a1b2-c3d4-e5f6-4a7b-8c9d-0e1f-2a3b-4c5d"},
        {"event_id": "00000000-0000-0000-0000-000000000000"},
        {"event_id": ""},
        {"event_id": None},
        {"variant": "FAST"},
        {"event_type": "variant_assigned "},
        {"unknown": {"deep": [1, 2, 3]}},
    ],
)
@pytest.mark.parametrize("path", [PATH, BATCH_PATH])
def test_the_lane_agrees_with_django_on_field_edges(field: dict[str, Any], path: str) -> None:
    event = _event(**field)
    body = _body(event) if path == PATH else _body({"events": [event], "sent_at": 1790000000000})
    assert_same_answer(body, PLAIN, path=path)


@pytest.mark.parametrize(
    "envelope",
    [
        {"events": [_event()], "extra": 1},
        {"events": [_event()], "sent_at": None},
        {"events": [_event()], "sent_at": 0},
        {"events": [_event()], "sent_at": ""},
        {"events": [_event()], "sent_at": "2026-11-26T10:00:00Z"},
        {"events": [_event()], "sent_at": 253402300800000},
        {"events": [_event()], "sent_at": True},
        {"events": [_event(client_ts=1)], "sent_at": 253402300799999},
        {"events": [_event(client_ts=253402300799999)], "sent_at": -62135596800000},
        {"events": []},
        {"events": [], "sent_at": "bad"},
        {"events": [None]},
        {"events": [_event(), _event(session_id="")]},
        {"events": {"0": _event()}},
        {"events": "abc"},
    ],
)
def test_the_lane_agrees_with_django_on_batch_envelopes(envelope: dict[str, Any]) -> None:
    assert_same_answer(_body(envelope), PLAIN, path=BATCH_PATH)


@pytest.mark.parametrize("limit", [1, 3])
@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_the_lane_agrees_with_django_on_batch_size_around_the_limit(limit: int, extra: int) -> None:
    events = [_event(seq=i + 1) for i in range(limit + extra)]
    with override_settings(AB_BATCH_MAX_EVENTS=limit):
        assert_same_answer(_body({"events": events}), PLAIN, path=BATCH_PATH)


def test_the_lane_agrees_with_django_on_repeated_event_ids_in_a_batch() -> None:
    uid = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
    events = [
        _event(event_id=uid, seq=1),
        _event(event_id=uid.upper(), seq=2),
        _event(event_id="{" + uid + "}", seq=3),
        _event(seq=4),
        _event(seq=5),
    ]
    assert assert_same_answer(_body({"events": events}), PLAIN, path=BATCH_PATH) == 1


def test_the_lane_agrees_with_django_on_batch_with_an_event_only_drf_accepts() -> None:
    # fast_validation declines (metadata nested deeper than the one-level loop), run_validation accepts
    events = [_event(metadata={"a": {"b": {"c": 1}}}), _event(step_number=None, client_ts=None, seq=None)]
    assert assert_same_answer(_body({"events": events}), PLAIN, path=BATCH_PATH) == 1


def _mask_secret(side: Any) -> Any:
    return (side[0], [(k, re.sub(r"=[A-Za-z0-9]{32};", "=<new>;", v)) for k, v in side[1]], *side[2:])


@pytest.mark.parametrize(
    "overrides",
    [
        {"X_FRAME_OPTIONS": "SAMEORIGIN"},
        {"X_FRAME_OPTIONS": "sameorigin"},
        {"SECURE_REFERRER_POLICY": None},
        {"SECURE_REFERRER_POLICY": ["no-referrer", " origin "]},
        {"SECURE_REFERRER_POLICY": "no-referrer, strict-origin"},
        {"SECURE_CROSS_ORIGIN_OPENER_POLICY": None},
        {"SECURE_CONTENT_TYPE_NOSNIFF": False},
        {"SECURE_HSTS_SECONDS": 10, "SECURE_HSTS_PRELOAD": True, "SECURE_HSTS_INCLUDE_SUBDOMAINS": False},
        {"SESSION_COOKIE_NAME": "sid"},
        {"CSRF_COOKIE_NAME": "xsrf"},
        {"CORS_ALLOW_CREDENTIALS": False, "CORS_ALLOWED_ORIGINS": [ALLOWED_ORIGIN]},
        {"CORS_URLS_REGEX": r"^/nothing/$"},
        {"DEBUG": True, "ALLOWED_HOSTS": []},
        {"ALLOWED_HOSTS": ["*"]},
        {"SESSION_SAVE_EVERY_REQUEST": True},
        {"CSRF_USE_SESSIONS": True},
    ],
)
@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("path", [PATH, BATCH_PATH])
def test_the_lane_agrees_with_django_on_settings_variations(overrides: dict[str, Any], scheme: str, path: str) -> None:
    body = _body(_event()) if path == PATH else _body({"events": [_event(), _event()]})
    cookies = ["theme=dark", "sid=abc", "xsrf=short", "sessionid=x", "csrftoken=y"]
    with override_settings(**overrides):
        for cookie in cookies:
            headers = {**PLAIN, "HTTP_ORIGIN": ALLOWED_ORIGIN, "HTTP_COOKIE": cookie}
            django_side, lane_side, _answered = _side_by_side(body, headers, scheme, path)
            # the harness masks only a new "csrftoken=" secret; mask a renamed CSRF cookie's too
            assert _mask_secret(lane_side) == _mask_secret(django_side)


def test_the_lane_agrees_with_django_on_metrics_for_a_batch_with_duplicates() -> None:
    from prometheus_client import REGISTRY

    uid = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
    body = _body({"events": [_event(event_id=uid), _event(event_id=uid), _event()]})
    labels = {"route": BATCH_PATH.lstrip("/"), "method": "POST", "status": "200"}

    def snap() -> tuple[float, float]:
        return (
            REGISTRY.get_sample_value("abflow_events_accepted_total") or 0.0,
            REGISTRY.get_sample_value("abflow_http_request_duration_seconds_count", labels) or 0.0,
        )

    django_app = WSGIHandler()
    deltas = []
    for app in (django_app, CountingLane(django_app)):
        before = snap()
        call(app, _environ(body, PLAIN, "http", BATCH_PATH))
        _queued(body)
        after = snap()
        deltas.append((after[0] - before[0], after[1] - before[1]))
    assert deltas[0] == deltas[1] == (3, 1)


def test_the_lane_agrees_with_django_on_proxy_header_forms() -> None:
    body = _body(_event())
    with override_settings(SECURE_HSTS_SECONDS=60, SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
        for value in ["https", "HTTPS", "https ,http", "", ",https", "https\t"]:
            for scheme in ("http", "https"):
                assert_same_answer(body, {**PLAIN, "HTTP_X_FORWARDED_PROTO": value}, scheme)


def test_the_lane_agrees_with_django_on_cookie_edge_forms() -> None:
    body = _body(_event())
    for cookie in ["", ";", "sessionid", "=sessionid", "SESSIONID=x", "a=b; sessionid=", "csrftoken=" + "a" * 32]:
        assert_same_answer(body, {**PLAIN, "HTTP_COOKIE": cookie})


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_lane_agrees_with_django_on_a_full_queue_on_the_batch_path_with_cors_and_hsts(rq: Any, scheme: str) -> None:
    from server.apps.front.pipeline import queue

    rq.rpush(queue.keys(0).queue, b"{}")
    body = _body({"events": [_event(), _event(session_id="rv-2")], "sent_at": 1790000000000})
    headers = {**PLAIN, "HTTP_ORIGIN": ALLOWED_ORIGIN}
    with override_settings(AB_QUEUE_MAX=1, SECURE_HSTS_SECONDS=5, CORS_ALLOWED_ORIGINS=[ALLOWED_ORIGIN]):
        django_app = WSGIHandler()
        lane = CountingLane(django_app)
        answers = [call(app, _environ(body, headers, scheme, BATCH_PATH)) for app in (django_app, lane)]
    assert answers[0][0].startswith("503")
    assert answers[1] == answers[0]
    assert lane.answered == 1
    assert rq.llen(queue.keys(0).queue) == 1
