"""abtrack as an SDK, in headless Chromium: the ES module, flush of the whole queue, session and
variant setters, opt-out, stop(), the age limit of saved events and the per-session ``seq``.

Every test counts the rows in ``ab_events`` after a drain. The API is pytest-django's
``live_server`` (http://localhost:PORT); the pages come from another origin
(http://127.0.0.1:OTHER_PORT) that CORS allows. Options reach the page as JSON in the
``o`` query parameter.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.db import connections

from server.apps.front.models import ABEvent
from server.apps.front.pipeline.writer import drain
from tests.browser.chromium import BROWSER_TEST_MARKS, launch

from .conftest import PageServer, drain_until

pytestmark = BROWSER_TEST_MARKS
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.txt)")

SESSION = "sdk-session"
STATIC = Path(__file__).resolve().parents[2] / "server" / "apps" / "front" / "static" / "abtrack"

SETUP = """<!doctype html>
<html><head><meta charset="utf-8"><title>sdk</title>
<script>
  var params = new URLSearchParams(location.search);
  window.errors = [];
  var options = Object.assign({{
    endpoint: '{api}/api/rest/front/ab-events/',
    sessionId: '{session}', variant: 'fast',
    flushInterval: 600000,  // the test decides when to send
    onError: function (kind, detail) {{ window.errors.push([kind, detail]); }}
  }}, JSON.parse(params.get('o') || '{{}}'));
  // Beacons handed to the browser, counted across pages of this tab (as one over its budget when refused).
  var realBeacon = navigator.sendBeacon.bind(navigator);
  navigator.sendBeacon = function (url, data) {{
    var ok = params.has('refuse_beacon') ? false : realBeacon(url, data);
    sessionStorage.setItem('beacons', String(Number(sessionStorage.getItem('beacons') || 0) + 1));
    return ok;
  }};
  // Listeners added on the window or the document while abtrack loads and starts, and every one removed.
  window.listeners = {{added: [], removed: [], recording: true}};
  ['addEventListener', 'removeEventListener'].forEach(function (name) {{
    var real = EventTarget.prototype[name];
    EventTarget.prototype[name] = function (type, fn, opts) {{
      var adding = name === 'addEventListener';
      if ((this === window || this === document) && (window.listeners.recording || !adding)) {{
        window.listeners[adding ? 'added' : 'removed'].push(
          {{target: this === window ? 'window' : 'document', type: type, fn: fn}});
      }}
      return real.call(this, type, fn, opts);
    }};
  }});
</script>
"""

CLASSIC = (
    SETUP
    + """<script src="{api}/static/abtrack/abtrack.js"></script>
<script>window.ab = ABTrack.init(options); window.listeners.recording = false;</script>
</head><body></body></html>
"""
)

MODULE = (
    SETUP
    + """<script type="module">
  // As an app bundles it: a copy of abtrack.mjs on the page's own origin.
  import ABTrack, {{ init, Tracker, VERSION }} from './abtrack.mjs';
  window.moduleInfo = {{
    sameObject: ABTrack.init === init && ABTrack.Tracker === Tracker,
    version: VERSION,
    globalLeak: typeof window.ABTrack
  }};
  window.ab = init(options);
  window.listeners.recording = false;
</script>
</head><body></body></html>
"""
)

PENDING_KEYS = "() => Object.keys(localStorage).filter(k => k.startsWith('abtrack:pending:'))"


class SDKPage:
    """One Chromium tab on the page origin, and every batch body it POSTs by fetch."""

    def __init__(self, page: Any, server: PageServer) -> None:
        self.page = page
        self.server = server
        self.batches: list[dict[str, Any]] = []
        page.on("request", self._record)

    def _record(self, request: Any) -> None:
        if request.method == "POST" and "/ab-events/" in request.url and request.resource_type == "fetch":
            self.batches.append(json.loads(request.post_data))

    def open(self, path: str = "/classic.html", *flags: str, **options: Any) -> Any:
        query = "&".join([*flags, f"o={quote(json.dumps(options))}"])
        self.page.goto(f"{self.server.origin}{path}?{query}")
        self.page.wait_for_function("window.ab !== undefined")
        return self.page

    def leave(self) -> None:
        self.page.goto(f"{self.server.origin}/bye.html")

    def sent(self) -> list[dict[str, Any]]:
        """Every event sent by fetch so far, in order."""
        return [event for batch in self.batches for event in batch["events"]]

    def evaluate(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)


@pytest.fixture
def sdk(live_server, settings, monkeypatch) -> Iterator[SDKPage]:
    # Playwright's sync API keeps an asyncio loop in this thread; Django then
    # refuses ORM calls (drain, assertions) unless told they are safe, which
    # they are: nothing else runs on that loop.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    api = live_server.url
    pages = {
        "/classic.html": CLASSIC.format(api=api, session=SESSION),
        "/module.html": MODULE.format(api=api, session=SESSION),
        "/bye.html": "<!doctype html><p>bye</p>",
        "/abtrack.mjs": ("text/javascript", (STATIC / "abtrack.mjs").read_text(encoding="utf-8")),
    }
    with PageServer(pages) as server:
        settings.CORS_ALLOWED_ORIGINS = [server.origin]
        with sync_api.sync_playwright() as playwright:
            browser = launch(playwright)
            try:
                yield SDKPage(browser.new_context().new_page(), server)
            finally:
                browser.close()
                connections.close_all()


def stored(session: str = SESSION) -> list[ABEvent]:
    return list(ABEvent.objects.filter(session_id=session).order_by("client_ts"))


TRACK = """([n, fields]) => Array.from({length: n}, () => ab.track('step_completed', fields || {}))"""


def test_the_es_module_tracks_like_the_script_and_adds_no_global(sdk):
    page = sdk.open("/module.html")
    # Named exports and the default export are one API; a module leaves no global behind.
    assert page.evaluate("() => window.moduleInfo") == {
        "sameObject": True,
        "version": "2.0.0",
        "globalLeak": "undefined",
    }
    ids = sdk.evaluate(TRACK, [3, {"step_number": 1}])
    sdk.evaluate("() => ab.flush()")
    assert sdk.evaluate("() => ab.pending()") == 0
    assert drain_until(SESSION, 3) == 3
    assert sorted(str(e.event_id) for e in stored()) == sorted(ids)


def test_flush_drains_the_whole_queue_in_batches_within_both_limits(sdk):
    sdk.open(maxBatchEvents=40, maxBatchBytes=20000, maxQueue=5000)
    small = sdk.evaluate(TRACK, [150, {"step_number": 1}])
    padded = sdk.evaluate(TRACK, [80, {"step_number": 2, "metadata": {"pad": "x" * 1000}}])
    sdk.evaluate("() => ab.flush()")
    assert sdk.evaluate("() => ab.pending()") == 0
    assert len(sdk.batches) >= 150 // 40 + 80 * 1000 // 20000
    assert all(len(batch["events"]) <= 40 for batch in sdk.batches)
    assert all(len(json.dumps(batch, separators=(",", ":")).encode()) <= 20000 for batch in sdk.batches)
    assert drain_until(SESSION, 230) == 230
    assert sorted(str(e.event_id) for e in stored()) == sorted(small + padded)


def test_session_and_variant_setters_apply_to_the_next_events_with_their_own_seq(sdk):
    sdk.open()
    sdk.evaluate(TRACK, [2, {}])
    sdk.evaluate("() => { ab.setSession('sdk-other'); ab.setVariant('deep'); }")
    sdk.evaluate(TRACK, [3, {}])
    sdk.evaluate("() => { ab.setSession('sdk-session'); }")
    sdk.evaluate(TRACK, [1, {}])
    sdk.evaluate("() => ab.flush()")
    assert [(e["session_id"], e["variant"], e["seq"]) for e in sdk.sent()] == [
        ("sdk-session", "fast", 1),
        ("sdk-session", "fast", 2),
        ("sdk-other", "deep", 1),
        ("sdk-other", "deep", 2),
        ("sdk-other", "deep", 3),
        ("sdk-session", "deep", 3),
    ]
    assert drain_until(SESSION, 3) == 3
    assert drain_until("sdk-other", 3) == 3
    assert {e.variant for e in stored("sdk-other")} == {"deep"}
    assert [e.variant for e in stored()] == ["fast", "fast", "deep"]


def test_seq_numbers_a_sessions_events_across_page_loads(sdk):
    sdk.open()
    sdk.evaluate(TRACK, [3, {}])
    sdk.evaluate("() => ab.flush()")
    sdk.open()  # the next page of the same session goes on from 4
    sdk.evaluate(TRACK, [2, {}])
    sdk.evaluate("() => ab.flush()")
    sdk.open("/classic.html", "refuse_beacon")
    sdk.evaluate(TRACK, [1, {}])
    sdk.leave()  # the beacon is refused: the 6th waits in localStorage with its number
    sdk.open()
    sdk.page.wait_for_function("ab.pending() === 0")
    assert [e["seq"] for e in sdk.sent()] == [1, 2, 3, 4, 5, 6]
    assert len({e["event_id"] for e in sdk.sent()}) == 6
    # The server takes the field (it ignores keys it does not know; stores it once it does).
    assert drain_until(SESSION, 6) == 6
    if "seq" in {f.name for f in ABEvent._meta.get_fields()}:
        assert [e.seq for e in stored()] == [1, 2, 3, 4, 5, 6]


def test_opt_out_drops_queued_and_saved_events_and_holds_across_loads(sdk):
    sdk.open("/classic.html", "refuse_beacon")
    sdk.evaluate(TRACK, [2, {}])
    sdk.evaluate("() => window.dispatchEvent(new PageTransitionEvent('pagehide'))")  # saved, beacon refused
    assert len(sdk.evaluate(PENDING_KEYS)) == 1
    assert sdk.evaluate("() => sessionStorage.getItem('beacons')") == "1"
    sdk.evaluate(TRACK, [1, {}])
    sdk.evaluate("() => ab.optOut()")
    assert sdk.evaluate("() => ab.pending()") == 0
    assert sdk.evaluate(PENDING_KEYS) == []
    assert sdk.evaluate("() => localStorage.getItem('abtrack:seq')") is None
    assert sdk.evaluate("() => ab.track('step_completed')") is None
    sdk.evaluate("() => ab.flush()")
    sdk.leave()

    page = sdk.open()  # a new page: still opted out, nothing restored, sent or stored
    assert page.evaluate("() => ab.isOptedOut()") is True
    assert page.evaluate("() => ab.track('step_completed')") is None
    page.evaluate("() => window.dispatchEvent(new PageTransitionEvent('pagehide'))")
    assert page.evaluate("() => ab.pending()") == 0
    stored_keys = "() => Object.keys(localStorage).filter(k => k.startsWith('abtrack:') && k !== 'abtrack:consent')"
    assert page.evaluate(stored_keys) == []
    time.sleep(0.5)
    assert sdk.batches == []
    assert page.evaluate("() => sessionStorage.getItem('beacons')") == "1"  # none since the opt-out
    drain()
    assert stored() == []

    page.evaluate("() => ab.optIn()")
    ids = page.evaluate(TRACK, [1, {}])
    page.evaluate("() => ab.flush()")
    assert drain_until(SESSION, 1) == 1
    assert [str(e.event_id) for e in stored()] == ids


def test_opt_out_by_default_tracks_nothing_until_opt_in(sdk):
    page = sdk.open(optOutByDefault=True)
    assert page.evaluate(TRACK, [2, {}]) == [None, None]
    page.evaluate("() => ab.optIn()")
    ids = page.evaluate(TRACK, [2, {}])
    page.evaluate("() => ab.flush()")
    assert [e["seq"] for e in sdk.sent()] == [1, 2]  # nothing was numbered while out
    sdk.open(optOutByDefault=True)  # the choice is remembered
    assert sdk.evaluate("() => ab.isOptedOut()") is False
    assert drain_until(SESSION, 2) == 2
    assert sorted(str(e.event_id) for e in stored()) == sorted(ids)


def test_stop_removes_every_listener_it_added_and_hands_over_the_queue(sdk):
    page = sdk.open()
    assert page.evaluate("() => window.listeners.added.map(l => l.target + ':' + l.type).sort()") == [
        "document:visibilitychange",
        "window:pagehide",
    ]
    ids = page.evaluate(TRACK, [5, {}])
    page.evaluate("() => ab.stop()")
    assert page.evaluate("() => ab.pending()") == 0
    # Each listener abtrack added is removed: same target, type and function.
    assert page.evaluate("""() => window.listeners.added.every(a =>
        window.listeners.removed.some(r => r.target === a.target && r.type === a.type && r.fn === a.fn))""")
    assert page.evaluate("() => ab.track('step_completed')") is None
    page.evaluate("() => window.dispatchEvent(new PageTransitionEvent('pagehide'))")
    sdk.leave()
    assert sdk.page.evaluate("() => sessionStorage.getItem('beacons')") is None  # no beacon after stop
    assert len(sdk.batches) == 1
    assert drain_until(SESSION, 5) == 5
    assert sorted(str(e.event_id) for e in stored()) == sorted(ids)


def test_stop_while_the_server_refuses_keeps_the_events_for_the_next_load(sdk, settings):
    settings.AB_QUEUE_MAX = 0  # every push is refused: 503 + Retry-After
    page = sdk.open()
    ids = page.evaluate(TRACK, [4, {}])
    page.evaluate("() => ab.stop()")
    assert page.evaluate("() => ab.pending()") == 4
    assert len(page.evaluate(PENDING_KEYS)) == 1
    settings.AB_QUEUE_MAX = 100_000
    sdk.open()
    sdk.page.wait_for_function("ab.pending() === 0")
    assert drain_until(SESSION, 4) == 4
    assert sorted(str(e.event_id) for e in stored()) == sorted(ids)


def test_saved_events_older_than_max_event_age_are_dropped_on_load(sdk):
    sdk.open("/classic.html", "refuse_beacon")
    old = sdk.evaluate(TRACK, [2, {}])
    sdk.page.wait_for_timeout(1500)
    recent = sdk.evaluate(TRACK, [3, {}])
    sdk.leave()  # beacons refused: all five saved

    page = sdk.open(maxEventAgeMs=1000)
    page.wait_for_function("ab.pending() === 0")
    expired = page.evaluate("() => window.errors.filter(e => e[0] === 'expired').map(e => e[1].map(ev => ev.event_id))")
    assert [sorted(ids) for ids in expired] == [sorted(old)]
    assert page.evaluate(PENDING_KEYS) == []
    assert drain_until(SESSION, 3) == 3
    assert sorted(str(e.event_id) for e in stored()) == sorted(recent)


FILL_STORAGE = """() => {
  // Fill localStorage to its quota, then free 16 KiB: room for some of the events, not all.
  let n = 0;
  for (let size = 1 << 20; size >= 1 << 14; size >>= 1) {
    const chunk = 'f'.repeat(size);
    try { for (;;) localStorage.setItem('filler:' + n++, chunk); } catch (e) { /* full at this size */ }
  }
  localStorage.removeItem('filler:' + (n - 2));
}"""


def test_with_storage_nearly_full_the_newest_events_that_fit_are_saved_and_the_rest_reported(sdk):
    page = sdk.open("/classic.html", "refuse_beacon")
    page.evaluate(FILL_STORAGE)
    ids = page.evaluate(TRACK, [50, {"metadata": {"pad": "p" * 1000}}])
    page.evaluate("() => window.dispatchEvent(new PageTransitionEvent('pagehide'))")  # beacons refused: save
    not_saved = page.evaluate("() => window.errors.filter(e => e[0] === 'not_saved').map(e => e[1])")
    saved = page.evaluate(
        "() => Object.keys(localStorage).filter(k => k.startsWith('abtrack:pending:'))"
        ".flatMap(k => JSON.parse(localStorage.getItem(k)).map(e => e.event_id))"
    )
    assert len(not_saved) == 1 and 0 < not_saved[0] < 50
    assert saved == ids[not_saved[0] :]  # the newest
    sdk.leave()  # the page goes with the storage still full: the same newest ones stay saved

    sdk.open()  # the next load sends what was saved
    sdk.page.wait_for_function("ab.pending() === 0")
    assert drain_until(SESSION, len(saved)) == len(saved)
    assert sorted(str(e.event_id) for e in stored()) == sorted(saved)
