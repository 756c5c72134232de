from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from server.apps.front.pipeline import queue, writer


def progress_line(result: writer.DrainResult, queued: int | None) -> str:
    """One line of a running flush: totals so far, rate, what is still queued."""
    rate = result.claimed / result.seconds if result.seconds > 0 else 0.0
    waiting = "?" if queued is None else f"{queued:,}"
    return (
        f"progress: {result.stored:,} stored, {result.dead_lettered:,} dead-lettered, "
        f"{rate:,.0f} events/s, {waiting} queued, {result.seconds:.1f}s"
    )


class Command(BaseCommand):
    help = "Drain the Redis event queue into PostgreSQL now and print how many events were stored."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--budget", type=float, default=3600.0, help="stop after this many seconds")
        parser.add_argument(
            "--progress-every",
            type=float,
            default=5.0,
            metavar="SECONDS",
            help="print a progress line this often (0: after every batch)",
        )

    def handle(self, *args: Any, batch_size: int | None, budget: float, progress_every: float, **options: Any) -> None:
        result = writer.drain(
            batch_size=batch_size, budget=budget, progress=self._progress, progress_every=progress_every
        )
        self.stdout.write(
            f"stored {result.stored} events in {result.batches} batches "
            f"({result.dead_lettered} dead-lettered, {result.requeued} returned from expired leases) "
            f"in {result.seconds:.2f}s"
        )
        if result.error:
            raise CommandError(f"database unavailable, events wait in Redis: {result.error}")

    def _progress(self, result: writer.DrainResult) -> None:
        try:
            queued: int | None = queue.depth()
        except queue.ERRORS:
            queued = None  # the next claim reports Redis; a progress line never ends the flush
        self.stdout.write(progress_line(result, queued))
        self.stdout.flush()  # seen at once when stdout is a pipe or a journal, not at exit
