"""The report over HTTP: a staff-only JSON API and the admin page "A/B report".

The charts are drawn server-side by plotly (charts.py); the page loads plotly.js from
``plotly_js``, which serves the copy inside the installed plotly package
(no CDN, and the version always matches the Python side).
"""

from __future__ import annotations

from functools import lru_cache

import plotly
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_POST
from plotly.offline import get_plotlyjs
from rest_framework import exceptions
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from server.apps.front.report import record
from server.apps.front.report.build import analyse, build_report, options_from_query
from server.apps.front.report.charts import charts
from server.apps.front.report.render import display


class ABReportView(APIView):
    """``GET /api/rest/front/ab-report/?since=&until=&sequential=&split=``: the report as JSON, staff only."""

    permission_classes = [IsAdminUser]

    def get(self, request: Request) -> Response:
        try:
            options = options_from_query(request.query_params)
        except ValueError as exc:
            raise exceptions.ValidationError({"query": [str(exc)]}) from exc
        return Response(build_report(**options))


def _admin_report(request: HttpRequest) -> TemplateResponse:
    error = None
    try:
        options = options_from_query(request.GET)
    except ValueError as exc:
        error, options = str(exc), {}
    report = analyse(**options)
    context = {
        **admin.site.each_context(request),
        "title": "A/B report",
        "is_nav_sidebar_enabled": False,  # the charts need the width
        "report": report,
        "view": display(report),
        "charts": charts(report),
        "error": error,
        "query": request.GET,
        "plotly_version": plotly.__version__,
    }
    return TemplateResponse(request, "admin/ab_report.html", context)


def _admin_record(request: HttpRequest) -> HttpResponse:
    """POST from the report page's "Record this report" form: the same options as the page, plus a note."""
    try:
        options = options_from_query(request.POST)
    except ValueError as exc:
        messages.error(request, f"Not recorded: {exc}")
        return HttpResponseRedirect(reverse("ab-report-admin"))
    snapshot = record.record(
        recorded_by=request.user.get_username(), note=request.POST.get("note", "").strip(), **options
    )
    messages.success(request, f"Recorded: {snapshot.verdict} (sha256 {snapshot.sha256[:12]}).")
    return HttpResponseRedirect(reverse("admin:front_reportsnapshot_change", args=[snapshot.pk]))


@lru_cache(maxsize=1)
def _plotly_js_bytes() -> bytes:
    return get_plotlyjs().encode("utf-8")


def _plotly_js(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(_plotly_js_bytes(), content_type="text/javascript; charset=utf-8")
    # The URL carries the plotly version, so the file never changes under it.
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    return response


admin_report = admin.site.admin_view(_admin_report)
admin_record = admin.site.admin_view(require_POST(_admin_record))
plotly_js = admin.site.admin_view(_plotly_js, cacheable=True)
