"""``manage.py ab_report``: the experiment report as text or JSON."""

from __future__ import annotations

import getpass
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from server.apps.front.experiment import parse_split
from server.apps.front.report import record
from server.apps.front.report.build import analyse, parse_moment
from server.apps.front.report.render import format_text


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
        parser.add_argument(
            "--record",
            action="store_true",
            help="store the report as a frozen, hashed decision record (ReportSnapshot) and print its hash",
        )
        parser.add_argument("--note", default="", help="with --record: why it was recorded (e.g. the decision)")
        parser.add_argument("--by", help="with --record: who records it (default: the OS user)")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            since = parse_moment(opts["since"])
            until = parse_moment(opts["until"], end=True)
            split = parse_split(opts["expected_split"]) if opts["expected_split"] else None
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if opts["record"]:
            snapshot = record.record(
                recorded_by=opts["by"] or _os_user(),
                note=opts["note"],
                since=since,
                until=until,
                expected_split=split,
                sequential=opts["sequential"],
            )
            frozen = record.load(snapshot)
            self.stdout.write(
                json.dumps(frozen, indent=2)
                if opts["json"]
                else f"Recorded snapshot {snapshot.pk} at {snapshot.recorded_at.isoformat()} by "
                f"{snapshot.recorded_by}: {snapshot.verdict}\nsha256 {snapshot.sha256}\n"
                f"code {snapshot.code_version}"
            )
            return
        if opts["note"] or opts["by"]:
            raise CommandError("--note and --by only go with --record")
        report = analyse(since, until, expected_split=split, sequential=opts["sequential"])
        self.stdout.write(json.dumps(report.to_dict(), indent=2) if opts["json"] else format_text(report))


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"
