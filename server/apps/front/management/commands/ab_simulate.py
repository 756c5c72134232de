"""``manage.py ab_simulate``: simulated onboarding sessions through the real ingest path (ingest/simulator.py)."""

from __future__ import annotations

import functools
from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser

from server.apps.front import experiment as ex
from server.apps.front.ingest import simulator
from server.apps.front.pipeline import queue, writer


class Command(BaseCommand):
    help = "Simulate onboarding sessions and push their events through the ingest queue (the endpoint's path)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--sessions", type=int, default=20_000)
        rate = functools.partial(parser.add_argument, type=float)
        rate(
            "--deep-lift",
            default=ex.SIMULATED_TREATMENT_LIFT,
            help="absolute change in deep's completion probability (0.03 = +3 percentage points)",
        )
        rate("--fast-completion", default=ex.SIMULATED_CONTROL_COMPLETION, help="fast's completion probability")
        parser.add_argument(
            "--split", default=None, help="true assignment split, e.g. fast=0.55,deep=0.45 (default AB_EXPECTED_SPLIT)"
        )
        rate("--contamination", default=ex.SIMULATED_CONTAMINATION, help="share of sessions that switch variant")
        rate("--duplicates", default=ex.SIMULATED_DUPLICATES, help="share of events the client sends twice")
        rate("--abandon-report-rate", default=ex.SIMULATED_ABANDON_REPORT_RATE, help="drop-outs that send abandoned")
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--batch-size", type=int, default=2000, help="events per push")
        parser.add_argument("--drain", action="store_true", help="write the queue into PostgreSQL now (no worker)")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            plan = simulator.make_plan(opts)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        try:
            tally = simulator.simulate(plan, opts["seed"], opts["batch_size"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except queue.QueueFull as exc:
            raise CommandError(f"the ingest queue is full ({exc}); let the worker drain it first") from exc
        except redis.RedisError as exc:
            raise CommandError(f"Redis is unavailable: {exc}") from exc
        self.stdout.write(
            f"queued {tally.events:,} events for {plan.sessions:,} sessions "
            f"(fast {tally.sessions['fast']:,}, deep {tally.sessions['deep']:,}; "
            f"completed fast {tally.completed['fast']:,}, deep {tally.completed['deep']:,}; "
            f"{tally.contaminated} contaminated, {tally.duplicates} double-fired events)"
        )
        if opts["drain"]:
            result = writer.drain(budget=3600)
            if result.error:
                raise CommandError(f"database unavailable, events wait in Redis: {result.error}")
            self.stdout.write(f"stored {result.stored:,} events in PostgreSQL ({result.dead_lettered} dead-lettered)")
        else:
            self.stdout.write("the Celery worker writes them to PostgreSQL within seconds (or run: manage.py ab_flush)")
