"""``manage.py ab_prune --older-than 180d``: retention, in short batches that never lock the table."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.utils import timezone

from server.apps.front.models import ABEvent

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """``180d``, ``12h``, ``90m``, ``3600s``, ``2w`` -> timedelta."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not an age like 180d, 12h, 90m, 3600s or 2w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def prune(cutoff: Any, *, batch_size: int = 5000, pause: float = 0.0) -> tuple[int, int]:
    """Delete events received before ``cutoff``; returns (rows, statements).

    Each statement deletes at most ``batch_size`` rows by primary key and
    commits on its own (autocommit): it holds row locks on those rows only,
    for milliseconds, so the writer's inserts and the report's reads go on.
    One huge DELETE would instead hold every lock and a long transaction
    (bloat, replication lag) until the end.
    """
    table = connection.ops.quote_name(ABEvent._meta.db_table)
    sql = (
        # The table name is ours; the values are parameters.
        f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE timestamp < %s LIMIT %s)"
    )
    rows = statements = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(sql, [cutoff, batch_size])
            deleted = cursor.rowcount
        statements += 1
        rows += deleted
        if deleted < batch_size:
            return rows, statements
        if pause:
            time.sleep(pause)


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
            count = ABEvent.objects.filter(timestamp__lt=cutoff).count()
            self.stdout.write(f"would delete {count} events received before {cutoff.isoformat(timespec='seconds')}")
            return
        started = time.monotonic()
        rows, statements = prune(cutoff, batch_size=batch_size, pause=pause)
        self.stdout.write(
            f"deleted {rows} events received before {cutoff.isoformat(timespec='seconds')} "
            f"in {statements} statements ({time.monotonic() - started:.2f}s)"
        )
