"""Ingest endpoints: validate, push to Redis, answer. Never writes PostgreSQL.

Both are thin: the single-event endpoint is a batch of one for the same
ingest service (``service.ingest``) as the batch endpoint, and keeps the
spec's answer shape; every rejection goes through ``errors``.
"""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from rest_framework import status
from rest_framework.decorators import api_view, authentication_classes, permission_classes, throttle_classes
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from server.apps.front.ingest.authentication import IngestSessionAuthentication, IngestTokenAuthentication
from server.apps.front.ingest.errors import encodable, invalid, queue_errors_as_503
from server.apps.front.ingest.serializers import ABEventSerializer, BatchSerializer, sent_at_of
from server.apps.front.ingest.service import ingest
from server.apps.front.ingest.throttling import IngestRateThrottle
from server.apps.front.ops import metrics

# Session and token, as everywhere, but a PostgreSQL outage makes the event
# anonymous instead of a 500 (authentication.py).
INGEST_AUTHENTICATION = [IngestSessionAuthentication, IngestTokenAuthentication]


def _user(request: Request) -> AbstractBaseUser | None:
    return request.user if request.user.is_authenticated else None


@api_view(["POST"])
@authentication_classes(INGEST_AUTHENTICATION)
@permission_classes([AllowAny])  # anonymous visitors send events too
@throttle_classes([IngestRateThrottle])  # off unless AB_THROTTLE_RATE is set
def track_ab_event(request: Request) -> Response:
    """One event: ``POST /api/rest/front/ab-event/`` (the spec's contract), 201 ``{"success": true}``."""
    sent_at = sent_at_of(request.data)
    with queue_errors_as_503():
        outcome = ingest([request.data], sent_at=sent_at, user=_user(request))
    if outcome.rejected:
        # The rare path: a fresh serializer gives ``errors`` exactly as
        # is_valid() always has (e.g. its "No data provided" for a null body).
        serializer = ABEventSerializer(data=request.data)
        serializer.is_valid()
        return invalid(serializer.errors)
    metrics.EVENTS_ACCEPTED.inc()
    return Response({"success": True}, status=status.HTTP_201_CREATED)


@api_view(["POST"])
@authentication_classes(INGEST_AUTHENTICATION)
@permission_classes([AllowAny])
@throttle_classes([IngestRateThrottle])
def track_ab_events(request: Request) -> Response:
    """A batch of events: ``POST /api/rest/front/ab-events/`` (docs/frontend.md)."""
    envelope = BatchSerializer(data=request.data)
    if not envelope.is_valid():
        return invalid(envelope.errors)
    with queue_errors_as_503():
        outcome = ingest(
            envelope.validated_data["events"], sent_at=envelope.validated_data.get("sent_at"), user=_user(request)
        )
    metrics.EVENTS_ACCEPTED.inc(outcome.accepted)
    for rejected in outcome.rejected:
        metrics.record_invalid(rejected["errors"])
    return Response({"success": True, "accepted": outcome.accepted, "rejected": encodable(outcome.rejected)})
