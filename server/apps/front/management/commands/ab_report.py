"""``manage.py ab_report``: the experiment report as text or JSON."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from server.apps.front.report.build import build_report, parse_moment, parse_split


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.2f} pp"


def _seconds(ms: float | None) -> str:
    return "n/a" if ms is None else f"{ms / 1000:.1f}s"


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def format_text(report: dict[str, Any]) -> str:
    """A plain-text rendering of the report for the terminal."""
    a, b = report["control"], report["treatment"]
    p = report["primary"]
    s = report["sessions"]
    lines = [f"VERDICT: {report['verdict']}", ""]
    lines += [f"  - {reason}" for reason in report["reasons"]]
    period = f"{report['params']['since'] or 'beginning'} .. {report['params']['until'] or 'now'}"
    lines += [
        "",
        f"Period: {period}   events: {s['events']:,}",
        f"Sessions analysed: {a} {s['analysed'][a]:,}, {b} {s['analysed'][b]:,}; "
        f"excluded: {s['contaminated']:,} contaminated (seen in both variants), "
        f"{s['unassigned']:,} without variant_assigned",
        f"Sample ratio: SRM p = {_p(report['srm']['p_value'])} against "
        + ", ".join(f"{k} {_pct(v)}" for k, v in report["srm"]["expected_share"].items()),
        "",
        f"Completion rate (primary, control = {a}): {a} {_pct(p['rate_a'])}, {b} {_pct(p['rate_b'])}",
        f"  difference {_points(p['diff'])}  [{_points(p['diff_low'])}, {_points(p['diff_high'])}]  "
        f"p = {_p(p['p_value'])}",
        f"  relative lift {_pct(p['lift'])}  [{_pct(p['lift_low'])}, {_pct(p['lift_high'])}] (delta method)",
        f"  always-valid interval {_points(p['seq_low'])} .. {_points(p['seq_high'])}",
        f"  P({b} better) = {_pct(p['prob_b_better'])}, P({a} better) = {_pct(p['prob_a_better'])}",
        "",
        "Secondary metrics (Benjamini-Hochberg across these):",
    ]
    for m in report["secondary"]:
        scale = _seconds if m["kind"] == "mean" else _pct
        diff = (
            "n/a" if m["diff"] is None else (f"{m['diff'] / 1000:+.1f}s" if m["kind"] == "mean" else _points(m["diff"]))
        )
        lines.append(
            f"  {m['metric']:<24} {a} {scale(m['control']):>8}  {b} {scale(m['treatment']):>8}  diff {diff:>10}  "
            f"p {_p(m['p_value']):>8}  adj {_p(m['p_adjusted']):>8}{'  *' if m['significant'] else ''}"
        )
    for variant in (a, b):
        lines += ["", f"Funnel {variant} (share of assigned [95% CI], step-to-step):"]
        for stage in report["funnel"][variant]:
            ci = f"[{_pct(stage['ci_low'])}, {_pct(stage['ci_high'])}]"
            lines.append(
                f"  {stage['label']:<14} {stage['sessions']:>8,}  {_pct(stage['share_of_assigned']):>7} {ci:<17}"
                f" {_pct(stage['step_to_step']) if stage['step_to_step'] is not None else ''}"
            )
        drops = ", ".join(
            f"step {d['step'] if d['step'] is not None else '?'}: {d['sessions']:,}" for d in report["dropout"][variant]
        )
        lines.append(f"  abandoned at: {drops or 'none'}")
        lines.append("  time per step (descriptive: only sessions that reached the step): mean capped / median / P90")
        for row in report["time_per_step"][variant]:
            lines.append(
                f"    step {row['step']}: {_seconds(row['mean_ms'])} / {_seconds(row['median_ms'])} / "
                f"{_seconds(row['p90_ms'])}  (n={row['sessions']:,})"
            )
    ttc = report["time_to_complete"]
    welch = ttc["welch"]
    lines += [
        "",
        f"Time to complete ({ttc['definition']}):",
        f"  {a} {_seconds((ttc[a] or {}).get('mean_ms'))}, {b} {_seconds((ttc[b] or {}).get('mean_ms'))}"
        + (f"; Welch p = {_p(welch['p_value'])}" if welch else ""),
    ]
    return "\n".join(lines)


class Command(BaseCommand):
    help = "Print the A/B experiment report: funnel, completion-rate test, SRM check and verdict."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument("--since", help="first day or moment included (ISO, UTC if no offset)")
        parser.add_argument("--until", help="last day included, or the moment the range stops before")
        parser.add_argument(
            "--expected-split", help="planned split, e.g. fast=0.5,deep=0.5 (default AB_EXPECTED_SPLIT)"
        )
        parser.add_argument(
            "--sequential", action="store_true", default=None, help="decide with the always-valid interval"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            since = parse_moment(opts["since"])
            until = parse_moment(opts["until"], end=True)
            split = parse_split(opts["expected_split"]) if opts["expected_split"] else None
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        report = build_report(since, until, expected_split=split, sequential=opts["sequential"])
        if opts["json"]:
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self.stdout.write(format_text(report))
