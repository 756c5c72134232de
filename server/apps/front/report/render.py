"""The report as text (``manage.py ab_report``) and as the admin page's pre-formatted tables.

Both use the one formatter of ``formatting.py``, in its two settings.
"""

from __future__ import annotations

from typing import Any

from server.apps.front.report.formatting import HTML, TEXT
from server.apps.front.report.model import Report

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
        lines.append(
            f"  {m.metric:<24} {a} {scale(m.control):>8}  {b} {scale(m.treatment):>8}  diff {diff:>10}  "
            f"p {f.p(m.p_value):>8}  adj {f.p(m.p_adjusted):>8}{'  *' if m.significant else ''}"
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
        + (f"; Welch p = {f.p(welch.p_value)}" if welch else ""),
    ]
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
                "p": f.p(m.p_value),
                "p_adjusted": f.p(m.p_adjusted),
                "significant": m.significant,
            }
            for m in report.secondary
        ],
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
