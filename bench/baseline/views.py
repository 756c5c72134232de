"""The spec's MVP, verbatim in substance: one ``serializer.save()`` (one INSERT) per request.

It writes into the spec's own table (``bench/baseline/models.py``), not abflow's ``ab_events``.

This is what the asynchronous path is measured against (bench/bench_ingest.py);
it is not served by the application.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers, status
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from bench.baseline.models import SpecABEvent as ABEvent


class ABEventSerializer(serializers.ModelSerializer):
    """The spec's serializer (section 2)."""

    class Meta:
        model = ABEvent
        fields = ["session_id", "variant", "event_type", "step_number", "metadata"]

    def create(self, validated_data: dict[str, Any]) -> ABEvent:
        request = self.context.get("request")
        if request and request.user.is_authenticated:
            validated_data["user"] = request.user
        return super().create(validated_data)

    def validate_variant(self, value: str) -> str:
        if value not in ["fast", "deep"]:
            raise serializers.ValidationError("Variant должен быть 'fast' или 'deep'")
        return value

    def validate_event_type(self, value: str) -> str:
        valid_types = [
            "variant_assigned",
            "onboarding_started",
            "step_completed",
            "onboarding_completed",
            "onboarding_abandoned",
        ]
        if value not in valid_types:
            raise serializers.ValidationError(f"Event type должен быть одним из: {', '.join(valid_types)}")
        return value


@api_view(["POST"])
@permission_classes([AllowAny])
def track_ab_event(request: Request) -> Response:
    """The spec's view (section 3): validate, INSERT, answer."""
    serializer = ABEventSerializer(data=request.data, context={"request": request})
    if serializer.is_valid():
        serializer.save()
        return Response({"success": True}, status=status.HTTP_201_CREATED)
    return Response({"success": False, "errors": serializer.errors}, status=status.HTTP_400_BAD_REQUEST)
