from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from server.apps.front.pipeline import writer


class Command(BaseCommand):
    help = "Drain the Redis event queue into PostgreSQL now and print how many events were stored."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--budget", type=float, default=3600.0, help="stop after this many seconds")

    def handle(self, *args: Any, batch_size: int | None, budget: float, **options: Any) -> None:
        result = writer.drain(batch_size=batch_size, budget=budget)
        self.stdout.write(
            f"stored {result.stored} events in {result.batches} batches "
            f"({result.dead_lettered} dead-lettered, {result.requeued} returned from expired leases) "
            f"in {result.seconds:.2f}s"
        )
        if result.error:
            raise CommandError(f"database unavailable, events wait in Redis: {result.error}")
