"""``manage.py ab_rollup --rebuild [--since T]`` / ``--check``: the session rollup ab_sessions (report/rollup.py)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from server.apps.front.report import rollup
from server.apps.front.report.build import parse_moment


class Command(BaseCommand):
    help = (
        "Rebuild ab_sessions from ab_events in short batches (after adding the rollup to an existing database or "
        "after a restore) while ingest and drains go on; or check it against a full scan."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        action = parser.add_mutually_exclusive_group(required=True)
        action.add_argument("--rebuild", action="store_true", help="recompute the rollup from ab_events")
        action.add_argument("--check", action="store_true", help="count sessions that differ from a full scan")
        parser.add_argument(
            "--since", help="with --rebuild: only sessions that received an event at or after this date/datetime"
        )
        parser.add_argument("--batch-events", type=int, default=50_000, help="about this many events per batch")

    def handle(self, *args: Any, rebuild: bool, check: bool, since: str | None, batch_events: int, **_: Any) -> None:
        if check:
            count, sample = rollup.differences()
            detail = f": {sample}" if count else ""
            self.stdout.write(f"{count} sessions differ from a full scan of ab_events{detail}")
            if count:
                raise CommandError("the rollup is out of date: run ab_rollup --rebuild")
            return
        if batch_events < 1:
            raise CommandError("--batch-events must be at least 1")
        try:
            moment = parse_moment(since)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        done = rollup.rebuild(
            since=moment, batch_events=batch_events, progress=lambda p: self.stdout.write(p.line(), ending="\n")
        )
        self.stdout.write(f"rebuilt {done.sessions} sessions ({done.events} events) in {done.seconds:.1f} s")
