"""``manage.py ab_prune --older-than 180d``: retention, in short batches that never lock the table."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from server.apps.front.ops.retention import count_older, parse_age, prune


class Command(BaseCommand):
    help = "Delete ab_events rows received more than --older-than ago, in batches by primary key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", required=True, help="age such as 180d, 12h, 2w")
        parser.add_argument("--batch-size", type=int, default=5000, help="rows per DELETE statement")
        parser.add_argument("--pause", type=float, default=0.0, help="seconds to sleep between batches")
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")

    def handle(self, *args: Any, older_than: str, batch_size: int, pause: float, dry_run: bool, **_: Any) -> None:
        try:
            age = parse_age(older_than)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        cutoff = timezone.now() - age
        if dry_run:
            count = count_older(cutoff)
            self.stdout.write(f"would delete {count} events received before {cutoff.isoformat(timespec='seconds')}")
            return
        started = time.monotonic()
        rows, statements = prune(cutoff, batch_size=batch_size, pause=pause)
        self.stdout.write(
            f"deleted {rows} events received before {cutoff.isoformat(timespec='seconds')} "
            f"in {statements} statements ({time.monotonic() - started:.2f}s)"
        )
