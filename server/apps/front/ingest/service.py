"""The ingest service: validated events into the Redis queue, for both endpoints and the simulator.

``POST /api/rest/front/ab-events/`` hands it a batch; the single-event
endpoint hands it a batch of one; ``ab_simulate`` hands it its generated
sessions. Each event goes through the same ``ABEventSerializer`` (one
validation path, one validator per thread). A bad event is reported by its
index and does not block the others: the valid ones are queued, all in one
Redis round trip. A client ``event_id`` repeated within the batch is queued
once (across requests the writer stores each ``event_id`` once, through ``ab_event_ids``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.utils import timezone
from rest_framework import serializers

from server.apps.front.ingest.clocks import corrected_time
from server.apps.front.ingest.serializers import ABEventSerializer, fast_limits
from server.apps.front.pipeline import queue

_local = threading.local()


def event_validator() -> ABEventSerializer:
    """One ABEventSerializer per thread, reused for every event.

    Building a serializer per request (fields, binding) cost three times what
    validating with it does (bench/profile_ingest.py); ``run_validation``
    keeps no state on the instance, as DRF's ListSerializer relies on too.
    Per thread, because the web server's worker threads serve requests concurrently.
    """
    validator = getattr(_local, "event_validator", None)
    if validator is None:
        validator = _local.event_validator = ABEventSerializer()
    return validator


@dataclass
class BatchOutcome:
    accepted: int = 0
    queued: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)


def validate(events: list[Any], *, user: AbstractBaseUser | None = None) -> tuple[list[dict[str, Any]], BatchOutcome]:
    """Validate each event: (the events to queue, the outcome so far).

    ``accepted`` counts valid events, a repeated ``event_id`` included (the
    client must not retry it); only its first occurrence is returned to queue.
    """
    outcome = BatchOutcome()
    validator = event_validator()
    limits = fast_limits()
    valid: list[dict[str, Any]] = []
    seen: set[Any] = set()
    for index, raw in enumerate(events):
        data = validator.fast_validation(raw, limits)
        if data is None:  # not plainly valid: DRF's full path, which words any error
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
    return valid, outcome


def new_event_ids(n: int) -> list[str]:
    """``n`` random (version 4) UUIDs in their string form, as ``str(uuid.uuid4())`` writes them.

    For the events sent without an id. ``uuid.uuid4()`` and its ``str()``
    cost ~6 us per event (a urandom call, the UUID object's checks); here one
    urandom call serves the whole batch and only the string the queue item
    holds is made. The version and variant bits are set as uuid4 sets them.
    """
    raw = os.urandom(16 * n).hex()
    out: list[str] = []
    for i in range(0, 32 * n, 32):
        h = raw[i : i + 32]
        # version 4 in the 13th digit; variant 10xx (RFC 4122) in the 17th: 8, 9, a or b.
        variant = "89ab"[int(h[16], 16) & 3]
        out.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}")
    return out


def enqueue(validated: list[dict[str, Any]], *, sent_at: datetime | None = None) -> None:
    """Push validated events to the Redis queue in one round trip.

    Stamps the receive time here, at enqueue: that is the event's
    ``timestamp``, whatever the flush delay. With the client's ``sent_at``,
    an event's ``client_ts`` becomes ``event_time`` on the server's clock
    (clocks.py). Raises what ``queue.push`` raises (QueueFull, redis.RedisError).
    """
    received_at = timezone.now()
    max_age = timedelta(seconds=settings.AB_CLIENT_TS_MAX_AGE)
    fresh = iter(new_event_ids(sum(1 for data in validated if not data.get("event_id"))))
    items: list[bytes] = []
    for data in validated:
        data["event_id"] = data.get("event_id") or next(fresh)
        user = data.get("user")
        event_time = corrected_time(data.get("client_ts"), sent_at, received_at, max_age)
        items.append(
            queue.encode_event(
                data, user_id=user.pk if user is not None else None, received_at=received_at, event_time=event_time
            )
        )
    queue.push(items)


def ingest(events: list[Any], *, sent_at: datetime | None, user: AbstractBaseUser | None) -> BatchOutcome:
    """Validate each event, queue the valid ones in one push.

    ``queued`` counts those actually pushed. Raises what ``queue.push``
    raises (QueueFull, redis.RedisError): nothing is queued then.
    """
    valid, outcome = validate(events, user=user)
    enqueue(valid, sent_at=sent_at)
    outcome.queued = len(valid)
    return outcome
