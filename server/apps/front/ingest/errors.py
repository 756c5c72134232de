"""The ingest endpoints' error envelope, in one place: ``{"success": false, "errors": {<field>: [...]}}``.

Every rejection answers in it: validation errors (400, from the views), the
request-level failures DRF raises (malformed JSON, wrong content type,
throttled, ...) through :func:`envelope_exception_handler`, a Redis outage or
a full queue (503 + ``Retry-After``) through :class:`queue_errors_as_503`, and
the body middleware's 413/415/400 through :func:`error_response`.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.exceptions import ErrorDetail
from rest_framework.response import Response
from rest_framework.views import exception_handler

from server.apps.front.ops import metrics
from server.apps.front.pipeline import queue


def envelope(errors: Any) -> dict[str, Any]:
    """The body of every rejection."""
    return {"success": False, "errors": encodable(errors)}


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


def invalid(errors: Any) -> Response:
    """A 400 for field errors (counted under the first invalid field)."""
    metrics.record_invalid(errors)
    return Response(envelope(errors), status=status.HTTP_400_BAD_REQUEST)


def error_response(status_code: int, field: str, message: str) -> JsonResponse:
    """A rejection before DRF sees the request (the body middleware)."""
    return JsonResponse(envelope({field: [message]}), status=status_code)


class QueueUnavailable(exceptions.APIException):
    """Redis is down or the queue is full: the client should retry later."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "Event queue unavailable, retry later."
    default_code = "queue_unavailable"


# The 503's message when the queue is over AB_QUEUE_MAX (the fast lane answers it too).
QUEUE_FULL_MESSAGE = "Event queue is full, retry later."


class queue_errors_as_503:
    """Turn a Redis outage or a full queue into QueueUnavailable (503 + Retry-After)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            return False
        if isinstance(exc, queue.QueueFull):
            raise QueueUnavailable(QUEUE_FULL_MESSAGE) from exc
        if isinstance(exc, queue.ERRORS):
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
    response.data = envelope(errors)
    if isinstance(exc, QueueUnavailable):
        response["Retry-After"] = str(settings.AB_RETRY_AFTER)
        # Counted and logged per class above (record_rejection: reason
        # redis_down / queue_full), like every rejection. Django would add an
        # ERROR line per request (it logs every 5xx): one per event during
        # an outage. The flag is Django's own "already logged" marker.
        response._has_been_logged = True
    return response
