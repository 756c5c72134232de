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
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from django.conf import settings
from rest_framework import serializers

from server.apps.front.ingest.clocks import ClientTimestampField, parse_client_time
from server.apps.front.models import ABEvent

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
        # The length as sent, before CharField trims surrounding whitespace: the published schema's
        # maxLength is about the client's string, and "100 characters and a space" must not pass a
        # contract that says 100 (schemathesis sends exactly that).
        if self.max_length is not None and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
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


class StrictIntegerField(serializers.IntegerField):
    """An integer sent as a JSON integer only: not a boolean, a string or a float like ``3.0``."""

    def to_internal_value(self, data: Any) -> int:
        if type(data) is not int:
            self.fail("invalid")
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
    """One A/B test event, as the frontend sends it (the spec's serializer, hardened)."""

    # Declared explicitly: a model field declared unique would get a
    # UniqueValidator, i.e. a PostgreSQL query per request. Uniqueness is
    # enforced at write time (the writer's ``ab_event_ids``, ON CONFLICT DO
    # NOTHING), which is what makes retries safe.
    event_id = StrictUUIDField(required=False)
    session_id = StrictCharField(max_length=100)
    step_number = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=INT32_MAX)
    metadata = serializers.JSONField(required=False)
    # When the browser recorded the event, on its own clock (see clocks.py).
    client_ts = ClientTimestampField(required=False, allow_null=True)
    # The event's number within its session (event-loss guard); StrictIntegerField: no true/"3"/3.0.
    seq = StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=INT32_MAX,
        help_text="This event's number within its session: 1 for the session's first event, then 2, 3, ...; "
        "gaps in a session's numbers count as lost events (the report's event-loss guard).",
    )

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
            "seq",
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

    def fast_validation(self, data: Any, limits: FastLimits | None = None) -> dict[str, Any] | None:
        """What ``run_validation(data)`` returns, for an event it accepts in the usual shape; else None.

        DRF's generic path (field lookups, empty-value checks, validator
        lists, a ``json.dumps`` of the metadata) cost ~50 us per event, 70% of
        a batch's CPU (bench/profile_ingest.py). This checks the same rules
        directly on the JSON types a client sends. It never rejects: whenever
        a value is not plainly valid (wrong type, out of range, blank, nested
        metadata that fails the check, anything that raises) it answers None
        and the caller runs ``run_validation``, so every error message comes
        from DRF as before. A hypothesis test holds the two results equal
        (tests/ingest/test_fast_validation.py). ``limits``: the settings it checks,
        read once per batch by the caller (a Django setting costs ~0.7 us per read).
        """
        if type(data) is not dict:
            return None
        try:
            return self._fast_validation(data, limits or fast_limits())
        except Exception:  # anything unusual: DRF's path decides, and raises what it raises
            return None

    def _fast_validation(self, data: dict[str, Any], limits: FastLimits) -> dict[str, Any] | None:
        # orjson refuses lone surrogates, non-string keys and integers beyond 64 bits:
        # past this line no string holds a surrogate (DRF's ProhibitSurrogateCharactersValidator).
        if len(orjson.dumps(data)) > limits.event_bytes:
            return None
        fields = self.fields
        get = data.get
        out: dict[str, Any] = {}  # keys in the order of Meta.fields, as DRF builds it
        value = get("event_id", _MISSING)
        if value is not _MISSING:
            if type(value) is not str:
                return None
            out["event_id"] = uuid.UUID(hex=value)  # ValueError: not a UUID, DRF words it
        value = get("session_id")
        if type(value) is not str:
            return None
        if len(value) > fields["session_id"].max_length:  # as sent, before the trim (StrictCharField)
            return None
        value = value.strip()  # CharField's trim_whitespace, before its checks
        if not value or "\x00" in value:
            return None
        out["session_id"] = value
        for name in ("variant", "event_type"):
            value = get(name)
            if type(value) is not str:
                return None
            out[name] = fields[name].choice_strings_to_values[value]  # KeyError: not a choice
        value = get("step_number", _MISSING)
        if value is not _MISSING:
            if value is not None:
                field = fields["step_number"]
                if type(value) is not int or not (
                    field.min_value <= value <= field.max_value and value <= limits.max_step_number
                ):
                    return None
            out["step_number"] = value
        value = get("metadata", _MISSING)
        if value is not _MISSING:
            if type(value) is not dict or not plain_metadata(value, limits):
                return None
            out["metadata"] = value
        value = get("client_ts", _MISSING)
        if value is not _MISSING:
            out["client_ts"] = None if value is None else parse_client_time(value)
        value = get("seq", _MISSING)
        if value is not _MISSING:
            if value is not None:
                field = fields["seq"]
                if type(value) is not int or not field.min_value <= value <= field.max_value:
                    return None
            out["seq"] = value
        return out

    def validate_step_number(self, value: int | None) -> int | None:
        if value is not None and value > settings.AB_MAX_STEP_NUMBER:
            raise serializers.ValidationError(f"step_number must be between 0 and {settings.AB_MAX_STEP_NUMBER}")
        return value

    def validate_metadata(self, value: Any) -> dict[str, Any]:
        # null never reaches here: the JSONField refuses it first (allow_null is off), as the schema says.
        if not isinstance(value, dict):
            raise serializers.ValidationError("metadata must be a JSON object")
        check_json_value(value, depth=1, max_depth=settings.AB_MAX_METADATA_DEPTH)
        size = len(orjson.dumps(value))
        if size > settings.AB_MAX_METADATA_BYTES:
            raise serializers.ValidationError(
                f"metadata is {size} bytes of JSON, over the limit of {settings.AB_MAX_METADATA_BYTES}"
            )
        return value


_MISSING = object()


class FastLimits(NamedTuple):
    """The settings ``ABEventSerializer.fast_validation`` checks."""

    event_bytes: int
    max_step_number: int
    metadata_depth: int
    metadata_bytes: int


def fast_limits() -> FastLimits:
    return FastLimits(
        settings.AB_MAX_EVENT_BYTES,
        settings.AB_MAX_STEP_NUMBER,
        settings.AB_MAX_METADATA_DEPTH,
        settings.AB_MAX_METADATA_BYTES,
    )


def plain_metadata(value: dict[str, Any], limits: FastLimits) -> bool:
    """True when ``validate_metadata`` accepts ``value`` (a dict whose strings hold no lone surrogate).

    The one-level objects clients send are checked in one loop; anything
    nested goes through :func:`check_json_value`. False means "not sure":
    DRF's path then gives the verdict and its message.
    """
    max_depth = limits.metadata_depth
    if max_depth < 1:
        return False
    for key, item in value.items():
        if type(key) is not str or "\x00" in key:
            return False
        kind = type(item)
        if kind is str:
            if "\x00" in item:
                return False
        elif kind is int:
            if not -(2**63) <= item < 2**63:
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif item is not None and kind is not bool:
            try:
                check_json_value(value, depth=1, max_depth=max_depth)
            except serializers.ValidationError:
                return False
            break
    return len(orjson.dumps(value)) <= limits.metadata_bytes


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


class EventList(serializers.ListField):
    """A JSON array of anything: the batch's events, which the ingest service validates one by one.

    With no ``child``, ListField runs DRF's pass-through field over every item
    (``run_validation`` per item: empty-value checks, an empty validator list),
    which returns each item unchanged (``None`` too) and never fails: ~2 us
    per event for nothing. The list is taken as it is instead; every check
    of the array itself (not a list, ``validate_events``' length) is as before.
    """

    def run_child_validation(self, data: Any) -> list[Any]:
        return list(data)


class BatchSerializer(serializers.Serializer):
    """The batch's envelope; its events are validated one by one by the ingest service."""

    # No child field: a malformed event must be rejected by index, not fail the batch.
    events = EventList()
    # The client's clock when it sent the batch (clocks.py); without it no event_time.
    sent_at = ClientTimestampField(required=False, allow_null=True)

    def validate_events(self, value: list[Any]) -> list[Any]:
        if len(value) > settings.AB_BATCH_MAX_EVENTS:
            raise serializers.ValidationError(
                f"A batch holds at most {settings.AB_BATCH_MAX_EVENTS} events; this one has {len(value)}."
            )
        return value


def sent_at_of(data: Any) -> datetime | None:
    """The optional top-level ``sent_at`` of a single-event body (the batch's is a field of BatchSerializer)."""
    if not isinstance(data, dict) or data.get("sent_at") is None:
        return None
    try:
        return ClientTimestampField().run_validation(data["sent_at"])
    except serializers.ValidationError as exc:
        raise serializers.ValidationError({"sent_at": exc.detail}) from exc
