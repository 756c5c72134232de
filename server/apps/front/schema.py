"""The public HTTP contract as OpenAPI 3 (drf-spectacular), kept out of the views.

``GET /api/schema/`` serves it (YAML, or JSON with ``?format=json``),
``/api/schema/ui/`` is a Swagger UI page whose assets come from the
drf-spectacular-sidecar package (no CDN), and docs/openapi.yaml is the
committed copy (``python -m devtools.openapi`` writes it; a test fails on drift).

Nothing here changes how a request is handled. The views stay as they are;
this module only describes them:

- The ingest endpoints are function views (``@api_view``): drf-spectacular
  finds them, and the :class:`OpenApiViewExtension` subclasses below give it
  a documented stand-in (request and response envelopes, status codes,
  examples). The event's fields come from the real ``ABEventSerializer``.
- The limits the code enforces outside a field's declaration (``step_number``'s
  ceiling, metadata size and depth, batch count, body size, ...) are read from
  ``settings`` when the schema is generated (:func:`postprocess`), so the
  served schema states the deployment's own limits; the committed copy states
  the defaults.
- ``/healthz``, ``/readyz`` and ``/metrics`` are plain Django views, invisible
  to drf-spectacular: :func:`postprocess` adds them.
- The staff report's JSON is typed by dataclasses (report/model.py); its
  schema is derived from them (:func:`dataclass_schema`).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiSerializerFieldExtension, OpenApiViewExtension
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import serializers

from server.apps.front import experiment
from server.apps.front.ingest.clocks import ClientTimestampField
from server.apps.front.ingest.serializers import ABEventSerializer
from server.apps.front.report import build as report_build
from server.apps.front.report import model as report_model

# --- envelopes -------------------------------------------------------------------------


# ``errors``: field name -> messages. Request-level failures use a fixed key
# (ingest/errors.py: body, content_type, content_encoding, throttle, queue, auth, ...).
_ERRORS = {
    "type": "object",
    "additionalProperties": {"type": "array", "items": {"type": "string"}},
    "description": "Field name (or `body`, `content_type`, `content_encoding`, `throttle`, `queue`, `auth`, "
    "`method`, `path`, `event`, `query`, `non_field_errors`) -> human-readable messages.",
}


@extend_schema_field(_ERRORS)
class _ErrorsField(serializers.DictField):
    pass


class Accepted(serializers.Serializer):
    """The single endpoint's answer: the event is queued and will reach ab_events exactly once."""

    success = serializers.BooleanField()


class ErrorEnvelope(serializers.Serializer):
    """Every rejection, whatever its status: nothing of the request was queued."""

    success = serializers.BooleanField()
    errors = _ErrorsField()


class RejectedEvent(serializers.Serializer):
    """One event of a batch that was not queued: its index in ``events`` and why."""

    index = serializers.IntegerField(min_value=0)
    errors = _ErrorsField()


class BatchAnswer(serializers.Serializer):
    """The batch's answer: the valid events are queued, the others listed by index."""

    success = serializers.BooleanField()
    accepted = serializers.IntegerField(min_value=0, help_text="Events queued (each reaches ab_events once).")
    rejected = RejectedEvent(many=True, help_text="Events not queued; send them again only after fixing them.")


class SingleEvent(ABEventSerializer):
    """One event, as ``POST /api/rest/front/ab-event/`` takes it (the spec's contract), plus `sent_at`."""

    sent_at = ClientTimestampField(
        required=False,
        allow_null=True,
        help_text="The client's clock when it sent the request; with `client_ts` it corrects the event time.",
    )

    class Meta(ABEventSerializer.Meta):
        ref_name = "SingleEvent"
        fields = [*ABEventSerializer.Meta.fields, "sent_at"]


class ABEvent(ABEventSerializer):
    """One event inside a batch."""

    class Meta(ABEventSerializer.Meta):
        ref_name = "ABEvent"


class Batch(serializers.Serializer):
    """``POST /api/rest/front/ab-events/``: events validated one by one, rejected by index."""

    events = ABEvent(many=True)
    sent_at = ClientTimestampField(
        required=False,
        allow_null=True,
        help_text="The client's clock when it sent the batch; corrects every event's `client_ts`.",
    )


# The times the pipeline can carry (ingest/clocks.py): Python datetimes, years 1-9999, in UTC.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_MS_MIN = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
_EPOCH_MS_MAX = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)


class TimestampFieldExtension(OpenApiSerializerFieldExtension):
    """``client_ts`` / ``sent_at``: an ISO-8601 date-time or epoch milliseconds (ingest/clocks.py)."""

    target_class = "server.apps.front.ingest.clocks.ClientTimestampField"
    match_subclasses = True

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        return {
            "oneOf": [
                {"type": "string", "format": "date-time"},
                {
                    "type": "number",
                    "description": "milliseconds since the Unix epoch (`Date.now()`); years 1-9999 in UTC",
                    "minimum": _EPOCH_MS_MIN,
                    "maximum": _EPOCH_MS_MAX,
                },
            ],
            "nullable": True,
        }


# --- examples --------------------------------------------------------------------------

_EVENT_EXAMPLE = {
    "event_id": "3f1c2a7e-9b4d-4e61-8a0f-2d5b7c9e1a34",
    "session_id": "s-7f3a9c",
    "variant": "fast",
    "event_type": "step_completed",
    "step_number": 2,
    "metadata": {"screen": "profile"},
    "client_ts": 1760000000000,
}

_INGEST_ERRORS = {
    400: (
        "Invalid input, named by field: a field's value, malformed JSON (`errors.body`), an event over "
        "the size limit (`errors.event`), a batch over the count limit (`errors.events`), a body that is "
        "not valid gzip.",
        {"success": False, "errors": {"variant": ['"slow" is not a valid choice.']}},
    ),
    403: (
        "A session-authenticated request without a valid CSRF token (`errors.auth`); anonymous requests need none.",
        {"success": False, "errors": {"auth": ["CSRF Failed: CSRF token missing."]}},
    ),
    413: (
        "The body is over the limit, as sent (`Content-Length`) or after gunzip (`errors.body`).",
        {"success": False, "errors": {"body": ["Request body of 2000000 bytes is over the limit of 1048576 bytes."]}},
    ),
    415: (
        "A `Content-Type` other than `application/json` or `text/plain`, a `charset` that is not a text "
        "encoding (`errors.content_type`), or a `Content-Encoding` other than gzip (`errors.content_encoding`).",
        {"success": False, "errors": {"content_type": ['Unsupported media type "text/xml" in request.']}},
    ),
    429: (
        "Throttled (only when `AB_THROTTLE_RATE` is set): retry after `Retry-After` seconds (`errors.throttle`).",
        {"success": False, "errors": {"throttle": ["Request was throttled. Expected available in 1 second."]}},
    ),
    503: (
        "Redis is down or the queue is over `AB_QUEUE_MAX` (`errors.queue`): retry after `Retry-After` "
        "seconds. Nothing is stored twice when a retry follows (send an `event_id`).",
        {"success": False, "errors": {"queue": ["Event queue unavailable, retry later."]}},
    ),
}


def _error_responses(codes: list[int]) -> dict[int, OpenApiResponse]:
    return {
        code: OpenApiResponse(
            ErrorEnvelope,
            description=_INGEST_ERRORS[code][0],
            examples=[OpenApiExample(f"{code}", value=_INGEST_ERRORS[code][1], status_codes=[str(code)])],
        )
        for code in codes
    }


_INGEST_DESCRIPTION = (
    "Validates and queues to Redis; never touches PostgreSQL. A 2xx means the event reaches `ab_events` "
    "exactly once (a retry with the same `event_id` is stored once). `Content-Type` is `application/json` "
    "or `text/plain` (what `navigator.sendBeacon` sends), both carrying the same JSON. The body may be "
    "sent with `Content-Encoding: gzip` (`x-content-encoding`; browsers: `CompressionStream`); the size limit "
    "applies after inflating too. Limits: see `x-limits` and the field descriptions. Anonymous requests are "
    "the norm; a session cookie or token attaches the user (with PostgreSQL unreachable, the event is accepted "
    "as anonymous)."
)

# --- ingest operations -------------------------------------------------------------------


def _drf_authenticators(view: type) -> list[type]:
    """The view's authentication classes as the DRF classes they extend.

    The ingest views use outage-tolerant subclasses (ingest/authentication.py):
    the same credentials (session cookie, ``Authorization: Token``), so the
    same security schemes as the report's, not a second pair of the same names.
    """
    return [
        next(base for base in cls.__mro__ if base.__module__ == "rest_framework.authentication")
        for cls in view.authentication_classes
    ]


def _operation(method: str, **kwargs: Any) -> Any:
    """``extend_schema`` for one method of a view class (an operation id on a whole class is refused)."""
    return extend_schema_view(**{method: extend_schema(**kwargs)})


class SingleEventView(OpenApiViewExtension):
    target_class = "server.apps.front.ingest.views.track_ab_event"

    def view_replacement(self) -> type:
        @_operation(
            "post",
            operation_id="send_event",
            summary="Send one event",
            description=_INGEST_DESCRIPTION,
            tags=["ingest"],
            request=SingleEvent,
            responses={
                201: OpenApiResponse(
                    Accepted,
                    description="Queued.",
                    examples=[OpenApiExample("queued", value={"success": True}, status_codes=["201"])],
                ),
                **_error_responses([400, 403, 413, 415, 429, 503]),
            },
            examples=[OpenApiExample("an event", value=_EVENT_EXAMPLE, request_only=True)],
        )
        class Fixed(self.target_class):  # type: ignore[name-defined,misc]
            authentication_classes = _drf_authenticators(self.target_class)

        return Fixed


class BatchView(OpenApiViewExtension):
    target_class = "server.apps.front.ingest.views.track_ab_events"

    def view_replacement(self) -> type:
        @_operation(
            "post",
            operation_id="send_events",
            summary="Send a batch of events",
            description=_INGEST_DESCRIPTION
            + " Each event is validated on its own: the valid ones are queued and the invalid ones are listed "
            "in `rejected` by index, with a 200. The whole batch is refused (400) only when its envelope is "
            "invalid (no `events` list, too many events, a bad `sent_at`).",
            tags=["ingest"],
            request=Batch,
            responses={
                200: OpenApiResponse(
                    BatchAnswer,
                    description="The valid events are queued; `rejected` lists the others.",
                    examples=[
                        OpenApiExample(
                            "one rejected",
                            value={
                                "success": True,
                                "accepted": 1,
                                "rejected": [{"index": 1, "errors": {"event_type": ['"x" is not a valid choice.']}}],
                            },
                            status_codes=["200"],
                        )
                    ],
                ),
                **_error_responses([400, 403, 413, 415, 429, 503]),
            },
            examples=[
                OpenApiExample(
                    "a batch",
                    value={"sent_at": 1760000000500, "events": [_EVENT_EXAMPLE]},
                    request_only=True,
                )
            ],
        )
        class Fixed(self.target_class):  # type: ignore[name-defined,misc]
            authentication_classes = _drf_authenticators(self.target_class)

        return Fixed


# --- the report --------------------------------------------------------------------------


def dataclass_schema(tp: Any) -> dict[str, Any]:
    """JSON Schema (OpenAPI 3.0) of a report type as ``dataclasses.asdict`` + ``finite`` render it.

    Every float may be null (``finite`` turns NaN into None), as may anything typed ``X | None``.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        present = [arg for arg in args if arg is not type(None)]
        inner = dataclass_schema(present[0]) if len(present) == 1 else {"oneOf": [dataclass_schema(a) for a in present]}
        return {**inner, "nullable": True}
    if origin is list:
        return {"type": "array", "items": dataclass_schema(args[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": dataclass_schema(args[1])}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number", "nullable": True}
    if tp is str:
        return {"type": "string"}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        properties = {f.name: dataclass_schema(hints[f.name]) for f in dataclasses.fields(tp)}
        return {"type": "object", "properties": properties, "required": list(properties)}
    raise TypeError(f"no schema for {tp!r}")  # a new report type: describe it here


def report_schema() -> dict[str, Any]:
    """``Report.to_dict()``: the dataclasses, with the two parts whose ``to_dict`` reshapes them."""
    schema = dataclass_schema(report_model.Report)
    properties = schema["properties"]
    primary = dataclass_schema(report_model.PrimaryMetric)
    result = primary["properties"].pop("result")
    primary["properties"].update(result["properties"])
    primary["required"] = list(primary["properties"])
    properties["primary"] = primary
    ttc = dataclass_schema(report_model.TimeToComplete)
    by_variant = ttc["properties"].pop("by_variant")
    # The variants' keys sit beside "definition" and "welch" (TimeToComplete.to_dict).
    ttc["additionalProperties"] = by_variant["additionalProperties"]
    ttc["required"] = ["definition", "welch"]
    properties["time_to_complete"] = ttc
    # Issue 14's sections (Insights.to_dict): beside the others, present unless AB_REPORT_INSIGHTS is off.
    properties.pop("insights")
    schema["required"].remove("insights")
    within = dataclass_schema(report_model.CompletedWithin)
    within["properties"].update(within["properties"].pop("result")["properties"])
    within["required"] = list(within["properties"])
    survival = {
        "definition": {"type": "string"},
        "comparison": dataclass_schema(report_model.SurvivalComparison | None),
        "completed_within": within,
    }
    insights = dataclass_schema(report_model.Insights)["properties"]
    properties.update(
        time_to_complete_survival={"type": "object", "properties": survival, "required": list(survival)},
        power=insights["power"],
        lift_over_time=insights["lift_over_time"],
        data_quality=insights["data_quality"],
    )
    return schema


# Empty is the same as absent (no bound).
_MOMENT = {
    "anyOf": [
        {"type": "string", "format": "date"},
        {"type": "string", "format": "date-time"},
        {"type": "string", "maxLength": 0},
    ]
}


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


# report.build.options_from_query: stripped, any case, one of TRUE_WORDS | FALSE_WORDS ("" too).
_SEQUENTIAL_PATTERN = (
    r"^\s*("
    + "|".join(_any_case(w) for w in sorted(report_build.TRUE_WORDS | report_build.FALSE_WORDS) if w)
    + r")?\s*$"
)


def split_pattern() -> str:
    """experiment.parse_split: ``name=weight`` for each variant, in any order, weights positive and finite."""
    weight = r"(0{0,15}[1-9]\d{0,15}(\.\d{0,15})?|\d{0,15}\.\d{0,14}[1-9]\d{0,15})"
    names = list(experiment.VARIANT_NAMES)
    orders = [names, names[::-1]] if len(names) == 2 else [names]
    alternatives = [r"\s*,\s*".join(rf"{re.escape(n)}\s*=\s*{weight}" for n in order) for order in orders]
    # Empty is the same as absent (the planned split).
    return r"^(\s*(" + "|".join(alternatives) + r")\s*)?$"


class ReportView(OpenApiViewExtension):
    target_class = "server.apps.front.report.views.ABReportView"

    def view_replacement(self) -> type:
        @_operation(
            "get",
            operation_id="get_report",
            summary="The experiment report (staff only)",
            description="The verdict with its evidence; docs/report.md explains every field. Sessions, not "
            "events, are counted. Staff users only: session cookie (admin login) or `Authorization: Token <key>`.",
            tags=["report"],
            parameters=[
                OpenApiParameter("since", _MOMENT, description="ISO date or datetime (naive = UTC); events from then."),
                OpenApiParameter("until", _MOMENT, description="ISO date (the whole day included) or datetime."),
                OpenApiParameter(
                    "sequential",
                    {"type": "string", "pattern": _SEQUENTIAL_PATTERN},
                    description="`1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off` (any case): "
                    "verdict from the always-valid interval.",
                ),
                OpenApiParameter(
                    "split",
                    {"type": "string", "pattern": split_pattern()},
                    description="Planned split for the SRM check: a positive weight for each variant, "
                    "e.g. `fast=0.5,deep=0.5`.",
                ),
            ],
            responses={
                200: OpenApiResponse(report_schema(), description="The report."),
                400: OpenApiResponse(
                    ErrorEnvelope,
                    description="A query parameter is invalid (`errors.query`).",
                    examples=[
                        OpenApiExample(
                            "bad date",
                            value={"success": False, "errors": {"query": ["'yesterday' is not an ISO date"]}},
                            status_codes=["400"],
                        )
                    ],
                ),
                403: OpenApiResponse(ErrorEnvelope, description="Not logged in as staff (`errors.auth`)."),
            },
        )
        class Fixed(self.target_class):  # type: ignore[name-defined,misc]
            pass

        return Fixed


# --- what drf-spectacular cannot see: limits, headers, the plain Django views -------------------


def limits() -> dict[str, Any]:
    """The limits the ingest code enforces, from the settings in force."""
    return {
        "max_body_bytes": settings.AB_MAX_BODY_BYTES,
        "max_batch_events": settings.AB_BATCH_MAX_EVENTS,
        "max_event_bytes": settings.AB_MAX_EVENT_BYTES,
        "max_metadata_bytes": settings.AB_MAX_METADATA_BYTES,
        "max_metadata_depth": settings.AB_MAX_METADATA_DEPTH,
        "max_step_number": settings.AB_MAX_STEP_NUMBER,
        "max_client_ts_age_seconds": settings.AB_CLIENT_TS_MAX_AGE,
        "retry_after_seconds": settings.AB_RETRY_AFTER,
    }


def _patch_event(component: dict[str, Any], lim: dict[str, Any]) -> None:
    props = component["properties"]
    component["description"] = (
        component.get("description", "")
        + f" Unknown keys are ignored, but the event's whole JSON is capped at {lim['max_event_bytes']} bytes."
    ).strip()
    component["x-max-bytes"] = lim["max_event_bytes"]
    props["step_number"]["maximum"] = lim["max_step_number"]
    # Surrounding whitespace is trimmed, so a blank id is empty; NUL is refused (DRF's CharField).
    props["session_id"].update(minLength=1, pattern="^[^\\x00]*[^\\s\\x00][^\\x00]*$")
    props["metadata"] = {
        "type": "object",
        "additionalProperties": True,
        "description": f"Free-form JSON object: at most {lim['max_metadata_bytes']} bytes of JSON and "
        f"{lim['max_metadata_depth']} levels of nesting; no NUL characters, no NaN/Infinity, integers within "
        "64 bits.",
        "x-max-bytes": lim["max_metadata_bytes"],
        "x-max-depth": lim["max_metadata_depth"],
    }
    props["event_id"]["description"] = (
        "The client's id for the event: a retry with the same id is stored once. Generated on receipt if absent."
    )
    props["client_ts"]["description"] = (
        "When the event happened, on the client's clock; corrected to server time with `sent_at`, clamped to "
        f"at most {lim['max_client_ts_age_seconds']} seconds before receipt."
    )


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 1},
        "required": True,
    }
}

_PLAIN_PATHS: dict[str, Any] = {
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "summary": "Liveness: the process answers HTTP",
            "tags": ["operations"],
            "security": [{}],
            "responses": {
                "200": {
                    "description": "Alive.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"alive": {"type": "boolean", "enum": [True]}},
                                "required": ["alive"],
                            },
                            "example": {"alive": True},
                        }
                    },
                }
            },
        }
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "summary": "Readiness: Redis and PostgreSQL reachable",
            "description": "The body names what is down by the error's class only; the details go to the log.",
            "tags": ["operations"],
            "security": [{}],
            "responses": {
                "200": {
                    "description": "Ready.",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/Readiness"},
                            "example": {"ready": True, "down": []},
                        }
                    },
                },
                "503": {
                    "description": "Not ready: `down` lists the unreachable dependencies.",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/Readiness"},
                            "example": {"ready": False, "down": ["redis"], "errors": {"redis": "ConnectionError"}},
                        }
                    },
                },
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "description": "Served with `Authorization: Bearer $METRICS_TOKEN`, or to direct (unproxied) "
            "requests from `METRICS_ALLOWED_IPS`; docs/operations.md lists the metrics.",
            "tags": ["operations"],
            "security": [{"metricsToken": []}, {}],
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format 0.0.4.",
                    "content": {
                        "text/plain; version=0.0.4; charset=utf-8": {
                            "schema": {"type": "string"},
                            "example": "abflow_queue_depth 0.0\n",
                        }
                    },
                },
                "403": {
                    "description": "Neither the token nor an allowed direct address.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"error": {"type": "string"}},
                                "required": ["error"],
                            },
                            "example": {"error": "forbidden: METRICS_TOKEN bearer token or METRICS_ALLOWED_IPS"},
                        }
                    },
                },
            },
        }
    },
}

_READINESS = {
    "type": "object",
    "properties": {
        "ready": {"type": "boolean"},
        "down": {"type": "array", "items": {"type": "string", "enum": ["redis", "postgresql"]}},
        "errors": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["ready", "down"],
}


def postprocess(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular's POSTPROCESSING_HOOKS entry: settings' limits, headers, the plain views."""
    lim = limits()
    schemas = result["components"]["schemas"]
    # "success" is always true in a 2xx and false in a rejection. Set here, after
    # drf-spectacular's enum hook, which would make two colliding enum components of them.
    for name, value in (("Accepted", True), ("BatchAnswer", True), ("ErrorEnvelope", False)):
        schemas[name]["properties"]["success"]["enum"] = [value]
    for name in ("ABEvent", "SingleEvent"):
        _patch_event(schemas[name], lim)
    events = schemas["Batch"]["properties"]["events"]
    events["maxItems"] = lim["max_batch_events"]
    events["description"] = (
        f"At most {lim['max_batch_events']} events, each validated on its own: an item that is not a valid "
        "ABEvent does not fail the batch, it is listed in the answer's `rejected` by index."
    )
    # Any item is accepted into the request (BatchSerializer's events has no child field);
    # only the valid ones are queued.
    events["items"] = {"anyOf": [events["items"], {"description": "anything else: rejected by index"}]}
    for path in ("/api/rest/front/ab-event/", "/api/rest/front/ab-events/"):
        operation = result["paths"][path]["post"]
        operation["x-limits"] = lim
        # Not a header parameter: a Content-Encoding that the body does not
        # match is a 400, so it cannot be chosen independently of the body.
        operation["x-content-encoding"] = ["gzip", "x-gzip", "identity"]
        for code in ("429", "503"):
            operation["responses"][code]["headers"] = _RETRY_AFTER
    result["paths"].update(_PLAIN_PATHS)
    schemas["Readiness"] = _READINESS
    result["components"]["securitySchemes"]["metricsToken"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "METRICS_TOKEN",
    }
    return result
