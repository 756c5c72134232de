"""Helpers for the browser-delivery tests (batch endpoint, transport, clocks, throttle, Chromium)."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from rest_framework.test import APIClient

SINGLE_URL = "/api/rest/front/ab-event/"
BATCH_URL = "/api/rest/front/ab-events/"
ALLOWED_ORIGIN = "https://app.example.com"


def event(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"session_id": "s-1", "variant": "fast", "event_type": "variant_assigned"}
    data.update(overrides)
    return data


def post(
    client: APIClient,
    url: str,
    body: Any,
    *,
    content_type: str = "application/json",
    gzip_it: bool = False,
    **extra: Any,
):
    raw = body if isinstance(body, (str, bytes)) else json.dumps(body)
    if isinstance(raw, str):
        raw = raw.encode()
    if gzip_it:
        raw = gzip.compress(raw)
        extra.setdefault("HTTP_CONTENT_ENCODING", "gzip")
    return client.post(url, data=raw, content_type=content_type, **extra)


@pytest.fixture
def client() -> APIClient:
    return APIClient()
