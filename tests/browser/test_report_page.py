"""The admin report page in headless Chromium: the plotly charts really render.

Chromium is Debian's (/usr/bin/chromium), driven by playwright; playwright's
own browser downloads are never used. Set AB_REPORT_SCREENSHOT=docs/report.png
to refresh the screenshot in the docs.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from server.apps.front.models import ABEvent
from tests.browser.chromium import BROWSER_TEST_MARKS, admin_report_page
from tests.report.factories import bulk_sessions, ev

pytestmark = BROWSER_TEST_MARKS
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.txt)")


def _experiment() -> None:
    rng = random.Random(12)
    events = bulk_sessions("fast", 400, 180, rng) + bulk_sessions("deep", 410, 215, rng)
    events += [ev(f"fast-{i}", "fast", "onboarding_abandoned", 1 + i % 3) for i in range(200, 260)]
    events += [ev(f"deep-{i}", "deep", "onboarding_abandoned", 1 + i % 4) for i in range(220, 270)]
    ABEvent.objects.bulk_create(events)


def test_admin_report_page_renders_its_charts(live_server: Any, tmp_path: Path) -> None:
    # All database work happens before playwright starts its event loop in this thread.
    _experiment()
    get_user_model().objects.create_user("staff", password="staff-password-1", is_staff=True)
    shot = Path(os.environ.get("AB_REPORT_SCREENSHOT") or tmp_path / "report.png")
    with admin_report_page(live_server.url, "staff", "staff-password-1") as seen:
        page = seen.page
        page.wait_for_selector("#ab-chart-time svg.main-svg", timeout=20_000)
        assert page.locator(".js-plotly-plot").count() == 6
        charts = ("ab-chart-funnel", "ab-chart-lift", "ab-chart-dropout", "ab-chart-time")
        for chart in (*charts, "ab-chart-survival", "ab-chart-lift-over-time"):
            assert page.locator(f"#{chart}.js-plotly-plot svg.main-svg").count() >= 1, chart
        # Issue 14: a Kaplan-Meier line and band per variant; the lift per day with the daily split.
        assert page.locator("#ab-chart-survival g.trace.scatter").count() == 6
        assert page.locator("#ab-chart-lift-over-time g.trace").count() == 2
        assert "Equal loss test" in page.inner_text("#ab-insights")
        # Bars were drawn: one per stage and variant (fast: 3 steps + 3 stages, deep: 4 + 3).
        assert page.locator("#ab-chart-funnel g.point").count() == 13
        assert "deep wins" in page.inner_text("#ab-verdict")
        assert page.evaluate("typeof Plotly") == "object"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
    assert not seen.errors, seen.errors
    assert all(url.startswith(live_server.url) for url in seen.requests), seen.requests  # nothing from a CDN
    assert shot.stat().st_size > 50_000
