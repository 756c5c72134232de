"""``manage.py ab_prune --older-than 180d``: retention by whole monthly partitions, the rest in short batches."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from server.apps.front.ops.retention import count_older, parse_age, prune, whole_partitions


class Command(BaseCommand):
    help = (
        "Remove ab_events rows received more than --older-than ago: monthly partitions that end before the cutoff "
        "are dropped (their sessions' rollup recomputed), the rest is deleted in batches by primary key; "
        "ab_event_ids of events that are gone are trimmed."
    )

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
        when = cutoff.isoformat(timespec="seconds")
        if dry_run:
            count = count_older(cutoff)
            whole = [p.name for p in whole_partitions(cutoff)]
            dropped = f"; partitions to drop whole: {', '.join(whole)}" if whole else "; no whole partition to drop"
            self.stdout.write(f"would delete {count} events received before {when}{dropped}")
            return
        started = time.monotonic()
        result = prune(cutoff, batch_size=batch_size, pause=pause)
        self.stdout.write(
            f"deleted {result.rows} events received before {when}: "
            f"{result.dropped_rows} by dropping {len(result.dropped)} partitions"
            f"{' (' + ', '.join(result.dropped) + ')' if result.dropped else ''}, "
            f"{result.rows - result.dropped_rows} in {result.statements} statements; "
            f"rollup recomputed for {result.sessions_recomputed} sessions; "
            f"{result.ids_trimmed} event ids trimmed ({time.monotonic() - started:.2f}s)"
        )
