"""Batch ingest: ``POST /api/rest/front/ab-events/`` with ``{"events": [...], "sent_at": ...}``.

Each event goes through the same ``ABEventSerializer`` as the single endpoint
(one validation path). A bad event is reported by its index and does not
block the others: the valid ones are queued, all in one Redis round trip.
A client ``event_id`` repeated within the batch is queued once (across
requests the writer's unique ``event_id`` stores it once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from rest_framework import serializers

from server.apps.front.ingest.clocks import ClientTimestampField
from server.apps.front.ingest.serializers import ABEventSerializer, enqueue


class BatchSerializer(serializers.Serializer):
    """The batch's envelope; its events are validated one by one in :func:`ingest_batch`."""

    # No child field: a malformed event must be rejected by index, not fail the batch.
    events = serializers.ListField()
    # The client's clock when it sent the batch (clocks.py); without it no event_time.
    sent_at = ClientTimestampField(required=False, allow_null=True)

    def validate_events(self, value: list[Any]) -> list[Any]:
        if len(value) > settings.AB_BATCH_MAX_EVENTS:
            raise serializers.ValidationError(
                f"A batch holds at most {settings.AB_BATCH_MAX_EVENTS} events; this one has {len(value)}."
            )
        return value


@dataclass
class BatchOutcome:
    accepted: int = 0
    queued: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)


def ingest_batch(events: list[Any], *, sent_at: datetime | None, user: AbstractBaseUser | None) -> BatchOutcome:
    """Validate each event, queue the valid ones in one push.

    ``accepted`` counts valid events, a repeated ``event_id`` included (the
    client must not retry it); ``queued`` those actually pushed. Raises what
    ``queue.push`` raises (QueueFull, redis.RedisError): nothing is queued then.
    """
    outcome = BatchOutcome()
    # One serializer instance validates every event, as DRF's ListSerializer
    # does: building a ModelSerializer's fields per event would cost more
    # than validating it.
    validator = ABEventSerializer()
    valid: list[dict[str, Any]] = []
    seen: set[Any] = set()
    for index, raw in enumerate(events):
        try:
            data = validator.run_validation(raw)
        except serializers.ValidationError as exc:
            outcome.rejected.append({"index": index, "errors": serializers.as_serializer_error(exc)})
            continue
        outcome.accepted += 1
        event_id = data.get("event_id")
        if event_id is not None:
            if event_id in seen:
                continue
            seen.add(event_id)
        if user is not None:
            data["user"] = user
        valid.append(data)
    enqueue(valid, sent_at=sent_at, rows=False)
    outcome.queued = len(valid)
    return outcome


def sent_at_of(data: Any) -> datetime | None:
    """The optional top-level ``sent_at`` of a single-event body (the batch's is a field of BatchSerializer)."""
    if not isinstance(data, dict) or data.get("sent_at") is None:
        return None
    try:
        return ClientTimestampField().run_validation(data["sent_at"])
    except serializers.ValidationError as exc:
        raise serializers.ValidationError({"sent_at": exc.detail}) from exc
