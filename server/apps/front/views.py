"""Ingest endpoint: validate, push to Redis, answer. Never writes PostgreSQL."""

from __future__ import annotations

import threading
from typing import Any

import redis
from django.conf import settings
from django.http import Http404
from rest_framework import exceptions, serializers, status
from rest_framework.decorators import api_view, authentication_classes, permission_classes, throttle_classes
from rest_framework.exceptions import ErrorDetail
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler

from . import metrics, queue
from .authentication import IngestSessionAuthentication, IngestTokenAuthentication
from .batch import BatchSerializer, ingest_batch, sent_at_of
from .serializers import ABEventSerializer, enqueue
from .throttling import IngestRateThrottle


class QueueUnavailable(exceptions.APIException):
    """Redis is down or the queue is full: the client should retry later."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "Event queue unavailable, retry later."
    default_code = "queue_unavailable"


# Session and token, as everywhere, but a PostgreSQL outage makes the event
# anonymous instead of a 500 (authentication.py).
INGEST_AUTHENTICATION = [IngestSessionAuthentication, IngestTokenAuthentication]


@api_view(["POST"])
@authentication_classes(INGEST_AUTHENTICATION)
@permission_classes([AllowAny])  # Разрешаем анонимным пользователям
@throttle_classes([IngestRateThrottle])  # off unless AB_THROTTLE_RATE is set
def track_ab_event(request: Request) -> Response:
    """
    Endpoint для трекинга событий A/B теста

    POST /api/rest/front/ab-event/
    """
    sent_at = sent_at_of(request.data)
    try:
        validated = _event_validator().run_validation(request.data)
    except serializers.ValidationError:
        # The rare path: a fresh serializer gives ``errors`` exactly as
        # is_valid() always has (e.g. its "No data provided" for a null body).
        serializer = ABEventSerializer(data=request.data, context={"request": request, "sent_at": sent_at})
        serializer.is_valid()
        metrics.record_invalid(serializer.errors)
        return Response({"success": False, "errors": encodable(serializer.errors)}, status=status.HTTP_400_BAD_REQUEST)
    if request.user.is_authenticated:
        validated["user"] = request.user
    with queue_errors_as_503():
        # What serializer.save() -> create() does, minus the unsaved model
        # instance it would have to build and return.
        enqueue([validated], sent_at=sent_at, rows=False)
    metrics.EVENTS_ACCEPTED.inc()
    return Response({"success": True}, status=status.HTTP_201_CREATED)


_local = threading.local()


def _event_validator() -> ABEventSerializer:
    """One ABEventSerializer per thread, reused for every valid event.

    Building a serializer per request (fields, binding) cost three times what
    validating with it does (bench/profile_ingest.py); ``run_validation``
    keeps no state on the instance, as batch.py relies on too. Per thread,
    because gunicorn's gthread workers serve requests concurrently.
    """
    validator = getattr(_local, "event_validator", None)
    if validator is None:
        validator = _local.event_validator = ABEventSerializer()
    return validator


@api_view(["POST"])
@authentication_classes(INGEST_AUTHENTICATION)
@permission_classes([AllowAny])
@throttle_classes([IngestRateThrottle])
def track_ab_events(request: Request) -> Response:
    """Batch of events: POST /api/rest/front/ab-events/ (batch.py, docs/frontend.md)."""
    envelope = BatchSerializer(data=request.data)
    if not envelope.is_valid():
        metrics.record_invalid(envelope.errors)
        return Response({"success": False, "errors": encodable(envelope.errors)}, status=status.HTTP_400_BAD_REQUEST)
    user = request.user if request.user.is_authenticated else None
    with queue_errors_as_503():
        outcome = ingest_batch(
            envelope.validated_data["events"], sent_at=envelope.validated_data.get("sent_at"), user=user
        )
    metrics.EVENTS_ACCEPTED.inc(outcome.accepted)
    for rejected in outcome.rejected:
        metrics.record_invalid(rejected["errors"])
    return Response({"success": True, "accepted": outcome.accepted, "rejected": encodable(outcome.rejected)})


def encodable(detail: Any) -> Any:
    """Error details that UTF-8 can carry: lone surrogates as ``\\udXXX`` text.

    Some messages quote the client's value (DRF's ``"x" is not a valid
    choice.``, ``"x" is not a valid UUID.``). A lone surrogate in that value
    (valid in JSON's ``\\ud800`` escape, not in UTF-8) would make the renderer
    fail: a 500 for a bad event.
    """
    if isinstance(detail, dict):
        return {encodable(key): encodable(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [encodable(item) for item in detail]
    if isinstance(detail, str):
        try:
            detail.encode("utf-8")
        except UnicodeEncodeError:
            text = detail.encode("utf-8", "backslashreplace").decode("utf-8")
            return ErrorDetail(text, getattr(detail, "code", None))
    return detail


class queue_errors_as_503:
    """Turn a Redis outage or a full queue into QueueUnavailable (503 + Retry-After)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            return False
        if isinstance(exc, queue.QueueFull):
            raise QueueUnavailable("Event queue is full, retry later.") from exc
        if isinstance(exc, redis.RedisError):
            raise QueueUnavailable() from exc
        return False


# Which key of ``errors`` a request-level failure is reported under.
_ERROR_FIELDS: list[tuple[type[Exception], str]] = [
    (exceptions.ParseError, "body"),
    (exceptions.UnsupportedMediaType, "content_type"),
    (exceptions.MethodNotAllowed, "method"),
    (exceptions.NotAcceptable, "accept"),
    (exceptions.NotFound, "path"),
    (Http404, "path"),  # DRF answers it as NotFound
    (exceptions.Throttled, "throttle"),
    (exceptions.NotAuthenticated, "auth"),
    (exceptions.AuthenticationFailed, "auth"),
    (exceptions.PermissionDenied, "auth"),
    (QueueUnavailable, "queue"),
]


def _rejection_reason(exc: Exception, field: str) -> str:
    """The ``reason`` label of abflow_events_rejected_total for a request-level failure."""
    if isinstance(exc, QueueUnavailable):
        return "queue_full" if isinstance(exc.__cause__, queue.QueueFull) else "redis_down"
    return {"body": "parse", "content_type": "media_type"}.get(field, field)


def envelope_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, answering in the spec's envelope: {"success": false, "errors": {...}}.

    Malformed JSON included: DRF's default ``{"detail": ...}`` is not the contract.
    """
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = response.data if isinstance(response.data, dict) else {"non_field_errors": response.data}
        metrics.record_invalid(errors)
    else:
        field = next((name for cls, name in _ERROR_FIELDS if isinstance(exc, cls)), "detail")
        detail = response.data.get("detail", response.data) if isinstance(response.data, dict) else response.data
        errors = {field: [str(detail)]}
        metrics.record_rejection(_rejection_reason(exc, field))
    response.data = {"success": False, "errors": encodable(errors)}
    if isinstance(exc, QueueUnavailable):
        response["Retry-After"] = str(settings.AB_RETRY_AFTER)
        # Counted and logged per class above (record_rejection: reason
        # redis_down / queue_full), like every rejection. Django would add an
        # ERROR line per request (it logs every 5xx): one per event during
        # an outage. The flag is Django's own "already logged" marker.
        response._has_been_logged = True
    return response
