"""ab_events' monthly partitions: listed, and created ahead of time (migration 0008, docs/operations.md).

The work is done by the SQL function ``ab_events_ensure_partitions(n)`` that migration 0008 installs (the
migration calls it too): for this month, the next ``n`` and every month that has rows in the DEFAULT partition,
a partition is created where none exists, that month's rows move out of DEFAULT into it, and it is attached.
DEFAULT catches every event whose month has no partition, so an insert never fails for want of one; this keeps
DEFAULT (which every new partition's ATTACH must scan) small and the months where they belong.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import connection, transaction

DEFAULT_PARTITION = "ab_events_default"


@dataclass(frozen=True)
class Partition:
    name: str
    low: datetime | None  # None for DEFAULT
    high: datetime | None  # exclusive; None for DEFAULT

    @property
    def is_default(self) -> bool:
        return self.low is None


def ensure(months_ahead: int | None = None, *, lock_timeout: float = 5.0) -> list[tuple[str, int]]:
    """Create the missing partitions (see the module's docstring); [(partition created, rows moved into it)].

    ``lock_timeout``: ATTACH needs an ACCESS EXCLUSIVE lock on DEFAULT (behind a long report that reads it);
    past this many seconds it gives up with an error, and the next run (beat, hourly) tries again. Until then
    the rows simply stay in DEFAULT.
    """
    ahead = settings.AB_PARTITIONS_AHEAD if months_ahead is None else months_ahead
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{max(1, round(lock_timeout * 1000))}ms"])
        cursor.execute("SELECT partition, moved FROM ab_events_ensure_partitions(%s)", [ahead])
        return [(name, int(moved)) for name, moved in cursor.fetchall()]


def listing() -> list[Partition]:
    """ab_events' partitions, oldest first, DEFAULT last."""
    with transaction.atomic(), connection.cursor() as cursor:
        # Bounds are printed in the session's time zone: UTC for this transaction, whatever the connection's.
        cursor.execute("SELECT set_config('TimeZone', 'UTC', true)")
        cursor.execute(
            """SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits AS i
            JOIN pg_class AS c ON c.oid = i.inhrelid WHERE i.inhparent = 'ab_events'::regclass"""
        )
        rows = cursor.fetchall()
    parts = []
    for name, bound in rows:
        if bound == "DEFAULT":
            parts.append(Partition(name, None, None))
            continue
        # FOR VALUES FROM ('2026-11-01 00:00:00+00') TO ('2026-12-01 00:00:00+00')
        low_text, high_text = (piece.split("'")[1] for piece in bound.split(" TO "))
        parts.append(Partition(name, _parse(low_text), _parse(high_text)))
    return sorted(parts, key=lambda p: (p.is_default, p.low or datetime.min.replace(tzinfo=UTC)))


def _parse(text: str) -> datetime:
    """'2026-11-01 00:00:00+00' (UTC, as printed above) -> aware datetime."""
    return datetime.fromisoformat(text.removesuffix("+00") + "+00:00").astimezone(UTC)


def default_rows() -> int:
    """Events in DEFAULT (0 when the maintenance keeps up; a figure for ``ab_queue``/alerts)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {DEFAULT_PARTITION}")
        return int(cursor.fetchone()[0])
