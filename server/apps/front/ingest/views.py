"""Ingest endpoints: validate, push to Redis, answer. Never writes PostgreSQL.

Both are thin: the single-event endpoint is a batch of one for the same
ingest service (``service.ingest``) as the batch endpoint, and keeps the
spec's answer shape; every rejection goes through ``errors``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.contrib.auth.base_user import AbstractBaseUser
from rest_framework import status
from rest_framework.decorators import (
    api_view,
    authentication_classes,
    permission_classes,
    renderer_classes,
    throttle_classes,
)
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer, JSONRenderer
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
# JSON only, named here rather than taken from settings: the fast path of the negotiation below relies on it.
INGEST_RENDERERS = [JSONRenderer]

# What nearly every client sends (no Accept, fetch/sendBeacon's */*, or
# application/json): for each the full negotiation picks the JSON renderer as
# "application/json", with no parameters (so no ``indent``).
PLAIN_ACCEPTS = {None, "*/*", "application/json"}


class IngestContentNegotiation(DefaultContentNegotiation):
    """DRF's negotiation, answering the common Accept headers without parsing them.

    The full negotiation (the request's headers and query string parsed,
    Accept split into media types and ordered by precedence) cost 24-27 us of
    CPU per request, against 1-2 us here, to reach the one answer an ingest
    view can give.
    Any other Accept, any query string or format suffix goes through it
    unchanged, so ``indent``, 406 and ``?format=`` answer exactly as before.
    """

    def select_renderer(
        self, request: Request, renderers: Sequence[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        meta = request._request.META
        if (
            format_suffix is None
            and len(renderers) == 1
            and renderers[0].media_type == "application/json"
            and not meta.get("QUERY_STRING")
            and meta.get("HTTP_ACCEPT") in PLAIN_ACCEPTS
        ):
            return renderers[0], "application/json"
        return super().select_renderer(request, renderers, format_suffix)


_View = TypeVar("_View", bound=Callable[..., Any])


def content_negotiation_class(negotiation: type[DefaultContentNegotiation]) -> Callable[[_View], _View]:
    """What DRF has no decorator for: ``@api_view`` reads ``content_negotiation_class`` from the function."""

    def decorator(view: _View) -> _View:
        view.content_negotiation_class = negotiation  # type: ignore[attr-defined]
        return view

    return decorator


def _user(request: Request) -> AbstractBaseUser | None:
    return request.user if request.user.is_authenticated else None


@api_view(["POST"])
@authentication_classes(INGEST_AUTHENTICATION)
@permission_classes([AllowAny])  # anonymous visitors send events too
@throttle_classes([IngestRateThrottle])  # off unless AB_THROTTLE_RATE is set
@renderer_classes(INGEST_RENDERERS)
@content_negotiation_class(IngestContentNegotiation)
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
@renderer_classes(INGEST_RENDERERS)
@content_negotiation_class(IngestContentNegotiation)
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
