"""The report as text (``manage.py ab_report``) and as the admin page's pre-formatted tables.

Both use the one formatter of ``formatting.py``, in its two settings.
"""

from __future__ import annotations

from typing import Any

from server.apps.front.report.formatting import HTML, TEXT, Formatter
from server.apps.front.report.model import Report

# --- issue 14's sections (report/insights.py), as (label, value) rows for both renderings -----------------


def _p_is(f: Formatter, value: float | None) -> str:
    text = f.p(value)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def insight_rows(report: Report, f: Formatter) -> list[tuple[str, str]]:
    """Survival time to complete, power and duration, data quality: one row per figure (empty without them)."""
    ins = report.insights
    if ins is None:
        return []
    a, b = report.variants
    sec = lambda value, sign="": f.seconds(None if value is None else value * 1000, sign)  # noqa: E731
    rows: list[tuple[str, str]] = []
    s = ins.survival
    if s is not None:
        for name, arm in ((a, s.a), (b, s.b)):
            rows.append(
                (
                    f"Time to complete, {name} (all {arm.sessions:,} sessions; "
                    f"{arm.censored:,} not completed, censored)",
                    f"median {sec(arm.median_seconds)} [{sec(arm.median_low)}, {sec(arm.median_high)}]; "
                    f"restricted mean to {sec(s.horizon_seconds)}: {sec(arm.rmst_seconds)} "
                    f"[{sec(arm.rmst_low)}, {sec(arm.rmst_high)}]",
                )
            )
        rows.append(
            (
                f"Restricted mean difference ({b} − {a})",
                f"{sec(s.rmst_diff, '+')} [{sec(s.rmst_diff_low, '+')}, {sec(s.rmst_diff_high, '+')}] "
                "(estimate, not tested: the log-rank test below is the test)",
            )
        )
        rows.append(("Log-rank test (equal time-to-complete curves)", _p_is(f, s.logrank_p)))
    w = ins.completed_within
    r = w.result
    rows.append(
        (
            f"Completed within {sec(w.seconds)} (sessions followed that long)",
            f"{a} {f.pct(r.rate_a)} ({r.x_a:,}/{r.n_a:,}), {b} {f.pct(r.rate_b)} ({r.x_b:,}/{r.n_b:,}); "
            f"difference {f.points(r.diff)} [{f.points(r.diff_low)}, {f.points(r.diff_high)}], {_p_is(f, r.p_value)}",
        )
    )
    pw = ins.power
    rows.append(
        (
            f"Minimum detectable effect now ({pw.method}, alpha {pw.effective_alpha:g}, power {f.pct(pw.power, 0)})",
            f"{f.points(pw.mde_absolute)} ({f.pct(pw.mde_relative)} of the control's rate)",
        )
    )
    days = f.missing if pw.days_remaining is None else f"{pw.days_remaining:.1f}"
    rows.append(
        (
            f"For a {f.pct(pw.target_lift)} relative lift",
            f"{f.pct(pw.power_for_target)} power now; {pw.sessions_needed or 0:,} sessions in all, "
            f"{pw.sessions_still_needed or 0:,} still needed; ~{days} days at "
            f"{f.missing if pw.daily_sessions is None else f'{pw.daily_sessions:,.0f}'} sessions/day",
        )
    )
    g = ins.data_quality
    for name in (a, b):
        arm = g.arms[name]
        rows.append(
            (
                f"Event loss, {name}",
                f"{f.pct(arm.loss_rate, 2)} of numbered events lost ({arm.lost_events:,}/{arm.expected_events:,}, "
                f"{arm.sessions_with_seq:,} sessions with seq); dead-lettered {f.pct(arm.dead_letter_rate, 3)} "
                f"({arm.dead_lettered:,})",
            )
        )
    rows.append(
        (
            "Equal loss test (sessions as clusters) · dead letters",
            f"{_p_is(f, g.loss_p)} · {_p_is(f, g.dead_letter_p)} (refuses a verdict below {g.threshold:g})",
        )
    )
    if ins.lift_over_time:
        last = ins.lift_over_time[-1]
        rows.append(
            (
                f"Lift over time ({len(ins.lift_over_time)} days; last day {last.day})",
                f"cumulative {f.pct(last.lift)} [{f.pct(last.lift_low)}, {f.pct(last.lift_high)}]",
            )
        )
    return rows


# --- the terminal ------------------------------------------------------------------------


def format_text(report: Report) -> str:
    """A plain-text rendering of the report for the terminal."""
    f = TEXT
    a, b = report.variants
    p = report.primary.result
    s = report.sessions
    lines = [f"VERDICT: {report.verdict}", ""]
    lines += [f"  - {reason}" for reason in report.reasons]
    period = f"{report.params.since or 'beginning'} .. {report.params.until or 'now'}"
    lines += [
        "",
        f"Period: {period}   events: {s.events:,}",
        f"Sessions analysed: {a} {s.analysed[a]:,}, {b} {s.analysed[b]:,}; "
        f"excluded: {s.contaminated:,} contaminated (seen in both variants), "
        f"{s.unassigned:,} without variant_assigned",
        f"Sample ratio: SRM p = {f.p(report.srm.p_value)} against "
        + ", ".join(f"{k} {f.pct(v)}" for k, v in report.srm.expected_share.items()),
        "",
        f"Completion rate (primary, control = {a}): {a} {f.pct(p.rate_a)}, {b} {f.pct(p.rate_b)}",
        f"  difference {f.points(p.diff)}  [{f.points(p.diff_low)}, {f.points(p.diff_high)}]  p = {f.p(p.p_value)}",
        f"  relative lift {f.pct(p.lift)}  [{f.pct(p.lift_low)}, {f.pct(p.lift_high)}] (delta method)",
        f"  always-valid interval {f.points(p.seq_low)} .. {f.points(p.seq_high)}",
        f"  P({b} better) = {f.pct(p.prob_b_better)}, P({a} better) = {f.pct(p.prob_a_better)}",
        "",
        "Secondary metrics (Benjamini-Hochberg across these):",
    ]
    for m in report.secondary:
        scale = f.seconds if m.kind == "mean" else f.pct
        diff = f.seconds(m.diff, "+") if m.kind == "mean" else f.points(m.diff)
        untested = m.kind == "mean" and report.insights is not None  # description only (survivorship)
        tail = (
            "  (description only, not tested)"
            if untested
            else (f"p {f.p(m.p_value):>8}  adj {f.p(m.p_adjusted):>8}{'  *' if m.significant else ''}")
        )
        lines.append(
            f"  {m.metric:<24} {a} {scale(m.control):>8}  {b} {scale(m.treatment):>8}  diff {diff:>10}  {tail}"
        )
    for variant in (a, b):
        lines += ["", f"Funnel {variant} (share of assigned [95% CI], step-to-step):"]
        for stage in report.funnel[variant]:
            ci = f"[{f.pct(stage.ci_low)}, {f.pct(stage.ci_high)}]"
            lines.append(
                f"  {stage.label:<14} {stage.sessions:>8,}  {f.pct(stage.share_of_assigned):>7} {ci:<17}"
                f" {f.pct(stage.step_to_step) if stage.step_to_step is not None else ''}"
            )
        drops = ", ".join(
            f"step {d.step if d.step is not None else '?'}: {d.sessions:,}" for d in report.dropout[variant]
        )
        lines.append(f"  abandoned at: {drops or 'none'}")
        lines.append("  time per step (descriptive: only sessions that reached the step): mean capped / median / P90")
        for row in report.time_per_step[variant]:
            lines.append(
                f"    step {row.step}: {f.seconds(row.mean_ms)} / {f.seconds(row.median_ms)} / "
                f"{f.seconds(row.p90_ms)}  (n={row.sessions:,})"
            )
    ttc = report.time_to_complete
    welch = ttc.welch
    mean_of = {v: t.mean_ms if t is not None else None for v, t in ttc.by_variant.items()}
    lines += [
        "",
        f"Time to complete ({ttc.definition}):",
        f"  {a} {f.seconds(mean_of.get(a))}, {b} {f.seconds(mean_of.get(b))}"
        + (
            f"; Welch p = {f.p(welch.p_value)}"
            if welch and report.insights is None
            else "  (description only: completed sessions only, not tested; see the survival figures)"
        ),
    ]
    extra = insight_rows(report, f)
    if extra:
        lines += ["", "Time to complete (survival), power and duration, data quality:"]
        lines += [f"  {label}: {value}" for label, value in extra]
    return "\n".join(lines)


# --- the admin page ------------------------------------------------------------------------


def display(report: Report) -> dict[str, Any]:
    """Pre-formatted strings for the admin template (Django templates cannot multiply)."""
    f = HTML
    p = report.primary.result
    a, b = report.variants
    return {
        "primary": [
            ("Completion rate", f"{a} {f.pct(p.rate_a)} · {b} {f.pct(p.rate_b)}"),
            (f"Difference ({b} − {a})", f"{f.points(p.diff)}  [{f.points(p.diff_low)}, {f.points(p.diff_high)}]"),
            ("Relative lift", f"{f.pct(p.lift)}  [{f.pct(p.lift_low)}, {f.pct(p.lift_high)}] (delta method)"),
            ("p-value (two-proportion z-test)", f.p(p.p_value)),
            ("Always-valid interval", f"{f.points(p.seq_low)} to {f.points(p.seq_high)}"),
            (f"P({b} better) · P({a} better)", f"{f.pct(p.prob_b_better)} · {f.pct(p.prob_a_better)}"),
            ("SRM p-value", f.p(report.srm.p_value)),
        ],
        "secondary": [
            {
                "metric": m.metric,
                "control": f.seconds(m.control) if m.kind == "mean" else f.pct(m.control),
                "treatment": f.seconds(m.treatment) if m.kind == "mean" else f.pct(m.treatment),
                "diff": f.seconds(m.diff, "+") if m.kind == "mean" else f.points(m.diff),
                # The completers-only time is description once the survival test exists (no p shown).
                "p": "not tested" if m.kind == "mean" and report.insights is not None else f.p(m.p_value),
                "p_adjusted": f.p(m.p_adjusted),
                "significant": m.significant,
            }
            for m in report.secondary
        ],
        "insights": insight_rows(report, f),
        "funnel": {
            variant: [
                {
                    "label": s.label,
                    "sessions": s.sessions,
                    "share": f.pct(s.share_of_assigned),
                    "ci": f"{f.pct(s.ci_low)} – {f.pct(s.ci_high)}",
                    "step_to_step": "" if s.step_to_step is None else f.pct(s.step_to_step),
                }
                for s in stages
            ]
            for variant, stages in report.funnel.items()
        },
    }
