"""Validation of incoming A/B events.

The spec's serializer, hardened for the asynchronous path: an accepted event
is written minutes later by a worker, so anything PostgreSQL could refuse
(NUL characters, lone surrogates, NaN/Infinity, out-of-range integers,
oversized or deeply nested metadata) must be refused here, by field name,
while the client is still listening.
"""

from __future__ import annotations

import copy
import json
import math
import uuid
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.utils import timezone
from rest_framework import serializers

from . import queue
from .clocks import ClientTimestampField, corrected_time
from .models import ABEvent

VALID_EVENT_TYPES = [name for name, _ in ABEvent.EVENT_TYPES]

# PostgreSQL's ``integer`` column: a wider value would fail at write time.
INT32_MAX = 2**31 - 1

# Levels of objects and arrays in one event, the event itself included: what
# orjson writes (it refuses 255). Deeper, the stdlib's recursive json.dumps
# (the fallback below, and DRF's JSONField) would run into Python's recursion
# limit: a RecursionError, i.e. a 500 instead of a 400 naming the field.
MAX_EVENT_DEPTH = 254


class StrictCharField(serializers.CharField):
    """A CharField that does not turn numbers, booleans or NaN into strings."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictUUIDField(serializers.UUIDField):
    """A UUID sent as a JSON string only.

    DRF's UUIDField also takes an integer as ``UUID(int=...)``, so ``7`` and
    ``true`` (``UUID(int=1)``) would be accepted: naive clients counting
    from 1 would share ids, and all but the first of their events would be
    dropped as retries.
    """

    def to_internal_value(self, data: Any) -> uuid.UUID:
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


def check_json_value(value: Any, *, depth: int, max_depth: int, path: str = "metadata") -> None:
    """Reject what JSON in PostgreSQL cannot hold, or what we refuse to store.

    ``depth`` counts objects and arrays: ``{"a": {"b": 1}}`` is two levels.
    """
    if isinstance(value, (dict, list)) and depth > max_depth:
        raise serializers.ValidationError(f"metadata is nested deeper than {max_depth} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            check_json_value(key, depth=depth, max_depth=max_depth, path=path)
            check_json_value(item, depth=depth + 1, max_depth=max_depth, path=f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_json_value(item, depth=depth + 1, max_depth=max_depth, path=f"{path}[{index}]")
    elif isinstance(value, str):
        if "\x00" in value:
            raise serializers.ValidationError(f"{path} contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise serializers.ValidationError(f"{path} contains a lone surrogate") from exc
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise serializers.ValidationError(f"{path} contains NaN or Infinity")
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise serializers.ValidationError(f"{path} contains an integer out of the 64-bit range")
    else:  # pragma: no cover - the JSON parsers produce nothing else
        raise serializers.ValidationError(f"{path} contains an unsupported value")


class ABEventSerializer(serializers.ModelSerializer):
    """
    Serializer для создания события A/B теста
    """

    # Declared explicitly: the model's unique ``event_id`` would otherwise get
    # a UniqueValidator, i.e. a PostgreSQL query per request. Uniqueness is
    # enforced at write time (ignore_conflicts), which is what makes retries safe.
    event_id = StrictUUIDField(required=False)
    session_id = StrictCharField(max_length=100)
    step_number = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=INT32_MAX)
    metadata = serializers.JSONField(required=False)
    # When the browser recorded the event, on its own clock (see clocks.py).
    client_ts = ClientTimestampField(required=False, allow_null=True)

    class Meta:
        model = ABEvent
        fields = [
            "event_id",
            "session_id",
            "variant",
            "event_type",
            "step_number",
            "metadata",
            "client_ts",
        ]

    def get_fields(self) -> dict[str, serializers.Field]:
        # ModelSerializer rebuilds every field from the model on each
        # instantiation (deepcopy + introspection): two thirds of the
        # serializer's cost, a sixth of the single endpoint's CPU
        # (bench/profile_ingest.py). The built fields depend on the class
        # only, so build them once and hand each serializer shallow copies: a
        # copy is unbound (bind() mutates the copy, never the prototype), and
        # the state the copies share (validators, choices) is only read.
        prototypes = type(self).__dict__.get("_field_prototypes")
        if prototypes is None:
            prototypes = super().get_fields()
            type(self)._field_prototypes = prototypes
        return {name: copy.copy(field) for name, field in prototypes.items()}

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        # Unknown keys are ignored, not stored, but they still cost parsing:
        # one event's whole JSON is capped, not only its metadata.
        if isinstance(data, dict):
            try:
                size = json_size(data)
            except NestedTooDeep as exc:
                # Named by where the depth is, never by a client's key.
                limit = MAX_EVENT_DEPTH - 1  # the levels left below the event itself
                key = "metadata" if nesting_depth(data.get("metadata"), limit) > limit else "event"
                raise serializers.ValidationError({key: [str(exc)]}) from exc
            if size > settings.AB_MAX_EVENT_BYTES:
                raise serializers.ValidationError(
                    {"event": [f"event is {size} bytes of JSON, over the limit of {settings.AB_MAX_EVENT_BYTES}"]}
                )
        return super().to_internal_value(data)

    def create(self, validated_data: dict[str, Any]) -> ABEvent:
        # Добавляем user из request, если авторизован
        request = self.context.get("request")
        if request and request.user.is_authenticated:
            validated_data["user"] = request.user
        return enqueue([validated_data], sent_at=self.context.get("sent_at"))[0]

    def validate_variant(self, value: str) -> str:
        """Валидация варианта"""
        if value not in ["fast", "deep"]:
            raise serializers.ValidationError("Variant должен быть 'fast' или 'deep'")
        return value

    def validate_event_type(self, value: str) -> str:
        """Валидация типа события"""
        if value not in VALID_EVENT_TYPES:
            raise serializers.ValidationError(f"Event type должен быть одним из: {', '.join(VALID_EVENT_TYPES)}")
        return value

    def validate_step_number(self, value: int | None) -> int | None:
        if value is not None and value > settings.AB_MAX_STEP_NUMBER:
            raise serializers.ValidationError(f"step_number must be between 0 and {settings.AB_MAX_STEP_NUMBER}")
        return value

    def validate_metadata(self, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise serializers.ValidationError("metadata must be a JSON object")
        check_json_value(value, depth=1, max_depth=settings.AB_MAX_METADATA_DEPTH)
        size = len(orjson.dumps(value))
        if size > settings.AB_MAX_METADATA_BYTES:
            raise serializers.ValidationError(
                f"metadata is {size} bytes of JSON, over the limit of {settings.AB_MAX_METADATA_BYTES}"
            )
        return value


class NestedTooDeep(ValueError):
    """A JSON value nested deeper than :data:`MAX_EVENT_DEPTH` levels."""


def nesting_depth(value: Any, limit: int) -> int:
    """Levels of objects and arrays in ``value`` (a scalar is 0), counted without recursion.

    Stops counting once past ``limit``: any result over ``limit`` means "too deep".
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON (escaped when orjson refuses it, e.g. lone surrogates).

    Raises NestedTooDeep past MAX_EVENT_DEPTH levels, which orjson refuses
    too, before the recursive fallback could overflow the stack.
    """
    try:
        return len(orjson.dumps(value))
    except TypeError:  # lone surrogates, integers beyond 64 bits, or too deep
        pass
    if nesting_depth(value, MAX_EVENT_DEPTH) > MAX_EVENT_DEPTH:
        raise NestedTooDeep(f"nested deeper than {MAX_EVENT_DEPTH} levels")
    return len(json.dumps(value, separators=(",", ":"), default=str))


def enqueue(
    validated: list[dict[str, Any]], *, sent_at: datetime | None = None, rows: bool = True
) -> list[ABEvent]:
    """Push validated events to the Redis queue in one round trip.

    Stamps the receive time here, at enqueue: that is the event's
    ``timestamp``, whatever the flush delay. With the client's ``sent_at``,
    an event's ``client_ts`` becomes ``event_time`` on the server's clock
    (clocks.py). Returns the unsaved rows (none with ``rows=False``: the
    batch endpoint does not need them, and building them is a quarter of
    its per-event cost).
    """
    received_at = timezone.now()
    max_age = timedelta(seconds=settings.AB_CLIENT_TS_MAX_AGE)
    items: list[bytes] = []
    events: list[ABEvent] = []
    for data in validated:
        data.setdefault("event_id", None)
        data["event_id"] = data["event_id"] or uuid.uuid4()
        user = data.get("user")
        event_time = corrected_time(data.get("client_ts"), sent_at, received_at, max_age)
        items.append(
            queue.encode_event(
                data, user_id=user.pk if user is not None else None, received_at=received_at, event_time=event_time
            )
        )
        if rows:
            events.append(ABEvent(timestamp=received_at, event_time=event_time, **data))
    queue.push(items)
    return events
