"""The admin page's four plotly charts, drawn server-side from the typed report.

The page loads plotly.js once (``views.plotly_js``); each chart is an HTML
fragment. Colours come from the experiment.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from server.apps.front.experiment import COLORS
from server.apps.front.report.model import Report

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


def _html(fig: go.Figure, div_id: str) -> str:
    fig.update_layout(template="plotly_white", margin={"l": 60, "r": 20, "t": 60, "b": 50}, height=380)
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOTLY_CONFIG)


def _funnel_chart(report: Report) -> go.Figure:
    fig = go.Figure()
    for variant, stages in report.funnel.items():
        shares = [s.share_of_assigned or 0 for s in stages]
        fig.add_bar(
            name=variant,
            x=[s.label for s in stages],
            y=shares,
            marker_color=COLORS.get(variant),
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [(s.ci_high or 0) - v for s, v in zip(stages, shares, strict=True)],
                "arrayminus": [v - (s.ci_low or 0) for s, v in zip(stages, shares, strict=True)],
            },
            customdata=[s.sessions for s in stages],
            hovertemplate="%{x}: %{y:.1%} (%{customdata:,} sessions)<extra>" + variant + "</extra>",
        )
    fig.update_layout(
        title="Funnel: share of assigned sessions (whiskers: 95% Wilson interval)",
        barmode="group",
        yaxis_tickformat=".0%",
        yaxis_range=[0, 1.05],
    )
    return fig


def _dropout_chart(report: Report) -> go.Figure:
    fig = go.Figure()
    for variant, rows in report.dropout.items():
        fig.add_bar(
            name=variant,
            x=[f"step {r.step}" if r.step is not None else "unknown" for r in rows],
            y=[r.share_of_assigned for r in rows],
            marker_color=COLORS.get(variant),
            customdata=[r.sessions for r in rows],
            hovertemplate="%{x}: %{y:.1%} of assigned (%{customdata:,} sessions)<extra>" + variant + "</extra>",
        )
    fig.update_layout(
        title="Drop-off: sessions that sent onboarding_abandoned, by step", barmode="group", yaxis_tickformat=".1%"
    )
    return fig


def _time_chart(report: Report) -> go.Figure:
    fig = go.Figure()
    for variant, rows in report.time_per_step.items():
        medians = [r.median_ms / 1000 for r in rows]
        fig.add_bar(
            name=variant,
            x=[f"step {r.step}" for r in rows],
            y=medians,
            marker_color=COLORS.get(variant),
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [r.p90_ms / 1000 - m for r, m in zip(rows, medians, strict=True)],
                "arrayminus": [0] * len(rows),
            },
            customdata=[[r.mean_ms / 1000, r.p90_ms / 1000, r.sessions] for r in rows],
            hovertemplate="%{x}: median %{y:.1f} s, P90 %{customdata[1]:.1f} s, capped mean %{customdata[0]:.1f} s"
            " (%{customdata[2]:,} sessions)<extra>" + variant + "</extra>",
        )
    fig.update_layout(
        title="Time per step (descriptive): median, whisker to P90",
        barmode="group",
        yaxis_title="seconds",
    )
    return fig


def _lift_chart(report: Report) -> go.Figure:
    p = report.primary.result
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Difference in completion rate (points)", "Relative lift (%)"))
    fixed, always = "95% interval", "always-valid 95%"
    rows = [(fixed, p.diff, p.diff_low, p.diff_high), (always, p.diff, p.seq_low, p.seq_high)]
    for col, data in ((1, rows), (2, [(fixed, p.lift, p.lift_low, p.lift_high)])):
        present = [r for r in data if None not in r[1:]]
        fig.add_scatter(
            x=[r[1] * 100 for r in present],
            y=[r[0] for r in present],
            mode="markers",
            marker={"size": 12, "color": COLORS[report.treatment]},
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
    fig.update_layout(title=f"{report.treatment} vs {report.control} (control)")
    return fig


def _survival_chart(report: Report) -> go.Figure:
    fig = go.Figure()
    s = report.insights.survival if report.insights else None
    for variant, arm in ((report.control, s.a), (report.treatment, s.b)) if s else ():
        x = [0.0] + [p.seconds for p in arm.curve]
        fig.add_scatter(
            name=variant,
            x=x,
            y=[0.0] + [1 - p.not_completed for p in arm.curve],
            mode="lines",
            line={"shape": "hv", "color": COLORS.get(variant)},
            hovertemplate="%{x:.0f} s: %{y:.1%} completed<extra>" + variant + "</extra>",
        )
        # The band: its upper edge, then its lower edge filled up to it (both drawn forward as steps).
        fig.add_scatter(
            x=x,
            y=[0.0] + [1 - p.low for p in arm.curve],
            mode="lines",
            line={"width": 0, "shape": "hv"},
            showlegend=False,
            hoverinfo="skip",
        )
        fig.add_scatter(
            x=x,
            y=[0.0] + [1 - p.high for p in arm.curve],
            mode="lines",
            fill="tonexty",
            line={"width": 0, "shape": "hv"},
            fillcolor=COLORS.get(variant),
            opacity=0.2,
            showlegend=False,
            hoverinfo="skip",
        )
    fig.update_layout(
        title="Completed by time since assignment (Kaplan-Meier, 95% band)",
        xaxis_title="seconds since assignment",
        yaxis_tickformat=".0%",
    )
    return fig


def _gap(high: float | None, low: float | None) -> float:
    return 0.0 if high is None or low is None else high - low


def _lift_over_time_chart(report: Report) -> go.Figure:
    points = report.insights.lift_over_time if report.insights else []
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    days = [p.day for p in points]
    colour = COLORS[report.treatment]
    fig.add_scatter(
        name="cumulative lift",
        x=days,
        y=[p.lift for p in points],
        mode="lines+markers",
        line={"color": colour},
        error_y={
            "type": "data",
            "symmetric": False,
            "array": [_gap(p.lift_high, p.lift) for p in points],
            "arrayminus": [_gap(p.lift, p.lift_low) for p in points],
        },
        hovertemplate="%{x}: lift %{y:.1%}<extra></extra>",
    )
    fig.add_bar(
        name=f"{report.treatment} share of the day's sessions",
        x=days,
        y=[p.share.get(report.treatment) for p in points],
        marker_color="lightgrey",
        opacity=0.5,
        secondary_y=True,
        hovertemplate="%{x}: %{y:.1%} of the day's sessions<extra></extra>",
    )
    fig.add_hline(y=0, line_dash="dash", line_color="grey")
    fig.update_yaxes(tickformat=".0%", title_text="cumulative relative lift", secondary_y=False)
    fig.update_yaxes(tickformat=".0%", range=[0, 1], title_text="daily split", secondary_y=True)
    fig.update_xaxes(type="category")  # one point per day of assignment, labelled by its date
    fig.update_layout(title="Lift over time (cumulative, 95% interval) and the daily split", barmode="overlay")
    return fig


def charts(report: Report) -> list[dict[str, str]]:
    """The page's plotly charts as HTML fragments (plotly.js itself is loaded once by the page)."""
    extra = (
        [
            {"id": "ab-chart-survival", "html": _html(_survival_chart(report), "ab-chart-survival")},
            {"id": "ab-chart-lift-over-time", "html": _html(_lift_over_time_chart(report), "ab-chart-lift-over-time")},
        ]
        if report.insights is not None
        else []
    )
    return [
        {"id": "ab-chart-funnel", "html": _html(_funnel_chart(report), "ab-chart-funnel")},
        {"id": "ab-chart-lift", "html": _html(_lift_chart(report), "ab-chart-lift")},
        {"id": "ab-chart-dropout", "html": _html(_dropout_chart(report), "ab-chart-dropout")},
        {"id": "ab-chart-time", "html": _html(_time_chart(report), "ab-chart-time")},
        *extra,
    ]
