"""Property-based fuzzing of both ingest endpoints: the real app, the real Redis and PostgreSQL.

Hypothesis sends arbitrary requests - raw bytes, JSON of any shape, near-valid
events with mutated fields, deep nesting - under arbitrary content types,
charsets and content encodings, anonymously, with a token (valid or not) or a
session (with or without its CSRF token), in production and in DEBUG. For
every answer:

* never a 5xx; every answer is JSON in the contract's shape: ``201
  {"success": true}``, the batch's ``200 {"success": true, "accepted": N,
  "rejected": [...]}``, or ``{"success": false, "errors": {...}}``;
* after a real drain (``writer.drain`` into PostgreSQL), every accepted event
  is stored exactly once, nothing else is stored (so no rejected event), and
  nothing is dead-lettered: what validation lets through, the writer stores.

The default run is bounded (``ABFLOW_FUZZ_EXAMPLES`` examples per mode, 100:
a few seconds). A longer hunt::

    ABFLOW_FUZZ_EXAMPLES=5000 make test ARGS="tests/test_fuzz.py"

A failure prints the smallest request sequence that reproduces it and a
``@reproduce_failure`` blob.
"""

from __future__ import annotations

import gzip
import json
import os
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from hypothesis import HealthCheck, given
from hypothesis import settings as fuzz_settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from server.apps.front.experiment import EVENT_TYPE_NAMES
from server.apps.front.models import ABEvent
from server.apps.front.pipeline import queue
from server.apps.front.pipeline.writer import drain

pytestmark = pytest.mark.django_db

SINGLE_URL = "/api/rest/front/ab-event/"
BATCH_URL = "/api/rest/front/ab-events/"
EXAMPLES = int(os.environ.get("ABFLOW_FUZZ_EXAMPLES", "100"))
CSRF_SECRET = "f" * 32

FUZZ_SETTINGS = fuzz_settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree; failures print a reproduce blob
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- values ----------------------------------------------------------------------------

# Any code point, lone surrogates included (hypothesis leaves those out by default).
any_text = st.text(st.characters() | st.characters(categories=["Cs"]), max_size=24)

# Values that sit on a validation boundary or broke something once.
TRICKY = [
    "",
    " ",
    "\x00",
    "\ud800",
    "a\udfff",
    "x" * 101,
    "x" * 5000,
    7,
    True,
    False,
    None,
    -1,
    1.5,
    2**31,
    2**63,
    2**64,
    -(2**63) - 1,
    1e300,
    float("nan"),
    float("inf"),
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "2024-13-01T00:00:00Z",
    -62_135_596_800_001,
    -62_135_596_800_000,
    253_402_300_800_000,
    "fast",
    "deep",
    "variant_assigned",
    "00000000-0000-0000-0000-000000000000",
    "{12345678-1234-5678-1234-567812345678}",
    [],
    {},
    {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}},
]

# Per field, the values most likely to slip through its validation.
FIELD_TRICKS: dict[str, list[Any]] = {
    "event_id": [7, True, 0, 2**128 - 1, "7", "not-a-uuid", "\udc00", "12345678123456781234567812345678"],
    "session_id": ["\ud800", "a\x00b", "x" * 100, 12345, " s "],
    "variant": ["\ud800", "FAST", "slow", 1],
    "event_type": ["x\udfff", "clicked", ["variant_assigned"]],
    "step_number": [1000, 1001, 2**31, "1", 1.0, True],
    "metadata": [{"\ud800": 1}, {"a\x00": 1}, {"n": 2**64}, {"f": float("nan")}, {"blob": "x" * 4090}],
    "client_ts": ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", -62_135_596_800_001, 1e20, "\ud800"],
    "sent_at": ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", 253_402_300_800_000, True],
}

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | any_text
    | st.sampled_from(TRICKY)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12,
)


def nested(levels: int, leaf: Any = 1) -> Any:
    for _ in range(levels):
        leaf = {"a": leaf}
    return leaf


deep_values = st.builds(nested, st.integers(min_value=200, max_value=1100))

times = st.sampled_from(["2024-05-01T10:00:00Z", "2024-05-01T10:00:00.250+03:00", 1_714_557_600_000]) | st.sampled_from(
    [t for t in TRICKY if isinstance(t, (str, int)) and not isinstance(t, bool)]
)

EVENT_FIELDS = ["event_id", "session_id", "variant", "event_type", "step_number", "metadata", "client_ts", "sent_at"]


@st.composite
def near_valid_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event, then up to three mutations: a field dropped, replaced, or an unknown key added."""
    event: dict[str, Any] = {
        "event_id": str(draw(st.uuids())),
        "session_id": draw(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40)),
        "variant": draw(st.sampled_from(["fast", "deep"])),
        "event_type": draw(st.sampled_from(EVENT_TYPE_NAMES)),
    }
    if draw(st.booleans()):
        event["step_number"] = draw(st.integers(min_value=0, max_value=1000))
    if draw(st.booleans()):
        event["metadata"] = draw(st.dictionaries(st.text(max_size=8), scalars, max_size=3))
    if draw(st.booleans()):
        event["client_ts"] = draw(times)
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        action = draw(st.sampled_from(["drop", "replace", "replace", "tricky", "unknown", "deep"]))
        name = draw(st.sampled_from(EVENT_FIELDS))
        if action == "drop":
            event.pop(name, None)
        elif action == "replace":
            event[name] = draw(json_values)
        elif action == "tricky":
            event[name] = draw(st.sampled_from(FIELD_TRICKS[name]) | st.sampled_from(TRICKY))
        elif action == "unknown":
            event[draw(any_text)] = draw(json_values)
        else:
            event[draw(st.sampled_from(["metadata", "extra"]))] = draw(deep_values)
    return event


# --- requests --------------------------------------------------------------------------


@dataclass
class Request:
    url: str
    payload: Any  # what the body means (None: not JSON we made)
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    auth: str = "anonymous"  # anonymous | token | bad-token | session | session-csrf
    method: str = "POST"
    query: str = ""


def to_json(value: Any, draw: st.DrawFn) -> str:
    # ensure_ascii escapes lone surrogates as \udXXX (valid JSON); allow_nan writes NaN/Infinity.
    return json.dumps(value, ensure_ascii=draw(st.booleans()), allow_nan=True)


TEXT_CHARSETS = ["utf-8", "UTF-8", "utf-16", "latin-1", "cp1252", "ascii"]
OTHER_CHARSETS = ["rot13", "base64", "hex", "zlib", "bz2", "uu", "quopri", "undefined", "punycode", "nonesuch", ""]
ODD_CODINGS = ["identity", "br", "deflate", "gzip, gzip", "garbage"]


def often(usual: st.SearchStrategy, sometimes: st.SearchStrategy, rarely: st.SearchStrategy) -> st.SearchStrategy:
    """``usual`` 80% of the time, ``sometimes`` 15%, ``rarely`` 5%."""
    return st.sampled_from([usual] * 16 + [sometimes] * 3 + [rarely]).flatmap(lambda chosen: chosen)


def one_in(n: int) -> st.SearchStrategy[bool]:
    # Not integers(...) == 0: hypothesis draws boundary integers far more often than 1/n.
    return st.sampled_from([False] * (n - 1) + [True])


@st.composite
def requests(draw: st.DrawFn) -> Request:
    url = draw(st.sampled_from([SINGLE_URL, BATCH_URL]))
    kind = draw(st.sampled_from(["events"] * 6 + ["json", "bytes", "deep-text"]))
    payload: Any = None
    if kind == "events":
        if url == SINGLE_URL:
            payload = draw(near_valid_events())
        else:
            payload = {"events": draw(st.lists(near_valid_events() | json_values, max_size=5))}
            if draw(st.booleans()):
                payload["sent_at"] = draw(times | json_values)
        text = to_json(payload, draw)
    elif kind == "json":
        payload = draw(json_values)
        text = to_json(payload, draw)
    elif kind == "deep-text":
        levels = draw(st.integers(min_value=900, max_value=3000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        text = opener * levels + ("1" if opener != "[" else "") + closer * levels
    else:
        text = ""
    # Mostly what clients send, so that most requests reach validation and the writer.
    charset = draw(often(st.none(), st.sampled_from(TEXT_CHARSETS), st.sampled_from(OTHER_CHARSETS)))
    if kind == "bytes":
        body = draw(st.binary(max_size=200))
    else:
        try:
            body = text.encode(charset if charset in TEXT_CHARSETS else "utf-8")
        except UnicodeEncodeError:  # lone surrogates written raw, or outside the charset
            body = text.encode("utf-8", "surrogatepass")
    media = draw(
        often(
            st.sampled_from(["application/json", "text/plain"]),
            st.sampled_from(["", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "*/*"]),
            st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=30),
        )
    )
    content_type = media if charset is None else f"{media}; charset={charset}"
    headers: dict[str, str] = {}
    coding = draw(often(st.none(), st.sampled_from(["gzip", "x-gzip"]), st.sampled_from(ODD_CODINGS)))
    if coding:
        headers["HTTP_CONTENT_ENCODING"] = coding
        if "gzip" in coding and not draw(one_in(5)):
            body = gzip.compress(body)
    if draw(one_in(10)):
        headers["HTTP_ACCEPT"] = draw(st.sampled_from(["text/html", "application/json", "*/*", "application/xml"]))
    auth = draw(st.sampled_from(["anonymous"] * 8 + ["token", "bad-token", "session", "session-csrf"]))
    method = draw(st.sampled_from(["GET", "PUT", "DELETE", "BREW"])) if draw(one_in(20)) else "POST"
    query = ""
    if draw(one_in(10)):
        query = draw(st.sampled_from(["format=json", "format=html", "format=api", "x=%ff%fe", "format="]))
    return Request(url, payload, body, content_type, headers, auth, method, query)


# --- the checks ------------------------------------------------------------------------


@dataclass
class Expected:
    """Accepted events: client event_ids (stored once each) and those the server gives an id."""

    ids: Counter[uuid.UUID] = field(default_factory=Counter)
    without_id: int = 0

    def add(self, event: Any) -> None:
        event_id = event.get("event_id") if isinstance(event, dict) else None
        if event_id is None:
            self.without_id += 1
        else:
            self.ids[uuid.UUID(event_id)] += 1

    def reused(self) -> set[uuid.UUID]:
        """Ids accepted more than once: the writer stores the first and dead-letters a different later one."""
        return {event_id for event_id, count in self.ids.items() if count > 1}


def check_answer(request: Request, response: Any, expected: Expected) -> None:
    assert response.status_code < 500, (response.status_code, response.content)
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    answer = json.loads(response.content.decode("utf-8"))
    assert isinstance(answer, dict), answer
    if response.status_code >= 300:
        assert answer["success"] is False, answer
        errors = answer["errors"]
        assert isinstance(errors, dict) and errors, answer
        assert all(isinstance(key, str) for key in errors), answer
        return
    assert answer["success"] is True, answer
    assert request.payload is not None, "accepted a body that is not JSON we made"
    if request.url == SINGLE_URL:
        assert (response.status_code, answer) == (201, {"success": True})
        expected.add(request.payload)
        return
    assert response.status_code == 200, answer
    events = request.payload["events"]
    rejected = {entry["index"] for entry in answer["rejected"]}
    assert all(entry["errors"] for entry in answer["rejected"]), answer
    assert answer["accepted"] + len(rejected) == len(events), answer
    for index, event in enumerate(events):
        if index not in rejected:
            expected.add(event)


def empty_queue() -> None:
    client = queue.get_redis()
    names = list(client.scan_iter(match=f"{queue.keys().prefix}:*", count=1000))
    if names:
        client.delete(*names)


@pytest.fixture
def clients(db) -> dict[str, APIClient]:
    user = get_user_model().objects.create_user("fuzz", password="fuzz-password-1")
    token = Token.objects.create(user=user)
    anonymous = APIClient()
    with_token = APIClient(HTTP_AUTHORIZATION=f"Token {token.key}")
    bad_token = APIClient(HTTP_AUTHORIZATION="Token " + "0" * 40)
    # enforce_csrf_checks: a session user's POST is checked as in production.
    session = APIClient(enforce_csrf_checks=True)
    session.force_login(user)
    session.cookies["csrftoken"] = CSRF_SECRET
    return {
        "anonymous": anonymous,
        "token": with_token,
        "bad-token": bad_token,
        "session": session,
        "session-csrf": session,
    }


def send(clients: dict[str, APIClient], request: Request) -> Any:
    extra = dict(request.headers)
    if request.auth == "session-csrf":
        extra["HTTP_X_CSRFTOKEN"] = CSRF_SECRET
    # generic(), not post(): post() would re-encode the body in the declared charset.
    url = f"{request.url}?{request.query}" if request.query else request.url
    return clients[request.auth].generic(request.method, url, request.body, content_type=request.content_type, **extra)


@pytest.mark.parametrize("debug", [False, True], ids=["production", "debug"])
def test_any_request_gets_a_4xx_envelope_or_is_stored_exactly_once(clients, debug, settings, rq):
    settings.DEBUG = debug

    @FUZZ_SETTINGS
    @given(st.lists(requests(), min_size=1, max_size=4))
    def run(batch: list[Request]) -> None:
        # Each example starts empty: no rows (inside the test's transaction),
        # nothing queued (an example that failed half-way left its events).
        ABEvent.objects.all().delete()
        empty_queue()
        expected = Expected()
        for request in batch:
            check_answer(request, send(clients, request), expected)
        result = drain()
        assert result.error is None, result
        stats = queue.stats()
        assert (stats.depth, stats.inflight) == (0, 0), stats
        # What validation lets through, the writer stores: the only dead
        # letters are an id reused for a different event (first one wins).
        for dead in queue.dead_letters(0, 1000):
            assert dead.error.startswith("event_id conflict"), dead
            assert uuid.UUID(dead.event_id) in expected.reused(), dead
        stored = Counter(ABEvent.objects.values_list("event_id", flat=True))
        assert all(count == 1 for count in stored.values()), stored
        assert set(expected.ids) <= set(stored), set(expected.ids) - set(stored)
        assert len(stored) == len(expected.ids) + expected.without_id, (stored, expected)

    run()
