"""``manage.py ab_queue``: the queue at a glance (``--json`` for scripts)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError

from server.apps.front.pipeline import queue


def snapshot() -> dict[str, Any]:
    """The figures ``ab_queue`` prints, as plain JSON-able values."""
    stats = queue.stats()
    return {
        "depth": stats.depth,
        "inflight": stats.inflight,
        "inflight_batches": stats.inflight_batches,
        "dead_letters": stats.dead,
        "oldest_age_seconds": None if stats.oldest_age_seconds is None else round(stats.oldest_age_seconds, 3),
        "last_drain_at": None
        if stats.last_drain_at is None
        else datetime.fromtimestamp(stats.last_drain_at, UTC).isoformat(timespec="seconds"),
        "last_drain_age_seconds": None
        if stats.last_drain_age_seconds is None
        else round(stats.last_drain_age_seconds, 3),
    }


def _ago(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s ago"


def _oldest(depth: int, age: float | None) -> str:
    if depth == 0:
        return "queue empty"
    # The head item carries no readable receive time (it will be dead-lettered).
    return "unknown" if age is None else _ago(age)


class Command(BaseCommand):
    help = "Print the Redis queue's depth, in-flight events, dead letters, lag and last successful drain."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", dest="as_json", action="store_true", help="one JSON object, for scripts")

    def handle(self, *args: Any, as_json: bool = False, **options: Any) -> None:
        try:
            figures = snapshot()
        except redis.RedisError as exc:
            raise CommandError(f"Redis unavailable: {exc}") from exc
        if as_json:
            self.stdout.write(json.dumps(figures, sort_keys=True))
            return
        drain = (
            "never"
            if figures["last_drain_at"] is None
            else (f"{figures['last_drain_at']} ({_ago(figures['last_drain_age_seconds'])})")
        )
        batches = figures["inflight_batches"]
        rows = [
            ("queued", f"{figures['depth']} events"),
            ("in flight", f"{figures['inflight']} events in {batches} batch{'es' if batches != 1 else ''}"),
            ("dead letters", f"{figures['dead_letters']} events"),
            ("oldest queued", _oldest(figures["depth"], figures["oldest_age_seconds"])),
            ("last good drain", drain),
        ]
        for label, value in rows:
            self.stdout.write(f"{label:<16} {value}")
