"""The report over HTTP: staff-only JSON API, the admin page, plotly.js served from the package."""

from __future__ import annotations

import random

import plotly
import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from plotly.offline import get_plotlyjs

from server.apps.front.models import ABEvent

from .factories import bulk_sessions

pytestmark = pytest.mark.django_db
API = "/api/rest/front/ab-report/"
PAGE = "/admin/ab-report/"


@pytest.fixture
def experiment() -> None:
    rng = random.Random(4)
    ABEvent.objects.bulk_create(bulk_sessions("fast", 200, 60, rng) + bulk_sessions("deep", 200, 110, rng))


def _client(*, staff: bool, superuser: bool = False) -> Client:
    user = get_user_model().objects.create_user(f"user-{staff}", password="pw", is_staff=staff, is_superuser=superuser)
    client = Client()
    client.force_login(user)
    return client


def test_api_refuses_anonymous_and_non_staff() -> None:
    assert Client().get(API).status_code in (401, 403)
    assert _client(staff=False).get(API).status_code == 403


def test_api_gives_staff_the_report(experiment: None) -> None:
    response = _client(staff=True).get(API)
    assert response.status_code == 200
    body = response.json()
    assert body["verdict"] == "deep wins"
    assert body["sessions"]["analysed"] == {"fast": 200, "deep": 200}
    assert body["primary"]["x_b"] == 110


def test_api_filters_and_options(experiment: None) -> None:
    client = _client(staff=True)
    assert client.get(API, {"until": "2025-02-28"}).json()["sessions"]["events"] == 0
    sequential = client.get(API, {"sequential": "1", "split": "fast=0.5,deep=0.5"}).json()
    assert sequential["params"]["sequential"] is True
    assert any("always-valid" in reason for reason in sequential["reasons"])


@pytest.mark.parametrize("query", [{"since": "last week"}, {"split": "fast=1"}, {"sequential": "maybe"}])
def test_api_rejects_bad_query(query: dict[str, str]) -> None:
    response = _client(staff=True).get(API, query)
    assert response.status_code == 400
    assert response.json()["success"] is False and "query" in response.json()["errors"]


def test_admin_page_requires_staff() -> None:
    response = Client().get(PAGE)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert _client(staff=False).get(PAGE).status_code == 302


def test_admin_page_renders_verdict_tables_and_six_charts(experiment: None) -> None:
    response = _client(staff=True).get(PAGE)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Verdict: deep wins" in html
    charts = ("ab-chart-funnel", "ab-chart-lift", "ab-chart-dropout", "ab-chart-time")
    for chart in (*charts, "ab-chart-survival", "ab-chart-lift-over-time"):  # the last two: issue 14
        assert f'id="{chart}"' in html
    assert html.count("Plotly.newPlot") == 6
    assert 'id="ab-insights"' in html and "Equal loss test" in html
    # plotly.js comes from this server, never from a CDN.
    assert f'/admin/ab-report/plotly.min.js?v={plotly.__version__}"' in html
    assert "cdn" not in html.lower()


def test_admin_page_shows_a_bad_filter_instead_of_failing(experiment: None) -> None:
    response = _client(staff=True).get(PAGE, {"since": "soon"})
    assert response.status_code == 200
    assert "is not an ISO date" in response.content.decode()


def test_plotly_js_is_the_installed_package_copy() -> None:
    response = _client(staff=True).get("/admin/ab-report/plotly.min.js")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/javascript")
    assert response.content == get_plotlyjs().encode()
    assert "max-age" in response["Cache-Control"]


def test_admin_index_links_to_the_report() -> None:
    html = _client(staff=True, superuser=True).get("/admin/").content.decode()
    assert 'id="ab-report-link"' in html and f'href="{PAGE}"' in html
    assert "app-auth" in html  # the stock app list is still there
