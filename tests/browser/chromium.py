"""Headless Chromium for the browser tests: Debian's binary driven by playwright.

Playwright's own browser downloads are never used (no network at run time);
`.ci/run` installs Debian's `chromium`. Without it the tests skip, saying why.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling Google's
# hosts, which this closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

BROWSER_TEST_MARKS = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"),
]


def launch(playwright: Any) -> Any:
    """A headless Debian Chromium browser from a running ``sync_playwright()``."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@dataclass
class ReportPage:
    """The admin report page in a logged-in headless Chromium, with what the browser saw."""

    page: Any
    errors: list[str] = field(default_factory=list)  # uncaught JavaScript errors
    requests: list[str] = field(default_factory=list)  # every URL the page fetched


@contextlib.contextmanager
def admin_report_page(server_url: str, username: str, password: str) -> Iterator[ReportPage]:
    """Log in as ``username`` (a staff user the test created before: no database work once playwright runs
    its event loop in this thread) and open /admin/ab-report/."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            seen = ReportPage(browser.new_page(viewport={"width": 1400, "height": 1000}))
            seen.page.on("pageerror", lambda exc: seen.errors.append(str(exc)))
            seen.page.on("request", lambda request: seen.requests.append(request.url))
            seen.page.goto(f"{server_url}/admin/login/?next=/admin/ab-report/")
            seen.page.fill("#id_username", username)
            seen.page.fill("#id_password", password)
            seen.page.click("input[type=submit]")
            seen.page.wait_for_url("**/admin/ab-report/")
            yield seen
        finally:
            browser.close()
