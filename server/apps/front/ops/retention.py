"""Retention: delete old events from ``ab_events`` in short batches that never lock the table."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta

from django.db import connection

from server.apps.front.models import ABEvent

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """``180d``, ``12h``, ``90m``, ``3600s``, ``2w`` -> timedelta."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not an age like 180d, 12h, 90m, 3600s or 2w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def prune(cutoff: datetime, *, batch_size: int = 5000, pause: float = 0.0) -> tuple[int, int]:
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


def count_older(cutoff: datetime) -> int:
    """How many events ``prune(cutoff)`` would delete."""
    return ABEvent.objects.filter(timestamp__lt=cutoff).count()
