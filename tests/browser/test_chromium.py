"""Headless Chromium: a page on another origin uses abtrack.js, fires events, navigates away.

Every event, the ones the beacon sends on ``pagehide`` included, must land in
``ab_events`` exactly once. The API is pytest-django's ``live_server``
(http://localhost:PORT) with CORS allowing the page's origin
(http://127.0.0.1:OTHER_PORT), which serves the page from a plain http.server.
Chromium is Debian's (/usr/bin/chromium), driven by playwright; playwright's
own browser downloads are never used.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections

from server.apps.front.models import ABEvent
from server.apps.front.pipeline import queue
from server.apps.front.pipeline.writer import drain
from tests.browser.chromium import BROWSER_TEST_MARKS, launch

from .conftest import PageServer, drain_until, wait_for_depth

pytestmark = BROWSER_TEST_MARKS
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.txt)")

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>onboarding</title>
<script src="{api}/static/abtrack/abtrack.js"></script>
</head><body>
<script>
  // Count the beacons this page hands to the browser (read back on the next page, same origin).
  var realBeacon = navigator.sendBeacon.bind(navigator);
  var refuse = location.search.indexOf('refuse_beacon') >= 0;  // as a browser over its 64 KB budget does
  navigator.sendBeacon = function (url, data) {{
    var ok = refuse ? false : realBeacon(url, data);
    sessionStorage.setItem('beacons', String(Number(sessionStorage.getItem('beacons') || 0) + 1));
    sessionStorage.setItem('beacon_ok', String(ok));
    return ok;
  }};
  window.errors = [];
  var options = {{
    endpoint: '{api}/api/rest/front/ab-events/',
    sessionId: '{session}', variant: 'fast',
    flushInterval: 600000,  // the test decides when fetch sends; the rest waits for pagehide
    onError: function (kind, detail) {{ window.errors.push([kind, detail]); }}
  }};
  // As for a user with a Django session: headers rule out sendBeacon, so keepalive fetch carries the unload.
  if (location.search.indexOf('csrf') >= 0) {{
    options.headers = function () {{ return {{'X-CSRFToken': 'none-needed'}}; }};
  }}
  window.ab = ABTrack.init(options);
</script>
</body></html>
"""


@pytest.fixture
def browser_page(live_server, settings, monkeypatch) -> Iterator[tuple[Any, PageServer, str]]:
    # Playwright's sync API keeps an asyncio loop in this thread; Django then
    # refuses ORM calls (drain, assertions) unless told they are safe, which
    # they are: nothing else runs on that loop.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    session = "chromium-session"
    api = live_server.url
    assert api.startswith("http://localhost:")
    pages = {"/index.html": PAGE.format(api=api, session=session), "/bye.html": "<!doctype html><p>bye</p>"}
    with PageServer(pages) as server:
        settings.CORS_ALLOWED_ORIGINS = [server.origin]
        with sync_api.sync_playwright() as playwright:
            browser = launch(playwright)
            try:
                page = browser.new_context().new_page()
                page.goto(f"{server.origin}/index.html")
                page.wait_for_function("window.ab !== undefined")
                yield page, server, session
            finally:
                browser.close()
                # The ORM calls made while playwright's loop ran opened a
                # connection that pytest-django's teardown does not see.
                connections.close_all()


TRACK = """([steps]) => steps.map(([type, step]) => ab.track(type, {step_number: step, metadata: {via: 'chromium'}}))"""


def test_every_event_lands_exactly_once_including_the_pagehide_beacon(browser_page):
    page, server, session = browser_page
    sent_by_fetch = page.evaluate(
        TRACK, [[["variant_assigned", None], ["onboarding_started", None], ["step_completed", 1]]]
    )
    page.evaluate("() => ab.flush()")
    assert page.evaluate("() => ab.pending()") == 0
    assert wait_for_depth(3) == 3

    left_for_beacon = page.evaluate(TRACK, [[["step_completed", 2], ["onboarding_completed", None]]])
    assert page.evaluate("() => ab.pending()") == 2
    page.goto(f"{server.origin}/bye.html")  # pagehide: abtrack hands the queue to sendBeacon

    assert page.evaluate("() => sessionStorage.getItem('beacons')") == "1"
    assert page.evaluate("() => sessionStorage.getItem('beacon_ok')") == "true"
    assert wait_for_depth(5) == 5
    time.sleep(0.5)  # nothing more arrives: no resend
    assert queue.stats().depth == 5

    drain()
    rows = ABEvent.objects.filter(session_id=session)
    assert sorted(str(e) for e in rows.values_list("event_id", flat=True)) == sorted(sent_by_fetch + left_for_beacon)
    assert all(row.client_ts is not None and row.event_time is not None for row in rows)
    assert all(row.event_time <= row.timestamp for row in rows)
    assert all(row.metadata == {"via": "chromium"} for row in rows)
    assert sorted(rows.values_list("event_type", "step_number")) == sorted(
        [
            ("variant_assigned", None),
            ("onboarding_started", None),
            ("step_completed", 1),
            ("step_completed", 2),
            ("onboarding_completed", None),
        ]
    )


def test_a_503_is_retried_with_the_same_event_ids_after_retry_after(browser_page, settings):
    page, _server, session = browser_page
    settings.AB_QUEUE_MAX = 0  # every push is refused: 503 + Retry-After
    settings.AB_RETRY_AFTER = 3
    ids = page.evaluate(TRACK, [[["variant_assigned", None], ["onboarding_started", None]]])
    page.evaluate("() => ab.flush()")
    # Back in the queue, and the wait is the server's Retry-After (readable cross-origin), not the backoff.
    assert page.evaluate("() => ab.pending()") == 2
    wait_ms = page.evaluate("() => ab.retryAt - Date.now()")
    assert 2000 < wait_ms <= 3000
    assert page.evaluate("() => window.errors.map(e => e[0])") == ["retry"]

    settings.AB_QUEUE_MAX = 1000
    page.evaluate("() => ab.flush()")  # too early: the tracker holds back
    assert page.evaluate("() => ab.pending()") == 2
    page.wait_for_timeout(wait_ms + 100)
    page.evaluate("() => ab.flush()")
    assert page.evaluate("() => ab.pending()") == 0
    assert wait_for_depth(2) == 2

    drain()
    assert sorted(
        str(e) for e in ABEvent.objects.filter(session_id=session).values_list("event_id", flat=True)
    ) == sorted(ids)


def test_events_the_browser_refuses_at_unload_are_sent_by_the_next_page_load(browser_page):
    page, server, session = browser_page
    page.goto(f"{server.origin}/index.html?refuse_beacon=1")
    page.wait_for_function("window.ab !== undefined")
    ids = page.evaluate(TRACK, [[["variant_assigned", None], ["onboarding_abandoned", None]]])
    page.goto(f"{server.origin}/bye.html")  # pagehide: the beacon is refused, the events go to localStorage
    assert page.evaluate("() => sessionStorage.getItem('beacon_ok')") == "false"
    assert page.evaluate("() => Object.keys(localStorage).filter(k => k.startsWith('abtrack:pending:')).length") == 1
    assert queue.stats().depth == 0

    page.goto(f"{server.origin}/index.html")  # the next load takes them over and sends them
    page.wait_for_function("window.ab !== undefined && ab.pending() === 0")
    assert wait_for_depth(2) == 2
    assert page.evaluate("() => Object.keys(localStorage).filter(k => k.startsWith('abtrack:pending:')).length") == 0

    drain()
    stored = ABEvent.objects.filter(session_id=session).values_list("event_id", flat=True)
    assert sorted(str(e) for e in stored) == sorted(ids)


PADDED = """(n) => Array.from({length: n}, (_, i) =>
  ab.track('step_completed', {step_number: i % 10, metadata: {pad: 'x'.repeat(1000)}}))"""


@pytest.mark.parametrize("transport", ["keepalive_fetch", "beacon"])
def test_a_queue_over_the_keepalive_budget_at_unload_lands_whole_after_the_next_load(browser_page, transport):
    # 300 events of ~1.1 KB: five times the browser's 64 KiB keepalive budget.
    page, server, session = browser_page
    query = "?csrf=1" if transport == "keepalive_fetch" else ""
    page.goto(f"{server.origin}/index.html{query}")
    page.wait_for_function("window.ab !== undefined")
    ids = page.evaluate(PADDED, 300)
    assert len(set(ids)) == 300
    page.goto(f"{server.origin}/bye.html")  # pagehide: what fits goes now, the rest waits in localStorage

    page.goto(f"{server.origin}/index.html{query}")  # the next load sends what the browser did not accept
    page.wait_for_function("window.ab !== undefined && ab.pending() === 0", timeout=30_000)
    assert page.evaluate("() => Object.keys(localStorage).filter(k => k.startsWith('abtrack:pending:')).length") == 0

    assert drain_until(session, 300) == 300
    stored = ABEvent.objects.filter(session_id=session).values_list("event_id", flat=True)
    assert sorted(str(e) for e in stored) == sorted(ids)


SAVED = """() => Object.keys(localStorage).filter(k => k.startsWith('abtrack:pending:'))
  .map(k => JSON.parse(localStorage.getItem(k)).length)"""


def test_at_pagehide_keepalive_fetches_stay_within_the_budget_and_saved_events_go_once_accepted(browser_page):
    page, server, session = browser_page
    page.goto(f"{server.origin}/index.html?csrf=1")
    page.wait_for_function("window.ab !== undefined")
    page.evaluate("() => { ab.opts.maxBatchEvents = 1000; }")  # nothing leaves while tracking
    ids = page.evaluate(PADDED, 300)
    # pagehide without leaving (as into the back/forward cache): the page lives on and sees every answer.
    # Read in the same task as the event, before any answer can come in.
    in_flight = page.evaluate(
        f"""() => {{
          window.dispatchEvent(new PageTransitionEvent('pagehide'));
          return {{bytes: ab.keepaliveBytes, requests: ab.requests.length, queued: ab.queue.length,
                   saved: ({SAVED})()}};
        }}"""
    )
    assert 0 < in_flight["bytes"] <= 65536
    assert in_flight["requests"] >= 1 and in_flight["queued"] > 0
    assert in_flight["saved"] == [300]  # unanswered ones included

    page.wait_for_function("ab.requests.length === 0")
    assert page.evaluate("() => window.errors.map(e => e[0])") == []  # no keepalive fetch was refused
    assert page.evaluate(SAVED) == [300 - wait_for_depth(1)]  # answered ones left storage, the rest stays
    page.evaluate("() => ab.flush()")
    assert page.evaluate("() => ab.pending()") == 0
    assert page.evaluate(SAVED) == []
    assert drain_until(session, 300) == 300
    assert sorted(str(e) for e in ABEvent.objects.filter(session_id=session).values_list("event_id", flat=True)) == (
        sorted(ids)
    )
