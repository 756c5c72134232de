"""``manage.py ab_queue``: the queue at a glance (``--json`` for scripts)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from server.apps.front.ops import status
from server.apps.front.pipeline import queue


class Command(BaseCommand):
    help = (
        "Print the Redis queue's depth, in-flight events, dead letters, lag and last successful drain: "
        "totals, then per shard when there are several."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", dest="as_json", action="store_true", help="one JSON object, for scripts")

    def handle(self, *args: Any, as_json: bool = False, **options: Any) -> None:
        try:
            figures = status.snapshot()
        except queue.ERRORS as exc:
            raise CommandError(f"Redis unavailable: {exc}") from exc
        if as_json:
            self.stdout.write(json.dumps(figures, sort_keys=True))
            return
        for line in status.lines(figures):
            self.stdout.write(line)
