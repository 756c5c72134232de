"""The ingest endpoints answer byte for byte as recorded: status, body and every header (but Date).

The golden files in ``tests/ingest/golden/`` were recorded from the code as it
was before the request path was trimmed (issue 11: admin-only middleware
skipped, content negotiation short-cut); each case here must still produce
exactly the recorded answer through the real WSGI application (every
middleware, DRF, the real Redis and PostgreSQL). To record them again, on
purpose, after a deliberate change of a response::

    ABFLOW_WRITE_GOLDEN=1 .venv/bin/python -m pytest tests/ingest/test_request_path.py

Only three things are normalised, because they are not the same from one run
to the next: the Date header (dropped), the order of the methods in Allow (it
follows Python's per-process string hashing) and a throttled answer's seconds left
in the current window (Retry-After, checked to be in range, the message, and
so the Content-Length, checked against the body).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import RequestFactory
from hypothesis import given
from hypothesis import settings as settings_profile
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.test import APIClient

from devtools.embedded import free_port
from server.apps.front.ingest.authentication import OUTAGE
from server.apps.front.ingest.views import IngestContentNegotiation
from tests.ingest.conftest import ALLOWED_ORIGIN, BATCH_URL, SINGLE_URL

pytestmark = pytest.mark.django_db(transaction=False)

GOLDEN_DIR = Path(__file__).with_name("golden")
WRITE = os.environ.get("ABFLOW_WRITE_GOLDEN") == "1"
DISALLOWED_ORIGIN = "https://evil.example.org"
# A CSRF secret as the cookie and as the header (Django accepts the unmasked
# 32-character secret): fixed, so the recorded answers are reproducible.
CSRF_SECRET = "abcdefghijklmnopqrstuvwxyzABCDEF"
VALID = {"session_id": "golden-1", "variant": "fast", "event_type": "variant_assigned"}
INVALID = {"session_id": "golden-1", "variant": "slow", "event_type": "x"}


@dataclass(frozen=True)
class Case:
    method: str = "POST"
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = "application/json"
    query: str = ""
    # "session", "session+csrf", "stale-session", "token", "bad-token" or "": what credentials go along.
    auth: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _single_or_batch(url: str, event: dict[str, Any]) -> bytes:
    return _json(event) if url == SINGLE_URL else _json({"events": [event]})


def _cases_for(url: str) -> dict[str, Case]:
    valid = _single_or_batch(url, VALID)
    cors = {"HTTP_ORIGIN": ALLOWED_ORIGIN}
    preflight = {
        "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "POST",
        "HTTP_ACCESS_CONTROL_REQUEST_HEADERS": "content-type,content-encoding",
    }
    return {
        "valid": Case(body=valid),
        "invalid": Case(body=_single_or_batch(url, INVALID)),
        "batch_shape_error": Case(body=_json({"events": "nope"} if url == BATCH_URL else [1, 2])),
        "malformed_json": Case(body=b'{"session_id": '),
        "null_body": Case(body=b"null"),
        "empty_body": Case(body=b""),
        "wrong_content_type": Case(body=valid, content_type="application/xml"),
        "form_content_type": Case(body=b"a=1", content_type="application/x-www-form-urlencoded"),
        "text_plain_beacon": Case(body=valid, content_type="text/plain;charset=UTF-8"),
        "no_content_type": Case(body=valid, content_type=None),
        "bad_charset": Case(body=valid, content_type="application/json; charset=rot13"),
        "gzip": Case(body=gzip.compress(valid), headers={"HTTP_CONTENT_ENCODING": "gzip"}),
        "bad_gzip": Case(body=b"not gzip", headers={"HTTP_CONTENT_ENCODING": "gzip"}),
        "unknown_encoding": Case(body=valid, headers={"HTTP_CONTENT_ENCODING": "br"}),
        "too_large": Case(body=valid, settings={"AB_MAX_BODY_BYTES": 1024}, headers={"CONTENT_LENGTH": "5000"}),
        "cors_preflight_allowed": Case(method="OPTIONS", content_type=None, headers={**cors, **preflight}),
        "cors_preflight_disallowed": Case(
            method="OPTIONS", content_type=None, headers={"HTTP_ORIGIN": DISALLOWED_ORIGIN, **preflight}
        ),
        "cors_post_allowed": Case(body=valid, headers=cors),
        "cors_post_disallowed": Case(body=valid, headers={"HTTP_ORIGIN": DISALLOWED_ORIGIN}),
        "cors_post_allowed_invalid": Case(body=_single_or_batch(url, INVALID), headers=cors),
        "options": Case(method="OPTIONS", content_type=None),
        "get": Case(method="GET", content_type=None),
        "head": Case(method="HEAD", content_type=None),
        "put": Case(method="PUT", body=valid),
        "delete": Case(method="DELETE", content_type=None),
        "no_trailing_slash": Case(body=valid),
        "get_no_trailing_slash": Case(method="GET", content_type=None),
        # Content negotiation: DRF honours Accept and ?format=.
        "accept_json": Case(body=valid, headers={"HTTP_ACCEPT": "application/json"}),
        "accept_any": Case(body=valid, headers={"HTTP_ACCEPT": "*/*"}),
        "accept_browser": Case(
            body=valid,
            headers={"HTTP_ACCEPT": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"},
        ),
        "accept_json_indent": Case(body=valid, headers={"HTTP_ACCEPT": "application/json; indent=4"}),
        "accept_json_indent_invalid": Case(
            body=_single_or_batch(url, INVALID), headers={"HTTP_ACCEPT": "application/json; indent=2"}
        ),
        "accept_json_charset": Case(body=valid, headers={"HTTP_ACCEPT": "application/json; charset=utf-8"}),
        "accept_application_any": Case(body=valid, headers={"HTTP_ACCEPT": "application/*"}),
        "accept_html_406": Case(body=valid, headers={"HTTP_ACCEPT": "text/html"}),
        "accept_xml_406_invalid": Case(body=b"{", headers={"HTTP_ACCEPT": "application/xml"}),
        "accept_empty": Case(body=valid, headers={"HTTP_ACCEPT": ""}),
        "accept_garbage": Case(body=valid, headers={"HTTP_ACCEPT": ";;,,=q"}),
        "format_json": Case(body=valid, query="format=json"),
        "format_xml": Case(body=valid, query="format=xml"),
        "format_api": Case(body=valid, query="format=api"),
        # Credentials.
        "stale_session_cookie": Case(body=valid, auth="stale-session"),
        "session_with_csrf": Case(body=valid, auth="session+csrf"),
        "session_with_csrf_cors_allowed": Case(body=valid, auth="session+csrf", headers=cors),
        "session_with_csrf_cors_disallowed": Case(
            body=valid, auth="session+csrf", headers={"HTTP_ORIGIN": DISALLOWED_ORIGIN}
        ),
        "session_without_csrf": Case(body=valid, auth="session"),
        "session_csrf_cookie_only": Case(body=valid, auth="session+csrf-cookie"),
        "session_options": Case(method="OPTIONS", content_type=None, auth="session+csrf"),
        "token": Case(body=valid, auth="token"),
        "bad_token": Case(body=valid, auth="bad-token"),
        "token_with_session_cookie": Case(body=valid, auth="token+session"),
        "throttled": Case(body=valid, settings={"AB_THROTTLE_RATE": "1/min"}),
        "redis_down": Case(body=valid, settings={"REDIS_URL": "redis://127.0.0.1:{free_port}/0"}),
    }


CASES = {(url, name): case for url in (SINGLE_URL, BATCH_URL) for name, case in _cases_for(url).items()}


def golden_path(url: str, name: str) -> Path:
    endpoint = "single" if url == SINGLE_URL else "batch"
    return GOLDEN_DIR / f"{endpoint}-{name}.json"


def _credentials(auth: str) -> tuple[dict[str, str], dict[str, str]]:
    """(cookies, extra environ) for ``auth``, creating the user, session or token it needs."""
    cookies: dict[str, str] = {}
    environ: dict[str, str] = {}
    if not auth:
        return cookies, environ
    user = get_user_model().objects.create_user(username=f"golden-{random.randrange(10**9)}", password="x")
    if "session" in auth:
        if auth == "stale-session":
            cookies["sessionid"] = "stale0session0key0that0does0not0exist"
        else:
            session = SessionStore()
            session["_auth_user_id"] = str(user.pk)
            session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
            session["_auth_user_hash"] = user.get_session_auth_hash()
            session.create()
            cookies["sessionid"] = session.session_key or ""
    if "csrf" in auth:
        cookies["csrftoken"] = CSRF_SECRET
        if "csrf-cookie" not in auth:
            environ["HTTP_X_CSRFTOKEN"] = CSRF_SECRET
    if auth.startswith("token"):
        environ["HTTP_AUTHORIZATION"] = f"Token {Token.objects.create(user=user).key}"
    if auth == "bad-token":
        environ["HTTP_AUTHORIZATION"] = "Token 0000000000000000000000000000000000000000"
    return cookies, environ


def wsgi_environ(url: str, name: str, case: Case) -> dict[str, Any]:
    path = url.rstrip("/") if "no_trailing_slash" in name else url
    cookies, extra = _credentials(case.auth)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": case.method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": case.query,
        "CONTENT_LENGTH": str(len(case.body)),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        # Its own address per case: throttle counters in the shared Redis never collide.
        "REMOTE_ADDR": "10.{}.{}.{}".format(*(random.randint(1, 254) for _ in range(3))),
        "HTTP_HOST": "127.0.0.1:8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(case.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if case.content_type is not None:
        environ["CONTENT_TYPE"] = case.content_type
    if cookies:
        environ["HTTP_COOKIE"] = "; ".join(f"{key}={value}" for key, value in cookies.items())
    environ.update(extra)
    environ.update(case.headers)
    return environ


def call(app: Callable[..., Any], environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        answer["status"], answer["headers"] = status, headers

    # As Django's test client does: the request signals must not close the
    # test's database connection (it holds the test's transaction).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        chunks = app(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return answer["status"], answer["headers"], body


def record(status: str, headers: list[tuple[str, str]], body: bytes, *, throttled: bool) -> dict[str, Any]:
    throttled = throttled and status.startswith("429")
    raw_body = body
    if throttled:
        body = re.sub(rb"available in \d+ seconds?", b"available in <seconds left in the window>", body)
    kept = []
    for name, value in headers:
        if name.lower() == "date":
            continue
        if name.lower() == "allow":
            # DRF's @api_view lists the methods in set order, which varies with
            # the process's string hash seed: "POST, OPTIONS" or "OPTIONS, POST".
            value = ", ".join(sorted(value.split(", ")))
        if throttled and name.lower() == "retry-after":
            assert 1 <= int(value) <= 60, value
            value = "<seconds left in the window>"
        if throttled and name.lower() == "content-length":
            assert int(value) == len(raw_body), value
            value = "<length of the body>"
        kept.append([name, value])
    try:
        text: dict[str, str] = {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        text = {"body_base64": base64.b64encode(body).decode()}
    return {"status": status, "headers": sorted(kept, key=lambda pair: (pair[0].lower(), pair[1])), **text}


def answer_of(
    url: str, name: str, settings: Any, wrap: Callable[[WSGIHandler], Callable[..., Any]] = lambda app: app
) -> dict[str, Any]:
    """The recorded form of the answer to case ``name``, from Django's handler (``wrap``-ped: the fast lane)."""
    case = CASES[(url, name)]
    OUTAGE.reset()  # an earlier test's simulated PostgreSQL outage must not make a session user anonymous
    settings.CORS_ALLOWED_ORIGINS = [ALLOWED_ORIGIN]
    settings.CSRF_TRUSTED_ORIGINS = [ALLOWED_ORIGIN]
    for key, value in case.settings.items():
        setattr(settings, key, value.format(free_port=free_port()) if isinstance(value, str) else value)
    # A handler built under these settings (middleware read some of them once).
    app = wrap(WSGIHandler())
    throttled = "AB_THROTTLE_RATE" in case.settings
    environ = wsgi_environ(url, name, case)
    if throttled:
        # The first request in the window passes; the same client's second is throttled.
        first = call(app, {**environ, "wsgi.input": io.BytesIO(case.body)})
        assert first[0].startswith("20"), first
    return record(*call(app, environ), throttled=throttled)


@pytest.mark.parametrize(("url", "name"), list(CASES), ids=[f"{u.split('/')[-2]}-{n}" for u, n in CASES])
def test_ingest_answers_are_byte_identical_to_the_recorded_ones(url: str, name: str, settings: Any) -> None:
    got = answer_of(url, name, settings)
    path = golden_path(url, name)
    if WRITE:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=2, ensure_ascii=False) + "\n")
    expected = json.loads(path.read_text())
    assert got == expected


# --- what the trimmed path no longer does (and what it never did) -----------------------------------------------


@pytest.fixture
def api_client(settings: Any) -> APIClient:
    settings.CORS_ALLOWED_ORIGINS = [ALLOWED_ORIGIN]
    return APIClient()


@pytest.mark.parametrize("url", [SINGLE_URL, BATCH_URL])
def test_ingest_builds_no_flash_message_storage(api_client: APIClient, url: str) -> None:
    response = api_client.post(url, data=_single_or_batch(url, VALID), content_type="application/json")
    assert response.status_code in (200, 201)
    assert not hasattr(response.wsgi_request, "_messages")


def test_the_admin_still_gets_its_flash_messages(api_client: APIClient) -> None:
    response = api_client.get("/admin/login/")
    assert response.status_code == 200
    assert hasattr(response.wsgi_request, "_messages")


@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
def test_a_plain_accept_header_is_answered_without_parsing_it(api_client: APIClient, accept: str | None) -> None:
    extra = {} if accept is None else {"HTTP_ACCEPT": accept}
    response = api_client.post(SINGLE_URL, data=_json(VALID), content_type="application/json", **extra)
    assert response.status_code == 201
    assert not hasattr(response.renderer_context["request"], "_parsed_accept_list")


def test_any_other_accept_header_goes_through_the_full_negotiation(api_client: APIClient) -> None:
    response = api_client.post(
        SINGLE_URL, data=_json(VALID), content_type="application/json", HTTP_ACCEPT="application/json; indent=2"
    )
    assert response.status_code == 201
    assert response.content == b'{\n  "success": true\n}'
    assert hasattr(response.renderer_context["request"], "_parsed_accept_list")


_MEDIA = st.sampled_from(
    ["*/*", "application/json", "application/*", "text/html", "text/*", "application/xml", "json", "", " "]
)
_PARAMS = st.lists(
    st.sampled_from(["q=0.5", "q=0", "indent=2", "indent=x", "charset=utf-8", "version=1", "="]), max_size=2
)
_ACCEPT = st.one_of(
    st.none(),
    st.lists(st.builds(lambda m, p: ";".join([m, *p]), _MEDIA, _PARAMS), max_size=3).map(", ".join),
    st.text(max_size=40),
)


@settings_profile(max_examples=300, deadline=None)
@given(
    accept=_ACCEPT,
    query=st.sampled_from(["", "format=json", "format=xml", "format=", "x=1"]),
    suffix=st.sampled_from([None, "json", "xml"]),
)
def test_the_ingest_negotiation_chooses_exactly_as_drfs_default(
    accept: str | None, query: str, suffix: str | None
) -> None:
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    try:
        django_request = RequestFactory().post(f"{SINGLE_URL}?{query}", **headers)
    except UnicodeEncodeError:
        return  # not a header a WSGI server could pass on
    outcomes = []
    for negotiation in (DefaultContentNegotiation(), IngestContentNegotiation()):
        try:
            renderer, media_type = negotiation.select_renderer(Request(django_request), [JSONRenderer()], suffix)
            outcomes.append((type(renderer), media_type))
        except Exception as exc:  # the kind of refusal (406, 404) is what is compared
            outcomes.append((type(exc), str(exc)))
    assert outcomes[0] == outcomes[1]


def test_an_anonymous_event_reads_nothing_from_postgresql(
    api_client: APIClient, django_assert_num_queries: Any
) -> None:
    # The session is loaded lazily and, with no session cookie, never from the database.
    with django_assert_num_queries(0):
        response = api_client.post(SINGLE_URL, data=_json(VALID), content_type="application/json")
    assert response.status_code == 201
