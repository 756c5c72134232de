"""Celery tasks: thin wrappers around the plain functions that do the work."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_shutting_down
from django.conf import settings

from celery_app import app
from server.apps.front.pipeline import tasks


@app.task(
    name="worker.tasks.flush_ab_events",
    ignore_result=True,
    # The drain stops claiming after AB_DRAIN_BUDGET. These limits are only a
    # backstop under a prefork pool: the shipped solo worker enforces none,
    # so what bounds a hung call is in the drain itself (the writer's
    # AB_WRITER_STATEMENT_TIMEOUT, DB_CONNECT_TIMEOUT, Redis socket timeouts).
    # A killed run loses nothing: its batch returns to the queue when the
    # lease expires.
    soft_time_limit=settings.AB_DRAIN_BUDGET + 30,
    time_limit=settings.AB_DRAIN_BUDGET + 60,
)
def flush_ab_events() -> dict[str, Any]:
    """Drain the Redis queue into PostgreSQL (scheduled by beat every AB_FLUSH_INTERVAL s)."""
    return tasks.flush()


@app.task(name="worker.tasks.maintain_partitions", ignore_result=True)
def maintain_partitions() -> dict[str, Any]:
    """Create ab_events' partitions ahead (scheduled by beat every AB_PARTITION_INTERVAL s)."""
    return tasks.maintain_partitions()


@worker_shutting_down.connect
def _stop_draining(**_: Any) -> None:
    """SIGTERM (warm shutdown): the running drain acks its batch, then claims no more.

    Sent in the worker's main process, which is where a ``--pool=solo`` worker
    runs the task; a prefork child finishes within AB_DRAIN_BUDGET instead.
    """
    tasks.stop_draining()
