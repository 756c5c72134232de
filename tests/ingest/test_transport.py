"""How browsers deliver: gzip bodies and their caps, text/plain beacons, CORS, CSRF, the static client."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import uuid
import zlib

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from server.apps.front.models import ABEvent
from server.apps.front.pipeline import queue
from server.apps.front.pipeline.writer import drain
from tests.ingest.conftest import ALLOWED_ORIGIN, BATCH_URL, SINGLE_URL, event, post

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _cors(settings):
    settings.CORS_ALLOWED_ORIGINS = [ALLOWED_ORIGIN]


# --- compressed and oversized bodies ----------------------------------------------


def test_gzip_single_event_is_inflated_and_accepted(client):
    response = post(client, SINGLE_URL, event(metadata={"text": "abc" * 300}), gzip_it=True)
    assert response.status_code == 201, response.content
    drain()
    assert ABEvent.objects.get().metadata == {"text": "abc" * 300}


def test_gzip_batch_lands_every_event(client):
    events = [event(session_id=f"g-{i}", metadata={"pad": "z" * 200}) for i in range(50)]
    raw = json.dumps({"events": events}).encode()
    packed = gzip.compress(raw)
    assert len(packed) < len(raw) // 5
    response = post(client, BATCH_URL, packed, HTTP_CONTENT_ENCODING="gzip")
    assert response.json()["accepted"] == 50
    drain()
    assert ABEvent.objects.count() == 50


def test_gzip_bomb_gets_413_without_inflating_it(client, settings):
    settings.AB_MAX_BODY_BYTES = 1_048_576
    # 200 MB of zeros packs into ~200 KB; inflating it whole would take 200 MB.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * 1_048_576
    bomb = b"".join(compressor.compress(chunk) for _ in range(200)) + compressor.flush()
    assert len(bomb) < settings.AB_MAX_BODY_BYTES
    tracemalloc.start()
    try:
        response = post(client, BATCH_URL, bomb, HTTP_CONTENT_ENCODING="gzip")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 413
    assert response.json()["success"] is False
    assert "body" in response.json()["errors"]
    # Inflating stopped at the cap: memory stayed within a few times the cap, not 200 MB.
    assert peak < 8 * settings.AB_MAX_BODY_BYTES
    assert queue.stats().depth == 0


@pytest.mark.parametrize("url", [SINGLE_URL, BATCH_URL])
def test_body_over_the_cap_gets_413_with_the_envelope(client, settings, url):
    settings.AB_MAX_BODY_BYTES = 2048
    body = {"events": [event(metadata={"pad": "p" * 500}) for _ in range(5)]}
    response = post(client, url, body)
    assert response.status_code == 413
    assert response.json() == {"success": False, "errors": {"body": [response.json()["errors"]["body"][0]]}}
    assert "2048" in response.json()["errors"]["body"][0]
    assert queue.stats().depth == 0


def test_inflated_size_is_capped_even_when_the_compressed_body_is_small(client, settings):
    settings.AB_MAX_BODY_BYTES = 4096
    body = {"events": [event(metadata={"pad": "q" * 1000}) for _ in range(5)]}  # ~5.5 KB of JSON
    packed = gzip.compress(json.dumps(body).encode())
    assert len(packed) < 4096
    response = post(client, BATCH_URL, packed, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("raw", "encoding", "status", "field"),
    [
        (b"not gzip at all", "gzip", 400, "body"),
        (gzip.compress(b'{"events": []}')[:-6], "gzip", 400, "body"),  # truncated
        (b'{"events": []}', "br", 415, "content_encoding"),
    ],
)
def test_bad_content_encoding_gets_a_4xx_envelope(client, raw, encoding, status, field):
    response = post(client, BATCH_URL, raw, HTTP_CONTENT_ENCODING=encoding)
    assert response.status_code == status
    assert response.json()["success"] is False
    assert field in response.json()["errors"]


# --- text/plain (navigator.sendBeacon) ------------------------------------------------


@pytest.mark.parametrize("url", [SINGLE_URL, BATCH_URL])
def test_text_plain_beacon_is_accepted(client, url):
    body = event() if url == SINGLE_URL else {"events": [event(), event(session_id="s-2")]}
    response = post(client, url, body, content_type="text/plain;charset=UTF-8", HTTP_ORIGIN=ALLOWED_ORIGIN)
    assert response.status_code in (200, 201)
    drain()
    assert ABEvent.objects.count() == (1 if url == SINGLE_URL else 2)


# --- CORS -------------------------------------------------------------------------------


def preflight(client: APIClient, origin: str, url: str = BATCH_URL):
    return client.options(
        url,
        HTTP_ORIGIN=origin,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="content-type,content-encoding",
    )


@pytest.mark.parametrize("url", [SINGLE_URL, BATCH_URL])
def test_preflight_from_an_allowed_origin_gets_the_cors_headers(client, settings, url):
    settings.CORS_PREFLIGHT_MAX_AGE = 3600
    response = preflight(client, ALLOWED_ORIGIN, url)
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert "POST" in response["Access-Control-Allow-Methods"]
    allowed_headers = response["Access-Control-Allow-Headers"].lower()
    assert "content-type" in allowed_headers and "content-encoding" in allowed_headers
    assert response["Access-Control-Max-Age"] == "3600"
    assert response["Access-Control-Allow-Credentials"] == "true"


def test_preflight_from_another_origin_gets_no_cors_headers(client):
    response = preflight(client, "https://evil.example.net")
    assert "Access-Control-Allow-Origin" not in response
    assert "Access-Control-Allow-Methods" not in response


def test_cors_applies_to_the_api_only(client):
    response = preflight(client, ALLOWED_ORIGIN, "/admin/login/")
    assert "Access-Control-Allow-Origin" not in response


def test_allowed_origin_can_read_answers_and_retry_after(client, settings):
    response = post(client, BATCH_URL, {"events": [event()]}, HTTP_ORIGIN=ALLOWED_ORIGIN)
    assert response["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert "retry-after" in response["Access-Control-Expose-Headers"].lower()
    settings.AB_MAX_BODY_BYTES = 1024
    # Errors from the body middleware are CORS-readable too (the client must see 413).
    big = post(client, BATCH_URL, {"events": [event(metadata={"p": "x" * 2000})]}, HTTP_ORIGIN=ALLOWED_ORIGIN)
    assert big.status_code == 413
    assert big["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN


# --- CSRF ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [SINGLE_URL, BATCH_URL])
def test_anonymous_post_needs_no_csrf_token(url):
    client = APIClient(enforce_csrf_checks=True)
    body = event() if url == SINGLE_URL else {"events": [event()]}
    assert post(client, url, body, HTTP_ORIGIN=ALLOWED_ORIGIN).status_code in (200, 201)


@pytest.mark.parametrize("url", [SINGLE_URL, BATCH_URL])
def test_session_authenticated_post_keeps_drf_csrf_rule(url):
    user = get_user_model().objects.create_user(username="csrf-user", password="pw-123456789")
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    body = event() if url == SINGLE_URL else {"events": [event()]}
    refused = post(client, url, body)
    assert refused.status_code == 403
    assert refused.json()["success"] is False
    assert "CSRF" in refused.json()["errors"]["auth"][0]
    assert queue.stats().depth == 0

    token = client.get("/admin/login/").cookies["csrftoken"].value  # any page that sets the cookie
    accepted = post(client, url, body, HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code in (200, 201)
    drain()
    assert ABEvent.objects.get().user_id == user.pk


# --- the static client ---------------------------------------------------------------------


def test_abtrack_js_is_served_as_a_static_file(client):
    response = client.get("/static/abtrack/abtrack.js")
    assert response.status_code == 200
    assert "javascript" in response["Content-Type"]
    content = b"".join(response.streaming_content) if response.streaming else response.content
    assert b"navigator.sendBeacon" in content


@pytest.mark.parametrize(
    ("name", "marker"), [("abtrack.mjs", b"export default ABTrack"), ("abtrack.d.ts", b"export declare class Tracker")]
)
def test_abtrack_module_and_types_are_served_to_any_origin(client, name, marker):
    # A module script from another origin is fetched with CORS; WhiteNoise allows every origin on static files.
    response = client.get(f"/static/abtrack/{name}", HTTP_ORIGIN="https://elsewhere.example.org")
    assert response.status_code == 200
    if name.endswith(".mjs"):
        assert response["Content-Type"].startswith("text/javascript")
    assert response["Access-Control-Allow-Origin"] == "*"
    content = b"".join(response.streaming_content) if response.streaming else response.content
    assert marker in content


@pytest.mark.parametrize("url", [SINGLE_URL, BATCH_URL])
def test_events_carrying_abtracks_seq_are_accepted_and_stored(client, url):
    events = [event(session_id="seq-1", seq=n, event_id=str(uuid.uuid4())) for n in (1, 2)]
    if url == SINGLE_URL:
        answers = [post(client, url, one) for one in events]
        assert [a.status_code for a in answers] == [201, 201]
    else:
        answer = post(client, url, {"events": events})
        assert answer.json() == {"success": True, "accepted": 2, "rejected": []}
    drain()
    rows = ABEvent.objects.filter(session_id="seq-1").order_by("client_ts", "timestamp")
    assert sorted(str(row.event_id) for row in rows) == sorted(e["event_id"] for e in events)
    if "seq" in {field.name for field in ABEvent._meta.get_fields()}:  # stored once the server keeps it
        assert sorted(row.seq for row in rows) == [1, 2]
