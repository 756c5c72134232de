"""Client clocks: when did an event really happen?

Browsers' clocks are wrong (minutes, sometimes years), so a client timestamp
alone cannot be trusted. But the same wrong clock stamps the batch when it is
sent (``sent_at``), and the server knows when it received it. The offset
between the two clocks is ``received_at - sent_at`` (network delay included,
usually well under a second), so::

    event_time = client_ts + (received_at - sent_at)

is the event's time on the server's clock, whatever the client's clock says.
It is clamped to ``[received_at - AB_CLIENT_TS_MAX_AGE, received_at]``: no event
happens in the future, and an event queued offline for weeks (or a garbage
timestamp) cannot land years back in the report.

Both ``client_ts`` and ``sent_at`` are ISO-8601 strings (a time without a zone
is taken as UTC) or epoch milliseconds (``Date.now()``). Either must be a time
the pipeline can carry: the queue holds it as epoch microseconds and the
writer turns those back into a datetime, which exists only for the years
1-9999 *in UTC*. ``"0001-01-01T00:00:00+01:00"`` is a valid ISO-8601 string
but lies in year 0 in UTC: it is refused here, by field name, rather than
accepted and left to fail in the writer.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils.dateparse import parse_datetime
from rest_framework import serializers

from server.apps.front.pipeline.queue import storable_time

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_client_time(value: Any) -> datetime:
    """An aware UTC datetime from ISO-8601 or epoch milliseconds; ValueError otherwise.

    Only times :func:`storable_time` accepts are returned.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        try:
            return storable_time(EPOCH + timedelta(microseconds=round(value * 1000)))
        except OverflowError as exc:
            raise ValueError("epoch milliseconds outside the years 1-9999") from exc
    if isinstance(value, str):
        try:
            parsed = parse_datetime(value.strip())
        except ValueError as exc:  # well formed but impossible, e.g. month 13
            raise ValueError(str(exc)) from exc
        if parsed is None:
            raise ValueError("not an ISO-8601 date-time")
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return storable_time(parsed)
    raise ValueError("expected an ISO-8601 string or epoch milliseconds")


class ClientTimestampField(serializers.Field):
    """A client's clock reading: ISO-8601 string or epoch milliseconds."""

    default_error_messages = {
        "invalid": "Expected an ISO-8601 date-time or epoch milliseconds ({reason}).",
    }

    def to_internal_value(self, data: Any) -> datetime:
        try:
            return parse_client_time(data)
        except ValueError as exc:
            self.fail("invalid", reason=str(exc))
            raise  # unreachable: fail() raises; keeps type checkers content

    def to_representation(self, value: datetime) -> str:
        return value.isoformat()


def corrected_time(
    client_ts: datetime | None, sent_at: datetime | None, received_at: datetime, max_age: timedelta
) -> datetime | None:
    """The event's time on the server's clock, or None without both client readings."""
    if client_ts is None or sent_at is None:
        return None
    try:
        floor = received_at - max_age
    except OverflowError:  # an AB_CLIENT_TS_MAX_AGE reaching back past year 1
        floor = datetime.min.replace(tzinfo=UTC)
    try:
        moment = client_ts + (received_at - sent_at)
    except OverflowError:
        # Absurd readings (year 1 vs year 9999): the clamp's verdict either way.
        moment = received_at if client_ts > sent_at else floor
    return min(received_at, max(floor, moment))
