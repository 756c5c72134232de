"""Celery tasks: thin wrappers around the plain functions that do the work."""

from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings

from celery_app import app
from server.apps.front import writer

log = logging.getLogger("abflow.drain")


@app.task(
    name="worker.tasks.flush_ab_events",
    ignore_result=True,
    # The drain stops claiming after AB_DRAIN_BUDGET; the hard limit is a
    # backstop for a hung database call. A killed run loses nothing: its
    # batch returns to the queue when the lease expires.
    soft_time_limit=settings.AB_DRAIN_BUDGET + 30,
    time_limit=settings.AB_DRAIN_BUDGET + 60,
)
def flush_ab_events() -> dict[str, Any]:
    """Drain the Redis queue into PostgreSQL (scheduled by beat every AB_FLUSH_INTERVAL s)."""
    result = writer.drain()
    if result.claimed or result.requeued or result.dead_lettered or result.error:
        log.info(json.dumps(result.as_log()))
    return result.as_log()
