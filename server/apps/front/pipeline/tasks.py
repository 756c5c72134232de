"""The bodies of the Celery tasks (worker/tasks.py wraps them, celery_app.py wires them)."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings

from server.apps.front.ops import partitions
from server.apps.front.pipeline import writer

log = logging.getLogger("abflow.drain")


def flush() -> dict[str, Any]:
    """One drain run of the Redis queue into PostgreSQL, logged as one structured line."""
    result = writer.drain_concurrently(settings.AB_DRAIN_THREADS)
    # One structured line per run (its fields become JSON keys under
    # LOG_FORMAT=json); idle runs, every AB_FLUSH_INTERVAL s, only at DEBUG.
    busy = result.claimed or result.requeued or result.dead_lettered or result.error
    log.log(logging.INFO if busy else logging.DEBUG, "ab_drain", extra=result.as_log())
    return result.as_log()


def maintain_partitions() -> dict[str, Any]:
    """ab_events' partitions for the coming months (and for rows that landed in DEFAULT), logged when any."""
    created = partitions.ensure()
    if created:
        log.info(
            "ab_partitions",
            extra={
                "event": "ab_partitions",
                # Not "created": a LogRecord attribute, which ``extra`` may not overwrite.
                "partitions_created": [name for name, _ in created],
                "rows_moved": sum(moved for _, moved in created),
            },
        )
    return {"created": created}


def stop_draining() -> None:
    """Warm shutdown: the running drain acks its batch, then claims no more."""
    writer.request_stop()
