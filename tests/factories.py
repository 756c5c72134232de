"""Shared test factories: queue items built through the queue's own codec.

Every test that needs an event sitting in Redis (a backlog, a poison item, an
item of the previous release) builds it here with ``queue.encode_event``, so
no test writes the item's compact wire keys by hand.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from server.apps.front.pipeline import queue


def queue_item(
    *,
    session_id: str | None = None,
    variant: str = "fast",
    event_type: str = "variant_assigned",
    step_number: int | None = None,
    metadata: dict[str, Any] | None = None,
    event_id: uuid.UUID | str | None = None,
    user_id: int | None = None,
    received_at: datetime | None = None,
    age_seconds: float = 0.0,
    client_ts: datetime | None = None,
    event_time: datetime | None = None,
    seq: int | None = None,
) -> bytes:
    """One queued event exactly as the endpoint encodes it.

    Values are not validated: a poison item (a step number beyond int32, a
    user that does not exist, a NUL in metadata) is queued as given, the way
    a queue can hold anything. Without ``client_ts``/``event_time`` the item
    is also what the release before the clock fields queued.
    """
    data = {
        "event_id": uuid.UUID(str(event_id)) if event_id is not None else uuid.uuid4(),
        "session_id": session_id if session_id is not None else f"sess-{uuid.uuid4().hex[:8]}",
        "variant": variant,
        "event_type": event_type,
        "step_number": step_number,
        "metadata": metadata or {},
        "client_ts": client_ts,
    }
    if seq is not None:
        data["seq"] = seq
    received = received_at or timezone.now() - timedelta(seconds=age_seconds)
    return queue.encode_event(data, user_id=user_id, received_at=received, event_time=event_time)
