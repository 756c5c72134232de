"""The report over HTTP: a staff-only JSON API and the admin page "A/B report".

The charts are drawn server-side by plotly; the page loads plotly.js from
``plotly_js``, which serves the copy inside the installed plotly package
(no CDN, and the version always matches the Python side).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import plotly
import plotly.graph_objects as go
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots
from rest_framework import exceptions
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from server.apps.front.experiment import COLORS
from server.apps.front.report.build import build_report, options_from_query

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


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
    report = build_report(**options)
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


@lru_cache(maxsize=1)
def _plotly_js_bytes() -> bytes:
    return get_plotlyjs().encode("utf-8")


def _plotly_js(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(_plotly_js_bytes(), content_type="text/javascript; charset=utf-8")
    # The URL carries the plotly version, so the file never changes under it.
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    return response


admin_report = admin.site.admin_view(_admin_report)
plotly_js = admin.site.admin_view(_plotly_js, cacheable=True)


# --- presentation helpers -------------------------------------------------------------


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f}%"


def _points(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.2f} pp"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return "< 1e-16" if value < 1e-16 else f"{value:.3g}"


def _seconds(ms: float | None, sign: str = "") -> str:
    return "–" if ms is None else f"{ms / 1000:{sign}.1f} s"


def display(report: dict[str, Any]) -> dict[str, Any]:
    """Pre-formatted strings for the template (Django templates cannot multiply)."""
    p = report["primary"]
    a, b = report["control"], report["treatment"]
    return {
        "primary": [
            ("Completion rate", f"{a} {_pct(p['rate_a'])} · {b} {_pct(p['rate_b'])}"),
            (f"Difference ({b} − {a})", f"{_points(p['diff'])}  [{_points(p['diff_low'])}, {_points(p['diff_high'])}]"),
            ("Relative lift", f"{_pct(p['lift'])}  [{_pct(p['lift_low'])}, {_pct(p['lift_high'])}] (delta method)"),
            ("p-value (two-proportion z-test)", _p(p["p_value"])),
            ("Always-valid interval", f"{_points(p['seq_low'])} to {_points(p['seq_high'])}"),
            (f"P({b} better) · P({a} better)", f"{_pct(p['prob_b_better'])} · {_pct(p['prob_a_better'])}"),
            ("SRM p-value", _p(report["srm"]["p_value"])),
        ],
        "secondary": [
            {
                "metric": m["metric"],
                "control": _seconds(m["control"]) if m["kind"] == "mean" else _pct(m["control"]),
                "treatment": _seconds(m["treatment"]) if m["kind"] == "mean" else _pct(m["treatment"]),
                "diff": _seconds(m["diff"], "+") if m["kind"] == "mean" else _points(m["diff"]),
                "p": _p(m["p_value"]),
                "p_adjusted": _p(m["p_adjusted"]),
                "significant": m["significant"],
            }
            for m in report["secondary"]
        ],
        "funnel": {
            variant: [
                {
                    "label": s["label"],
                    "sessions": s["sessions"],
                    "share": _pct(s["share_of_assigned"]),
                    "ci": f"{_pct(s['ci_low'])} – {_pct(s['ci_high'])}",
                    "step_to_step": "" if s["step_to_step"] is None else _pct(s["step_to_step"]),
                }
                for s in stages
            ]
            for variant, stages in report["funnel"].items()
        },
    }


def _html(fig: go.Figure, div_id: str) -> str:
    fig.update_layout(template="plotly_white", margin={"l": 60, "r": 20, "t": 60, "b": 50}, height=380)
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOTLY_CONFIG)


def _funnel_chart(report: dict[str, Any]) -> go.Figure:
    fig = go.Figure()
    for variant, stages in report["funnel"].items():
        shares = [s["share_of_assigned"] or 0 for s in stages]
        fig.add_bar(
            name=variant,
            x=[s["label"] for s in stages],
            y=shares,
            marker_color=COLORS.get(variant),
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [(s["ci_high"] or 0) - v for s, v in zip(stages, shares, strict=True)],
                "arrayminus": [v - (s["ci_low"] or 0) for s, v in zip(stages, shares, strict=True)],
            },
            customdata=[s["sessions"] for s in stages],
            hovertemplate="%{x}: %{y:.1%} (%{customdata:,} sessions)<extra>" + variant + "</extra>",
        )
    fig.update_layout(
        title="Funnel: share of assigned sessions (whiskers: 95% Wilson interval)",
        barmode="group",
        yaxis_tickformat=".0%",
        yaxis_range=[0, 1.05],
    )
    return fig


def _dropout_chart(report: dict[str, Any]) -> go.Figure:
    fig = go.Figure()
    for variant, rows in report["dropout"].items():
        fig.add_bar(
            name=variant,
            x=[f"step {r['step']}" if r["step"] is not None else "unknown" for r in rows],
            y=[r["share_of_assigned"] for r in rows],
            marker_color=COLORS.get(variant),
            customdata=[r["sessions"] for r in rows],
            hovertemplate="%{x}: %{y:.1%} of assigned (%{customdata:,} sessions)<extra>" + variant + "</extra>",
        )
    fig.update_layout(
        title="Drop-off: sessions that sent onboarding_abandoned, by step", barmode="group", yaxis_tickformat=".1%"
    )
    return fig


def _time_chart(report: dict[str, Any]) -> go.Figure:
    fig = go.Figure()
    for variant, rows in report["time_per_step"].items():
        medians = [r["median_ms"] / 1000 for r in rows]
        fig.add_bar(
            name=variant,
            x=[f"step {r['step']}" for r in rows],
            y=medians,
            marker_color=COLORS.get(variant),
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [r["p90_ms"] / 1000 - m for r, m in zip(rows, medians, strict=True)],
                "arrayminus": [0] * len(rows),
            },
            customdata=[[r["mean_ms"] / 1000, r["p90_ms"] / 1000, r["sessions"]] for r in rows],
            hovertemplate="%{x}: median %{y:.1f} s, P90 %{customdata[1]:.1f} s, capped mean %{customdata[0]:.1f} s"
            " (%{customdata[2]:,} sessions)<extra>" + variant + "</extra>",
        )
    fig.update_layout(
        title="Time per step (descriptive): median, whisker to P90",
        barmode="group",
        yaxis_title="seconds",
    )
    return fig


def _lift_chart(report: dict[str, Any]) -> go.Figure:
    p = report["primary"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Difference in completion rate (points)", "Relative lift (%)"))
    fixed, always = "95% interval", "always-valid 95%"
    rows = [(fixed, p["diff"], p["diff_low"], p["diff_high"]), (always, p["diff"], p["seq_low"], p["seq_high"])]
    for col, data in ((1, rows), (2, [(fixed, p["lift"], p["lift_low"], p["lift_high"])])):
        present = [r for r in data if None not in r[1:]]
        fig.add_scatter(
            x=[r[1] * 100 for r in present],
            y=[r[0] for r in present],
            mode="markers",
            marker={"size": 12, "color": COLORS[report["treatment"]]},
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [(r[3] - r[1]) * 100 for r in present],
                "arrayminus": [(r[1] - r[2]) * 100 for r in present],
            },
            showlegend=False,
            hovertemplate="%{y}: %{x:+.2f}<extra></extra>",
            row=1,
            col=col,
        )
        fig.add_vline(x=0, line_dash="dash", line_color="grey", row=1, col=col)
    # Same rows in both panels, so the intervals line up.
    fig.update_yaxes(categoryorder="array", categoryarray=[always, fixed], range=[-0.6, 1.6])
    fig.update_yaxes(showticklabels=False, row=1, col=2)
    fig.update_layout(title=f"{report['treatment']} vs {report['control']} (control)")
    return fig


def charts(report: dict[str, Any]) -> list[dict[str, str]]:
    """The page's four plotly charts as HTML fragments (plotly.js itself is loaded once by the page)."""
    return [
        {"id": "ab-chart-funnel", "html": _html(_funnel_chart(report), "ab-chart-funnel")},
        {"id": "ab-chart-lift", "html": _html(_lift_chart(report), "ab-chart-lift")},
        {"id": "ab-chart-dropout", "html": _html(_dropout_chart(report), "ab-chart-dropout")},
        {"id": "ab-chart-time", "html": _html(_time_chart(report), "ab-chart-time")},
    ]
